"""xsae.metrics.monosemanticity: Pach et al.'s monosemanticity score, all latents at once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xsae.metrics.monosemanticity import monosemanticity_scores
from xsae.sae import Codes


def naive_scores(activations: np.ndarray, embeddings: np.ndarray, min_firing: int = 2) -> np.ndarray:
    """Pach et al.'s Eq. literally: min-max normalise, then Σ_{n<m} ã_n ã_m S_nm / Σ_{n<m} ã_n ã_m."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)
    similarity = unit @ unit.T
    n_samples, n_latents = activations.shape
    out = np.full(n_latents, np.nan)
    for latent in range(n_latents):
        a = activations[:, latent]
        if (a > 0).sum() < min_firing or a.max() == a.min():
            continue
        a = (a - a.min()) / (a.max() - a.min())
        weighted = weights = 0.0
        for n in range(n_samples):
            for m in range(n + 1, n_samples):
                weighted += a[n] * a[m] * similarity[n, m]
                weights += a[n] * a[m]
        if weights > 0:
            out[latent] = weighted / weights
    return out


def test_two_samples_by_hand():
    # latent 0 fires on samples 0 and 1 whose embeddings are at 60° (cos 0.5); latent 1 fires once
    embeddings = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    activations = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    result = monosemanticity_scores(activations, embeddings, 2)
    assert result.scores[0] == pytest.approx(0.5)
    assert math.isnan(result.scores[1])
    assert result.scored.tolist() == [True, False]
    assert result.n_firing.tolist() == [2, 1]


def test_three_samples_weighted_by_hand():
    # ã = [1, 0.5, 0.25, 0] (min is 0: the latent is silent on sample 3); S01 = 0, S02 = 0.6, S12 = 0.8
    embeddings = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    activations = np.array([[4.0], [2.0], [1.0], [0.0]])
    # pairs: (0,1) 0.5·0 + (0,2) 0.25·0.6 + (1,2) 0.125·0.8 = 0.25; weights 0.5 + 0.25 + 0.125 = 0.875
    result = monosemanticity_scores(activations, embeddings, 1)
    assert result.scores[0] == pytest.approx(0.25 / 0.875)


def test_identical_embeddings_score_one_and_orthogonal_zero():
    g = np.random.default_rng(0)
    activations = g.random((12, 6)) * (g.random((12, 6)) > 0.4)
    activations[:, 5] = 0
    activations[3, 5] = 1.0  # fires once: excluded
    same = np.tile(g.normal(size=(1, 5)), (12, 1)) * g.uniform(0.5, 2, size=(12, 1))  # one direction
    result = monosemanticity_scores(activations, same, 6)
    assert result.scored[:5].all() and not result.scored[5]
    np.testing.assert_allclose(result.scores[:5], 1.0, rtol=0, atol=1e-12)
    orthogonal = np.eye(12) * g.uniform(0.5, 2, size=(12, 1))
    result = monosemanticity_scores(activations, orthogonal, 6)
    np.testing.assert_allclose(result.scores[:5], 0.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("latent_batch", [1, 3, 2048])
def test_equals_naive_formula_on_random_data(latent_batch):
    g = np.random.default_rng(1)
    n_samples, n_latents = 40, 9
    activations = g.exponential(size=(n_samples, n_latents)) * (g.random((n_samples, n_latents)) > 0.6)
    activations[:, 0] = 0.0  # dead
    activations[:, 1] = 0.0
    activations[7, 1] = 3.0  # fires once
    activations[:, 2] = 0.0
    activations[[4, 9], 2] = [1.0, 2.0]  # fires exactly twice
    activations[:, 3] = g.uniform(0.5, 1.5, size=n_samples)  # fires everywhere: the minimum is not 0
    activations[:, 4] = 0.7  # constant on every sample: undefined
    embeddings = g.normal(size=(n_samples, 6)) + 0.5
    embeddings[11] = 0.0  # an all-zero embedding is similar to nothing
    expected = naive_scores(activations, embeddings)
    result = monosemanticity_scores(activations, embeddings, n_latents, latent_batch=latent_batch)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-12, atol=1e-14)
    assert np.isnan(result.scores[[0, 1, 4]]).all()
    assert result.scored.tolist() == (~np.isnan(expected)).tolist()
    assert result.n_firing[:5].tolist() == [0, 1, 2, n_samples, n_samples]


def test_input_forms_agree():
    g = torch.Generator().manual_seed(2)
    n_samples, L, k = 30, 20, 3
    indices = torch.stack([torch.randperm(L, generator=g)[:k] for _ in range(n_samples)])
    values = torch.rand(n_samples, k, generator=g) * (torch.rand(n_samples, k, generator=g) > 0.2)
    codes = Codes(values, indices)
    embeddings = torch.randn(n_samples, 8, generator=g)
    dense = codes.dense(L)
    reference = naive_scores(dense.double().numpy(), embeddings.double().numpy())
    for form in (codes, dense, dense.numpy(), sp.csr_array(dense.numpy())):
        result = monosemanticity_scores(form, embeddings, L)
        np.testing.assert_allclose(result.scores, reference, rtol=1e-9, atol=1e-12)
    stricter = monosemanticity_scores(codes, embeddings, L, min_firing=4)
    loose = monosemanticity_scores(codes, embeddings, L)
    assert (stricter.scored == ((stricter.n_firing >= 4) & loose.scored)).all()
    assert stricter.scored.sum() < loose.scored.sum()


def test_sorted_curve_excludes_unscored_latents():
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    activations = np.array([
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ])  # latent 0: samples 0, 1 (cos 1); latent 1: 0, 2 (cos 0); latent 2: once; latent 3: same as 0
    result = monosemanticity_scores(activations, embeddings, 4)
    curve = result.sorted_scores()
    assert curve["latent"].tolist() == [0, 3, 1]
    assert curve["rank"].tolist() == [1, 2, 3]
    assert curve["score"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert curve["n_firing"].tolist() == [2, 2, 2]
    assert result.n_samples == 4


def test_input_checks():
    with pytest.raises(ValueError, match="non-negative"):
        monosemanticity_scores(np.array([[-1.0], [1.0]]), np.eye(2), 1)
    with pytest.raises(ValueError, match="embeddings must be"):
        monosemanticity_scores(np.ones((3, 2)), np.eye(2), 2)
    with pytest.raises(ValueError, match="n_latents=3"):
        monosemanticity_scores(np.ones((2, 2)), np.eye(2), 3)
    with pytest.raises(ValueError, match="n_latents=2"):
        monosemanticity_scores(Codes(torch.ones(2, 1), torch.tensor([[0], [2]])), np.eye(2), 2)
    with pytest.raises(ValueError, match="min_firing"):
        monosemanticity_scores(np.ones((2, 2)), np.eye(2), 2, min_firing=1)
    with pytest.raises(ValueError, match="NaN"):
        monosemanticity_scores(np.ones((2, 2)), np.array([[np.nan, 0.0], [1.0, 0.0]]), 2)
