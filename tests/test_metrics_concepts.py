"""xsae.metrics.concepts: label hierarchy collapse, concept profiles and SPARC Table 2 Jaccard."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xsae.metrics.concepts import (
    ancestor_at_depth,
    collapse_labels,
    concept_profiles,
    generalized_jaccard,
    label_depths,
    mean_jaccard,
)
from xsae.sae import Codes

# ---- hierarchy -------------------------------------------------------------------------------------
# 0 A (top) > 1 B > 2 C;  3 D (top) > 4 E
PARENTS = [None, 0, 1, None, 3]


def test_label_depths_and_ancestors():
    assert label_depths(PARENTS).tolist() == [1, 2, 3, 1, 2]
    assert label_depths([2, None, 1]).tolist() == [3, 1, 2]  # parents listed after children
    assert ancestor_at_depth(PARENTS, 1).tolist() == [0, 0, 0, 3, 3]
    assert ancestor_at_depth(PARENTS, 2).tolist() == [0, 1, 1, 3, 4]
    assert ancestor_at_depth(PARENTS, 3).tolist() == [0, 1, 2, 3, 4]
    assert ancestor_at_depth(PARENTS, 9).tolist() == [0, 1, 2, 3, 4]


def test_hierarchy_errors():
    with pytest.raises(ValueError, match="cycle"):
        label_depths([1, 0])
    with pytest.raises(ValueError, match="cycle"):
        label_depths([None, 1])
    with pytest.raises(ValueError):
        label_depths([None, 7])
    with pytest.raises(ValueError):
        ancestor_at_depth(PARENTS, 0)
    with pytest.raises(ValueError):
        collapse_labels(np.zeros((2, 4), dtype=bool), PARENTS, 1)


LABELS5 = np.array([[0, 1, 1, 0, 0],   # B and C
                    [1, 0, 0, 0, 1],   # A and E
                    [0, 0, 1, 1, 0]], dtype=bool)  # C and D


def test_collapse_labels_or_aggregates():
    depth1 = [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0], [1, 0, 0, 1, 0]]
    depth2 = [[0, 1, 0, 0, 0], [1, 0, 0, 0, 1], [0, 1, 0, 1, 0]]
    dense1 = collapse_labels(LABELS5, PARENTS, 1)
    assert isinstance(dense1, np.ndarray) and dense1.dtype == bool
    assert dense1.astype(int).tolist() == depth1
    assert collapse_labels(torch.from_numpy(LABELS5), PARENTS, 2).astype(int).tolist() == depth2
    assert collapse_labels(LABELS5, PARENTS, 3).tolist() == LABELS5.tolist()
    sparse2 = collapse_labels(sp.csr_matrix(LABELS5), PARENTS, 2)
    assert sp.issparse(sparse2) and sparse2.dtype == bool
    assert sparse2.toarray().astype(int).tolist() == depth2


# ---- Jaccard ---------------------------------------------------------------------------------------
def test_generalized_jaccard_by_hand():
    # min = (1, 1, 0) -> 2; max = (2, 1, 3) -> 6
    assert generalized_jaccard([2, 1, 0], [1, 1, 3]).tolist() == pytest.approx([1 / 3])
    rows_a = np.array([[2, 1, 0], [0, 0, 0], [1, 0, 0]])
    rows_b = np.array([[1, 1, 3], [0, 0, 0], [0, 4, 0]])
    np.testing.assert_allclose(generalized_jaccard(rows_a, rows_b), [1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(generalized_jaccard(sp.csr_array(rows_b), rows_a), [1 / 3, 0.0, 0.0])
    with pytest.raises(ValueError):
        generalized_jaccard(rows_a, rows_b[:2])


# Four samples, three labels, three latents, two streams (k = 2).
LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=bool)
STREAM0 = Codes(torch.tensor([[3.0, 1.0], [2.0, 0.7], [1.0, 2.0], [0.5, 0.0]]),
                torch.tensor([[0, 1], [0, 2], [0, 1], [1, 2]]))
STREAM1 = Codes(torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 0.0], [0.5, 0.0]]),
                torch.tensor([[0, 2], [0, 1], [1, 2], [0, 1]]))
# Active sets: latent 0: {0,1,2} vs {0,1,3}; latent 1: {0,2,3} vs {1,2}; latent 2: {1} vs none.


def test_profiles_by_hand():
    all_active = concept_profiles(STREAM0, LABELS, 3, profile="all_active")
    assert all_active.toarray().tolist() == [[2, 1, 1], [1, 1, 2], [1, 1, 0]]
    top2 = concept_profiles(STREAM0, sp.csr_array(LABELS), 3, profile="top", top_n=2)
    assert top2.toarray().tolist() == [[2, 1, 0], [1, 0, 1], [1, 1, 0]]
    top2_other = concept_profiles(STREAM1, LABELS, 3, profile="top", top_n=2)
    assert top2_other.toarray().tolist() == [[2, 1, 0], [1, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError):
        concept_profiles(STREAM0, LABELS, 3, profile="median")
    with pytest.raises(ValueError):
        concept_profiles(STREAM0, LABELS[:3], 3)


def test_mean_jaccard_all_active_by_hand():
    # latent 0: [2,1,1] vs [2,2,1] -> 4/5; latent 1: [1,1,2] vs [1,1,1] -> 3/4; latent 2 alive in one stream
    result = mean_jaccard([STREAM0, STREAM1], LABELS, 3, profile="all_active")
    np.testing.assert_allclose(result.per_latent[:2], [0.8, 0.75])
    assert np.isnan(result.per_latent[2])
    assert result.n_alive_streams.tolist() == [2, 2, 1]
    assert result.mean == pytest.approx((0.8 + 0.75) / 3)
    excluded = mean_jaccard([STREAM0, STREAM1], LABELS, 3, profile="all_active", dead_latents="exclude")
    assert excluded.mean == pytest.approx(0.775)


def test_mean_jaccard_top_by_hand():
    # top 2: latent 0: [2,1,0] vs [2,1,0] -> 1; latent 1: [1,0,1] vs [1,1,1] -> 2/3
    result = mean_jaccard([STREAM0, STREAM1], LABELS, 3, profile="top", top_n=2)
    np.testing.assert_allclose(result.per_latent[:2], [1.0, 2 / 3])
    assert result.mean == pytest.approx(5 / 9)
    excluded = mean_jaccard([STREAM0, STREAM1], LABELS, 3, top_n=2, dead_latents="exclude")
    assert excluded.mean == pytest.approx(5 / 6)
    # every latent has at most 3 active samples, so the top 3 (or 50) are all its active samples
    for top_n in (3, 50):
        result = mean_jaccard([STREAM0, STREAM1], LABELS, 3, top_n=top_n)
        assert result.mean == pytest.approx((0.8 + 0.75) / 3)


def test_mean_jaccard_sample_mask():
    mask = np.array([True, False, True, True])
    # without sample 1: latent 0: [1,0,1] vs [1,1,1] -> 2/3; latent 1: [1,1,2] vs [0,0,1] -> 1/4;
    # latent 2 (active only on sample 1) is dead
    result = mean_jaccard([STREAM0, STREAM1], LABELS, 3, profile="all_active", sample_mask=mask)
    assert result.n_alive_streams.tolist() == [2, 2, 0]
    assert result.mean == pytest.approx((2 / 3 + 1 / 4) / 3)
    keep = torch.from_numpy(mask)
    subset = [Codes(c.values[keep], c.indices[keep]) for c in (STREAM0, STREAM1)]
    assert mean_jaccard(subset, LABELS[mask], 3, profile="all_active").mean == pytest.approx(result.mean)


def test_mean_jaccard_argument_checks():
    with pytest.raises(ValueError):
        mean_jaccard([STREAM0], LABELS, 3)
    with pytest.raises(ValueError):
        mean_jaccard([STREAM0, STREAM1], LABELS, 3, dead_latents="drop")


# ---- reference and invariants ----------------------------------------------------------------------
def random_streams(seed: int, n: int = 40, n_latents: int = 10, k: int = 3, n_streams: int = 3):
    g = torch.Generator().manual_seed(seed)
    streams = []
    for _ in range(n_streams):
        indices = torch.stack([torch.randperm(n_latents - 2, generator=g)[:k] for _ in range(n)])  # 2 dead
        values = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) > 0.3)
        streams.append(Codes(values, indices))
    labels = np.random.default_rng(seed).random((n, 6)) < 0.3
    return streams, labels


def reference_jaccard(streams, labels, n_latents, profile, top_n, dead_latents):
    per_latent = []
    for latent in range(n_latents):
        profiles, alive = [], []
        for codes in streams:
            column = codes.dense(n_latents)[:, latent].numpy()
            active = [i for i in range(len(column)) if column[i] > 0]
            if profile == "top":
                active = sorted(active, key=lambda i, c=column: (-c[i], i))[:top_n]
            profiles.append(labels[active].sum(axis=0).astype(float))
            alive.append(bool(active))
        scores = [np.minimum(profiles[i], profiles[j]).sum() / np.maximum(profiles[i], profiles[j]).sum()
                  for i in range(len(streams)) for j in range(i + 1, len(streams)) if alive[i] and alive[j]]
        per_latent.append(np.mean(scores) if scores else np.nan)
    per_latent = np.array(per_latent)
    if dead_latents == "zero":
        return np.nan_to_num(per_latent).mean(), per_latent
    return np.nanmean(per_latent), per_latent


@pytest.mark.parametrize("profile,top_n", [("top", 4), ("top", 50), ("all_active", 50)])
@pytest.mark.parametrize("dead_latents", ["zero", "exclude"])
def test_matches_dense_reference(profile, top_n, dead_latents):
    streams, labels = random_streams(0)
    expected_mean, expected = reference_jaccard(streams, labels, 10, profile, top_n, dead_latents)
    for label_input in (labels, sp.csr_matrix(labels), torch.from_numpy(labels)):
        result = mean_jaccard(streams, label_input, 10, profile=profile, top_n=top_n,
                              dead_latents=dead_latents)
        np.testing.assert_allclose(result.per_latent, expected, equal_nan=True)
        assert result.mean == pytest.approx(expected_mean)


def test_permuting_latents_permutes_scores():
    streams, labels = random_streams(1)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    permuted = [Codes(c.values, perm[c.indices]) for c in streams]
    before = mean_jaccard(streams, labels, 10, top_n=5)
    after = mean_jaccard(permuted, labels, 10, top_n=5)
    assert after.mean == pytest.approx(before.mean)
    np.testing.assert_allclose(after.per_latent[perm.numpy()], before.per_latent, equal_nan=True)


def test_identical_streams_score_one():
    streams, labels = random_streams(3)
    same = [streams[0]] * 3
    result = mean_jaccard(same, labels, 10, top_n=5, dead_latents="exclude")
    alive = result.n_alive_streams == 3
    assert alive.sum() > 0 and set(result.n_alive_streams.tolist()) <= {0, 3}
    np.testing.assert_allclose(result.per_latent[alive], 1.0)
    assert result.mean == pytest.approx(1.0)
    assert mean_jaccard(same, labels, 10, top_n=5).mean == pytest.approx(alive.mean())
