"""Encoders of your own: a Python entry point (`loader: python`) and the vision backbones `timm`
publishes (`loader: timm`).

`loader: python` with `entry: "package.module:function"` calls the function with the entry's
`options` as keyword arguments. What it returns follows this protocol:

- `modalities`: the modalities it encodes, "image" and/or "text";
- `encode(modality, batch)`: pooled features `[B, d]` (a tensor), of a batch of images (a `[B, 3,
  H, W]` tensor, made by `image_transform`) or of captions (a list of strings);
- optional `image_transform`: PIL image → `[3, H, W]` tensor (default: resize 224 bicubic, centre
  crop, ImageNet normalisation, transparency composited on white);
- optional `layer_modules(modality)`: the modules whose outputs are its per-layer features (a
  feature map `[B, C, H, W]`, or tokens `[B, T, d]` whose first token is global), for
  `layers: true` and the sharedness experiments;
- optional `token_mask(modality, hidden)`: `[B, T]`, true for real tokens of the last batch (text
  padding never becomes SAE training data);
- if it is a `torch.nn.Module` it is moved to the device and put in eval mode.

`loader: timm` with `model: <timm name>` builds `timm.create_model(model, pretrained=...)`
(`pretrained: "true"` loads timm's weights from the Hub; anything else keeps the random
initialisation), pools with the model's own head before its classifier, prepares images with the
model's own data config, and exposes the stages or blocks `timm` lists in `feature_info` as layers.

Neither is known to `config/costs.yaml`: give the encoder an `architecture` entry (widths, layers,
tokens, size) so that `xsae plan` and the cluster requests can price its jobs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xsae.encoder_catalog import working_directory_importable
from xsae.encoders.base import Encoder, EncoderSpec, register
from xsae.errors import ConfigError
from xsae.images import to_rgb

MODALITIES = ("image", "text")


def load_entry_point(entry: str, where: str) -> Callable[..., Any]:
    """`package.module:function` → the function, or an error naming the config key and the cause.

    The module comes from an installed package, PYTHONPATH, or the working directory (where
    Snakemake runs: a module beside your config is found, as `python -m` would find it)."""
    module_name, _, attribute = entry.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{where}: expected 'package.module:function', got {entry!r}")
    try:
        with working_directory_importable():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r} ({exc}); install the package in the "
                          "extraction env, put it on PYTHONPATH or in the working directory") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{where}: {module_name} has no function {attribute!r}")
    return function


class PythonEncoder(Encoder):
    """A user's object that follows the protocol of this module, adapted to `Encoder`."""

    modalities = MODALITIES

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        where = f"encoders.{spec.name}.entry"
        if not spec.entry:
            raise ConfigError(f"{where}: loader python needs entry: 'package.module:function'")
        try:
            self.model = load_entry_point(spec.entry, where)(**spec.options)
        except TypeError as exc:
            raise ConfigError(f"{where}: {spec.entry} does not accept the options "
                              f"{sorted(spec.options)} of encoders.{spec.name}.options ({exc})") from exc
        declared = tuple(getattr(self.model, "modalities", ()) or ())
        if not declared or set(declared) - set(MODALITIES):
            raise ConfigError(f"{where}: {spec.entry} returned an object whose `modalities` is {declared!r}; "
                              f"it must list some of {MODALITIES}")
        if not callable(getattr(self.model, "encode", None)):
            raise ConfigError(f"{where}: {spec.entry} returned an object without encode(modality, batch)")
        self.modalities = declared
        self.weights = spec.entry
        transform = getattr(self.model, "image_transform", None)
        if transform is not None:
            self._image_transform = lambda image: transform(to_rgb(image))
        if isinstance(self.model, nn.Module):
            self.model.to(self.device).eval()

    def _encode(self, modality: str, batch: Any) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            batch = batch.to(self.device)
        out = self.model.encode(modality, batch)
        size = len(batch)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != size:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"encoders.{self.spec.name}.entry: encode({modality!r}, ...) of {size} samples "
                              f"returned {shape}; it must return a [{size}, d] tensor")
        return out

    def layer_modules(self, modality: str) -> list[nn.Module]:
        modules = getattr(self.model, "layer_modules", None)
        if modules is None:
            return super().layer_modules(modality)
        return list(modules(modality))

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        mask = getattr(self.model, "token_mask", None)
        return None if mask is None else mask(modality, hidden)

    def preprocessing(self, modality: str) -> dict[str, Any]:
        if modality == "image" and getattr(self.model, "image_transform", None) is not None:
            return {"image": f"image_transform of {self.spec.entry}"}
        return super().preprocessing(modality)


class TimmEncoder(Encoder):
    """A `timm` backbone: the pooled pre-logits features and its `feature_info` stages as layers."""

    modalities = ("image",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        import timm
        from timm.data import create_transform, resolve_data_config

        if not spec.model:
            raise ConfigError(f"encoders.{spec.name}.model: loader timm needs a timm model name")
        pretrained = str(spec.pretrained).lower() in ("true", "1", "yes")
        try:
            self.model = timm.create_model(spec.model, pretrained=pretrained, num_classes=0, **spec.options)
        except RuntimeError as exc:  # timm's message for an unknown name
            raise ConfigError(f"encoders.{spec.name}.model: {exc}") from exc
        self.model.to(self.device).eval()
        self.weights = f"timm:{spec.model}" + (":pretrained" if pretrained else ":random")
        self.data_config = resolve_data_config({}, model=self.model)
        pipeline = create_transform(**self.data_config)
        self._image_transform = lambda image: pipeline(to_rgb(image))

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device))

    def layer_modules(self, modality: str) -> list[nn.Module]:
        info = getattr(self.model, "feature_info", None)
        names = [entry["module"] for entry in info] if info else []
        if not names:
            return super().layer_modules(modality)
        return [self.model.get_submodule(name) for name in names]

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return {key: (list(value) if isinstance(value, tuple) else value)
                for key, value in self.data_config.items()}


register("python")(PythonEncoder)
register("timm")(TimmEncoder)
