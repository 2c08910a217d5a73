"""GPU check: every CUDA path of `xsae`, run against its CPU result, with throughput.

    python bench/gpu_check.py                      # CUDA: paper widths, CUDA vs CPU (≤ 8 min, one H200)
    python bench/gpu_check.py --small              # reduced widths, on CUDA or CPU (under ~60 s on CPU)
    python bench/gpu_check.py --small --device cpu --json out.json

The library's GPU paths are rarely exercised where the code is written (no GPU there), so this one
script is what to run the day a GPU is available. Each check prints one line: name, OK/FAIL,
its largest deviation (the quantity whose value/tolerance ratio is largest), throughput, and what
was compared. The exit code is 1 if any check fails, 2 on a usage error.

Checks (paper widths; `--small` shrinks every width):

  sae_train/{global,local}/{fp32,bf16}  SPARC's trainer (3 streams 768/512/768, L = 8192, k = 64,
      batch 256, λ = 1, AuxK, dead-latent re-init): one step's loss and gradients against a dense
      float64 autograd reference, then N steps of `train` against N steps on the CPU in float32
      (losses; weight updates as ‖ΔW_dev − ΔW_cpu‖ / ‖ΔW_cpu‖). bf16 = `autocast: bf16`.
  sae_train/resume  a run stopped at half time and resumed from its checkpoint on the device, against
      the same run uninterrupted.
  sae_train/load_encode  weights saved, loaded onto the device (`SparseAutoencoder.load`), encode and
      decode against the CPU model they came from.
  retrieval/{dense,codes,multi_caption}  ranks on the GPU against the CPU's ranks, exactly.
  correlation/sparse  the sparse co-moment's `index_add_` (correlation_with_moments, max_correlation,
      rank_masses) on CUDA against the CPU.
  mamba/{selective_scan,network}  MambaVision's scan and a small random network, CUDA against CPU.
  extract/{vit_l14_openclip,dinov2_l14_reg}  `features.extract` (pooled, per-layer and sampled
      tokens) with randomly initialised encoders of the real widths (no download), CUDA under bf16
      autocast against CPU float32: every row's cosine > 0.99, the same sampled token rows.

Without CUDA (`--small` only), each comparison runs the CPU path against itself (bitwise) or an
independent reference (dense vs sparse paths, NumPy, float64, a direct model call, CPU bf16
autocast), and the CUDA-only comparisons are listed as SKIP lines with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xsae.metrics.reconstruction import nmse_per_sample
from xsae.sae import Codes, SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, compute_losses, train

# ---- results ---------------------------------------------------------------------------------------


@dataclass
class Check:
    """One printed line: what was compared, each measured deviation with its tolerance, throughput."""

    name: str
    comparison: str = ""
    deviations: dict[str, tuple[float, float]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    throughput_text: str = ""
    status: str = ""
    reason: str = ""
    seconds: float = 0.0

    def deviate(self, quantity: str, value: float, tolerance: float) -> None:
        self.deviations[quantity] = (float(value), float(tolerance))

    def worst(self) -> tuple[str, float, float] | None:
        """The quantity with the largest value/tolerance ratio (NaN counts as worst)."""
        def ratio(item: tuple[str, tuple[float, float]]) -> float:
            value, tolerance = item[1]
            if math.isnan(value):
                return math.inf
            return value / tolerance if tolerance > 0 else (math.inf if value > 0 else 0.0)

        if not self.deviations:
            return None
        quantity, (value, tolerance) = max(self.deviations.items(), key=ratio)
        return quantity, value, tolerance

    def finish(self) -> None:
        """OK only if something was measured and every deviation is within its tolerance."""
        if self.status:
            return
        failed = [q for q, (v, t) in self.deviations.items() if not v <= t]
        self.status = "FAIL" if failed or not self.deviations else "OK"
        if failed:
            self.reason = "out of tolerance: " + ", ".join(failed)
        elif not self.deviations:
            self.reason = "nothing was measured"

    def line(self) -> str:
        if self.status == "SKIP":
            return f"{self.name:<34} SKIP  {self.reason}"
        worst = self.worst()
        deviation = (f"max_dev {worst[1]:.2e} ({worst[0]}, tol {worst[2]:.0e})" if worst
                     else "max_dev n/a")
        text = f"{self.name:<34} {self.status:<4}  {deviation:<52} {self.throughput_text}"
        if self.comparison:
            text += f"  [{self.comparison}]"
        if self.status == "FAIL" and self.reason:
            text += f"  -- {self.reason}"
        return text

    def to_json(self) -> dict:
        record = asdict(self)
        record["deviations"] = {q: {"value": v, "tol": t} for q, (v, t) in self.deviations.items()}
        return record


def skipped(name: str, reason: str) -> Check:
    return Check(name=name, status="SKIP", reason=reason)


# ---- device, timing, peaks -------------------------------------------------------------------------

#: Dense (no structured sparsity) spec-sheet peaks in TFLOP/s; first matching name fragment wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp32": 67.0, "fp64": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0, "fp64": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0, "fp64": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0, "fp64": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5, "fp64": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    ("V100", {"fp32": 15.7, "fp64": 7.8}),
)


def device_peaks(device: torch.device) -> tuple[str, dict[str, float]]:
    """(device name, peak TFLOP/s per dtype); an empty table when the name is not known."""
    if device.type != "cuda":
        return platform.processor() or "cpu", {}
    name = torch.cuda.get_device_name(device)
    return name, next((peaks for fragment, peaks in PEAK_TFLOPS if fragment in name), {})


class Runner:
    """Where the checks run and how throughput is phrased against the device's peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.device("cpu")
        self.cuda = device.type == "cuda"
        self.device_name, self.peaks = device_peaks(device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], object], repeats: int = 1) -> tuple[object, float]:
        """(last result, fastest of `repeats` wall times), synchronising the device around each."""
        best, result = math.inf, None
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            result = fn()
            self.sync()
            best = min(best, time.perf_counter() - start)
        return result, best

    def flops_text(self, flops: float, seconds: float, dtype: str, what: str = "") -> tuple[str, dict]:
        """The rate in GFLOP/s with its fraction of the device's peak (or "peak unknown"), and the
        numbers for the JSON report: the fraction says how far a path is from GEMM-bound."""
        rate = flops / max(seconds, 1e-12) / 1e9
        numbers = {"gflop_per_s": rate}
        peak = self.peaks.get(dtype)
        label = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
        label += f" GFLOP/s{' ' + what if what else ''}"
        if peak:
            numbers["peak_tflop_per_s"] = peak
            numbers["fraction_of_peak"] = rate / (peak * 1e3)
            return f"{label} ({100 * rate / (peak * 1e3):.1f}% of {peak:g} TFLOP/s {dtype})", numbers
        return f"{label} (peak unknown: {self.device_name}, {dtype})", numbers


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (absolute when b is zero)."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b64.norm())
    return float((a64 - b64).norm()) / (scale if scale > 0 else 1.0)


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b64.abs().max()) if b64.numel() else 0.0
    return float((a64 - b64).abs().max()) / (scale if scale > 0 else 1.0) if b64.numel() else 0.0


def cosine_deficit(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 − the smallest row cosine similarity of `[N, d]` features (0 when identical)."""
    a64 = a.detach().double().cpu().reshape(a.shape[0], -1)
    b64 = b.detach().double().cpu().reshape(b.shape[0], -1)
    return float(1.0 - F.cosine_similarity(a64, b64, dim=1, eps=1e-30).min())


# ---- widths ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Widths:
    """Every size the checks use: the papers' (CUDA only) or a reduced set (`--small`)."""

    label: str
    sae_dims: tuple[int, ...]
    sae_latents: int
    sae_k: int
    sae_batch: int
    sae_steps: int  # compared steps (one epoch over sae_steps batches)
    sae_timed_epochs: int  # timed run: this many epochs over the same rows
    retrieval_rows: int
    retrieval_dim: int
    code_rows: int
    code_latents: int
    code_k: int
    caption_images: int
    corr_rows: int
    corr_chunk: int
    corr_latents: int
    corr_k: int
    scan: tuple[int, int, int, int]  # batch·windows, channels, tokens, states
    scan_reference_slice: tuple[int, int]  # rows and channels of the float64 quadratic-form reference
    mamba: dict
    mamba_batch: int
    mamba_image: int
    clip: str  # open_clip model name, or "tiny" for a registered tiny config
    dino: dict
    images: int
    extract_batch: int
    layer_tokens: int  # tokens sampled per sample and layer (sharedness training data)
    timed_images: int  # end-to-end extraction rate (0: from the compared run)
    timed_batch: int


PAPER = Widths(
    label="paper widths", sae_dims=(768, 512, 768), sae_latents=8192, sae_k=64, sae_batch=256,
    sae_steps=8, sae_timed_epochs=25, retrieval_rows=20000, retrieval_dim=768, code_rows=10000,
    code_latents=8192, code_k=64, caption_images=5000, corr_rows=16384, corr_chunk=4096,
    corr_latents=8192, corr_k=64, scan=(64, 256, 196, 8), scan_reference_slice=(2, 32),
    # MambaVision-T's layout (the sharedness paper uses B; T keeps the CPU reference quick)
    mamba={"dim": 80, "in_dim": 32, "depths": (1, 3, 8, 4), "num_heads": (2, 4, 8, 16),
           "window_size": (8, 8, 14, 7)},
    mamba_batch=8, mamba_image=224, clip="ViT-L-14",
    dino={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
          "patch_size": 14, "image_size": 518, "num_register_tokens": 4},
    images=16, extract_batch=8, layer_tokens=4, timed_images=512, timed_batch=256)

SMALL = Widths(
    label="small widths", sae_dims=(48, 32, 48), sae_latents=512, sae_k=8, sae_batch=64,
    sae_steps=4, sae_timed_epochs=1, retrieval_rows=600, retrieval_dim=32, code_rows=500,
    code_latents=256, code_k=8, caption_images=150, corr_rows=3000, corr_chunk=1000,
    corr_latents=256, corr_k=8, scan=(4, 16, 49, 8), scan_reference_slice=(4, 16),
    mamba={"dim": 16, "in_dim": 8, "depths": (1, 1, 2, 2), "num_heads": (2, 2, 2, 2),
           "window_size": (7, 7, 7, 7)},
    mamba_batch=2, mamba_image=64, clip="tiny",
    dino={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4,
          "patch_size": 14, "image_size": 518, "num_register_tokens": 4},
    images=6, extract_batch=8, layer_tokens=3, timed_images=0, timed_batch=4)


# ---- SAE training ------------------------------------------------------------------------------------


def sae_streams(dims: tuple[int, ...], n_rows: int, seed: int) -> list[torch.Tensor]:
    """Paired streams with shared sparse structure: each row mixes a few concepts whose directions
    differ per stream, plus an offset and noise (so TopK has something real to find)."""
    g = torch.Generator().manual_seed(seed)
    n_concepts = 4 * max(dims)
    active = max(4, min(dims) // 32)
    ids = torch.randint(n_concepts, (n_rows, active), generator=g)
    values = torch.rand(n_rows, active, generator=g) * 2
    streams = []
    for d in dims:
        atoms = F.normalize(torch.randn(n_concepts, d, generator=g), dim=1)
        mixed = F.embedding_bag(ids, atoms, per_sample_weights=values, mode="sum")
        streams.append(mixed + 0.3 * torch.randn(d, generator=g) + 0.05 * torch.randn(n_rows, d, generator=g))
    return streams


def sae_model(w: Widths, topk: str, dead_steps: int) -> SparseAutoencoder:
    """A fresh SAE whose dead-latent counters are preset, so AuxK is active from the first step."""
    config = SAEConfig(input_dims=w.sae_dims, n_latents=w.sae_latents, k=w.sae_k, topk=topk,
                       stream_names=tuple(f"s{i}" for i in range(len(w.sae_dims))))
    model = SparseAutoencoder(config, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for s in range(model.n_streams):
        model.steps_since_active(s).copy_(torch.randint(0, dead_steps + 2, (w.sae_latents,), generator=g))
    return model


def sae_training_config(w: Widths, autocast: str, epochs: int = 1, log_every: int = 1) -> TrainingConfig:
    """SPARC's recipe (λ = 1, AuxK k = 64, coef 1/32, Adam 1e-4), with a short dead-latent window and
    frequent re-init so that the AuxK and re-init paths run within a few steps."""
    return TrainingConfig(epochs=epochs, batch_size=w.sae_batch, lr=1e-4, auxk_k=w.sae_k, auxk_coef=1 / 32,
                          dead_steps=1, cross_weight=1.0, reinit_every=3, autocast=autocast,
                          log_every=log_every, checkpoint_every=10**9, seed=0)


def autocast_context(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    """bf16 autocast as `train` and `extract` apply it (on CPU too, as a stand-in without CUDA)."""
    if autocast == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def library_gradients(model0: SparseAutoencoder, batch: list[torch.Tensor], config: TrainingConfig,
                      device: torch.device) -> tuple[float, dict[str, torch.Tensor]]:
    """One step's loss and raw gradients through `compute_losses`, as `train` computes them."""
    model = copy.deepcopy(model0).to(device).train()
    with autocast_context(device, config.autocast):
        loss, _, _ = compute_losses(model, [x.to(device) for x in batch], config)
    loss.backward()
    return loss.item(), {name: p.grad.double().cpu() for name, p in model.named_parameters()
                         if p.grad is not None}


def dense_reference_gradients(model0: SparseAutoencoder, batch: list[torch.Tensor],
                              config: TrainingConfig) -> tuple[float, dict[str, torch.Tensor]]:
    """The same objective computed the plain way, in float64 on the CPU: dense logits with
    autograd, codes scattered into `[B, L]`, every decode a dense matmul."""
    model = copy.deepcopy(model0).double().train()
    xs = [x.double() for x in batch]
    n, k, L = model.n_streams, model.config.k, model.config.n_latents
    logits = [F.linear(x - model.pre_bias[s], model.enc_weight[s], model.lat_bias[s])
              for s, x in enumerate(xs)]
    if model.config.topk == "global":
        shared = torch.stack([h.detach() for h in logits]).sum(0).topk(k, dim=1).indices
        picks = [shared] * n
    else:
        picks = [h.detach().topk(k, dim=1).indices for h in logits]
    codes = [torch.zeros_like(h).scatter(1, i, F.relu(h.gather(1, i)))
             for h, i in zip(logits, picks, strict=True)]
    recon = [[z @ model.dec_weight[t] + model.pre_bias[t] for t in range(n)] for z in codes]
    self_terms = [nmse_per_sample(recon[t][t], xs[t]).mean() for t in range(n)]
    cross = [nmse_per_sample(recon[s][t], xs[t]).mean() for s in range(n) for t in range(n) if s != t]
    aux = []
    for s, x in enumerate(xs):
        dead = model.steps_since_active(s) > config.dead_steps
        index = logits[s].detach().masked_fill(~dead, -math.inf).topk(min(config.auxk_k, L), dim=1).indices
        z = torch.zeros_like(logits[s]).scatter(1, index, F.relu(logits[s].gather(1, index)) * dead[index])
        # the default AuxK form ("authors"): target x − x̂ + b_pre, kept when no latent is dead
        bias = model.pre_bias[s]
        aux.append(nmse_per_sample(z @ model.dec_weight[s] + bias,
                                   x - recon[s][s].detach() + bias.detach()).mean())
    loss = (torch.stack(self_terms).mean() + config.auxk_coef * torch.stack(aux).mean()
            + config.cross_weight * torch.stack(cross).mean())
    loss.backward()
    return loss.item(), {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}


def train_run(model0: SparseAutoencoder, streams: list[torch.Tensor], config: TrainingConfig,
              device: torch.device, runner: Runner):
    """`train` on `device` from a copy of `model0`; returns (model on CPU, log, seconds)."""
    model = copy.deepcopy(model0).to(device)
    data = [x.to(device) for x in streams]
    log, seconds = runner.timed(lambda: train(model, data, config, progress=False))
    return model.cpu(), log, seconds


# Tolerances, per precision: one step against float64 (loss, gradients), N steps against the CPU's
# float32 run (loss curve, weight updates). float32 differs from float64 by rounding (~1e-7 here)
# and, now and then, a near-tied TopK selection that rounding flips: one flipped row moves the loss
# by ~1e-4 and the Adam updates of two latents by a full step (~2 % of the update norm at L = 8192),
# hence the fp32 bounds. bf16 logits (8 mantissa bits) flip many selections: the weight updates of
# the first steps differ by ~15-20 % while the loss curves agree to ~0.1 % (measured with CPU
# autocast at both widths). A broken kernel gives deviations of order 1.
SAE_TOLERANCES = {
    "fp32": {"loss_vs_float64": 1e-3, "grad_vs_float64": 2e-2, "loss_curve": 1e-3, "weight_update": 0.1},
    "bf16": {"loss_vs_float64": 1e-2, "grad_vs_float64": 0.25, "loss_curve": 2e-2, "weight_update": 0.5},
}


def check_sae(runner: Runner, w: Widths, topk: str) -> list[Check]:
    """Global or Local TopK SAE training: fp32 and bf16 autocast on the device vs the CPU."""
    streams = sae_streams(w.sae_dims, w.sae_batch * w.sae_steps, seed=0)
    model0 = sae_model(w, topk, dead_steps=1)
    first = [x[: w.sae_batch] for x in streams]
    base = sae_training_config(w, "none")
    ref_loss, ref_grads = dense_reference_gradients(model0, first, base)
    cpu_model, cpu_log, _ = train_run(model0, streams, base, runner.cpu, runner)
    checks = []
    for precision in ("fp32", "bf16"):
        autocast = "bf16" if precision == "bf16" else "none"
        tol = SAE_TOLERANCES[precision]
        config = sae_training_config(w, autocast)
        check = Check(f"sae_train/{topk}/{precision}")
        started = time.perf_counter()
        where = runner.device.type
        against = (f"{where} {precision} vs cpu fp32" if runner.cuda or precision == "bf16"
                   else "cpu fp32 rerun vs cpu fp32 (bitwise)")
        check.comparison = f"{against}, {w.sae_steps} steps; 1 step vs dense float64"
        loss, grads = library_gradients(model0, first, config, runner.device)
        check.deviate("loss_vs_float64", abs(loss - ref_loss) / abs(ref_loss), tol["loss_vs_float64"])
        check.deviate("grad_vs_float64", max(relative(grads[n], ref_grads[n]) for n in ref_grads),
                      tol["grad_vs_float64"])
        model, log, _ = train_run(model0, streams, config, runner.device, runner)
        exact = not runner.cuda and precision == "fp32"  # the CPU against itself: bit for bit
        losses, cpu_losses = log["loss"].to_numpy(), cpu_log["loss"].to_numpy()
        curve = np.abs(losses - cpu_losses) / np.abs(cpu_losses)
        check.deviate("loss_curve", float(curve.max()), 0.0 if exact else tol["loss_curve"])
        start_state, cpu_state, state = model0.state_dict(), cpu_model.state_dict(), model.state_dict()
        updates = [relative(state[n] - start_state[n], cpu_state[n] - start_state[n])
                   for n, _ in model0.named_parameters()]
        check.deviate("weight_update", max(updates), 0.0 if exact else tol["weight_update"])
        timed_config = sae_training_config(w, autocast, epochs=w.sae_timed_epochs,
                                           log_every=w.sae_steps * w.sae_timed_epochs)
        if runner.cuda:  # warm-up: kernel selection and allocator growth stay out of the timing
            train_run(model0, streams, sae_training_config(w, autocast), runner.device, runner)
        _, _, seconds = train_run(model0, streams, timed_config, runner.device, runner)
        steps = w.sae_steps * w.sae_timed_epochs
        rate = steps * w.sae_batch / seconds
        gemm = 2.0 * w.sae_batch * w.sae_latents * sum(w.sae_dims) * steps
        text, numbers = runner.flops_text(gemm, seconds, "bf16" if autocast == "bf16" else "fp32",
                                          "in the encoder GEMM")
        check.throughput = {"samples_per_s": rate, **numbers}
        check.throughput_text = f"{rate:,.0f} samples/s, {text}"
        check.seconds = time.perf_counter() - started
        checks.append(check)
    return checks


def check_resume(runner: Runner, w: Widths) -> list[Check]:
    """A run interrupted at half time and resumed from its checkpoint on the device, against the
    same run uninterrupted (bitwise on the CPU; CUDA's atomic sums allow rounding differences)."""
    check = Check("sae_train/resume")
    started = time.perf_counter()
    streams = sae_streams(w.sae_dims, w.sae_batch * w.sae_steps, seed=0)
    model0 = sae_model(w, "global", dead_steps=1)
    half = w.sae_steps // 2
    config = TrainingConfig(**{**asdict(sae_training_config(w, "none")), "checkpoint_every": half})
    whole, whole_log, _ = train_run(model0, streams, config, runner.device, runner)
    data = [x.to(runner.device) for x in streams]
    with tempfile.TemporaryDirectory(prefix="gpu_check_resume_") as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        first = copy.deepcopy(model0).to(runner.device)
        train(first, data, config, checkpoint_path=checkpoint, progress=False, stop_after_steps=half)
        resumed = copy.deepcopy(model0).to(runner.device)
        resumed_log, seconds = runner.timed(lambda: train(resumed, data, config, checkpoint_path=checkpoint,
                                                          progress=False))
    exact = not runner.cuda
    check.comparison = (f"{runner.device.type} resumed at step {half} of {w.sae_steps} vs uninterrupted"
                        + (" (bitwise)" if exact else ""))
    losses, whole_losses = resumed_log["loss"].to_numpy(), whole_log["loss"].to_numpy()
    tol = SAE_TOLERANCES["fp32"]
    check.deviate("loss_curve", float(np.abs(losses - whole_losses).max() / np.abs(whole_losses).min()),
                  0.0 if exact else tol["loss_curve"])
    start, got, want = model0.state_dict(), resumed.cpu().state_dict(), whole.state_dict()
    check.deviate("weight_update", max(relative(got[n] - start[n], want[n] - start[n])
                                       for n, _ in model0.named_parameters()),
                  0.0 if exact else tol["weight_update"])
    rate = (w.sae_steps - half) * w.sae_batch / seconds
    check.throughput = {"samples_per_s": rate}
    check.throughput_text = f"{rate:,.0f} samples/s (resumed half, fp32)"
    check.seconds = time.perf_counter() - started
    return [check]


def check_load_encode(runner: Runner, w: Widths) -> list[Check]:
    """Weights saved, loaded straight onto the device (`SparseAutoencoder.load(device=...)`) and
    used for inference, as evaluation does, against the model they came from on the CPU."""
    check = Check("sae_train/load_encode")
    started = time.perf_counter()
    model = sae_model(w, "global", dead_steps=1).eval()
    inputs = [x[: 4 * w.sae_batch] for x in sae_streams(w.sae_dims, 4 * w.sae_batch, seed=15)]
    with tempfile.TemporaryDirectory(prefix="gpu_check_load_") as tmp:
        path = Path(tmp) / "sae.safetensors"
        model.save(path)
        loaded = SparseAutoencoder.load(path, device=runner.device).eval()
    with torch.inference_mode():
        expected = model.encode(inputs)
        on_device = [x.to(runner.device) for x in inputs]
        loaded.encode([x[:2] for x in on_device])
        codes, seconds = runner.timed(lambda: loaded.encode(on_device), repeats=3)
        recon = [loaded.decode(s, c).cpu() for s, c in enumerate(codes)]
        recon_expected = [model.decode(s, c) for s, c in enumerate(expected)]
    L = w.sae_latents
    # Rows whose latent sets agree are compared value by value; on CUDA rounding may flip a
    # near-tied selection now and then (one row in thousands), never many.
    same = torch.stack([c.indices.cpu().sort(dim=1).values.eq(e.indices.sort(dim=1).values).all(dim=1)
                        for c, e in zip(codes, expected, strict=True)]).all(dim=0)
    check.deviate("rows_selecting_other_latents", float(1 - same.double().mean()),
                  1e-2 if runner.cuda else 0.0)
    check.deviate("codes_relative", max(relative(c.dense(L).cpu()[same], e.dense(L)[same])
                                        for c, e in zip(codes, expected, strict=True)),
                  1e-5 if runner.cuda else 0.0)
    check.deviate("reconstruction_relative", max(relative(r[same], e[same])
                                                 for r, e in zip(recon, recon_expected, strict=True)),
                  1e-5 if runner.cuda else 0.0)
    check.comparison = f"loaded on {runner.device.type}, encode + decode vs the saved cpu model"
    rows = inputs[0].shape[0]
    gemm = 2.0 * rows * L * sum(w.sae_dims)
    text, numbers = runner.flops_text(gemm, seconds, "fp32", "in the encoder GEMM")
    check.throughput = {"samples_per_s": rows / seconds, **numbers}
    check.throughput_text = f"{rows / seconds:,.0f} samples/s encode, {text}"
    check.seconds = time.perf_counter() - started
    return [check]


# ---- retrieval ---------------------------------------------------------------------------------------


def topk_codes(scores: torch.Tensor, k: int) -> Codes:
    top = scores.topk(k, dim=1)
    return Codes(top.values.clamp_min(0.0), top.indices)


def paired_codes(n: int, n_latents: int, k: int, seed: int, owners: torch.Tensor | None = None,
                 chunk: int = 2048) -> tuple[Codes, Codes]:
    """(queries `[n]`, targets) TopK codes of noisy copies of shared latent scores, built in row
    chunks; the targets are one per query, or one per entry of `owners` (row of its query)."""
    g = torch.Generator().manual_seed(seed)
    owners = torch.arange(n) if owners is None else owners
    base = torch.randn(n, n_latents, generator=g)
    queries = [topk_codes(base[i:i + chunk] + 0.7 * torch.randn(min(chunk, n - i), n_latents, generator=g), k)
               for i in range(0, n, chunk)]
    targets = [topk_codes(base[owners[i:i + chunk]] + 0.7 * torch.randn(len(owners[i:i + chunk]), n_latents,
                                                                        generator=g), k)
               for i in range(0, len(owners), chunk)]
    return Codes.concatenate(queries), Codes.concatenate(targets)


def with_zero_rows(codes: Codes, rows: list[int]) -> Codes:
    """All-zero code rows: a zero query ties with the whole gallery (rank = gallery size)."""
    values = codes.values.clone()
    values[rows] = 0.0
    return Codes(values, codes.indices)


def numpy_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based cosine ranks of gallery row i for query i, written independently."""
    def unit(x: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    scores = unit(queries) @ unit(gallery).T
    target = scores[np.arange(len(queries)), np.arange(len(queries))]
    return (scores >= target[:, None]).sum(axis=1)


def check_retrieval(runner: Runner, w: Widths) -> list[Check]:
    from xsae.metrics.retrieval import multi_caption_ranks, retrieval_metrics, retrieval_ranks

    checks = []
    # dense embeddings: paired rows, distractor rows, a duplicated gallery row (exact tie), zero queries
    check = Check("retrieval/dense")
    started = time.perf_counter()
    g = torch.Generator().manual_seed(3)
    n, d = w.retrieval_rows, w.retrieval_dim
    queries = torch.randn(n, d, generator=g, dtype=torch.float64).float()
    gallery = torch.cat([queries + 1.2 * torch.randn(n, d, generator=g),
                         torch.randn(n // 4, d, generator=g)])
    gallery[1] = gallery[0]
    queries[2:4] = 0.0
    reference = (retrieval_ranks(queries, gallery) if runner.cuda
                 else torch.from_numpy(numpy_ranks(queries.double().numpy(), gallery.double().numpy())))
    q_dev, g_dev = queries.to(runner.device), gallery.to(runner.device)
    retrieval_ranks(q_dev[:8], g_dev[:8])  # warm-up (library and kernel initialisation)
    ranks, seconds = runner.timed(lambda: retrieval_ranks(q_dev, g_dev))
    check.comparison = (f"{runner.device.type} float64 matmul vs cpu, {n}×{len(gallery)}×{d}" if runner.cuda
                        else f"cpu vs NumPy reference, {n}×{len(gallery)}×{d}")
    _retrieval_deviations(check, ranks, reference, retrieval_metrics)
    text, numbers = runner.flops_text(2.0 * n * len(gallery) * d, seconds, "fp64")
    check.throughput = {"queries_per_s": n / seconds, **numbers}
    check.throughput_text = f"{n / seconds:,.0f} queries/s, {text}"
    check.seconds = time.perf_counter() - started
    checks.append(check)

    # sparse codes: densified and scored by matmul on the device vs sparse CSR products on the CPU
    check = Check("retrieval/codes")
    started = time.perf_counter()
    q_codes, g_codes = paired_codes(w.code_rows, w.code_latents, w.code_k, seed=4)
    q_codes = with_zero_rows(q_codes, [5, 6])
    reference = retrieval_ranks(q_codes, g_codes)
    retrieval_ranks(Codes(q_codes.values[:8], q_codes.indices[:8]),
                    Codes(g_codes.values[:8], g_codes.indices[:8]), device=runner.device)
    ranks, seconds = runner.timed(lambda: retrieval_ranks(q_codes, g_codes, device=runner.device))
    check.comparison = (f"{runner.device.type} dense float64 matmul vs cpu sparse CSR products, "
                        f"{w.code_rows}² rows, L={w.code_latents}, k={w.code_k}")
    _retrieval_deviations(check, ranks, reference, retrieval_metrics)
    text, numbers = runner.flops_text(2.0 * w.code_rows**2 * w.code_latents, seconds, "fp64")
    check.throughput = {"queries_per_s": w.code_rows / seconds, **numbers}
    check.throughput_text = f"{w.code_rows / seconds:,.0f} queries/s, {text}"
    check.seconds = time.perf_counter() - started
    checks.append(check)

    # several captions per image (1 to 5), both directions
    check = Check("retrieval/multi_caption")
    started = time.perf_counter()
    n_images = w.caption_images
    owners = torch.repeat_interleave(torch.arange(n_images), torch.arange(n_images) % 5 + 1)
    images, captions = paired_codes(n_images, w.code_latents, w.code_k, seed=5, owners=owners)
    ref_i2t, ref_t2i = multi_caption_ranks(images, captions, owners)
    (i2t, t2i), seconds = runner.timed(lambda: multi_caption_ranks(images, captions, owners,
                                                                   device=runner.device))
    check.comparison = (f"{runner.device.type} dense matmul vs cpu sparse CSR, {n_images} images, "
                        f"{len(owners)} captions")
    check.deviate("image_to_text_rank_mismatches", int((i2t != ref_i2t).sum()), 0)
    check.deviate("text_to_image_rank_mismatches", int((t2i != ref_t2i).sum()), 0)
    metrics = [retrieval_metrics(r) for r in (i2t, t2i, ref_i2t, ref_t2i)]
    check.deviate("metric_difference", max(abs(metrics[i][key] - metrics[i + 2][key])
                                           for i in (0, 1) for key in metrics[0]), 0)
    rate = (n_images + len(owners)) / seconds
    check.throughput = {"queries_per_s": rate}
    check.throughput_text = f"{rate:,.0f} queries/s"
    check.seconds = time.perf_counter() - started
    checks.append(check)
    return checks


def _retrieval_deviations(check: Check, ranks: torch.Tensor, reference: torch.Tensor, metrics_fn) -> None:
    check.deviate("rank_mismatches", int((ranks.cpu() != reference.cpu()).sum()), 0)
    got, expected = metrics_fn(ranks), metrics_fn(reference)
    check.deviate("metric_difference", max(abs(got[key] - expected[key]) for key in expected), 0)


# ---- sparse correlations -----------------------------------------------------------------------------


def correlated_code_pair(w: Widths, seed: int) -> tuple[Codes, Codes]:
    """Two TopK code sets over the same rows; B's latent scores are a noisy, permuted copy of A's."""
    g = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(w.corr_latents, generator=g)
    parts_a, parts_b = [], []
    for start in range(0, w.corr_rows, 2048):
        rows = min(2048, w.corr_rows - start)
        scores = torch.randn(rows, w.corr_latents, generator=g)
        parts_a.append(topk_codes(scores, w.corr_k))
        noisy = scores[:, permutation] + 0.8 * torch.randn(rows, w.corr_latents, generator=g)
        parts_b.append(topk_codes(noisy, w.corr_k))
    return Codes.concatenate(parts_a), Codes.concatenate(parts_b)


def numpy_rank_masses(codes: Codes, max_rank: int, n_features: int) -> np.ndarray:
    """masses[t, j] = Σ_n of row n's (t+1)-th largest value when it belongs to latent j."""
    values, indices = codes.values.double().numpy(), codes.indices.numpy()
    order = np.argsort(-values, axis=1, kind="stable")[:, :max_rank]
    masses = np.zeros((max_rank, n_features))
    for t in range(max_rank):
        np.add.at(masses[t], np.take_along_axis(indices, order[:, t:t + 1], 1)[:, 0],
                  np.take_along_axis(values, order[:, t:t + 1], 1)[:, 0])
    return masses


def check_correlation(runner: Runner, w: Widths) -> list[Check]:
    from xsae.metrics.sharedness import correlation_with_moments, max_correlation, rank_masses

    check = Check("correlation/sparse")
    started = time.perf_counter()
    a, b = correlated_code_pair(w, seed=6)
    L = w.corr_latents
    options = {"n_features_a": L, "n_features_b": L, "chunk_rows": w.corr_chunk}
    if runner.cuda:
        check.comparison = (f"cuda index_add_ vs cpu index_add_ (float64), N={w.corr_rows}, "
                            f"L={L}, k={w.corr_k}")
        ref_corr, ref_ma, ref_mb = correlation_with_moments(a, b, method="sparse", device="cpu", **options)
        ref_max = max_correlation(a, b, method="sparse", device="cpu", **options)
        ref_masses = rank_masses(a, w.corr_k, n_features=L, chunk_rows=w.corr_chunk, device="cpu")
    else:
        check.comparison = (f"cpu sparse index_add_ vs cpu dense float64 matmul, NumPy rank masses, "
                            f"N={w.corr_rows}, L={L}, k={w.corr_k}")
        ref_corr, ref_ma, ref_mb = correlation_with_moments(a, b, method="dense", matmul_dtype=torch.float64,
                                                            device="cpu", **options)
        ref_max = max_correlation(a, b, method="dense", matmul_dtype=torch.float64, device="cpu", **options)
        ref_masses = torch.from_numpy(numpy_rank_masses(a, w.corr_k, L))
    (corr, ma, mb), seconds = runner.timed(lambda: correlation_with_moments(
        a, b, method="sparse", device=runner.device, **options))
    check.deviate("correlation_max_abs", float((corr.cpu() - ref_corr.cpu()).abs().max()), 1e-10)
    moments = ((ma, ref_ma), (mb, ref_mb))
    moment_error = max(max(max_relative(got.m2, want.m2), max_relative(got.mean, want.mean))
                       for got, want in moments)
    check.deviate("moments_relative", moment_error, 1e-10)
    result = max_correlation(a, b, method="sparse", device=runner.device, **options)
    check.deviate("rho_max_abs", float((result.rho - ref_max.rho).abs().max()), 1e-10)
    alive_b = ref_mb.alive.cpu()
    scores = ref_corr.cpu().masked_fill(~alive_b.unsqueeze(0), -math.inf).topk(2, dim=1).values
    clear = (scores[:, 0] - scores[:, 1]) > 1e-9  # best match not a near-tie
    check.deviate("best_match_mismatches", int(((result.best_match != ref_max.best_match) & clear).sum()), 0)
    masses = rank_masses(a, w.corr_k, n_features=L, chunk_rows=w.corr_chunk, device=runner.device)
    check.deviate("rank_masses_relative", max_relative(masses, ref_masses), 1e-12)
    pairs = w.corr_rows * w.corr_k**2
    check.throughput = {"rows_per_s": w.corr_rows / seconds, "pair_updates_per_s": pairs / seconds}
    check.throughput_text = (f"{w.corr_rows / seconds:,.0f} rows/s, {pairs / seconds / 1e6:,.0f} M "
                             "index_add pairs/s (not GEMM-bound)")
    check.seconds = time.perf_counter() - started
    return [check]


# ---- MambaVision --------------------------------------------------------------------------------------


def scan_inputs(shape: tuple[int, int, int, int], seed: int) -> tuple[torch.Tensor, ...]:
    """u, delta, A, B, C, D, delta_bias of plausible scales (decays between ~0.1 and ~1 per step)."""
    b, d, length, n = shape
    g = torch.Generator().manual_seed(seed)
    u, delta = torch.randn(b, d, length, generator=g), 0.5 * torch.randn(b, d, length, generator=g) - 1.0
    A = -torch.exp(0.5 * torch.randn(d, n, generator=g))
    B, C = torch.randn(b, n, length, generator=g), torch.randn(b, n, length, generator=g)
    return u, delta, A, B, C, torch.randn(d, generator=g), 0.1 * torch.randn(d, generator=g)


def scan_reference(u, delta, A, B, C, D, delta_bias) -> torch.Tensor:
    """The selective scan in closed form, float64: y_t = Σ_{s≤t} Σ_n C_nt exp(Σ_{s<r≤t} Δ_r A_n)
    Δ_s B_ns u_s + D u_t (no recurrence, so an independent check of the loop)."""
    u, delta, A, B, C, D, delta_bias = (x.double() for x in (u, delta, A, B, C, D, delta_bias))
    step = F.softplus(delta + delta_bias[:, None])  # [b, d, L]
    cumulative = (step.unsqueeze(-1) * A[:, None, :]).cumsum(2)  # [b, d, L, n]
    length = u.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [t, s], s ≤ t
    exponent = cumulative.unsqueeze(3) - cumulative.unsqueeze(2)  # [b, d, t, s, n]
    weights = torch.exp(exponent.masked_fill(~causal[None, None, :, :, None], -math.inf))
    drive = (step * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # [b, d, s, n]
    y = torch.einsum("bdtsn,bdsn,bnt->bdt", weights, drive, C)
    return y + u * D[:, None]


def check_mamba(runner: Runner, w: Widths) -> list[Check]:
    from xsae.encoders.mambavision import MambaVisionArch, MambaVisionBackbone, selective_scan

    checks = []
    check = Check("mamba/selective_scan")
    started = time.perf_counter()
    inputs = scan_inputs(w.scan, seed=7)
    rows, channels = w.scan_reference_slice
    cpu_out = selective_scan(*inputs)
    u, delta, A, B, C, D, delta_bias = inputs
    reference = scan_reference(u[:rows, :channels], delta[:rows, :channels], A[:channels], B[:rows],
                               C[:rows], D[:channels], delta_bias[:channels])
    check.deviate("cpu_vs_float64_closed_form", max_relative(cpu_out[:rows, :channels], reference), 1e-4)
    on_device = [x.to(runner.device) for x in inputs]
    selective_scan(*[x[:1] if x.dim() == 3 else x for x in on_device])  # warm-up
    out, seconds = runner.timed(lambda: selective_scan(*on_device), repeats=3)
    if runner.cuda:
        check.deviate("cuda_vs_cpu", max_relative(out, cpu_out), 1e-5)
        check.comparison = f"cuda vs cpu (float32 state) and cpu vs float64 closed form, shape {w.scan}"
    else:
        check.comparison = f"cpu vs float64 closed form (no recurrence), shape {w.scan}"
    b, _, length, _ = w.scan
    check.throughput = {"sequences_per_s": b / seconds, "tokens_per_s": b * length / seconds}
    check.throughput_text = (f"{b * length / seconds:,.0f} tokens/s (×{w.scan[1]} channels; "
                             "a Python loop over tokens)")
    check.seconds = time.perf_counter() - started
    checks.append(check)

    check = Check("mamba/network")
    started = time.perf_counter()
    arch = MambaVisionArch(dim=w.mamba["dim"], in_dim=w.mamba["in_dim"], depths=w.mamba["depths"],
                           num_heads=w.mamba["num_heads"], window_size=w.mamba["window_size"])
    torch.manual_seed(8)
    network = MambaVisionBackbone(arch).eval()
    images = torch.randn(w.mamba_batch, 3, w.mamba_image, w.mamba_image,
                         generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        expected = network(images)
        device_net = copy.deepcopy(network).to(runner.device)
        device_images = images.to(runner.device)
        if runner.cuda:
            fp32 = device_net(device_images)
            # cuDNN convolutions use TF32 by default (torch.backends.cudnn.allow_tf32)
            check.deviate("cuda_fp32_vs_cpu", max_relative(fp32, expected), 2e-2)
        with autocast_context(runner.device, "bf16"):
            device_net(device_images[:1])
            bf16, seconds = runner.timed(lambda: device_net(device_images))
    check.deviate("bf16_autocast_cosine_deficit", cosine_deficit(bf16.float(), expected), 1e-2)
    check.comparison = (f"cuda fp32 and bf16 autocast vs cpu fp32, random {arch.depths} network"
                        if runner.cuda else f"cpu bf16 autocast vs cpu fp32, random {arch.depths} network")
    check.throughput = {"images_per_s": w.mamba_batch / seconds}
    check.throughput_text = (f"{w.mamba_batch / seconds:,.1f} images/s bf16 at {w.mamba_image}px, "
                             f"batch {w.mamba_batch}")
    check.seconds = time.perf_counter() - started
    checks.append(check)
    return checks


# ---- feature extraction -------------------------------------------------------------------------------


def write_images(folder: Path, n: int, seed: int) -> Path:
    """A manifest of `n` smooth random RGB images with captions; returns its CSV path."""
    import pandas as pd
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ["a", "red", "small", "dog", "house", "tree", "on", "the", "hill", "photo", "of", "two"]
    rows = []
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((320, 256), Image.Resampling.BICUBIC)
        path = folder / f"img{i:04d}.png"
        image.save(path)
        caption = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
        rows.append({"sample_id": f"img{i:04d}", "image_path": str(path), "caption": caption,
                     "category": "synthetic", "label_ids": "0", "label_names": "synthetic"})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def tiny_clip_name(folder: Path) -> str:
    """Registers a small open_clip ViT (patch 14 on 224 px, as ViT-L/14) and returns its name."""
    import open_clip

    name = "gpu-check-tiny-random-clip"
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 14, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def random_dinov2(folder: Path, config: dict) -> str:
    """A randomly initialised DINOv2 with registers saved in the hub's layout; returns the folder."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch.manual_seed(10)
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**config)).save_pretrained(folder)
    return str(folder)


def read_features(path: Path) -> dict[str, np.ndarray]:
    import h5py

    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda key, item: arrays.__setitem__(key, item[()])
                      if isinstance(item, h5py.Dataset) and key != "sample_ids" else None)
    return arrays


def image_flops(encoder, device: torch.device) -> float:
    """Forward FLOPs of one image, counted by torch's FLOP counter (matmuls, convolutions, attention).

    Counted under autocast, as `extract` runs: without it `nn.MultiheadAttention` takes a fused
    inference path whose projections the counter does not see. (On the CPU the counter has no
    entry for the fused attention kernel, so CPU counts leave out the attention products.)
    """
    from torch.utils.flop_counter import FlopCounterMode

    with autocast_context(device, "bf16"), FlopCounterMode(display=False) as counter:
        encoder.encode("image", torch.zeros(2, 3, 224, 224, device=device))
    return counter.get_total_flops() / 2


def manifest_batch(encoder, manifest: Path, modality: str):
    """Every manifest row as one prepared batch: an image tensor, or the list of captions."""
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(manifest)
    if modality == "text":
        return table["caption"].tolist()
    images = []
    for path in table["image_path"]:
        with Image.open(path) as image:
            image.load()
            images.append(image.copy())
    return encoder.prepare("image", images)


def direct_call(encoder, loader: str, modality: str, batch) -> torch.Tensor:
    """The model's own API, bypassing `Encoder.encode` and `features.extract`."""
    with torch.inference_mode():
        if loader == "open_clip":
            if modality == "image":
                return encoder.model.encode_image(batch)
            return encoder.model.encode_text(encoder.tokenizer(list(batch)))
        return encoder.model(pixel_values=batch).pooler_output


def _compare_features(check: Check, got: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                      tolerance: float, prefix: str = "") -> None:
    """Row cosine deficits of feature arrays; sampled-token rows must agree exactly."""
    for key in sorted(got):
        if key.startswith("token_rows/"):
            same = got[key].shape == expected[key].shape and bool((got[key] == expected[key]).all())
            check.deviate(f"{prefix}mismatch/{key}", float(not same), 0)
        else:
            deficit = cosine_deficit(torch.from_numpy(got[key]), torch.from_numpy(expected[key]))
            check.deviate(f"{prefix}cosine_deficit/{key}", deficit, tolerance)


def check_extraction(runner: Runner, w: Widths, workdir: Path) -> list[Check]:
    """`features.extract` (pooled, per-layer and sampled tokens) with two random encoders of the
    SPARC widths: CUDA under bf16 autocast vs CPU fp32; without CUDA, extract vs the model's own
    call and CPU bf16 autocast vs fp32."""
    from xsae.encoders import EncoderSpec, load_encoder
    from xsae.features import extract, read_attrs

    manifest = write_images(workdir / "images", w.images, seed=11)
    timed_manifest = (write_images(workdir / "timed_images", w.timed_images, seed=14)
                      if runner.cuda and w.timed_images else None)
    clip = w.clip if w.clip != "tiny" else tiny_clip_name(workdir)
    dino_folder = random_dinov2(workdir / "dinov2", w.dino)
    encoders = [("extract/vit_l14_openclip", "open_clip", clip, ["image", "text"]),
                ("extract/dinov2_l14_reg", "dinov2", dino_folder, ["image"])]
    options = {"layers": True, "batch_size": w.extract_batch, "progress": False,
               "layer_tokens": w.layer_tokens, "token_seed": 0}
    checks = []
    for name, loader, model, modalities in encoders:
        check = Check(name)
        started = time.perf_counter()
        spec = EncoderSpec(name=name.split("/")[1], loader=loader, model=model)
        torch.manual_seed(12)
        cpu_encoder = load_encoder(spec)
        cpu_file = workdir / f"{spec.name}_cpu.h5"
        extract(cpu_encoder, manifest, cpu_file, modalities=modalities, autocast_dtype="float32", **options)
        expected = read_features(cpu_file)
        summary = None
        if runner.cuda:
            device_encoder = load_encoder(EncoderSpec(**{**asdict(spec), "device": str(runner.device)}))
            device_encoder.model.load_state_dict(cpu_encoder.model.state_dict())
            device_file = workdir / f"{spec.name}_cuda.h5"
            summary = extract(device_encoder, manifest, device_file, modalities=modalities,
                              autocast_dtype="bfloat16", **options)
            got = read_features(device_file)
            recorded = read_attrs(device_file)["autocast"]
            check.deviate("autocast_not_recorded", float(recorded != "bfloat16"), 0)
            check.deviate("arrays_missing", len(set(expected) - set(got)), 0)
            _compare_features(check, got, expected, 1e-2)
            check.comparison = f"features.extract cuda bf16 autocast vs cpu fp32, {len(expected)} arrays"
        else:
            device_encoder = cpu_encoder
            for modality in modalities:
                batch = manifest_batch(cpu_encoder, manifest, modality)
                direct = direct_call(cpu_encoder, loader, modality, batch).float().numpy()
                _compare_features(check, {f"pooled/{modality}": direct}, expected, 1e-6)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    bf16 = cpu_encoder.encode(modality, batch, layers=True, tokens_per_sample=w.layer_tokens,
                                              generator=torch.Generator().manual_seed(0))
                got = {f"pooled/{modality}": bf16.pooled.float().numpy()}
                for i, layer in enumerate(bf16.layers or []):
                    got[f"layers/{modality}/{i:02d}"] = layer.float().numpy()
                for i, (tokens, rows) in enumerate(bf16.tokens or []):
                    got[f"tokens/{modality}/{i:02d}"] = tokens.float().numpy()
                    got[f"token_rows/{modality}/{i:02d}"] = rows.numpy()
                _compare_features(check, got, expected, 1e-2, prefix="cpu_bf16_autocast/")
            check.comparison = ("features.extract (cpu fp32) vs the model's own call; Encoder.encode "
                                "(pooled, layers, tokens) under cpu bf16 autocast vs extract")
        _extraction_throughput(check, runner, w, device_encoder, workdir, timed_manifest, summary)
        check.seconds = time.perf_counter() - started
        checks.append(check)
        del cpu_encoder, device_encoder
    return checks


def _extraction_throughput(check: Check, runner: Runner, w: Widths, encoder, workdir: Path,
                           timed_manifest: Path | None, summary: dict | None) -> None:
    """Forward-only images/s under the autocast `extract` uses, with GFLOP/s; on CUDA also the
    end-to-end `extract` rate (decoding in loader workers) over a larger manifest."""
    from xsae.features import extract

    device = runner.device
    batch = torch.randn(w.timed_batch, 3, 224, 224, generator=torch.Generator().manual_seed(13)).to(device)
    flops = image_flops(encoder, device)
    with autocast_context(device, "bf16" if runner.cuda else "none"):
        encoder.encode("image", batch[:2])
        _, seconds = runner.timed(lambda: encoder.encode("image", batch), repeats=2)
    rate = w.timed_batch / seconds
    text, numbers = runner.flops_text(flops * w.timed_batch, seconds, "bf16" if runner.cuda else "fp32")
    check.throughput = {"forward_images_per_s": rate, "gflop_per_image": flops / 1e9, **numbers}
    check.throughput_text = f"{rate:,.1f} images/s forward ({flops / 1e9:.3g} GFLOP/image), {text}"
    if timed_manifest is not None:
        workers = min(8, max(1, (os.cpu_count() or 2) // 2))
        summary = extract(encoder, timed_manifest, workdir / f"timed_{encoder.spec.name}.h5",
                          modalities=["image"], batch_size=w.timed_batch, workers=workers, progress=False,
                          autocast_dtype="bfloat16")
    if summary:
        end_to_end = summary["modalities"]["image"]["samples_per_s"]
        check.throughput["extract_images_per_s"] = end_to_end
        check.throughput_text += f"; extract end to end {end_to_end:,.0f} images/s"


# ---- driver -----------------------------------------------------------------------------------------

CUDA_ONLY = {
    "sae_train": "CUDA kernels of the step (fused Adam, embedding_bag, topk, index_add_), resuming and "
                 "loading on the device, against the CPU; compared CPU fp32 with itself (bitwise) and "
                 "CPU bf16 autocast with CPU fp32 instead",
    "retrieval": "scoring on the GPU against the CPU; compared the CPU dense-matmul path with the "
                 "sparse CSR path and a NumPy reference instead",
    "correlation": "CUDA index_add_ (atomic float64 sums in any order) against the CPU; compared the "
                   "sparse path with the dense float64 path instead",
    "mamba": "selective scan and network on CUDA against the CPU; compared the scan with a float64 "
             "closed form and CPU bf16 autocast with CPU fp32 instead",
    "extract": "features.extract under bf16 autocast (it applies autocast only on CUDA) against CPU "
               "fp32; compared extract with a direct model call and CPU bf16 autocast instead",
    "peak": "throughput against the device's peak (no GPU: rates are CPU rates)",
}


def checks_to_run(runner: Runner, w: Widths,
                  workdir: Path) -> Iterator[tuple[str, Callable[[], list[Check]]]]:
    yield "sae_train/global", lambda: check_sae(runner, w, "global")
    yield "sae_train/local", lambda: check_sae(runner, w, "local")
    yield "sae_train/resume", lambda: check_resume(runner, w)
    yield "sae_train/load_encode", lambda: check_load_encode(runner, w)
    yield "retrieval", lambda: check_retrieval(runner, w)
    yield "correlation", lambda: check_correlation(runner, w)
    yield "mamba", lambda: check_mamba(runner, w)
    yield "extract", lambda: check_extraction(runner, w, workdir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="reduced widths (runs on a CPU in under a minute); paper widths need CUDA")
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is steadier on a shared CPU")
    parser.add_argument("--only", default=None,
                        help="comma-separated groups: sae_train, retrieval, correlation, mamba, extract")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"--device {device}: only cuda and cpu are checked", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.small:
        print("gpu_check: paper widths run only on a GPU; this machine has no CUDA device (or --device "
              "cpu was given). Run with --small to check every path at reduced widths on the CPU.",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # Random initialisation is the point here: the loaders' "no pretrained weights" warnings are noise.
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    runner = Runner(device)
    w = SMALL if args.small else PAPER
    peaks = ", ".join(f"{k} {v:g}" for k, v in runner.peaks.items()) or "unknown"
    print(f"gpu_check: {w.label} on {device} ({runner.device_name}); torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads; peak TFLOP/s: {peaks}")
    if runner.cuda:
        print(f"  TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
              f"cuDNN {torch.backends.cudnn.allow_tf32}")
    only = set(args.only.split(",")) if args.only else None
    results: list[Check] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for group, run in checks_to_run(runner, w, Path(tmp)):
            if only and group.split("/")[0] not in only:
                continue
            try:
                group_checks = run()
            except Exception as exc:  # one broken path must not hide the others
                traceback.print_exc()
                group_checks = [Check(group, status="FAIL", reason=f"{type(exc).__name__}: {exc}")]
            for check in group_checks:
                check.finish()
                results.append(check)
                print(check.line(), flush=True)
            if runner.cuda:
                torch.cuda.empty_cache()
    skips = [] if runner.cuda else [skipped(f"{group}:cuda", f"CUDA-only ({reason})")
                                    for group, reason in CUDA_ONLY.items()
                                    if not only or group in only or group == "peak"]
    if skips:
        print("Skipped, CUDA-only (no CUDA device):")
        for skip in skips:
            print(skip.line())
    failed = [c.name for c in results if c.status == "FAIL"]
    seconds = time.perf_counter() - started
    print(f"gpu_check: {len(results) - len(failed)} OK, {len(failed)} FAIL, {len(skips)} skipped "
          f"(CUDA-only) in {seconds:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "device_name": runner.device_name, "small": args.small,
            "widths": asdict(w), "peaks_tflop_per_s": runner.peaks, "seconds": seconds,
            "checks": [c.to_json() for c in results], "skipped": [c.to_json() for c in skips],
            "ok": not failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
