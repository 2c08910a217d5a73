"""The feature store: layout, order, attributes, atomicity, and the errors of bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import stamps_manifests
from torch import nn

from xsae.encoders import Encoder, EncoderSpec
from xsae.errors import DataError
from xsae.features import StreamRef, extract, load_streams, read_attrs, read_sample_ids, read_stream


class PixelStats(Encoder):
    """A deterministic stand-in encoder: a fixed small CNN on images, letter counts on text."""

    modalities = ("image", "text")
    weights = "fixed seed 0"

    def __init__(self, spec):
        super().__init__(spec)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2))

    def _encode(self, modality, batch):
        if modality == "image":
            return self.net(batch).mean(dim=(2, 3))
        return torch.tensor([[text.count(c) for c in "aeiou"] for text in batch], dtype=torch.float32)

    def layer_modules(self, modality):
        return [self.net[0], self.net[2]] if modality == "image" else []


@pytest.fixture
def manifest(tmp_path):
    return stamps_manifests(tmp_path)["train"]


@pytest.fixture
def encoder():
    return PixelStats(EncoderSpec(name="pixels", loader="test"))


def test_layout_order_and_values(manifest, encoder, tmp_path):
    out = tmp_path / "f.h5"
    summary = extract(encoder, manifest, out, layers=True, batch_size=4, progress=False,
                      dataset="fixture", split="train")
    table = pd.read_csv(manifest)
    assert read_sample_ids(out) == table["sample_id"].tolist()
    with h5py.File(out) as h5:
        assert h5["pooled/image"].shape == (len(table), 6)
        assert h5["pooled/text"].shape == (len(table), 5)
        assert sorted(h5["layers/image"]) == ["00", "01"]
        assert h5["layers/image/00"].shape == (len(table), 4)
        assert h5["pooled/image"].chunks[0] == 4
    text = read_stream(StreamRef(out, "text"))
    expected = [[caption.count(c) for c in "aeiou"] for caption in table["caption"]]
    np.testing.assert_array_equal(text, np.array(expected, dtype=np.float32))
    from PIL import Image

    with Image.open(table["image_path"][3]) as image:
        direct = encoder.encode("image", encoder.prepare("image", [image])).pooled
    np.testing.assert_allclose(read_stream(StreamRef(out, "image"))[3], direct[0].numpy(), atol=1e-5)
    # the last layer token is the spatial mean of the module whose mean is also the pooled output
    np.testing.assert_allclose(read_stream(StreamRef(out, "image", layer=1)),
                               read_stream(StreamRef(out, "image")), atol=1e-6)
    attrs = read_attrs(out)
    assert attrs["encoder"] == "pixels" and attrs["dataset"] == "fixture" and attrs["split"] == "train"
    assert len(attrs["manifest_sha256"]) == 64 and attrs["dtype"] == "float32"
    assert '"center_crop": 224' in attrs["preprocessing_image"]
    assert summary["n_samples"] == len(table) and summary["modalities"]["image"]["n_layers"] == 2


def test_a_failure_mid_extraction_leaves_no_file(manifest, encoder, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = encoder._encode

    def flaky(modality, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device lost")
        return original(modality, batch)

    monkeypatch.setattr(encoder, "_encode", flaky)
    out = tmp_path / "f.h5"
    with pytest.raises(RuntimeError, match="device lost"):
        extract(encoder, manifest, out, batch_size=4, progress=False)
    assert not out.exists()
    assert not list(tmp_path.glob(".f.h5.*")), "temporary file left behind"


def test_unreadable_image_names_the_manifest_row(manifest, encoder, tmp_path):
    table = pd.read_csv(manifest)
    Path(table["image_path"][2]).write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"row 2: cannot read image"):
        extract(encoder, manifest, tmp_path / "f.h5", modalities=["image"], batch_size=4,
                progress=False)
    assert not (tmp_path / "f.h5").exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="feature file not found"):
        read_stream(StreamRef(tmp_path / "absent.h5", "image"))
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(DataError, match=str(corrupt)):
        read_stream(StreamRef(corrupt, "image"))


def test_missing_stream_lists_what_the_file_has(manifest, encoder, tmp_path):
    out = tmp_path / "f.h5"
    extract(encoder, manifest, out, modalities=["text"], progress=False)
    with pytest.raises(DataError, match=r"no dataset 'pooled/image'.*pooled/text"):
        read_stream(StreamRef(out, "image"))


def test_streams_with_different_samples_are_refused(manifest, encoder, tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(encoder, manifest, first, modalities=["text"], progress=False)
    extract(encoder, manifest, second, modalities=["text"], progress=False)
    arrays, ids = load_streams([StreamRef(first, "text"), StreamRef(second, "text")])
    assert len(arrays) == 2 and len(ids) == arrays[0].shape[0]
    with h5py.File(second, "r+") as h5:
        ids_b = h5["sample_ids"][()]
        ids_b[[0, 1]] = ids_b[[1, 0]]
        h5["sample_ids"][...] = ids_b
    with pytest.raises(DataError, match=r"b\.h5: sample_ids differ from .*a\.h5 \(first difference at row 0"):
        load_streams([StreamRef(first, "text"), StreamRef(second, "text")])


def test_non_finite_features_are_refused(manifest, encoder, tmp_path):
    out = tmp_path / "f.h5"
    extract(encoder, manifest, out, modalities=["text"], progress=False)
    with h5py.File(out, "r+") as h5:
        h5["pooled/text"][2, 1] = np.nan
        h5["pooled/text"][3, 0] = np.inf
    with pytest.raises(DataError, match=r"non-finite values, first at row 2 \(2 such row\(s\)"):
        read_stream(StreamRef(out, "text"))
