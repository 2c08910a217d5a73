"""Hub image–caption datasets (`xsae.datasets.hub`, kind hub_image_text) from a loopback server that
serves the Hub's Parquet conversion layout (a listing of Parquet URLs, `{bytes, path}` image cells):
rows, images and captions in order, the stable hold-out, no hold-out, retries of a flaky file, a
resumed download, and errors that name the option to fix. Nothing beyond 127.0.0.1 is contacted."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from http_fixtures import loopback_server
from PIL import Image

from xsae.datasets import hub
from xsae.datasets.sources import source_for
from xsae.datasets.urllists import hash_split
from xsae.errors import ConfigError, DataError, DownloadError

REPO_ID = "someone/flowers-captions"
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20), (20, 220, 220)]


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def parquet(rows: list[tuple[tuple[int, int, int], str]], image_column="image", text_column="text") -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({image_column: [{"bytes": png(c), "path": None} for c, _ in rows],
                  text_column: [t for _, t in rows]}).to_parquet(buffer, index=False)
    return buffer.getvalue()


ROWS = [(COLOURS[i % 5], f"flower number {i}") for i in range(30)]


@pytest.fixture
def served():
    with loopback_server() as server:
        files = [server.add("/files/0000.parquet", parquet(ROWS[:18]), fail_first=1),
                 server.add("/files/0001.parquet", parquet(ROWS[18:]))]
        server.add(f"/api/datasets/{REPO_ID}/parquet/default/train", json.dumps(files).encode())
        yield server


def test_rows_images_and_captions_in_order_with_a_stable_hold_out(served, tmp_path):
    options = {"repo": REPO_ID, "test_fraction": 0.3, "retries": 2}
    record = source_for("hub_image_text").download(tmp_path, {"base_url": served.url(), "options": options})
    assert record["kind"] == "hub_image_text" and record["rows"] == 30
    source = source_for("hub_image_text")
    splits = {split: source.samples(tmp_path, split) for split in ("train", "test")}
    expected_test = [i for i in range(30) if hash_split(i, 0.3) == "test"]
    assert record["splits"] == {"train": 30 - len(expected_test), "test": len(expected_test)}
    assert [int(s.removeprefix("row")) for s in splits["test"]["sample_id"]] == expected_test
    assert set(splits["train"]["sample_id"]).isdisjoint(splits["test"]["sample_id"])
    both = pd.concat(splits.values()).sort_values("sample_id")
    assert both["caption"].tolist() == [text for _, text in ROWS]
    for sample_id, path in zip(both["sample_id"], both["image_path"], strict=True):
        colour = COLOURS[int(sample_id.removeprefix("row")) % 5]
        assert np.asarray(Image.open(path)).reshape(-1, 3)[0].tolist() == list(colour)
    assert both["labels"].map(len).eq(0).all() and source.hierarchy(tmp_path) == {}
    hits = [seen.path for seen in served.seen]
    assert hits.count("/files/0000.parquet") == 2  # the first answer was a 503: retried


def test_no_hold_out_compares_on_every_training_row_and_a_rerun_fetches_nothing(served, tmp_path):
    entry = {"base_url": served.url(), "options": {"repo": REPO_ID, "test_fraction": 0, "max_rows": 25}}
    source = source_for("hub_image_text")
    source.download(tmp_path, entry)
    train, test = source.samples(tmp_path, "train"), source.samples(tmp_path, "test")
    assert len(train) == 25 and train.equals(test)
    before = len(served.seen)
    source.download(tmp_path, entry)
    assert [seen.path for seen in served.seen[before:]] == [f"/api/datasets/{REPO_ID}/parquet/default/train"]


def test_errors_name_the_option_to_fix(served, tmp_path):
    source = source_for("hub_image_text")
    with pytest.raises(ConfigError, match=r"options\.repo"):
        source.download(tmp_path, {"options": {}})
    with pytest.raises(ConfigError, match="not options of hub_image_text"):
        source.download(tmp_path, {"options": {"repo": REPO_ID, "colour": 1}})
    with pytest.raises(DownloadError, match="cannot list the Parquet files of someone/other"):
        source.download(tmp_path, {"base_url": served.url(), "options": {"repo": "someone/other"}})
    with pytest.raises(DataError, match=r"no column 'caption'.*text_column"):
        source.download(tmp_path / "b", {"base_url": served.url(),
                                         "options": {"repo": REPO_ID, "text_column": "caption"}})
    with pytest.raises(DataError, match="run the download"):
        hub.samples(tmp_path / "empty", "train")
