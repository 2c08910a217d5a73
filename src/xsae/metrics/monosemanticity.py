"""Monosemanticity score of each latent (Pach et al.; heterogeneity paper, Figure 8).

For latent ℓ with activations a_n over N held-out samples, min-max normalised per latent,
ã_n = (a_n − min a) / (max a − min a), and S_nm = cos(e_n, e_m) of an external encoder's
embeddings e of the same samples:

    MS_ℓ = Σ_{n≠m} ã_n ã_m S_nm / Σ_{n≠m} ã_n ã_m = (ãᵀSã − Σ_n ã_n² S_nn) / ((Σ_n ã_n)² − Σ_n ã_n²)

the activation-weighted mean similarity over pairs of distinct samples. With unit rows E `[N, D]`,
ãᵀSã = ‖Eᵀã‖², so all latents are scored from one sparse product Ãᵀ E `[L, D]` (chunked over
latents): no N×N similarity matrix and no N×N×L relevance tensor. S_nn is 1 for every non-zero
embedding (0 for an all-zero one, which is similar to nothing). Sums are in float64.

Which latents are scored: those firing (activation > 0) on at least `min_firing` (2) samples whose
normalised activations are non-zero on at least two samples (so the denominator is positive; this
also rules out a latent constant over all N samples, where max = min and ã is undefined); the
others get NaN and are marked excluded (`scored` false), never scored 0. Activations must be
non-negative (SAE codes are ReLU outputs): then min a = 0 whenever the latent is silent on some
sample, and ã stays sparse.

Where this differs from the authors' code: they score the SAE's training split (use held-out
samples, e.g. CC-3M validation, as the paper says), fill excluded latents with 0 and sort them
into the Figure 8 curve; here they are left out of the curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from xsae.sae import Codes


def activation_matrix(codes: Codes | torch.Tensor | np.ndarray | sp.sparray, n_latents: int) -> sp.csr_array:
    """float64 CSR `[N, L]` of non-negative activations given as `Codes` `[N, k]` or a dense/sparse
    `[N, L]` matrix (explicit zeros dropped, duplicate entries summed)."""
    if isinstance(codes, Codes):
        values = codes.values.detach().cpu().double().numpy()
        indices = codes.indices.detach().cpu().numpy().astype(np.int64)
        if values.shape != indices.shape or values.ndim != 2:
            raise ValueError(f"Codes values {values.shape} and indices {indices.shape} must both be [N, k]")
        if indices.size and (indices.min() < 0 or indices.max() >= n_latents):
            raise ValueError(f"code indices must lie in [0, n_latents={n_latents})")
        rows = np.repeat(np.arange(values.shape[0]), values.shape[1])
        matrix = sp.csr_array((values.ravel(), (rows, indices.ravel())), shape=(values.shape[0], n_latents))
    else:
        if isinstance(codes, torch.Tensor):
            codes = codes.detach().cpu().numpy()
        array = codes if sp.issparse(codes) else np.asarray(codes)
        if array.ndim != 2 or array.shape[1] != n_latents:
            raise ValueError(f"activations must be [N, n_latents={n_latents}], got {list(array.shape)}")
        matrix = sp.csr_array(array, dtype=np.float64)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    if matrix.nnz and (not np.isfinite(matrix.data).all() or matrix.data.min() < 0):
        raise ValueError("activations must be finite and non-negative (SAE codes after ReLU)")
    return matrix


@dataclass(frozen=True)
class MonosemanticityResult:
    scores: np.ndarray  # float64 [L]: MS per latent, NaN where excluded
    n_firing: np.ndarray  # int64 [L]: samples on which each latent is > 0
    scored: np.ndarray  # bool [L]: the latents that have a score
    n_samples: int

    def sorted_scores(self) -> pd.DataFrame:
        """Figure 8's curve: scored latents by MS descending (ties: lower latent first), columns
        (rank, latent, score, n_firing); excluded latents are not in it."""
        latents = np.nonzero(self.scored)[0]
        order = np.lexsort((latents, -self.scores[latents]))
        latents = latents[order]
        return pd.DataFrame({"rank": np.arange(1, latents.size + 1), "latent": latents,
                             "score": self.scores[latents], "n_firing": self.n_firing[latents]})


def monosemanticity_scores(codes: Codes | torch.Tensor | np.ndarray | sp.sparray,
                           embeddings: torch.Tensor | np.ndarray, n_latents: int, *,
                           min_firing: int = 2, latent_batch: int = 2048) -> MonosemanticityResult:
    """MS of every latent (see the module docstring).

    `codes`: one stream's activations on N held-out samples, `Codes` `[N, k]` or dense/sparse
    `[N, L]`; `embeddings`: the external encoder's embeddings `[N, D]` of the same samples (any
    norm: rows are normalised here). Memory O(nnz + N·D + latent_batch·D).
    """
    if min_firing < 2:
        raise ValueError(f"min_firing must be >= 2 (a score needs a pair of samples), got {min_firing}")
    if latent_batch < 1:
        raise ValueError(f"latent_batch must be >= 1, got {latent_batch}")
    activations = activation_matrix(codes, n_latents)
    n_samples = activations.shape[0]
    external = np.asarray(embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor)
                          else embeddings, dtype=np.float64)
    if external.ndim != 2 or external.shape[0] != n_samples:
        raise ValueError(f"embeddings must be [N={n_samples}, D], got {list(external.shape)}")
    if not np.isfinite(external).all():
        raise ValueError("embeddings contain NaN or Inf")
    norms = np.linalg.norm(external, axis=1, keepdims=True)
    unit = np.divide(external, norms, out=np.zeros_like(external), where=norms > 0)
    self_similarity = (norms[:, 0] > 0).astype(np.float64)  # S_nn

    by_latent = sp.csr_array(activations.T)  # [L, N]
    n_firing = np.diff(by_latent.indptr).astype(np.int64)
    row_of_entry = np.repeat(np.arange(n_latents), n_firing)
    maxima = np.zeros(n_latents)
    np.maximum.at(maxima, row_of_entry, by_latent.data)
    minima = np.zeros(n_latents)
    full = n_firing == n_samples  # silent nowhere: the minimum is the smallest activation
    if full.any():
        full_minima = np.full(n_latents, np.inf)
        np.minimum.at(full_minima, row_of_entry, by_latent.data)
        minima[full] = full_minima[full]
    spread = maxima - minima
    scored = (n_firing >= min_firing) & (spread > 0)

    normalised = by_latent.copy()
    safe_spread = np.where(spread > 0, spread, 1.0)
    normalised.data = (by_latent.data - minima[row_of_entry]) / safe_spread[row_of_entry]
    total = np.asarray(normalised.sum(axis=1)).ravel()
    squares = normalised.copy()
    squares.data **= 2
    sum_squares = np.asarray(squares.sum(axis=1)).ravel()
    self_pairs = squares @ self_similarity  # Σ ã_n² S_nn
    quadratic = np.empty(n_latents)  # ãᵀSã = ‖Eᵀã‖²
    for lo in range(0, n_latents, latent_batch):
        projected = normalised[lo:lo + latent_batch] @ unit  # [B, D]
        quadratic[lo:lo + projected.shape[0]] = np.einsum("ij,ij->i", projected, projected)

    numerator = quadratic - self_pairs
    denominator = total ** 2 - sum_squares
    scored &= denominator > 0
    scores = np.full(n_latents, np.nan)
    scores[scored] = numerator[scored] / denominator[scored]
    return MonosemanticityResult(scores=scores, n_firing=n_firing, scored=scored, n_samples=n_samples)
