"""Encoder registry: `load_encoder(EncoderSpec)` for any loader key in `LOADERS`."""

from xsae.encoders import custom, mambavision, offline, paper  # noqa: F401 - register the loaders
from xsae.encoders.base import (
    LOADERS,
    MODALITIES,
    Encoded,
    Encoder,
    EncoderSpec,
    load_encoder,
    paper_image_transform,
    register,
    to_rgb,
)

__all__ = [
    "LOADERS",
    "MODALITIES",
    "Encoded",
    "Encoder",
    "EncoderSpec",
    "load_encoder",
    "paper_image_transform",
    "register",
    "to_rgb",
]
