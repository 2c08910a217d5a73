"""Which latents are alive in which streams (SPARC §4.1, Table 1).

A latent is alive in a stream if it takes a non-zero value on at least one evaluation sample (in
SPARC's reference: at least one *labelled* test sample, hence `sample_mask`). Codes are ReLU outputs,
so non-zero means > 0. Table 1 then counts, over latents, in how many of the S streams each is alive:
none ("all dead"), 1..S−1 of them ("mixed": "1/3", "2/3" for S = 3) or all ("all alive"), plus the
fraction of latents dead in each stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xsae.sae import Codes


def as_sample_mask(sample_mask: torch.Tensor | np.ndarray, n_samples: int) -> torch.Tensor:
    """bool CPU tensor `[N]` from a tensor or array mask, checked against N."""
    mask = torch.as_tensor(sample_mask.detach().cpu() if isinstance(sample_mask, torch.Tensor)
                           else np.asarray(sample_mask), dtype=torch.bool)
    if mask.shape != (n_samples,):
        raise ValueError(f"sample_mask has shape {list(mask.shape)}, expected [{n_samples}]")
    return mask


def select_samples(codes: Codes, sample_mask: torch.Tensor | np.ndarray | None) -> Codes:
    """The rows of `codes` (`[N, k]`) where `sample_mask` (bool `[N]`) is true; all rows if None."""
    if sample_mask is None:
        return codes
    mask = as_sample_mask(sample_mask, codes.indices.shape[0]).to(codes.indices.device)
    return Codes(codes.values[mask], codes.indices[mask])


def alive_mask(codes: Codes, n_latents: int,
               sample_mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """bool `[L]`: latent j is non-zero on at least one sample (of those in `sample_mask`, if given).

    `codes` are one stream's codes over the evaluation set (`values`, `indices` `[N, k]`).
    """
    codes = select_samples(codes, sample_mask)
    alive = torch.zeros(n_latents, dtype=torch.bool, device=codes.indices.device)
    alive[codes.indices[codes.values > 0]] = True
    return alive


def alive_matrix(codes_per_stream: Sequence[Codes], n_latents: int,
                 sample_mask: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """bool `[S, L]`: `alive_mask` of each stream, stacked (on CPU)."""
    return torch.stack([alive_mask(c, n_latents, sample_mask).cpu() for c in codes_per_stream])


def activation_patterns(alive: torch.Tensor | np.ndarray,
                        stream_names: Sequence[str] | None = None) -> dict[str, float]:
    """Table 1 row from an alive matrix bool `[S, L]`; fractions of the L latents.

    Keys: "all_dead" (alive in no stream), "j/S" for each 0 < j < S (alive in exactly j streams),
    "all_alive" (alive in all S), and "dead_<name>" per stream (dead in that stream). The pattern
    fractions sum to 1. For S = 1 there are no mixed keys.
    """
    alive_t = torch.as_tensor(np.asarray(alive) if not isinstance(alive, torch.Tensor) else alive,
                              dtype=torch.bool).cpu()
    if alive_t.dim() != 2 or alive_t.shape[0] < 1 or alive_t.shape[1] < 1:
        raise ValueError(f"alive must be [S >= 1, L >= 1], got {list(alive_t.shape)}")
    n_streams = alive_t.shape[0]
    names = list(stream_names) if stream_names is not None else [f"stream{s}" for s in range(n_streams)]
    if len(names) != n_streams:
        raise ValueError(f"{len(names)} stream names for {n_streams} streams")
    n_alive = alive_t.sum(dim=0)

    def fraction(mask: torch.Tensor) -> float:
        return float(mask.double().mean())

    patterns = {"all_dead": fraction(n_alive == 0)}
    for j in range(1, n_streams):
        patterns[f"{j}/{n_streams}"] = fraction(n_alive == j)
    patterns["all_alive"] = fraction(n_alive == n_streams)
    for s, name in enumerate(names):
        patterns[f"dead_{name}"] = fraction(~alive_t[s])
    return patterns
