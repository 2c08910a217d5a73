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


# ---- one image, several captions (COCO Karpathy test: ~5 captions per image) ----------------------
def _score_blocks(queries: Embeddings, gallery: Embeddings, batch_size: int, dtype: torch.dtype,
                  device: torch.device | str | None):
    """Yield (first query row, dense cosine scores `[B, M]`) for query chunks of at most `batch_size`.

    Memory is O(batch_size · M). A `Codes` gallery is held as sparse CSR; with a `device`, codes
    are densified there and scored by matmul, as in `retrieval_ranks`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    width = _width(queries, gallery)
    if device is not None:
        queries = _unit_dense(queries, width, dtype).to(device) if isinstance(queries, Codes) else queries
        gallery = _unit_dense(gallery, width, dtype).to(device) if isinstance(gallery, Codes) else gallery
    n_queries = queries.indices.shape[0] if isinstance(queries, Codes) else queries.shape[0]
    if isinstance(gallery, Codes):
        gallery_t = sp.csr_array(_unit_csr(gallery, width, dtype).T)  # [width, M]
    else:
        gallery_dense = _unit_dense(gallery, width, dtype)  # [M, d]
    for lo in range(0, n_queries, batch_size):
        chunk = (Codes(queries.values[lo:lo + batch_size], queries.indices[lo:lo + batch_size])
                 if isinstance(queries, Codes) else queries[lo:lo + batch_size])
        if isinstance(gallery, Codes):
            if isinstance(chunk, Codes):
                block = sp.csr_array(_unit_csr(chunk, width, dtype) @ gallery_t).toarray()
            else:
                block = _unit_dense(chunk, width, dtype).cpu().numpy() @ gallery_t
            yield lo, torch.from_numpy(np.ascontiguousarray(block))
        else:
            yield lo, _unit_dense(chunk, width, dtype).to(gallery_dense.device) @ gallery_dense.T


def _caption_lists(caption_image: torch.Tensor | np.ndarray, n_images: int, n_captions: int) -> torch.Tensor:
    """LongTensor `[N_img, C_max]`: the caption rows of each image, padded with −1."""
    owner = torch.as_tensor(np.asarray(caption_image.cpu() if isinstance(caption_image, torch.Tensor)
                                       else caption_image), dtype=torch.long)
    if owner.shape != (n_captions,):
        raise ValueError(f"caption_image has shape {list(owner.shape)}, expected [{n_captions}] "
                         "(one image row per caption)")
    if n_captions and (owner.min() < 0 or owner.max() >= n_images):
        raise ValueError(f"caption_image values must lie in [0, {n_images}), got "
                         f"[{int(owner.min())}, {int(owner.max())}]")
    counts = torch.bincount(owner, minlength=n_images)
    if n_images and counts.min() == 0:
        missing = int(torch.nonzero(counts == 0)[0])
        raise ValueError(f"image row {missing} has no caption in caption_image: image-to-text "
                         "retrieval needs at least one caption per image")
    order = torch.sort(owner, stable=True).indices  # caption rows grouped by image
    slot = torch.arange(n_captions) - (counts.cumsum(0) - counts)[owner[order]]
    lists = torch.full((n_images, int(counts.max()) if n_images else 0), -1, dtype=torch.long)
    lists[owner[order], slot] = order
    return lists


def multi_caption_ranks(images: Embeddings, captions: Embeddings,
                        caption_image: torch.Tensor | np.ndarray, batch_size: int = 256,
                        dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based pessimistic ranks for image→text and text→image retrieval with several captions per image.

    `images`: `[N_img, ·]`, `captions`: `[N_cap, ·]` (dense embeddings or `Codes` in one aligned
    latent space), `caption_image`: int `[N_cap]`, the image row of each caption (every image needs
    at least one). Cosine similarity in `dtype`; memory O(batch_size · max(N_img, N_cap)).

    Returns (image_to_text `[N_img]`, text_to_image `[N_cap]`):

    - image→text: the rank of the image's best-scoring own caption, where only the *other* images'
      captions can outrank it: 1 + #{captions of other images scoring ≥ the best own score}. So an
      image is a hit at K when one of its captions is within the top K, ties with foreign captions
      going against it. (The reference counts the image's own tied captions too, so two identical
      captions of one image cost it a rank; they are correct answers, so here they do not.) With one
      caption per image this is exactly `retrieval_ranks`.
    - text→image: #{images scoring ≥ the caption's own image} (itself included), as `retrieval_ranks`.

    An all-zero query ties with everything and ranks last.
    """
    n_images = images.indices.shape[0] if isinstance(images, Codes) else images.shape[0]
    n_captions = captions.indices.shape[0] if isinstance(captions, Codes) else captions.shape[0]
    lists = _caption_lists(caption_image, n_images, n_captions)
    owner = torch.full((n_captions,), -1, dtype=torch.long)
    valid = lists >= 0
    owner[lists[valid]] = torch.nonzero(valid)[:, 0]

    image_to_text = torch.empty(n_images, dtype=torch.long)
    for lo, scores in _score_blocks(images, captions, batch_size, dtype, device):
        own = lists[lo:lo + scores.shape[0]].to(scores.device)
        own_valid = own >= 0
        own_scores = scores.gather(1, own.clamp_min(0))
        best = own_scores.masked_fill(~own_valid, float("-inf")).max(dim=1).values
        at_least = (scores >= best.unsqueeze(1)).sum(dim=1)
        own_at_least = ((own_scores >= best.unsqueeze(1)) & own_valid).sum(dim=1)
        image_to_text[lo:lo + scores.shape[0]] = (at_least - own_at_least + 1).cpu()

    text_to_image = torch.empty(n_captions, dtype=torch.long)
    for lo, scores in _score_blocks(captions, images, batch_size, dtype, device):
        target_image = owner[lo:lo + scores.shape[0]].to(scores.device)
        target = scores.gather(1, target_image.unsqueeze(1))
        text_to_image[lo:lo + scores.shape[0]] = (scores >= target).sum(dim=1).cpu()
    return image_to_text, text_to_image


def multi_caption_retrieval(images: Embeddings, captions: Embeddings,
                            caption_image: torch.Tensor | np.ndarray, batch_size: int = 256,
                            dtype: torch.dtype = torch.float64,
                            device: torch.device | str | None = None) -> dict[str, dict[str, float]]:
    """Heterogeneity Table 1's retrieval numbers: {"image_to_text": metrics, "text_to_image": metrics},
    each the `retrieval_metrics` (R@1/5/10, median rank, MRR) of `multi_caption_ranks`."""
    image_to_text, text_to_image = multi_caption_ranks(images, captions, caption_image, batch_size,
                                                       dtype, device)
    return {"image_to_text": retrieval_metrics(image_to_text),
            "text_to_image": retrieval_metrics(text_to_image)}
