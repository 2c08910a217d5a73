"""The sharedness experiments' online job (`xsae.sharedness_online`): one encoder pass per modality
trains every needed layer's SAE of every model of the encoder on every real token; the step holds
`samples_per_step` samples' tokens; passes split by memory give the same weights as one; a killed
job resumes to the same weights; nothing is left half-written."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import stamps_manifests
from safetensors.torch import load_file
from torch import nn

from xsae.config import validate
from xsae.encoders import Encoder, EncoderSpec
from xsae.encoders.base import paper_image_transform
from xsae.errors import ConfigError
from xsae.sharedness_online import OnlineSAE, OnlineSettings, log_file, train_online, weights_file

IMAGE_POSITIONS = (15 * 15, 7 * 7)  # the two feature maps of a 64 × 64 image
TEXT_LENGTH = 12
WIDTHS = {"image": (4, 6), "text": (5, 5)}  # captions are cut (and padded) to this many characters


class TwoTower(Encoder):
    """Fixed image CNN (two feature maps) and character text model (two layers, padded batches)."""

    modalities = ("image", "text")

    def __init__(self, fail_after: int | None = None):
        super().__init__(EncoderSpec(name="two_tower", loader="test"))
        torch.manual_seed(0)
        self.image_net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2))
        self.embed, self.mix = nn.Embedding(128, 5), nn.Linear(5, 5)
        self.fail_after, self.calls, self.mask = fail_after, 0, None
        self._image_transform = paper_image_transform(resize=64, crop=64)

    def _encode(self, modality, batch):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        if modality == "image":
            return self.image_net(batch).mean(dim=(2, 3))
        lengths = [min(len(text), TEXT_LENGTH) for text in batch]
        ids = torch.zeros(len(batch), TEXT_LENGTH, dtype=torch.long)
        for row, text in enumerate(batch):
            ids[row, :lengths[row]] = torch.tensor([ord(c) % 128 for c in text[:TEXT_LENGTH]])
        self.mask = torch.arange(TEXT_LENGTH)[None, :] < torch.tensor(lengths)[:, None]
        hidden = self.mix(self.embed(ids))
        return hidden.mean(dim=1)

    def layer_modules(self, modality):
        return [self.image_net[1], self.image_net[2]] if modality == "image" else [self.embed, self.mix]

    def token_mask(self, modality, hidden):
        return self.mask if modality == "text" else None


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return stamps_manifests(tmp_path_factory.mktemp("online"))["train"]


def recipe(**overrides) -> dict:
    """The sharedness recipe with the schema's defaults filled in."""
    raw = {"datasets": {"d": {"kind": "tuxpaint_stamps"}},
           "encoders": {"e": {"loader": "mobilenet_v2", "layers": True}}, "features": {"d": ["e"]},
           "sharedness": {"models": {"m": {"encoder": "e", "modality": "image", "n_layers": 2}},
                          "sae": {"k": 2, "epochs": 1, "batch_size": 64, "lr": 1e-2, "log_every": 2,
                                  "input_norm": "none", **overrides}}}
    return validate(raw)["sharedness"]["sae"]


SAES = [OnlineSAE("img", "image", 0, recipe(), 0), OnlineSAE("img", "image", 1, recipe(), 0),
        OnlineSAE("img_seed1", "image", 1, recipe(), 1), OnlineSAE("txt", "text", 1, recipe(), 0)]


def settings(**overrides) -> OnlineSettings:
    return OnlineSettings(**{"expansion": 2, "samples_per_step": {}, "mix_samples": 4, "encoder_batch": 4,
                             **overrides})


def weights(folder, saes=SAES) -> dict[str, dict[str, torch.Tensor]]:
    return {sae.name: load_file(weights_file(folder, sae.model, sae.layer)) for sae in saes}


def assert_same(first, second):
    assert first.keys() == second.keys()
    for name in first:
        for key, tensor in first[name].items():
            torch.testing.assert_close(second[name][key], tensor, rtol=0, atol=0, msg=f"{name} {key}")


def test_every_layer_of_both_towers_trains_on_every_real_token(manifest, tmp_path):
    table = pd.read_csv(manifest)
    n = len(table)
    summary = train_online(TwoTower(), manifest, SAES, tmp_path / "out", settings(), progress=False)
    characters = sum(min(len(caption), TEXT_LENGTH) for caption in table["caption"])
    expected = {"img/layer00": n * IMAGE_POSITIONS[0], "img/layer01": n * IMAGE_POSITIONS[1],
                "img_seed1/layer01": n * IMAGE_POSITIONS[1], "txt/layer01": characters}  # no padding
    assert {name: s["tokens"] for name, s in summary["saes"].items()} == expected
    for sae in SAES:
        history = pd.read_csv(log_file(tmp_path / "out", sae.model, sae.layer))
        assert history["step"].iloc[-1] == math.ceil(expected[sae.name] / 64)
        width = WIDTHS[sae.modality][sae.layer]
        encoder_weight = load_file(weights_file(tmp_path / "out", sae.model, sae.layer))["enc_weight.0"]
        assert encoder_weight.shape == (2 * width, width)
    assert len(summary["passes"]) == 2  # one per modality
    assert not (tmp_path / "out.partial").exists()
    # the two seeds of one layer saw the same tokens and differ only by their seed
    trained = weights(tmp_path / "out")
    assert not torch.equal(trained["img/layer01"]["enc_weight.0"],
                           trained["img_seed1/layer01"]["enc_weight.0"])
    again = tmp_path / "again"
    train_online(TwoTower(), manifest, SAES, again, settings(), progress=False)
    assert_same(trained, weights(again))


def test_samples_per_step_sets_the_tokens_of_a_step(manifest, tmp_path):
    n = len(pd.read_csv(manifest))
    saes = SAES[:2]
    summary = train_online(TwoTower(), manifest, saes, tmp_path / "out",
                           settings(samples_per_step={"image": 3}), progress=False)
    for sae, positions in zip(saes, IMAGE_POSITIONS, strict=True):
        history = pd.read_csv(log_file(tmp_path / "out", sae.model, sae.layer))
        assert history["step"].iloc[-1] == math.ceil(n / 3)  # steps of 3 images' positions
        assert summary["saes"][sae.name]["tokens"] == n * positions


def test_a_memory_budget_splits_passes_without_changing_the_weights(manifest, tmp_path):
    one = tmp_path / "one"
    train_online(TwoTower(), manifest, SAES, one, settings(), progress=False)
    encoder = TwoTower()
    summary = train_online(encoder, manifest, SAES, tmp_path / "split", settings(memory_budget=1),
                           progress=False)
    assert [p["saes"] for p in summary["passes"]] == [[sae.name] for sae in SAES]
    assert_same(weights(one), weights(tmp_path / "split"))


def test_a_killed_job_resumes_to_the_same_weights(manifest, tmp_path):
    whole = tmp_path / "whole"
    train_online(TwoTower(), manifest, SAES, whole, settings(checkpoint_every=4), progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # the image probe, then four batches
        train_online(TwoTower(fail_after=5), manifest, SAES, out, settings(checkpoint_every=4),
                     progress=False)
    assert not out.exists() and (tmp_path / "resumed.partial" / "resume.pt").is_file()
    encoder = TwoTower()
    train_online(encoder, manifest, SAES, out, settings(checkpoint_every=4), progress=False)
    n = len(pd.read_csv(manifest))
    assert encoder.calls == 2 + 2 * math.ceil(n / 4) - 4  # two probes and every batch but the 4 done
    assert_same(weights(whole), weights(out))


def test_recipe_problems_name_the_key(manifest, tmp_path):
    with pytest.raises(ConfigError, match="online training makes one pass"):
        train_online(TwoTower(), manifest, [OnlineSAE("m", "image", 0, recipe(epochs=2), 0)], tmp_path / "a",
                     settings(), progress=False)
    with pytest.raises(ConfigError, match="has 2 layers"):
        train_online(TwoTower(), manifest, [OnlineSAE("m", "image", 5, recipe(), 0)], tmp_path / "b",
                     settings(), progress=False)
    assert not list(tmp_path.iterdir())  # nothing written
