"""xsae.alignment: coactivation correlation, Hungarian matching, re-indexing a stream, Figure 2 data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from xsae.alignment import (
    FIGURE2_BINS,
    Coactivation,
    LatentMatching,
    align_streams,
    coactivation_correlation,
    decoder_cosine_by_correlation,
    match_latents,
    permute_codes,
    permute_stream_latents,
)
from xsae.sae import Codes, SAEConfig, SparseAutoencoder

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def random_codes(n_rows: int, n_latents: int, k: int, seed: int, never: tuple[int, ...] = ()) -> Codes:
    """k distinct latents per row, Exp(1) values; latents in `never` are never selected."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_rows, n_latents, generator=g)
    scores[:, list(never)] = -1.0
    indices = scores.topk(k, dim=1).indices
    values = torch.empty(n_rows, k, dtype=torch.float64).exponential_(generator=g)
    return Codes(values, indices)


def reference_correlation(dense_a: np.ndarray, dense_b: np.ndarray) -> np.ndarray:
    """np.corrcoef on dense codes, with the NaN of zero-variance latents replaced by 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(dense_a.T, dense_b.T)[: dense_a.shape[1], dense_a.shape[1]:]
    return np.nan_to_num(full, nan=0.0)


# Stream a: latents 2 and 7 never selected; latent 5 is selected in row 0 with value 0 only -> dead.
N, LA, LB = 257, 13, 11
CODES_A = random_codes(N, LA, 3, seed=1, never=(2, 7))
CODES_B = random_codes(N, LB, 4, seed=2, never=(10,))
CODES_A.values[CODES_A.indices == 5] = 0.0
# Make b's latent 0 follow a's latent 1 so that at least one correlation is large.
DENSE_A = CODES_A.dense(LA).numpy()
DENSE_B = CODES_B.dense(LB).numpy()
DENSE_B[:, 0] = 2.0 * DENSE_A[:, 1] + 0.1 * DENSE_B[:, 0]
CODES_B_DENSE = torch.from_numpy(DENSE_B.copy())
EXPECTED = reference_correlation(DENSE_A, DENSE_B)


@pytest.mark.parametrize("chunk_rows", [1, 2, 64, 100, 256, 257, 4096])
def test_correlation_equals_corrcoef_at_any_chunking(chunk_rows):
    stats = coactivation_correlation(CODES_A, CODES_B_DENSE, LA, LB, chunk_rows=chunk_rows)
    assert stats.correlation.dtype == torch.float64 and stats.correlation.shape == (LA, LB)
    assert not torch.isnan(stats.correlation).any()
    np.testing.assert_allclose(stats.correlation.numpy(), EXPECTED, atol=1e-10, rtol=0)
    assert stats.n_samples == N
    assert abs(float(stats.correlation[1, 0])) > 0.9


def test_dead_latents_are_zero_and_marked():
    stats = coactivation_correlation(CODES_A, CODES_B_DENSE, LA, LB)
    dead_a = [2, 5, 7]
    assert (stats.correlation[dead_a] == 0).all() and (stats.correlation[:, 10] == 0).all()
    assert np.flatnonzero(~stats.alive_a.numpy()).tolist() == dead_a
    assert np.flatnonzero(~stats.alive_b.numpy()).tolist() == [10]


def test_constant_latent_has_no_defined_correlation():
    dense_a = DENSE_A.copy()
    dense_a[:, 3] = 0.7  # fires on every sample with one value: zero variance, yet not dead
    stats = coactivation_correlation(torch.from_numpy(dense_a), CODES_B_DENSE, LA, LB, chunk_rows=50)
    assert not bool(stats.alive_a[3]) and (stats.correlation[3] == 0).all()
    np.testing.assert_allclose(stats.correlation.numpy(), reference_correlation(dense_a, DENSE_B),
                               atol=1e-10, rtol=0)


def test_accepts_iterables_arrays_and_uneven_chunks():
    bounds = [0, 100, 157, 257]
    chunks_a = [Codes(CODES_A.values[lo:hi], CODES_A.indices[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    chunks_b = (DENSE_B[lo:hi] for lo, hi in itertools.pairwise(bounds))  # a one-shot generator of arrays
    stats = coactivation_correlation(chunks_a, chunks_b, LA, LB, chunk_rows=64)
    np.testing.assert_allclose(stats.correlation.numpy(), EXPECTED, atol=1e-10, rtol=0)
    both_dense = coactivation_correlation(DENSE_A, [CODES_B_DENSE], LA, LB, chunk_rows=30)
    np.testing.assert_allclose(both_dense.correlation.numpy(), EXPECTED, atol=1e-10, rtol=0)


def test_inputs_are_not_modified():
    values, indices, dense = CODES_A.values.clone(), CODES_A.indices.clone(), DENSE_B.copy()
    coactivation_correlation(CODES_A, DENSE_B, LA, LB, chunk_rows=10)
    assert torch.equal(CODES_A.values, values) and torch.equal(CODES_A.indices, indices)
    assert np.array_equal(DENSE_B, dense)


def test_dense_relu_codes():
    g = torch.Generator().manual_seed(3)
    a = torch.relu(torch.randn(300, 20, generator=g, dtype=torch.float64))  # half the entries non-zero
    b = torch.relu(a[:, :15] + torch.randn(300, 15, generator=g, dtype=torch.float64))
    stats = coactivation_correlation(a, b, 20, 15, chunk_rows=77)
    np.testing.assert_allclose(stats.correlation.numpy(), reference_correlation(a.numpy(), b.numpy()),
                               atol=1e-10, rtol=0)


def test_batchtopk_padding_duplicates_are_summed():
    # Row 0 selects latent 0 for real and pads with (index 0, value 0), as BatchTopK does.
    values = torch.tensor([[2.0, 0.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [4.0, 1.0, 2.0]],
                          dtype=torch.float64)
    indices = torch.tensor([[0, 0, 0], [1, 2, 0], [0, 0, 0], [0, 1, 2]])
    padded = Codes(values, indices)
    dense = np.zeros((4, 3))
    np.add.at(dense, (np.arange(4)[:, None].repeat(3, 1), indices.numpy()), values.numpy())
    other = np.array([[1.0, 0], [0, 2], [1, 1], [3, 0]])
    stats = coactivation_correlation(padded, other, 3, 2, chunk_rows=3)
    np.testing.assert_allclose(stats.correlation.numpy(), reference_correlation(dense, other),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad_b, message", [
    (Codes(CODES_B.values[:-1], CODES_B.indices[:-1]), "codes_a has 257 rows but codes_b has 256"),
    (torch.zeros(N, LB + 1), "codes_b has 12 features, expected 11"),
    (Codes(CODES_B.values, CODES_B.indices + 2), r"codes_b have feature indices in \[2, 11\]"),
])
def test_bad_codes_are_named(bad_b, message):
    with pytest.raises(ValueError, match=message):
        coactivation_correlation(CODES_A, bad_b, LA, LB, chunk_rows=128)


def test_bad_arguments():
    nan_codes = Codes(CODES_A.values.clone(), CODES_A.indices)
    nan_codes.values[3, 1] = float("nan")
    with pytest.raises(ValueError, match="codes_a contain NaN"):
        coactivation_correlation(nan_codes, CODES_B, LA, LB)
    with pytest.raises(ValueError, match="10 rows in codes_a, 9 in codes_b"):
        coactivation_correlation([DENSE_A[:10]], [DENSE_B[:9]], LA, LB)
    with pytest.raises(ValueError, match="at least 2"):
        coactivation_correlation(DENSE_A[:1], DENSE_B[:1], LA, LB)
    with pytest.raises(ValueError, match="chunk_rows"):
        coactivation_correlation(DENSE_A, DENSE_B, LA, LB, chunk_rows=0)
    with pytest.raises(TypeError, match="row chunk must be a tensor, array or Codes, got str"):
        coactivation_correlation(["not codes"], DENSE_B, LA, LB)


@CUDA
def test_gpu_matches_cpu():
    gpu = coactivation_correlation(Codes(CODES_A.values.cuda(), CODES_A.indices.cuda()),
                                   CODES_B_DENSE.cuda(), LA, LB, chunk_rows=100)
    assert gpu.correlation.device.type == "cuda"
    np.testing.assert_allclose(gpu.correlation.cpu().numpy(), EXPECTED, atol=1e-10, rtol=0)
    assert gpu.alive_a.cpu().tolist() == coactivation_correlation(CODES_A, DENSE_B, LA, LB).alive_a.tolist()


# ---- matching ------------------------------------------------------------------------------------
def assert_permutation(perm: np.ndarray, size: int) -> None:
    assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(size))


def test_hungarian_recovers_planted_permutation():
    rng = np.random.default_rng(0)
    size = 200
    planted = rng.permutation(size)
    correlation = 0.3 * rng.random((size, size))
    correlation[np.arange(size), planted] = 0.2 + 0.1 * rng.random(size)  # lower than some noise
    correlation[np.arange(size), planted] += 0.15
    matching = match_latents(correlation)
    assert matching.permutation.tolist() == planted.tolist()
    assert matching.matched.all() and matching.n_matched == size
    np.testing.assert_array_equal(matching.correlation, correlation[np.arange(size), planted])


def test_hungarian_is_the_optimum_not_greedy():
    greedy_trap = np.array([[0.9, 0.8, 0.0], [0.85, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert match_latents(greedy_trap).permutation.tolist() == [1, 0, 2]  # 2.15 > greedy 1.4
    rng = np.random.default_rng(1)
    for _ in range(5):
        correlation = rng.uniform(-1, 1, (6, 6))
        best = max(itertools.permutations(range(6)), key=lambda p: correlation[range(6), p].sum())
        found = match_latents(correlation).permutation
        optimum = correlation[range(6), best].sum()
        assert correlation[range(6), found].sum() == pytest.approx(optimum, abs=1e-12)


def test_matching_uses_signed_correlation():
    anti = np.array([[-0.9, 0.1], [0.1, -0.9]])  # |c| would pair the mutually exclusive latents
    assert match_latents(anti).permutation.tolist() == [1, 0]


def test_dead_latents_are_excluded_then_paired_in_index_order():
    correlation = np.array([[0.0, 0.0, 0.0, 0.0],
                            [0.1, 0.0, 0.0, 0.9],
                            [0.0, 0.0, 0.0, 0.0],
                            [0.8, 0.0, 0.0, 0.2]])
    alive_a = np.array([False, True, False, True])
    alive_b = np.array([True, False, False, True])
    matching = match_latents(correlation, alive_a, alive_b)
    # alive: 1<->3 and 3<->0 by Hungarian; dead 0, 2 (reference) take 1, 2 (moved) in order
    assert matching.permutation.tolist() == [1, 3, 2, 0]
    assert matching.matched.tolist() == [False, True, False, True]
    assert matching.mean_matched_correlation == pytest.approx(0.85)
    assert matching.pairs.tolist() == [[1, 3], [3, 0]]


def test_unequal_alive_counts_still_give_a_permutation():
    correlation = np.array([[0.5, 0.1, 0.0], [0.4, 0.3, 0.0], [0.9, 0.2, 0.0]])
    matching = match_latents(correlation, np.array([True, True, True]), np.array([True, False, False]))
    assert matching.permutation.tolist() == [1, 2, 0]  # only 2<->0 is matched
    assert matching.matched.tolist() == [False, False, True]


@pytest.mark.parametrize("kind", ["zeros", "constant", "all_dead", "ties_with_dead"])
def test_always_a_permutation(kind):
    size = 9
    rng = np.random.default_rng(2)
    correlation = {"zeros": np.zeros((size, size)), "constant": np.full((size, size), 0.3),
                   "all_dead": rng.random((size, size)),
                   "ties_with_dead": np.round(rng.random((size, size)), 1)}[kind]
    alive_a = alive_b = None
    if kind == "all_dead":
        alive_a = alive_b = np.zeros(size, dtype=bool)
    if kind == "ties_with_dead":
        alive_a, alive_b = rng.random(size) > 0.3, rng.random(size) > 0.5
    first = match_latents(correlation, alive_a, alive_b)
    assert_permutation(first.permutation, size)
    assert first.permutation.tolist() == match_latents(correlation, alive_a, alive_b).permutation.tolist()
    if kind == "all_dead":
        assert first.permutation.tolist() == list(range(size)) and not first.matched.any()
        assert math.isnan(first.mean_matched_correlation)


def test_matching_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        match_latents(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="alive_a"):
        match_latents(np.zeros((3, 3)), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        match_latents(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    # NaN only in a dead row is never looked at
    dead_nan = match_latents(np.array([[np.nan, 0.0], [0.0, 1.0]]), np.array([False, True]))
    assert dead_nan.permutation.tolist() == [0, 1]


# ---- re-indexing -----------------------------------------------------------------------------------
def make_model(topk: str = "local", n_streams: int = 2, activation: str = "topk", seed: int = 0,
               n_latents: int = 24, k: int = 4) -> SparseAutoencoder:
    config = SAEConfig((6,) * n_streams, n_latents, k, topk, activation=activation)
    model = SparseAutoencoder(config, generator=torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        for s in range(n_streams):
            model.lat_bias[s].normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 10 + s))
            model.pre_bias[s].normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 20 + s))
            model.steps_since_active(s).copy_(torch.arange(n_latents) * (s + 1))
    return model.eval()


def inputs(n_rows: int, n_streams: int = 2, seed: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_rows, 6, generator=g, dtype=torch.float64) for _ in range(n_streams)]


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_permute_preserves_reconstructions_and_permutes_codes(activation):
    model = make_model(activation=activation)
    if activation == "batchtopk":
        model.batch_threshold.fill_(0.2)
    x = inputs(64)
    with torch.no_grad():
        codes_before = model.encode(x)
        recon_before = model(x)
    L = model.config.n_latents
    perm = np.random.default_rng(4).permutation(L)
    counter_before = model.steps_since_active(1).clone()
    enc0_before = model.enc_weight[0].detach().clone()
    permute_stream_latents(model, 1, perm)
    with torch.no_grad():
        codes_after = model.encode(x)
        recon_after = model(x)
    for before, after in zip(recon_before, recon_after, strict=True):
        torch.testing.assert_close(after, before, atol=1e-12, rtol=0)
    torch.testing.assert_close(codes_after[1].dense(L), codes_before[1].dense(L)[:, perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(codes_after[1].dense(L), permute_codes(codes_before[1], perm).dense(L),
                               atol=1e-12, rtol=0)
    assert torch.equal(codes_after[0].dense(L), codes_before[0].dense(L))  # other stream untouched
    assert torch.equal(model.enc_weight[0], enc0_before)
    assert model.steps_since_active(1).tolist() == counter_before[perm].tolist()
    # a cross-decode through the moved stream's decoder is unchanged for its own (permuted) codes
    with torch.no_grad():
        torch.testing.assert_close(model.decode(1, codes_after[1]), recon_before[1], atol=1e-12, rtol=0)


def test_permute_moves_rows_and_grads_exactly():
    model = make_model()
    L = model.config.n_latents
    model.dec_weight[1].grad = torch.arange(L * 6, dtype=torch.float64).reshape(L, 6)
    before = {name: getattr(model, name)[1].detach().clone()
              for name in ("enc_weight", "dec_weight", "lat_bias")}
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(1))
    permute_stream_latents(model, 1, perm)
    for name, tensor in before.items():
        assert torch.equal(getattr(model, name)[1], tensor[perm])
    assert torch.equal(model.dec_weight[1].grad, torch.arange(L * 6, dtype=torch.float64).reshape(L, 6)[perm])


def test_single_stream_global_model_can_be_permuted():
    model = make_model(topk="global", n_streams=1)
    x = inputs(32, n_streams=1)
    with torch.no_grad():
        before = model(x)[0]
    permute_stream_latents(model, 0, list(range(model.config.n_latents))[::-1])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], before, atol=1e-12, rtol=0)


def test_permute_refuses_global_and_shared_models():
    with pytest.raises(ValueError, match="Global TopK"):
        permute_stream_latents(make_model(topk="global"), 0, np.arange(24))
    shared = make_model()
    shared.enc_weight[1] = shared.enc_weight[0]  # streams 0 and 1 share one encoder
    with pytest.raises(ValueError, match="share"):
        permute_stream_latents(shared, 1, np.arange(24))
    fewer = make_model()
    fewer.lat_bias = torch.nn.ParameterList([fewer.lat_bias[0]])  # one bias for both streams
    with pytest.raises(ValueError, match="share weights"):
        permute_stream_latents(fewer, 1, np.arange(24))


@pytest.mark.skipif("shared_weights" not in SAEConfig.__dataclass_fields__,
                    reason="this SAEConfig has no shared_weights option")
def test_permute_refuses_the_shared_weights_option():
    model = SparseAutoencoder(SAEConfig((6, 6), 24, 4, "local", shared_weights=True))
    with pytest.raises(ValueError, match="share"):
        permute_stream_latents(model, 1, np.arange(24))
    with pytest.raises(ValueError, match="share"):
        align_streams(model, 0, 1, DENSE_A, DENSE_A)


def test_permute_refuses_unknown_per_latent_state():
    model = make_model()
    model.register_buffer("latent_usage", torch.zeros(24))
    with pytest.raises(ValueError, match="latent_usage"):
        permute_stream_latents(model, 1, np.arange(24))


@pytest.mark.parametrize("bad", [np.arange(23), np.r_[np.arange(23), 0], np.arange(24) * 1.0, [0] * 24])
def test_permute_rejects_non_permutations(bad):
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="permutation"):
        permute_stream_latents(model, 1, bad)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="stream"):
        permute_stream_latents(model, 2, np.arange(24))


# ---- align_streams ---------------------------------------------------------------------------------
def planted_pair(seed: int) -> tuple[SparseAutoencoder, np.ndarray]:
    """A Local model whose stream 1 is stream 0 with latents renamed: old latent i is new sigma[i]."""
    model = make_model(seed=seed, n_latents=16, k=3)
    sigma = np.random.default_rng(seed).permutation(16)
    inverse = np.argsort(sigma)
    with torch.no_grad():
        for name in ("enc_weight", "dec_weight", "lat_bias"):
            getattr(model, name)[1].copy_(getattr(model, name)[0][inverse])
        model.pre_bias[1].copy_(model.pre_bias[0])
    return model, sigma


def test_align_two_streams_of_one_model():
    model, sigma = planted_pair(seed=7)
    x = inputs(3000, seed=8)
    with torch.no_grad():
        codes = model.encode([x[0], x[0]])  # paired samples: the same input in both streams
    assert (codes[0].dense(16) > 0).any(0).all()  # every latent alive
    report = align_streams(model, 0, 1, codes[0], codes[1], chunk_rows=500)
    assert report["permutation"].tolist() == sigma.tolist()
    assert report["n_matched"] == 16 and report["n_alive_reference"] == report["n_alive_moved"] == 16
    assert report["mean_matched_correlation"] == pytest.approx(1.0, abs=1e-12)
    assert report["n_samples"] == 3000 and report["matched_pairs"].shape == (16, 2)
    for name in ("enc_weight", "dec_weight", "lat_bias"):
        assert torch.equal(getattr(model, name)[1], getattr(model, name)[0])
    with torch.no_grad():
        after = model.encode([x[0], x[0]])
    assert torch.equal(after[1].dense(16), after[0].dense(16))


def test_align_two_separate_models():
    model, sigma = planted_pair(seed=11)
    reference = SparseAutoencoder(SAEConfig((6,), 16, 3, "global")).double().eval()
    moved = SparseAutoencoder(SAEConfig((6,), 16, 3, "local")).double().eval()
    with torch.no_grad():
        for target, stream in ((reference, 0), (moved, 1)):
            for name in ("enc_weight", "dec_weight", "lat_bias", "pre_bias"):
                getattr(target, name)[0].copy_(getattr(model, name)[stream])
    x = inputs(3000, seed=12)[0]
    with torch.no_grad():
        codes_ref, codes_moved = reference.encode([x])[0], moved.encode([x])[0]
    report = align_streams(reference, 0, 0, codes_ref, codes_moved, moved_model=moved)
    assert report["permutation"].tolist() == sigma.tolist()
    assert torch.equal(moved.enc_weight[0], reference.enc_weight[0])
    assert torch.equal(reference.enc_weight[0], model.enc_weight[0])  # the reference is never changed


def test_align_rejects_bad_pairs():
    model, _ = planted_pair(seed=3)
    codes = Codes(torch.ones(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="nothing to align"):
        align_streams(model, 1, 1, codes, codes)
    with pytest.raises(ValueError, match="moved_stream"):
        align_streams(model, 0, 2, codes, codes)
    with pytest.raises(ValueError, match="Global TopK"):
        align_streams(make_model(topk="global"), 0, 1, codes, codes)
    with pytest.raises(ValueError, match="equal latent counts"):
        align_streams(model, 0, 0, codes, codes, moved_model=make_model(n_latents=8))


# ---- Figure 2 ------------------------------------------------------------------------------------------
DEC_A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # last row not unit: normalised inside
DEC_B = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
CORR = np.array([[0.9, 0.1, -0.2], [0.5, 0.85, 0.0], [0.2, 0.3, 1.0]])
H = 1 / math.sqrt(2)


def rows_of(frame):
    return [(str(b), a, c, corr, pytest.approx(d, abs=1e-12))
            for b, a, c, corr, d in frame.itertuples(index=False)]


def test_cosine_by_bin_all_pairs_by_hand():
    frame = decoder_cosine_by_correlation(DEC_A, DEC_B, CORR)
    assert list(frame.columns) == ["bin", "latent_a", "latent_b", "correlation", "cosine_distance"]
    assert list(frame["bin"].cat.categories) == ["[0, 0.2)", "[0.2, 0.4)", "[0.4, 0.6)", "[0.6, 0.8)",
                                                 "[0.8, 1]"]
    assert rows_of(frame) == [
        ("[0.8, 1]", 0, 0, 0.9, 0.0), ("[0, 0.2)", 0, 1, 0.1, 1.0),  # (0, 2) is negative: left out
        ("[0.4, 0.6)", 1, 0, 0.5, 1.0), ("[0.8, 1]", 1, 1, 0.85, 0.0), ("[0, 0.2)", 1, 2, 0.0, 1.0),
        ("[0.2, 0.4)", 2, 0, 0.2, 1 - H), ("[0.2, 0.4)", 2, 1, 0.3, 1 - H), ("[0.8, 1]", 2, 2, 1.0, 1 + H),
    ]
    assert frame.attrs["pairs_per_bin"] == {"[0, 0.2)": 2, "[0.2, 0.4)": 2, "[0.4, 0.6)": 1,
                                            "[0.6, 0.8)": 0, "[0.8, 1]": 3}
    assert frame.attrs["bin_edges"] == list(FIGURE2_BINS)


def test_cosine_by_bin_excludes_dead_and_follows_matching():
    alive_b = np.array([True, False, True])
    frame = decoder_cosine_by_correlation(DEC_A, DEC_B, CORR, alive_b=alive_b, chunk_rows=1)
    assert [(a, c) for a, c in zip(frame.latent_a, frame.latent_b, strict=True)] == [
        (0, 0), (1, 0), (1, 2), (2, 0), (2, 2)]
    stats = Coactivation(torch.from_numpy(CORR), torch.tensor([True, False, True]), torch.from_numpy(alive_b),
                         n_samples=10)
    from_stats = decoder_cosine_by_correlation(DEC_A, DEC_B, stats)
    assert [(a, c) for a, c in zip(from_stats.latent_a, from_stats.latent_b, strict=True)] == [(0, 0), (2, 0),
                                                                                                (2, 2)]
    matching = LatentMatching(np.array([0, 1, 2]), CORR.diagonal().copy(), np.array([True, True, True]))
    matched = decoder_cosine_by_correlation(DEC_A, DEC_B, CORR, matching=matching)
    assert rows_of(matched) == [("[0.8, 1]", 0, 0, 0.9, 0.0), ("[0.8, 1]", 1, 1, 0.85, 0.0),
                                ("[0.8, 1]", 2, 2, 1.0, 1 + H)]


def test_cosine_by_bin_subsample_is_seeded_and_keeps_counts():
    rng = np.random.default_rng(0)
    corr = rng.uniform(-0.2, 1.0, (40, 30))
    dec_a, dec_b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    full = decoder_cosine_by_correlation(dec_a, dec_b, corr)
    sample = decoder_cosine_by_correlation(dec_a, dec_b, corr, max_pairs_per_bin=10, seed=3)
    assert sample.attrs["pairs_per_bin"] == full.attrs["pairs_per_bin"]
    assert sample["bin"].value_counts().tolist() == [10] * 5
    again = decoder_cosine_by_correlation(dec_a, dec_b, corr, max_pairs_per_bin=10, seed=3)
    assert sample.equals(again)
    merged = sample.merge(full, on=["latent_a", "latent_b"], suffixes=("", "_full"))
    assert len(merged) == len(sample)
    np.testing.assert_allclose(merged.cosine_distance, merged.cosine_distance_full, atol=0)
    unit_a = dec_a / np.linalg.norm(dec_a, axis=1, keepdims=True)
    unit_b = dec_b / np.linalg.norm(dec_b, axis=1, keepdims=True)
    np.testing.assert_allclose(full.cosine_distance,
                               1 - (unit_a[full.latent_a] * unit_b[full.latent_b]).sum(1), atol=1e-12)


def test_cosine_by_bin_rejects_bad_input():
    with pytest.raises(ValueError, match="embedding dimension"):
        decoder_cosine_by_correlation(DEC_A, np.ones((3, 3)), CORR)
    with pytest.raises(ValueError, match="zero rows"):
        decoder_cosine_by_correlation(np.zeros((3, 2)), DEC_B, CORR)
    with pytest.raises(ValueError, match="correlation has shape"):
        decoder_cosine_by_correlation(DEC_A, DEC_B, CORR[:2])
    with pytest.raises(ValueError, match="bins"):
        decoder_cosine_by_correlation(DEC_A, DEC_B, CORR, bins=(0.5, 0.2))


@pytest.mark.parametrize("positive_fraction", [0.001, 0.5])
def test_cosine_by_bin_gather_and_block_paths_agree_with_direct_formula(positive_fraction):
    # few pairs per block: gathered pair by pair; many: one block matmul against all of b
    rng = np.random.default_rng(5)
    corr = np.where(rng.random((300, 250)) < positive_fraction, rng.random((300, 250)), -0.1)
    dec_a, dec_b = rng.normal(size=(300, 7)), rng.normal(size=(250, 7))
    frame = decoder_cosine_by_correlation(dec_a, dec_b, corr, chunk_rows=64)
    rows, cols = np.nonzero(corr >= 0)
    assert frame.latent_a.tolist() == rows.tolist() and frame.latent_b.tolist() == cols.tolist()
    unit_a = dec_a / np.linalg.norm(dec_a, axis=1, keepdims=True)
    unit_b = dec_b / np.linalg.norm(dec_b, axis=1, keepdims=True)
    np.testing.assert_allclose(frame.cosine_distance, 1 - (unit_a[rows] * unit_b[cols]).sum(1), atol=1e-12)
