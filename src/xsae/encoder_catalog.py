"""The encoder loaders by name and the modalities each encodes: what a config may name.

Torch-free, so that validating a config (the Snakefile does it while it parses, on every cluster
node) imports no model code. `xsae.encoders.register` refuses a loader that is not listed here
or encodes other modalities, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

LOADER_MODALITIES: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("image",),
    "mobilenet_v2": ("image",),
    "minilm_l6_v2": ("text",),
    "mambavision": ("image",),
    "open_clip": ("image", "text"),
    "dinov2": ("image",),
    "hf_siglip2": ("image", "text"),
    "hf_vision": ("image",),
    "hf_text": ("text",),
    "sentence_transformers": ("text",),
    # your own: any of the two (the loader checks what the object encodes), and timm's backbones
    "python": ("image", "text"),
    "timm": ("image",),
}



@contextlib.contextmanager
def working_directory_importable() -> Iterator[None]:
    """Modules of the working directory importable for a moment, as `python -m` makes them: where
    a `loader: python` entry may live besides installed packages and PYTHONPATH."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        yield
    finally:
        if added:
            sys.path.remove(here)


def module_file(entry: str) -> str | None:
    """The file of the module a `loader: python` entry (`package.module:function`) names, found
    as the loader imports it, without importing it; None when it cannot be found (the loader then
    says why)."""
    with working_directory_importable():
        try:
            spec = importlib.util.find_spec(entry.partition(":")[0])
        except (ImportError, ValueError):
            return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in", "frozen") else None
