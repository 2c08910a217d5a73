"""Reconstruction quality: NMSE and variance-weighted R².

Definitions:
- NMSE (Gao et al.; SPARC): per sample mean_d (x̂ − x)² / mean_d x², averaged over samples.
- R² (SPARC §4.3): 1 − Σ_i ‖x_i − x̂_i‖² / Σ_i ‖x_i − x̄‖², x̄ the mean over the evaluation set.

Which latents fire on the evaluation set is `xsae.metrics.activation`'s concern.
"""

from __future__ import annotations

import torch


def nmse_per_sample(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]`: mean_d (x̂ − x)² / mean_d x² (the normalised MSE used as the training loss)."""
    error = (reconstruction - target).pow(2).mean(dim=1)
    return error / target.pow(2).mean(dim=1).clamp_min(1e-12)


def nmse(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    return float(nmse_per_sample(reconstruction, target).mean())


def r2_score(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Variance-weighted R² over the whole evaluation set."""
    target64, recon64 = target.double(), reconstruction.double()
    residual = (target64 - recon64).pow(2).sum()
    total = (target64 - target64.mean(dim=0)).pow(2).sum()
    return float(1 - residual / total)


class ReconstructionAccumulator:
    """Streams NMSE and R² over batches in float64, so N can exceed memory.

    R²'s denominator uses Σ‖x‖² − N‖x̄‖², accumulated in float64 (cancellation stays far below
    the tolerance of any table for unit-scale features).
    """

    def __init__(self) -> None:
        self.n = 0
        self.nmse_sum = 0.0
        self.squared_error = torch.zeros((), dtype=torch.float64)
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = torch.zeros((), dtype=torch.float64)

    def update(self, reconstruction: torch.Tensor, target: torch.Tensor) -> None:
        target64, recon64 = target.double().cpu(), reconstruction.double().cpu()
        self.n += target.shape[0]
        self.nmse_sum += float(nmse_per_sample(recon64, target64).sum())
        self.squared_error += (target64 - recon64).pow(2).sum()
        batch_sum = target64.sum(dim=0)
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sum_sq += target64.pow(2).sum()

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("no samples accumulated")
        total = self.sum_sq - self.sum_x.pow(2).sum() / self.n
        return {
            "nmse": self.nmse_sum / self.n,
            "r2": float(1 - self.squared_error / total),
            "n_samples": self.n,
        }

