"""The paper loaders (`xsae.encoders.paper`) on TINY RANDOMLY INITIALISED architectures.

No real weights are used (there is no internet here): each test builds a few-thousand-parameter
model of the right architecture offline with the builders of `xsae.rehearsal.encoders` (open_clip
config, transformers configs, tiny tokenizers), saves it to a temporary folder and loads it through
the real loader by pointing `model` at that folder. What is checked is the loader's wiring: pooled
outputs equal a direct call of the library's own API, layer tokens equal the library's hidden states
at the chosen token, options and errors behave. Whether the real checkpoints load is not checked here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from xsae.encoders import EncoderSpec, load_encoder
from xsae.errors import ConfigError, DownloadError
from xsae.rehearsal.encoders import (
    build_bert,
    build_deberta,
    build_dinov2,
    build_open_clip,
    build_sentence_transformer,
    build_siglip2_naflex,
    build_swin,
    build_vit,
    char_tokenizer,
    open_clip_config,
)

pytestmark = pytest.mark.random_weights

WIDTH, EMBED = 32, 16
CAPTIONS = ["a cat on a mat", "two dogs"]


def _images() -> list[Image.Image]:
    """Random-pixel images, one non-square and one RGBA (composited on white by the loaders)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (240, 240, 4), dtype=np.uint8), mode="RGBA")
    return [rgb, rgba]


def _spec(loader: str, model: str, pretrained: str | None = None, **options) -> EncoderSpec:
    return EncoderSpec(name="tiny", loader=loader, model=model, pretrained=pretrained,
                       options=options)


# ---- tiny random models (built by xsae.rehearsal.encoders), once per module ---------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, str]:
    """A registered tiny open_clip config (ViT-B-32's shape: patch 32 on 224 px) and its random
    checkpoint file."""
    import open_clip

    config = open_clip_config("ViT-B-32", width=WIDTH, layers=2, embed_dim=EMBED)
    folder = build_open_clip(tmp_path_factory.mktemp("clip"), config, seed=0)
    name = "xsae-test-tiny-random-clip"
    (folder / f"{name}.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(folder / f"{name}.json")
    return name, str(folder / "open_clip_model.safetensors")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> dict[str, str]:
    """Folders holding tiny random DINOv2-with-registers, ViT, Swin, SigLIP2, BERT and DeBERTa."""
    root = tmp_path_factory.mktemp("hf")
    folders = {
        "dinov2": build_dinov2(root / "dinov2", registers=True, width=WIDTH, layers=2, patch_size=16,
                               seed=0),
        "vit": build_vit(root / "vit", width=WIDTH, layers=2, patch_size=32, seed=0),
        "swin": build_swin(root / "swin", embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=7,
                           seed=0),
        "siglip2": build_siglip2_naflex(root / "siglip2", width=WIDTH, layers=2, patch_size=16,
                                        max_num_patches=64, seed=0),
        "bert": build_bert(root / "bert", width=WIDTH, layers=2, seed=0),
        "deberta": build_deberta(root / "deberta", width=WIDTH, layers=2, seed=0),
    }
    return {kind: str(folder) for kind, folder in folders.items()}


@pytest.fixture(scope="module")
def tiny_sentence_transformer(tiny_hf, tmp_path_factory) -> str:
    """A SentenceTransformer (tiny random BERT + mean pooling) saved to a folder."""
    folder = tmp_path_factory.mktemp("st") / "model"
    return str(build_sentence_transformer(folder, tiny_hf["bert"], pooling="mean"))


def _hidden(model, **inputs) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states


# ---- open_clip -----------------------------------------------------------------------------------


def test_open_clip_random_weights_pooled_equals_encode_image_and_encode_text(tiny_clip):
    import open_clip

    name, weights = tiny_clip
    encoder = load_encoder(_spec("open_clip", name, weights))
    reference = open_clip.create_model(name, pretrained=weights).eval()
    images = encoder.prepare("image", _images())
    assert images.shape == (2, 3, 224, 224)  # the paper transform, not open_clip's own
    pooled = encoder.encode("image", images).pooled
    assert pooled.shape == (2, EMBED)
    with torch.no_grad():
        torch.testing.assert_close(pooled, reference.encode_image(images))
        text = encoder.encode("text", encoder.prepare("text", CAPTIONS)).pooled
        ids = open_clip.get_tokenizer(name)(CAPTIONS)
        torch.testing.assert_close(text, reference.encode_text(ids))
    assert text.shape == (2, EMBED)
    assert encoder.weights == f"{name} ({weights})"

    unit = load_encoder(_spec("open_clip", name, weights, normalize=True))
    normed = unit.encode("image", images).pooled
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(normed, F.normalize(pooled, dim=-1))


def test_open_clip_random_weights_layer_tokens_are_cls_and_eot_of_each_block(tiny_clip):
    import open_clip

    name, weights = tiny_clip
    encoder = load_encoder(_spec("open_clip", name, weights))
    reference = open_clip.create_model(name, pretrained=weights).eval()
    images = encoder.prepare("image", _images())
    ids = open_clip.get_tokenizer(name)(CAPTIONS)
    with torch.no_grad():
        inter = reference.forward_intermediates(
            image=images, text=ids, intermediates_only=True, image_output_fmt="NLC",
            image_output_extra_tokens=True)

    image_layers = encoder.encode("image", images, layers=True).layers
    assert len(image_layers) == len(inter["image_intermediates_prefix"]) == 2
    for ours, prefix in zip(image_layers, inter["image_intermediates_prefix"], strict=True):
        assert ours.shape == (2, WIDTH)
        torch.testing.assert_close(ours, prefix[:, 0])  # CLS

    text_layers = encoder.encode("text", encoder.prepare("text", CAPTIONS), layers=True).layers
    eot = ids.argmax(dim=-1)
    assert eot.tolist() == [len(c.split()) + 1 for c in CAPTIONS]  # <sot> words <eot>
    assert len(text_layers) == len(inter["text_intermediates"]) == 2
    for ours, hidden in zip(text_layers, inter["text_intermediates"], strict=True):
        torch.testing.assert_close(ours, hidden[torch.arange(2), eot])
        # Token 0 only sees itself under the causal mask: identical for both captions, which is
        # why the EOT token (different per caption) is the one to keep.
        torch.testing.assert_close(hidden[0, 0], hidden[1, 0])
        assert not torch.allclose(ours[0], ours[1])


def test_open_clip_random_weights_config_errors(tiny_clip):
    name, weights = tiny_clip
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.options\.normalise"):
        load_encoder(_spec("open_clip", name, weights, normalise=True))
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.options\.normalize.*true or false"):
        load_encoder(_spec("open_clip", name, weights, normalize="yes"))
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.model: 'ViT-Nope'"):
        load_encoder(_spec("open_clip", "ViT-Nope"))
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.pretrained: 'no-such-tag'"):
        load_encoder(_spec("open_clip", name, "no-such-tag"))
    # OpenAI's weights in a GELU network: refused before anything is downloaded
    with pytest.raises(ConfigError, match=r"encoders\.tiny\.model: the 'openai' weights were trained "
                                          r"with QuickGELU; use ViT-B-32-quickgelu"):
        load_encoder(_spec("open_clip", "ViT-B-32", "openai"))


# ---- Hugging Face vision -------------------------------------------------------------------------


def test_dinov2_random_weights_pooled_is_pooler_output_and_layers_are_cls(tiny_hf):
    from transformers import Dinov2WithRegistersModel

    encoder = load_encoder(_spec("dinov2", tiny_hf["dinov2"]))
    reference = Dinov2WithRegistersModel.from_pretrained(tiny_hf["dinov2"]).eval()
    images = encoder.prepare("image", _images())
    encoded = encoder.encode("image", images, layers=True)
    with torch.no_grad():
        out = reference(pixel_values=images, output_hidden_states=True)
    assert encoded.pooled.shape == (2, WIDTH)
    torch.testing.assert_close(encoded.pooled, out.pooler_output)
    torch.testing.assert_close(encoded.pooled, reference.layernorm(out.hidden_states[-1])[:, 0])
    assert len(encoded.layers) == 2 == len(out.hidden_states) - 1
    for ours, hidden in zip(encoded.layers, out.hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, hidden[:, 0])


@pytest.mark.parametrize(("kind", "pooling", "dim"),
                         [("vit", "cls", WIDTH), ("swin", "pooler", 16)])
def test_hf_vision_random_weights_vit_cls_and_swin_pooler(tiny_hf, kind, pooling, dim):
    from transformers import AutoModel

    encoder = load_encoder(_spec("hf_vision", tiny_hf[kind]))
    assert encoder.pooling == pooling  # default follows the architecture
    reference = AutoModel.from_pretrained(tiny_hf[kind]).eval()
    images = encoder.prepare("image", _images())
    encoded = encoder.encode("image", images, layers=True)
    with torch.no_grad():
        out = reference(pixel_values=images, output_hidden_states=True)
    expected = out.last_hidden_state[:, 0] if pooling == "cls" else out.pooler_output
    assert encoded.pooled.shape == (2, dim)
    torch.testing.assert_close(encoded.pooled, expected)
    assert len(encoded.layers) == 2 == len(out.hidden_states) - 1
    for ours, hidden in zip(encoded.layers, out.hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, hidden[:, 0] if kind == "vit" else hidden.mean(dim=1))
    assert encoder.preprocessing("image")["center_crop"] == 224


def test_hf_vision_random_weights_pooling_option(tiny_hf):
    vit = load_encoder(_spec("hf_vision", tiny_hf["vit"], pooling="pooler"))
    assert vit.pooling == "pooler"
    with pytest.raises(ConfigError, match=r"options\.pooling: got 'max'; allowed: 'cls' or"):
        load_encoder(_spec("hf_vision", tiny_hf["vit"], pooling="max"))


# ---- SigLIP2 -------------------------------------------------------------------------------------


def test_siglip2_random_weights_features_match_processor_and_model_api(tiny_hf):
    from transformers import AutoModel, AutoProcessor

    encoder = load_encoder(_spec("hf_siglip2", tiny_hf["siglip2"]))
    reference = AutoModel.from_pretrained(tiny_hf["siglip2"]).eval()
    processor = AutoProcessor.from_pretrained(tiny_hf["siglip2"])

    assert encoder.image_transform() is None  # data-loader workers must hand over raw images
    batch = encoder.prepare("image", _images())
    pixels = processor.image_processor(images=[im.convert("RGB") for im in _images()[:1]],
                                       return_tensors="pt")
    torch.testing.assert_close(batch["pixel_values"][:1], pixels["pixel_values"])
    image = encoder.encode("image", batch, layers=True)
    with torch.no_grad():
        out = reference.vision_model(**batch, output_hidden_states=True)
    assert image.pooled.shape == (2, WIDTH)
    torch.testing.assert_close(image.pooled, reference.get_image_features(**batch).pooler_output)
    assert (batch["pixel_attention_mask"] == 0).any()  # the 300x260 image has a padding patch
    assert len(image.layers) == 2 == len(out.hidden_states) - 1
    # each layer through the tower's own LayerNorm and pooling head: the last one is the pooled feature
    torch.testing.assert_close(image.layers[-1], image.pooled)
    vision = reference.vision_model
    for ours, hidden in zip(image.layers, out.hidden_states[1:], strict=True):
        with torch.no_grad():
            pooled = vision.head(vision.post_layernorm(hidden), batch["pixel_attention_mask"])
        torch.testing.assert_close(ours, pooled)
    assert not torch.allclose(image.layers[0], image.layers[-1])
    mean_encoder = load_encoder(_spec("hf_siglip2", tiny_hf["siglip2"], layer_pooling="mean"))
    mask = batch["pixel_attention_mask"].float().unsqueeze(-1)
    for ours, hidden in zip(mean_encoder.encode("image", batch, layers=True).layers, out.hidden_states[1:],
                            strict=True):
        torch.testing.assert_close(ours, (hidden * mask).sum(1) / mask.sum(1))  # patch mean

    # transformers 5 loads any siglip2 folder with Siglip2Tokenizer, which lowercases by itself;
    # a case-sensitive tokenizer (as Gemma's is) shows that the loader lowercases the captions.
    tokenizer = encoder.processor.tokenizer = char_tokenizer()
    text = encoder.encode("text", ["A CAT", "Two Dogs"], layers=True)

    def tokenize(captions):
        return tokenizer(captions, padding="max_length", max_length=64, truncation=True,
                         padding_side="right", return_tensors="pt")["input_ids"]

    ids = tokenize(["a cat", "two dogs"])
    assert not torch.equal(tokenize(["A CAT"])[0], ids[0])  # this tokenizer keeps case
    assert ids[:, -1].tolist() == [0, 0]  # right-padded: the pooled last position is <pad>
    with torch.no_grad():
        out = reference.text_model(input_ids=ids, output_hidden_states=True)
    assert text.pooled.shape == (2, WIDTH)
    torch.testing.assert_close(text.pooled, out.pooler_output)  # lowercased, no attention mask
    # layers: the last real token (what the per-layer SAEs train on), not the padding it pools
    last_real = [len("a cat") - 1, len("two dogs") - 1]  # one token per character, no end token
    assert (ids[[0, 1], last_real] != 0).all() and (ids[[0, 1], [n + 1 for n in last_real]] == 0).all()
    for ours, hidden in zip(text.layers, out.hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, hidden[[0, 1], last_real])

    described = encoder.preprocessing("image")
    assert described["max_num_patches"] == 64 and described["image_mean"] == [0.5, 0.5, 0.5]
    assert encoder.preprocessing("text")["max_length"] == 64


# ---- Hugging Face text ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "deberta"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hf_text_random_weights_cls_or_mean_matches_hidden_states(tiny_hf, kind, pooling):
    from transformers import AutoModel, AutoTokenizer

    encoder = load_encoder(_spec("hf_text", tiny_hf[kind], pooling=pooling, max_length=16))
    reference = AutoModel.from_pretrained(tiny_hf[kind]).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_hf[kind])(CAPTIONS, padding=True,
                                                           return_tensors="pt")
    assert tokens["attention_mask"][1].tolist().count(0) > 0  # the short caption is padded
    encoded = encoder.encode("text", encoder.prepare("text", CAPTIONS), layers=True)
    hidden_states = _hidden(reference, **tokens)
    mask = tokens["attention_mask"].float().unsqueeze(-1)

    def pick(hidden):
        return hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)

    assert encoded.pooled.shape == (2, WIDTH)
    torch.testing.assert_close(encoded.pooled, pick(hidden_states[-1]))
    assert len(encoded.layers) == 2 == len(hidden_states) - 1
    for ours, hidden in zip(encoded.layers, hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, pick(hidden))
    assert encoder.preprocessing("text")["max_length"] == 16


def test_hf_text_random_weights_option_errors(tiny_hf):
    with pytest.raises(ConfigError, match=r"options\.max_length: got 0"):
        load_encoder(_spec("hf_text", tiny_hf["bert"], max_length=0))
    with pytest.raises(ConfigError, match=r"options\.pool.*allowed: pooling"):
        load_encoder(_spec("hf_text", tiny_hf["bert"], pool="cls"))


# ---- sentence-transformers -----------------------------------------------------------------------


def test_sentence_transformers_random_weights_matches_encode_and_layers(tiny_sentence_transformer):
    from sentence_transformers import SentenceTransformer

    folder = tiny_sentence_transformer
    encoder = load_encoder(_spec("sentence_transformers", folder))
    reference = SentenceTransformer(folder, device="cpu")
    captions = ["two dogs", "a cat on a mat the cat"]  # unsorted lengths: order must be kept
    encoded = encoder.encode("text", encoder.prepare("text", captions), layers=True)
    assert encoded.pooled.shape == (2, WIDTH)
    torch.testing.assert_close(encoded.pooled, reference.encode(captions, convert_to_tensor=True))

    tokens = reference.tokenizer(captions, padding=True, return_tensors="pt")
    hidden_states = _hidden(reference[0].auto_model, **tokens)
    mask = tokens["attention_mask"].float().unsqueeze(-1)
    assert len(encoded.layers) == 2 == len(hidden_states) - 1
    for ours, hidden in zip(encoded.layers, hidden_states[1:], strict=True):
        torch.testing.assert_close(ours, (hidden * mask).sum(1) / mask.sum(1))  # model pools mean


def test_sentence_transformers_random_weights_prefix_and_normalize(tiny_sentence_transformer):
    folder = tiny_sentence_transformer
    plain = load_encoder(_spec("sentence_transformers", folder))
    e5 = load_encoder(_spec("sentence_transformers", folder, prefix="query: ", normalize=True))
    prefixed = e5.encode("text", ["x", "two dogs"]).pooled
    by_hand = plain.encode("text", ["query: x", "query: two dogs"]).pooled
    torch.testing.assert_close(prefixed, F.normalize(by_hand, dim=-1))
    torch.testing.assert_close(prefixed.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(prefixed, F.normalize(plain.encode("text", ["x", "two dogs"]).pooled))
    assert e5.preprocessing("text")["prompt"] == "query: "


# ---- errors common to all paper loaders ----------------------------------------------------------

PAPER_LOADERS = ["open_clip", "dinov2", "hf_siglip2", "hf_vision", "hf_text",
                 "sentence_transformers"]


@pytest.mark.parametrize("loader", PAPER_LOADERS)
def test_paper_loaders_random_weights_not_needed_for_config_errors(loader, tmp_path):
    """Checked before any weights are touched: unknown option, missing model."""
    with pytest.raises(ConfigError, match=rf"encoders\.tiny\.options\.bogus: unknown .*{loader}"):
        load_encoder(_spec(loader, "whatever", bogus=1))
    with pytest.raises(ConfigError, match=rf"encoders\.tiny\.model is required by .*{loader}"):
        load_encoder(EncoderSpec(name="tiny", loader=loader))


@pytest.mark.parametrize("loader", ["dinov2", "hf_siglip2", "hf_vision", "hf_text",
                                    "sentence_transformers"])
def test_paper_loaders_random_weights_unfetchable_model_says_what_to_do(loader, tmp_path):
    """A model that cannot be fetched (here a missing folder) names the model and HF_HOME."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(DownloadError, match=r"(?s)no-such-model.*internet.*HF_HOME"):
        load_encoder(_spec(loader, missing))
