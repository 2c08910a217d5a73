"""Tiny randomly initialised stand-ins for the papers' encoders, for the rehearsal of `config/paper.yaml`.

NOT THE PAPERS' WEIGHTS, nor any pretrained weights. Each stand-in has the loader and the architecture
family of one real encoder (an open_clip ViT with its activation and CLIP text tower, DINOv2 with or
without registers, SigLIP / SigLIP2, ViT, Swin, BERT, DeBERTa, sentence-transformers over BERT or
Qwen3, MambaVision), shrunk to a width of 32–64 and 3 layers (MambaVision: its 4 stages), with weights
drawn at random from a seed and a small vocabulary built here. They exist so that the whole paper DAG
runs offline in minutes through the very loaders and code paths the real models take; their features
mean nothing.

`tiny_encoder` turns one `encoders:` entry into its rehearsal entry, `tiny_encoders` a whole section.
Models are saved under one root, one folder per distinct architecture (several checkpoints of one
architecture, e.g. OpenAI and LAION CLIP B/32, share one), built atomically and reused while their
marker file records the same description and seed. The same description and seed give the same bytes.
The builders are public so that the loader tests build their tiny models here too.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xsae.errors import ConfigError

#: Hidden width of a stand-in by the size class of the real model.
WIDTHS = {"base": 32, "large": 48, "huge": 64}
#: Layers of every transformer stand-in: a first, a middle and a last one for per-layer analyses.
N_LAYERS = 3
HEAD_WIDTH = 16
#: Batch size of the rehearsal entries (their datasets are miniatures).
BATCH_SIZE = 8
#: Loaders whose real weights ship in registry packages: their entries are kept as they are.
OFFLINE_LOADERS = frozenset({"efficientnet_lite0", "mobilenet_v2", "minilm_l6_v2"})
MARKER = "xsae_tiny.json"
NOTICE = ("tiny randomly initialised model for the rehearsal of config/paper.yaml: not pretrained, not "
          "the papers' weights; its features carry no meaning")
FORMAT = 1

# ---- vocabularies and tokenizers -----------------------------------------------------------------

#: Whole words of the tiny WordPiece vocabulary; any other word is spelled out in pieces.
CAPTION_WORDS = ("a", "an", "the", "of", "on", "in", "with", "and", "is", "two", "cat", "cats", "dog",
                 "dogs", "mat", "man", "woman", "people", "person", "photo", "picture", "flower", "red",
                 "white", "query", "passage", "x")
#: Characters of the character-level tokenizers (case kept, as Gemma's tokenizer keeps it).
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + " " + string.digits + string.punctuation


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def char_tokenizer(characters: str = CHARACTERS) -> Any:
    """Character-level, case-sensitive tokenizer with <pad> = 0, <eos> = 1, <bos> = 2, <unk> = 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_unique(["<pad>", "<eos>", "<bos>", "<unk>", *characters]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def gemma_tokenizer(characters: str = CHARACTERS) -> Any:
    """A Gemma tokenizer (SigLIP2's) over single characters, no merges: case-sensitive, '▁' for spaces."""
    from transformers import GemmaTokenizer

    tokens = _unique(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁", *characters.replace(" ", "")])
    return GemmaTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[])


def bert_tokenizer(words: Sequence[str] = CAPTION_WORDS) -> Any:
    """An uncased WordPiece tokenizer: `words` whole, anything else letter by letter ('##' pieces)."""
    from transformers import BertTokenizer

    pieces = string.ascii_lowercase + string.digits
    tokens = _unique(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *pieces, *string.punctuation,
                      *(f"##{c}" for c in pieces)])
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)})


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def deberta_tokenizer() -> Any:
    """DeBERTa (v1)'s GPT-2 byte-level BPE over the 256 byte symbols, no merges, [CLS] … [SEP]."""
    from transformers import DebertaTokenizer

    tokens = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", *_byte_symbols()]
    return DebertaTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[])


def qwen_tokenizer() -> Any:
    """Qwen's byte-level BPE over the 256 byte symbols, no merges; pads on the left and appends
    <|endoftext|> to every text, as Qwen3-Embedding's tokenizer does for last-token pooling."""
    from tokenizers import processors
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab={token: i for i, token in enumerate(_byte_symbols())}, merges=[],
                               padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
        special_tokens=[(eos, tokenizer.convert_tokens_to_ids(eos))])
    return tokenizer


# ---- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw initial weights from `seed` without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Building random models is expected: no progress bars, no warnings that weights are missing."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    disabled = logging.root.manager.disable
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.disable(max(disabled, logging.WARNING))
    try:
        yield
    finally:
        logging.disable(disabled)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _heads(width: int) -> int:
    return max(1, width // HEAD_WIDTH)


def _save_hf(folder: Path, model: Any, *extras: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for extra in extras:
        extra.save_pretrained(folder)
    return folder


def _transformer_kwargs(width: int, layers: int) -> dict[str, int]:
    return {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": _heads(width),
            "intermediate_size": 4 * width}


# ---- open_clip -----------------------------------------------------------------------------------


def open_clip_config(model_name: str, *, width: int, layers: int = N_LAYERS,
                     embed_dim: int | None = None) -> dict[str, Any]:
    """open_clip's `open_clip_config.json` for a shrunk copy of the built-in `model_name`: the same
    image size, patch size, activation (quick_gelu or not), pooling and text context, with `width`,
    `layers` and heads of HEAD_WIDTH in both towers; embed_dim defaults to width / 2."""
    import open_clip

    real = open_clip.get_model_config(model_name)
    if real is None:
        raise ValueError(f"{model_name!r} is not a built-in open_clip model name")
    vision, text = dict(real["vision_cfg"]), dict(real["text_cfg"])
    if "timm_model_name" in vision or "hf_model_name" in text or "hf_tokenizer_name" in text:
        raise ValueError(f"open_clip model {model_name!r} uses a timm or Hugging Face tower; only "
                         "open_clip's own ViT and text transformer have tiny stand-ins")
    sizes = ("layers", "width", "heads", "head_width", "mlp_ratio")
    vision = {k: v for k, v in vision.items() if k not in sizes}
    text = {k: v for k, v in text.items() if k not in sizes}
    vision.update(width=width, layers=layers, head_width=HEAD_WIDTH)
    text.update(width=width, heads=_heads(width), layers=layers)
    model_cfg = {**{k: v for k, v in real.items() if k not in ("vision_cfg", "text_cfg")},
                 "embed_dim": embed_dim or width // 2, "vision_cfg": vision, "text_cfg": text}
    preprocess = open_clip.transform.PreprocessCfg(size=vision["image_size"])
    preprocess_cfg = {"size": preprocess.size, "mode": preprocess.mode, "mean": list(preprocess.mean),
                      "std": list(preprocess.std), "interpolation": preprocess.interpolation,
                      "resize_mode": preprocess.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def build_open_clip(folder: Path, config: dict[str, Any], *, seed: int) -> Path:
    """A `local-dir:` folder: open_clip_config.json and random open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    with _seeded(seed):
        model = open_clip.create_model(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


# ---- Hugging Face vision -------------------------------------------------------------------------


def build_dinov2(folder: Path, *, registers: bool, width: int, layers: int = N_LAYERS,
                 patch_size: int = 14, image_size: int = 224, num_register_tokens: int = 4,
                 seed: int) -> Path:
    """DINOv2 (`dinov2`) or DINOv2 with registers (`dinov2_with_registers`); position embeddings
    sized for `image_size` (the paper transform's 224 crop: no interpolation needed)."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kwargs = {"hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": _heads(width),
              "mlp_ratio": 4, "image_size": image_size, "patch_size": patch_size}
    with _seeded(seed):
        model = (Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kwargs,
                                                                     num_register_tokens=num_register_tokens))
                 if registers else Dinov2Model(Dinov2Config(**kwargs)))
    return _save_hf(folder, model)


def build_vit(folder: Path, *, width: int, layers: int = N_LAYERS, patch_size: int = 16,
              image_size: int = 224, seed: int) -> Path:
    """ViT (`vit`) with its pooler, at the paper transform's 224 px."""
    from transformers import ViTConfig, ViTModel

    with _seeded(seed):
        model = ViTModel(ViTConfig(**_transformer_kwargs(width, layers), image_size=image_size,
                                   patch_size=patch_size))
    return _save_hf(folder, model)


def build_swin(folder: Path, *, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
               window_size: int, patch_size: int = 4, image_size: int = 224, seed: int) -> Path:
    """Swin (`swin`): one stage per entry of `depths`, widths embed_dim · 2^stage."""
    from transformers import SwinConfig, SwinModel

    with _seeded(seed):
        model = SwinModel(SwinConfig(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                                     depths=list(depths), num_heads=list(num_heads), window_size=window_size))
    return _save_hf(folder, model)


# ---- SigLIP / SigLIP2 ----------------------------------------------------------------------------


def _siglip_text_config(width: int, layers: int, tokenizer: Any) -> dict[str, Any]:
    return {**_transformer_kwargs(width, layers), "vocab_size": len(tokenizer),
            "max_position_embeddings": 64, "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def build_siglip(folder: Path, *, width: int, layers: int = N_LAYERS, patch_size: int = 16,
                 image_size: int = 128, seed: int) -> Path:
    """Fixed-resolution SigLIP2 as the hub ships it (`siglip`: SiglipModel, SiglipImageProcessor
    resizing to `image_size`, a Gemma tokenizer); the text tower takes 64 tokens."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = gemma_tokenizer()
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=2,
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer)
    with _seeded(seed):
        model = SiglipModel(SiglipConfig(
            text_config=_siglip_text_config(width, layers, tokenizer),
            vision_config={**_transformer_kwargs(width, layers), "image_size": image_size,
                           "patch_size": patch_size}))
    return _save_hf(folder, model, processor)


def build_siglip2_naflex(folder: Path, *, width: int, layers: int = N_LAYERS, patch_size: int = 16,
                         max_num_patches: int = 64, seed: int, tokenizer: Any = None) -> Path:
    """NaFlex SigLIP2 (`siglip2`: variable resolution up to `max_num_patches`, padding masks);
    the character tokenizer unless one is given."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tokenizer = tokenizer if tokenizer is not None else char_tokenizer()
    processor = Siglip2Processor(
        image_processor=Siglip2ImageProcessor(max_num_patches=max_num_patches, patch_size=patch_size),
        tokenizer=tokenizer)
    with _seeded(seed):
        model = Siglip2Model(Siglip2Config(
            text_config=_siglip_text_config(width, layers, tokenizer),
            vision_config={**_transformer_kwargs(width, layers), "patch_size": patch_size,
                           "num_patches": max_num_patches}))
    return _save_hf(folder, model, processor)


# ---- Hugging Face text ---------------------------------------------------------------------------


def build_bert(folder: Path, *, width: int, layers: int = N_LAYERS, seed: int,
               tokenizer: Any = None) -> Path:
    """BERT (`bert`) with the tiny WordPiece tokenizer unless one is given."""
    from transformers import BertConfig, BertModel

    tokenizer = tokenizer if tokenizer is not None else bert_tokenizer()
    with _seeded(seed):
        model = BertModel(BertConfig(**_transformer_kwargs(width, layers), vocab_size=len(tokenizer),
                                     max_position_embeddings=512))
    return _save_hf(folder, model, tokenizer)


def build_deberta(folder: Path, *, width: int, layers: int = N_LAYERS, seed: int) -> Path:
    """DeBERTa v1 (`deberta`, as microsoft/deberta-base and -large): disentangled relative attention
    (c2p and p2c), no absolute positions in the input, a byte-level BPE tokenizer."""
    from transformers import DebertaConfig, DebertaModel

    tokenizer = deberta_tokenizer()
    with _seeded(seed):
        model = DebertaModel(DebertaConfig(
            **_transformer_kwargs(width, layers), vocab_size=len(tokenizer), max_position_embeddings=512,
            relative_attention=True, max_relative_positions=-1, pos_att_type=["c2p", "p2c"],
            position_biased_input=False, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id))
    return _save_hf(folder, model, tokenizer)


def build_qwen3(folder: Path, *, width: int, layers: int = N_LAYERS, seed: int) -> Path:
    """A Qwen3 decoder (`qwen3`, grouped-query attention, tied embeddings) with a byte-level tokenizer."""
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = qwen_tokenizer()
    heads = _heads(width)
    with _seeded(seed):
        model = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=3 * width,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            head_dim=HEAD_WIDTH, max_position_embeddings=512, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    return _save_hf(folder, model, tokenizer)


def build_sentence_transformer(folder: Path, backbone: str | Path, *, pooling: str = "mean",
                               normalize: bool = False, max_seq_length: int = 128,
                               prompts: Mapping[str, str] | None = None) -> Path:
    """A SentenceTransformer folder: the Hugging Face model in `backbone`, then Pooling (`pooling`
    mode) and, with `normalize`, Normalize; `prompts` as the model declares them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(backbone), max_seq_length=max_seq_length)
    modules: list[nn.Module] = [transformer, Pooling(transformer.get_embedding_dimension(),
                                                     pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=dict(prompts or {}))
    model.save(str(folder), create_model_card=False)
    return folder


# ---- MambaVision ---------------------------------------------------------------------------------


def mambavision_config(*, dim: int = 8, in_dim: int = 8, depths: Sequence[int] = (1, 1, 2, 2),
                       num_heads: Sequence[int] = (1, 2, 2, 4), window_size: Sequence[int] = (8, 8, 14, 7),
                       mlp_ratio: float = 4, resolution: int = 224, crop_pct: float = 1.0) -> dict[str, Any]:
    """A hub-style MambaVision config.json: 4 stages of widths dim · 2^stage (the hybrid stages 3–4
    hold one Mamba and one attention block each at depth 2), the B models' windows at 224 px."""
    return {"model_type": "mambavision", "dim": dim, "in_dim": in_dim, "depths": list(depths),
            "num_heads": list(num_heads), "window_size": list(window_size), "mlp_ratio": mlp_ratio,
            "resolution": resolution, "crop_pct": crop_pct}


def save_mambavision(folder: Path, model: nn.Module, config: Mapping[str, Any]) -> Path:
    """A checkpoint folder in the hub's layout: config.json and model.safetensors, keys under `model.`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    return folder


def build_mambavision(folder: Path, config: Mapping[str, Any], *, seed: int, layer_scale: bool = False,
                      random_norm: bool = False) -> Path:
    """xsae's MambaVision network for `config`, random weights; with `random_norm` the final
    BatchNorm gets random statistics and scale, so that the normed last stage is not the identity."""
    from xsae.encoders.mambavision import MambaVisionArch, MambaVisionBackbone

    arch = MambaVisionArch.from_config(dict(config), "tiny MambaVision config")
    with _seeded(seed):
        model = MambaVisionBackbone(MambaVisionArch(**{**arch.__dict__, "layer_scale": layer_scale}))
        if random_norm:
            with torch.no_grad():
                model.norm.running_mean.normal_()
                model.norm.running_var.uniform_(0.5, 2.0)
                model.norm.weight.normal_()
    return save_mambavision(folder, model, config)


# ---- which stand-in for which entry --------------------------------------------------------------


@dataclass(frozen=True)
class TinyArchitecture:
    """A stand-in to build: its family (builder), the builder's settings, and the folder name `key`,
    shared by every entry whose real model has this architecture."""

    family: str
    key: str
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "key": self.key, "settings": self.settings}


def _tokens(model: str) -> list[str]:
    return re.split(r"[^a-z0-9.]+", model.lower().rsplit("/", 1)[-1])


def _size_class(model: str) -> str:
    """base / large / huge from a model name: 'large', 'L' (ViT-L-14), 'so400m', 'huge', 'giant', or
    a decoder's parameter count ('0.6B' is base)."""
    tokens = set(_tokens(model))
    if tokens & {"so400m", "huge", "h", "giant", "g", "xl", "xxl"}:
        return "huge"
    if tokens & {"large", "l", "l14", "l16"}:
        return "large"
    billions = [float(m.group(1)) for t in tokens if (m := re.fullmatch(r"(\d+(?:\.\d+)?)b", t))]
    if billions:
        return "base" if billions[0] < 1 else "large" if billions[0] < 5 else "huge"
    return "base"


def _number(pattern: str, model: str, default: int) -> int:
    found = re.search(pattern, model.lower())
    return int(found.group(1)) if found else default


def _plan_open_clip(model: str) -> TinyArchitecture:
    import open_clip

    name = model.replace("/", "-")
    real = open_clip.get_model_config(name)
    if real is None:
        raise ValueError(f"{model!r} is not a built-in open_clip model name")
    real_width = real["vision_cfg"].get("width", 768)
    size = "base" if real_width <= 768 else "large" if real_width <= 1024 else "huge"
    return TinyArchitecture("open_clip", f"open_clip-{name}",
                            {"config": open_clip_config(name, width=WIDTHS[size])})


def _plan_dinov2(model: str) -> TinyArchitecture:
    if "dinov2" not in model.lower():
        raise ValueError(f"{model!r} is not a DINOv2 model id")
    registers = "reg" in model.lower()
    size = _size_class(model)
    return TinyArchitecture("dinov2", f"dinov2{'-with-registers' if registers else ''}-{size}",
                            {"registers": registers, "width": WIDTHS[size], "patch_size": 14})


def _plan_siglip(model: str) -> TinyArchitecture:
    if "siglip" not in model.lower():
        raise ValueError(f"{model!r} is not a SigLIP / SigLIP2 model id")
    size, patch = _size_class(model), _number(r"patch(\d+)", model, 16)
    if "naflex" in model.lower():
        return TinyArchitecture("siglip2_naflex", f"siglip2-naflex-{size}-patch{patch}",
                                {"width": WIDTHS[size], "patch_size": patch, "max_num_patches": 64})
    real_image = _number(r"-(\d+)$", model, 224)
    return TinyArchitecture("siglip", f"siglip-{size}-patch{patch}-{real_image}",
                            {"width": WIDTHS[size], "patch_size": patch, "image_size": 8 * patch})


def _plan_hf_vision(model: str) -> TinyArchitecture:
    size, lowered = _size_class(model), model.lower()
    if "swin" in lowered:
        window = _number(r"window(\d+)", model, 7)
        patch = _number(r"patch(\d+)", model, 4)
        embed = WIDTHS[size] // 2 ** (N_LAYERS - 1)
        return TinyArchitecture("swin", f"swin-{size}-patch{patch}-window{window}",
                                {"embed_dim": embed, "depths": [2] * N_LAYERS,
                                 "num_heads": [max(1, embed * 2**i // HEAD_WIDTH) for i in range(N_LAYERS)],
                                 "window_size": window, "patch_size": patch})
    if "vit" in _tokens(model):
        patch = _number(r"patch(\d+)", model, 16)
        return TinyArchitecture("vit", f"vit-{size}-patch{patch}",
                                {"width": WIDTHS[size], "patch_size": patch})
    raise ValueError(f"{model!r} is neither a ViT nor a Swin model id")


def _plan_hf_text(model: str) -> TinyArchitecture:
    size, name = _size_class(model), model.lower().rsplit("/", 1)[-1]
    if name.startswith("deberta"):
        if re.match(r"deberta-v[23]", name):
            raise ValueError(f"{model!r} is DeBERTa v2/v3; only DeBERTa v1 (microsoft/deberta-base, "
                             "-large) has a tiny stand-in")
        return TinyArchitecture("deberta", f"deberta-{size}", {"width": WIDTHS[size]})
    if name.startswith("bert"):
        return TinyArchitecture("bert", f"bert-{size}", {"width": WIDTHS[size]})
    raise ValueError(f"{model!r} is neither a BERT nor a DeBERTa model id")


QWEN3_EMBEDDING_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": ""}


def _plan_sentence_transformers(model: str) -> TinyArchitecture:
    size, tokens = _size_class(model), _tokens(model)
    if "qwen3" in tokens:
        return TinyArchitecture("sentence_transformer_qwen3", f"qwen3-{size}-lasttoken",
                                {"width": WIDTHS[size], "pooling": "lasttoken", "normalize": True,
                                 "prompts": QWEN3_EMBEDDING_PROMPTS})
    if {"e5", "gte"} & set(tokens):
        return TinyArchitecture("sentence_transformer_bert", f"bert-{size}-mean",
                                {"width": WIDTHS[size], "pooling": "mean", "normalize": True})
    raise ValueError(f"{model!r} is none of E5, GTE (BERT, mean pooling) or Qwen3-Embedding (last token)")


def _plan_mambavision(model: str) -> TinyArchitecture:
    found = re.search(r"mambavision-([a-z0-9]+)", model.lower())
    if not found:
        raise ValueError(f"{model!r} is not a MambaVision model id")
    return TinyArchitecture("mambavision", f"mambavision-{found.group(1)}", {"config": mambavision_config()})


PLANNERS: dict[str, Callable[[str], TinyArchitecture]] = {
    "open_clip": _plan_open_clip,
    "dinov2": _plan_dinov2,
    "hf_siglip2": _plan_siglip,
    "hf_vision": _plan_hf_vision,
    "hf_text": _plan_hf_text,
    "sentence_transformers": _plan_sentence_transformers,
    "mambavision": _plan_mambavision,
}


def tiny_architecture(name: str, entry: Mapping[str, Any]) -> TinyArchitecture:
    """The stand-in for encoder `name`'s config entry; errors name the entry."""
    loader = entry.get("loader")
    if loader not in PLANNERS:
        raise ConfigError(
            f"encoders.{name}.loader: no tiny rehearsal stand-in for loader {loader!r} (stand-ins exist "
            f"for {', '.join(sorted(PLANNERS))}; {', '.join(sorted(OFFLINE_LOADERS))} are kept as they are)")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"encoders.{name}.model: loader {loader!r} needs a model name to choose its "
                          "tiny stand-in")
    try:
        return PLANNERS[loader](model)
    except ValueError as exc:
        raise ConfigError(f"encoders.{name}.model: no tiny rehearsal stand-in: {exc}") from exc


# ---- building ------------------------------------------------------------------------------------


def _build_sentence_transformer(folder: Path, settings: dict[str, Any], seed: int, backbone: str) -> None:
    with tempfile.TemporaryDirectory(prefix="xsae-tiny-backbone-") as scratch:
        build = build_qwen3 if backbone == "qwen3" else build_bert
        build(Path(scratch), width=settings["width"], seed=seed)
        build_sentence_transformer(folder, scratch, pooling=settings["pooling"],
                                   normalize=settings["normalize"], prompts=settings.get("prompts"))


BUILDERS: dict[str, Callable[[Path, dict[str, Any], int], Any]] = {
    "open_clip": lambda folder, s, seed: build_open_clip(folder, s["config"], seed=seed),
    "dinov2": lambda folder, s, seed: build_dinov2(folder, **s, seed=seed),
    "siglip": lambda folder, s, seed: build_siglip(folder, **s, seed=seed),
    "siglip2_naflex": lambda folder, s, seed: build_siglip2_naflex(folder, **s, seed=seed),
    "vit": lambda folder, s, seed: build_vit(folder, **s, seed=seed),
    "swin": lambda folder, s, seed: build_swin(folder, **s, seed=seed),
    "bert": lambda folder, s, seed: build_bert(folder, **s, seed=seed),
    "deberta": lambda folder, s, seed: build_deberta(folder, **s, seed=seed),
    "sentence_transformer_bert":
        lambda folder, s, seed: _build_sentence_transformer(folder, s, seed, "bert"),
    "sentence_transformer_qwen3":
        lambda folder, s, seed: _build_sentence_transformer(folder, s, seed, "qwen3"),
    "mambavision":
        lambda folder, s, seed: build_mambavision(folder, s["config"], seed=seed, random_norm=True),
}


def _architecture_seed(key: str, seed: int) -> int:
    """Each architecture draws from its own seed: stand-ins of different models differ."""
    return int.from_bytes(hashlib.sha256(f"{key}:{seed}".encode()).digest()[:4], "big") >> 1


def _marker(arch: TinyArchitecture, seed: int) -> dict[str, Any]:
    return {"notice": NOTICE, "format": FORMAT, "seed": seed, "architecture": arch.describe()}


def _is_built(folder: Path, marker: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == json.loads(json.dumps(marker))
    except (OSError, ValueError):
        return False


def build_architecture(arch: TinyArchitecture, root: str | Path, *, seed: int = 0) -> Path:
    """The folder `root/<key>` holding the stand-in, built unless its marker records the same
    description and seed. Built in a temporary folder and renamed: never left half-written."""
    root = Path(root)
    folder = root / arch.key
    marker = _marker(arch, seed)
    if _is_built(folder, marker):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{arch.key}.", dir=root))
    try:
        with _quiet():
            BUILDERS[arch.family](scratch, arch.settings, _architecture_seed(arch.key, seed))
        (scratch / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))
        if folder.exists() and not _is_built(folder, marker):
            shutil.rmtree(folder)
        if not folder.exists():
            os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def tiny_encoder(name: str, entry: Mapping[str, Any], root: str | Path, *, seed: int = 0,
                 batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """The rehearsal entry of encoder `name`: a tiny randomly initialised model (not the paper's
    weights) of the same loader and architecture family, saved under `root`.

    Loader, options, layers and layer_tokens are kept; `model` points at the stand-in's folder
    (`local-dir:<folder>` for open_clip), `pretrained` is None (no tag, no revision), and the entry
    runs on the CPU in float32 with a batch size of at most `batch_size`. Entries of the offline
    loaders, whose real weights ship in registry packages, are returned unchanged.
    """
    loader = entry.get("loader")
    if loader in OFFLINE_LOADERS:
        return copy.deepcopy(dict(entry))
    folder = build_architecture(tiny_architecture(name, entry), root, seed=seed)
    tiny = copy.deepcopy(dict(entry))
    tiny.update(model=f"local-dir:{folder}" if loader == "open_clip" else str(folder), pretrained=None,
                gpu=False, dtype="float32",
                batch_size=min(int(entry.get("batch_size", batch_size)), batch_size))
    return tiny


def tiny_layer_count(entry: Mapping[str, Any]) -> int:
    """How many layers per modality the stand-in of `entry` stores with `layers: true` (N_LAYERS,
    MambaVision its 4 stages): what a rehearsal's `sharedness.models.*.n_layers` must say."""
    loader = entry.get("loader")
    if loader in OFFLINE_LOADERS or loader not in PLANNERS:
        raise ValueError(f"loader {loader!r} has no tiny stand-in, so no stand-in layer count")
    return len(mambavision_config()["depths"]) if loader == "mambavision" else N_LAYERS


def tiny_encoders(encoders: Mapping[str, Mapping[str, Any]], root: str | Path, *, seed: int = 0,
                  batch_size: int = BATCH_SIZE) -> dict[str, dict[str, Any]]:
    """`tiny_encoder` for a whole `encoders:` section; each architecture is built once. Every
    unsupported entry is checked before anything is built."""
    for name, entry in encoders.items():
        if entry.get("loader") not in OFFLINE_LOADERS:
            tiny_architecture(name, entry)
    return {name: tiny_encoder(name, entry, root, seed=seed, batch_size=batch_size)
            for name, entry in encoders.items()}
