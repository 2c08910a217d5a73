"""Sharedness of SAE features between models: MPPC, wMPPC and Comparative Sharedness.

Paper: "Explaining how visual, textual and multi-modal encoders share concepts" (§2, Appendices B–C).
For the SAE features of model A `[N, m_a]` and model B `[N, m_b]` on the same N samples:

    ρ_ij = corr(A_i, B_j)                                     Pearson correlation
    ρ_i  = max_j ρ_ij                                         per-feature MPPC, Eq. 8
    MPPC  = (1/m_a) Σ_i ρ_i                                   Eq. 1
    wMPPC = Σ_i S_i ρ_i / Σ_i S_i,   S_i = Σ_n a_i(n)         Eq. 2–3 (activation mass)
    wMPPC_(k) = Σ_i c_i^(k) ρ_i / C^(k)                       Eq. 4/14 (Top-k cumulative activation)
    Δ_i^{M→A,B} = S_i (ρ_i^{M→A} − ρ_i^{M→B})(ρ_i^{M→A} + ρ_i^{M→B})            Eq. 6
    Δ_i^{M→G,H} = S_i ((min_{G∈G} ρ_i^{M→G})² − (max_{H∈H} ρ_i^{M→H})²)          Eq. 7

Correlations are streamed over row chunks, so N is not bounded by memory: each model's activations
are a tensor/array `[N, m]`, sparse `Codes` (values/indices `[N, k]`), or an iterable of such row
chunks. Per chunk the co-moment Σ (a − ā)(b − b̄)ᵀ about the chunk means is one matmul of
centred columns, and chunks are merged with the pairwise update of Chan, Golub & LeVeque in float64.
Both the numerator and the variances are sums of squared deviations (M2), so N cancels exactly
(no mixing of N and N − 1 normalisations). The m_a × m_b matrix is never held beyond one column
block of B: ρ_i is a running maximum over blocks.

Dead features (constant over the N rows, judged from their exact min and max) get correlation 0,
never win a maximum and never produce NaN. With both sides sparse `Codes`, the co-moment is built
from the k_a·k_b active pairs of each row in float64, without densifying.

Deliberate differences from the authors' reference implementation: chunked and blocked (theirs is
one dense standardised matmul); one normalisation throughout (theirs mixes N − 1 and N); dead
features as above (theirs divide by a zero standard deviation); the min over group G in Eq. 7 is
a true minimum (their accumulator starts at 0, which forces Δ ≤ 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import special

from xsae.sae import Codes

#: one model's activations held in memory, or one row chunk of them
Activations = torch.Tensor | np.ndarray | Codes
#: in-memory activations, a re-iterable of row chunks, a one-shot iterator, or a zero-argument
#: callable returning a fresh iterable of row chunks (needed when several passes are made)
FeatureSource = Activations | Iterable[Activations] | Callable[[], Iterable[Activations]]

_END = object()


# ---- sources of row chunks -----------------------------------------------------------------------
def _n_rows(chunk: Activations) -> int:
    if isinstance(chunk, Codes):
        return int(chunk.values.shape[0])
    if not isinstance(chunk, torch.Tensor | np.ndarray):
        raise TypeError(f"a row chunk must be a tensor, array or Codes, got {type(chunk).__name__}")
    return int(chunk.shape[0])


def _take_rows(matrix: Activations, rows: slice | torch.Tensor) -> Activations:
    if isinstance(matrix, Codes):
        if isinstance(rows, torch.Tensor):
            return Codes(matrix.values[rows.to(matrix.values.device)],
                         matrix.indices[rows.to(matrix.indices.device)])
        return Codes(matrix.values[rows], matrix.indices[rows])
    if isinstance(rows, torch.Tensor):
        return matrix[rows.numpy()] if isinstance(matrix, np.ndarray) else matrix[rows.to(matrix.device)]
    return matrix[rows]


class _Source:
    """One model's activations as a stream of row chunks that can be restarted when possible."""

    def __init__(self, source: FeatureSource, n_features: int | None, name: str,
                 row_order: torch.Tensor | None = None):
        self.name = name
        self.n_features = n_features
        self.matrix: Activations | None = None
        self._factory: Callable[[], Iterable[Activations]] | None = None
        self._one_shot: Iterator[Activations] | None = None
        self.row_order = row_order
        if n_features is not None and n_features < 1:
            raise ValueError(f"n_features for {name} must be positive, got {n_features}")
        if isinstance(source, torch.Tensor | np.ndarray | Codes):
            self.matrix = source
            if not isinstance(source, Codes) and source.ndim != 2:
                raise ValueError(f"{name} must be 2-D [N, m], got shape {list(source.shape)}")
            self.n_rows = _n_rows(source)
            if row_order is not None and row_order.shape != (self.n_rows,):
                raise ValueError(f"row order of {name} has {row_order.shape[0]} rows, expected {self.n_rows}")
        elif row_order is not None:
            raise ValueError(f"{name} must be held in memory (tensor, array or Codes) to permute its rows")
        elif callable(source):
            self._factory = source
        elif isinstance(source, Iterable):
            if iter(source) is source:
                self._one_shot = source  # type: ignore[assignment]
            else:
                self._factory = lambda: source  # type: ignore[return-value]
        else:
            raise TypeError(f"{name} must be a tensor, array, Codes, an iterable of chunks or a callable "
                            f"returning one; got {type(source).__name__}")

    def rows(self, start: int, stop: int) -> Activations:
        assert self.matrix is not None
        if self.row_order is None:
            return _take_rows(self.matrix, slice(start, stop))
        return _take_rows(self.matrix, self.row_order[start:stop])

    def chunks(self) -> Iterator[Activations]:
        if self._factory is not None:
            return iter(self._factory())
        if self._one_shot is not None:
            chunks, self._one_shot = self._one_shot, None
            return chunks
        raise ValueError(f"{self.name} is a one-shot iterator and was already consumed; this computation "
                         "needs another pass: pass a list of chunks or a callable returning a fresh iterator")


def _single_chunks(source: _Source, chunk_rows: int) -> Iterator[Activations]:
    if source.matrix is not None:
        for start in range(0, source.n_rows, chunk_rows):
            yield source.rows(start, min(source.n_rows, start + chunk_rows))
    else:
        yield from source.chunks()


def _paired_chunks(a: _Source, b: _Source, chunk_rows: int) -> Iterator[tuple[Activations, Activations]]:
    """Row-aligned chunk pairs; an in-memory side is sliced to match a streamed side's chunks."""
    if a.matrix is not None and b.matrix is not None:
        if a.n_rows != b.n_rows:
            raise ValueError(f"{a.name} has {a.n_rows} rows but {b.name} has {b.n_rows}")
        for start in range(0, a.n_rows, chunk_rows):
            stop = min(a.n_rows, start + chunk_rows)
            yield a.rows(start, stop), b.rows(start, stop)
    elif a.matrix is not None or b.matrix is not None:
        memory, stream = (a, b) if a.matrix is not None else (b, a)
        start = 0
        for chunk in stream.chunks():
            stop = start + _n_rows(chunk)
            if stop > memory.n_rows:
                raise ValueError(f"{stream.name} yields more rows than the {memory.n_rows} of {memory.name}")
            sliced = memory.rows(start, stop)
            yield (sliced, chunk) if memory is a else (chunk, sliced)
            start = stop
        if start != memory.n_rows:
            raise ValueError(f"{stream.name} yields {start} rows but {memory.name} has {memory.n_rows}")
    else:
        for chunk_a, chunk_b in itertools.zip_longest(a.chunks(), b.chunks(), fillvalue=_END):
            if chunk_a is _END or chunk_b is _END:
                raise ValueError(f"{a.name} and {b.name} yield different numbers of chunks")
            if _n_rows(chunk_a) != _n_rows(chunk_b):
                raise ValueError(f"row chunks differ: {_n_rows(chunk_a)} rows in {a.name}, "
                                 f"{_n_rows(chunk_b)} in {b.name}")
            yield chunk_a, chunk_b


def _check_codes(codes: Codes, source: _Source) -> None:
    if source.n_features is None:
        raise ValueError(f"{source.name} yields Codes: pass its number of features (n_features) too")
    if codes.values.dim() != 2 or codes.values.shape != codes.indices.shape:
        raise ValueError(f"Codes of {source.name} need values and indices of one shape [B, k], got "
                         f"{list(codes.values.shape)} and {list(codes.indices.shape)}")
    if codes.indices.numel():
        low, high = int(codes.indices.min()), int(codes.indices.max())
        if low < 0 or high >= source.n_features:
            raise ValueError(f"Codes of {source.name} have feature indices in [{low}, {high}], outside "
                             f"[0, {source.n_features})")
        # Zero-valued entries may repeat an index (BatchTopK pads rows with index 0, value 0);
        # two non-zero values for one feature in one row would be ambiguous.
        positions = torch.arange(codes.indices.shape[1], device=codes.indices.device)
        keys = torch.where(codes.values != 0, codes.indices, -1 - positions)
        ordered = keys.sort(dim=1).values
        if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
            raise ValueError(f"Codes of {source.name} repeat a feature index with non-zero values in a row")
    if not bool(torch.isfinite(codes.values).all()):
        raise ValueError(f"Codes of {source.name} contain NaN or Inf values")


def _dense(chunk: Activations, source: _Source, device: torch.device, dtype: torch.dtype,
           columns: tuple[int, int] | None = None) -> torch.Tensor:
    """`[B, m]` (or `[B, stop − start]` for `columns`) on `device` in `dtype`; always a new tensor."""
    if isinstance(chunk, Codes):
        _check_codes(chunk, source)
        assert source.n_features is not None
        start, stop = columns if columns is not None else (0, source.n_features)
        stop = min(stop, source.n_features)
        indices = chunk.indices.to(device, torch.long)
        values = chunk.values.to(device, dtype)
        if columns is not None:
            inside = (indices >= start) & (indices < stop)
            indices = torch.where(inside, indices - start, 0)
            values = values * inside
        out = torch.zeros(indices.shape[0], stop - start, dtype=dtype, device=device)
        return out.scatter_add_(1, indices, values)
    tensor = torch.from_numpy(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
    if tensor.dim() != 2:
        raise ValueError(f"chunks of {source.name} must be 2-D [B, m], got shape {list(tensor.shape)}")
    if source.n_features is None:
        source.n_features = int(tensor.shape[1])
    elif tensor.shape[1] != source.n_features:
        raise ValueError(f"chunk of {source.name} has {tensor.shape[1]} features, "
                         f"expected {source.n_features}")
    if columns is not None:
        tensor = tensor[:, columns[0]:columns[1]]
    out = tensor.to(device=device, dtype=dtype, copy=True)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"activations of {source.name} contain NaN or Inf")
    return out


# ---- per-feature moments -----------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnMoments:
    """Per-feature float64 statistics over N rows, each `[m]`: mean, M2 = Σ_n (x − mean)², min, max."""

    n_rows: int
    mean: torch.Tensor
    m2: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor

    @property
    def activation_mass(self) -> torch.Tensor:
        """S_i = Σ_n a_i(n) `[m]`: the weights of Eq. 3 and the S_i^M of Eqs. 6–7."""
        return self.mean * self.n_rows

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (÷N) `[m]`."""
        return (self.m2 / self.n_rows).sqrt()

    @property
    def alive(self) -> torch.Tensor:
        """bool `[m]`: the feature takes at least two values. Decided from the exact min and max,
        not from M2, which rounding leaves slightly positive for a constant column."""
        return (self.maximum > self.minimum) & (self.m2 > 0)

    def columns(self, start: int, stop: int) -> ColumnMoments:
        return ColumnMoments(self.n_rows, self.mean[start:stop], self.m2[start:stop],
                             self.minimum[start:stop], self.maximum[start:stop])

    def to(self, device: torch.device | str) -> ColumnMoments:
        return ColumnMoments(self.n_rows, self.mean.to(device), self.m2.to(device), self.minimum.to(device),
                             self.maximum.to(device))

    @staticmethod
    def concatenate(parts: Sequence[ColumnMoments]) -> ColumnMoments:
        return ColumnMoments(parts[0].n_rows, *(torch.cat([getattr(part, name) for part in parts])
                                                for name in ("mean", "m2", "minimum", "maximum")))


class _RunningMoments:
    """Chan et al.'s pairwise merge of (n, mean, M2) plus running min/max; returns what a
    co-moment merge needs."""

    def __init__(self, n_features: int, device: torch.device):
        self.n = 0
        self.mean = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.minimum = torch.full((n_features,), math.inf, dtype=torch.float64, device=device)
        self.maximum = torch.full((n_features,), -math.inf, dtype=torch.float64, device=device)

    def merge(self, chunk: ColumnMoments) -> tuple[torch.Tensor, float]:
        """Adds a chunk's moments; returns (chunk mean − previous mean, n·n_c/(n + n_c))."""
        total = self.n + chunk.n_rows
        delta = chunk.mean - self.mean
        weight = self.n * chunk.n_rows / total
        self.m2 += chunk.m2 + delta.square() * weight
        self.mean += delta * (chunk.n_rows / total)
        torch.minimum(self.minimum, chunk.minimum, out=self.minimum)
        torch.maximum(self.maximum, chunk.maximum, out=self.maximum)
        self.n = total
        return delta, weight

    def result(self) -> ColumnMoments:
        return ColumnMoments(self.n, self.mean, self.m2, self.minimum, self.maximum)


def _codes_moments(codes: Codes, n_features: int, device: torch.device) -> ColumnMoments:
    """Exact float64 moments of a Codes chunk without densifying. Only non-zero entries are read
    (zero-valued padding is skipped); the B − nnz_j zero cells of column j each contribute
    mean_j² to M2 and 0 to its min and max."""
    n = codes.values.shape[0]
    values = codes.values.to(device, torch.float64).reshape(-1)
    nonzero = values != 0
    values = values[nonzero]
    indices = codes.indices.to(device, torch.long).reshape(-1)[nonzero]
    zeros_like = torch.zeros(n_features, dtype=torch.float64, device=device)
    mean = zeros_like.clone().index_add_(0, indices, values) / n
    m2 = zeros_like.clone().index_add_(0, indices, (values - mean[indices]).square())
    n_zeros = n - torch.bincount(indices, minlength=n_features).to(torch.float64)
    has_zeros = torch.full_like(n_zeros, math.inf).masked_fill_(n_zeros > 0, 0.0)  # min/max start
    minimum = has_zeros.scatter_reduce(0, indices, values, "amin")
    maximum = (-has_zeros).scatter_reduce(0, indices, values, "amax")
    return ColumnMoments(n, mean, m2 + n_zeros * mean.square(), minimum, maximum)


def _centre(dense: torch.Tensor, chunk: Activations, source: _Source, device: torch.device,
            columns: tuple[int, int] | None = None) -> ColumnMoments:
    """Subtracts the chunk's column means from its densified copy `dense` (in place) and returns
    the chunk's moments: exact from the sparse entries for Codes (no dense reductions), else
    reduced from `dense`."""
    if not isinstance(chunk, Codes):
        return _dense_moments(dense)
    assert source.n_features is not None
    moments = _codes_moments(chunk, source.n_features, device)
    if columns is not None:
        moments = moments.columns(*columns)
    dense -= moments.mean.to(dense.dtype)
    return moments


def _dense_moments(dense: torch.Tensor) -> ColumnMoments:
    """Moments of a dense chunk `[B, m]`, reduced in its own dtype (torch's cascade summation; an
    upcasting float64 sum is ~7× slower, and in float32 both err by ~1e-7 relative, the matmul's
    own order). Centres `dense` in place."""
    n = dense.shape[0]
    minimum, maximum = dense.amin(0).to(torch.float64), dense.amax(0).to(torch.float64)
    mean = dense.sum(0).to(torch.float64) / n
    dense -= mean.to(dense.dtype)
    return ColumnMoments(n, mean, dense.square().sum(0).to(torch.float64), minimum, maximum)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def column_moments(source: FeatureSource, *, n_features: int | None = None, chunk_rows: int = 4096,
                   device: torch.device | str | None = None) -> ColumnMoments:
    """Float64 mean and M2 of every feature of `source` (`[N, m]`, Codes or row chunks), streamed."""
    _check_positive(chunk_rows=chunk_rows)
    device = _resolve_device(device)
    src = _Source(source, n_features, "source")
    running: _RunningMoments | None = None
    for chunk in _single_chunks(src, chunk_rows):
        n_chunk = _n_rows(chunk)
        if n_chunk == 0:
            continue
        if isinstance(chunk, Codes):
            _check_codes(chunk, src)
            assert src.n_features is not None
            moments = _codes_moments(chunk, src.n_features, device)
        else:
            moments = _dense_moments(_dense(chunk, src, device, torch.float64))
        if running is None:
            assert src.n_features is not None
            running = _RunningMoments(src.n_features, device)
        running.merge(moments)
    if running is None:
        raise ValueError("source has no rows")
    return running.result().to("cpu")


# ---- correlations --------------------------------------------------------------------------------
def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _co_moment_block(a: _Source, b: _Source, columns: tuple[int, int], *, chunk_rows: int,
                     sparse: bool | None, matmul_dtype: torch.dtype, device: torch.device
                     ) -> tuple[torch.Tensor, ColumnMoments, ColumnMoments, bool]:
    """One pass over the rows: C = Σ_n (a − ā)(b − b̄)ᵀ `[m_a, stop − start]` for B's `columns`, float64.

    Dense chunks: centred in `matmul_dtype`, one matmul per chunk, merged in float64 by Chan's
    update C += C_chunk + n·n_c/(n + n_c) · δ_a δ_bᵀ. Products of centred columns have no
    cancellation, so a float32 matmul costs only ~1e-7 relative error per chunk, and the float64
    sum keeps that error from growing with N. Sparse chunks (both sides Codes): raw Σ a bᵀ
    accumulated exactly in float64 from the k_a·k_b products of each row (never densified), then
    C = Σ a bᵀ − N ā b̄ᵀ once; the float64 rounding error of that subtraction is about
    1e-16·|ā b̄|/(σ_a σ_b) in the correlation, negligible unless a feature fires on almost every row
    with an almost constant value.
    """
    start, stop = columns
    running_a = running_b = None
    cross: torch.Tensor | None = None
    product: torch.Tensor | None = None
    for chunk_a, chunk_b in _paired_chunks(a, b, chunk_rows):
        n_chunk = _n_rows(chunk_a)
        if n_chunk == 0:
            continue
        if sparse is None:
            sparse = isinstance(chunk_a, Codes) and isinstance(chunk_b, Codes)
        if sparse:
            if not (isinstance(chunk_a, Codes) and isinstance(chunk_b, Codes)):
                raise ValueError("method='sparse' needs Codes chunks on both sides")
            _check_codes(chunk_a, a)
            _check_codes(chunk_b, b)
        else:
            dense_a = _dense(chunk_a, a, device, matmul_dtype)
            dense_b = _dense(chunk_b, b, device, matmul_dtype, columns)
        assert a.n_features is not None and b.n_features is not None
        if cross is None:
            stop = min(stop, b.n_features)
            columns = (start, stop)
            cross = torch.zeros(a.n_features, stop - start, dtype=torch.float64, device=device)
            running_a = _RunningMoments(a.n_features, device)
            running_b = _RunningMoments(stop - start, device)
        assert running_a is not None and running_b is not None
        if sparse:
            assert isinstance(chunk_a, Codes) and isinstance(chunk_b, Codes)
            running_a.merge(_codes_moments(chunk_a, a.n_features, device))
            running_b.merge(_codes_moments(chunk_b, b.n_features, device).columns(start, stop))
            _add_sparse_products(cross, chunk_a, chunk_b, start, b.n_features, device)
        else:
            delta_a, weight = running_a.merge(_centre(dense_a, chunk_a, a, device))
            delta_b, _ = running_b.merge(_centre(dense_b, chunk_b, b, device, (start, stop)))
            if matmul_dtype == torch.float64:
                cross.addmm_(dense_a.T, dense_b)
            else:  # one reused float32 product buffer: no fresh allocation per chunk
                if product is None:
                    product = torch.empty(cross.shape, dtype=matmul_dtype, device=device)
                torch.mm(dense_a.T, dense_b, out=product)
                for row in range(0, cross.shape[0], 1024):  # the float64 cast of a slice, not of all
                    cross[row:row + 1024] += product[row:row + 1024]
            if weight:
                cross.addr_(delta_a, delta_b, alpha=weight)
            del dense_a, dense_b  # free this chunk before the next one is densified
    if cross is None or running_a is None or running_b is None:
        raise ValueError("the sources have no rows")
    moments_a, moments_b = running_a.result(), running_b.result()
    if sparse:
        cross.addr_(moments_a.mean, moments_b.mean, alpha=-float(moments_a.n_rows))
    return cross, moments_a, moments_b, bool(sparse)


def _add_sparse_products(cross: torch.Tensor, codes_a: Codes, codes_b: Codes, start: int, n_features_b: int,
                         device: torch.device) -> None:
    """cross[i, j − start] += Σ_n a_i(n) b_j(n) over the rows' active pairs (k_a · k_b per row)."""
    width = cross.shape[1]
    index_a = codes_a.indices.to(device, torch.long)
    index_b = codes_b.indices.to(device, torch.long)
    values_a = codes_a.values.to(device, torch.float64)
    values_b = codes_b.values.to(device, torch.float64)
    if start != 0 or width != n_features_b:  # keep B's features inside the block (others add 0)
        inside = (index_b >= start) & (index_b < start + width)
        values_b = values_b * inside
        index_b = torch.where(inside, index_b - start, 0)
    flat = (index_a.unsqueeze(2) * width + index_b.unsqueeze(1)).reshape(-1)
    products = (values_a.unsqueeze(2) * values_b.unsqueeze(1)).reshape(-1)
    cross.view(-1).index_add_(0, flat, products)


def _to_correlation(cross: torch.Tensor, moments_a: ColumnMoments, moments_b: ColumnMoments
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In place: C / sqrt(M2_a M2_bᵀ), clamped to [−1, 1]; rows/columns of dead features set to 0."""
    alive_a, alive_b = moments_a.alive, moments_b.alive
    scale_a = torch.where(alive_a, moments_a.m2, 1.0).rsqrt()
    scale_b = torch.where(alive_b, moments_b.m2, 1.0).rsqrt()
    cross *= scale_a.unsqueeze(1)
    cross *= scale_b.unsqueeze(0)
    cross.clamp_(-1.0, 1.0)
    cross[~alive_a] = 0.0
    cross[:, ~alive_b] = 0.0
    return cross, alive_a, alive_b


def _source_pair(a: FeatureSource, b: FeatureSource, n_features_a: int | None, n_features_b: int | None,
                 row_order_b: torch.Tensor | None = None) -> tuple[_Source, _Source]:
    return _Source(a, n_features_a, "a"), _Source(b, n_features_b, "b", row_order_b)


def _check_options(chunk_rows: int, block_elements: int, matmul_dtype: torch.dtype, method: str) -> None:
    _check_positive(chunk_rows=chunk_rows, block_elements=block_elements)
    if matmul_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64, got {matmul_dtype}")
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")


def _first_feature_count(source: _Source) -> int:
    """m of a source: its n_features, or the width of an in-memory dense matrix."""
    if source.n_features is not None:
        return source.n_features
    if source.matrix is not None and not isinstance(source.matrix, Codes):
        return int(source.matrix.shape[1])
    raise ValueError(f"pass n_features for {source.name} (it is streamed or given as Codes)")


def correlation_with_moments(a: FeatureSource, b: FeatureSource, *, n_features_a: int | None = None,
                             n_features_b: int | None = None, chunk_rows: int = 4096,
                             matmul_dtype: torch.dtype = torch.float64, method: str = "auto",
                             device: torch.device | str | None = None, names: tuple[str, str] = ("a", "b")
                             ) -> tuple[torch.Tensor, ColumnMoments, ColumnMoments]:
    """All Pearson correlations corr(A_i, B_j) `[m_a, m_b]` float64 on `device`, in one pass over
    the rows (a one-shot iterator of chunks is enough), with both sides' column moments.

    Entries involving a dead (constant) feature are 0. A float64 matmul (the default) matches
    `np.corrcoef` to ~1e-13. `names` name the two sides in error messages.
    """
    _check_options(chunk_rows, 1, matmul_dtype, method)
    src_a, src_b = _Source(a, n_features_a, names[0]), _Source(b, n_features_b, names[1])
    cross, moments_a, moments_b, _ = _co_moment_block(
        src_a, src_b, (0, 2**62),  # all of B's columns: the block is clamped to m_b
        chunk_rows=chunk_rows, sparse=None if method == "auto" else method == "sparse",
        matmul_dtype=matmul_dtype, device=_resolve_device(device))
    corr, _, _ = _to_correlation(cross, moments_a, moments_b)
    return corr, moments_a, moments_b


def correlation_matrix(a: FeatureSource, b: FeatureSource, *, n_features_a: int | None = None,
                       n_features_b: int | None = None, chunk_rows: int = 4096,
                       matmul_dtype: torch.dtype = torch.float64, method: str = "auto",
                       device: torch.device | str | None = None) -> torch.Tensor:
    """`correlation_with_moments`'s matrix, on the CPU. For small m (tests, inspection) and for
    post-hoc alignment (`xsae.alignment`); `max_correlation` is the bounded-memory path."""
    return correlation_with_moments(a, b, n_features_a=n_features_a, n_features_b=n_features_b,
                                    chunk_rows=chunk_rows, matmul_dtype=matmul_dtype, method=method,
                                    device=device)[0].cpu()


@dataclass(frozen=True)
class MaxCorrelation:
    """ρ_i = max_j corr(A_i, B_j) of every feature of A (Eq. 8), with the moments that produced it.

    `rho` `[m_a]` float64: 0 for a dead feature of A, and when every feature of B is dead.
    `best_match` `[m_a]` int64: the j attaining the maximum (lowest j on ties), −1 where none.
    """

    rho: torch.Tensor
    best_match: torch.Tensor
    moments_a: ColumnMoments
    moments_b: ColumnMoments

    @property
    def n_rows(self) -> int:
        return self.moments_a.n_rows

    @property
    def activation_mass(self) -> torch.Tensor:
        """S_i^A `[m_a]`, the wMPPC weights of Eq. 3."""
        return self.moments_a.activation_mass

    @property
    def alive_a(self) -> torch.Tensor:
        return self.moments_a.alive


def max_correlation(a: FeatureSource, b: FeatureSource, *, n_features_a: int | None = None,
                    n_features_b: int | None = None, chunk_rows: int = 4096, block_elements: int = 2**26,
                    matmul_dtype: torch.dtype = torch.float32, method: str = "auto",
                    device: torch.device | str | None = None) -> MaxCorrelation:
    """Per-feature maximum correlation of A's features over B's (Eq. 8), streamed and blocked.

    `a` `[N, m_a]`, `b` `[N, m_b]`: tensors, arrays, `Codes` (then `n_features_*` is required), or
    row chunks (row-aligned between a and b; an in-memory side is sliced to match; a streamed `a`
    needs `n_features_a`). B's columns are taken in blocks of `block_elements // m_a` columns, one
    pass over the rows per block. Memory: the float64 `[m_a, block]` co-moment (8·block_elements
    bytes, 512 MiB by default, which holds 8192 × 8192 in one block), for a float32 matmul one
    float32 product of half that, and a few densified chunks (4·chunk_rows·(m_a + block) bytes
    each); the sparse method needs only the co-moment. Several blocks need several passes: then a
    streamed source must be re-iterable (a list, or a callable returning a fresh iterator).

    `method`: "sparse" (both sides Codes; exact float64 products of the k_a·k_b active pairs per
    row instead of m_a·m_b, ~10× faster than dense at m = 8192, k = 32 on CPU), "dense" (centred
    matmul in `matmul_dtype`), or "auto" (sparse when both sides are Codes). A float32 matmul
    gives correlations to ~1e-5; float64 matches `np.corrcoef` to ~1e-13. Dead (constant)
    features of B never attain the maximum; a dead feature of A gets ρ = 0 and best_match −1
    (exclude it from MPPC with `alive_a` if wanted; an all-zero feature has S_i = 0, so wMPPC
    ignores it anyway).
    """
    _check_options(chunk_rows, block_elements, matmul_dtype, method)
    device = _resolve_device(device)
    src_a, src_b = _source_pair(a, b, n_features_a, n_features_b)
    return _max_correlation(src_a, src_b, chunk_rows=chunk_rows, block_elements=block_elements,
                            matmul_dtype=matmul_dtype, method=method, device=device)


def _max_correlation(src_a: _Source, src_b: _Source, *, chunk_rows: int, block_elements: int,
                     matmul_dtype: torch.dtype, method: str, device: torch.device) -> MaxCorrelation:
    m_a = _first_feature_count(src_a)
    m_b = src_b.n_features if src_b.n_features is not None else (
        _first_feature_count(src_b) if src_b.matrix is not None else None)
    sparse = None if method == "auto" else method == "sparse"
    best = torch.full((m_a,), -math.inf, dtype=torch.float64, device=device)
    best_match = torch.full((m_a,), -1, dtype=torch.long, device=device)
    moments_a: ColumnMoments | None = None
    parts_b: list[ColumnMoments] = []
    width, start = max(1, block_elements // m_a), 0
    while m_b is None or start < m_b:
        cross, block_a, block_b, sparse = _co_moment_block(
            src_a, src_b, (start, start + width), chunk_rows=chunk_rows, sparse=sparse,
            matmul_dtype=matmul_dtype, device=device)
        m_b = src_b.n_features
        if moments_a is None:
            moments_a = block_a
        parts_b.append(block_b)
        corr, _, alive_b = _to_correlation(cross, moments_a, block_b)
        corr[:, ~alive_b] = -math.inf
        block_best, block_match = corr.max(dim=1)
        better = block_best > best
        best = torch.where(better, block_best, best)
        best_match = torch.where(better, block_match + start, best_match)
        start += corr.shape[1]
        del corr, cross
    assert moments_a is not None
    moments_b = ColumnMoments.concatenate(parts_b)
    found = torch.isfinite(best) & moments_a.alive
    rho = torch.where(found, best, 0.0)
    best_match = torch.where(found, best_match, -1)
    return MaxCorrelation(rho.cpu(), best_match.cpu(), moments_a.to("cpu"), moments_b.to("cpu"))


# ---- MPPC and wMPPC --------------------------------------------------------------------------------
def _as_float64(values: torch.Tensor | np.ndarray | Sequence[float], name: str) -> torch.Tensor:
    array = values.detach().cpu() if isinstance(values, torch.Tensor) else np.asarray(values)
    tensor = torch.as_tensor(array, dtype=torch.float64)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D [m], got shape {list(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return tensor


def mppc(rho: torch.Tensor | np.ndarray, alive: torch.Tensor | np.ndarray | None = None) -> float:
    """MPPC (Eq. 1): the mean of ρ_i, over the features where `alive` is true if given."""
    rho_t = _as_float64(rho, "rho")
    if alive is not None:
        mask = torch.as_tensor(np.asarray(alive) if not isinstance(alive, torch.Tensor) else alive.cpu(),
                               dtype=torch.bool)
        if mask.shape != rho_t.shape:
            raise ValueError(f"alive has shape {list(mask.shape)}, expected {list(rho_t.shape)}")
        rho_t = rho_t[mask]
    if rho_t.numel() == 0:
        raise ValueError("MPPC of no features is undefined")
    return float(rho_t.mean())


def wmppc(rho: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray) -> float:
    """wMPPC (Eq. 2): Σ w_i ρ_i / Σ w_i for nonnegative weights, e.g. S_i (Eq. 3) or c_i^(k) (Eq. 4)."""
    rho_t = _as_float64(rho, "rho")
    weights_t = _as_float64(weights, "weights")
    if weights_t.shape != rho_t.shape:
        raise ValueError(f"weights have shape {list(weights_t.shape)}, rho {list(rho_t.shape)}")
    if bool((weights_t < 0).any()):
        raise ValueError(f"weights must be nonnegative, smallest is {float(weights_t.min())}")
    total = float(weights_t.sum())
    if total <= 0:
        raise ValueError("weights sum to zero: wMPPC is undefined (no feature ever activates)")
    return float((weights_t * rho_t).sum()) / total


def rank_masses(source: FeatureSource, max_rank: int, *, n_features: int | None = None,
                ranking: str = "sample", chunk_rows: int = 4096,
                device: torch.device | str | None = None) -> torch.Tensor:
    """a_i^(t) for t = 1..max_rank: `[max_rank, m]` float64, the activation added at each Top-k rank.

    The order statistics a_i^(1) ≥ a_i^(2) ≥ … of Eq. 12 admit two readings; the default follows
    the paper's use (Corollary 1 "relaxing the sparsity of the Top-k SAE"):
      "sample": rank t is each sample's t-th largest activation, so a_i^(t) = Σ_n a_i(n)·[i is
        n's rank-t feature] and c_i^(k) = Σ_t≤k a_i^(t) is feature i's mass under a Top-k code
        (for Codes from a TopK SAE with this k, c_i^(k) = S_i). Ties within a row are broken by
        the sort, which only moves equal values between ranks.
      "feature": the literal per-feature order statistics over the dataset: a_i^(t) is feature
        i's t-th largest activation (0 if N < t).
    Activations must be nonnegative (ReLU outputs). Codes can give ranks up to their k only.
    """
    _check_positive(max_rank=max_rank, chunk_rows=chunk_rows)
    if ranking not in ("sample", "feature"):
        raise ValueError(f"ranking must be 'sample' or 'feature', got {ranking!r}")
    device = _resolve_device(device)
    src = _Source(source, n_features, "source")
    masses: torch.Tensor | None = None
    n_rows = 0
    for chunk in _single_chunks(src, chunk_rows):
        if _n_rows(chunk) == 0:
            continue
        n_rows += _n_rows(chunk)
        if isinstance(chunk, Codes) and ranking == "sample":
            _check_codes(chunk, src)
            if max_rank > chunk.values.shape[1]:
                raise ValueError(f"max_rank={max_rank} exceeds the codes' k={chunk.values.shape[1]}: "
                                 "pass the dense pre-TopK activations to rank further")
            values, order = chunk.values.to(device, torch.float64).sort(dim=1, descending=True, stable=True)
            indices = chunk.indices.to(device, torch.long).gather(1, order)
        else:
            dense = _dense(chunk, src, device, torch.float64)
            if ranking == "sample":
                if max_rank > dense.shape[1]:
                    raise ValueError(f"max_rank={max_rank} exceeds the {dense.shape[1]} features")
                values, indices = dense.topk(max_rank, dim=1)
        assert src.n_features is not None
        if masses is None:
            masses = torch.zeros(max_rank, src.n_features, dtype=torch.float64, device=device)
        if ranking == "sample":
            values, indices = values[:, :max_rank], indices[:, :max_rank]
            if bool((values < 0).any()):
                raise ValueError(f"activations must be nonnegative, found {float(values.min())}")
            ranks = torch.arange(max_rank, device=device) * src.n_features
            masses.view(-1).index_add_(0, (indices + ranks).reshape(-1), values.reshape(-1))
        else:
            if bool((dense < 0).any()):
                raise ValueError(f"activations must be nonnegative, found {float(dense.min())}")
            top = dense.topk(min(max_rank, dense.shape[0]), dim=0).values
            masses = torch.cat([masses, top]).topk(max_rank, dim=0).values
    if masses is None:
        raise ValueError("source has no rows")
    return masses.cpu()


def topk_cumulative_activation(source: FeatureSource, k: int, *, n_features: int | None = None,
                               ranking: str = "sample", chunk_rows: int = 4096,
                               device: torch.device | str | None = None) -> torch.Tensor:
    """c_i^(k) = Σ_{t≤k} a_i^(t) `[m]` (Eq. 12), the weights of the Top-k wMPPC (Eq. 4); see `rank_masses`."""
    return rank_masses(source, k, n_features=n_features, ranking=ranking, chunk_rows=chunk_rows,
                       device=device).sum(0)


def wmppc_increment(wmppc_k: float, total_k: float, added: torch.Tensor | np.ndarray,
                    rho: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Proposition 2: (wMPPC_(k+1), C^(k+1)) from wMPPC_(k), C^(k) and the added a_i^(k+1) `[m]`.

    wMPPC_(k+1) = wMPPC_(k) + Σ_i a_i^(k+1) (ρ_i − wMPPC_(k)) / C^(k+1), C^(k+1) = C^(k) + Σ_i a_i^(k+1)
    (Eq. 24; Eq. 15 prints MPPC_(k) where the proof, Eq. 23–24, has wMPPC_(k)). ρ is held fixed, as in
    the proposition. Starting from (any value, 0) gives wMPPC_(1).
    """
    added_t, rho_t = _as_float64(added, "added"), _as_float64(rho, "rho")
    if added_t.shape != rho_t.shape:
        raise ValueError(f"added has shape {list(added_t.shape)}, rho {list(rho_t.shape)}")
    if bool((added_t < 0).any()) or total_k < 0:
        raise ValueError("activations and C^(k) must be nonnegative")
    total_next = total_k + float(added_t.sum())
    if total_next <= 0:
        raise ValueError("C^(k+1) is zero: wMPPC_(k+1) is undefined")
    return wmppc_k + float((added_t * (rho_t - wmppc_k)).sum()) / total_next, total_next


def monotonicity_margin(added: torch.Tensor | np.ndarray, rho: torch.Tensor | np.ndarray,
                        wmppc_k: float) -> float:
    """Σ_i a_i^(k+1) (ρ_i − wMPPC_(k)) (Corollary 1, Eq. 5): ≥ 0 iff wMPPC_(k+1) ≥ wMPPC_(k)."""
    added_t, rho_t = _as_float64(added, "added"), _as_float64(rho, "rho")
    return float((added_t * (rho_t - wmppc_k)).sum())


def wmppc_topk_curve(rho: torch.Tensor | np.ndarray, masses: torch.Tensor | np.ndarray) -> torch.Tensor:
    """wMPPC_(k) for k = 1..K `[K]` from `rank_masses` `[K, m]`, by Proposition 2's incremental update."""
    masses_t = torch.as_tensor(np.asarray(masses) if not isinstance(masses, torch.Tensor) else masses.cpu(),
                               dtype=torch.float64)
    if masses_t.dim() != 2:
        raise ValueError(f"masses must be [K, m], got shape {list(masses_t.shape)}")
    curve, value, total = [], 0.0, 0.0
    for added in masses_t:
        value, total = wmppc_increment(value, total, added, rho)
        curve.append(value)
    return torch.tensor(curve, dtype=torch.float64)


# ---- layers ---------------------------------------------------------------------------------------
def layer_pair_correlations(layers_a: Mapping[Hashable, FeatureSource],
                            layers_b: Mapping[Hashable, FeatureSource], *, n_features_a: int | None = None,
                            n_features_b: int | None = None,
                            chunk_rows: int = 4096, block_elements: int = 2**26,
                            matmul_dtype: torch.dtype = torch.float32, method: str = "auto",
                            device: torch.device | str | None = None
                            ) -> dict[tuple[Hashable, Hashable], MaxCorrelation]:
    """`max_correlation` for every (layer of A, layer of B), keyed in the mappings' layer order.

    Each layer's activations are read once per layer of the other model, so streamed layers must
    be re-iterable.
    """
    if not layers_a or not layers_b:
        raise ValueError("layers_a and layers_b need at least one layer each")
    return {(layer_a, layer_b): max_correlation(source_a, source_b, n_features_a=n_features_a,
                                                n_features_b=n_features_b, chunk_rows=chunk_rows,
                                                block_elements=block_elements, matmul_dtype=matmul_dtype,
                                                method=method, device=device)
            for layer_a, source_a in layers_a.items() for layer_b, source_b in layers_b.items()}


def _layer_orders(pairs: LayerPairs) -> tuple[list, list]:
    if not pairs:
        raise ValueError("no layer pairs")
    layers_a = list(dict.fromkeys(layer_a for layer_a, _ in pairs))
    layers_b = list(dict.fromkeys(layer_b for _, layer_b in pairs))
    missing = [(la, lb) for la in layers_a for lb in layers_b if (la, lb) not in pairs]
    if missing:
        raise ValueError(f"layer pairs missing: {missing[:5]}")
    return layers_a, layers_b


def _score(result: MaxCorrelation, rho: torch.Tensor, weighting: str) -> float:
    if weighting == "mass":
        return wmppc(rho, result.activation_mass)
    if weighting == "uniform":
        return mppc(rho)
    raise ValueError(f"weighting must be 'mass' (wMPPC) or 'uniform' (MPPC), got {weighting!r}")


def layerwise_table(pairs: LayerPairs) -> pd.DataFrame:
    """One row per (layer_a, layer_b) with MPPC and wMPPC: the layer × layer map of Figure 1."""
    layers_a, layers_b = _layer_orders(pairs)
    rows = [{"layer_a": la, "layer_b": lb, "mppc": _score(pairs[la, lb], pairs[la, lb].rho, "uniform"),
             "wmppc": _score(pairs[la, lb], pairs[la, lb].rho, "mass")} for la in layers_a for lb in layers_b]
    return pd.DataFrame(rows, columns=["layer_a", "layer_b", "mppc", "wmppc"])


LayerPairs = Mapping[tuple[Hashable, Hashable], MaxCorrelation]


#: How "all layers" scores combine A's layers: `layer_mean`, the authors' code (each layer's score,
#: averaged with weights proportional to its feature count: equal for same-width transformer
#: layers), or `pooled` (one wMPPC over every feature of every layer, Σ_i S_i ρ_i / Σ_i S_i).
ALL_LAYERS_READINGS = ("layer_mean", "pooled")


def all_layers_score(pairs: LayerPairs, weighting: str = "mass", reading: str = "layer_mean") -> float:
    """"All layers" (Tables 1, 7–8): per feature i of A, ρ_i = max over every feature of every layer
    of B; combined over A's layers as `reading` says (`ALL_LAYERS_READINGS`)."""
    layers_a, layers_b = _layer_orders(pairs)
    rhos = [torch.stack([pairs[la, lb].rho for lb in layers_b]).amax(0) for la in layers_a]
    results = [pairs[la, layers_b[0]] for la in layers_a]
    if reading == "layer_mean":
        scores = [_score(result, rho, weighting) for result, rho in zip(results, rhos, strict=True)]
        return float(np.average(scores, weights=[len(rho) for rho in rhos]))
    if reading == "pooled":
        rho = torch.cat(rhos)
        if weighting == "mass":
            return wmppc(rho, torch.cat([torch.as_tensor(r.activation_mass) for r in results]))
        return _score(results[0], rho, weighting)
    raise ValueError(f"reading must be one of {ALL_LAYERS_READINGS}, got {reading!r}")


def last_layer_score(pairs: LayerPairs, weighting: str = "mass") -> float:
    """"Last layer" (Tables 2, 9–10): A's last layer against B's last, in the mappings' layer order."""
    layers_a, layers_b = _layer_orders(pairs)
    result = pairs[layers_a[-1], layers_b[-1]]
    return _score(result, result.rho, weighting)


# ---- Comparative Sharedness -------------------------------------------------------------------------
def _rank_descending(values: np.ndarray) -> np.ndarray:
    """1 for the largest; ties keep feature order."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def comparative_sharedness(activation_mass: torch.Tensor | np.ndarray, rho_to_a: torch.Tensor | np.ndarray,
                           rho_to_b: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """Δ_i^{M→A,B} = S_i (ρ_i^{M→A} − ρ_i^{M→B})(ρ_i^{M→A} + ρ_i^{M→B}) (Eq. 6), one row per feature of M.

    Columns: feature, activation_mass, rho_a, rho_b, sharedness, rank (1 = best shared with A
    rather than B). As in the paper the product is ρ_A² − ρ_B², so a negative ρ counts by its
    magnitude; maxima over thousands of features are in practice ≥ 0.
    """
    mass = _as_float64(activation_mass, "activation_mass")
    rho_a, rho_b = _as_float64(rho_to_a, "rho_to_a"), _as_float64(rho_to_b, "rho_to_b")
    if not mass.shape == rho_a.shape == rho_b.shape:
        raise ValueError(f"shapes differ: activation_mass {list(mass.shape)}, rho_to_a {list(rho_a.shape)}, "
                         f"rho_to_b {list(rho_b.shape)}")
    sharedness = (mass * (rho_a - rho_b) * (rho_a + rho_b)).numpy()
    return pd.DataFrame({"feature": np.arange(len(mass)), "activation_mass": mass.numpy(),
                         "rho_a": rho_a.numpy(), "rho_b": rho_b.numpy(), "sharedness": sharedness,
                         "rank": _rank_descending(sharedness)})


def generalized_comparative_sharedness(activation_mass: torch.Tensor | np.ndarray,
                                       rho_by_model: Mapping[str, torch.Tensor | np.ndarray],
                                       shared_with: Sequence[str],
                                       not_shared_with: Sequence[str]) -> pd.DataFrame:
    """Δ_i^{M→G,H} = S_i ((min_{G∈G} ρ_i^{M→G})² − (max_{H∈H} ρ_i^{M→H})²) (Eq. 7), one row per feature.

    `rho_by_model[name]` is ρ^{M→name} `[m]`; G = `shared_with`, H = `not_shared_with` (disjoint,
    non-empty). The running minimum over G starts at +∞ and the maximum over H at −∞, so each is
    the value of one model of the group. Columns: feature, activation_mass, min_rho_shared,
    least_shared_model, max_rho_not_shared, most_shared_model, sharedness, rank (1 = largest Δ).
    """
    group_g, group_h = list(shared_with), list(not_shared_with)
    if not group_g or not group_h:
        raise ValueError(f"shared_with and not_shared_with must be non-empty, got {group_g} and {group_h}")
    overlap = sorted(set(group_g) & set(group_h))
    if overlap:
        raise ValueError(f"models in both groups: {overlap}")
    unknown = [name for name in group_g + group_h if name not in rho_by_model]
    if unknown:
        raise ValueError(f"no rho for models {unknown}; known: {sorted(rho_by_model)}")
    mass = _as_float64(activation_mass, "activation_mass")
    rhos = {name: _as_float64(rho_by_model[name], f"rho_by_model[{name!r}]") for name in group_g + group_h}
    for name, rho in rhos.items():
        if rho.shape != mass.shape:
            raise ValueError(f"rho_by_model[{name!r}] has shape {list(rho.shape)}, "
                             f"activation_mass {list(mass.shape)}")
    min_g = torch.full_like(mass, math.inf)
    argmin_g = np.zeros(len(mass), dtype=np.int64)
    for position, name in enumerate(group_g):
        lower = rhos[name] < min_g
        min_g = torch.where(lower, rhos[name], min_g)
        argmin_g[lower.numpy()] = position
    max_h = torch.full_like(mass, -math.inf)
    argmax_h = np.zeros(len(mass), dtype=np.int64)
    for position, name in enumerate(group_h):
        higher = rhos[name] > max_h
        max_h = torch.where(higher, rhos[name], max_h)
        argmax_h[higher.numpy()] = position
    sharedness = (mass * (min_g.square() - max_h.square())).numpy()
    return pd.DataFrame({"feature": np.arange(len(mass)), "activation_mass": mass.numpy(),
                         "min_rho_shared": min_g.numpy(),
                         "least_shared_model": np.array(group_g)[argmin_g],
                         "max_rho_not_shared": max_h.numpy(),
                         "most_shared_model": np.array(group_h)[argmax_h],
                         "sharedness": sharedness, "rank": _rank_descending(sharedness)})


# ---- significance -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShuffleNull:
    """A statistic on aligned rows, the same with B's rows permuted, and the permutation p-value
    (1 + #{null ≥ observed}) / (1 + P)."""

    observed: float
    null: torch.Tensor  # [P] float64
    p_value: float


def shuffle_null(a: FeatureSource, b: Activations, *, n_permutations: int = 1, seed: int = 0,
                 weighting: str = "mass", n_features_a: int | None = None, n_features_b: int | None = None,
                 chunk_rows: int = 4096, block_elements: int = 2**26,
                 matmul_dtype: torch.dtype = torch.float32, method: str = "auto",
                 device: torch.device | str | None = None) -> ShuffleNull:
    """wMPPC (`weighting="mass"`) or MPPC ("uniform") of A→B against B's rows permuted (Appendix C).

    Permuting the samples of B keeps each feature's distribution (its density, as the paper
    notes) and breaks only the pairing with A. `b` must be held in memory (rows are gathered per
    chunk, never copied whole); `a` may be streamed but must be re-iterable (one pass per permutation).
    Permutations come from one `torch.Generator` seeded with `seed`.
    """
    _check_positive(n_permutations=n_permutations)
    _check_options(chunk_rows, block_elements, matmul_dtype, method)
    if not isinstance(b, torch.Tensor | np.ndarray | Codes):
        raise ValueError(f"b must be held in memory (tensor, array or Codes) to permute, "
                         f"got {type(b).__name__}")
    options = {"chunk_rows": chunk_rows, "block_elements": block_elements, "matmul_dtype": matmul_dtype,
               "method": method, "device": _resolve_device(device)}
    src_a, src_b = _source_pair(a, b, n_features_a, n_features_b)
    observed_result = _max_correlation(src_a, src_b, **options)
    observed = _score(observed_result, observed_result.rho, weighting)
    generator = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(n_permutations):
        order = torch.randperm(src_b.n_rows, generator=generator)
        shuffled = _Source(b, src_b.n_features, "b", row_order=order)
        result = _max_correlation(src_a, shuffled, **options)
        null.append(_score(result, result.rho, weighting))
    null_t = torch.tensor(null, dtype=torch.float64)
    p_value = (1 + int((null_t >= observed).sum())) / (1 + n_permutations)
    return ShuffleNull(observed, null_t, p_value)


def _correlations_and_n(r: float | np.ndarray | torch.Tensor, n_samples: int) -> tuple[np.ndarray, float]:
    values = np.asarray(r.detach().cpu() if isinstance(r, torch.Tensor) else r, dtype=np.float64)
    if not isinstance(n_samples, int | np.integer) or n_samples <= 3:
        raise ValueError(f"n_samples must be an integer > 3 for the Fisher z-test, got {n_samples!r}")
    if np.isnan(values).any() or (np.abs(values) > 1).any():
        raise ValueError("correlations must lie in [-1, 1] and not be NaN")
    return values, math.sqrt(n_samples - 3)


def fisher_z(r: float | np.ndarray | torch.Tensor, n_samples: int) -> np.ndarray:
    """z = artanh(r)·sqrt(N − 3): standard normal under H0 (no linear relation, Gaussian data).

    ±inf at |r| = 1. Sparse SAE codes are far from Gaussian; `shuffle_null` is the empirical check.
    """
    values, scale = _correlations_and_n(r, n_samples)
    with np.errstate(divide="ignore"):
        return np.arctanh(values) * scale


def correlation_p_value(r: float | np.ndarray | torch.Tensor, n_samples: int,
                        alternative: str = "greater") -> np.ndarray:
    """p-value of each correlation under H0 by the Fisher z normal approximation, vectorised."""
    z = fisher_z(r, n_samples)
    if alternative == "greater":
        return special.ndtr(-z)
    if alternative == "less":
        return special.ndtr(z)
    if alternative == "two-sided":
        return 2.0 * special.ndtr(-np.abs(z))
    raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")


def max_correlation_p_value(rho: float | np.ndarray | torch.Tensor, n_samples: int,
                            n_targets: int) -> np.ndarray:
    """P(max of `n_targets` independent null correlations > ρ) = 1 − Φ(artanh(ρ)·sqrt(N − 3))^n_targets
    (Appendix C), computed as −expm1(n_targets · log Φ(z)) so that p-values like 1e-206 do not round to 0."""
    _check_positive(n_targets=n_targets)
    z = fisher_z(rho, n_samples)
    return -np.expm1(n_targets * special.log_ndtr(z))
