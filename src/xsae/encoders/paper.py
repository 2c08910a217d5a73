"""The encoders of the SPARC paper: OpenCLIP, DINOv2, SigLIP2, ViT/Swin, BERT/DeBERTa, and
sentence-transformers models (E5, GTE, Qwen3-Embedding).

Unlike `offline`, these download their weights from the Hugging Face hub (or open_clip's sources)
on first use, so they need internet access or a pre-populated cache (HF_HOME). Images get the
paper's transform (Appendix C: resize 256, centre crop 224, ImageNet mean/std) except SigLIP2,
which the paper runs with its own processor. Per-layer features are the residual stream after
each transformer block, reduced to the token the model itself pools (CLS, EOT, last or mean).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from xsae.encoders.base import Encoder, EncoderSpec, register, to_rgb
from xsae.errors import ConfigError, DownloadError

T = TypeVar("T")

# ---- shared helpers ------------------------------------------------------------------------------


def _check_options(spec: EncoderSpec, allowed: dict[str, str]) -> None:
    """Reject option keys the loader does not know: a typo must not silently change features."""
    for key in spec.options:
        if key not in allowed:
            listing = "; ".join(f"{k}: {v}" for k, v in allowed.items()) or "none"
            raise ConfigError(f"encoders.{spec.name}.options.{key}: unknown option for loader "
                              f"{spec.loader!r} (allowed: {listing})")


def _option(spec: EncoderSpec, key: str, default: Any, ok: Callable[[Any], bool],
            allowed: str) -> Any:
    value = spec.option(key, default)
    if not ok(value):
        raise ConfigError(f"encoders.{spec.name}.options.{key}: got {value!r}; allowed: {allowed}")
    return value


def _flag(spec: EncoderSpec, key: str, default: bool = False) -> bool:
    return _option(spec, key, default, lambda v: isinstance(v, bool), "true or false")


def _choice(spec: EncoderSpec, key: str, choices: Sequence[str], default: str) -> str:
    return _option(spec, key, default, lambda v: v in choices, " or ".join(map(repr, choices)))


def _model_id(spec: EncoderSpec, example: str) -> str:
    if not spec.model:
        raise ConfigError(f"encoders.{spec.name}.model is required by loader {spec.loader!r} "
                          f"(a model name, hub id or local folder, e.g. {example!r})")
    return spec.model


def _weights_name(spec: EncoderSpec) -> str:
    return f"{spec.model} ({spec.pretrained})" if spec.pretrained else str(spec.model)


def _fetch(spec: EncoderSpec, load: Callable[..., T], *args: Any,
           errors: tuple[type[BaseException], ...] = (OSError,), **kwargs: Any) -> T:
    """Call a from_pretrained-like loader; a failed download becomes a message saying what to do."""
    try:
        return load(*args, **kwargs)
    except errors as exc:
        raise DownloadError(
            f"encoders.{spec.name}.model: the weights of {_weights_name(spec)!r} could not be "
            f"fetched or loaded ({type(exc).__name__}: {exc}). Loader {spec.loader!r} downloads "
            "them on first use: this needs internet access, or a Hugging Face cache pre-populated "
            "with this model (HF_HOME; HF_HUB_OFFLINE=1 then uses only the cache). Check the "
            "model id."
        ) from exc


def _hf_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """For hub models, `pretrained` names the revision (branch, tag or commit) to load."""
    return {"revision": spec.pretrained} if spec.pretrained else {}


# Where transformer blocks live; it moves between architectures and transformers versions
# (ViT: `encoder.layer` in transformers 4, `layers` in 5).
BLOCK_PATHS = ("encoder.layer", "encoder.layers", "layers", "model.layers", "transformer.layer",
               "transformer.resblocks", "h")


def _find_blocks(root: Any, paths: Sequence[str] = BLOCK_PATHS) -> list[nn.Module] | None:
    """The first of `paths` (dotted attribute names) that leads to a ModuleList of blocks."""
    for path in paths:
        module: Any = root
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return list(module)
    return None


def _blocks(encoder: Encoder, root: Any, modality: str,
            paths: Sequence[str] = BLOCK_PATHS) -> list[nn.Module]:
    """The blocks under `root`, or the base class's NotImplementedError if there are none."""
    blocks = _find_blocks(root, paths)
    return Encoder.layer_modules(encoder, modality) if blocks is None else blocks


def _gather(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`hidden[b, index[b]]` for a `[B, T, d]` layer output."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


def _pool_tokens(hidden: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One token per sample of `[B, T, d]`: 'cls' (first), 'mean' or 'last' (over `mask`'s ones)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        if mask is None:
            return hidden.mean(dim=1)
        weight = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
        return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
    if mask is None:
        return hidden[:, -1]
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)  # works for either padding side
    return _gather(hidden, last)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _transformers() -> Any:
    import transformers  # heavy: imported only when such an encoder is used

    return transformers


# ---- OpenCLIP ------------------------------------------------------------------------------------


class OpenCLIP(Encoder):
    """OpenCLIP image and text towers; pooled = `encode_image` / `encode_text` (unnormalised).

    Layers: the residual stream after each resblock; image → CLS token, text → the token the
    model pools (argmax of token ids = end-of-text for CLIP). Token 0 of the text tower is useless
    as a global token: under the causal mask it sees only itself, so it is identical for all inputs.
    """

    modalities = ("image", "text")

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {
            "normalize": "true/false, L2-normalise the pooled features (default false)",
            "image_transform": "'paper' (default: resize 256, crop 224, ImageNet mean/std) or "
                               "'model' (open_clip's own preprocessing for this model)"})
        import open_clip  # heavy: imported only when used

        name = _model_id(spec, "ViT-B-16")
        self.normalize = _flag(spec, "normalize")
        self.transform_kind = _choice(spec, "image_transform", ("paper", "model"), "paper")
        hub = name.startswith(("hf-hub:", "local-dir:"))
        if not hub and name.replace("/", "-") not in open_clip.list_models():
            raise ConfigError(f"encoders.{spec.name}.model: {name!r} is not an open_clip model "
                              "name (see open_clip.list_models()), nor 'hf-hub:…' / 'local-dir:…'")
        tags = [] if hub else open_clip.list_pretrained_tags_by_model(name.replace("/", "-"))
        pretrained = spec.pretrained
        if pretrained and not hub and pretrained not in tags and not os.path.isfile(pretrained):
            raise ConfigError(f"encoders.{spec.name}.pretrained: {pretrained!r} is neither a "
                              f"pretrained tag of {name} ({', '.join(tags) or 'none'}) nor a file")
        if (pretrained in tags and "quickgelu" not in name
                and open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu")):
            # open_clip would load QuickGELU-trained weights into a GELU network, with a warning only
            raise ConfigError(f"encoders.{spec.name}.model: the {pretrained!r} weights were trained with "
                              f"QuickGELU; use {name}-quickgelu")
        self.model, _, self._model_transform = _fetch(
            spec, open_clip.create_model_and_transforms, name, pretrained=pretrained,
            errors=(OSError, RuntimeError))
        self.model.eval().to(self.device)
        self.tokenizer = _fetch(spec, open_clip.get_tokenizer, name)
        self.weights = _weights_name(spec) if pretrained or hub else f"{name} (random init)"
        if self.transform_kind == "model":
            self._image_transform = lambda image: self._model_transform(to_rgb(image))
        self._text = getattr(self.model, "text", self.model)  # CustomTextCLIP keeps it in .text
        self._text_ids: torch.Tensor | None = None

    def _encode(self, modality: str, batch: Any) -> torch.Tensor:
        if modality == "image":
            return self.model.encode_image(batch.to(self.device), normalize=self.normalize)
        self._text_ids = self.tokenizer(list(batch)).to(self.device)
        return self.model.encode_text(self._text_ids, normalize=self.normalize)

    def _tower(self, modality: str) -> Any:
        return (self.model.visual if modality == "image" else self._text).transformer

    def layer_modules(self, modality: str) -> list[nn.Module]:
        tower = self.model.visual if modality == "image" else self._text
        return _blocks(self, tower, modality, ("transformer.resblocks",))  # not HF text towers

    def _pooled_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Mirror of open_clip's `text_global_pool`: which token the text tower pools."""
        pool = getattr(self._text, "pool_type", getattr(self.model, "text_pool_type", "argmax"))
        eos = getattr(self._text, "eos_id", getattr(self.model, "text_eos_id", None))
        if pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long)
        if pool == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
        if pool == "eos" and eos is not None:
            return (ids == eos).int().argmax(dim=-1)
        return ids.argmax(dim=-1)

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        if not getattr(self._tower(modality), "batch_first", True):
            hidden = hidden.transpose(0, 1)  # older open_clip runs blocks as [T, B, d]
        if modality == "image":
            return hidden[:, 0]
        if self._text_ids is None:
            raise RuntimeError("open_clip text layer token requested before any text batch")
        return _gather(hidden, self._pooled_index(self._text_ids))

    def layer_tokens(self, modality: str, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if hidden.dim() == 3 and not getattr(self._tower(modality), "batch_first", True):
            hidden = hidden.transpose(0, 1)
        return super().layer_tokens(modality, hidden)

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        """Text: the tokens up to the pooled one (end-of-text); under the causal mask the padding
        after it never reaches the output."""
        if modality == "image":
            return None
        if self._text_ids is None:
            raise RuntimeError("open_clip text layer tokens requested before any text batch")
        last = self._pooled_index(self._text_ids).to(hidden.device)
        return torch.arange(hidden.shape[1], device=hidden.device)[None, :] <= last[:, None]

    def preprocessing(self, modality: str) -> dict[str, Any]:
        if modality == "image":
            base = (super().preprocessing(modality) if self.transform_kind == "paper"
                    else {"transform": repr(self._model_transform)})
            return {**base, "normalize": self.normalize}
        return {"text": "raw caption", "tokenizer": type(self.tokenizer).__name__,
                "context_length": getattr(self.tokenizer, "context_length", None),
                "normalize": self.normalize}


# ---- Hugging Face vision -------------------------------------------------------------------------


class DINOv2(Encoder):
    """DINOv2 (with registers) via transformers; pooled = `pooler_output`, the layer-normed CLS
    token (what the torch-hub model returns as its global feature). Layers: CLS of each block."""

    modalities = ("image",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {})
        model_id = _model_id(spec, "facebook/dinov2-with-registers-large")
        tf = _transformers()
        self.model = _fetch(spec, tf.AutoModel.from_pretrained, model_id, **_hf_kwargs(spec))
        self.model.eval().to(self.device)
        self.weights = _weights_name(spec)

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=batch.to(self.device)).pooler_output

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return _blocks(self, self.model, modality)


class HFVision(Encoder):
    """ViT or Swin via `AutoModel`, paper transform. Pooling 'cls' (ViT: last_hidden_state[:, 0])
    or 'pooler' (Swin: `pooler_output`, the mean of the normed last stage; default for Swin).

    Layers: ViT blocks (CLS token); Swin stages `encoder.layers` (mean over tokens, Swin has no
    CLS token), each stage's output after its patch merging, as in `hidden_states`.
    """

    modalities = ("image",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {"pooling": "'cls' (ViT) or 'pooler' (Swin); default by model type"})
        model_id = _model_id(spec, "google/vit-large-patch16-224")
        tf = _transformers()
        self.model = _fetch(spec, tf.AutoModel.from_pretrained, model_id, **_hf_kwargs(spec))
        self.model.eval().to(self.device)
        self.weights = _weights_name(spec)
        self.stages = "swin" in self.model.config.model_type  # stages, no CLS token
        self.pooling = _choice(spec, "pooling", ("cls", "pooler"),
                               "pooler" if self.stages else "cls")

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=batch.to(self.device))
        return out.last_hidden_state[:, 0] if self.pooling == "cls" else out.pooler_output

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return _blocks(self, self.model, modality)

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        return _pool_tokens(hidden, "mean" if self.stages else "cls")

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return {**super().preprocessing(modality), "pooling": self.pooling}


class SigLIP2(Encoder):
    """SigLIP / SigLIP2 via `AutoModel` + `AutoProcessor`, with the model's own image processor.

    Text as SigLIP was trained: lowercased, right-padded to 64 tokens, no attention mask (the
    canonical text tower attends to the padding and pools the last position). Pooled features are
    `get_image_features` / `get_text_features` (the attention-pool head / last-token head).
    Layers: the vision tower has no CLS token, so each layer is pooled as the last one is: the
    final LayerNorm and the attention-pooling head (`layer_pooling: head`, so that the last layer's
    token is the pooled feature), or the mean over the real patches (`mean`). Text layers: the
    last real (non-padding) token, one of the tokens a per-layer SAE trains on (the pooled text
    feature reads the last position, a padding token that no SAE sees).
    """

    modalities = ("image", "text")
    max_length = 64

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {"layer_pooling": "'head' (default: the vision tower's own pooling "
                                                "head on each layer) or 'mean' (mean of the patches)"})
        self.layer_pooling = _choice(spec, "layer_pooling", ("head", "mean"), "head")
        model_id = _model_id(spec, "google/siglip2-so400m-patch14-224")
        tf = _transformers()
        self.model = _fetch(spec, tf.AutoModel.from_pretrained, model_id, **_hf_kwargs(spec))
        self.model.eval().to(self.device)
        self.processor = _fetch(spec, tf.AutoProcessor.from_pretrained, model_id,
                                **_hf_kwargs(spec))
        self.weights = _weights_name(spec)
        self._pixel_mask: torch.Tensor | None = None
        self._text_ids: torch.Tensor | None = None

    def image_transform(self) -> None:
        """None: the processor works on whole batches (resizing, padding masks), not per image."""
        return None

    def prepare(self, modality: str, samples: Sequence[Any]) -> Any:
        self._check_modality(modality)
        if modality == "text":
            return [str(text) for text in samples]
        return dict(self.processor.image_processor(
            images=[to_rgb(image) for image in samples], return_tensors="pt"))

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5

    def _encode(self, modality: str, batch: Any) -> torch.Tensor:
        if modality == "image":
            inputs = _to_device(batch, self.device)
            self._pixel_mask = inputs.get("pixel_attention_mask")
            return self._features(self.model.get_image_features(**inputs))
        tokens = self.processor.tokenizer(
            [text.lower() for text in batch], padding="max_length", max_length=self.max_length,
            truncation=True, padding_side="right", return_tensors="pt")
        self._text_ids = tokens["input_ids"]
        return self._features(self.model.get_text_features(tokens["input_ids"].to(self.device)))

    def layer_modules(self, modality: str) -> list[nn.Module]:
        tower = self.model.vision_model if modality == "image" else self.model.text_model
        return _blocks(self, tower, modality)

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        if modality == "text":  # right-padded: the real tokens come first
            last = (self.token_mask(modality, hidden).sum(dim=1) - 1).clamp_min(0).to(hidden.device)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        vision = self.model.vision_model
        if self.layer_pooling == "mean" or getattr(vision, "head", None) is None:
            return _pool_tokens(hidden, "mean", self._pixel_mask)
        normed = vision.post_layernorm(hidden)
        if self._pixel_mask is None:  # SigLIP (v1): fixed resolution, its head takes no mask
            return vision.head(normed)
        return vision.head(normed, self._pixel_mask)

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        """Image: the real patches (variable-resolution processors pad); text: the non-padding
        tokens (the tower attends to the padding, but padding is no caption content)."""
        if modality == "image":
            return None if self._pixel_mask is None else self._pixel_mask.bool()
        if self._text_ids is None:
            raise RuntimeError("SigLIP text layer tokens requested before any text batch")
        return self._text_ids != self.processor.tokenizer.pad_token_id

    def preprocessing(self, modality: str) -> dict[str, Any]:
        if modality == "text":
            return {"text": "lowercased caption",
                    "tokenizer": type(self.processor.tokenizer).__name__,
                    "padding": "max_length", "padding_side": "right",
                    "max_length": self.max_length, "truncation": True, "attention_mask": False}
        proc = self.processor.image_processor
        keys = ("size", "crop_size", "patch_size", "max_num_patches", "do_resize", "resample",
                "do_center_crop", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std")
        found = {k: getattr(proc, k) for k in keys if getattr(proc, k, None) is not None}
        return _jsonable({"processor": type(proc).__name__, **found,
                          "alpha": "composited on white", "layer_pooling": self.layer_pooling})


# ---- Hugging Face text ---------------------------------------------------------------------------


class HFText(Encoder):
    """BERT / DeBERTa via `AutoModel` + `AutoTokenizer`; pooled = CLS of the last hidden state, or
    the attention-masked mean ('mean'). Layers: `encoder.layer`, same token choice."""

    modalities = ("text",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {"pooling": "'cls' (default) or 'mean' (masked mean of tokens)",
                              "max_length": "positive integer, truncation length (default 512)"})
        model_id = _model_id(spec, "bert-large-uncased")
        self.pooling = _choice(spec, "pooling", ("cls", "mean"), "cls")
        self.max_length = _option(
            spec, "max_length", 512,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "a positive integer")
        tf = _transformers()
        self.model = _fetch(spec, tf.AutoModel.from_pretrained, model_id, **_hf_kwargs(spec))
        self.model.eval().to(self.device)
        self.tokenizer = _fetch(spec, tf.AutoTokenizer.from_pretrained, model_id,
                                **_hf_kwargs(spec))
        self.weights = _weights_name(spec)
        self._mask: torch.Tensor | None = None

    def _encode(self, modality: str, batch: list[str]) -> torch.Tensor:
        tokens = _to_device(dict(self.tokenizer(
            list(batch), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt")), self.device)
        self._mask = tokens.get("attention_mask")
        return _pool_tokens(self.model(**tokens).last_hidden_state, self.pooling, self._mask)

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return _blocks(self, self.model, modality)

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        return _pool_tokens(hidden, self.pooling, self._mask)

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        return None if self._mask is None else self._mask.bool()

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return {"text": "raw caption", "tokenizer": type(self.tokenizer).__name__,
                "padding": "longest", "truncation": True, "max_length": self.max_length,
                "pooling": self.pooling}


class SentenceTransformerText(Encoder):
    """A `SentenceTransformer` model (E5, GTE, Qwen3-Embedding), its own pooling; `prefix` is
    passed as the prompt (E5: 'query: '), else the model's default prompt if it declares one.

    Layers: the blocks of the underlying HF model, reduced with the model's pooling mode ('cls',
    'lasttoken', otherwise the masked mean). The batch is run in the given order (not through
    `encode`, which sorts by length) so that layer tokens line up with the samples.
    """

    modalities = ("text",)

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        _check_options(spec, {
            "prefix": "string prepended to every caption (E5: 'query: ')",
            "normalize": "true/false, L2-normalise the embeddings (default false)"})
        model_id = _model_id(spec, "intfloat/e5-large-v2")
        self.prefix = _option(spec, "prefix", None, lambda v: v is None or isinstance(v, str),
                              "a string")
        self.normalize = _flag(spec, "normalize")
        import sentence_transformers  # heavy: imported only when used

        self.model = _fetch(spec, sentence_transformers.SentenceTransformer, model_id,
                            device=str(self.device), **_hf_kwargs(spec))
        self.model.eval()
        self.weights = _weights_name(spec)
        default = getattr(self.model, "default_prompt_name", None)
        self.prompt = self.prefix if self.prefix is not None else (
            self.model.prompts.get(default) if default else None)
        modes = [getattr(m, "pooling_mode", None) for m in self.model if hasattr(m, "pooling_mode")]
        mode = modes[0] if modes else "mean"
        self.layer_pooling = {"cls": "cls", "lasttoken": "last"}.get(mode, "mean")
        self._mask: torch.Tensor | None = None

    def _encode(self, modality: str, batch: list[str]) -> torch.Tensor:
        features = self.model.preprocess(list(batch), prompt=self.prompt)
        features = _to_device(features, self.device)
        self._mask = features.get("attention_mask")
        embeddings = self.model(features)["sentence_embedding"]
        if getattr(self.model, "truncate_dim", None):
            embeddings = embeddings[:, : self.model.truncate_dim]
        return torch.nn.functional.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return _blocks(self, getattr(self.model[0], "auto_model", None), modality)

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        return _pool_tokens(hidden, self.layer_pooling, self._mask)

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor | None:
        return None if self._mask is None else self._mask.bool()

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return {"text": "raw caption", "prompt": self.prompt, "normalize": self.normalize,
                "max_seq_length": self.model.max_seq_length, "layer_pooling": self.layer_pooling}


register("open_clip")(OpenCLIP)
register("dinov2")(DINOv2)
register("hf_siglip2")(SigLIP2)
register("hf_vision")(HFVision)
register("hf_text")(HFText)
register("sentence_transformers")(SentenceTransformerText)
