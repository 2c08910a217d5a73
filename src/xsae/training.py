"""Training loop for `SparseAutoencoder`: in-memory data, resumable, no host sync inside a step.

Data stay where they are (device memory when there is a GPU) and batches are index
permutations of them, drawn from a seeded generator per epoch. Losses are accumulated on the
device and read back only every `log_every` steps; a checkpoint every `checkpoint_every` steps
holds everything needed to continue to the bit-identical result.

Beyond the TopK/AuxK/cross-reconstruction objective of Gao et al. and SPARC, the trainer covers the
recipes of the heterogeneity paper: reconstruction as MSE or fraction of variance unexplained,
auxiliary alignment losses on the paired codes of two streams (group-sparse, Iso-Energy), AdamW
with weight decay, gradient-norm clipping and a cosine schedule with linear warmup. The learning
rate is a pure function of the step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import pickle
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from xsae.errors import DataError
from xsae.io import atomic_path
from xsae.metrics.reconstruction import nmse_per_sample
from xsae.progress import progress as progress_bar
from xsae.sae import Codes, SparseAutoencoder, decode_sparse_many

log = logging.getLogger(__name__)

RECON_LOSSES = ("nmse", "mse", "fvu")
DECODER_NORMS = ("every_step", "at_init")
AUXK_FORMS = ("authors", "residual")
ALIGNMENT_KINDS = ("none", "iso_energy", "iso_energy_cosine", "group_sparse")
#: λ when no weight is given: the centres of the heterogeneity paper's synthetic λ sweep (Figure 6),
#: each "the default value in the original paper"; its CC-3M runs use iso_energy 1e-4.
DEFAULT_ALIGNMENT_WEIGHT = {"none": 0.0, "iso_energy": 0.03, "iso_energy_cosine": 0.03,
                            "group_sparse": 0.05}


def _check_number(name: str, value, *, minimum: float = 0.0, inclusive: bool = True) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (
        value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class AlignmentLoss:
    """Auxiliary alignment loss on the paired codes of two streams, with λ = weight × multiplier.

    The heterogeneity paper states λ as a multiplier of each method's default weight; `weight`
    None takes that default (`DEFAULT_ALIGNMENT_WEIGHT`).
    """

    kind: str = "none"
    weight: float | None = None
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ALIGNMENT_KINDS:
            raise ValueError(f"alignment_loss.kind must be one of {ALIGNMENT_KINDS}, got {self.kind!r}")
        if self.weight is None:
            object.__setattr__(self, "weight", DEFAULT_ALIGNMENT_WEIGHT[self.kind])
        _check_number("alignment_loss.weight", self.weight)
        _check_number("alignment_loss.multiplier", self.multiplier)

    @property
    def coefficient(self) -> float:
        """The effective λ (0 when the kind is none)."""
        return 0.0 if self.kind == "none" else float(self.weight) * float(self.multiplier)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    lr: float
    auxk_k: int = 64
    auxk_coef: float = 1 / 32
    #: "authors": the AuxK decode predicts x − x̂ + b_pre through the stream's decoder with its
    #: pre-bias, normalised by that target, and the term stays (≈ 1, with a gradient to b_pre) when
    #: no latent is dead — the SPARC reference's and OpenAI's code, which produced the published
    #: numbers. "residual": it predicts x − x̂ without the bias and is 0 when no latent is dead
    #: (Gao et al.'s text).
    auxk_form: str = "authors"
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
    #: Reconstruction term per stream: "nmse" per-sample normalised MSE (Gao et al.; SPARC), "mse"
    #: the batch mean of ‖x − x̂‖² (heterogeneity paper Eq. 7), "fvu" the batch's fraction of
    #: variance unexplained Σ‖x − x̂‖² / Σ‖x − x̄‖² (the heterogeneity reference code).
    recon_loss: str = "nmse"
    alignment_loss: AlignmentLoss = AlignmentLoss()
    #: "adam" (no weight decay) or "adamw" (decoupled weight decay, heterogeneity paper D.4).
    optimizer: str = "adam"
    weight_decay: float = 0.0
    #: Largest gradient norm (None: no clipping), measured over all parameters ("all") or over
    #: each stream's own parameter set ("stream"; what separately trained SAEs would each do).
    grad_clip: float | None = None
    grad_clip_scope: str = "all"
    #: "constant" or "cosine" (decaying to zero at the end of training), after a linear warmup over
    #: this fraction of the steps.
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    #: "every_step": decoder rows renormalised to unit norm after each step, their gradient's
    #: radial part removed before it (Gao et al.; SPARC). "at_init": normalised once when built,
    #: free afterwards (the sharedness authors' SAEs).
    decoder_norm: str = "every_step"
    log_every: int = 10
    checkpoint_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.alignment_loss, dict):
            object.__setattr__(self, "alignment_loss", AlignmentLoss(**self.alignment_loss))
        choices = {"loss_reduction": ("mean", "sum"), "sampler": ("permutation", "contiguous_blocks"),
                   "autocast": ("none", "bf16"), "recon_loss": RECON_LOSSES,
                   "optimizer": ("adam", "adamw"), "grad_clip_scope": ("all", "stream"),
                   "lr_schedule": ("constant", "cosine"), "decoder_norm": DECODER_NORMS,
                   "auxk_form": AUXK_FORMS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        _check_number("lr", self.lr, inclusive=False)
        _check_number("weight_decay", self.weight_decay)
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise ValueError(f"weight_decay={self.weight_decay} needs optimizer 'adamw' (decoupled decay); "
                             "Adam's coupled L2 penalty is not what the papers use")
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, inclusive=False)
        if not (isinstance(self.warmup_fraction, int | float) and 0 <= self.warmup_fraction < 1):
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (logging cadence may differ)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("log_every", "checkpoint_every")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def learning_rate(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning rate of optimiser step `step` (0-based) of `total_steps`.

    Linear warmup from 0 over the first ⌈warmup_fraction · total_steps⌉ steps (lr · step / W), then
    constant, or a cosine decay lr · ½(1 + cos(π (step − W) / (total_steps − W))) that would reach
    0 at step `total_steps` (the convention of the common `get_cosine_schedule_with_warmup`).
    Host arithmetic only: no device sync, and a resumed run recomputes it from the step.
    """
    warmup = math.ceil(round(config.warmup_fraction * total_steps, 6))  # 0.07 · 100 is 7, not 8
    if step < warmup:
        return config.lr * step / warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _reduce(terms: Sequence[torch.Tensor], how: str) -> torch.Tensor:
    stacked = torch.stack(list(terms))
    return stacked.sum() if how == "sum" else stacked.mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, how: str) -> torch.Tensor:
    """One stream's reconstruction term over a batch `[B, d]` -> scalar.

    nmse: mean_b of mean_d (x̂ − x)² / mean_d x²; mse: mean_b ‖x̂_b − x_b‖² (Eq. 7 of the
    heterogeneity paper: squared L2 error, not divided by d); fvu: Σ_b ‖x̂_b − x_b‖² / Σ_b ‖x_b − x̄‖²
    with x̄ the batch mean (needs at least two distinct rows).
    """
    if how == "nmse":
        return nmse_per_sample(reconstruction, target).mean()
    squared_error = (reconstruction - target).pow(2).sum(dim=1)
    if how == "mse":
        return squared_error.mean()
    if how == "fvu":
        variance = (target - target.mean(dim=0)).pow(2).sum()
        return squared_error.sum() / variance.clamp_min(1e-12)
    raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {how!r}")


# ---- alignment losses on paired sparse codes -------------------------------------------------
def _accumulating(values: torch.Tensor) -> torch.Tensor:
    """float32 at least: bf16 codes under autocast are summed in float32, float64 stays float64."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _safe_sqrt(squares: torch.Tensor) -> torch.Tensor:
    """√x with gradient 0 (a subgradient) where x = 0, instead of the NaN of 0 · ∞."""
    positive = squares > 0
    return torch.where(positive, squares.clamp_min(torch.finfo(squares.dtype).tiny).sqrt(),
                       torch.zeros_like(squares))


def paired_values(a: Codes, b: Codes, *, skip_zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """b's activation at each of a's latents `[B, k_a]`, and which of b's latents a also holds
    `[B, k_b]` (bool).

    A `[B, k_a, k_b]` comparison of the index sets: O(B·k²) work instead of the O(B·L) of dense
    codes (k ≪ L). Repeated indices in a row are allowed when all but one carry the value 0
    (BatchTopK's padding): sums over them are then exact. `skip_zeros` treats zero activations as
    absent, so a padding slot never pairs with a real activation of latent 0.
    """
    same = a.indices.unsqueeze(2) == b.indices.unsqueeze(1)
    if skip_zeros:
        same = same & (a.values.detach().unsqueeze(2) != 0) & (b.values.detach().unsqueeze(1) != 0)
    b_at_a = (same * b.values.unsqueeze(1)).sum(dim=2)
    return b_at_a, same.any(dim=1)


def group_sparse_penalty(a: Codes, b: Codes) -> torch.Tensor:
    """`[B]` L2,1 norm of the paired codes, Σ_j √(a_j² + b_j²) (Kaushik et al.; heterogeneity paper
    Eq. 10): latents active in both streams count once with their joint norm, the others with
    their absolute activation. Gradients equal those of the dense formula (0 where both are 0)."""
    a_values, b_values = _accumulating(a.values), _accumulating(b.values)
    b_at_a, b_in_a = paired_values(Codes(a_values, a.indices), Codes(b_values, b.indices), skip_zeros=True)
    joint = _safe_sqrt(a_values.pow(2) + b_at_a.pow(2)).sum(dim=1)
    return joint + (b_values.abs() * ~b_in_a).sum(dim=1)


def iso_energy_penalty(a: Codes, b: Codes) -> torch.Tensor:
    """`[B]` −⟨z_a, z_b⟩, the alignment term of heterogeneity paper Eq. 11 (after DHIMOÏLA et al.):
    the loss rewards energy that the two streams put on the same latents.

    The reference code instead uses minus the cosine of the codes after zeroing both streams' top
    latent; that form is `iso_energy_cosine_penalty`. This one follows the paper's equation, so its
    scale grows with the activations (the default λ of 0.03 was set for the cosine form).
    """
    a_values = _accumulating(a.values)
    b_at_a, _ = paired_values(Codes(a_values, a.indices), Codes(_accumulating(b.values), b.indices))
    return -(a_values * b_at_a).sum(dim=1)


def iso_energy_cosine_penalty(a: Codes, b: Codes, eps: float = 1e-8) -> torch.Tensor:
    """`[B]` −cos(z_a', z_b'), where z' zeroes, in both codes, the latent with the largest
    activation in a and the one with the largest in b (the heterogeneity reference code's
    Iso-Energy term); norms are clamped at `eps` as `torch.nn.functional.cosine_similarity` does."""
    top_a = a.indices.gather(1, a.values.detach().argmax(dim=1, keepdim=True))
    top_b = b.indices.gather(1, b.values.detach().argmax(dim=1, keepdim=True))

    def without_tops(codes: Codes) -> Codes:
        keep = (codes.indices != top_a) & (codes.indices != top_b)
        return Codes(_accumulating(codes.values) * keep, codes.indices)

    a_kept, b_kept = without_tops(a), without_tops(b)
    dot = -iso_energy_penalty(a_kept, b_kept)
    norm_a = _safe_sqrt(a_kept.values.pow(2).sum(dim=1)).clamp_min(eps)
    norm_b = _safe_sqrt(b_kept.values.pow(2).sum(dim=1)).clamp_min(eps)
    return -dot / (norm_a * norm_b)


ALIGNMENT_PENALTIES = {"iso_energy": iso_energy_penalty, "iso_energy_cosine": iso_energy_cosine_penalty,
                       "group_sparse": group_sparse_penalty}


def alignment_penalty(a: Codes, b: Codes, kind: str) -> torch.Tensor:
    """`[B]` per-pair alignment term of `kind` (see `ALIGNMENT_KINDS`, except none)."""
    if kind not in ALIGNMENT_PENALTIES:
        raise ValueError(f"alignment kind must be one of {tuple(ALIGNMENT_PENALTIES)}, got {kind!r}")
    return ALIGNMENT_PENALTIES[kind](a, b)


def _decode_all(model: SparseAutoencoder, code_sets: Sequence[Sequence[Codes]]) -> list[list[torch.Tensor]]:
    """`code_sets[t]` decoded by stream t's decoder (no pre-bias), one `decode_sparse_many` call per
    distinct decoder: streams that share weights share one gradient buffer."""
    out: list[list[torch.Tensor]] = [[] for _ in code_sets]
    for streams, _ in model.parameter_groups():
        flat = [c for t in streams for c in code_sets[t]]
        decoded = iter(decode_sparse_many(model.dec_weight[streams[0]], flat))
        for t in streams:
            out[t] = [next(decoded) for _ in code_sets[t]]
    return out


def compute_losses(model: SparseAutoencoder, batch: Sequence[torch.Tensor], config: TrainingConfig, *,
                   aux_streams: Collection[int] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
    """Total loss, its components (device tensors, one value per stream or pair) and the codes.

    Per stream, the TopK and AuxK latents are differentiated in one `logits_at` call, and every
    decode through a decoder (self, cross, AuxK; all streams' with shared weights) is one
    `decode_sparse_many` call: one gradient buffer per weight matrix. With an alignment loss the
    components hold its unweighted batch mean as "alignment".

    Without dead latents a stream's AuxK codes are all 0 (`auxk_term` says what the term is then);
    by default they are selected and decoded anyway, which needs no host sync. `aux_streams`, when
    given, lists the streams that may have dead latents (the trainer knows from a host-side bound,
    `dead_latent_bounds`); the others' AuxK selection and decodes are skipped, with the same loss
    and gradients.
    """
    n = model.n_streams
    use_aux = config.auxk_k > 0 and config.auxk_coef > 0
    use_cross = config.cross_weight > 0 and n > 1
    with torch.no_grad():
        logits = [model.logits(s, x) for s, x in enumerate(batch)]
    indices, valid = model.select_indices(logits)
    with_aux = [s for s in range(n) if use_aux and (aux_streams is None or s in aux_streams)]
    codes, aux_codes, any_dead = [], {}, {}
    for s, x in enumerate(batch):
        k = indices[s].shape[1]
        if s in with_aux:
            aux_idx, is_dead, dead = model.auxk_indices(s, logits[s], config.auxk_k, config.dead_steps)
            h = model.logits_at(s, x, torch.cat([indices[s], aux_idx], dim=1), logits[s])
            aux_codes[s] = Codes(F.relu(h[:, k:]) * is_dead, aux_idx)
            any_dead[s] = dead
        else:
            h = model.logits_at(s, x, indices[s], logits[s])
        values = F.relu(h[:, :k])
        codes.append(Codes(values if valid[s] is None else values * valid[s], indices[s]))

    how = config.recon_loss
    sources = [list(range(n)) if use_cross else [t] for t in range(n)]
    decoded = _decode_all(model, [[codes[s] for s in sources[t]] + ([aux_codes[t]] if t in aux_codes else [])
                                  for t in range(n)])
    self_terms, aux_terms, cross, monitor = [], [], {}, []
    for t, x in enumerate(batch):
        decodes = decoded[t]
        recons = {s: decodes[i] + model.pre_bias[t] for i, s in enumerate(sources[t])}
        self_terms.append(reconstruction_loss(recons[t], x, how))
        if how != "nmse":  # NMSE is always logged, so runs with different losses stay comparable
            with torch.no_grad():
                monitor.append(nmse_per_sample(recons[t], x).mean())
        cross.update({(s, t): reconstruction_loss(r, x, how) for s, r in recons.items() if s != t})
        if use_aux:
            aux_terms.append(auxk_term(decodes[-1] if t in aux_codes else None, x, recons[t],
                                       model.pre_bias[t], any_dead.get(t), config))
    total = _reduce(self_terms, config.loss_reduction)
    components = {"self_nmse": torch.stack(monitor or self_terms)}
    if how != "nmse":
        components[f"self_{how}"] = torch.stack(self_terms)
    components["auxk"] = torch.stack(aux_terms) if use_aux else torch.zeros(n, device=total.device)
    if use_aux:
        total = total + config.auxk_coef * _reduce(aux_terms, config.loss_reduction)
    if use_cross:
        cross_terms = [cross[(s, t)] for s in range(n) for t in range(n) if s != t]
        total = total + config.cross_weight * _reduce(cross_terms, config.loss_reduction)
        components[f"cross_{how}"] = torch.stack(cross_terms)
    alignment = config.alignment_loss
    if alignment.kind != "none":
        _check_alignment_streams(model, alignment.kind)
        term = alignment_penalty(codes[0], codes[1], alignment.kind).mean()
        total = total + alignment.coefficient * term
        components["alignment"] = term.detach().reshape(1)
    return total, components, codes


def auxk_term(decoded: torch.Tensor | None, x: torch.Tensor, reconstruction: torch.Tensor,
              pre_bias: torch.Tensor, any_dead: torch.Tensor | None, config: TrainingConfig) -> torch.Tensor:
    """One stream's AuxK loss from its dead latents' decode `W_dec z_aux` (None: no latent can be
    dead, so z_aux = 0 and nothing was decoded), in `config.auxk_form`.

    "residual" is 0 without dead latents (`any_dead` multiplies it: no host sync to find out).
    "authors" predicts the residual plus the pre-bias, W_dec z_aux + b_pre, against the detached
    x − x̂ + b_pre, so the loss is normalised by ‖x − x̂ + b_pre‖² and b_pre gets a gradient even
    when no latent is dead.
    """
    residual = x - reconstruction.detach()
    if config.auxk_form == "residual":
        if decoded is None:
            return residual.new_zeros(())
        return reconstruction_loss(decoded, residual, config.recon_loss) * any_dead
    prediction = pre_bias.expand_as(x) if decoded is None else decoded + pre_bias
    return reconstruction_loss(prediction, residual + pre_bias.detach(), config.recon_loss)


def _check_alignment_streams(model: SparseAutoencoder, kind: str) -> None:
    if model.n_streams != 2:
        raise ValueError(f"alignment_loss {kind!r} pairs the codes of two streams; the model has "
                         f"{model.n_streams} ({', '.join(model.config.stream_names)})")


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
    for streams, _ in model.parameter_groups():
        # With shared weights a latent is re-initialised only when it is dead in every stream.
        dead = torch.stack([model.steps_since_active(s) > dead_steps for s in streams]).all(dim=0)
        dead = dead.unsqueeze(1)
        weight = model.enc_weight[streams[0]]
        noise = torch.randn(weight.shape, generator=generator).mul_(std).to(weight.device)
        weight.copy_(torch.where(dead, noise, weight))
        model.lat_bias[streams[0]].masked_fill_(dead.squeeze(1), 0.0)


#: Optimizer methods torch wraps to keep `torch.compile` out; the first call of each imports
#: torch._dynamo, ≈4 s of every training job's start-up on a CPU.
_DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _skip_dynamo_import() -> None:
    """Nothing here runs under `torch.compile`, so the wrappers' lazy `torch._dynamo.disable` is a
    no-op: give each wrapped method its disabled form up front (the plain function) instead."""
    if "torch._dynamo" in sys.modules:
        return
    for name in _DYNAMO_WRAPPED:
        method = getattr(torch.optim.Optimizer, name, None)
        wrapped = getattr(method, "__wrapped__", None)
        code = getattr(method, "__code__", None)
        if (wrapped is not None and code is not None and not hasattr(wrapped, "__dynamo_disable")
                and code.co_qualname == "_disable_dynamo.<locals>.inner"):
            wrapped.__dynamo_disable = wrapped


def step_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` without the wrappers that run step hooks (none are registered here), label
    it for the profiler and switch grad mode for differentiable optimizers; the last imports
    torch._dynamo on its first call, ≈4 s of every training job's start-up on a CPU. The update is
    the same arithmetic, bit for bit."""
    with torch.no_grad():
        inspect.unwrap(type(optimizer).step)(optimizer)


def make_optimizer(model: SparseAutoencoder, lr: float, *, optimizer: str = "adam",
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or AdamW with decoupled weight decay on every parameter (β = 0.9, 0.999; ε = 1e-8).

    The heterogeneity paper applies AdamW's decay to the whole SAE and names no exclusion, so
    biases are decayed too. On the decoder the decay is a uniform shrink of each row that the
    renormalisation after the step undoes, leaving only its (1 − lr·λ) interplay with that step's
    update.
    """
    _skip_dynamo_import()
    device = next(model.parameters()).device
    kwargs = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=weight_decay, **kwargs)
    if optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
    if weight_decay:
        raise ValueError(f"weight_decay={weight_decay} needs optimizer 'adamw'")
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def clip_gradients(model: SparseAutoencoder, max_norm: float, scope: str = "all") -> torch.Tensor:
    """Scale gradients so that their L2 norm is at most `max_norm`; return the norms before
    clipping `[G]` (device tensor, no host sync).

    scope "all" measures one norm over every parameter (G = 1); "stream" one per parameter set
    (`model.parameter_groups()`), as separately trained modality-specific SAEs would each clip.
    """
    if scope == "all":
        groups = [list(model.parameters())]
    elif scope == "stream":
        groups = [params for _, params in model.parameter_groups()]
    else:
        raise ValueError(f"grad_clip_scope must be 'all' or 'stream', got {scope!r}")
    return torch.stack([torch.nn.utils.clip_grad_norm_(params, max_norm) for params in groups])


def dead_latent_bounds(model: SparseAutoencoder) -> list[int]:
    """Per stream, the largest steps-since-active count (a host sync).

    Counters grow by one per step at most, so this plus the steps taken since bounds them until
    the next read: while a stream's bound is at most `dead_steps` it has no dead latent, and the
    trainer skips its AuxK work without reading the device inside a step.
    """
    return [int(model.steps_since_active(s).max()) for s in range(model.n_streams)]


def take_step(model: SparseAutoencoder, optimizer: torch.optim.Optimizer, batch: Sequence[torch.Tensor],
              config: TrainingConfig, *, step: int, lr: float, dead_bounds: Sequence[int],
              autocast: contextlib.AbstractContextManager | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on one batch, the same wherever the batch comes from (a feature file
    or an encoder's live tokens): losses, backward, decoder-gradient projection, clipping, the
    optimizer at `lr`, decoder renormalisation (when configured), dead-latent counters and the scheduled
    re-initialisation. `dead_bounds` are host-side upper bounds of each stream's steps since a
    latent fired (`dead_latent_bounds`); they only decide whether AuxK work is needed."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    aux_streams = [s for s, bound in enumerate(dead_bounds) if bound > config.dead_steps]
    with autocast or contextlib.nullcontext():
        loss, components, codes = compute_losses(model, batch, config, aux_streams=aux_streams)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    renormalise = config.decoder_norm == "every_step"
    if renormalise:
        model.project_decoder_grads()
    if config.grad_clip is not None:  # after the projection: it bounds the step actually taken
        components["grad_norm"] = clip_gradients(model, config.grad_clip, config.grad_clip_scope)
    step_optimizer(optimizer)
    if renormalise:
        model.normalize_decoder()
    model.update_dead_counters(codes, config.dead_threshold)
    if config.reinit_every and step > 0 and (step + 1) % config.reinit_every == 0:
        # Seeded by the step, so that a resumed run draws the same noise.
        noise = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        reinitialize_dead(model, config.dead_steps, config.reinit_std, noise)
    return loss, components


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
    if config.alignment_loss.kind != "none":
        _check_alignment_streams(model, config.alignment_loss.kind)
    optimizer = make_optimizer(model, config.lr, optimizer=config.optimizer,
                               weight_decay=config.weight_decay)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    steps_per_epoch = math.ceil(n_rows / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step, rows, permutation = 0, [], None
    accumulated: dict[str, torch.Tensor] = {}
    interval_steps = 0
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, device)
        if state["fingerprint"] == config.fingerprint():
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            # map_location moved it to the device; a generator's state is always a CPU byte tensor
            generator.set_state(state["generator"].cpu())
            step, rows, permutation = state["step"], state["rows"], state["permutation"]
            accumulated, interval_steps = state["accumulated"], state["interval_steps"]
            log.info("resumed from %s at step %d/%d", checkpoint_path, step, total_steps)
        else:
            log.warning("ignoring %s: it belongs to another training config", checkpoint_path)

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.autocast == "bf16"
                else contextlib.nullcontext())
    dead_bounds = dead_latent_bounds(model)
    interval_start = time.perf_counter()
    bar = progress_bar(total=total_steps, initial=step, disable=not progress, unit="step",
                       desc="train SAE")
    model.train()
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0 or permutation is None:
            permutation = epoch_order(n_rows, config.batch_size, config.sampler, generator)
        index = batch_rows(permutation, position, config.batch_size, n_rows, config.sampler)
        index = index.to(device, non_blocking=True)
        batch = [x.index_select(0, index) for x in streams]

        lr = learning_rate(step, total_steps, config)
        loss, components = take_step(model, optimizer, batch, config, step=step, lr=lr,
                                     dead_bounds=dead_bounds, autocast=autocast)
        dead_bounds = [bound + 1 for bound in dead_bounds]

        for key, value in (("loss", loss.detach().reshape(1)), *components.items()):
            accumulated[key] = accumulated.get(key, 0) + value.detach()
        step += 1
        interval_steps += 1
        bar.update(1)

        if step % config.log_every == 0 or step == total_steps:
            row = log_row(model, accumulated, interval_steps, step, epoch, names,
                           config.dead_steps)
            dead_bounds = dead_latent_bounds(model)  # the host reads the device here anyway
            row["lr"] = lr
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


def log_row(model: SparseAutoencoder, accumulated: dict[str, torch.Tensor], n: int, step: int,
             epoch: int, names: Sequence[str], dead_steps: int) -> dict:
    means = {key: (value / n).tolist() for key, value in accumulated.items()}
    row: dict = {"step": step, "epoch": epoch, "loss": means["loss"][0]}
    for key, values in means.items():
        if key.startswith("self_") or key == "auxk":
            row.update({f"{key}/{name}": v for name, v in zip(names, values, strict=True)})
        elif key.startswith("cross_"):
            row[f"{key}/mean"] = sum(values) / len(values)
    if "alignment" in means:
        row["alignment"] = means["alignment"][0]
    if "grad_norm" in means:
        if len(means["grad_norm"]) == 1:
            row["grad_norm"] = means["grad_norm"][0]
        else:
            for (streams, _), value in zip(model.parameter_groups(), means["grad_norm"], strict=True):
                row["grad_norm/" + "+".join(names[s] for s in streams)] = value
    for s, name in enumerate(names):
        row[f"dead_latents/{name}"] = int((model.steps_since_active(s) > dead_steps).sum())
    if not math.isfinite(row["loss"]):
        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
        raise FloatingPointError(f"non-finite loss at step {step}: {', '.join(bad)}")
    return row


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """Tensors and plain containers only (`weights_only`): a checkpoint planted in a shared results
    folder cannot run code when it is read."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise DataError(f"{path}: not a training checkpoint this trainer wrote ({str(exc).splitlines()[0]}); "
                        "delete it to train from the start") from exc


def _save_checkpoint(path: Path, model, optimizer, generator, config: TrainingConfig,
                     **progress) -> None:
    """Everything the loop needs to continue bit-identically, including a half-done log interval."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "fingerprint": config.fingerprint(),
             "config": asdict(config), **progress}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
