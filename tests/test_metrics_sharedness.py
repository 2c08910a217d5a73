"""xsae.metrics.sharedness: streamed correlations, (w)MPPC, Proposition 2, Comparative Sharedness, nulls."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from xsae.metrics.sharedness import (
    all_layers_score,
    column_moments,
    comparative_sharedness,
    correlation_matrix,
    correlation_p_value,
    fisher_z,
    generalized_comparative_sharedness,
    last_layer_score,
    layer_pair_correlations,
    layerwise_table,
    max_correlation,
    max_correlation_p_value,
    monotonicity_margin,
    mppc,
    rank_masses,
    shuffle_null,
    topk_cumulative_activation,
    wmppc,
    wmppc_increment,
    wmppc_topk_curve,
)
from xsae.sae import Codes


def reference_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1]:]


def random_codes(n_rows: int, n_features: int, k: int, seed: int) -> Codes:
    """TopK-like codes: k distinct features per row, positive values."""
    g = torch.Generator().manual_seed(seed)
    indices = torch.rand(n_rows, n_features, generator=g).argsort(dim=1)[:, :k]
    values = torch.rand(n_rows, k, generator=g, dtype=torch.float64) + 0.1
    return Codes(values, indices)


def correlated_pair(n_rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_rows, 9))
    b = np.concatenate([0.7 * a[:, :4] + rng.standard_normal((n_rows, 4)),
                        rng.standard_normal((n_rows, 3))], 1)
    return a, b


# ---- correlations against np.corrcoef ------------------------------------------------------------
def test_correlation_matrix_matches_corrcoef_despite_large_means():
    a, b = correlated_pair()
    a, b = a * 0.01 + 1e4, b * 3 - 5e3  # raw moments would cancel ~1e12-fold here
    for chunk_rows in (1, 7, 64, 10_000):
        got = correlation_matrix(a, b, chunk_rows=chunk_rows).numpy()
        assert np.abs(got - reference_correlations(a, b)).max() < 1e-10


def test_float32_matmul_is_accurate_to_1e6():
    a, b = correlated_pair()
    got = correlation_matrix(torch.tensor(a, dtype=torch.float32) + 100, torch.tensor(b, dtype=torch.float32),
                             chunk_rows=50, matmul_dtype=torch.float32).numpy()
    ref = reference_correlations(a.astype(np.float32).astype(np.float64) + 100, b.astype(np.float32))
    assert np.abs(got - ref).max() < 1e-5


def test_streamed_sources_in_uneven_chunks():
    a, b = correlated_pair()
    ref = reference_correlations(a, b)
    bounds = [0, 1, 50, 51, 300, 400]
    chunks_a = [a[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    chunks_b = [torch.tensor(b[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    for source_a, source_b in [(chunks_a, chunks_b), (a, chunks_b), (chunks_a, b),
                               (lambda: iter(chunks_a), lambda: (c for c in chunks_b))]:
        got = correlation_matrix(source_a, source_b, chunk_rows=32).numpy()
        assert np.abs(got - ref).max() < 1e-10


def test_codes_sparse_and_dense_paths_match_corrcoef():
    m_a, m_b = 20, 13
    codes_a, codes_b = random_codes(300, m_a, 4, seed=1), random_codes(300, m_b, 3, seed=2)
    ref = reference_correlations(codes_a.dense(m_a).numpy(), codes_b.dense(m_b).numpy())
    for method in ("sparse", "dense", "auto"):
        got = correlation_matrix(codes_a, codes_b, n_features_a=m_a, n_features_b=m_b, chunk_rows=37,
                                 method=method).numpy()
        assert np.abs(got - ref).max() < 1e-10, method
    mixed = correlation_matrix(codes_a, codes_b.dense(m_b).numpy(), n_features_a=m_a).numpy()
    assert np.abs(mixed - ref).max() < 1e-10


@pytest.mark.parametrize("method", ["sparse", "dense"])
@pytest.mark.parametrize("block_elements", [20, 20 * 5, 2**26])
def test_max_correlation_equals_row_max_of_corrcoef(method, block_elements):
    m_a, m_b = 20, 13
    codes_a, codes_b = random_codes(500, m_a, 5, seed=3), random_codes(500, m_b, 4, seed=4)
    ref = reference_correlations(codes_a.dense(m_a).numpy(), codes_b.dense(m_b).numpy())
    result = max_correlation(codes_a, codes_b, n_features_a=m_a, n_features_b=m_b, chunk_rows=64,
                             block_elements=block_elements, method=method, matmul_dtype=torch.float64)
    assert np.abs(result.rho.numpy() - ref.max(1)).max() < 1e-10
    assert result.best_match.tolist() == ref.argmax(1).tolist()
    assert result.n_rows == 500
    assert torch.allclose(result.moments_b.mean, codes_b.dense(m_b).mean(0))


def test_max_correlation_float32_default_dense_inputs_in_blocks():
    a, b = correlated_pair()
    ref = reference_correlations(a, b)
    result = max_correlation(torch.tensor(a, dtype=torch.float32), b, block_elements=9 * 2, chunk_rows=100)
    assert np.abs(result.rho.numpy() - ref.max(1)).max() < 1e-5
    assert result.best_match.tolist() == ref.argmax(1).tolist()


def test_column_moments_and_activation_mass():
    x = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 5.0, 2.0]])
    moments = column_moments(x, chunk_rows=2)
    assert moments.activation_mass.tolist() == [6.0, 5.0, 6.0]
    assert np.allclose(moments.std.numpy(), x.std(0))  # population (÷N) standard deviation
    assert moments.alive.tolist() == [True, True, False]
    codes = random_codes(50, 8, 3, seed=5)
    from_codes = column_moments(codes, n_features=8, chunk_rows=7)
    dense = codes.dense(8).numpy()
    assert np.allclose(from_codes.mean.numpy(), dense.mean(0), atol=1e-15)
    assert np.allclose(from_codes.m2.numpy(), ((dense - dense.mean(0)) ** 2).sum(0), atol=1e-12)
    assert from_codes.minimum.tolist() == dense.min(0).tolist()
    assert from_codes.maximum.tolist() == dense.max(0).tolist()


def test_zero_valued_padding_like_batchtopk_is_ignored():
    """BatchTopK rows carry (index 0, value 0) padding, possibly repeating a real index 0."""
    m = 9
    codes = random_codes(200, m, 3, seed=15)
    pad = torch.zeros(200, 2, dtype=torch.long)
    padded = Codes(torch.cat([codes.values, torch.zeros(200, 2, dtype=torch.float64)], 1),
                   torch.cat([codes.indices, pad], 1))
    other = random_codes(200, m, 4, seed=16)
    ref = reference_correlations(codes.dense(m).numpy(), other.dense(m).numpy())
    for method in ("sparse", "dense"):
        got = correlation_matrix(padded, other, n_features_a=m, n_features_b=m, method=method).numpy()
        assert np.abs(got - ref).max() < 1e-10, method
    moments = column_moments(padded, n_features=m)
    dense = codes.dense(m).numpy()
    assert np.allclose(moments.m2.numpy(), ((dense - dense.mean(0)) ** 2).sum(0), atol=1e-12)
    assert moments.minimum.tolist() == dense.min(0).tolist()
    assert rank_masses(padded, 3, n_features=m).tolist() == rank_masses(codes, 3, n_features=m).tolist()


def test_a_feature_active_on_every_row_with_one_value_is_dead():
    codes = random_codes(64, 6, 2, seed=14)
    values, indices = codes.values.clone(), codes.indices.clone()
    indices[:, 0] = 6  # feature 6 is selected on every row, always with 0.25
    values[:, 0] = 0.25
    with_constant = Codes(values, indices)
    for method in ("sparse", "dense"):
        result = max_correlation(with_constant, with_constant, n_features_a=7, n_features_b=7, method=method)
        assert result.alive_a.tolist() == [True] * 6 + [False]
        assert result.rho[6] == 0 and result.best_match[6] == -1 and 6 not in result.best_match.tolist()


# ---- known answers for (w)MPPC ----------------------------------------------------------------------
def test_identical_saes_have_wmppc_one():
    codes = random_codes(400, 30, 4, seed=6)
    result = max_correlation(codes, codes, n_features_a=30, n_features_b=30)
    assert torch.allclose(result.rho, torch.ones(30, dtype=torch.float64), atol=1e-12)
    assert wmppc(result.rho, result.activation_mass) == pytest.approx(1.0, abs=1e-12)
    assert mppc(result.rho) == pytest.approx(1.0, abs=1e-12)


def test_column_permuted_copy_has_wmppc_one_and_recovers_the_permutation():
    codes = random_codes(400, 30, 4, seed=7)
    permutation = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    inverse = torch.argsort(permutation)
    permuted = Codes(codes.values, inverse[codes.indices])  # feature j of A is feature inverse[j] of B
    for method in ("sparse", "dense"):
        result = max_correlation(codes, permuted, n_features_a=30, n_features_b=30, method=method)
        assert wmppc(result.rho, result.activation_mass) == pytest.approx(1.0, abs=1e-6)
        assert result.best_match.tolist() == inverse.tolist()


def test_weighted_mean_matches_hand_computation():
    rho, weights = [0.5, 1.0, 0.0], [1.0, 3.0, 0.0]
    assert wmppc(rho, weights) == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)
    assert wmppc(np.array(rho), torch.tensor(weights) * 7) == pytest.approx(0.875)
    assert mppc(rho) == pytest.approx(0.5)
    assert mppc(rho, alive=[True, True, False]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="nonnegative"):
        wmppc(rho, [1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="zero"):
        wmppc(rho, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        wmppc(rho, [1.0, 1.0])


def test_wmppc_equals_the_per_sample_form_of_proposition_1():
    codes = random_codes(200, 12, 3, seed=8)
    dense = codes.dense(12).numpy()
    rho = np.random.default_rng(0).uniform(-0.2, 1.0, 12)
    per_sample = (dense * rho).sum() / dense.sum()  # Eq. 3: Σ_x Σ_i a_i(x) ρ_i / Σ_ℓ S_ℓ
    mass = column_moments(codes, n_features=12).activation_mass
    assert wmppc(rho, mass) == pytest.approx(per_sample, rel=1e-12)


# ---- Top-k weights and Proposition 2 --------------------------------------------------------------------
def test_rank_masses_by_sample_and_by_feature():
    x = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    # row 0 ranks f0 (3), f2 (2), f1 (1); row 1 ranks f1 (5), f2 (4), f0 (0)
    assert rank_masses(x, 3).tolist() == [[3, 5, 0], [0, 0, 6], [0, 1, 0]]
    # per feature over the data: f0 (3, 0), f1 (5, 1), f2 (4, 2); no third row exists
    assert rank_masses(x, 3, ranking="feature", chunk_rows=1).tolist() == [[3, 5, 4], [0, 1, 2], [0, 0, 0]]
    assert topk_cumulative_activation(x, 2).tolist() == [3, 5, 6]
    with pytest.raises(ValueError, match="nonnegative"):
        rank_masses(-x, 1)


def test_topk_mass_of_topk_codes_is_the_activation_mass():
    codes = random_codes(120, 15, 4, seed=9)
    masses = rank_masses(codes, 4, n_features=15, chunk_rows=50)
    assert torch.allclose(masses.sum(0), column_moments(codes, n_features=15).activation_mass)
    dense_masses = rank_masses(codes.dense(15), 3)
    assert torch.allclose(masses[:3], dense_masses)
    with pytest.raises(ValueError, match="exceeds the codes' k"):
        rank_masses(codes, 5, n_features=15)


def test_proposition_2_incremental_update_matches_recomputation():
    rng = np.random.default_rng(1)
    activations = np.maximum(rng.standard_normal((300, 25)) + 0.3, 0)
    rho = rng.uniform(-0.1, 0.9, 25)
    masses = rank_masses(activations, 10).numpy()
    curve = wmppc_topk_curve(rho, masses).numpy()
    for k in range(1, 11):
        cumulative = masses[:k].sum(0)  # c_i^(k)
        assert curve[k - 1] == pytest.approx((cumulative * rho).sum() / cumulative.sum(), rel=1e-12)
        weights = topk_cumulative_activation(activations, k)
        assert wmppc(rho, weights) == pytest.approx(curve[k - 1], rel=1e-12)
    for k in range(1, 10):
        total_k = masses[:k].sum()
        next_value, next_total = wmppc_increment(curve[k - 1], total_k, masses[k], rho)
        assert next_value == pytest.approx(curve[k], rel=1e-12)
        assert next_total == pytest.approx(masses[: k + 1].sum())
        margin = monotonicity_margin(masses[k], rho, curve[k - 1])  # Corollary 1
        assert (margin >= 0) == (curve[k] >= curve[k - 1])
        assert margin / next_total == pytest.approx(curve[k] - curve[k - 1], abs=1e-15)


def test_incremental_update_known_numbers():
    # C^(k) = 4, wMPPC_(k) = 0.5; add a = (2, 0) on ρ = (1, 0): wMPPC_(k+1) = (0.5·4 + 2) / 6 = 2/3
    assert wmppc_increment(0.5, 4.0, [2.0, 0.0], [1.0, 0.0]) == pytest.approx((2 / 3, 6.0))
    with pytest.raises(ValueError, match="undefined"):
        wmppc_increment(0.0, 0.0, [0.0, 0.0], [1.0, 0.0])


# ---- layers ------------------------------------------------------------------------------------------------
def test_layer_aggregation_all_and_last():
    rng = np.random.default_rng(2)
    n = 600
    a0, a1 = np.abs(rng.standard_normal((n, 6))), np.abs(rng.standard_normal((n, 6)))
    b0 = np.abs(rng.standard_normal((n, 5)))
    b1 = np.concatenate([a1[:, [3, 0, 5, 1, 4, 2]], np.abs(rng.standard_normal((n, 2)))], 1)
    pairs = layer_pair_correlations({"l0": a0, "l1": a1}, {"l0": b0, "l1": b1}, matmul_dtype=torch.float64)
    assert list(pairs) == [("l0", "l0"), ("l0", "l1"), ("l1", "l0"), ("l1", "l1")]
    assert last_layer_score(pairs) == pytest.approx(1.0, abs=1e-12)  # b1 holds a permuted copy of a1
    mass0 = a0.sum(0)
    rho0 = np.maximum(reference_correlations(a0, b0).max(1), reference_correlations(a0, b1).max(1))
    expected = ((mass0 * rho0).sum() / mass0.sum() + 1.0) / 2
    assert all_layers_score(pairs) == pytest.approx(expected, rel=1e-10)
    assert all_layers_score(pairs, weighting="uniform") == pytest.approx((rho0.mean() + 1.0) / 2, rel=1e-10)
    table = layerwise_table(pairs)
    assert table.shape == (4, 4)
    row = table[(table.layer_a == "l0") & (table.layer_b == "l0")].iloc[0]
    rho00 = reference_correlations(a0, b0).max(1)
    assert row.wmppc == pytest.approx((mass0 * rho00).sum() / mass0.sum(), rel=1e-10)
    assert row.mppc == pytest.approx(rho00.mean(), rel=1e-10)
    with pytest.raises(ValueError, match="weighting"):
        last_layer_score(pairs, weighting="bogus")


def test_all_layers_readings_on_layers_of_different_widths():
    """A's layers have 4 and 8 features: the layer mean weights their scores 1:2 (the authors' code
    weights by feature count), the pooled reading is one wMPPC over all 12 features."""
    rng = np.random.default_rng(5)
    n = 500
    a0, a1 = np.abs(rng.standard_normal((n, 4))), np.abs(rng.standard_normal((n, 8)))
    b0 = np.concatenate([a1[:, [2, 5]], np.abs(rng.standard_normal((n, 3)))], 1)
    b1 = np.abs(rng.standard_normal((n, 6)))
    pairs = layer_pair_correlations({"l0": a0, "l1": a1}, {"l0": b0, "l1": b1}, matmul_dtype=torch.float64)
    rho = [np.maximum(reference_correlations(a, b0).max(1), reference_correlations(a, b1).max(1))
           for a in (a0, a1)]
    mass = [a0.sum(0), a1.sum(0)]
    per_layer = [(m * r).sum() / m.sum() for m, r in zip(mass, rho, strict=True)]
    assert all_layers_score(pairs) == pytest.approx((4 * per_layer[0] + 8 * per_layer[1]) / 12, rel=1e-10)
    pooled = (np.concatenate(mass) * np.concatenate(rho)).sum() / np.concatenate(mass).sum()
    assert all_layers_score(pairs, reading="pooled") == pytest.approx(pooled, rel=1e-10)
    uniform_pooled = np.concatenate(rho).mean()
    assert all_layers_score(pairs, "uniform", "pooled") == pytest.approx(uniform_pooled, rel=1e-10)
    assert all_layers_score(pairs, "uniform") == pytest.approx((4 * rho[0].mean() + 8 * rho[1].mean()) / 12)
    assert abs(pooled - all_layers_score(pairs)) > 1e-4  # the readings differ here
    with pytest.raises(ValueError, match="reading"):
        all_layers_score(pairs, reading="bogus")


# ---- Comparative Sharedness ------------------------------------------------------------------------------
def test_comparative_sharedness_hand_example():
    table = comparative_sharedness([2.0, 1.0, 4.0], [0.9, 0.2, 0.5], [0.1, 0.8, 0.5])
    assert table.sharedness.tolist() == pytest.approx([2 * (0.81 - 0.01), 1 * (0.04 - 0.64), 0.0])
    assert table["rank"].tolist() == [1, 3, 2]
    assert list(table.columns) == ["feature", "activation_mass", "rho_a", "rho_b", "sharedness", "rank"]


def test_comparative_sharedness_on_three_models_built_from_data():
    """M has three features; A copies M's feature 0, B copies M's feature 1, nobody has feature 2."""
    rng = np.random.default_rng(3)
    n = 2000
    m = np.abs(rng.standard_normal((n, 3)))
    a = np.concatenate([m[:, [0]] + 0.1 * rng.random((n, 1)), np.abs(rng.standard_normal((n, 2)))], 1)
    b = np.concatenate([np.abs(rng.standard_normal((n, 2))), m[:, [1]]], 1)
    to_a, to_b = max_correlation(m, a), max_correlation(m, b)
    table = comparative_sharedness(to_a.activation_mass, to_a.rho, to_b.rho)
    assert table.sharedness[0] > 0.9 * m[:, 0].sum() and table.sharedness[1] < -0.9 * m[:, 1].sum()
    assert abs(table.sharedness[2]) < 0.01 * m[:, 2].sum()
    assert table["rank"].tolist() == [1, 3, 2]
    expected = m.sum(0) * (to_a.rho.numpy() ** 2 - to_b.rho.numpy() ** 2)
    assert table.sharedness.to_numpy() == pytest.approx(expected)


def test_generalized_comparative_sharedness_uses_true_min_and_max():
    rho = {"g1": [0.9, 0.6, 0.3], "g2": [0.8, 0.7, 0.4], "h1": [0.1, 0.5, 0.2], "h2": [0.2, 0.1, 0.9]}
    table = generalized_comparative_sharedness([1.0, 2.0, 1.0], rho, ["g1", "g2"], ["h1", "h2"])
    # feature 0: min_G 0.8 (g2), max_H 0.2 (h2): 0.64 − 0.04; a zero-started min would give −0.04
    assert table.min_rho_shared.tolist() == [0.8, 0.6, 0.3]
    assert table.least_shared_model.tolist() == ["g2", "g1", "g1"]
    assert table.max_rho_not_shared.tolist() == [0.2, 0.5, 0.9]
    assert table.most_shared_model.tolist() == ["h2", "h1", "h2"]
    assert table.sharedness.tolist() == pytest.approx([0.60, 2 * (0.36 - 0.25), 0.09 - 0.81])
    assert table["rank"].tolist() == [1, 2, 3]


def test_generalized_form_with_singleton_groups_is_eq_6():
    rng = np.random.default_rng(4)
    mass, rho_a, rho_b = rng.random(50), rng.uniform(-0.2, 1, 50), rng.uniform(-0.2, 1, 50)
    eq6 = comparative_sharedness(mass, rho_a, rho_b).sharedness.to_numpy()
    eq7 = generalized_comparative_sharedness(mass, {"A": rho_a, "B": rho_b}, ["A"], ["B"])
    eq7 = eq7.sharedness.to_numpy()
    assert eq7 == pytest.approx(eq6, rel=1e-12, abs=1e-15)


def test_generalized_comparative_sharedness_rejects_bad_groups():
    rho = {"a": [0.5], "b": [0.1]}
    with pytest.raises(ValueError, match="both groups"):
        generalized_comparative_sharedness([1.0], rho, ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty"):
        generalized_comparative_sharedness([1.0], rho, [], ["b"])
    with pytest.raises(ValueError, match="no rho for models"):
        generalized_comparative_sharedness([1.0], rho, ["a"], ["c"])


# ---- dead features ---------------------------------------------------------------------------------------
def test_dead_features_give_zero_never_nan():
    a, b = (np.abs(x) for x in correlated_pair(200))  # activations: nonnegative
    a[:, 2] = 0.0  # never active
    a[:, 5] = 0.1  # constant: rounding leaves M2 ≈ 1e-33, still dead
    b[:, 1] = 7.0
    corr = correlation_matrix(a, b, chunk_rows=30).numpy()
    assert np.isfinite(corr).all()
    assert (corr[[2, 5]] == 0).all() and (corr[:, 1] == 0).all()
    live = np.delete(np.arange(9), [2, 5])
    live_b = np.delete(np.arange(7), 1)
    ref = reference_correlations(a[:, live], b[:, live_b])
    assert np.abs(corr[np.ix_(live, live_b)] - ref).max() < 1e-10
    result = max_correlation(a, b)
    assert result.rho[[2, 5]].tolist() == [0.0, 0.0] and result.best_match[[2, 5]].tolist() == [-1, -1]
    assert 1 not in result.best_match.tolist()
    assert result.alive_a.tolist() == [i not in (2, 5) for i in range(9)]
    assert math.isfinite(wmppc(result.rho, result.activation_mass))
    assert mppc(result.rho, alive=result.alive_a) == pytest.approx(result.rho[result.alive_a].mean().item())


def test_dead_features_in_codes_and_an_all_dead_target():
    codes = random_codes(100, 10, 2, seed=10)
    values = codes.values.clone()
    values[codes.indices == 3] = 0.0  # feature 3 selected but always zero: dead
    dead3 = Codes(values, codes.indices)
    result = max_correlation(dead3, dead3, n_features_a=10, n_features_b=10, method="sparse")
    assert result.rho[3] == 0 and result.best_match[3] == -1 and torch.isfinite(result.rho).all()
    flat = np.zeros((100, 4))
    everything_dead = max_correlation(codes, flat, n_features_a=10)
    assert everything_dead.rho.tolist() == [0.0] * 10 and everything_dead.best_match.tolist() == [-1] * 10


# ---- shuffle null and significance -------------------------------------------------------------------------
def test_independent_features_are_at_the_shuffle_null_and_near_zero():
    codes_a, codes_b = random_codes(20_000, 24, 4, seed=11), random_codes(20_000, 24, 4, seed=12)
    null = shuffle_null(codes_a, codes_b, n_permutations=3, seed=0, n_features_a=24, n_features_b=24,
                        chunk_rows=8192)
    assert null.observed < 0.05 and float(null.null.max()) < 0.05
    assert abs(null.observed - float(null.null.mean())) < 0.015
    assert null.p_value > 0.25


def test_shared_features_beat_the_shuffle_null():
    codes = random_codes(3000, 16, 3, seed=13)
    noise = torch.rand(codes.values.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noisy = Codes(codes.values * (1 + 0.3 * noise), codes.indices)
    null = shuffle_null(codes, noisy, n_permutations=4, seed=5, n_features_a=16, n_features_b=16)
    assert null.observed > 0.9 and float(null.null.max()) < 0.1
    assert null.p_value == pytest.approx(1 / 5)
    again = shuffle_null(codes, noisy, n_permutations=4, seed=5, n_features_a=16, n_features_b=16)
    assert torch.equal(null.null, again.null)
    other = shuffle_null(codes, noisy, n_permutations=4, seed=6, n_features_a=16, n_features_b=16)
    assert not torch.equal(null.null, other.null)
    with pytest.raises(ValueError, match="held in memory"):
        shuffle_null(codes, [noisy], n_features_a=16, n_features_b=16)


def test_fisher_z_and_p_values_match_scipy():
    r, n = np.array([-0.5, 0.0, 0.1, 0.3, 0.95]), 103
    z = fisher_z(r, n)
    assert z == pytest.approx(np.arctanh(r) * 10.0)
    assert correlation_p_value(r, n) == pytest.approx(stats.norm.sf(z), rel=1e-12)
    assert correlation_p_value(r, n, "less") == pytest.approx(stats.norm.cdf(z), rel=1e-12)
    assert correlation_p_value(r, n, "two-sided") == pytest.approx(2 * stats.norm.sf(np.abs(z)), rel=1e-12)
    assert fisher_z(1.0, n) == math.inf and correlation_p_value(torch.tensor(1.0), n) == 0.0
    # the normal approximation is close to the exact test of scipy.stats.pearsonr
    rng = np.random.default_rng(5)
    x = rng.standard_normal(2000)
    y = 0.05 * x + rng.standard_normal(2000)
    exact = stats.pearsonr(x, y)
    assert correlation_p_value(exact.statistic, 2000, "two-sided") == pytest.approx(exact.pvalue, rel=0.02)
    with pytest.raises(ValueError, match="n_samples"):
        fisher_z(0.1, 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fisher_z(1.2, 10)


def test_max_correlation_p_value_appendix_c():
    # the paper's example: 8192 target features, L = 10000 samples, ρ = 0.3: P ≈ 1e-206
    p = max_correlation_p_value(0.3, 10_000, 8192)
    assert -207.5 < math.log10(p) < -205
    z = np.arctanh(0.04) * math.sqrt(997)
    assert max_correlation_p_value(0.04, 1000, 50) == pytest.approx(1 - stats.norm.cdf(z) ** 50, rel=1e-10)
    assert max_correlation_p_value([0.1, 0.2], 500, 1) == pytest.approx(correlation_p_value([0.1, 0.2], 500))


# ---- input handling ------------------------------------------------------------------------------------
def test_one_shot_iterators_work_for_one_block_and_fail_clearly_for_more():
    a, b = correlated_pair()
    one_block = max_correlation((c for c in np.array_split(a, 4)), (c for c in np.array_split(b, 4)),
                                n_features_a=9, matmul_dtype=torch.float64)
    assert np.abs(one_block.rho.numpy() - reference_correlations(a, b).max(1)).max() < 1e-10
    with pytest.raises(ValueError, match="one-shot iterator"):
        max_correlation(a, (c for c in np.array_split(b, 4)), block_elements=9 * 3)


def test_bad_inputs_raise_clear_errors():
    a, b = correlated_pair()
    codes = random_codes(10, 5, 2, seed=0)
    with pytest.raises(ValueError, match="400 rows but b has 399"):
        max_correlation(a, b[:-1])
    with pytest.raises(ValueError, match="n_features"):
        max_correlation(codes, codes)
    with pytest.raises(ValueError, match="outside"):
        max_correlation(codes, codes, n_features_a=3, n_features_b=5)
    with pytest.raises(ValueError, match="repeat a feature index with non-zero"):
        duplicated = Codes(codes.values, torch.zeros_like(codes.indices))
        max_correlation(duplicated, codes, n_features_a=5, n_features_b=5)
    bad = a.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        max_correlation(bad, b)
    with pytest.raises(ValueError, match="chunk_rows"):
        max_correlation(a, b, chunk_rows=0)
    with pytest.raises(ValueError, match="matmul_dtype"):
        max_correlation(a, b, matmul_dtype=torch.float16)
    with pytest.raises(ValueError, match="method"):
        max_correlation(a, b, method="fast")
    with pytest.raises(ValueError, match="different numbers of chunks"):
        correlation_matrix([a[:200], a[200:]], [b[:200]])
    with pytest.raises(ValueError, match="2-D"):
        max_correlation(a[:, 0], b)
    with pytest.raises(ValueError, match="sparse"):
        max_correlation(a, b, method="sparse")
    with pytest.raises(TypeError, match="row chunk"):
        max_correlation([a.tolist()], b, n_features_a=9)


def test_device_argument_and_results_on_cpu():
    a, b = correlated_pair()
    result = max_correlation(torch.tensor(a), torch.tensor(b), device="cpu", matmul_dtype=torch.float64)
    assert result.rho.device.type == "cpu" and result.rho.dtype == torch.float64
    assert np.abs(result.rho.numpy() - reference_correlations(a, b).max(1)).max() < 1e-10
