"""An encoder of your own, as `loader: python` takes it (protocol: src/xsae/encoders/custom.py).

A joint RGB colour histogram: no weights, no network, and features a human can read (latent j
of an SAE on it is a mixture of colours). Two layers: the coarse 2×2×2 histogram and the fine one,
so the sharedness experiments can use it too.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn


class _Histogram(nn.Module):
    """`[B, 3, H, W]` in [0, 1] → the normalised joint histogram with `bins` levels per channel."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        levels = (images.clamp(0, 1) * (self.bins - 1)).round().long()
        cells = (levels[:, 0] * self.bins + levels[:, 1]) * self.bins + levels[:, 2]
        counts = torch.zeros(images.shape[0], self.bins ** 3, device=images.device)
        counts.scatter_add_(1, cells.flatten(1), torch.ones_like(cells.flatten(1), dtype=counts.dtype))
        return counts / cells[0].numel()


class ColourHistogram(nn.Module):
    modalities = ("image",)

    def __init__(self, bins: int = 8, size: int = 64):
        super().__init__()
        self.size = size
        self.coarse, self.fine = _Histogram(2), _Histogram(bins)

    def image_transform(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.size, self.size))
        pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8)
        return pixels.reshape(self.size, self.size, 3).permute(2, 0, 1).float() / 255

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        self.coarse(batch)  # the first layer's output, for per-layer features
        return self.fine(batch)

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return [self.coarse, self.fine]


def build(bins: int = 8, size: int = 64) -> ColourHistogram:
    return ColourHistogram(bins, size)
