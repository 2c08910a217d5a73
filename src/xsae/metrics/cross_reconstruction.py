"""Cross-stream reconstruction R² (SPARC §4.3, Table 3; Appendix C, Tables 7–13).

R²_{s→t} = 1 − Σ_i ‖x_i^t − D_t(z_i^s)‖² / Σ_i ‖x_i^t − x̄^t‖², x̄^t the mean of the target stream
over the evaluation set: how much of stream t's variance the codes of stream s explain through t's
decoder. The matrix has rows = targets t and columns = sources s, as in the paper; the diagonal is
self-reconstruction. Each entry is streamed over batches by a `ReconstructionAccumulator` (float64),
so the formula lives in one place and N can be larger than memory allows at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xsae.metrics.reconstruction import ReconstructionAccumulator
from xsae.sae import SparseAutoencoder


@torch.no_grad()
def reconstruction_matrices(model: SparseAutoencoder, inputs: Sequence[torch.Tensor],
                            topk: str | None = None, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """float64 `[S_target, S_source]` matrices of every `ReconstructionAccumulator` quantity
    ("r2", "nmse"): entry (t, s) measures D_t(z_s) against x_t.

    `inputs`: one `[N, d_s]` array per stream, paired by row (tensors, or anything sliceable that
    `torch.as_tensor` accepts, e.g. numpy arrays or h5py datasets). `topk` overrides the model's
    selection mode at inference ("global" / "local"); batches of `batch_size` rows go to the model's
    device.
    """
    n_streams = model.n_streams
    if len(inputs) != n_streams:
        raise ValueError(f"expected {n_streams} streams, got {len(inputs)}")
    n_samples = len(inputs[0])
    if any(len(x) != n_samples for x in inputs):
        raise ValueError(f"streams differ in length: {[len(x) for x in inputs]}")
    weight = model.dec_weight[0]
    accumulators = [[ReconstructionAccumulator() for _ in range(n_streams)]
                    for _ in range(n_streams)]
    for lo in range(0, n_samples, batch_size):
        batch = [torch.as_tensor(x[lo:lo + batch_size]).to(weight.device, weight.dtype) for x in inputs]
        codes = model.encode(batch, topk)
        for target in range(n_streams):
            for source in range(n_streams):
                accumulators[target][source].update(model.decode(target, codes[source]), batch[target])
    results = [[acc.result() for acc in row] for row in accumulators]
    return {key: torch.tensor([[r[key] for r in row] for row in results], dtype=torch.float64)
            for key in ("r2", "nmse")}


def r2_matrix(model: SparseAutoencoder, inputs: Sequence[torch.Tensor], topk: str | None = None,
              batch_size: int = 4096) -> torch.Tensor:
    """float64 `[S_target, S_source]`: entry (t, s) is R²_{s→t}.

    `inputs`: one `[N, d_s]` array per stream, paired by row (tensors, or anything sliceable that
    `torch.as_tensor` accepts, e.g. numpy arrays or h5py datasets). `topk` overrides the model's
    selection mode at inference ("global" / "local").
    """
    return reconstruction_matrices(model, inputs, topk, batch_size)["r2"]


def self_cross_means(matrix: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(mean of the diagonal, mean of the off-diagonal entries) of a square `[S, S]` R² matrix —
    the "self" and "cross" means under Table 3. The cross mean is NaN for S = 1."""
    values = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
        raise ValueError(f"expected a non-empty square matrix, got shape {values.shape}")
    off_diagonal = ~np.eye(values.shape[0], dtype=bool)
    cross = float(values[off_diagonal].mean()) if off_diagonal.any() else float("nan")
    return float(np.diag(values).mean()), cross
