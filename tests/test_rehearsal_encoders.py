"""Rehearsal stand-ins (`xsae.rehearsal.encoders`): TINY RANDOMLY INITIALISED models, not the papers'
weights.

For every encoder of config/paper.yaml, the tiny entry loads through the real loader, encodes images
and captions of each modality the real encoder has at a tiny width, gives 3 layers per modality
(MambaVision: its 4 stages) through the feature store's per-layer path, has the real model's
architecture family, and is built to the same bytes twice. Whether the real checkpoints load is not
checked here.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from xsae.datasets.manifest import MANIFEST_COLUMNS
from xsae.encoders import EncoderSpec, load_encoder
from xsae.errors import ConfigError
from xsae.features import extract
from xsae.rehearsal.encoders import (
    BATCH_SIZE,
    N_LAYERS,
    OFFLINE_LOADERS,
    tiny_encoder,
    tiny_encoders,
    tiny_layer_count,
)

pytestmark = pytest.mark.random_weights

CONFIG = Path(__file__).resolve().parents[1] / "config"
PAPER_ENCODERS = yaml.safe_load((CONFIG / "paper.yaml").read_text())["encoders"]
DEFAULT_ENCODERS = yaml.safe_load((CONFIG / "config.yaml").read_text())["encoders"]

MODALITIES = {"open_clip": ("image", "text"), "hf_siglip2": ("image", "text"), "dinov2": ("image",),
              "hf_vision": ("image",), "mambavision": ("image",), "hf_text": ("text",),
              "sentence_transformers": ("text",)}

# `model_type` in the config.json of each real checkpoint. The fixed-resolution SigLIP2 checkpoints
# are published as `siglip` (SiglipModel with a Gemma tokenizer); `siglip2` is the NaFlex variant.
MODEL_TYPES = {
    "facebook/dinov2-with-registers-large": "dinov2_with_registers",
    "facebook/dinov2-with-registers-base": "dinov2_with_registers",
    "facebook/dinov2-base": "dinov2",
    "facebook/dinov2-large": "dinov2",
    "google/siglip2-so400m-patch14-384": "siglip",
    "google/siglip2-base-patch16-224": "siglip",
    "google/siglip2-large-patch16-256": "siglip",
    "google/vit-large-patch16-224": "vit",
    "google/vit-base-patch16-224-in21k": "vit",
    "google/vit-large-patch16-224-in21k": "vit",
    "microsoft/swin-large-patch4-window12-384": "swin",
    "bert-base-uncased": "bert",
    "bert-large-uncased": "bert",
    "microsoft/deberta-base": "deberta",
    "microsoft/deberta-large": "deberta",
    "intfloat/e5-large-v2": "bert",
    "thenlper/gte-large": "bert",
    "Qwen/Qwen3-Embedding-0.6B": "qwen3",
    "nvidia/MambaVision-B-1K": "mambavision",
}
CAPTIONS = ["A cat on a mat.", "two dogs running in the snow, 3 of them"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 256, (240, 240, 4), dtype=np.uint8), mode="RGBA")]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, dict], float]:
    root = tmp_path_factory.mktemp("tiny")
    start = time.perf_counter()
    tiny = tiny_encoders(PAPER_ENCODERS, root)
    return root, tiny, time.perf_counter() - start


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    rows = []
    for i, (image, caption) in enumerate(zip([*_images(), _images()[0].rotate(90)], [*CAPTIONS, "x"],
                                             strict=True)):
        path = folder / f"{i}.png"
        image.save(path)
        rows.append({"sample_id": f"s{i}", "image_path": str(path), "caption": caption,
                     "category": "c", "label_ids": "", "label_names": ""})
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def test_every_entry_keeps_its_loader_options_and_layers(built):
    root, tiny, seconds = built
    assert seconds < 60
    assert tiny.keys() == PAPER_ENCODERS.keys()
    for name, real in PAPER_ENCODERS.items():
        entry = tiny[name]
        for key in ("loader", "options", "layers", "layer_tokens"):
            assert entry.get(key) == real.get(key), (name, key)
        assert entry["gpu"] is False and entry["dtype"] == "float32" and entry["pretrained"] is None
        assert 1 <= entry["batch_size"] <= BATCH_SIZE
        folder = Path(entry["model"].removeprefix("local-dir:"))
        assert folder.parent == root and folder.is_dir()
        assert entry["model"].startswith("local-dir:") == (real["loader"] == "open_clip")
        assert real["loader"] == "open_clip" or real["model"] in MODEL_TYPES, f"add {name} to MODEL_TYPES"


def test_checkpoints_of_one_architecture_share_a_folder(built):
    model = {name: entry["model"] for name, entry in built[1].items()}
    # OpenAI's and MetaCLIP's B/32 are QuickGELU networks, LAION's OpenCLIP B/32 a GELU one
    assert model["clip_b32_openai"] == model["metaclip_b32"] == model["sh_clip_b32"]
    assert model["sh_vit_l16"] == model["vit_l16"]
    assert model["openclip_b32_laion"] != model["clip_b32_openai"]
    assert model["sh_bert_base"] != model["sh_bert_large"]
    assert model["sh_dinov2_b14"] != model["dinov2_b14_reg"]


def _check_family(name: str, real: dict, encoder) -> None:
    """The stand-in is of the real model's architecture family."""
    loader = real["loader"]
    if loader == "open_clip":
        import open_clip
        from open_clip.transformer import QuickGELU

        quick = isinstance(encoder.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
        assert quick == real["model"].endswith("-quickgelu"), name
        patch = open_clip.get_model_config(real["model"])["vision_cfg"]["patch_size"]
        assert encoder.model.visual.conv1.kernel_size == (patch, patch)
        assert len(encoder.layer_modules("text")) == N_LAYERS
        return
    if loader == "mambavision":
        assert len(encoder.model.levels) == 4
        return
    model = encoder.model[0].auto_model if loader == "sentence_transformers" else encoder.model
    assert model.config.model_type == MODEL_TYPES[real["model"]], name
    if loader == "sentence_transformers":
        assert encoder.layer_pooling == ("last" if "Qwen3" in real["model"] else "mean")
    if loader == "dinov2" and "registers" in real["model"]:
        assert model.config.num_register_tokens == 4


@pytest.mark.parametrize("name", list(PAPER_ENCODERS))
def test_tiny_entry_loads_encodes_and_gives_layers(built, manifest, tmp_path, name):
    real, entry = PAPER_ENCODERS[name], built[1][name]
    encoder = load_encoder(EncoderSpec.from_config(name, entry))
    assert encoder.modalities == MODALITIES[real["loader"]]
    _check_family(name, real, encoder)
    for modality in encoder.modalities:
        samples = _images() if modality == "image" else CAPTIONS
        pooled = encoder.encode(modality, encoder.prepare(modality, samples)).pooled
        assert pooled.shape[0] == 2 and 8 <= pooled.shape[1] <= 64, (name, modality, pooled.shape)
        assert torch.isfinite(pooled).all() and not torch.allclose(pooled[0], pooled[1])
    if not real.get("layers"):
        return
    out = tmp_path / "features.h5"
    extract(encoder, manifest, out, layers=True, batch_size=2, progress=False)
    n_layers = tiny_layer_count(real)
    assert n_layers == (4 if real["loader"] == "mambavision" else N_LAYERS)
    with h5py.File(out, "r") as h5:
        for modality in encoder.modalities:
            assert sorted(h5[f"layers/{modality}"]) == [f"{i:02d}" for i in range(n_layers)]
            widths = [h5[f"layers/{modality}/{i:02d}"].shape for i in range(n_layers)]
            assert all(shape[0] == 3 and shape[1] <= 64 for shape in widths), widths
    for modality in encoder.modalities:  # every real token of every layer, as the online SAEs train
        samples = _images() if modality == "image" else CAPTIONS
        tokens = encoder.encode(modality, encoder.prepare(modality, samples), all_tokens=True).tokens
        assert len(tokens) == n_layers
        for layer_tokens, rows in tokens:
            assert layer_tokens.shape[0] == rows.shape[0] > 2 and set(rows.tolist()) == {0, 1}
            assert torch.isfinite(layer_tokens).all()


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_building_twice_gives_identical_bytes(built, tmp_path):
    root, tiny, _ = built
    again = tiny_encoders(PAPER_ENCODERS, tmp_path)
    assert {n: e["model"].replace(str(tmp_path), "ROOT") for n, e in again.items()} == \
        {n: e["model"].replace(str(root), "ROOT") for n, e in tiny.items()}
    first, second = _files(root), _files(tmp_path)
    assert first.keys() == second.keys()
    assert [path for path in first if first[path] != second[path]] == []


def test_a_built_folder_is_reused_and_another_seed_rebuilds_it(built, tmp_path):
    real = PAPER_ENCODERS["sh_bert_base"]
    folder = Path(tiny_encoder("sh_bert_base", real, tmp_path)["model"])
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    cased = tiny_encoder("sh_bert_large", {**real, "model": "bert-base-cased"}, tmp_path)
    assert Path(cased["model"]) == folder
    assert weights.stat().st_mtime_ns == stamp
    reseeded = Path(tiny_encoder("sh_bert_base", real, tmp_path, seed=1)["model"])
    assert reseeded == folder
    assert weights.read_bytes() != (built[0] / folder.name / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch folder left


def test_offline_loaders_are_kept_as_they_are(tmp_path):
    assert {entry["loader"] for entry in DEFAULT_ENCODERS.values()} <= OFFLINE_LOADERS
    assert tiny_encoders(DEFAULT_ENCODERS, tmp_path) == DEFAULT_ENCODERS
    assert list(tmp_path.iterdir()) == []


def test_unknown_loader_or_model_names_the_encoder(tmp_path):
    with pytest.raises(ConfigError, match=r"encoders\.mystery\.loader: no tiny rehearsal stand-in .*'nope'"):
        tiny_encoder("mystery", {"loader": "nope", "model": "x"}, tmp_path)
    with pytest.raises(ConfigError, match=r"encoders\.weird\.model: .*'google/convnext-tiny-224'"):
        tiny_encoders({"ok": PAPER_ENCODERS["sh_bert_base"],
                       "weird": {"loader": "hf_vision", "model": "google/convnext-tiny-224"}}, tmp_path)
    assert list(tmp_path.iterdir()) == []  # checked before anything is built
    with pytest.raises(ConfigError, match=r"encoders\.nameless\.model: loader 'open_clip' needs a model"):
        tiny_encoder("nameless", {"loader": "open_clip"}, tmp_path)
