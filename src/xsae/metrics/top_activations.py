"""Top-activating samples per latent (data behind SPARC Figures 3 and 11–13, and Table 2's profiles).

Streams the sparse codes in row chunks: a chunk's active entries (latent, key) and the running
per-latent top-n are sorted together by latent, then key, and the first top_n keys of each latent
are kept. Memory is O(chunk · k + L · top_n) whatever N is (the default chunk of 32768 rows at k = 64
needs about 100 MB) and no dense `[·, L]` block is built.

Ranking key: activation descending, then sample index ascending, packed into one int64
(`float32 bits << 32 | (2³² − 1 − sample)`; for positive floats the IEEE bit pattern orders like the
value). Keys are unique within a latent, so the result is deterministic and independent of the chunk
size, ties included. Only activations > 0 count (codes are ReLU outputs); activations are ranked and
returned at float32 precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xsae.sae import Codes

_LOW32 = 0xFFFFFFFF


def top_activating(codes: Codes, n_latents: int, top_n: int = 10,
                   latents: torch.Tensor | Sequence[int] | None = None,
                   batch_size: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample indices and activations of the `top_n` highest activations of each latent.

    `codes`: one stream over N samples (`[N, k]`). `latents`: the L' latents to report (default all
    L, in order). Returns (indices LongTensor `[L', top_n]`, values `[L', top_n]`), sorted by
    activation descending (ties: lower sample index first); where a latent is non-zero on fewer than
    `top_n` samples the remaining slots hold index −1 and value 0.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    n_samples = codes.indices.shape[0]
    if n_samples > _LOW32:
        raise ValueError(f"{n_samples} samples exceed the 2^32 the ranking key can hold")
    device = codes.indices.device
    if latents is None:
        row_of = torch.arange(n_latents, device=device)  # output row of each latent, −1 if not reported
    else:
        chosen = torch.as_tensor(latents, dtype=torch.long, device=device)
        in_range = bool(((chosen >= 0) & (chosen < n_latents)).all())
        if not in_range or chosen.unique().numel() != chosen.numel():
            raise ValueError(f"latents must be distinct indices in [0, {n_latents})")
        row_of = torch.full((n_latents,), -1, dtype=torch.long, device=device)
        row_of[chosen] = torch.arange(chosen.shape[0], device=device)
    n_rows = row_of.shape[0] if latents is None else chosen.shape[0]
    best = torch.full((n_rows, top_n), -1, dtype=torch.long, device=device)  # running top keys
    best_rows = torch.arange(n_rows, device=device).unsqueeze(1).expand_as(best)
    for lo in range(0, n_samples, batch_size):
        values = codes.values[lo:lo + batch_size].float().contiguous()
        samples = torch.arange(lo, lo + values.shape[0], device=device)
        keys = (values.view(torch.int32).long() << 32) | (_LOW32 - samples).unsqueeze(1)
        rows = row_of[codes.indices[lo:lo + batch_size]]
        active, kept = (values > 0) & (rows >= 0), best >= 0
        keys, order = torch.cat([best[kept], keys[active]]).sort(descending=True)
        rows, order = torch.cat([best_rows[kept], rows[active]])[order].sort(stable=True)
        keys = keys[order]  # grouped by row, keys descending within each row
        counts = torch.bincount(rows, minlength=n_rows)
        rank = torch.arange(rows.shape[0], device=device) - (counts.cumsum(0) - counts)[rows]
        top = rank < top_n
        best = torch.full_like(best, -1)
        best[rows[top], rank[top]] = keys[top]
    found = best >= 0
    indices = torch.where(found, _LOW32 - (best & _LOW32), torch.full_like(best, -1))
    bits = torch.where(found, best >> 32, torch.zeros_like(best)).int()
    return indices, bits.view(torch.float32).to(codes.values.dtype)
