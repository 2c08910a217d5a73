"""Training loop for `SparseAutoencoder`: in-memory data, resumable, no host sync inside a step.

Data stay where they are (device memory when there is a GPU) and batches are index
permutations of them, drawn from a seeded generator per epoch. Losses are accumulated on the
device and read back only every `log_every` steps; a checkpoint every `checkpoint_every` steps
holds everything needed to continue to the bit-identical result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xsae.errors import DataError
from xsae.io import atomic_path
from xsae.metrics.reconstruction import nmse_per_sample
from xsae.sae import Codes, SparseAutoencoder, decode_sparse_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    lr: float
    auxk_k: int = 64
    auxk_coef: float = 1 / 32
    dead_steps: int = 1000
    dead_threshold: float = 1e-3
    cross_weight: float = 0.0
    #: "mean" averages the per-stream terms (the SPARC reference code); "sum" adds them (its Eq. 6).
    loss_reduction: str = "mean"
    #: "permutation": a fresh row permutation per epoch; "contiguous_blocks": fixed blocks of
    #: consecutive rows in a fresh order per epoch (the SPARC reference's sampler, for comparison).
    sampler: str = "permutation"
    #: Every this many steps, latents dead by the AuxK criterion get a fresh encoder row
    #: ~ N(0, 0.01²) and a zero latent bias (SPARC). 0 disables it.
    reinit_every: int = 0
    reinit_std: float = 0.01
    #: "bf16" runs the forward pass under bfloat16 autocast (weights and optimizer stay float32).
    autocast: str = "none"
    log_every: int = 10
    checkpoint_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"loss_reduction": ("mean", "sum"), "sampler": ("permutation", "contiguous_blocks"),
                   "autocast": ("none", "bf16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (logging cadence may differ)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("log_every", "checkpoint_every")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _reduce(terms: Sequence[torch.Tensor], how: str) -> torch.Tensor:
    stacked = torch.stack(list(terms))
    return stacked.sum() if how == "sum" else stacked.mean()


def compute_losses(model: SparseAutoencoder, batch: Sequence[torch.Tensor],
                   config: TrainingConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
    """Total loss, its components (device tensors, one value per stream or pair) and the codes.

    Per stream, the TopK and AuxK latents are differentiated in one `logits_at` call, and every
    decode into the stream (self, cross, AuxK) is one `decode_sparse_many` call: one gradient
    buffer per weight matrix.
    """
    n = model.n_streams
    use_aux = config.auxk_k > 0 and config.auxk_coef > 0
    use_cross = config.cross_weight > 0 and n > 1
    with torch.no_grad():
        logits = [model.logits(s, x) for s, x in enumerate(batch)]
    indices, valid = model.select_indices(logits)
    codes, aux_codes, any_dead = [], [], []
    for s, x in enumerate(batch):
        k = indices[s].shape[1]
        if use_aux:
            aux_idx, is_dead, dead = model.auxk_indices(s, logits[s], config.auxk_k, config.dead_steps)
            h = model.logits_at(s, x, torch.cat([indices[s], aux_idx], dim=1), logits[s])
            aux_codes.append(Codes(F.relu(h[:, k:]) * is_dead, aux_idx))
            any_dead.append(dead)
        else:
            h = model.logits_at(s, x, indices[s], logits[s])
        values = F.relu(h[:, :k])
        codes.append(Codes(values if valid[s] is None else values * valid[s], indices[s]))

    self_terms, aux_terms, cross = [], [], {}
    for t, x in enumerate(batch):
        sources = list(range(n)) if use_cross else [t]
        decodes = decode_sparse_many(model.dec_weight[t],
                                     [codes[s] for s in sources] + (aux_codes[t:t + 1] if use_aux else []))
        recons = {s: decodes[i] + model.pre_bias[t] for i, s in enumerate(sources)}
        self_terms.append(nmse_per_sample(recons[t], x).mean())
        cross.update({(s, t): nmse_per_sample(r, x).mean() for s, r in recons.items() if s != t})
        if use_aux:  # no dead latents: no AuxK term, and no host sync to find out
            aux_terms.append(nmse_per_sample(decodes[-1], x - recons[t].detach()).mean() * any_dead[t])
    total = _reduce(self_terms, config.loss_reduction)
    components = {"self_nmse": torch.stack(self_terms)}
    components["auxk"] = torch.stack(aux_terms) if use_aux else torch.zeros(n, device=total.device)
    if use_aux:
        total = total + config.auxk_coef * _reduce(aux_terms, config.loss_reduction)
    if use_cross:
        cross_terms = [cross[(s, t)] for s in range(n) for t in range(n) if s != t]
        total = total + config.cross_weight * _reduce(cross_terms, config.loss_reduction)
        components["cross_nmse"] = torch.stack(cross_terms)
    return total, components, codes


def _check_streams(streams: Sequence[torch.Tensor], model: SparseAutoencoder) -> int:
    n = {x.shape[0] for x in streams}
    if len(n) != 1:
        raise DataError(f"streams have different numbers of rows: {sorted(n)}")
    (n_rows,) = n
    if n_rows == 0:
        raise DataError("no training rows")
    model._check_inputs([x[:1] for x in streams])
    return n_rows


def epoch_order(n_rows: int, batch_size: int, sampler: str,
                generator: torch.Generator) -> torch.Tensor:
    """One epoch's order (on the CPU): a row permutation, or a permutation of the blocks of
    `batch_size` consecutive rows for the contiguous-block sampler."""
    if sampler == "permutation":
        return torch.randperm(n_rows, generator=generator)
    return torch.randperm(math.ceil(n_rows / batch_size), generator=generator)


def batch_rows(order: torch.Tensor, position: int, batch_size: int, n_rows: int,
               sampler: str) -> torch.Tensor:
    """Row indices of batch `position` of an epoch (the short last block may come anywhere)."""
    if sampler == "permutation":
        return order[position * batch_size:(position + 1) * batch_size]
    start = int(order[position]) * batch_size
    return torch.arange(start, min(start + batch_size, n_rows))


@torch.no_grad()
def reinitialize_dead(model: SparseAutoencoder, dead_steps: int, std: float,
                      generator: torch.Generator) -> None:
    """Fresh encoder rows for dead latents, without a host sync (masked select)."""
    for s in range(model.n_streams):
        dead = (model.steps_since_active(s) > dead_steps).unsqueeze(1)
        weight = model.enc_weight[s]
        noise = torch.randn(weight.shape, generator=generator).mul_(std).to(weight.device)
        weight.copy_(torch.where(dead, noise, weight))
        model.lat_bias[s].masked_fill_(dead.squeeze(1), 0.0)


def make_optimizer(model: SparseAutoencoder, lr: float) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def train(model: SparseAutoencoder, streams: Sequence[torch.Tensor], config: TrainingConfig, *,
          checkpoint_path: str | Path | None = None, progress: bool = True,
          stop_after_steps: int | None = None) -> pd.DataFrame:
    """Train `model` in place on row-aligned `streams` (`[N, d_s]` each); return the loss log.

    With `checkpoint_path`, an existing checkpoint of the same config is resumed and a new one is
    written every `checkpoint_every` steps. `stop_after_steps` ends early (to test resuming).
    """
    n_rows = _check_streams(streams, model)
    device = streams[0].device
    names = model.config.stream_names
    optimizer = make_optimizer(model, config.lr)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    steps_per_epoch = math.ceil(n_rows / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step, rows, permutation = 0, [], None
    accumulated: dict[str, torch.Tensor] = {}
    interval_steps = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["fingerprint"] == config.fingerprint():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            step, rows, permutation = state["step"], state["rows"], state["permutation"]
            accumulated, interval_steps = state["accumulated"], state["interval_steps"]
            log.info("resumed from %s at step %d/%d", checkpoint_path, step, total_steps)
        else:
            log.warning("ignoring %s: it belongs to another training config", checkpoint_path)

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.autocast == "bf16"
                else contextlib.nullcontext())
    interval_start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step",
               desc="train SAE", dynamic_ncols=True)
    model.train()
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0 or permutation is None:
            permutation = epoch_order(n_rows, config.batch_size, config.sampler, generator)
        index = batch_rows(permutation, position, config.batch_size, n_rows, config.sampler)
        index = index.to(device, non_blocking=True)
        batch = [x.index_select(0, index) for x in streams]

        with autocast:
            loss, components, codes = compute_losses(model, batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.project_decoder_grads()
        optimizer.step()
        model.normalize_decoder()
        model.update_dead_counters(codes, config.dead_threshold)
        if config.reinit_every and step > 0 and (step + 1) % config.reinit_every == 0:
            # Seeded by the step, so that a resumed run draws the same noise.
            noise = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            reinitialize_dead(model, config.dead_steps, config.reinit_std, noise)

        for key, value in (("loss", loss.detach().reshape(1)), *components.items()):
            accumulated[key] = accumulated.get(key, 0) + value.detach()
        step += 1
        interval_steps += 1
        bar.update(1)

        if step % config.log_every == 0 or step == total_steps:
            row = _log_row(model, accumulated, interval_steps, step, epoch, names,
                           config.dead_steps)
            elapsed = time.perf_counter() - interval_start
            row["samples_per_s"] = interval_steps * config.batch_size / max(elapsed, 1e-9)
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{row['samples_per_s']:.0f}")
            accumulated, interval_steps, interval_start = {}, 0, time.perf_counter()
        if checkpoint_path and (step % config.checkpoint_every == 0) and step < total_steps:
            _save_checkpoint(checkpoint_path, model, optimizer, generator, config, step=step,
                             rows=rows, permutation=permutation, accumulated=accumulated,
                             interval_steps=interval_steps)
        if stop_after_steps is not None and step >= stop_after_steps:
            break
    bar.close()
    model.eval()
    return pd.DataFrame(rows)


def _log_row(model: SparseAutoencoder, accumulated: dict[str, torch.Tensor], n: int, step: int,
             epoch: int, names: Sequence[str], dead_steps: int) -> dict:
    means = {key: (value / n).tolist() for key, value in accumulated.items()}
    row: dict = {"step": step, "epoch": epoch, "loss": means["loss"][0]}
    for key in ("self_nmse", "auxk"):
        row.update({f"{key}/{name}": v for name, v in zip(names, means[key], strict=True)})
    if "cross_nmse" in means:
        row["cross_nmse/mean"] = sum(means["cross_nmse"]) / len(means["cross_nmse"])
    for s, name in enumerate(names):
        row[f"dead_latents/{name}"] = int((model.steps_since_active(s) > dead_steps).sum())
    if not math.isfinite(row["loss"]):
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        raise FloatingPointError(f"non-finite loss at step {step}: {', '.join(bad)}")
    return row


def _save_checkpoint(path: Path, model, optimizer, generator, config: TrainingConfig,
                     **progress) -> None:
    """Everything the loop needs to continue bit-identically, including a half-done log interval."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "fingerprint": config.fingerprint(), **progress}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
