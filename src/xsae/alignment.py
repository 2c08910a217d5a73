"""Post-hoc latent alignment of two SAE latent spaces (heterogeneity paper §4, §6, Eq. 8, 12, 13).

Two streams (e.g. an image SAE and a text SAE) encode paired samples. Their coactivation
correlation C `[L_a, L_b]` (Eq. 8) is the Pearson correlation between latent i of stream a and
latent j of stream b over the pairs. The Hungarian algorithm picks the permutation P maximising
tr(C P) (Eq. 12), and the moved stream's latents are re-indexed by it (Eq. 13): every encoder row,
decoder row and latent bias moves together, so the moved SAE computes the same function and only
the names of its latents change.

Conventions:

- `permutation[i]` is the moved-stream latent paired with reference latent i; after
  `permute_stream_latents(model, s, permutation)`, latent i of stream s is the old latent
  `permutation[i]`.
- A latent is *alive* here when its activation varies over the samples (positive variance):
  only then is its correlation defined. A latent that never fires (dead) or fires with one
  constant value gets correlation 0 with everything (never NaN) and is marked not alive.
- Matching uses the signed correlation, as Eq. 12 does: codes are non-negative, so a negative
  correlation means the two latents tend to fire on different samples, which is evidence against
  a shared concept; matching on |c| would pair such mutually exclusive latents.
- Dead latents are excluded from the assignment (the paper's footnote 2); they, and any alive
  latent left over when the two sides have different numbers of alive latents, are then paired in
  ascending index order, so the result is always a full permutation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from xsae.metrics.sharedness import correlation_with_moments
from xsae.sae import Codes, SparseAutoencoder

#: Correlation bands of Figure 2/9: [0, .2), [.2, .4), [.4, .6), [.6, .8), [.8, 1]. The paper's text
#: names only the top band (c ≥ 0.8); the other edges are those of the authors' figure code.
FIGURE2_BINS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

CodeSource = Codes | torch.Tensor | np.ndarray | Iterable[Codes | torch.Tensor | np.ndarray]


# ---- coactivation correlation ------------------------------------------------------------------
@dataclass(frozen=True)
class Coactivation:
    """Coactivation statistics of two streams over N paired samples.

    `correlation` is float64 `[L_a, L_b]` on the device it was accumulated on, 0 in every row or
    column of a latent that is not alive; `alive_*` (bool) marks latents whose activation varies.
    """

    correlation: torch.Tensor
    alive_a: torch.Tensor
    alive_b: torch.Tensor
    n_samples: int


def _source_device(source: CodeSource) -> torch.device | None:
    if isinstance(source, Codes):
        return source.values.device
    if isinstance(source, torch.Tensor):
        return source.device
    return None


def coactivation_correlation(codes_a: CodeSource, codes_b: CodeSource, n_latents_a: int, n_latents_b: int,
                             *, chunk_rows: int = 4096,
                             device: torch.device | str | None = None) -> Coactivation:
    """Pearson correlation `[L_a, L_b]` between two streams' latents over paired samples (Eq. 8).

    `codes_a`, `codes_b`: the two streams' codes over the same samples in the same order, each a
    `Codes` (values/indices `[N, k]`), a dense `[N, L]` tensor/array, or an iterable of such chunks
    (a one-shot generator is fine: one pass is made). The correlation is the streamed one of the
    sharedness metrics (`xsae.metrics.sharedness.correlation_with_moments`): float64 moments over
    chunks of at most `chunk_rows` rows, sparse products when both sides are `Codes`, on `device`
    (default: where the input tensors are). Memory is the `[L_a, L_b]` output plus one chunk.
    """
    for name, value in (("n_latents_a", n_latents_a), ("n_latents_b", n_latents_b)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    target = torch.device(device) if device is not None else (_source_device(codes_a) or torch.device("cpu"))
    correlation, moments_a, moments_b = correlation_with_moments(
        codes_a, codes_b, n_features_a=int(n_latents_a), n_features_b=int(n_latents_b),
        chunk_rows=chunk_rows, device=target, names=("codes_a", "codes_b"))
    if moments_a.n_rows < 2:
        raise ValueError(f"a correlation needs at least 2 paired samples, got {moments_a.n_rows}")
    return Coactivation(correlation, moments_a.alive.to(target), moments_b.alive.to(target), moments_a.n_rows)


# ---- Hungarian matching --------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentMatching:
    """A full permutation pairing reference latent i with moved latent `permutation[i]`.

    `correlation[i]` = C[i, permutation[i]]; `matched[i]` is true where the Hungarian assignment
    chose the pair (both latents alive), false where the pair was filled in by index order.
    """

    permutation: np.ndarray  # int64 [L]
    correlation: np.ndarray  # float64 [L]
    matched: np.ndarray  # bool [L]

    @property
    def n_matched(self) -> int:
        return int(self.matched.sum())

    @property
    def mean_matched_correlation(self) -> float:
        """Mean correlation over Hungarian-matched pairs (NaN when none)."""
        return float(self.correlation[self.matched].mean()) if self.matched.any() else float("nan")

    @property
    def pairs(self) -> np.ndarray:
        """int64 `[n_matched, 2]`: (reference latent, moved latent) of each matched pair."""
        reference = np.flatnonzero(self.matched)
        return np.stack([reference, self.permutation[reference]], axis=1)


def _as_numpy(x: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return array.astype(dtype, copy=False)


def _alive_or_all(alive: torch.Tensor | np.ndarray | None, size: int, name: str) -> np.ndarray:
    if alive is None:
        return np.ones(size, dtype=bool)
    mask = _as_numpy(alive, bool)
    if mask.shape != (size,):
        raise ValueError(f"{name} has shape {list(mask.shape)}, expected [{size}]")
    return mask


def match_latents(correlation: torch.Tensor | np.ndarray, alive_a: torch.Tensor | np.ndarray | None = None,
                  alive_b: torch.Tensor | np.ndarray | None = None) -> LatentMatching:
    """Permutation maximising the summed signed correlation of paired alive latents (Eq. 12).

    `correlation`: `[L, L]` (rows: reference stream, columns: moved stream); `alive_*`: bool masks
    (None: all alive). The Hungarian assignment (scipy `linear_sum_assignment`) runs on the
    alive×alive submatrix; the remaining latents of each side are paired in ascending index order.
    Both sides must have the same number of latents, because the moved stream is re-indexed into
    the reference's index space.
    """
    matrix = _as_numpy(correlation, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"correlation must be square [L, L] (equal latent counts on both sides), "
                         f"got {list(matrix.shape)}")
    size = matrix.shape[0]
    rows = np.flatnonzero(_alive_or_all(alive_a, size, "alive_a"))
    cols = np.flatnonzero(_alive_or_all(alive_b, size, "alive_b"))
    # One copy of the alive block, negated in place: minimising −C maximises C without a second copy.
    cost = matrix.copy() if rows.size == cols.size == size else matrix[np.ix_(rows, cols)]
    if not np.isfinite(cost).all():
        raise ValueError("correlation has NaN or Inf among alive latents")
    np.negative(cost, out=cost)
    permutation = np.full(size, -1, dtype=np.int64)
    matched = np.zeros(size, dtype=bool)
    if rows.size and cols.size:
        chosen_rows, chosen_cols = linear_sum_assignment(cost)
        permutation[rows[chosen_rows]] = cols[chosen_cols]
        matched[rows[chosen_rows]] = True
    used = np.zeros(size, dtype=bool)
    used[permutation[matched]] = True
    permutation[~matched] = np.flatnonzero(~used)  # both ascending: a deterministic pairing
    return LatentMatching(permutation, matrix[np.arange(size), permutation], matched)


# ---- re-indexing a stream ---------------------------------------------------------------------
Permutation = torch.Tensor | np.ndarray | list[int] | LatentMatching

_PER_STREAM_LISTS = ("enc_weight", "dec_weight", "lat_bias")


def _check_independent_latents(model: SparseAutoencoder, name: str) -> None:
    """Raise unless each stream of `model` owns its latents (own parameters, own index space)."""
    n_streams = model.n_streams
    if model.config.topk == "global" and n_streams > 1:
        raise ValueError(f"{name} uses Global TopK over {n_streams} streams: latent j is selected "
                         "jointly in every stream, so one stream's latents cannot be re-indexed alone")
    for list_name in _PER_STREAM_LISTS:
        tensors = list(getattr(model, list_name))
        if len(tensors) != n_streams:
            raise ValueError(f"{name}.{list_name} holds {len(tensors)} tensors for {n_streams} streams: "
                             "the streams share weights, so one stream cannot be re-indexed alone")
        storages = {t.untyped_storage().data_ptr() for t in tensors}
        if len(storages) != n_streams:
            raise ValueError(f"{name}.{list_name}: several streams share one tensor; re-indexing one "
                             "stream would re-index the others")


def _known_state(model: SparseAutoencoder) -> set[str]:
    names = {f"{list_name}.{s}" for list_name in (*_PER_STREAM_LISTS, "pre_bias")
             for s in range(model.n_streams)}
    names |= {f"steps_since_active_{s}" for s in range(model.n_streams)}
    return names | {"batch_threshold", "batch_threshold_count"}  # per selection, not per latent


def _as_permutation(permutation: Permutation, size: int | None, name: str) -> np.ndarray:
    """int64 numpy copy of a permutation of range(size) (size None: its own length), checked."""
    if isinstance(permutation, LatentMatching):
        permutation = permutation.permutation
    perm = np.asarray(permutation.detach().cpu() if isinstance(permutation, torch.Tensor) else permutation)
    size = perm.shape[0] if size is None and perm.ndim == 1 else size
    if (perm.dtype.kind not in "iu" or perm.shape != (size,)
            or not np.array_equal(np.sort(perm), np.arange(size))):
        raise ValueError(f"{name} must be an integer permutation of range({size}), got "
                         f"dtype {perm.dtype}, shape {list(perm.shape)}")
    return perm.astype(np.int64)


@torch.no_grad()
def permute_stream_latents(model: SparseAutoencoder, stream: int,
                           permutation: Permutation) -> None:
    """Re-index stream `stream`'s latents in place: new latent i = old latent `permutation[i]`.

    Encoder rows, decoder rows, latent biases, the dead-latent counter (and gradients, if any)
    move together, so reconstructions are unchanged and codes are permuted (see `permute_codes`).
    The BatchTopK thresholds are per stream, not per latent, and stay. An optimizer's per-latent
    state (e.g. Adam moments) is not the model's: rebuild the optimizer after re-indexing.
    Refuses Global TopK over several streams and streams sharing parameters.
    """
    if not 0 <= stream < model.n_streams:
        raise ValueError(f"stream must be in [0, {model.n_streams}), got {stream}")
    _check_independent_latents(model, "model")
    n_latents = model.config.n_latents
    known = _known_state(model)
    for key, tensor in model.state_dict().items():
        if key not in known and n_latents in tensor.shape:
            raise ValueError(f"model has state {key!r} {list(tensor.shape)} that may be indexed by latent; "
                             "permute_stream_latents does not know how to re-index it")
    perm = _as_permutation(permutation, n_latents, "permutation")
    for list_name in _PER_STREAM_LISTS:
        parameter = getattr(model, list_name)[stream]
        index = torch.from_numpy(perm).to(parameter.device)
        parameter.copy_(parameter.index_select(0, index))
        if parameter.grad is not None:
            parameter.grad.copy_(parameter.grad.index_select(0, index))
    counter = model.steps_since_active(stream)
    counter.copy_(counter.index_select(0, torch.from_numpy(perm).to(counter.device)))


def permute_codes(codes: Codes, permutation: Permutation) -> Codes:
    """The codes a stream produces after `permute_stream_latents(..., permutation)`: old latent
    `permutation[i]` is renamed i, values and slot order unchanged."""
    perm = _as_permutation(permutation, None, "permutation")
    if codes.indices.numel() and int(codes.indices.max()) >= perm.size:
        raise ValueError(f"codes use latent {int(codes.indices.max())}, outside the permutation's "
                         f"range({perm.size})")
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return Codes(codes.values, torch.from_numpy(inverse).to(codes.indices.device)[codes.indices])


def align_streams(model: SparseAutoencoder, reference_stream: int, moved_stream: int,
                  reference_codes: CodeSource, moved_codes: CodeSource, *,
                  moved_model: SparseAutoencoder | None = None, chunk_rows: int = 4096,
                  device: torch.device | str | None = None) -> dict:
    """Correlate, match and re-index: the moved stream's latents take their partners' indices.

    `reference_codes`/`moved_codes` are the two streams' codes (before alignment) over paired
    samples, in any form `coactivation_correlation` takes. The moved stream belongs to `model`
    (two streams of one Local model) or, if given, to `moved_model` (two separately trained SAEs);
    the reference is never changed. Returns a report: `permutation`, `matched` (bool per reference
    latent), `matched_pairs` `[n, 2]`, `matched_correlation` (per reference latent), `n_matched`,
    `mean_matched_correlation`, alive counts and `n_samples`.
    """
    target = moved_model if moved_model is not None else model
    for label, owner, stream in (("reference_stream", model, reference_stream),
                                 ("moved_stream", target, moved_stream)):
        if not 0 <= stream < owner.n_streams:
            raise ValueError(f"{label} must be in [0, {owner.n_streams}), got {stream}")
    if moved_model is None and reference_stream == moved_stream:
        raise ValueError(f"reference_stream and moved_stream are both {moved_stream}: nothing to align")
    if model.config.n_latents != target.config.n_latents:
        raise ValueError(f"the reference has {model.config.n_latents} latents and the moved stream "
                         f"{target.config.n_latents}: alignment needs equal latent counts")
    _check_independent_latents(target, "moved_model" if moved_model is not None else "model")
    n_latents = model.config.n_latents
    stats = coactivation_correlation(reference_codes, moved_codes, n_latents, n_latents,
                                     chunk_rows=chunk_rows, device=device)
    matching = match_latents(stats.correlation, stats.alive_a, stats.alive_b)
    permute_stream_latents(target, moved_stream, matching.permutation)
    return {
        "permutation": matching.permutation,
        "matched": matching.matched,
        "matched_pairs": matching.pairs,
        "matched_correlation": matching.correlation,
        "n_matched": matching.n_matched,
        "mean_matched_correlation": matching.mean_matched_correlation,
        "n_alive_reference": int(stats.alive_a.sum()),
        "n_alive_moved": int(stats.alive_b.sum()),
        "n_latents": n_latents,
        "n_samples": stats.n_samples,
    }


# ---- Figure 2: decoder directions by coactivation -------------------------------------------------
def _unit_rows_float64(weight: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    rows = _as_numpy(weight, np.float64)
    if rows.ndim != 2:
        raise ValueError(f"{name} must be [L, d], got {list(rows.shape)}")
    norms = np.linalg.norm(rows, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name} has zero rows (latents {np.flatnonzero(norms == 0)[:5].tolist()}...): "
                         "their direction, hence their cosine, is undefined")
    return rows / norms[:, None]


def _bin_labels(edges: np.ndarray) -> list[str]:
    return [f"[{lo:g}, {hi:g}{']' if i == len(edges) - 2 else ')'}"
            for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


def _pair_cosines(unit_a: np.ndarray, unit_b: np.ndarray, index_a: np.ndarray, index_b: np.ndarray,
                  chunk_rows: int) -> np.ndarray:
    """cos(unit_a[index_a[p]], unit_b[index_b[p]]) for every pair p, float64.

    Pairs are handled per block of `chunk_rows` rows of a: a block holding many pairs goes through
    one matmul against every row of b (BLAS), a block holding few through a gather of the pair rows,
    which costs a memory pass over d values per pair.
    """
    cosine = np.empty(index_a.size, dtype=np.float64)
    order = np.argsort(index_a, kind="stable")
    sorted_a = index_a[order]
    rows_b = torch.from_numpy(unit_b)
    step = max(1, (1 << 22) // unit_a.shape[1])  # gathered rows: ~32 MB per side
    for lo in range(0, unit_a.shape[0], chunk_rows):
        start, stop = np.searchsorted(sorted_a, [lo, lo + chunk_rows])
        members = order[start:stop]
        n_rows = min(chunk_rows, unit_a.shape[0] - lo)
        if members.size * 64 > n_rows * unit_b.shape[0]:
            block = (torch.from_numpy(unit_a[lo:lo + n_rows]) @ rows_b.T).numpy()
            cosine[members] = block[index_a[members] - lo, index_b[members]]
            continue
        for first in range(0, members.size, step):
            part = members[first:first + step]
            cosine[part] = np.einsum("pd,pd->p", unit_a[index_a[part]], unit_b[index_b[part]])
    return cosine


def decoder_cosine_by_correlation(dec_a: torch.Tensor | np.ndarray, dec_b: torch.Tensor | np.ndarray,
                                  correlation: Coactivation | torch.Tensor | np.ndarray,
                                  bins: tuple[float, ...] | np.ndarray = FIGURE2_BINS, *,
                                  alive_a: torch.Tensor | np.ndarray | None = None,
                                  alive_b: torch.Tensor | np.ndarray | None = None,
                                  matching: LatentMatching | None = None,
                                  max_pairs_per_bin: int | None = None, seed: int = 0,
                                  chunk_rows: int = 1024) -> pd.DataFrame:
    """Cosine distance 1 − cos(φ̂_i, ψ̂_j) of decoder directions, per coactivation band (Figure 2/9).

    As in the paper's Appendix D.1, every pair (i, j) of latents alive on both sides is a data point,
    placed in a band by c_ij (bands left-closed, the last one closed; pairs outside every band,
    e.g. negatively correlated ones, are left out). Dead latents are excluded when alive masks are
    known (passed, or taken from a `Coactivation`). With `matching`, only its Hungarian-matched
    pairs (i, permutation[i]) are used. `max_pairs_per_bin` keeps a seeded uniform sample of each
    band (for density plots); `attrs["pairs_per_bin"]` always holds the full counts.

    Returns a tidy DataFrame, one row per pair: `bin` (ordered categorical), `latent_a`, `latent_b`,
    `correlation`, `cosine_distance`.
    """
    if isinstance(correlation, Coactivation):
        alive_a = correlation.alive_a if alive_a is None else alive_a
        alive_b = correlation.alive_b if alive_b is None else alive_b
        correlation = correlation.correlation
    unit_a, unit_b = _unit_rows_float64(dec_a, "dec_a"), _unit_rows_float64(dec_b, "dec_b")
    if unit_a.shape[1] != unit_b.shape[1]:
        raise ValueError(f"dec_a and dec_b must share the embedding dimension, got {unit_a.shape[1]} "
                         f"and {unit_b.shape[1]}")
    corr = _as_numpy(correlation, np.float64)
    if corr.shape != (unit_a.shape[0], unit_b.shape[0]):
        raise ValueError(f"correlation has shape {list(corr.shape)}, expected "
                         f"[{unit_a.shape[0]}, {unit_b.shape[0]}] (rows of dec_a, rows of dec_b)")
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ValueError(f"bins must be at least two increasing edges, got {bins!r}")
    keep_a = _alive_or_all(alive_a, corr.shape[0], "alive_a")
    keep_b = _alive_or_all(alive_b, corr.shape[1], "alive_b")

    if matching is not None:
        if matching.permutation.shape != (corr.shape[0],) or corr.shape[0] != corr.shape[1]:
            raise ValueError("matching must be a LatentMatching over the same [L, L] correlation")
        index_a = np.flatnonzero(matching.matched & keep_a)
        index_b = matching.permutation[index_a]
        keep = keep_b[index_b]
        index_a, index_b = index_a[keep], index_b[keep]
    else:
        found_a, found_b = [], []
        for lo in range(0, corr.shape[0], chunk_rows):
            block = corr[lo:lo + chunk_rows]
            inside = (block >= edges[0]) & (block <= edges[-1])
            inside &= keep_a[lo:lo + chunk_rows, None] & keep_b[None, :]
            rows, cols = np.nonzero(inside)
            found_a.append(rows + lo)
            found_b.append(cols)
        index_a, index_b = np.concatenate(found_a), np.concatenate(found_b)
    values = corr[index_a, index_b]
    in_range = (values >= edges[0]) & (values <= edges[-1])
    index_a, index_b, values = index_a[in_range], index_b[in_range], values[in_range]
    band = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)

    labels = _bin_labels(edges)
    pairs_per_bin = {label: int(n) for label, n in zip(labels, np.bincount(band, minlength=len(labels)),
                                                       strict=True)}
    if max_pairs_per_bin is not None:
        if max_pairs_per_bin < 1:
            raise ValueError(f"max_pairs_per_bin must be positive, got {max_pairs_per_bin}")
        rng = np.random.default_rng(seed)
        chosen = [np.sort(rng.choice(members, max_pairs_per_bin, replace=False))
                  if members.size > max_pairs_per_bin else members
                  for members in (np.flatnonzero(band == b) for b in range(len(labels)))]
        subset = np.sort(np.concatenate(chosen))
        index_a, index_b, values, band = index_a[subset], index_b[subset], values[subset], band[subset]

    cosine = _pair_cosines(unit_a, unit_b, index_a, index_b, chunk_rows)
    frame = pd.DataFrame({
        "bin": pd.Categorical.from_codes(band, categories=labels, ordered=True),
        "latent_a": index_a.astype(np.int64),
        "latent_b": index_b.astype(np.int64),
        "correlation": values,
        "cosine_distance": 1.0 - np.clip(cosine, -1.0, 1.0),
    })
    frame.attrs["pairs_per_bin"] = pairs_per_bin
    frame.attrs["bin_edges"] = edges.tolist()
    return frame
