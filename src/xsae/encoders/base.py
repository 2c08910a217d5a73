"""One interface for every encoder: load, preprocess, encode pooled features, optional layers.

An `Encoder` turns a batch of raw samples (PIL images or caption strings) into pooled features
`[B, d]` per modality and, when asked, one global token per layer `[B, d_layer]`, captured with
forward hooks on the modules `layer_modules()` names. Loaders register themselves by key in
`LOADERS`; the config's `encoders.<name>.loader` picks one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from xsae.encoder_catalog import LOADER_MODALITIES
from xsae.errors import ConfigError
from xsae.images import to_rgb

MODALITIES = ("image", "text")

# SPARC Appendix C: resize to 256, centre-crop 224, to tensor, ImageNet mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_RESIZE, PAPER_CROP = 256, 224


@dataclass(frozen=True)
class EncoderSpec:
    """What a loader needs: the config entry of one encoder, plus where to run it."""

    name: str
    loader: str
    model: str | None = None
    pretrained: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    #: `package.module:function` of a `loader: python` encoder
    entry: str | None = None

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any], device: str = "cpu") -> EncoderSpec:
        return cls(name=name, loader=entry["loader"], model=entry.get("model"),
                   pretrained=entry.get("pretrained"), options=dict(entry.get("options", {})),
                   device=device, dtype=entry.get("dtype", "float32"), entry=entry.get("entry"))

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class Encoded:
    pooled: torch.Tensor  # [B, d]
    layers: list[torch.Tensor] | None = None  # one [B, d_layer] per layer
    #: per layer: sampled (or all real) tokens `[M, d_layer]` and the batch row each came from `[M]`
    tokens: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def sample_tokens(tokens: torch.Tensor, mask: torch.Tensor | None, per_sample: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_sample` tokens of each sample, uniformly without replacement among its real
    tokens (`mask` `[B, T]`, None: all are real), from `tokens` `[B, T, d]`.

    Returns float32 `[M, d]` on the tokens' device and the row of each `[M]` (CPU), grouped by
    sample in batch order. Random scores come from `generator` on the CPU, so a seed gives the
    same tokens on any device.
    """
    if per_sample < 1:
        raise ValueError(f"per_sample must be positive, got {per_sample}")
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, T, d], got shape {list(tokens.shape)}")
    batch, length = tokens.shape[:2]
    scores = torch.rand(batch, length, generator=generator)
    if mask is not None:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"mask has shape {list(mask.shape)}, tokens {list(tokens.shape[:2])}")
        scores = scores.masked_fill(~mask.detach().to("cpu", torch.bool), -1.0)
    top = scores.topk(min(per_sample, length), dim=1)
    keep = top.values >= 0
    rows = torch.arange(batch).unsqueeze(1).expand_as(top.indices)[keep]
    positions = top.indices[keep]
    picked = tokens[rows.to(tokens.device), positions.to(tokens.device)]
    return picked.float(), rows


def real_tokens(tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every real token of `tokens` `[B, T, d]` (`mask` `[B, T]`, None: all are real), as float32
    `[M, d]` in sample-then-position order, and the row of each `[M]` (CPU): what an SAE trained
    on "all tokens" sees, padding never among them."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, T, d], got shape {list(tokens.shape)}")
    batch, length = tokens.shape[:2]
    if mask is None:
        return tokens.reshape(batch * length, -1).float(), torch.arange(batch).repeat_interleave(length)
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"mask has shape {list(mask.shape)}, tokens {list(tokens.shape[:2])}")
    keep = mask.to(tokens.device, torch.bool)
    rows = torch.arange(batch).unsqueeze(1).expand(batch, length)[keep.cpu()]
    return tokens[keep].float(), rows


def paper_image_transform(resize: int = PAPER_RESIZE, crop: int = PAPER_CROP,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> Callable[[Image.Image], torch.Tensor]:
    from torchvision import transforms

    pipeline = transforms.Compose([
        transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return lambda image: pipeline(to_rgb(image))


PAPER_PREPROCESSING = {
    "resize": PAPER_RESIZE, "interpolation": "bicubic", "center_crop": PAPER_CROP,
    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "alpha": "composited on white",
}


class Encoder(ABC):
    """Base class: subclasses set `modalities` and implement `_encode` and `layer_modules`."""

    modalities: tuple[str, ...] = ()
    #: Short name of the weights actually loaded (recorded in every feature file).
    weights: str = ""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.device = torch.device(spec.device)
        self._image_transform = paper_image_transform()

    # ---- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _encode(self, modality: str, batch: Any) -> torch.Tensor:
        """Pooled features `[B, d]` of a prepared batch."""

    def layer_modules(self, modality: str) -> list[nn.Module]:
        """Modules whose outputs are the per-layer features (residual stream after each block)."""
        raise NotImplementedError(f"encoder {self.spec.name!r} does not expose per-layer features")

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        """One global token per sample from a layer output: CLS for token sequences, the
        spatial mean for CNN feature maps. Encoders whose first token is not global override."""
        if hidden.dim() == 4:
            return hidden.mean(dim=(2, 3))
        if hidden.dim() == 3:
            return hidden[:, 0]
        return hidden

    def layer_tokens(self, modality: str, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every token of a layer output as `[B, T, d]`, and which are real `[B, T]` (None: all):
        the positions of a CNN feature map, the tokens of a sequence (see `token_mask`)."""
        if hidden.dim() == 4:
            return hidden.flatten(2).transpose(1, 2), None
        if hidden.dim() == 3:
            return hidden, self.token_mask(modality, hidden)
        return hidden.unsqueeze(1), None

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        """`[B, T]` true for real tokens of the last batch; None when all are (images). Encoders
        that pad their text override it, so that padding never becomes SAE training data."""
        return None

    def preprocessing(self, modality: str) -> dict[str, Any]:
        """How inputs are prepared, stored as an attribute of every feature file."""
        return dict(PAPER_PREPROCESSING) if modality == "image" else {"text": "raw caption"}

    # ---- the interface rules use -------------------------------------------------------------
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor] | None:
        """Per-image transform that data-loader workers may apply ahead of `prepare`; None when
        the encoder prepares whole batches itself (e.g. with a Hugging Face processor)."""
        return self._image_transform

    def prepare(self, modality: str, samples: Sequence[Any]) -> Any:
        """Images become a `[B, 3, H, W]` tensor; captions stay a list of strings.

        Images already transformed by `image_transform()` (tensors) are only stacked.
        """
        self._check_modality(modality)
        if modality == "image":
            return torch.stack([image if isinstance(image, torch.Tensor)
                                else self._image_transform(image) for image in samples])
        return [str(text) for text in samples]

    @torch.inference_mode()
    def encode(self, modality: str, batch: Any, *, layers: bool = False, tokens_per_sample: int = 0,
               generator: torch.Generator | None = None, all_tokens: bool = False) -> Encoded:
        """Pooled features; with `layers` one global token per layer; with `tokens_per_sample`
        also that many sampled real tokens per sample and layer (drawn from `generator`), or with
        `all_tokens` every real token of every layer (`real_tokens`)."""
        self._check_modality(modality)
        if tokens_per_sample < 0:
            raise ValueError(f"tokens_per_sample must be nonnegative, got {tokens_per_sample}")
        if tokens_per_sample and all_tokens:
            raise ValueError("tokens_per_sample samples tokens; all_tokens keeps them all: choose one")
        if not layers and not tokens_per_sample and not all_tokens:
            return Encoded(pooled=self._encode(modality, batch).float())
        with self._capture(modality) as captured:
            pooled = self._encode(modality, batch).float()
        tokens = None
        if tokens_per_sample:
            tokens = [sample_tokens(*self.layer_tokens(modality, h), tokens_per_sample, generator)
                      for h in captured]
        elif all_tokens:
            tokens = [real_tokens(*self.layer_tokens(modality, h)) for h in captured]
        return Encoded(pooled=pooled, layers=[self.layer_token(modality, h).float() for h in captured],
                       tokens=tokens)

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.spec.name, "loader": self.spec.loader,
                "model": self.spec.model or "", "pretrained": self.spec.pretrained or "",
                "weights": self.weights}

    # ---- helpers ---------------------------------------------------------------------------
    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ConfigError(
                f"encoder {self.spec.name!r} has no {modality!r} modality "
                f"(it has: {', '.join(self.modalities)})"
            )

    @contextlib.contextmanager
    def _capture(self, modality: str) -> Iterator[list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        modules = self.layer_modules(modality)
        slots: list[torch.Tensor | None] = [None] * len(modules)

        def hook_for(index: int):
            def hook(_module, _inputs, output):
                slots[index] = output[0] if isinstance(output, tuple) else output
            return hook

        handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()
        captured.extend(s for s in slots if s is not None)
        if len(captured) != len(modules):
            raise RuntimeError(f"encoder {self.spec.name!r}: a layer hook did not fire")


LoaderFn = Callable[[EncoderSpec], Encoder]
LOADERS: dict[str, LoaderFn] = {}


def register(key: str) -> Callable[[LoaderFn], LoaderFn]:
    """Register a loader under a name of `xsae.encoder_catalog` (what configs are checked against)."""

    def decorator(fn: LoaderFn) -> LoaderFn:
        expected = LOADER_MODALITIES.get(key)
        if expected is None or tuple(getattr(fn, "modalities", ())) != expected:
            raise ConfigError(f"loader {key!r}: xsae.encoder_catalog.LOADER_MODALITIES lists "
                              f"{expected!r}, the loader encodes {getattr(fn, 'modalities', None)!r}")
        LOADERS[key] = fn
        return fn
    return decorator


def load_encoder(spec: EncoderSpec) -> Encoder:
    """Instantiate the encoder a spec names, on its device, in eval mode."""
    if spec.loader not in LOADERS:
        raise ConfigError(
            f"encoders.{spec.name}.loader: unknown loader {spec.loader!r}; "
            f"available: {', '.join(sorted(LOADERS))}"
        )
    return LOADERS[spec.loader](spec)
