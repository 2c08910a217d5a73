"""xsae.training: learning on a known sparse dictionary, determinism, resuming, AuxK, loss terms."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pandas as pd
import pytest
import torch

from xsae.errors import DataError
from xsae.sae import SAEConfig, SparseAutoencoder, decode_sparse
from xsae.training import TrainingConfig, compute_losses, train

D, ATOMS, ACTIVE = 32, 64, 3


def sparse_data(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Rows that are sums of ACTIVE ground-truth unit atoms with coefficients in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    index = torch.stack([torch.randperm(ATOMS, generator=g)[:ACTIVE] for _ in range(n)])
    coef = torch.rand(n, ACTIVE, generator=g) + 0.5
    return (coef[:, :, None] * atoms[index]).sum(dim=1)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return sparse_data()


@pytest.fixture(scope="module")
def small() -> torch.Tensor:
    return sparse_data(1000, seed=1)


def fresh(dims=(D,), L=64, k=4, seed=0, topk="global") -> SparseAutoencoder:
    cfg = SAEConfig(input_dims=tuple(dims), n_latents=L, k=k, topk=topk)
    return SparseAutoencoder(cfg, generator=torch.Generator().manual_seed(seed))


def tcfg(**kw) -> TrainingConfig:
    base = {"epochs": 3, "batch_size": 128, "lr": 3e-3, "log_every": 4, "dead_steps": 5,
            "auxk_k": 16, "checkpoint_every": 1000}
    base.update(kw)
    return TrainingConfig(**base)


def weights_equal(a: SparseAutoencoder, b: SparseAutoencoder) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_timing(log: pd.DataFrame) -> pd.DataFrame:
    return log.drop(columns=["samples_per_s"])


# ---- learning ---------------------------------------------------------------------------------
def test_learns_known_dictionary(data):
    model = fresh(L=64, k=4)
    log = train(model, [data], tcfg(epochs=4, dead_steps=50), progress=False)
    nmse = log["self_nmse/stream0"]
    assert nmse.iloc[-1] < 0.5 * nmse.iloc[0]
    assert nmse.iloc[-1] < 0.15
    # the log's own bookkeeping
    assert list(log["step"]) == list(range(4, 32 * 4 + 1, 4))
    assert list(log["epoch"]) == [(s - 1) // 32 for s in log["step"]]
    assert (log["loss"] >= log["self_nmse/stream0"] - 1e-7).all()
    # evaluation in eval mode reaches the same quality as the logged training loss
    with torch.no_grad():
        (recon,) = model([data])
        final = ((recon - data).pow(2).mean(1) / data.pow(2).mean(1)).mean()
    assert float(final) < 0.15
    for w in model.dec_weight:
        torch.testing.assert_close(w.norm(dim=1), torch.ones(64))
    assert not model.training


def test_log_at_end_of_run(small):
    log = train(fresh(), [small], tcfg(epochs=1, log_every=3), progress=False)
    # 8 steps per epoch: rows at 3, 6 and the final step 8
    assert list(log["step"]) == [3, 6, 8]


# ---- determinism ----------------------------------------------------------------------------
def test_same_seed_bit_identical(small):
    a, b = fresh(), fresh()
    log_a = train(a, [small], tcfg(seed=3), progress=False)
    log_b = train(b, [small], tcfg(seed=3), progress=False)
    assert weights_equal(a, b)
    pd.testing.assert_frame_equal(without_timing(log_a), without_timing(log_b), check_exact=True)


def test_different_seed_differs(small):
    a, b = fresh(), fresh()
    train(a, [small], tcfg(seed=3), progress=False)
    train(b, [small], tcfg(seed=4), progress=False)
    assert not torch.equal(a.dec_weight[0], b.dec_weight[0])


# ---- resuming -----------------------------------------------------------------------------------
RECIPE = {"optimizer": "adamw", "weight_decay": 1e-4, "grad_clip": 0.05, "lr_schedule": "cosine",
          "warmup_fraction": 0.1}  # the heterogeneity paper's D.4 recipe, clip tightened to bite


@pytest.mark.parametrize("options", [{}, RECIPE], ids=["adam_constant", "adamw_cosine_clip"])
@pytest.mark.parametrize(("checkpoint_every", "stop"), [(4, 13), (8, 8), (8, 17)])
def test_resume_is_bit_identical(small, tmp_path, checkpoint_every, stop, options):
    config = tcfg(checkpoint_every=checkpoint_every, dead_steps=3, **options)
    reference = fresh()
    log_ref = train(reference, [small], config, progress=False)

    path = tmp_path / "ckpt.pt"
    interrupted = fresh()
    train(interrupted, [small], config, checkpoint_path=path, progress=False, stop_after_steps=stop)
    assert path.is_file()
    assert not weights_equal(interrupted, reference)

    resumed = fresh()
    log_resumed = train(resumed, [small], config, checkpoint_path=path, progress=False)
    assert weights_equal(resumed, reference)  # parameters and steps-since-active buffers
    # checkpoint_every is a multiple of log_every here, so the log is the same too
    pd.testing.assert_frame_equal(without_timing(log_resumed), without_timing(log_ref),
                                  check_exact=True)


class _Planted:
    """Pickles to a call of `os.system`: what a planted checkpoint could run when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_runs_no_code(small, tmp_path):
    path, marker = tmp_path / "ckpt.pt", tmp_path / "ran"
    torch.save({"fingerprint": tcfg().fingerprint(), "payload": _Planted(marker)}, path)
    with pytest.raises(DataError, match=r"ckpt\.pt: not a training checkpoint this trainer wrote"):
        train(fresh(), [small], tcfg(), checkpoint_path=path, progress=False)
    assert not marker.exists()


def test_resume_with_other_logging_cadence(small, tmp_path):
    """log_every and checkpoint_every are not part of the fingerprint: the checkpoint is resumed."""
    config = tcfg(checkpoint_every=6)
    reference = fresh()
    train(reference, [small], config, progress=False)
    path = tmp_path / "ckpt.pt"
    train(fresh(), [small], config, checkpoint_path=path, progress=False, stop_after_steps=7)
    resumed = fresh(seed=99)  # a different init proves the weights come from the checkpoint
    train(resumed, [small], dataclasses.replace(config, log_every=5, checkpoint_every=7),
          checkpoint_path=path, progress=False)
    assert weights_equal(resumed, reference)


def test_resume_log_identical_off_log_boundary(small, tmp_path):
    config = tcfg(checkpoint_every=6, log_every=4)
    log_ref = train(fresh(), [small], config, progress=False)
    path = tmp_path / "ckpt.pt"
    train(fresh(), [small], config, checkpoint_path=path, progress=False, stop_after_steps=7)
    log_resumed = train(fresh(), [small], config, checkpoint_path=path, progress=False)
    pd.testing.assert_frame_equal(without_timing(log_resumed), without_timing(log_ref),
                                  check_exact=True)


def test_checkpoint_of_other_config_is_ignored(small, tmp_path):
    path = tmp_path / "ckpt.pt"
    train(fresh(), [small], tcfg(lr=1e-3, checkpoint_every=4), checkpoint_path=path, progress=False,
          stop_after_steps=10)
    assert path.is_file()
    other = tcfg(lr=2e-3, checkpoint_every=4)
    reference = fresh()
    log_ref = train(reference, [small], other, progress=False)
    model = fresh()
    log = train(model, [small], other, checkpoint_path=path, progress=False)
    assert weights_equal(model, reference)
    assert list(log["step"]) == list(log_ref["step"])


def test_fingerprint():
    a = tcfg()
    assert a.fingerprint() == dataclasses.replace(a, log_every=1, checkpoint_every=2).fingerprint()
    for change in ({"lr": 1e-2}, {"seed": 1}, {"auxk_k": 3}, {"cross_weight": 0.5},
                   {"loss_reduction": "sum"}, {"epochs": 9}, {"batch_size": 7}, {"grad_clip": 1.0},
                   {"lr_schedule": "cosine"}, {"warmup_fraction": 0.05}, {"optimizer": "adamw"}):
        assert dataclasses.replace(a, **change).fingerprint() != a.fingerprint(), change


# ---- AuxK and dead latents ---------------------------------------------------------------------
def test_auxk_active_when_latents_die(small):
    model = fresh(L=128, k=3)
    log = train(model, [small], tcfg(epochs=2, dead_steps=1, log_every=1, auxk_k=32), progress=False)
    assert (log["auxk/stream0"] > 0).any()
    assert (log["dead_latents/stream0"] > 0).any()
    # single stream, mean reduction: loss = self + coef * aux
    torch.testing.assert_close(
        torch.tensor(log["loss"].to_numpy()),
        torch.tensor((log["self_nmse/stream0"] + log["auxk/stream0"] / 32).to_numpy()),
        rtol=1e-5, atol=1e-6)


def test_residual_auxk_is_zero_without_dead_latents(small):
    model = fresh(L=64, k=4)
    log = train(model, [small], tcfg(epochs=2, dead_steps=10**9, log_every=1, auxk_form="residual"),
                progress=False)
    assert (log["auxk/stream0"] == 0.0).all()
    assert (log["dead_latents/stream0"] == 0).all()
    assert (log["loss"] == log["self_nmse/stream0"]).all()


def _auxk_by_hand(model, x, dead_steps, k_aux, pre_bias):
    """The SPARC reference's AuxK by its formula: decode the top-k_aux dead latents with the
    stream's decoder and pre-bias against x − x̂ + b_pre (detached), as NMSE; `pre_bias` is the
    pre-bias the gradient is taken to (in the prediction and the dead latents' logits)."""
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model.logits(0, x)
        codes = model.encode([x])[0]
        reconstruction = codes.dense(model.config.n_latents) @ model.dec_weight[0] + model.pre_bias[0]
        dead = model.steps_since_active(0) > dead_steps
        masked = logits.masked_fill(~dead, float("-inf"))
        idx = masked.topk(k_aux, dim=1).indices
        target = x - reconstruction + model.pre_bias[0]
    live_logits = (x - pre_bias) @ model.enc_weight[0].detach().T + model.lat_bias[0].detach()
    z_aux = torch.zeros_like(logits).scatter(1, idx, F.relu(live_logits.gather(1, idx)) * dead[idx])
    prediction = z_aux @ model.dec_weight[0].detach() + pre_bias
    return ((prediction - target) ** 2).mean(dim=1).div(target.pow(2).mean(dim=1)).mean()


@pytest.mark.parametrize("some_dead", [False, True])
def test_authors_auxk_equals_the_reference_formula(some_dead):
    """The default AuxK form: normalised by ‖x − x̂ + b_pre‖², ≈ 1 with a gradient to b_pre when no
    latent is dead (the SPARC reference and OpenAI's code), the decode of the dead latents otherwise."""
    model = fresh(dims=(6,), L=16, k=3)
    with torch.no_grad():
        model.pre_bias[0].copy_(torch.linspace(-0.3, 0.4, 6))
    if some_dead:
        model.steps_since_active(0)[:8] = 50
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(7))
    config = tcfg(auxk_k=4, dead_steps=20)
    _, components, _ = compute_losses(model, [x], config)
    expected = _auxk_by_hand(model, x, 20, 4, model.pre_bias[0].detach())
    torch.testing.assert_close(components["auxk"][0], expected, rtol=1e-5, atol=1e-6)
    if not some_dead:  # nothing decoded: ‖x − x̂‖² / ‖x − x̂ + b_pre‖², about 1
        assert 0.5 < float(expected) < 1.5
    # its gradient to b_pre, with the host-side skip of streams that cannot have dead latents too
    bias = model.pre_bias[0].detach().clone().requires_grad_()
    (config.auxk_coef * _auxk_by_hand(model, x, 20, 4, bias)).backward()
    self_only = dataclasses.replace(config, auxk_k=0)
    for aux_streams in (None, [0] if some_dead else []):
        model.zero_grad()
        (compute_losses(model, [x], config, aux_streams=aux_streams)[0]
         - compute_losses(model, [x], self_only)[0]).backward()
        torch.testing.assert_close(model.pre_bias[0].grad, bias.grad, rtol=1e-4, atol=1e-7)
    assert float(bias.grad.abs().max()) > 1e-4


def test_dead_counters_advance_during_training(small):
    model = fresh(L=128, k=3)
    with torch.no_grad():
        model.lat_bias[0][100:] = -1e3  # these latents can never fire
    train(model, [small], tcfg(epochs=1), progress=False)  # 8 steps
    counters = model.steps_since_active(0)
    assert counters[100:].tolist() == [8] * 28
    assert int(counters[:100].max()) <= 8
    assert int(counters.min()) == 0


def test_encode_does_not_change_dead_counters(small):
    model = fresh(L=128, k=3)
    train(model, [small], tcfg(epochs=1), progress=False)
    before = model.steps_since_active(0).clone()
    with torch.no_grad():
        model.encode([small])
        model([small])
        model.encode([small], topk="local")
    assert torch.equal(model.steps_since_active(0), before)


# ---- input checks ----------------------------------------------------------------------------
def test_nan_row_raises(small):
    bad = small[:64].clone()
    bad[5, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="step 1"):
        train(fresh(), [bad], tcfg(batch_size=64, log_every=1), progress=False)


def test_nan_row_raises_at_log_step(small):
    bad = small[:64].clone()
    bad[10] = float("inf")
    with pytest.raises(FloatingPointError, match="step 3"):
        train(fresh(), [bad], tcfg(batch_size=64, log_every=3), progress=False)


def test_streams_with_different_rows(small):
    model = fresh(dims=(D, 8))
    with pytest.raises(DataError, match="rows"):
        train(model, [small, torch.randn(999, 8)], tcfg(), progress=False)


def test_streams_with_wrong_width(small):
    with pytest.raises(ValueError, match="stream1"):
        train(fresh(dims=(D, 8)), [small, torch.randn(1000, 9)], tcfg(), progress=False)


def test_no_rows():
    with pytest.raises(DataError):
        train(fresh(), [torch.zeros(0, D)], tcfg(), progress=False)


# ---- loss terms -------------------------------------------------------------------------------
def _nmse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((recon - target) ** 2).mean(dim=1) / (target**2).mean(dim=1)


@pytest.mark.parametrize("auxk_form", ["authors", "residual"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("topk", ["global", "local"])
def test_compute_losses_by_hand(reduction, topk, auxk_form):
    g = torch.Generator().manual_seed(7)
    model = fresh(dims=(6, 4), L=16, k=3, topk=topk)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.steps_since_active(0).copy_(torch.arange(16) * 3)  # some dead for dead_steps=20
    model.steps_since_active(1).copy_(torch.arange(16).flip(0) * 3)
    batch = [torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g)]
    coef, lam = 0.25, 0.7
    config = tcfg(auxk_k=5, auxk_coef=coef, dead_steps=20, cross_weight=lam, loss_reduction=reduction,
                  auxk_form=auxk_form)
    total, components, codes = compute_losses(model, batch, config)

    with torch.no_grad():
        logits = [model.logits(s, x) for s, x in enumerate(batch)]
        ref_codes = model.select(logits)
        recon = [model.decode(s, c) for s, c in enumerate(ref_codes)]
        self_terms = torch.stack([_nmse(recon[s], batch[s]).mean() for s in range(2)])
        aux_terms = []
        for s in range(2):
            dead = model.steps_since_active(s) > 20
            assert dead.any()
            aux_codes, _ = model.auxk_codes(s, batch[s], logits[s], 5, 20)
            aux_recon = aux_codes.dense(16) @ model.dec_weight[s]
            shift = model.pre_bias[s] if auxk_form == "authors" else 0  # the authors' target adds b_pre
            aux_terms.append(_nmse(aux_recon + shift, batch[s] - recon[s] + shift).mean())
        aux_terms = torch.stack(aux_terms)
        cross_terms = torch.stack([_nmse(model.decode(1, ref_codes[0]), batch[1]).mean(),
                                   _nmse(model.decode(0, ref_codes[1]), batch[0]).mean()])
    reduce = torch.mean if reduction == "mean" else torch.sum
    expected = reduce(self_terms) + coef * reduce(aux_terms) + lam * reduce(cross_terms)
    assert aux_terms.min() > 0 and cross_terms.min() > 0
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(components["self_nmse"].detach(), self_terms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(components["auxk"].detach(), aux_terms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(components["cross_nmse"].detach(), cross_terms, rtol=1e-5, atol=1e-6)
    for c, r in zip(codes, ref_codes, strict=True):
        assert torch.equal(c.indices, r.indices)
        torch.testing.assert_close(c.values.detach(), r.values, rtol=1e-5, atol=1e-6)

    # without cross_weight: no cross terms in the total or the components
    total0, components0, _ = compute_losses(model, batch, dataclasses.replace(config, cross_weight=0.0))
    assert "cross_nmse" not in components0
    torch.testing.assert_close(total0.detach(), reduce(self_terms) + coef * reduce(aux_terms),
                               rtol=1e-5, atol=1e-6)
    # without AuxK coefficient: the self terms alone
    total1, _, _ = compute_losses(model, batch,
                                  dataclasses.replace(config, cross_weight=0.0, auxk_coef=0.0))
    torch.testing.assert_close(total1.detach(), reduce(self_terms), rtol=1e-5, atol=1e-6)


def test_compute_losses_aux_zero_without_dead():
    model = fresh(dims=(6, 4), L=16, k=3)
    batch = [torch.randn(10, 6), torch.randn(10, 4)]
    total, components, _ = compute_losses(model, batch, tcfg(dead_steps=10**6, auxk_form="residual"))
    assert torch.equal(components["auxk"].detach(), torch.zeros(2))
    torch.testing.assert_close(total.detach(), components["self_nmse"].detach().mean())


def test_decode_sparse_is_used_for_aux_like_dense():
    model = fresh(dims=(6,), L=16, k=3)
    model.steps_since_active(0).fill_(100)
    x = torch.randn(4, 6)
    codes, any_dead = model.auxk_codes(0, x, model.logits(0, x), 5, 10)
    assert bool(any_dead)
    torch.testing.assert_close(decode_sparse(model.dec_weight[0], codes),
                               codes.dense(16) @ model.dec_weight[0])


@pytest.mark.parametrize("products", ["sparse", "dense"])
@pytest.mark.parametrize("topk", ["global", "local"])
def test_sparse_gradients_equal_the_dense_autograd_path(topk, products, monkeypatch):
    """Training differentiates only the selected latents (logits_at); every parameter's gradient
    must equal plain autograd through the dense logits with the same selection, whichever path
    (`dense_products_pay`) the step's products take."""
    import torch.nn.functional as F

    from xsae import sae as sae_module
    from xsae.sae import Codes

    monkeypatch.setattr(sae_module, "DENSE_SPEEDUP", 10**9 if products == "dense" else 0)

    model = fresh(dims=(6, 4, 5), L=32, k=4)
    model.config = dataclasses.replace(model.config, topk=topk)
    model.steps_since_active(1).fill_(50)  # stream 1 all dead: AuxK active there
    g = torch.Generator().manual_seed(3)
    batch = [torch.randn(9, d, generator=g) for d in (6, 4, 5)]
    config = tcfg(auxk_k=5, dead_steps=20, cross_weight=1.0, auxk_form="residual")

    total, _, _ = compute_losses(model, batch, config)
    model.zero_grad()
    total.backward()
    sparse_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    def dense_losses():
        logits = [model.logits(s, x) for s, x in enumerate(batch)]
        codes = [Codes(F.relu(h.gather(1, i)), i)
                 for h, i in zip(logits, model.select_indices([h.detach() for h in logits])[0], strict=True)]
        recons = [model.decode(s, c) for s, c in enumerate(codes)]
        self_terms = [_nmse(r, x).mean() for r, x in zip(recons, batch, strict=True)]
        aux = []
        for s, x in enumerate(batch):
            dead = model.steps_since_active(s) > 20
            idx = logits[s].detach().masked_fill(~dead, float("-inf")).topk(5, dim=1).indices
            values = F.relu(logits[s].gather(1, idx)) * dead[idx]
            aux.append(_nmse(Codes(values, idx).dense(32) @ model.dec_weight[s],
                             x - recons[s].detach()).mean() * dead.any())
        cross = [_nmse(model.decode(t, codes[s]), batch[t]).mean()
                 for s in range(3) for t in range(3) if s != t]
        return (torch.stack(self_terms).mean() + config.auxk_coef * torch.stack(aux).mean()
                + torch.stack(cross).mean())

    model.zero_grad()
    reference = dense_losses()
    reference.backward()
    torch.testing.assert_close(total.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(sparse_grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_an_optimizer_starts_without_importing_dynamo():
    """Creating, stepping, saving and restoring an optimizer leaves torch._dynamo unimported (its
    import is ≈4 s of every training job's start-up), and the step is Adam's, bit for bit."""
    program = """
import copy, sys, torch
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import make_optimizer, step_optimizer
torch.manual_seed(0)
model = SparseAutoencoder(SAEConfig(input_dims=(4,), n_latents=8, k=2))
reference = {n: p.detach().clone() for n, p in model.named_parameters()}
optimizer = make_optimizer(model, 0.1)
optimizer.zero_grad()
sum(p.sum() for p in model.parameters()).backward()
step_optimizer(optimizer)
optimizer.load_state_dict(optimizer.state_dict())
moved = all(torch.allclose(reference[n] - 0.1, p, atol=1e-6) for n, p in model.named_parameters())
print("torch._dynamo" in sys.modules, moved)
model = SparseAutoencoder(SAEConfig(input_dims=(4,), n_latents=8, k=2))
twin = copy.deepcopy(model)
optimizer, twin_optimizer = make_optimizer(model, 0.1), make_optimizer(twin, 0.1)
for _ in range(3):  # the same arithmetic as torch's own step, bit for bit
    for m, o, plain in ((model, optimizer, True), (twin, twin_optimizer, False)):
        o.zero_grad()
        sum((p * p).sum() for p in m.parameters()).backward()
        step_optimizer(o) if plain else o.step()
print(all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters())))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True", "True"], result.stderr[-2000:]


def test_decoder_normalised_once_at_init_is_plain_adam(small):
    """decoder_norm at_init: no gradient projection and no renormalisation, so every parameter
    takes exactly torch's Adam step on the loss's own gradient (the sharedness authors' trainer)."""
    config = tcfg(epochs=1, batch_size=1000, decoder_norm="at_init", auxk_k=0, recon_loss="mse")
    model, reference = fresh(), fresh()
    train(model, [small], config, progress=False)
    optimizer = torch.optim.Adam(reference.parameters(), lr=config.lr)
    loss, _, _ = compute_losses(reference, [small], config)
    loss.backward()
    optimizer.step()
    for name, value in reference.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], value, rtol=1e-5, atol=1e-7)
    norms = model.dec_weight[0].norm(dim=1)
    assert float((norms - 1).abs().max()) > 1e-4  # free to move off the unit sphere
    renormalised = fresh()
    train(renormalised, [small], dataclasses.replace(config, decoder_norm="every_step"), progress=False)
    torch.testing.assert_close(renormalised.dec_weight[0].norm(dim=1), torch.ones(64))
    with pytest.raises(ValueError, match="decoder_norm must be one of"):
        tcfg(decoder_norm="sometimes")
