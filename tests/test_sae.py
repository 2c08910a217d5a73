"""xsae.sae: TopK selection, sparse decoding, decoder constraints, dead counters, persistence."""

from __future__ import annotations

import json

import pytest
import torch

from xsae.errors import DataError
from xsae.sae import (
    Codes,
    SAEConfig,
    SparseAutoencoder,
    decode_sparse,
    decode_sparse_many,
    dense_products_pay,
)


def make(dims=(5, 3), L=4, k=2, topk="global", seed=0) -> SparseAutoencoder:
    cfg = SAEConfig(input_dims=tuple(dims), n_latents=L, k=k, topk=topk,
                    stream_names=tuple(f"s{i}" for i in range(len(dims))))
    return SparseAutoencoder(cfg, generator=torch.Generator().manual_seed(seed))


def sorted_codes(c: Codes) -> tuple[list, list]:
    order = c.indices.argsort(dim=1)
    return c.indices.gather(1, order).tolist(), c.values.gather(1, order).tolist()


# ---- config -------------------------------------------------------------------------------------
def test_config_checks():
    with pytest.raises(ValueError):
        SAEConfig(input_dims=(3,), n_latents=4, k=5)
    with pytest.raises(ValueError):
        SAEConfig(input_dims=(3,), n_latents=4, k=0)
    with pytest.raises(ValueError):
        SAEConfig(input_dims=(3,), n_latents=4, k=1, topk="sideways")
    with pytest.raises(ValueError):
        SAEConfig(input_dims=(3, 2), n_latents=4, k=1, stream_names=("a",))
    assert SAEConfig(input_dims=(3, 2), n_latents=4, k=1).stream_names == ("stream0", "stream1")


# ---- TopK selection --------------------------------------------------------------------------
H1 = torch.tensor([[3.0, -1.0, 0.5, 2.0],
                   [0.0, 1.0, -2.0, 0.2]], dtype=torch.float64)
H2 = torch.tensor([[-1.0, 4.0, 0.5, -0.5],
                   [0.3, 0.1, 5.0, 0.0]], dtype=torch.float64)
# sums: row0 = [2, 3, 1, 1.5] -> top2 {1, 0}; row1 = [0.3, 1.1, 3.0, 0.2] -> top2 {2, 1}


def test_global_topk_known_answer():
    model = make()
    c1, c2 = model.select([H1, H2])
    assert torch.equal(c1.indices, c2.indices)  # shared across streams
    idx, vals = sorted_codes(c1)
    assert idx == [[0, 1], [1, 2]]
    assert vals == [[3.0, 0.0], [1.0, 0.0]]  # ReLU of stream 1's own logits (-1 -> 0, -2 -> 0)
    idx, vals = sorted_codes(c2)
    assert idx == [[0, 1], [1, 2]]
    assert vals == [[0.0, 4.0], [0.1, 5.0]]


def test_local_topk_known_answer():
    model = make()
    c1, c2 = model.select([H1, H2], topk="local")
    idx, vals = sorted_codes(c1)
    assert idx == [[0, 3], [1, 3]]
    assert vals == [[3.0, 2.0], [1.0, 0.2]]
    idx, vals = sorted_codes(c2)
    assert idx == [[1, 2], [0, 2]]
    assert vals == [[4.0, 0.5], [0.3, 5.0]]


def test_local_topk_from_config_and_relu():
    model = make(topk="local")
    (c,) = make(dims=(5,), topk="local").select([torch.tensor([[-3.0, -1.0, -2.0, -4.0]])])
    idx, vals = sorted_codes(c)
    assert idx == [[1, 2]] and vals == [[0.0, 0.0]]
    c1, _ = model.select([H1, H2])
    assert sorted_codes(c1)[0] == [[0, 3], [1, 3]]


def test_encode_uses_hand_set_weights():
    """Logits through `encode`: W_enc = identity rows, biases chosen so the logits are known."""
    model = make(dims=(4, 4), L=4, k=2)
    x1 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    x2 = torch.tensor([[4.0, 0.0, 0.0, -9.0]])
    with torch.no_grad():
        for s in range(2):
            model.enc_weight[s].copy_(torch.eye(4))
            model.pre_bias[s].fill_(1.0)
            model.lat_bias[s].copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
    # h1 = x1 - 1 = [0, 1, 2, 3]; h2 = x2 - 1 = [3, -1, -1, -10]; sum = [3, 0, 1, -7] -> {0, 2}
    c1, c2 = model.encode([x1, x2])
    assert sorted_codes(c1) == ([[0, 2]], [[0.0, 2.0]])
    assert sorted_codes(c2) == ([[0, 2]], [[3.0, 0.0]])
    l1, l2 = model.encode([x1, x2], topk="local")
    assert sorted_codes(l1) == ([[2, 3]], [[2.0, 3.0]])
    assert sorted_codes(l2)[0][0][0] == 0 and sorted_codes(l2)[1][0][0] == 3.0


# ---- decoding -------------------------------------------------------------------------------
def test_codes_dense_known_answer():
    codes = Codes(values=torch.tensor([[1.5, 2.0], [0.0, -1.0]]),
                  indices=torch.tensor([[3, 0], [1, 2]]))
    expected = torch.tensor([[2.0, 0.0, 0.0, 1.5, 0.0],
                             [0.0, 0.0, -1.0, 0.0, 0.0]])
    assert torch.equal(codes.dense(5), expected)


def test_codes_dense_keeps_latent_zero_beside_padding():
    """BatchTopK pads rows with (index 0, value 0); the padding must not erase a real latent 0."""
    codes = Codes(values=torch.tensor([[0.0, 1.5, 0.0, 2.0]]), indices=torch.tensor([[0, 0, 0, 3]]))
    assert codes.dense(4).tolist() == [[1.5, 0.0, 0.0, 2.0]]


def test_stream_parameters_map_streams_to_tensors():
    from torch import nn

    from xsae.sae import StreamParameters

    tensors = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.ones(3))]
    per_stream = StreamParameters(tensors, slots=(0, 1, 0))
    assert per_stream[0] is tensors[0] and per_stream[2] is tensors[0] and per_stream[1] is tensors[1]
    assert per_stream[-1] is tensors[0]
    assert len(per_stream) == 2 and list(per_stream) == tensors
    assert [name for name, _ in per_stream.named_parameters()] == ["0", "1"]
    assert StreamParameters(tensors).slots == (0, 1)
    with pytest.raises(ValueError, match="point past"):
        StreamParameters(tensors, slots=(0, 2))
    with pytest.raises(IndexError):
        per_stream[3]


def test_decode_sparse_equals_dense_reference():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(16, 7, generator=g, dtype=torch.float64)
    values = torch.rand(5, 3, generator=g, dtype=torch.float64)
    indices = torch.stack([torch.randperm(16, generator=g)[:3] for _ in range(5)])
    codes = Codes(values, indices)
    reference = codes.dense(16) @ W
    torch.testing.assert_close(decode_sparse(W, codes), reference, rtol=0, atol=1e-12)


def test_decode_adds_pre_bias_and_forward_reconstructs():
    model = make(dims=(6, 3), L=8, k=3)
    with torch.no_grad():
        model.pre_bias[0].copy_(torch.arange(6.0))
        model.pre_bias[1].copy_(torch.tensor([1.0, -1.0, 0.5]))
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)]
    codes = model.encode(x)
    for s, c in enumerate(codes):
        expected = c.dense(8) @ model.dec_weight[s] + model.pre_bias[s]
        torch.testing.assert_close(model.decode(s, c), expected, rtol=1e-6, atol=1e-6)
    # cross decoding: stream 0's codes through stream 1's decoder
    expected = codes[0].dense(8) @ model.dec_weight[1] + model.pre_bias[1]
    torch.testing.assert_close(model.decode(1, codes[0]), expected, rtol=1e-6, atol=1e-6)
    out = model(x)
    for s in range(2):
        torch.testing.assert_close(out[s], model.decode(s, codes[s]))
    # encoder logits: W_enc (x - b_pre) + b_lat
    torch.testing.assert_close(model.logits(0, x[0]),
                               (x[0] - model.pre_bias[0]) @ model.enc_weight[0].T + model.lat_bias[0])


def test_decode_sparse_gradients_match_dense():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    W2 = W.detach().clone().requires_grad_(True)
    values = torch.rand(3, 2, generator=g, dtype=torch.float64)
    indices = torch.tensor([[0, 9], [4, 5], [9, 1]])
    target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    (decode_sparse(W, Codes(values, indices)) - target).pow(2).sum().backward()
    (Codes(values, indices).dense(10) @ W2 - target).pow(2).sum().backward()
    torch.testing.assert_close(W.grad, W2.grad, rtol=0, atol=1e-12)


def test_dense_products_pay_when_k_is_a_large_fraction_of_l():
    """The default's small per-layer SAEs (L = 32, k = 16, d = 16) train dense; the papers' SAEs
    (L = 8,192, k = 32 or 64, d ≥ 512) stay sparse; wider inputs move the crossover down."""
    assert dense_products_pay(32, 16, 16)
    assert dense_products_pay(15 * 16, 16, 16) and not dense_products_pay(16 * 16, 16, 16)
    assert not dense_products_pay(8192, 32, 1024) and not dense_products_pay(8192, 64 + 512, 768)
    assert dense_products_pay(48, 16, 1024) and not dense_products_pay(64, 16, 1024)


def test_decode_sparse_many_takes_either_path_with_the_same_result_and_gradients(monkeypatch):
    from xsae import sae as sae_module

    g = torch.Generator().manual_seed(4)
    weight = torch.randn(12, 5, generator=g, dtype=torch.float64)
    codes = [Codes(torch.rand(4, 3, generator=g, dtype=torch.float64).requires_grad_(),
                   torch.stack([torch.randperm(12, generator=g)[:3] for _ in range(4)])),
             Codes(torch.rand(2, 5, generator=g, dtype=torch.float64).requires_grad_(),
                   torch.tensor([[0, 0, 3, 4, 11], [1, 2, 3, 4, 5]]))]  # a repeated index sums
    targets = [torch.randn(c.values.shape[0], 5, generator=g, dtype=torch.float64) for c in codes]
    results = {}
    for path, speedup in (("sparse", 0), ("dense", 10**9)):
        monkeypatch.setattr(sae_module, "DENSE_SPEEDUP", speedup)
        w = weight.clone().requires_grad_()
        for c in codes:
            c.values.grad = None
        out = decode_sparse_many(w, codes)
        sum((o - t).pow(2).sum() for o, t in zip(out, targets, strict=True)).backward()
        results[path] = [o.detach() for o in out] + [w.grad] + [c.values.grad.clone() for c in codes]
    for sparse, dense in zip(results["sparse"], results["dense"], strict=True):
        torch.testing.assert_close(sparse, dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(results["sparse"][0], codes[0].dense(12).detach() @ weight, rtol=0, atol=1e-12)


# ---- decoder constraints ------------------------------------------------------------------
def test_init_tied_and_unit_norm():
    model = make(dims=(9, 5), L=12, k=3)
    for s in range(2):
        assert torch.equal(model.enc_weight[s], model.dec_weight[s])
        assert model.enc_weight[s].data_ptr() != model.dec_weight[s].data_ptr()
        torch.testing.assert_close(model.dec_weight[s].norm(dim=1), torch.ones(12))
        assert torch.equal(model.pre_bias[s], torch.zeros(model.config.input_dims[s]))
        assert torch.equal(model.lat_bias[s], torch.zeros(12))
        assert torch.equal(model.steps_since_active(s), torch.zeros(12, dtype=torch.long))
    # same generator seed -> same init; another seed -> another init
    assert torch.equal(make(dims=(9, 5), L=12, k=3).dec_weight[0], model.dec_weight[0])
    assert not torch.equal(make(dims=(9, 5), L=12, k=3, seed=1).dec_weight[0], model.dec_weight[0])


def test_kaiming_uniform_init_is_pytorchs_on_the_authors_layout():
    """W_enc [d, L] drawn by nn.init.kaiming_uniform_ (bound √(6/L)); W_dec = W_encᵀ at unit norm."""
    d, L = 9, 24
    model = SparseAutoencoder(SAEConfig(input_dims=(d,), n_latents=L, k=3, init="kaiming_uniform"),
                              generator=torch.Generator().manual_seed(5))
    reference = torch.nn.init.kaiming_uniform_(torch.empty(d, L), generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.enc_weight[0], reference.t())
    assert float(model.enc_weight[0].abs().max()) <= (6 / L) ** 0.5
    torch.testing.assert_close(model.dec_weight[0], reference.t() / reference.t().norm(dim=1, keepdim=True))
    torch.testing.assert_close(model.dec_weight[0].norm(dim=1), torch.ones(L))
    with pytest.raises(ValueError, match="init must be one of"):
        SAEConfig(input_dims=(d,), n_latents=L, k=3, init="xavier")


def test_project_decoder_grads():
    model = make(dims=(6,), L=5, k=2)
    W = model.dec_weight[0]
    g = torch.Generator().manual_seed(4)
    orthogonal = torch.randn(5, 6, generator=g)
    orthogonal -= (orthogonal * W.detach()).sum(1, keepdim=True) * W.detach()
    W.grad = orthogonal.clone()
    model.project_decoder_grads()
    torch.testing.assert_close(W.grad, orthogonal, rtol=0, atol=1e-6)  # nothing to remove

    W.grad = torch.randn(5, 6, generator=g) * 10
    before = W.grad.clone()
    model.project_decoder_grads()
    dots = (W.grad * W.detach()).sum(dim=1)
    assert dots.abs().max() < 1e-5
    # the removed part is exactly the parallel component
    parallel = (before * W.detach()).sum(1, keepdim=True) * W.detach()
    torch.testing.assert_close(W.grad, before - parallel, rtol=1e-6, atol=1e-6)


def test_project_decoder_grads_small_scale_exactness():
    model = make(dims=(6,), L=5, k=2)
    W = model.dec_weight[0]
    W.grad = torch.randn(5, 6, generator=torch.Generator().manual_seed(5))
    model.project_decoder_grads()
    assert (W.grad * W.detach()).sum(dim=1).abs().max() < 1e-6


def test_project_decoder_grads_without_grad_is_noop():
    model = make()
    model.project_decoder_grads()  # no grads yet: nothing to do, no error
    assert all(w.grad is None for w in model.dec_weight)


def test_normalize_decoder():
    model = make(dims=(4, 3), L=6, k=2)
    with torch.no_grad():
        model.dec_weight[0].mul_(torch.arange(1.0, 7.0)[:, None])
        model.dec_weight[1].mul_(0.01)
    directions = [w.detach().clone() / w.detach().norm(dim=1, keepdim=True) for w in model.dec_weight]
    model.normalize_decoder()
    for s in range(2):
        torch.testing.assert_close(model.dec_weight[s].norm(dim=1), torch.ones(6))
        torch.testing.assert_close(model.dec_weight[s], directions[s])


# ---- dead latents ------------------------------------------------------------------------------
def test_update_dead_counters():
    model = make(dims=(3, 3), L=6, k=2)
    model.steps_since_active(0).copy_(torch.tensor([5, 5, 5, 5, 5, 5]))
    model.steps_since_active(1).copy_(torch.tensor([0, 1, 2, 3, 4, 5]))
    codes0 = Codes(values=torch.tensor([[0.5, 1e-3], [0.0, 2e-3]]),
                   indices=torch.tensor([[0, 1], [2, 3]]))
    # latent 0 fires (0.5), latent 1 at the threshold does not count, 2 is zero, 3 fires (2e-3)
    codes1 = Codes(values=torch.tensor([[0.0, 0.0], [0.0, 0.0]]),
                   indices=torch.tensor([[0, 1], [0, 1]]))
    model.update_dead_counters([codes0, codes1], threshold=1e-3)
    assert model.steps_since_active(0).tolist() == [0, 6, 6, 0, 6, 6]
    assert model.steps_since_active(1).tolist() == [1, 2, 3, 4, 5, 6]
    assert model.steps_since_active(0).dtype == torch.long


def identity_model(L: int = 6) -> SparseAutoencoder:
    """Encoder = identity and zero biases, so the logits are the inputs themselves."""
    model = make(dims=(L,), L=L, k=2)
    with torch.no_grad():
        model.enc_weight[0].copy_(torch.eye(L))
    return model


def test_auxk_codes_only_selects_dead():
    model = identity_model()
    model.steps_since_active(0).copy_(torch.tensor([0, 10, 0, 11, 0, 3]))
    logits = torch.tensor([[9.0, 1.0, 8.0, 2.0, 7.0, 6.0],
                           [9.0, -1.0, 8.0, 0.5, 7.0, 6.0]])
    torch.testing.assert_close(model.logits(0, logits), logits)
    codes, any_dead = model.auxk_codes(0, logits, logits, k_aux=4, dead_steps=5)  # dead: {1, 3}
    assert bool(any_dead) is True
    for row in range(2):
        picked = dict(zip(codes.indices[row].tolist(), codes.values[row].tolist(), strict=True))
        assert {1, 3} <= set(picked)
        for j, v in picked.items():
            if j not in (1, 3):
                assert v == 0.0  # fewer dead latents than k_aux: the extra picks are zero
    row0 = dict(zip(codes.indices[0].tolist(), codes.values[0].tolist(), strict=True))
    row1 = dict(zip(codes.indices[1].tolist(), codes.values[1].tolist(), strict=True))
    assert (row0[1], row0[3]) == (1.0, 2.0)
    assert (row1[1], row1[3]) == (0.0, 0.5)  # ReLU
    assert torch.isfinite(codes.values).all()

    codes, _ = model.auxk_codes(0, logits, logits, k_aux=1, dead_steps=5)
    assert codes.indices.tolist() == [[3], [3]] and codes.values.tolist() == [[2.0], [0.5]]


def test_auxk_codes_none_dead():
    model = identity_model()
    model.steps_since_active(0).copy_(torch.tensor([0, 5, 0, 5, 0, 3]))  # 5 is not > 5
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    codes, any_dead = model.auxk_codes(0, logits, logits, k_aux=3, dead_steps=5)
    assert bool(any_dead) is False
    assert torch.equal(codes.values, torch.zeros(3, 3))
    # k_aux larger than L is clipped to L
    codes, _ = model.auxk_codes(0, logits, logits, k_aux=100, dead_steps=5)
    assert codes.values.shape == (3, 6)


def test_encode_does_not_touch_counters():
    model = make(dims=(5, 3), L=4, k=2)
    model.steps_since_active(0).copy_(torch.tensor([1, 2, 3, 4]))
    model.encode([torch.randn(3, 5), torch.randn(3, 3)])
    model([torch.randn(3, 5), torch.randn(3, 3)])
    assert model.steps_since_active(0).tolist() == [1, 2, 3, 4]
    assert model.steps_since_active(1).tolist() == [0, 0, 0, 0]


# ---- persistence ----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    model = make(dims=(5, 3), L=8, k=3, topk="local")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.steps_since_active(0).copy_(torch.arange(8))
    model.steps_since_active(1).copy_(torch.arange(8) * 7)
    path = tmp_path / "sub" / "sae.safetensors"
    model.save(path, extra_metadata={"run": "r1", "epochs": 3})
    loaded = SparseAutoencoder.load(path)
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert set(original) == set(restored)
    assert {"steps_since_active_0", "steps_since_active_1"} <= set(restored)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype, name
        assert torch.equal(restored[name], tensor), name
    assert [p.name for p in path.parent.iterdir()] == ["sae.safetensors"]  # no temp file left
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["run"] == '"r1"'


def test_the_same_weights_save_to_the_same_bytes(tmp_path):
    """safetensors orders metadata keys at random; the saved file must not (provenance hashes it)."""
    import hashlib

    from safetensors.torch import load_file

    model = make(dims=(5, 3), L=8, k=3, topk="local")
    metadata = {f"key_{i}": i for i in range(12)}
    digests = set()
    for i in range(6):
        path = tmp_path / f"sae{i}.safetensors"
        model.save(path, extra_metadata=metadata)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    assert size % 8 == 0
    keys = list(json.loads(raw[8:8 + size])["__metadata__"])
    assert keys == sorted(keys) and "sae_config" in keys
    for name, tensor in load_file(str(path)).items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_load_missing_file(tmp_path):
    path = tmp_path / "missing.safetensors"
    with pytest.raises(DataError) as info:
        SparseAutoencoder.load(path)
    assert str(path) in str(info.value)


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file at all" * 4)
    with pytest.raises(DataError) as info:
        SparseAutoencoder.load(path)
    assert str(path) in str(info.value)


def test_load_safetensors_without_config(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(DataError) as info:
        SparseAutoencoder.load(path)
    assert str(path) in str(info.value)


# ---- input checks ----------------------------------------------------------------------------
def test_wrong_width_names_stream():
    model = make(dims=(5, 3), L=4, k=2)
    with pytest.raises(ValueError, match="s1"):
        model.encode([torch.randn(2, 5), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="s0"):
        model.encode([torch.randn(2, 6), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="s0"):
        model.encode([torch.randn(5), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="2 streams"):
        model.encode([torch.randn(2, 5)])


def batchtopk_model() -> SparseAutoencoder:
    model = SparseAutoencoder(SAEConfig((4,), 4, 1, "global", activation="batchtopk"))
    with torch.no_grad():
        model.enc_weight[0].copy_(torch.eye(4))  # logits = inputs
    return model


def test_batchtopk_selects_the_batch_largest_and_learns_its_threshold():
    model = batchtopk_model()
    x = torch.tensor([[5.0, 4.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]])
    model.train()
    (codes,) = model.select([model.logits(0, x)])
    # B·k = 2 picks over the whole batch: 5 and 4, both in row 0; row 1 gets none.
    dense = codes.dense(4)
    assert dense.tolist() == [[5.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert model.batch_threshold[0].item() == 4.0 and model.batch_threshold_count.item() == 1
    model.select([model.logits(0, torch.tensor([[2.0, 0, 0, 0], [0, 3.0, 0, 0]]))])
    assert model.batch_threshold[0].item() == 3.0  # running mean of the smallest picks: (4 + 2) / 2
    model.eval()
    (codes,) = model.select([model.logits(0, torch.tensor([[3.5, 2.9, 0, 0], [0, 0, 0, 0.5]]))])
    assert codes.dense(4).tolist() == [[3.5, 0, 0, 0], [0, 0, 0, 0]]  # only scores above 3.0


def test_batchtopk_trains_and_round_trips():
    from xsae.training import TrainingConfig, train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    model = SparseAutoencoder(SAEConfig((8,), 32, 4, "global", activation="batchtopk"), generator=g)
    history = train(model, [x], TrainingConfig(epochs=4, batch_size=32, lr=1e-2, log_every=4),
                    progress=False)
    assert history["self_nmse/stream0"].iloc[-1] < history["self_nmse/stream0"].iloc[0]
    assert model.batch_threshold[0] > 0
    model.eval()
    codes = model.encode([x])[0]
    active = (codes.values > 0).sum(dim=1).float().mean()
    assert 1 <= active <= 16, "about k latents per sample at inference"


def test_codes_concatenate_keeps_row_order():
    first = Codes(torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 3]]))
    second = Codes(torch.tensor([[3.0, 0.5], [4.0, 1.0]]), torch.tensor([[1, 2], [3, 0]]))
    joined = Codes.concatenate([first, second])
    assert joined.values.tolist() == [[1.0, 2.0], [3.0, 0.5], [4.0, 1.0]]
    assert joined.indices.tolist() == [[0, 3], [1, 2], [3, 0]]
    assert torch.equal(joined.dense(4), torch.cat([first.dense(4), second.dense(4)]))
