"""The encoder loaders by name and the modalities each encodes: what a config may name.

Torch-free, so that validating a config (the Snakefile does it while it parses, on every cluster
node) imports no model code. `xsae.encoders.register` refuses a loader that is not listed here
or encodes other modalities, so the two cannot drift apart.
"""

from __future__ import annotations

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
