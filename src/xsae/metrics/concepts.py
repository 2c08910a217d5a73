"""Concept alignment of latents across streams (SPARC §4.2, Table 2).

The concept profile of latent ℓ in stream s is the vector of label counts summed over a set of
samples that activate ℓ in s:

- `profile="top"` (paper text): the `top_n` (50) samples with the highest activation of ℓ in s,
  among samples where ℓ is non-zero. If ℓ is non-zero on fewer than `top_n` samples, the profile
  sums over just those (no zero-activation samples are added and counts are not rescaled); ties at
  the cut-off go to the lower sample index (see `top_activating`).
- `profile="all_active"` (SPARC's reference code): every sample where ℓ is non-zero.

Two profiles a, b are compared by the generalised Jaccard J = Σ_c min(a_c, b_c) / Σ_c max(a_c, b_c);
two empty profiles score 0. A latent's score is the mean of J over the stream pairs in which it is
alive in both streams (`alive_mask`); latents alive in fewer than two streams have no such pair and
are, by `dead_latents`, either scored 0 and kept in the mean over all L latents ("zero", the
reference's rule, which also matches the paper's "averaged over all latents") or left out
("exclude").

All profiles of a stream come from one sparse product: a selection matrix `[L, N]` (1 where sample i
is in latent ℓ's set) times the multi-hot label matrix `[N, C]`; no loop over latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from xsae.metrics.activation import alive_matrix, as_sample_mask, select_samples
from xsae.metrics.top_activations import top_activating
from xsae.sae import Codes

LabelMatrix = Any  # np.ndarray | torch.Tensor | scipy.sparse matrix/array, `[N, C]`


def _csr(matrix: LabelMatrix, binary: bool) -> sp.csr_array:
    """float64 CSR copy of a dense or sparse matrix; with `binary`, every non-zero becomes 1."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    out = sp.csr_array(matrix if sp.issparse(matrix) else np.atleast_2d(np.asarray(matrix)), dtype=np.float64)
    if binary:
        out.data = (out.data != 0).astype(np.float64)
    out.eliminate_zeros()
    return out


# ---- label hierarchy ---------------------------------------------------------------------------------
def label_depths(parents: Sequence[int | None]) -> np.ndarray:
    """int `[C]`: depth of each label, 1 for top-level labels (`parents[c] is None`)."""
    n_labels = len(parents)
    depths = np.zeros(n_labels, dtype=np.int64)
    for label in range(n_labels):
        chain = [label]
        while depths[chain[-1]] == 0 and parents[chain[-1]] is not None:
            parent = parents[chain[-1]]
            if not 0 <= parent < n_labels:
                raise ValueError(f"label {chain[-1]} has parent {parent}, outside [0, {n_labels})")
            if parent in chain:
                raise ValueError(f"label hierarchy has a cycle through label {parent}")
            chain.append(parent)
        base = depths[chain[-1]] if depths[chain[-1]] else 1
        for offset, node in enumerate(reversed(chain)):
            depths[node] = base + offset
    return depths


def ancestor_at_depth(parents: Sequence[int | None], depth: int) -> np.ndarray:
    """int `[C]`: each label's ancestor at `depth` (1 = top level); labels at depth ≤ `depth` map to
    themselves."""
    if depth < 1:
        raise ValueError(f"depth counts from 1 (top level), got {depth}")
    depths = label_depths(parents)
    target = np.arange(len(parents))
    for label in range(len(parents)):
        for _ in range(depths[label] - depth):
            target[label] = parents[target[label]]
    return target


def collapse_labels(label_matrix: LabelMatrix, parents: Sequence[int | None], depth: int) -> LabelMatrix:
    """Multi-hot `[N, C]` with every label replaced by its ancestor at `depth`, OR-aggregated.

    Columns keep their label indices (a collapsed-away label's column becomes all-False), so the
    result lines up with the input's label names; all-False columns do not change any Jaccard.
    Returns a bool `scipy.sparse.csr_array` for sparse input, else a bool `np.ndarray`.
    """
    labels = _csr(label_matrix, binary=True)
    n_labels = labels.shape[1]
    if len(parents) != n_labels:
        raise ValueError(f"{len(parents)} parents for {n_labels} labels")
    target = ancestor_at_depth(parents, depth)
    mapping = sp.csr_array((np.ones(n_labels), (np.arange(n_labels), target)), shape=(n_labels, n_labels))
    collapsed = labels @ mapping
    if sp.issparse(label_matrix):
        return sp.csr_array(collapsed > 0)
    return collapsed.toarray() > 0


# ---- profiles and Jaccard -----------------------------------------------------------------------------
def concept_profiles(codes: Codes, labels: LabelMatrix, n_latents: int, profile: str = "top",
                     top_n: int = 50) -> sp.csr_array:
    """float64 `[L, C]` label counts per latent for one stream (see the module docstring).

    `codes`: `[N, k]`; `labels`: multi-hot `[N, C]` for the same N samples.
    """
    label_csr = _csr(labels, binary=True)
    n_samples = codes.indices.shape[0]
    if label_csr.shape[0] != n_samples:
        raise ValueError(f"labels have {label_csr.shape[0]} rows, codes have {n_samples}")
    if profile == "top":
        chosen = top_activating(codes, n_latents, top_n=top_n)[0].cpu().numpy()  # [L, top_n]
        latent = np.broadcast_to(np.arange(n_latents)[:, None], chosen.shape)
        keep = chosen >= 0
        latent, sample = latent[keep], chosen[keep]
    elif profile == "all_active":
        active = (codes.values > 0).cpu().numpy()  # [N, k]
        sample = np.nonzero(active)[0]
        latent = codes.indices.cpu().numpy()[active]
    else:
        raise ValueError(f"profile must be 'top' or 'all_active', got {profile!r}")
    selection = sp.csr_array((np.ones(len(sample)), (latent, sample)), shape=(n_latents, n_samples))
    return sp.csr_array(selection @ label_csr)


def generalized_jaccard(a: LabelMatrix, b: LabelMatrix) -> np.ndarray:
    """float64 `[L]`: Σ_c min(a, b) / Σ_c max(a, b) row by row for non-negative `[L, C]` profiles
    (a `[C]` vector counts as one row); 0 where both rows are empty."""
    a_csr, b_csr = _csr(a, binary=False), _csr(b, binary=False)
    if a_csr.shape != b_csr.shape:
        raise ValueError(f"profile shapes differ: {a_csr.shape} vs {b_csr.shape}")
    overlap = np.asarray(a_csr.minimum(b_csr).sum(axis=1)).ravel()
    union = np.asarray(a_csr.sum(axis=1)).ravel() + np.asarray(b_csr.sum(axis=1)).ravel() - overlap
    return np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)


@dataclass(frozen=True)
class JaccardResult:
    mean: float  # Table 2's number, under the chosen `dead_latents` rule
    per_latent: np.ndarray  # float64 [L]: mean J over stream pairs alive in both; NaN if no such pair
    n_alive_streams: np.ndarray  # int [L]: streams in which each latent is alive


def mean_jaccard(codes_per_stream: Sequence[Codes], labels: LabelMatrix, n_latents: int, *,
                 profile: str = "top", top_n: int = 50,
                 sample_mask: torch.Tensor | np.ndarray | None = None,
                 dead_latents: str = "zero") -> JaccardResult:
    """Mean generalised Jaccard of concept profiles over latents and stream pairs (Table 2).

    `codes_per_stream`: S ≥ 2 streams, each `[N, k]`; `labels`: multi-hot `[N, C]` (dense or
    scipy.sparse; collapse it first with `collapse_labels` for a coarser hierarchy depth);
    `sample_mask`: bool `[N]` restricting everything (aliveness and profiles) to e.g. the labelled
    samples, as the reference does. `dead_latents`: "zero" or "exclude" for latents alive in fewer
    than two streams.
    """
    if dead_latents not in ("zero", "exclude"):
        raise ValueError(f"dead_latents must be 'zero' or 'exclude', got {dead_latents!r}")
    if len(codes_per_stream) < 2:
        raise ValueError("Jaccard alignment needs at least two streams")
    label_csr = _csr(labels, binary=True)
    codes = [select_samples(c, sample_mask) for c in codes_per_stream]
    if sample_mask is not None:
        label_csr = label_csr[as_sample_mask(sample_mask, label_csr.shape[0]).numpy()]
    alive = alive_matrix(codes, n_latents).numpy()  # [S, L]
    profiles = [concept_profiles(c, label_csr, n_latents, profile=profile, top_n=top_n) for c in codes]
    total = np.zeros(n_latents)
    n_pairs = np.zeros(n_latents, dtype=np.int64)
    for i in range(len(codes)):
        for j in range(i + 1, len(codes)):
            both = alive[i] & alive[j]
            total += np.where(both, generalized_jaccard(profiles[i], profiles[j]), 0.0)
            n_pairs += both
    scored = n_pairs > 0
    per_latent = np.full(n_latents, np.nan)
    per_latent[scored] = total[scored] / n_pairs[scored]
    if dead_latents == "zero":
        mean = float(np.where(scored, per_latent, 0.0).mean())
    else:
        mean = float(per_latent[scored].mean()) if scored.any() else float("nan")
    return JaccardResult(mean=mean, per_latent=per_latent, n_alive_streams=alive.sum(axis=0))
