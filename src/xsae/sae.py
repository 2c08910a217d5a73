"""TopK sparse autoencoders over one or several feature streams (Gao et al.; SPARC).

For every stream s with input x_s `[B, d_s]`:

    h_s  = W_enc,s (x_s − b_pre,s) + b_lat,s                      logits `[B, L]`
    z_s  = ReLU(h_s) at the k selected indices, 0 elsewhere        codes  `[B, L]` (kept sparse)
    x̂_s = W_dec,s z_s + b_pre,s                                  `[B, d_s]`

Global TopK selects one index set per sample from Σ_s h_s and shares it across streams; Local
TopK selects per stream. A single-stream SAE is the special case of one stream. Codes are kept
as (values `[B, k]`, indices `[B, k]`) and decoded by a gather of the k active decoder rows, never
as a dense `[B, L] @ [L, d]` product — except in training when k is a large fraction of L
(`dense_products_pay`): then the step's products run dense, which is the same arithmetic and
several times faster than grouping a few entries per latent (the default's small per-layer SAEs:
L = 32, k = 16, 50,000 tokens a step).

Decoder rows are unit-norm directions (`dec_weight[s]` is `[L, d_s]`, row j = latent j's direction),
kept so by renormalising after each step and projecting out the gradient component parallel to
each row (`project_decoder_grads`). Steps since each latent last fired live beside the weights as
buffers, so they are saved and restored with them; only the trainer advances them.

With `shared_weights` (the heterogeneity paper's shared SAE) every stream is encoded and decoded
by one set of parameters: `enc_weight[s]` is the same tensor for every s, the parameter count is
that of one SAE, and each stream still selects its own latents (Local TopK) and keeps its own
dead-latent counters. The paper's modality-specific SAEs are the default layout (one parameter
set per stream) with Local TopK, no cross-reconstruction and L = m / n_streams latents per
stream (`xsae.runs.sae_config_for_run` does that mapping).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from xsae.errors import DataError
from xsae.io import atomic_path

SAE_INITS = ("unit_tied", "kaiming_uniform")
#: A training step's sparse products cost, per selected entry, this many multiply-adds of a dense
#: row more than its width (the grouping sort and the scattered row reads), and a dense
#: multiply-add is this many times cheaper than a sparse one: the fit of `bench/bench_dense_crossover.py`
#: on a CPU (crossover at L / k ≈ 15 for d = 16, ≈ 4 for d = 256, ≈ 3 for d = 1,024).
SPARSE_ENTRY_OVERHEAD = 64
DENSE_SPEEDUP = 3


def dense_products_pay(n_latents: int, n_selected: int, width: int) -> bool:
    """Whether a training step's encoder and decoder products should run dense: L·d dense
    multiply-adds per row against k·(d + overhead) sparse ones. Either way the gradients are the
    same; the sharedness paper's (L = 8,192, k = 32) and SPARC's SAEs stay sparse."""
    return n_latents * width <= DENSE_SPEEDUP * n_selected * (width + SPARSE_ENTRY_OVERHEAD)


@dataclass(frozen=True)
class SAEConfig:
    input_dims: tuple[int, ...]
    n_latents: int
    k: int
    topk: str = "global"  # "global" | "local"
    stream_names: tuple[str, ...] = ()
    #: "topk": k latents per sample; "batchtopk": the B·k largest activations of the whole batch
    #: in training, a learned threshold at inference (Bussmann et al.).
    activation: str = "topk"
    #: One encoder, decoder, pre-bias and latent bias for all streams (equal input widths, Local TopK).
    shared_weights: bool = False
    #: "unit_tied": random unit directions for the decoder, the encoder its copy. "kaiming_uniform":
    #: encoder entries U(±√(6/n_latents)) (PyTorch's Kaiming-uniform of the [d, n_latents] W_enc, as
    #: the sharedness authors initialise it), decoder the same rows at unit norm.
    init: str = "unit_tied"

    def __post_init__(self) -> None:
        if self.topk not in ("global", "local"):
            raise ValueError(f"topk must be 'global' or 'local', got {self.topk!r}")
        if self.activation not in ("topk", "batchtopk"):
            raise ValueError(f"activation must be 'topk' or 'batchtopk', got {self.activation!r}")
        if self.init not in SAE_INITS:
            raise ValueError(f"init must be one of {SAE_INITS}, got {self.init!r}")
        if not 1 <= self.k <= self.n_latents:
            raise ValueError(f"k={self.k} must be in [1, n_latents={self.n_latents}]")
        if not self.stream_names:
            object.__setattr__(self, "stream_names",
                               tuple(f"stream{i}" for i in range(len(self.input_dims))))
        if len(self.stream_names) != len(self.input_dims):
            raise ValueError("stream_names and input_dims differ in length")
        if self.shared_weights and len(set(self.input_dims)) > 1:
            widths = ", ".join(f"{n}={d}" for n, d in zip(self.stream_names, self.input_dims, strict=True))
            raise ValueError(f"shared_weights needs streams of equal width, got input_dims ({widths})")
        if self.shared_weights and len(self.input_dims) > 1 and self.topk != "local":
            raise ValueError(f"shared_weights needs topk='local' (each stream selects its own latents), "
                             f"got topk={self.topk!r}")

    @property
    def parameter_slots(self) -> tuple[int, ...]:
        """Which parameter set each stream uses: all 0 with shared weights, else its own index."""
        return tuple(0 if self.shared_weights else s for s in range(len(self.input_dims)))


@dataclass
class Codes:
    """Sparse codes of one stream: `values[b, i]` is the activation of latent `indices[b, i]`."""

    values: torch.Tensor  # [B, k]
    indices: torch.Tensor  # [B, k] int64

    def dense(self, n_latents: int) -> torch.Tensor:
        """`[B, L]` codes (differentiable in the values); training materialises them only when
        L is a small multiple of k (`dense_products_pay`).

        Summed, not assigned, at repeated indices: BatchTopK pads rows with (index 0, value 0),
        which must not overwrite a real activation of latent 0.
        """
        out = self.values.new_zeros(self.values.shape[0], n_latents)
        return out.scatter_add(1, self.indices, self.values)

    @staticmethod
    def concatenate(parts: Sequence[Codes]) -> Codes:
        """The rows of several code chunks, in order, as one `Codes`."""
        return Codes(torch.cat([part.values for part in parts]), torch.cat([part.indices for part in parts]))


def decode_sparse(weight: torch.Tensor, codes: Codes) -> torch.Tensor:
    """Σ_i values[b, i] · weight[indices[b, i]]: `[B, d]` without a dense `[B, L]` intermediate."""
    return decode_sparse_many(weight, [codes])[0]


def decode_sparse_many(weight: torch.Tensor, codes: Sequence[Codes]) -> list[torch.Tensor]:
    """`decode_sparse` of several code sets through the same weight in one call.

    One call means one gradient buffer for `weight` in the backward pass instead of one per
    decode (self, cross and AuxK decodes into a stream share its decoder). Code sets may differ
    in k and batch size.
    """
    n_latents, width = weight.shape
    most_selected = max(c.indices.shape[1] for c in codes)
    if torch.is_grad_enabled() and dense_products_pay(n_latents, most_selected, width):
        coefficients = torch.cat([c.dense(n_latents) for c in codes]).to(weight.dtype)
        return list((coefficients @ weight).split([c.indices.shape[0] for c in codes]))
    if len(codes) == 1:
        flat_indices, flat_values = codes[0].indices.reshape(-1), codes[0].values.reshape(-1)
    else:
        flat_indices = torch.cat([c.indices.reshape(-1) for c in codes])
        flat_values = torch.cat([c.values.reshape(-1) for c in codes])
    bag_sizes = torch.cat([torch.full((c.indices.shape[0],), c.indices.shape[1], dtype=torch.long,
                                      device=flat_indices.device) for c in codes])
    out = _BagSums.apply(weight, flat_values.to(weight.dtype), flat_indices, bag_sizes)
    return list(out.split([c.indices.shape[0] for c in codes]))


def group_by_index(indices: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of 1-D `indices` grouped by value: a stable sort order and, per value in
    [0, n_rows), the position of its first entry in that order (no host sync, unlike `bincount`
    on a GPU)."""
    ordered, order = torch.sort(indices, stable=True)
    return order, torch.searchsorted(ordered, torch.arange(n_rows, device=indices.device))


def sum_by_index(indices: torch.Tensor, coefficients: torch.Tensor, bags: torch.Tensor,
                 vectors: torch.Tensor, n_rows: int) -> torch.Tensor:
    """`[n_rows, d]` with row j = Σ over entries e with indices[e] = j of coefficients[e] · vectors[bags[e]].

    The weight gradient of a sparse decode or of selected logits. Entries are grouped by index
    (`group_by_index`) and each group summed by `embedding_bag` over the rows of `vectors`: no
    `[n_entries, d]` intermediate and no zero-filled `[n_rows, d]` buffer to scatter into. The
    sums run in entry order within each row (deterministic); on CPU this is several times faster
    than `embedding_bag`'s own backward.
    """
    order, starts = group_by_index(indices, n_rows)
    return F.embedding_bag(bags[order], vectors.contiguous(), starts, mode="sum",
                           per_sample_weights=coefficients[order].to(vectors.dtype))


def embedding_bag_weight_grad(indices: torch.Tensor, coefficients: torch.Tensor, vectors: torch.Tensor,
                              n_rows: int) -> torch.Tensor:
    """`[n_rows, d]` with row j = Σ over (b, i) with indices[b, i] = j of coefficients[b, i] · vectors[b].

    The weight gradient of `embedding_bag` with bag b = row b of `indices`, without materialising
    the `[B, k, d]` outer products (see `sum_by_index`).
    """
    n_bags, k = indices.shape
    bags = torch.arange(n_bags, device=indices.device).repeat_interleave(k)
    return sum_by_index(indices.reshape(-1), coefficients.reshape(-1), bags, vectors, n_rows)


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend on its contents only: `safetensors` writes the
    metadata keys in a random order (a hash map), so the same weights hashed differently in
    provenance from run to run. The header is rewritten with them sorted (padded to 8 bytes, as
    the format does); tensor entries and data are as `safetensors` wrote them."""
    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + size:]


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata `SparseAutoencoder.save` wrote (sae_config and the caller's extras), decoded."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: json.loads(value) for key, value in handle.metadata().items()}
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise DataError(f"{path}: not a readable SAE weight file ({exc})") from exc


class _BagSums(torch.autograd.Function):
    """Per bag, Σ values[e] · weight[indices[e]] over its entries (`embedding_bag`, mode sum).

    Bags are consecutive runs of `bag_sizes` entries. The backward visits the entries grouped by
    weight row, once: the weight gradient by `sum_by_index`, and the values' gradient (one dot
    product per entry, `embedding_bag`'s own kernel for it) reading each weight row once instead
    of once per entry in random order, which halves its time on CPU.
    """

    @staticmethod
    def forward(ctx, weight, values, indices, bag_sizes):
        offsets = bag_sizes.cumsum(0) - bag_sizes
        ctx.save_for_backward(weight, values, indices, offsets, bag_sizes)
        return F.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):
        weight, values, indices, offsets, bag_sizes = ctx.saved_tensors
        grad = grad.to(weight.dtype).contiguous()
        bags = torch.repeat_interleave(torch.arange(bag_sizes.shape[0], device=grad.device), bag_sizes,
                                       output_size=indices.shape[0])
        order, starts = group_by_index(indices, weight.shape[0])
        sorted_bags = bags[order]
        grad_weight = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_weight = F.embedding_bag(sorted_bags, grad, starts, mode="sum",
                                          per_sample_weights=values[order].to(grad.dtype))
        if ctx.needs_input_grad[1]:
            dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, weight, indices[order], offsets, sorted_bags, 0, -1)
            grad_values = torch.empty_like(dots).scatter_(0, order, dots).to(values.dtype)
        return grad_weight, grad_values, None, None


class _SelectedLogits(torch.autograd.Function):
    """h[b, indices[b, i]] from precomputed dense logits, with a sparse backward.

    Forward is a gather (the dense logits were needed anyway to select the latents); backward
    touches only the selected encoder rows: ∂W_enc[j] = Σ ∂h[b, j] (x_b − b_pre), ∂b_lat[j] = Σ ∂h[b, j],
    and ∂b_pre = −Σ_j ∂b_lat[j] W_enc[j], one product with the encoder instead of a gather of
    its selected rows per sample (the per-sample gradient is formed only when x needs one).
    """

    @staticmethod
    def forward(ctx, dense_logits, x, pre_bias, weight, lat_bias, indices):
        ctx.save_for_backward(x - pre_bias, weight, indices)
        ctx.n_latents = lat_bias.shape[0]
        return dense_logits.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):
        centred, weight, indices = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        need_x, need_pre, need_weight, need_bias = ctx.needs_input_grad[1:5]
        grad_x = grad_pre = grad_weight = grad_bias = None
        if need_x:
            grad_x = F.embedding_bag(indices, weight, per_sample_weights=grad, mode="sum")
            grad_pre = -grad_x.sum(dim=0) if need_pre else None
        if need_weight:
            grad_weight = embedding_bag_weight_grad(indices, grad, centred.to(weight.dtype), ctx.n_latents)
        if need_bias or (need_pre and not need_x):
            grad_bias = torch.zeros(ctx.n_latents, dtype=grad.dtype, device=grad.device)
            grad_bias.index_add_(0, indices.flatten(), grad.flatten())
            if need_pre and not need_x:
                grad_pre = -(grad_bias @ weight)
        return None, grad_x, grad_pre, grad_weight, grad_bias if need_bias else None, None


def _sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ of same-shape tensors without stacking them into one more buffer.

    In float32/64 the chained additions equal the stacked sum; reduced-precision logits (bf16
    autocast) are stacked and summed, which accumulates in float32 and rounds once.
    """
    if len(tensors) > 1 and tensors[0].dtype not in (torch.float32, torch.float64):
        return torch.stack(list(tensors)).sum(dim=0)
    total = tensors[0]
    for i, tensor in enumerate(tensors[1:]):
        total = total + tensor if i == 0 else total.add_(tensor)
    return total


def _masked(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return values if valid is None else values * valid


class StreamParameters(nn.ParameterList):
    """Per-stream view of a model's parameter sets: `[s]` is stream s's tensor.

    Several streams may map to one tensor (shared weights). `len()` and iteration cover the
    distinct tensors once each, so loops over them (decoder normalisation, gradient projection)
    never touch a shared tensor twice; state-dict keys are the distinct tensors' positions.
    """

    def __init__(self, values=None, slots: Sequence[int] | None = None) -> None:
        super().__init__(values)
        self.slots = tuple(slots) if slots is not None else tuple(range(len(self)))
        if self.slots and max(self.slots) >= len(self):
            raise ValueError(f"slots {self.slots} point past {len(self)} parameters")

    def __getitem__(self, stream):
        return super().__getitem__(self.slots[operator.index(stream)])

    def __iter__(self):
        return iter([super(StreamParameters, self).__getitem__(i) for i in range(len(self))])


def _tied_init(init: str, n_latents: int, width: int,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder, decoder) rows `[n_latents, width]` along the same directions, decoder rows unit norm."""
    if init == "kaiming_uniform":
        # PyTorch's Kaiming-uniform of the [width, n_latents] matrix x @ W_enc uses: fan-in n_latents.
        w_enc = nn.init.kaiming_uniform_(torch.empty(width, n_latents), generator=generator)
        encoder = w_enc.t().contiguous()
        return encoder, encoder / encoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    directions = torch.randn(n_latents, width, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    return directions.clone(), directions


class SparseAutoencoder(nn.Module):
    def __init__(self, config: SAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        L = config.n_latents
        slots = config.parameter_slots
        widths = [config.input_dims[slots.index(i)] for i in range(max(slots) + 1)]
        encoders, decoders = [], []
        for d in widths:
            encoder, decoder = _tied_init(config.init, L, d, generator)
            encoders.append(nn.Parameter(encoder))
            decoders.append(nn.Parameter(decoder))
        self.pre_bias = StreamParameters([nn.Parameter(torch.zeros(d)) for d in widths], slots)
        self.lat_bias = StreamParameters([nn.Parameter(torch.zeros(L)) for _ in widths], slots)
        self.enc_weight = StreamParameters(encoders, slots)
        self.dec_weight = StreamParameters(decoders, slots)
        for i in range(len(config.input_dims)):
            self.register_buffer(f"steps_since_active_{i}", torch.zeros(L, dtype=torch.long))
        # BatchTopK's inference threshold per selection (one shared under Global TopK): the
        # running mean over training batches of the smallest selected activation.
        self.register_buffer("batch_threshold", torch.zeros(len(config.input_dims)))
        self.register_buffer("batch_threshold_count", torch.zeros((), dtype=torch.long))

    # ---- shapes ---------------------------------------------------------------------------
    @property
    def n_streams(self) -> int:
        return len(self.config.input_dims)

    def steps_since_active(self, stream: int) -> torch.Tensor:
        return getattr(self, f"steps_since_active_{stream}")

    def parameter_groups(self) -> list[tuple[tuple[int, ...], list[nn.Parameter]]]:
        """(streams, parameters) per distinct parameter set: one entry per stream, or a single
        entry for all streams with shared weights."""
        slots = self.config.parameter_slots
        groups = []
        for slot in range(len(self.enc_weight)):
            streams = tuple(s for s in range(self.n_streams) if slots[s] == slot)
            s = streams[0]
            groups.append((streams, [self.pre_bias[s], self.lat_bias[s], self.enc_weight[s],
                                     self.dec_weight[s]]))
        return groups

    # ---- forward pieces ---------------------------------------------------------------------
    def logits(self, stream: int, x: torch.Tensor) -> torch.Tensor:
        """`[B, d_s] -> [B, L]` pre-activation logits h_s."""
        return F.linear(x - self.pre_bias[stream], self.enc_weight[stream], self.lat_bias[stream])

    def select_indices(self, logits: Sequence[torch.Tensor], topk: str | None = None
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Active latents `[B, k]` per stream, and which slots are real (None: all of them).

        Under Global TopK one index set, from Σ_s h_s, is shared by every stream; under Local TopK
        each stream selects its own. `topk` overrides the configured mode (e.g. Local at
        inference for a Global model). Under BatchTopK the number of latents varies per sample:
        rows are padded to the batch's largest count and the padding is marked invalid.
        """
        mode = topk or self.config.topk
        groups = [_sum(logits)] if mode == "global" else list(logits)
        if self.config.activation == "batchtopk":
            count = self.batch_threshold_count + 1
            picks = [self._batch_select(score, group, count) for group, score in enumerate(groups)]
            if self.training:
                self.batch_threshold_count.copy_(count)
        else:
            picks = [(score.topk(self.config.k, dim=1, sorted=False).indices, None) for score in groups]
        if mode == "global":
            picks = picks * len(logits)
        return [p[0] for p in picks], [p[1] for p in picks]

    def _batch_select(self, score: torch.Tensor, group: int,
                      count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BatchTopK: the B·k largest scores of the batch (training) or those above the learned
        threshold (inference), as `[B, k_max]` indices and a validity mask (one host sync for
        k_max)."""
        n_rows = score.shape[0]
        if self.training:
            flat = score.reshape(-1).topk(min(n_rows * self.config.k, score.numel())).indices
            chosen = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
            chosen[flat] = True
            chosen = chosen.view_as(score) & (score > 0)
            with torch.no_grad():
                smallest = score[chosen].min() if chosen.any() else score.new_zeros(())
                self.batch_threshold[group] += (smallest - self.batch_threshold[group]) / count
        else:
            chosen = score > self.batch_threshold[group]
        k_max = max(int(chosen.sum(dim=1).max()), 1)
        top = score.masked_fill(~chosen, float("-inf")).topk(k_max, dim=1, sorted=False)
        valid = torch.isfinite(top.values)
        return torch.where(valid, top.indices, torch.zeros_like(top.indices)), valid

    def select(self, logits: Sequence[torch.Tensor], topk: str | None = None) -> list[Codes]:
        """Codes per stream: ReLU of each stream's own logits at the selected latents."""
        indices, valid = self.select_indices(logits, topk)
        return [Codes(_masked(F.relu(h.gather(1, idx)), ok), idx)
                for h, idx, ok in zip(logits, indices, valid, strict=True)]

    def logits_at(self, stream: int, x: torch.Tensor, indices: torch.Tensor,
                  dense_logits: torch.Tensor) -> torch.Tensor:
        """h_s at the given latents, `[B, k]`, differentiable, from the (detached) dense logits.

        The dense logits are computed once without autograd to select latents; gradients then
        reach only the selected encoder rows (see `_SelectedLogits`), so the backward pass costs
        O(B·k·d) instead of a second O(B·L·d) product — unless k is a large fraction of L
        (`dense_products_pay`), where the dense product is the cheaper one and is recomputed
        under autograd.
        """
        if dense_products_pay(dense_logits.shape[1], indices.shape[1], x.shape[1]):
            return self.logits(stream, x).gather(1, indices)
        return _SelectedLogits.apply(dense_logits.detach(), x, self.pre_bias[stream],
                                     self.enc_weight[stream], self.lat_bias[stream], indices)

    def encode(self, inputs: Sequence[torch.Tensor], topk: str | None = None) -> list[Codes]:
        self._check_inputs(inputs)
        return self.select([self.logits(s, x) for s, x in enumerate(inputs)], topk)

    def decode(self, stream: int, codes: Codes) -> torch.Tensor:
        """`[B, d_stream]` reconstruction of stream `stream` from any stream's codes."""
        return decode_sparse(self.dec_weight[stream], codes) + self.pre_bias[stream]

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Self-reconstructions, one `[B, d_s]` per stream."""
        codes = self.encode(inputs)
        return [self.decode(s, c) for s, c in enumerate(codes)]

    def auxk_indices(self, stream: int, logits: torch.Tensor, k_aux: int,
                     dead_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """AuxK latents `[B, k_aux]` (TopK of the logits among dead latents), a `[B, k_aux]` mask of
        picks that are really dead, and whether any latent is dead.

        Live latents are masked to −inf, so when fewer than k_aux are dead the extra picks are
        masked out; no host sync is needed to count the dead.
        """
        dead = self.steps_since_active(stream) > dead_steps
        masked = logits.detach().masked_fill(~dead, float("-inf"))
        top = masked.topk(min(k_aux, logits.shape[1]), dim=1, sorted=False)
        return top.indices, top.values != float("-inf"), dead.any()

    def auxk_codes(self, stream: int, x: torch.Tensor, logits: torch.Tensor, k_aux: int,
                   dead_steps: int) -> tuple[Codes, torch.Tensor]:
        """AuxK codes of a stream (values differentiable through `logits_at`) and whether any
        latent is dead."""
        indices, is_dead, any_dead = self.auxk_indices(stream, logits, k_aux, dead_steps)
        values = F.relu(self.logits_at(stream, x, indices, logits)) * is_dead
        return Codes(values, indices), any_dead

    # ---- training-state bookkeeping ----------------------------------------------------------
    @torch.no_grad()
    def update_dead_counters(self, codes: Sequence[Codes], threshold: float) -> None:
        """Advance steps-since-active; reset latents that fired above `threshold`. Training only."""
        for s, c in enumerate(codes):
            counter = self.steps_since_active(s)
            fired = torch.zeros(self.config.n_latents, device=counter.device)
            fired.index_add_(0, c.indices.flatten(), (c.values.flatten() > threshold).float())
            counter.add_(1).masked_fill_(fired > 0, 0)

    @torch.no_grad()
    def project_decoder_grads(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row.

        Two passes and no `[L, d]` temporary: the row dot products as one batched product, then an
        in-place update.
        """
        for weight in self.dec_weight:
            if weight.grad is not None:
                parallel = torch.bmm(weight.grad.unsqueeze(1), weight.unsqueeze(2)).squeeze(2)
                weight.grad.addcmul_(parallel, weight, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        for weight in self.dec_weight:
            weight.div_(weight.norm(dim=1, keepdim=True).clamp_min_(1e-12))

    # ---- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path, extra_metadata: dict | None = None) -> None:
        metadata = {"sae_config": json.dumps(asdict(self.config))}
        if extra_metadata:
            metadata.update({k: json.dumps(v) for k, v in extra_metadata.items()})
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(safetensors_bytes(tensors, metadata))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: SAE weights not found; run the train_sae rule first")
        raw = read_metadata(path)["sae_config"]
        try:
            tensors = load_file(str(path), device=str(device))
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise DataError(f"{path}: not a readable SAE weight file ({exc})") from exc
        config = SAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        model = cls(config).to(device)
        model.load_state_dict(tensors)
        return model

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != self.n_streams:
            raise ValueError(f"expected {self.n_streams} streams, got {len(inputs)}")
        for s, x in enumerate(inputs):
            if x.dim() != 2 or x.shape[1] != self.config.input_dims[s]:
                raise ValueError(
                    f"stream {self.config.stream_names[s]!r}: expected [B, {self.config.input_dims[s]}], "
                    f"got {list(x.shape)}"
                )
