"""The sharedness experiments' online job (`xsae.sharedness_online`): one encoder pass per modality
trains every needed layer's SAE of every model of the encoder on every real token; the step holds
`samples_per_step` samples' tokens; passes split by memory give the same weights as one; a killed
job resumes to the same weights; nothing is left half-written; models compared on pooled codes get
the mean of their tokens' codes over the compared split, and the sharedness_sae job adopts them."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from helpers import stamps_manifests
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from xsae import sharedness_online
from xsae.config import validate
from xsae.encoders import Encoder, EncoderSpec
from xsae.encoders.base import paper_image_transform
from xsae.errors import ConfigError
from xsae.metrics.reconstruction import nmse_per_sample
from xsae.sae import Codes, SparseAutoencoder
from xsae.sharedness_online import (
    OnlineSAE,
    OnlineSettings,
    log_file,
    pool_codes,
    pooled_codes_file,
    pooled_reconstruction_file,
    train_online,
    weights_file,
)
from xsae.sharedness_runs import adopt_online_sae, read_codes

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
def manifests(tmp_path_factory):
    return stamps_manifests(tmp_path_factory.mktemp("online"))


@pytest.fixture(scope="module")
def manifest(manifests):
    return manifests["train"]


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


def test_pool_codes_is_the_mean_of_each_samples_token_codes_with_its_k_largest_kept():
    # sample 0: tokens {1: 2, 3: 1} and {1: 4, 0: 3}; sample 1: one token {2: 5, 3: 0}; sample 2: none
    codes = Codes(torch.tensor([[2.0, 1.0], [4.0, 3.0], [5.0, 0.0]]), torch.tensor([[1, 3], [1, 0], [2, 3]]))
    pooled = pool_codes(codes, torch.tensor([0, 0, 1]), n_samples=3, n_latents=4, k=2)
    # sample 0: mean code (1.5, 3, 0, 0.5) → latents 1 and 0; sample 1: (0, 0, 5, 0) → 2, then a zero
    assert pooled.indices[0].tolist() == [1, 0] and pooled.values[0].tolist() == [3.0, 1.5]
    assert pooled.indices[1, 0] == 2 and pooled.values[1].tolist() == [5.0, 0.0]
    assert pooled.values[2].tolist() == [0.0, 0.0]
    dense = pooled.dense(4)
    assert torch.equal(dense[0], torch.tensor([1.5, 3.0, 0.0, 0.0]))


def test_pooled_codes_are_the_trained_saes_codes_of_every_token_of_the_compared_split(manifests, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr(sharedness_online, "POOLING_CHUNK", 50)  # tokens encoded in chunks, as at scale
    pooled_sae = OnlineSAE("img", "image", 0, recipe(), 0, compared="pooled_codes")
    saes = [pooled_sae, SAES[1], SAES[3]]  # one pooled, two compared on their global token
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="pooled codes: give the compared split's manifest"):
        train_online(TwoTower(), manifests["train"], saes, out, settings(), progress=False)
    summary = train_online(TwoTower(), manifests["train"], saes, out, settings(), progress=False,
                           compared_manifest=manifests["test"])
    assert [p["saes"] for p in summary["pooled_passes"]] == [["img/layer00"]]
    assert not pooled_codes_file(out, "img", 1).exists() and not pooled_codes_file(out, "txt", 1).exists()
    # the same codes, computed here by hand from the trained SAE and every token of every test image
    test = pd.read_csv(manifests["test"])
    model = SparseAutoencoder.load(weights_file(out, "img", 0)).eval()
    encoder = TwoTower()
    expected, errors = [], []
    with torch.no_grad():
        for path in test["image_path"]:
            image = encoder.prepare("image", [encoder.image_transform()(Image.open(path))])
            tokens, _ = encoder.encode("image", image, all_tokens=True).tokens[0]
            (codes,) = model.encode([tokens])
            errors.append(nmse_per_sample(model.decode(0, codes), tokens))
            mean = codes.dense(model.config.n_latents).mean(dim=0)
            top = mean.topk(model.config.k)
            expected.append((top.values, top.indices))
    stored = read_codes(pooled_codes_file(out, "img", 0))
    assert stored.sample_ids == test["sample_id"].tolist() and stored.n_latents == model.config.n_latents
    torch.testing.assert_close(stored.codes.values, torch.stack([v for v, _ in expected]),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(stored.codes.indices, torch.stack([i for _, i in expected]))
    tally = json.loads(pooled_reconstruction_file(out, "img", 0).read_text())
    assert tally["n_tokens"] == len(test) * IMAGE_POSITIONS[0] and tally["n_samples"] == len(test)
    assert tally["nmse"] == pytest.approx(float(torch.cat(errors).double().mean()), rel=1e-5)

    # the sharedness_sae job takes the codes as they are, and reports the tokens' reconstruction
    adopted = {name: tmp_path / name for name in ("weights.safetensors", "log.csv", "codes.npz", "recon.csv")}
    report = adopt_online_sae(out, "img", 0, None, device="cpu", weights_path=adopted["weights.safetensors"],
                              log_path=adopted["log.csv"], codes_path=adopted["codes.npz"],
                              reconstruction_path=adopted["recon.csv"], labels={"model": "img"})
    assert adopted["codes.npz"].read_bytes() == pooled_codes_file(out, "img", 0).read_bytes()
    rows = pd.read_csv(adopted["recon.csv"]).set_index("metric")["value"]
    assert rows["nmse"] == pytest.approx(tally["nmse"]) and rows["n_samples"] == len(test)
    assert rows["nmse_ratio"] == pytest.approx(rows["nmse"] / rows["train_nmse"])
    assert report["compared_nmse"] == pytest.approx(tally["nmse"]) and report["n_test"] == len(test)
