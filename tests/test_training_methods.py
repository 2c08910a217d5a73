"""The heterogeneity paper's methods on the SAE engine: shared SAE, modality-specific SAEs, alignment
losses, reconstruction losses, AdamW / clipping / cosine schedule, and their wiring from run configs."""

from __future__ import annotations

import copy
import dataclasses
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from xsae.config import validate
from xsae.errors import ConfigError
from xsae.features import StreamRef
from xsae.runs import latents_per_stream, sae_config_for_run, train_run, training_config
from xsae.sae import Codes, SAEConfig, SparseAutoencoder
from xsae.training import (
    AlignmentLoss,
    TrainingConfig,
    alignment_penalty,
    clip_gradients,
    compute_losses,
    group_sparse_penalty,
    iso_energy_cosine_penalty,
    iso_energy_penalty,
    learning_rate,
    reconstruction_loss,
    reinitialize_dead,
    train,
)

D = 8


def shared_model(L: int = 16, k: int = 3, seed: int = 0, dims=(D, D), activation: str = "topk"
                 ) -> SparseAutoencoder:
    config = SAEConfig(input_dims=tuple(dims), n_latents=L, k=k, topk="local", shared_weights=True,
                       stream_names=("img", "txt")[:len(dims)], activation=activation)
    return SparseAutoencoder(config, generator=torch.Generator().manual_seed(seed))


def single_model(L: int = 16, k: int = 3, seed: int = 0) -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(input_dims=(D,), n_latents=L, k=k),
                             generator=torch.Generator().manual_seed(seed))


def perturb(model: SparseAutoencoder, seed: int = 1, scale: float = 0.1) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def paired_data(n: int = 512, seed: int = 0) -> list[torch.Tensor]:
    """Image/text pairs sharing a sparse code over 24 atoms, with different directions per stream."""
    g = torch.Generator().manual_seed(seed)
    atoms = [F.normalize(torch.randn(24, D, generator=g), dim=1) for _ in range(2)]
    code = torch.rand(n, 24, generator=g) * (torch.rand(n, 24, generator=g) < 0.12)
    return [code @ atom + 0.02 * torch.randn(n, D, generator=g) for atom in atoms]


def tcfg(**kw) -> TrainingConfig:
    base = {"epochs": 2, "batch_size": 64, "lr": 3e-3, "log_every": 2, "dead_steps": 4, "auxk_k": 4,
            "checkpoint_every": 1000}
    base.update(kw)
    return TrainingConfig(**base)


def weights_equal(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


ALL_OPTIONS = {"optimizer": "adamw", "weight_decay": 1e-3, "grad_clip": 0.05, "lr_schedule": "cosine",
               "warmup_fraction": 0.2, "recon_loss": "fvu",
               "alignment_loss": AlignmentLoss("group_sparse", 0.05, 4.0)}


# ---- shared SAE --------------------------------------------------------------------------------
def test_shared_model_has_one_sae_of_parameters():
    shared, single = shared_model(), single_model()
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in single.parameters())
    assert len(list(shared.parameters())) == 4
    for name in ("enc_weight", "dec_weight", "pre_bias", "lat_bias"):
        container = getattr(shared, name)
        assert container[0] is container[1], name
        assert len(container) == 1 and list(container) == [container[0]]
    assert set(shared.state_dict()) == {"pre_bias.0", "lat_bias.0", "enc_weight.0", "dec_weight.0",
                                        "steps_since_active_0", "steps_since_active_1",
                                        "batch_threshold", "batch_threshold_count"}
    # the same seed draws the same directions as a one-stream SAE
    for name in ("enc_weight", "dec_weight"):
        assert torch.equal(getattr(shared, name)[1], getattr(single, name)[0])


def test_shared_model_equals_one_sae_applied_per_stream():
    shared = perturb(shared_model())
    single = single_model()
    single.load_state_dict({k: v for k, v in shared.state_dict().items()
                            if k not in ("steps_since_active_1", "batch_threshold")}
                           | {"batch_threshold": shared.batch_threshold[:1]})
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(7, D, generator=g), torch.randn(7, D, generator=g)
    out = shared([x, y])
    torch.testing.assert_close(out[0], single([x])[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], single([y])[0], rtol=0, atol=0)
    # identical inputs: identical codes and outputs per stream
    codes = shared.encode([x, x])
    assert torch.equal(codes[0].indices, codes[1].indices) and torch.equal(codes[0].values, codes[1].values)
    same = shared([x, x])
    assert torch.equal(same[0], same[1])


def test_shared_config_checks():
    with pytest.raises(ValueError, match=r"equal width.*img=8, txt=6"):
        SAEConfig(input_dims=(8, 6), n_latents=4, k=1, topk="local", shared_weights=True,
                  stream_names=("img", "txt"))
    with pytest.raises(ValueError, match="topk='local'"):
        SAEConfig(input_dims=(8, 8), n_latents=4, k=1, topk="global", shared_weights=True)
    assert SAEConfig(input_dims=(8, 8), n_latents=4, k=1, topk="local", shared_weights=True
                     ).parameter_slots == (0, 0)
    assert SAEConfig(input_dims=(8, 6, 3), n_latents=4, k=1).parameter_slots == (0, 1, 2)


def test_shared_gradients_are_the_sum_of_per_stream_sae_gradients():
    """One parameter set used by two streams: its gradient is the sum of what one SAE gets from
    each stream's loss (with that stream's dead counters for AuxK)."""
    shared = perturb(shared_model())
    shared.steps_since_active(0).copy_(torch.arange(16) * 2)  # dead for dead_steps=10: latents 6..15
    shared.steps_since_active(1).copy_(torch.arange(16).flip(0) * 2)  # dead: 0..10
    g = torch.Generator().manual_seed(2)
    batch = [torch.randn(9, D, generator=g), torch.randn(9, D, generator=g)]
    config = tcfg(auxk_k=4, dead_steps=10, loss_reduction="sum")
    total, components, _ = compute_losses(shared, batch, config)
    shared.zero_grad()
    total.backward()
    assert components["auxk"].min() > 0

    expected, expected_total = {}, 0.0
    for s in range(2):
        single = single_model()
        state = {k.replace(".0", ".0"): v for k, v in shared.state_dict().items()
                 if not k.startswith(("steps_since", "batch_threshold"))}
        single.load_state_dict(state | {"steps_since_active_0": shared.steps_since_active(s).clone(),
                                        "batch_threshold": torch.zeros(1),
                                        "batch_threshold_count": torch.zeros((), dtype=torch.long)})
        loss, _, _ = compute_losses(single, [batch[s]], config)
        loss.backward()
        expected_total += loss.detach()
        for name, p in single.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad
    torch.testing.assert_close(total.detach(), expected_total, rtol=1e-6, atol=1e-6)
    for name, p in shared.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_shared_decoder_constraints():
    shared = perturb(shared_model(), scale=0.5)
    shared.normalize_decoder()  # one tensor, normalised once
    torch.testing.assert_close(shared.dec_weight[1].norm(dim=1), torch.ones(16))
    loss, _, _ = compute_losses(shared, paired_data(32), tcfg())
    loss.backward()
    weight = shared.dec_weight[0]
    raw = weight.grad.clone()
    assert (raw * weight).sum(dim=1).abs().max() > 1e-3
    shared.project_decoder_grads()
    with torch.no_grad():
        assert (weight.grad * weight).sum(dim=1).abs().max() < 1e-6 * raw.norm(dim=1).max()
        parallel = (raw * weight).sum(dim=1, keepdim=True) * weight
    torch.testing.assert_close(weight.grad, raw - parallel)  # projected once, not once per stream


def test_shared_dead_counters_are_per_stream():
    """Identity encoder and decoder: image rows live on dims 0–3, text rows on 4–7, so latents
    4–7 never fire on images and 0–3 never on text, while both streams use the same weights."""
    model = shared_model(L=D, k=2)
    with torch.no_grad():
        model.enc_weight[0].copy_(torch.eye(D))
        model.dec_weight[0].copy_(torch.eye(D))
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(64, D)
    image[:, :4] = torch.rand(64, 4, generator=g) + 0.5
    text = torch.zeros(64, D)
    text[:, 4:] = torch.rand(64, 4, generator=g) + 0.5
    train(model, [image, text], tcfg(lr=1e-9, batch_size=16, epochs=1, auxk_k=0), progress=False)
    assert model.steps_since_active(0)[4:].tolist() == [4] * 4
    assert model.steps_since_active(1)[:4].tolist() == [4] * 4
    assert int(model.steps_since_active(0)[:4].max()) < 4 and int(model.steps_since_active(1)[4:].max()) < 4

    # AuxK: dead latents of one stream feed that stream's AuxK term only
    model.steps_since_active(0).copy_(torch.tensor([0, 0, 0, 0, 9, 9, 9, 9]))
    model.steps_since_active(1).zero_()
    _, components, _ = compute_losses(model, [image[:8], text[:8]],
                                      tcfg(auxk_k=2, dead_steps=5, auxk_form="residual"))
    assert components["auxk"][1] == 0 and torch.isfinite(components["auxk"][0])

    # re-initialisation touches only latents dead in every stream that shares them
    model.steps_since_active(0).copy_(torch.tensor([9, 0, 0, 0, 9, 9, 0, 0]))
    model.steps_since_active(1).copy_(torch.tensor([9, 9, 0, 0, 0, 0, 0, 0]))
    before = model.enc_weight[0].detach().clone()
    reinitialize_dead(model, 5, 0.01, torch.Generator().manual_seed(0))
    changed = (model.enc_weight[0] != before).any(dim=1)
    assert changed.tolist() == [True] + [False] * 7


def test_shared_save_load_round_trip(tmp_path):
    model = perturb(shared_model())
    model.steps_since_active(0).copy_(torch.arange(16))
    model.steps_since_active(1).copy_(torch.arange(16) * 3)
    path = tmp_path / "shared.safetensors"
    model.save(path)
    loaded = SparseAutoencoder.load(path)
    assert loaded.config == model.config and loaded.config.shared_weights
    assert loaded.enc_weight[1] is loaded.enc_weight[0]
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert weights_equal(loaded, model)
    x = paired_data(16)
    for a, b in zip(loaded(x), model(x), strict=True):
        assert torch.equal(a, b)
    # after a device/dtype move the streams still share one tensor
    moved = loaded.to(torch.float64)
    assert moved.dec_weight[1] is moved.dec_weight[0] and moved.dec_weight[0].dtype == torch.float64


def test_shared_model_trains_and_is_deterministic():
    data = paired_data()
    config = tcfg(epochs=6, **ALL_OPTIONS)
    a, b = shared_model(seed=3), shared_model(seed=3)
    log_a = train(a, data, config, progress=False)
    log_b = train(b, data, config, progress=False)
    assert weights_equal(a, b)
    pd.testing.assert_frame_equal(log_a.drop(columns="samples_per_s"), log_b.drop(columns="samples_per_s"),
                                  check_exact=True)
    assert log_a["self_fvu/img"].iloc[-1] < 0.7 * log_a["self_fvu/img"].iloc[0]
    assert {"alignment", "grad_norm", "lr", "self_nmse/img", "self_fvu/txt"} <= set(log_a.columns)
    assert (log_a["alignment"] > 0).all()
    c = shared_model(seed=4)
    train(c, data, config, progress=False)
    assert not torch.equal(c.dec_weight[0], a.dec_weight[0])


def test_shared_batchtopk_selects_and_thresholds_per_stream():
    model = shared_model(activation="batchtopk", k=2)
    data = paired_data(256)
    data[1] = data[1] * 3.0  # text activations three times larger: a larger learned threshold
    train(model, data, tcfg(epochs=2, auxk_k=0), progress=False)
    assert 1.5 < float(model.batch_threshold[1] / model.batch_threshold[0]) < 6.0
    model.eval()
    codes = model.encode(data)
    for c in codes:
        assert 0.5 <= float((c.values > 0).sum(dim=1).float().mean()) <= 8


# ---- modality-specific SAEs ----------------------------------------------------------------------
def test_modality_specific_equals_separately_trained_saes():
    """Local TopK, no cross terms, summed losses and per-stream clipping: the two-stream model is
    two independent SAEs trained on the same batch order."""
    data = paired_data(256)
    config = tcfg(epochs=3, loss_reduction="sum", grad_clip=0.05, grad_clip_scope="stream",
                  optimizer="adamw", weight_decay=1e-3, lr_schedule="cosine", warmup_fraction=0.1,
                  recon_loss="mse")
    joint = SparseAutoencoder(SAEConfig(input_dims=(D, D), n_latents=8, k=2, topk="local"),
                              generator=torch.Generator().manual_seed(0))
    separate = [SparseAutoencoder(SAEConfig(input_dims=(D,), n_latents=8, k=2),
                                  generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    with torch.no_grad():
        for name in ("enc_weight", "dec_weight"):
            getattr(separate[1], name)[0].copy_(getattr(joint, name)[1])
    initial = copy.deepcopy(joint)
    train(joint, data, config, progress=False)
    for s, single in enumerate(separate):
        train(single, [data[s]], config, progress=False)
        for name in ("enc_weight", "dec_weight", "pre_bias", "lat_bias"):
            assert torch.equal(getattr(joint, name)[s], getattr(single, name)[0]), f"{name}[{s}]"
        assert torch.equal(joint.steps_since_active(s), single.steps_since_active(0))
    # one norm over both SAEs couples them: the equality above is not a given
    coupled = copy.deepcopy(initial)
    train(coupled, data, dataclasses.replace(config, grad_clip_scope="all"), progress=False)
    assert not torch.equal(coupled.enc_weight[0], joint.enc_weight[0])


def run_entry(method: str, **overrides) -> dict:
    """A schema-validated run entry (defaults filled in)."""
    config = {
        "datasets": {"d": {"kind": "tuxpaint_stamps"}},
        "encoders": {"a": {"loader": "efficientnet_lite0"}, "t": {"loader": "minilm_l6_v2"}},
        "features": {"d": ["a", "t"]},
        "streams": {"img": {"encoder": "a", "modality": "image"},
                    "txt": {"encoder": "t", "modality": "text"}},
        "sae_runs": {"r": {"method": method, "dataset": "d", "streams": ["img", "txt"],
                           "n_latents": 16, "k": 2, **overrides}},
    }
    return validate(config)["sae_runs"]["r"]


def test_schema_defaults_of_the_new_keys():
    run = run_entry("shared")
    assert run["recon_loss"] == "nmse" and run["optimizer"] == "adam" and run["weight_decay"] == 0.0
    assert run["grad_clip"] is None and run["grad_clip_scope"] == "auto"
    assert run["lr_schedule"] == "constant" and run["warmup_fraction"] == 0.0
    assert run["alignment_loss"] == {"kind": "none", "weight": None, "multiplier": 1.0}
    with pytest.raises(ConfigError, match=r"sae_runs\.r\.alignment_loss\.kind"):
        run_entry("shared", alignment_loss={"kind": "contrastive"})
    with pytest.raises(ConfigError, match=r"sae_runs\.r\.warmup_fraction"):
        run_entry("shared", warmup_fraction=1.0)
    with pytest.raises(ConfigError, match=r"sae_runs\.r\.method"):
        run_entry("separate")


def test_run_methods_map_to_sae_configs():
    shared = sae_config_for_run(run_entry("shared"), [D, D], ["img", "txt"])
    assert shared.shared_weights and shared.n_latents == 16 and shared.topk == "local"
    specific = sae_config_for_run(run_entry("modality_specific"), [D, D], ["img", "txt"])
    assert not specific.shared_weights and specific.n_latents == 8 and specific.topk == "local"
    # equal budgets: the encoder and decoder weights of both layouts hold the same number of values
    counts = []
    for config in (shared, specific):
        model = SparseAutoencoder(config)
        counts.append(sum(w.numel() for w in [*model.enc_weight, *model.dec_weight]))
    assert counts[0] == counts[1] == 2 * 16 * D
    topk = sae_config_for_run(run_entry("topk", topk="global"), [D, 5], ["img", "txt"])
    assert topk.n_latents == 16 and topk.topk == "global" and not topk.shared_weights

    assert latents_per_stream(8192, 2) == 4096
    with pytest.raises(ConfigError, match=r"n_latents=15.*multiple of 2"):
        sae_config_for_run(run_entry("modality_specific", n_latents=15), [D, D], ["img", "txt"])
    with pytest.raises(ConfigError, match="cross_weight must be 0"):
        sae_config_for_run(run_entry("modality_specific", cross_weight=1.0), [D, D], ["img", "txt"])
    with pytest.raises(ConfigError, match="k=9 exceeds the 8 latents"):
        sae_config_for_run(run_entry("modality_specific", k=9), [D, D], ["img", "txt"])
    with pytest.raises(ConfigError, match=r"equal width, got img=8, txt=5"):
        sae_config_for_run(run_entry("shared"), [D, 5], ["img", "txt"])


def test_training_config_from_run_entry():
    run = run_entry("shared", optimizer="adamw", weight_decay=1e-5, grad_clip=1.0, lr_schedule="cosine",
                    warmup_fraction=0.05, recon_loss="fvu", loss_reduction="sum",
                    alignment_loss={"kind": "iso_energy", "multiplier": 4})
    config = training_config(run, seed=3)
    assert config.alignment_loss == AlignmentLoss("iso_energy", 0.03, 4.0)
    assert config.alignment_loss.coefficient == pytest.approx(0.12)
    assert (config.optimizer, config.weight_decay, config.grad_clip, config.grad_clip_scope) == (
        "adamw", 1e-5, 1.0, "all")
    assert (config.lr_schedule, config.warmup_fraction, config.recon_loss, config.seed) == (
        "cosine", 0.05, "fvu", 3)
    assert training_config(run_entry("modality_specific"), 0).grad_clip_scope == "stream"
    assert training_config(run_entry("modality_specific", grad_clip_scope="all"), 0).grad_clip_scope == "all"
    cc3m = training_config(run_entry("shared", alignment_loss={"kind": "iso_energy", "weight": 1e-4}), 0)
    assert cc3m.alignment_loss.coefficient == 1e-4


def write_features(path, image: np.ndarray, text: np.ndarray) -> list[StreamRef]:
    with h5py.File(path, "w") as h5:
        h5["pooled/image"] = image
        h5["pooled/text"] = text
        h5["sample_ids"] = np.array([f"s{i}" for i in range(len(image))], dtype="S")
    return [StreamRef(path, "image", None, "img"), StreamRef(path, "text", None, "txt")]


@pytest.mark.parametrize("method", ["shared", "modality_specific"])
def test_train_run_end_to_end(tmp_path, method):
    image, text = (x.numpy() for x in paired_data(256))
    refs = write_features(tmp_path / "features.h5", image, text)
    run = run_entry(method, epochs=2, batch_size=64, lr=1e-3, optimizer="adamw", weight_decay=1e-5,
                    grad_clip=1.0, lr_schedule="cosine", warmup_fraction=0.05, log_every=2,
                    auxk={"k": 0}, loss_reduction="sum",
                    alignment_loss={"kind": "group_sparse" if method == "shared" else "none"})
    summary = train_run(run, refs, seed=1, device="cpu", weights_path=tmp_path / "w.safetensors",
                        log_path=tmp_path / "log.csv", checkpoint_path=tmp_path / "resume.pt",
                        progress=False)
    assert summary["steps"] == 8
    model = SparseAutoencoder.load(tmp_path / "w.safetensors")
    assert model.config.shared_weights == (method == "shared")
    assert model.config.n_latents == (16 if method == "shared" else 8)
    log = pd.read_csv(tmp_path / "log.csv")
    assert ("alignment" in log.columns) == (method == "shared")
    if method == "shared":
        assert "grad_norm" in log.columns
    else:
        assert {"grad_norm/img", "grad_norm/txt"} <= set(log.columns)
    assert not (tmp_path / "resume.pt").exists()


# ---- alignment losses ----------------------------------------------------------------------------
def dense_group_sparse(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    return np.sqrt(za**2 + zb**2).sum(axis=1)


def dense_iso_energy(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    return -(za * zb).sum(axis=1)


def dense_iso_energy_cosine(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    out = []
    for a, b in zip(za, zb, strict=True):
        a, b = a.copy(), b.copy()
        drop = [int(np.argmax(a)), int(np.argmax(b))]
        a[drop], b[drop] = 0.0, 0.0
        denominator = max(np.linalg.norm(a), 1e-8) * max(np.linalg.norm(b), 1e-8)
        out.append(-(a @ b) / denominator)
    return np.array(out)


DENSE = {"group_sparse": dense_group_sparse, "iso_energy": dense_iso_energy,
         "iso_energy_cosine": dense_iso_energy_cosine}


def test_alignment_penalties_known_answers():
    a = Codes(torch.tensor([[3.0, 4.0]]), torch.tensor([[0, 2]]))
    b = Codes(torch.tensor([[4.0, 1.0]]), torch.tensor([[2, 5]]))
    # L2,1: |3| + √(4² + 4²) + |1|; inner product: 4 · 4 on the shared latent 2
    torch.testing.assert_close(group_sparse_penalty(a, b), torch.tensor([4 + 4 * math.sqrt(2)]))
    torch.testing.assert_close(iso_energy_penalty(a, b), torch.tensor([-16.0]))
    # both top latents are latent 2: without it the codes are disjoint, cosine 0
    torch.testing.assert_close(iso_energy_cosine_penalty(a, b), torch.tensor([0.0]))
    a = Codes(torch.tensor([[5.0, 2.0, 1.0]]), torch.tensor([[1, 2, 3]]))
    b = Codes(torch.tensor([[6.0, 2.0, 3.0]]), torch.tensor([[4, 2, 3]]))
    # tops 1 (a) and 4 (b) dropped: a' = (2, 1), b' = (2, 3) on latents (2, 3)
    torch.testing.assert_close(iso_energy_cosine_penalty(a, b), torch.tensor([-7 / math.sqrt(65)]))
    torch.testing.assert_close(iso_energy_penalty(a, b), torch.tensor([-7.0]))
    torch.testing.assert_close(group_sparse_penalty(a, b),
                               torch.tensor([5 + 6 + math.sqrt(8) + math.sqrt(10)]))
    torch.testing.assert_close(alignment_penalty(a, b, "iso_energy"), iso_energy_penalty(a, b))
    with pytest.raises(ValueError, match="alignment kind"):
        alignment_penalty(a, b, "none")


def random_codes(seed: int, B: int = 12, L: int = 20, k: int = 5, *, padded: bool = False,
                 same_indices: bool = False) -> tuple[Codes, Codes]:
    """Two code sets over L latents; some zero activations (ReLU), optionally BatchTopK padding
    (index 0, value 0, repeated) or identical index sets (Global TopK)."""
    g = torch.Generator().manual_seed(seed)
    pair = []
    shared_idx = torch.stack([torch.randperm(L, generator=g)[:k] for _ in range(B)])
    for _ in range(2):
        idx = shared_idx.clone() if same_indices else torch.stack(
            [torch.randperm(L, generator=g)[:k] for _ in range(B)])
        values = torch.rand(B, k, generator=g, dtype=torch.float64) + 0.1
        values[torch.rand(B, k, generator=g) < 0.2] = 0.0
        if padded:
            pad = torch.rand(B, k, generator=g) < 0.3
            idx = torch.where(pad, torch.zeros_like(idx), idx)
            values = torch.where(pad, torch.zeros_like(values), values)
        pair.append(Codes(values, idx))
    return pair[0], pair[1]


@pytest.mark.parametrize("kind", ["group_sparse", "iso_energy", "iso_energy_cosine"])
@pytest.mark.parametrize("layout", ["plain", "padded", "same_indices"])
def test_alignment_penalties_equal_the_dense_formula(kind, layout):
    for seed in range(4):
        a, b = random_codes(seed, padded=layout == "padded", same_indices=layout == "same_indices")
        if layout == "padded":
            assert ((a.indices == 0).sum(dim=1) > 1).any(), "rows with repeated padding slots"
        dense_a, dense_b = a.dense(20).numpy(), b.dense(20).numpy()
        expected = DENSE[kind](dense_a, dense_b)
        np.testing.assert_allclose(alignment_penalty(a, b, kind).double().numpy(), expected, rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("kind", ["group_sparse", "iso_energy", "iso_energy_cosine"])
@pytest.mark.parametrize("layout", ["plain", "padded", "same_indices"])
def test_alignment_gradients_equal_autograd_on_the_dense_formula(kind, layout):
    dense_torch = {
        "group_sparse": lambda za, zb: torch.linalg.vector_norm(torch.stack([za, zb]), dim=0).sum(dim=1),
        "iso_energy": lambda za, zb: -(za * zb).sum(dim=1),
        "iso_energy_cosine": None,
    }
    for seed in range(3):
        a, b = random_codes(10 + seed, padded=layout == "padded", same_indices=layout == "same_indices")
        va, vb = a.values.clone().requires_grad_(True), b.values.clone().requires_grad_(True)
        weights = torch.rand(12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        (alignment_penalty(Codes(va, a.indices), Codes(vb, b.indices), kind) * weights).sum().backward()

        da, db = a.values.clone().requires_grad_(True), b.values.clone().requires_grad_(True)
        za, zb = Codes(da, a.indices).dense(20), Codes(db, b.indices).dense(20)
        if kind == "iso_energy_cosine":
            keep = torch.ones_like(za)
            rows = torch.arange(12)
            for top in (za.detach().argmax(dim=1), zb.detach().argmax(dim=1)):
                keep[rows, top] = 0.0
            reference = -F.cosine_similarity(za * keep, zb * keep, dim=1, eps=1e-8)
        else:
            reference = dense_torch[kind](za, zb)
        (reference * weights).sum().backward()
        # padding slots carry no activation, and training masks their gradient: compare real slots
        real_a = (a.values != 0) | (layout != "padded")
        real_b = (b.values != 0) | (layout != "padded")
        torch.testing.assert_close(va.grad[real_a], da.grad[real_a], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(vb.grad[real_b], db.grad[real_b], rtol=1e-6, atol=1e-8)
        assert torch.isfinite(va.grad).all() and torch.isfinite(vb.grad).all()


def test_group_sparse_gradient_is_zero_where_both_codes_are_zero():
    a = Codes(torch.tensor([[0.0, 2.0]], requires_grad=True), torch.tensor([[1, 3]]))
    b = Codes(torch.tensor([[0.0, 0.0]], requires_grad=True), torch.tensor([[1, 4]]))
    group_sparse_penalty(a, b).sum().backward()
    assert a.values.grad.tolist() == [[0.0, 1.0]] and b.values.grad.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("kind", ["group_sparse", "iso_energy", "iso_energy_cosine"])
def test_compute_losses_with_alignment_matches_dense_autograd(kind):
    """Through the whole loss: the sparse training path and plain autograd on dense codes give the
    same total and the same gradient for every parameter."""
    model = perturb(shared_model(L=16, k=3), scale=0.2)
    batch = paired_data(10, seed=4)
    alignment = AlignmentLoss(kind, 0.5, 2.0)
    config = tcfg(auxk_k=0, alignment_loss=alignment, recon_loss="mse")
    total, components, _ = compute_losses(model, batch, config)
    model.zero_grad()
    total.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    logits = [model.logits(s, x) for s, x in enumerate(batch)]
    indices = model.select_indices([h.detach() for h in logits])[0]
    dense = [Codes(F.relu(h.gather(1, i)), i).dense(16) for h, i in zip(logits, indices, strict=True)]
    recon = [z @ model.dec_weight[s] + model.pre_bias[s] for s, z in enumerate(dense)]
    self_terms = torch.stack([(r - x).pow(2).sum(dim=1).mean() for r, x in zip(recon, batch, strict=True)])
    za, zb = dense
    if kind == "group_sparse":
        penalty = torch.linalg.vector_norm(torch.stack([za, zb]), dim=0).sum(dim=1)
    elif kind == "iso_energy":
        penalty = -(za * zb).sum(dim=1)
    else:
        keep = torch.ones_like(za)
        for top in (za.detach().argmax(dim=1), zb.detach().argmax(dim=1)):
            keep[torch.arange(10), top] = 0.0
        penalty = -F.cosine_similarity(za * keep, zb * keep, dim=1, eps=1e-8)
    reference = self_terms.mean() + 1.0 * penalty.mean()
    reference.backward()
    assert alignment.coefficient == 1.0
    torch.testing.assert_close(total.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(components["alignment"], penalty.detach().mean().reshape(1), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(components["self_mse"], self_terms.detach(), rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_alignment_needs_two_streams():
    model = SparseAutoencoder(SAEConfig(input_dims=(D,), n_latents=8, k=2))
    with pytest.raises(ValueError, match="two streams; the model has 1"):
        train(model, [torch.randn(32, D)], tcfg(alignment_loss=AlignmentLoss("group_sparse")),
              progress=False)


def test_alignment_loss_config():
    assert AlignmentLoss().coefficient == 0.0
    assert AlignmentLoss("iso_energy").weight == 0.03
    assert AlignmentLoss("group_sparse").weight == 0.05
    assert AlignmentLoss("group_sparse", multiplier=1 / 64).coefficient == pytest.approx(0.05 / 64)
    assert AlignmentLoss("none", 3.0).coefficient == 0.0
    with pytest.raises(ValueError, match=r"alignment_loss\.kind"):
        AlignmentLoss("contrastive")
    with pytest.raises(ValueError, match=r"alignment_loss\.weight"):
        AlignmentLoss("iso_energy", -1.0)
    with pytest.raises(ValueError, match=r"alignment_loss\.multiplier"):
        AlignmentLoss("iso_energy", 1.0, float("nan"))
    assert tcfg(alignment_loss={"kind": "group_sparse"}).alignment_loss == AlignmentLoss("group_sparse", 0.05)


# ---- reconstruction losses ----------------------------------------------------------------------
def test_reconstruction_losses_known_answers():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    recon = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # per-sample squared errors (1, 0); batch mean x̄ = (½, ½), Σ‖x − x̄‖² = 4 · ¼ = 1
    assert float(reconstruction_loss(recon, target, "mse")) == 0.5
    assert float(reconstruction_loss(recon, target, "fvu")) == 1.0
    assert float(reconstruction_loss(recon, target, "nmse")) == 0.5  # (½ / ½ + 0) / 2
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(50, 6, generator=g,
                                                                             dtype=torch.float64)
    xn, rn = x.numpy(), r.numpy()
    np.testing.assert_allclose(float(reconstruction_loss(r, x, "fvu")),
                               ((rn - xn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(float(reconstruction_loss(r, x, "mse")), ((rn - xn) ** 2).sum(1).mean(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="recon_loss"):
        reconstruction_loss(r, x, "mae")


@pytest.mark.parametrize("how", ["mse", "fvu"])
def test_compute_losses_uses_the_reconstruction_loss(how):
    model = perturb(SparseAutoencoder(SAEConfig(input_dims=(6, 4), n_latents=16, k=3),
                                      generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(1)
    batch = [torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g)]
    config = tcfg(auxk_k=0, cross_weight=0.5, recon_loss=how, loss_reduction="sum")
    total, components, codes = compute_losses(model, batch, config)
    with torch.no_grad():
        self_terms = torch.stack([reconstruction_loss(model.decode(s, codes[s]), batch[s], how)
                                  for s in range(2)])
        cross_terms = torch.stack([reconstruction_loss(model.decode(1, codes[0]), batch[1], how),
                                   reconstruction_loss(model.decode(0, codes[1]), batch[0], how)])
        nmse = torch.stack([reconstruction_loss(model.decode(s, codes[s]), batch[s], "nmse")
                            for s in range(2)])
    torch.testing.assert_close(total.detach(), self_terms.sum() + 0.5 * cross_terms.sum())
    torch.testing.assert_close(components[f"self_{how}"].detach(), self_terms)
    torch.testing.assert_close(components[f"cross_{how}"].detach(), cross_terms)
    torch.testing.assert_close(components["self_nmse"], nmse)
    assert not components["self_nmse"].requires_grad


# ---- optimiser, clipping and schedule ----------------------------------------------------------------
def test_cosine_schedule_known_values():
    config = tcfg(lr=2e-3, lr_schedule="cosine", warmup_fraction=0.1)
    T = 100  # warmup W = 10 steps
    assert learning_rate(0, T, config) == 0.0
    assert learning_rate(4, T, config) == pytest.approx(0.4 * 2e-3, rel=1e-12)
    assert learning_rate(10, T, config) == 2e-3  # end of warmup: the peak
    assert learning_rate(55, T, config) == pytest.approx(1e-3, rel=1e-12)  # half-way through the decay
    assert learning_rate(99, T, config) == pytest.approx(1e-3 * (1 + math.cos(math.pi * 89 / 90)), rel=1e-12)
    assert learning_rate(100, T, config) == pytest.approx(0.0, abs=1e-18)
    lrs = [learning_rate(s, T, config) for s in range(T)]
    assert lrs[:11] == sorted(lrs[:11]) and lrs[10:] == sorted(lrs[10:], reverse=True)
    # no warmup: the first step takes the peak rate; a constant schedule keeps it
    assert learning_rate(0, T, dataclasses.replace(config, warmup_fraction=0.0)) == 2e-3
    constant = dataclasses.replace(config, lr_schedule="constant", warmup_fraction=0.05)
    assert [learning_rate(s, T, constant) for s in (0, 1, 5, 50, 99)] == [0.0, 4e-4, 2e-3, 2e-3, 2e-3]
    # a warmup fraction whose product with the steps is a whole number in exact arithmetic
    assert learning_rate(7, 100, dataclasses.replace(config, warmup_fraction=0.07)) == 2e-3


def test_training_follows_the_schedule():
    data = paired_data(256)
    config = tcfg(epochs=4, batch_size=32, log_every=1, lr=1e-3, lr_schedule="cosine", warmup_fraction=0.125,
                  optimizer="adamw", weight_decay=1e-2)
    model = shared_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, data, config, progress=False, stop_after_steps=1)
    # step 0 of the warmup has lr 0: AdamW changes nothing (its decay is lr · λ too)
    for name in ("enc_weight.0", "lat_bias.0", "pre_bias.0"):
        assert torch.equal(dict(model.named_parameters())[name], before[name]), name
    log = train(shared_model(), data, config, progress=False)
    assert log["lr"].tolist() == [learning_rate(s - 1, 32, config) for s in log["step"]]


def test_clip_gradients_bounds_the_norm():
    model = shared_model(dims=(D, D))
    two = SparseAutoencoder(SAEConfig(input_dims=(D, 5), n_latents=16, k=3),
                            generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for m in (model, two):
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g) * 10
    grads = {name: p.grad.clone() for name, p in two.named_parameters()}
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    before = clip_gradients(model, 0.5)
    torch.testing.assert_close(before, norm.reshape(1))
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(after) <= 0.5 * (1 + 1e-6) and float(after) > 0.49

    # per stream: each parameter set separately; a set already under the bound is untouched
    params = dict(two.named_parameters())
    with torch.no_grad():
        for name in ("pre_bias.1", "lat_bias.1", "enc_weight.1", "dec_weight.1"):
            params[name].grad.mul_(1e-4)
    small = [params[n].grad.clone() for n in ("pre_bias.1", "lat_bias.1", "enc_weight.1", "dec_weight.1")]
    norms = clip_gradients(two, 0.5, "stream")
    assert norms.shape == (2,) and float(norms[0]) > 0.5 > float(norms[1])
    for _, group in two.parameter_groups():
        group_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in group]))
        assert float(group_norm) <= 0.5 * (1 + 1e-6)
    for name, expected in zip(("pre_bias.1", "lat_bias.1", "enc_weight.1", "dec_weight.1"), small,
                              strict=True):
        assert torch.equal(params[name].grad, expected)
    # the directions are kept
    torch.testing.assert_close(F.cosine_similarity(params["enc_weight.0"].grad.flatten(),
                                                   grads["enc_weight.0"].flatten(), dim=0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="grad_clip_scope"):
        clip_gradients(two, 1.0, "layer")


def test_training_logs_the_clipped_norm():
    log = train(shared_model(), paired_data(128), tcfg(grad_clip=1e-3, log_every=1, epochs=1),
                progress=False)
    assert (log["grad_norm"] > 1e-3).all()


def test_training_config_checks():
    with pytest.raises(ValueError, match="optimizer"):
        tcfg(optimizer="sgd")
    with pytest.raises(ValueError, match="needs optimizer 'adamw'"):
        tcfg(weight_decay=1e-5)
    with pytest.raises(ValueError, match="grad_clip must"):
        tcfg(grad_clip=0.0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        tcfg(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        tcfg(lr_schedule="linear")
    with pytest.raises(ValueError, match="recon_loss"):
        tcfg(recon_loss="l1")
    with pytest.raises(ValueError, match="lr must"):
        tcfg(lr=0.0)


def test_fingerprint_covers_the_new_options():
    base = tcfg()
    for change in ({"optimizer": "adamw"}, {"optimizer": "adamw", "weight_decay": 1e-5}, {"grad_clip": 1.0},
                   {"grad_clip_scope": "stream"}, {"lr_schedule": "cosine"}, {"warmup_fraction": 0.05},
                   {"recon_loss": "fvu"}, {"alignment_loss": AlignmentLoss("iso_energy")},
                   {"alignment_loss": AlignmentLoss("iso_energy", multiplier=4.0)}):
        assert dataclasses.replace(base, **change).fingerprint() != base.fingerprint(), change


# ---- resuming with every new option on -------------------------------------------------------------
@pytest.mark.parametrize("stop", [3, 9])  # inside the warmup, and in the cosine decay
def test_resume_is_bit_identical_with_all_options(tmp_path, stop):
    data = paired_data(256)
    config = tcfg(epochs=4, batch_size=32, log_every=2, checkpoint_every=3, reinit_every=5, **ALL_OPTIONS)
    reference = shared_model()
    log_ref = train(reference, data, config, progress=False)
    path = tmp_path / "ckpt.pt"
    interrupted = shared_model()
    train(interrupted, data, config, checkpoint_path=path, progress=False, stop_after_steps=stop)
    assert path.is_file() and not weights_equal(interrupted, reference)
    saved = torch.load(path, weights_only=False)
    assert saved["config"]["lr_schedule"] == "cosine"
    assert saved["config"]["alignment_loss"]["kind"] == "group_sparse"
    resumed = shared_model(seed=9)  # another init: the weights must come from the checkpoint
    log = train(resumed, data, config, checkpoint_path=path, progress=False)
    assert weights_equal(resumed, reference)
    pd.testing.assert_frame_equal(log.drop(columns="samples_per_s"), log_ref.drop(columns="samples_per_s"),
                                  check_exact=True)


# ---- no host sync inside a step ----------------------------------------------------------------
def test_step_does_not_sync_with_the_host(monkeypatch):
    """A step with every new option reads no tensor back to Python (CPU stand-in for a CUDA sync
    check: each Tensor-to-Python conversion raises)."""
    model = shared_model()
    config = tcfg(**ALL_OPTIONS)
    batch = paired_data(32)
    from xsae.training import make_optimizer

    optimizer = make_optimizer(model, config.lr, optimizer="adamw", weight_decay=1e-3)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with pytest.raises(AssertionError, match="host sync"):
        bool(torch.ones(()) > 0)  # the trap works
    loss, _, codes = compute_losses(model, batch, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.project_decoder_grads()
    clip_gradients(model, 0.05, "all")
    optimizer.step()
    model.normalize_decoder()
    model.update_dead_counters(codes, config.dead_threshold)
    monkeypatch.undo()
    assert math.isfinite(float(loss.detach()))


def test_other_models_are_unchanged_by_a_deep_copy():
    """StreamParameters survive copying (the trainer's callers deep-copy models for references)."""
    model = perturb(shared_model())
    clone = copy.deepcopy(model)
    assert clone.enc_weight[1] is clone.enc_weight[0] and clone.enc_weight[0] is not model.enc_weight[0]
    assert weights_equal(clone, model)
