"""Paired cross-stream retrieval (SPARC Appendix G, Table 14): query i's correct match is gallery row i.

Similarity is cosine; a zero vector has cosine 0 with everything. The rank of query i is the number
of gallery rows scoring at least as high as row i (itself included), so ties are broken
pessimistically: sparse codes often tie, and an all-zero query ties with the whole gallery and gets
rank M (M = gallery size). The target's score is read from the same score block it is compared with,
so identical computations give identical numbers. Queries are processed in chunks: memory is
O(chunk · M), never an `[N, M]` matrix; `Codes` are held as sparse CSR matrices (a dense `[N, L]`
copy is never built; a `Codes` query chunk is densified only against a dense gallery).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from xsae.sae import Codes

Embeddings = torch.Tensor | Codes  # dense `[N, d]` or sparse codes `[N, k]`


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows stay zero."""
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def _width(queries: Embeddings, gallery: Embeddings) -> int:
    """Columns of the shared space: d for dense input, else 1 + the largest latent index."""
    dense = [x.shape[1] for x in (queries, gallery) if isinstance(x, torch.Tensor)]
    if len(dense) == 2 and dense[0] != dense[1]:
        raise ValueError(f"query and gallery dimensions differ: {dense[0]} vs {dense[1]}")
    needed = max((int(x.indices.max()) + 1 for x in (queries, gallery)
                  if isinstance(x, Codes) and x.indices.numel()), default=0)
    width = dense[0] if dense else needed
    if needed > width:
        raise ValueError(f"latent index {needed - 1} outside the dense width {width}")
    return width


def _unit_csr(codes: Codes, width: int, dtype: torch.dtype) -> sp.csr_array:
    """scipy CSR `[N, width]` of codes `[N, k]` with rows scaled to unit norm (zero rows stay zero)."""
    values = _unit_rows(codes.values.detach().to(dtype)).cpu().numpy()
    n_rows, k = values.shape
    row_starts = np.arange(0, n_rows * k + 1, k)
    columns = codes.indices.cpu().numpy().ravel()
    return sp.csr_array((values.ravel(), columns, row_starts), shape=(n_rows, width))


def _unit_dense(x: Embeddings, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense `[B, width]` rows scaled to unit norm, from a dense block or a chunk of codes."""
    if isinstance(x, Codes):
        return Codes(_unit_rows(x.values.detach().to(dtype)), x.indices).dense(width)
    return _unit_rows(x.detach().to(dtype))


def _sparse_block_ranks(block: sp.csr_array, target: np.ndarray, n_gallery: int) -> np.ndarray:
    """Ranks from a sparse score block `[B, M]` without densifying it: count the stored scores ≥
    the target's, plus every implicit zero when the target's score is ≤ 0."""
    nnz_per_row = np.diff(block.indptr)
    at_least = block.data >= np.repeat(target, nnz_per_row)
    cumulative = np.concatenate([[0], np.cumsum(at_least, dtype=np.int64)])
    counts = cumulative[block.indptr[1:]] - cumulative[block.indptr[:-1]]
    return counts + np.where(target <= 0, n_gallery - nnz_per_row, 0)


def retrieval_ranks(queries: Embeddings, gallery: Embeddings, batch_size: int = 256,
                    dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """LongTensor `[N]`: 1-based pessimistic rank of gallery row i for query i under cosine similarity.

    `queries`: N rows, `gallery`: M ≥ N rows (rows beyond N are distractors); each dense `[·, d]` or
    `Codes`. Scores are computed in `dtype` (float64 by default, so near-ties are not rounding noise).
    A `Codes` gallery is scored on the CPU by sparse products (work ∝ the pairs of rows sharing a
    latent, not N · M · L); a dense gallery by a dense matmul on its own device. With a `device`
    (meant for a GPU), codes are densified there and scored by matmul: N · M · L work, which a GPU
    does far faster than a CPU does the sparse products.
    """
    if device is not None:
        width = _width(queries, gallery)
        queries = _unit_dense(queries, width, dtype).to(device) if isinstance(queries, Codes) else queries
        gallery = _unit_dense(gallery, width, dtype).to(device) if isinstance(gallery, Codes) else gallery
    n_queries = queries.indices.shape[0] if isinstance(queries, Codes) else queries.shape[0]
    n_gallery = gallery.indices.shape[0] if isinstance(gallery, Codes) else gallery.shape[0]
    if n_gallery < n_queries:
        raise ValueError(f"gallery has {n_gallery} rows for {n_queries} queries")
    width = _width(queries, gallery)
    if isinstance(gallery, Codes):
        gallery_t = sp.csr_array(_unit_csr(gallery, width, dtype).T)  # [width, M]
    else:
        gallery_dense = _unit_dense(gallery, width, dtype)  # [M, d]
    ranks = torch.empty(n_queries, dtype=torch.long)
    for lo in range(0, n_queries, batch_size):
        chunk = (Codes(queries.values[lo:lo + batch_size], queries.indices[lo:lo + batch_size])
                 if isinstance(queries, Codes) else queries[lo:lo + batch_size])
        if isinstance(gallery, Codes) and isinstance(chunk, Codes):
            product = sp.csr_array(_unit_csr(chunk, width, dtype) @ gallery_t)  # [B, M], sparse
            product.sort_indices()
            diagonal = np.arange(product.shape[0])
            target = np.asarray(product[diagonal, lo + diagonal]).ravel()
            block_ranks = _sparse_block_ranks(product, target, n_gallery)
            ranks[lo:lo + product.shape[0]] = torch.from_numpy(block_ranks)
            continue
        if isinstance(gallery, Codes):
            scores = torch.from_numpy(_unit_dense(chunk, width, dtype).cpu().numpy() @ gallery_t)
        else:
            scores = _unit_dense(chunk, width, dtype).to(gallery_dense.device) @ gallery_dense.T  # [B, M]
        rows = torch.arange(scores.shape[0], device=scores.device)
        target = scores[rows, lo + rows]
        ranks[lo:lo + scores.shape[0]] = (scores >= target.unsqueeze(1)).sum(dim=1).cpu()
    return ranks


def retrieval_metrics(ranks: torch.Tensor | np.ndarray) -> dict[str, float]:
    """R@1/5/10 (fraction of queries ranked ≤ K), median rank (mean of the middle two for even N)
    and mean reciprocal rank, from 1-based ranks `[N]`."""
    values = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    if values.size == 0 or values.min() < 1:
        raise ValueError("ranks must be a non-empty array of 1-based ranks")
    metrics = {f"R@{k}": float((values <= k).mean()) for k in (1, 5, 10)}
    metrics["median_rank"] = float(np.median(values))
    metrics["MRR"] = float((1.0 / values).mean())
    return metrics
