"""Image helpers shared by encoders and figures (PIL only, so rendering needs no torch)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Composite transparent images on white: stamps and clip art use alpha for their outline."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return to_rgb(image)
