"""Encoders of your own (`xsae.encoders.custom`), on tiny randomly initialised models: a Python entry
point that follows the documented protocol, and timm backbones; an entry that does not follow the
protocol fails naming the config key and what to fix."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from xsae.config import validate
from xsae.encoder_catalog import module_file
from xsae.encoders import EncoderSpec, load_encoder
from xsae.errors import ConfigError
from xsae.plan import towers

MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """A two-layer image CNN and a character text model, following xsae's encoder protocol."""

    modalities = ("image", "text")

    def __init__(self, width=6):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, width, 3, stride=2)
        self.embed, self.mix = nn.Embedding(128, 5), nn.Linear(5, width)
        self.mask = None

    def image_transform(self, image):
        array = torch.tensor(list(image.resize((16, 16)).getdata()), dtype=torch.float32) / 255
        return array.reshape(16, 16, 3).permute(2, 0, 1)

    def encode(self, modality, batch):
        if modality == "image":
            return self.conv2(torch.relu(self.conv1(batch))).mean(dim=(2, 3))
        ids = torch.zeros(len(batch), 8, dtype=torch.long)
        for row, text in enumerate(batch):
            ids[row, :len(text[:8])] = torch.tensor([ord(c) % 128 for c in text[:8]])
        self.mask = ids > 0
        return self.mix(self.embed(ids)).mean(dim=1)

    def layer_modules(self, modality):
        return [self.conv1, self.conv2] if modality == "image" else [self.embed, self.mix]

    def token_mask(self, modality, hidden):
        return self.mask if modality == "text" else None


def build(width=6):
    return Tiny(width)


def no_encode():
    class Broken:
        modalities = ("image",)
    return Broken()


def bad_shape():
    class Flat:
        modalities = ("text",)

        def encode(self, modality, batch):
            return torch.zeros(3)
    return Flat()


def no_modalities():
    class Nothing:
        def encode(self, modality, batch):
            return torch.zeros(len(batch), 2)
    return Nothing()
'''


@pytest.fixture
def own_package(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(textwrap.dedent(MODULE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_encoders", raising=False)  # this test's copy, not a cached one
    yield "my_encoders"
    sys.modules.pop("my_encoders", None)


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def test_a_python_entry_point_encodes_both_modalities_and_its_layers(own_package):
    encoder = load_encoder(EncoderSpec("mine", "python", entry=f"{own_package}:build", options={"width": 7}))
    assert encoder.modalities == ("image", "text")
    batch = encoder.prepare("image", images(3))
    out = encoder.encode("image", batch, layers=True, all_tokens=True)
    model = encoder.model
    with torch.no_grad():
        expected = model.conv2(torch.relu(model.conv1(batch))).mean(dim=(2, 3))
    torch.testing.assert_close(out.pooled, expected)
    assert [layer.shape[1] for layer in out.layers] == [4, 7]  # options reach the function
    torch.testing.assert_close(out.layers[1], expected)  # a feature map's global token: its mean
    assert out.tokens[0][0].shape == (3 * 7 * 7, 4)  # every position of the 7 × 7 map
    text = encoder.encode("text", encoder.prepare("text", ["a cat", "an owl in a tree"]), all_tokens=True)
    assert text.pooled.shape == (2, 7) and text.tokens[1][0].shape[0] == 5 + 8  # no padding token


@pytest.mark.parametrize("entry, message", [
    ("my_encoders.build", r"expected 'package\.module:function'"),
    ("no_such_package:build", r"cannot import 'no_such_package'"),
    ("my_encoders:missing", r"my_encoders has no function 'missing'"),
    ("my_encoders:no_encode", r"without encode\(modality, batch\)"),
    ("my_encoders:no_modalities", r"`modalities` is \(\)"),
])
def test_an_entry_point_off_the_protocol_fails_naming_the_key(own_package, entry, message):
    with pytest.raises(ConfigError, match=r"encoders\.mine\.entry: .*" + message):
        load_encoder(EncoderSpec("mine", "python", entry=entry))


def test_wrong_options_and_wrong_outputs_say_what_to_fix(own_package):
    with pytest.raises(ConfigError, match=r"does not accept the options \['depth'\]"):
        load_encoder(EncoderSpec("mine", "python", entry="my_encoders:build", options={"depth": 3}))
    flat = load_encoder(EncoderSpec("mine", "python", entry="my_encoders:bad_shape"))
    with pytest.raises(ConfigError, match=r"returned \[3\]; it must return a \[2, d\] tensor"):
        flat.encode("text", ["a", "b"])


def test_config_checks_the_entry_and_prices_the_encoder_from_its_architecture():
    raw = {"datasets": {"d": {"kind": "tuxpaint_stamps"}},
           "encoders": {"mine": {"loader": "python", "entry": "my_encoders:build",
                                 "architecture": {"image": {"width": 7, "layer_widths": [4, 7],
                                                            "tokens": 49, "gflops": 0.001}}}},
           "features": {"d": ["mine"]}}
    config = validate(raw)
    assert towers(config, "mine", None).keys() == {"image"}  # no costs.yaml entry needed
    raw["encoders"]["mine"].pop("entry")
    with pytest.raises(ConfigError, match=r"encoders\.mine\.entry: loader python needs entry"):
        validate(raw)
    raw["encoders"]["mine"].update(loader="timm", entry="my_encoders:build")
    with pytest.raises(ConfigError, match="only loader python takes an entry"):
        validate(raw)


@pytest.mark.parametrize("model, options, n_layers", [
    ("resnet10t", {}, 5),
    ("vit_tiny_patch16_224", {"depth": 2}, 2),
])
def test_a_timm_backbone_pools_before_its_classifier_and_exposes_its_stages(model, options, n_layers):
    encoder = load_encoder(EncoderSpec("backbone", "timm", model=model, options=options))
    assert encoder.weights == f"timm:{model}:random"
    batch = encoder.prepare("image", images(2))
    out = encoder.encode("image", batch, layers=True, all_tokens=True)
    with torch.no_grad():
        expected = encoder.model.forward_head(encoder.model.forward_features(batch), pre_logits=True)
    torch.testing.assert_close(out.pooled, expected)
    assert len(out.layers) == n_layers and all(layer.shape[0] == 2 for layer in out.layers)
    assert encoder.preprocessing("image")["input_size"][1:] == list(batch.shape[2:])
    with pytest.raises(ConfigError, match=r"encoders\.backbone\.model"):
        load_encoder(EncoderSpec("backbone", "timm", model="no_such_model_xyz"))


def test_the_workflow_finds_an_entry_points_module_without_importing_it(own_package, tmp_path, monkeypatch):
    """Its file is an input of the encoder's extractions (editing it reruns them)."""
    assert module_file(f"{own_package}:build") == str(tmp_path / "my_encoders.py")
    assert module_file("no_such_package.module:build") is None
    here = tmp_path / "here"
    (here / "pkg").mkdir(parents=True)
    (here / "pkg" / "enc.py").write_text("raise RuntimeError('imported')\n", encoding="utf-8")
    monkeypatch.chdir(here)  # a module beside the config, found from the working directory
    assert module_file("pkg.enc:build") == str(here / "pkg" / "enc.py")
    assert str(here) not in sys.path
