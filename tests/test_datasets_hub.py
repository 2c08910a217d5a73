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

from xsae import plan
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


def write_local(folder, rows, labels, *, class_names=None, name="data/train-00000-of-00001.parquet"):
    """A dataset on disk in a Hub repository's layout; `class_names` makes the label column a
    `datasets` ClassLabel (integers, named in the file's feature metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [{"bytes": png(c), "path": None} for c, _ in rows],
                      "text": [t for _, t in rows], "label": labels})
    if class_names is not None:
        features = {"label": {"_type": "ClassLabel", "names": class_names}}
        metadata = json.dumps({"info": {"features": features}}).encode()
        table = table.replace_schema_metadata({b"huggingface": metadata})
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_a_dataset_on_disk_with_class_labels_reads_like_the_hub(tmp_path):
    """options.path: no network; a ClassLabel column is named from the file's metadata."""
    names = ["rose", "tulip", "daisy"]
    write_local(tmp_path / "ds", ROWS[:12], [i % 3 for i in range(12)], class_names=names)
    write_local(tmp_path / "ds", ROWS[12:20], [i % 3 for i in range(8)], class_names=names,
                name="data/train-00001-of-00002.parquet")
    write_local(tmp_path / "ds", ROWS[:3], [0, 1, 2], class_names=names,
                name="data/test-00000-of-00001.parquet")
    source = source_for("hub_image_text")
    options = {"path": str(tmp_path / "ds"), "label_column": "label", "test_fraction": 0.25}
    record = source.download(tmp_path / "files", {"options": options})
    assert record["rows"] == 20 and len(record["files"]) == 2  # the train split's two files only
    splits = [source.samples(tmp_path / "files", split) for split in ("train", "test")]
    both = pd.concat(splits).sort_values("sample_id")
    assert both["caption"].tolist() == [text for _, text in ROWS[:20]]
    assert both["labels"].tolist() == [[names[i % 3]] for i in range(12)] + [[names[i % 3]] for i in range(8)]
    assert source.hierarchy(tmp_path / "files") == {"daisy": None, "rose": None, "tulip": None}
    assert hub.local_rows(options) == 20
    config = {"datasets": {"ds": {"kind": "hub_image_text", "options": options}}}
    counts = [plan.dataset_count(config, "ds", split, plan.load_data()).count for split in ("train", "test")]
    assert counts == [15, 5]  # the plan counts the files' rows before anything is read


def test_a_dataset_on_disk_with_label_paths_builds_their_hierarchy(tmp_path):
    paths = ["plants/flowers/rose", "plants/flowers/tulip; plants/trees", "animals/birds/owl"]
    write_local(tmp_path / "ds", ROWS[:3], paths, name="default/train/0000.parquet")
    source = source_for("hub_image_text")
    options = {"path": str(tmp_path / "ds"), "label_column": "label", "test_fraction": 0}
    source.download(tmp_path / "files", {"options": options})
    labels = source.samples(tmp_path / "files", "train")["labels"].tolist()
    assert labels == [["rose"], ["tulip", "trees"], ["owl"]]
    assert source.hierarchy(tmp_path / "files") == {"animals": None, "birds": "animals", "flowers": "plants",
                                                    "owl": "birds", "plants": None, "rose": "flowers",
                                                    "trees": "plants", "tulip": "flowers"}
    with pytest.raises(DataError, match=r"no Parquet files of split 'validation'"):
        source.download(tmp_path / "v", {"options": {**options, "split": "validation"}})
    with pytest.raises(DataError, match=r"no column 'category'.*label_column"):
        source.download(tmp_path / "c", {"options": {**options, "label_column": "category"}})
    write_local(tmp_path / "bad", ROWS[:1], [7], class_names=["a", "b"], name="default/train/0000.parquet")
    with pytest.raises(DataError, match=r"row 0: class 7 is outside the 2 names"):
        source.download(tmp_path / "b", {"options": {**options, "path": str(tmp_path / "bad")}})
