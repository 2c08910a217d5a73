"""xsae.datasets.manifest (labels, splits, the CSV contract) and Tux Paint stamp scanning."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xsae.datasets import manifest, tuxpaint
from xsae.datasets.manifest import MANIFEST_COLUMNS, Label
from xsae.errors import DataError


# ---- label hierarchy -------------------------------------------------------------------------
def test_label_hierarchy_known_answer():
    labels = manifest.label_hierarchy(["a/b/c", "a/d", "e"])
    assert labels == [
        Label(id=0, path="a", name="a", parent=None, depth=1),
        Label(id=1, path="a/b", name="b", parent=0, depth=2),
        Label(id=2, path="a/b/c", name="c", parent=1, depth=3),
        Label(id=3, path="a/d", name="d", parent=0, depth=2),
        Label(id=4, path="e", name="e", parent=None, depth=1),
    ]


def test_label_hierarchy_duplicates_and_order_do_not_matter():
    a = manifest.label_hierarchy(["e", "a/d", "a/b/c", "a/d", "a/b"])
    b = manifest.label_hierarchy(["a/b/c", "a/d", "e"])
    assert a == b


def test_labels_of():
    ids = {label.path: label.id for label in manifest.label_hierarchy(["a/b/c", "a/d", "e"])}
    assert manifest.labels_of("a/b/c", ids) == [0, 1, 2]
    assert manifest.labels_of("a/d", ids) == [0, 3]
    assert manifest.labels_of("e", ids) == [4]
    with pytest.raises(KeyError):
        manifest.labels_of("a/x", ids)


# ---- stratified split -----------------------------------------------------------------------
GROUPS = ["a"] * 10 + ["b"] * 7 + ["c"] * 1 + ["d"] * 2 + ["e"] * 3


def test_split_reproducible_and_seed_dependent():
    m1 = manifest.stratified_split(GROUPS, 0.3, seed=1)
    m2 = manifest.stratified_split(GROUPS, 0.3, seed=1)
    assert m1.dtype == bool and m1.shape == (len(GROUPS),)
    np.testing.assert_array_equal(m1, m2)
    others = [manifest.stratified_split(GROUPS, 0.3, seed=s) for s in range(2, 8)]
    assert any(not np.array_equal(m1, o) for o in others)


def test_split_counts_per_group():
    mask = manifest.stratified_split(GROUPS, 0.3, seed=0)
    groups = np.asarray(GROUPS)
    test_counts = Counter(groups[mask].tolist())
    # round(n * 0.3), capped at n - 1 so a training sample always remains
    expected = {"a": 3, "b": 2, "c": 0, "d": 1, "e": 1}
    for group, n in expected.items():
        assert test_counts.get(group, 0) == n, group
    train_counts = Counter(groups[~mask].tolist())
    assert all(train_counts[g] >= 1 for g in expected)
    assert train_counts["c"] == 1  # a group of one stays in train
    assert mask.sum() + (~mask).sum() == len(GROUPS)


def test_split_large_fraction_keeps_one_training_sample():
    mask = manifest.stratified_split(["x"] * 5 + ["y"] * 2, 0.9, seed=0)
    groups = np.asarray(["x"] * 5 + ["y"] * 2)
    assert int(mask[groups == "x"].sum()) == 4
    assert int(mask[groups == "y"].sum()) == 1


# ---- build_manifest ----------------------------------------------------------------------------
def samples_frame() -> pd.DataFrame:
    rows = []
    for i in range(10):
        rows.append((f"a/b/c/s{i:02d}", f"/img/a{i}.png", f"caption a {i}", "a/b/c"))
    for i in range(5):
        rows.append((f"a/d/t{i}", f"/img/d{i}.png", f"caption, d \"{i}\"", "a/d"))
    rows.append(("e/only", "/img/e.png", "lonely", "e"))
    frame = pd.DataFrame(rows, columns=["sample_id", "image_path", "caption", "category"])
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # shuffled input


def test_build_manifest_contract():
    splits, labels = manifest.build_manifest(samples_frame(), test_fraction=0.2, seed=0)
    assert set(splits) == {"train", "test"}
    for table in splits.values():
        assert tuple(table.columns) == MANIFEST_COLUMNS
        assert list(table["sample_id"]) == sorted(table["sample_id"])
        assert list(table.index) == list(range(len(table)))
    assert [label.path for label in labels] == ["a", "a/b", "a/b/c", "a/d", "e"]
    # stratified by the top-level folder: "a" has 15 samples -> 3 test; "e" has one -> train
    assert len(splits["test"]) == 3 and len(splits["train"]) == 13
    assert set(splits["test"]["sample_id"]).isdisjoint(splits["train"]["sample_id"])
    union = set(splits["test"]["sample_id"]) | set(splits["train"]["sample_id"])
    assert union == set(samples_frame()["sample_id"])
    assert "e/only" in set(splits["train"]["sample_id"])


def test_build_manifest_label_columns():
    splits, _ = manifest.build_manifest(samples_frame(), test_fraction=0.2, seed=0)
    table = pd.concat(splits.values()).set_index("sample_id")
    assert table.loc["a/b/c/s03", "label_ids"] == "0;1;2"
    assert table.loc["a/b/c/s03", "label_names"] == "a;a/b;a/b/c"
    assert table.loc["a/d/t2", "label_ids"] == "0;3"
    assert table.loc["a/d/t2", "label_names"] == "a;a/d"
    assert table.loc["e/only", "label_ids"] == "4"
    assert table.loc["e/only", "label_names"] == "e"
    assert table.loc["a/d/t2", "caption"] == 'caption, d "2"'
    assert table.loc["a/d/t2", "image_path"] == "/img/d2.png"
    assert table.loc["a/d/t2", "category"] == "a/d"


def test_build_manifest_split_depends_on_seed_only():
    s1, _ = manifest.build_manifest(samples_frame(), test_fraction=0.2, seed=5)
    s2, _ = manifest.build_manifest(samples_frame().iloc[::-1], test_fraction=0.2, seed=5)
    pd.testing.assert_frame_equal(s1["test"], s2["test"])


def test_build_manifest_duplicate_id():
    frame = samples_frame()
    frame.loc[1, "sample_id"] = frame.loc[0, "sample_id"]
    with pytest.raises(DataError, match="duplicate"):
        manifest.build_manifest(frame, test_fraction=0.2, seed=0)


def test_build_manifest_empty_and_missing_columns():
    empty = pd.DataFrame(columns=["sample_id", "image_path", "caption", "category"])
    with pytest.raises(DataError):
        manifest.build_manifest(empty, test_fraction=0.2, seed=0)
    with pytest.raises(DataError, match="caption"):
        manifest.build_manifest(samples_frame().drop(columns="caption"), test_fraction=0.2, seed=0)


# ---- files ---------------------------------------------------------------------------------
def test_write_read_round_trip(tmp_path):
    splits, labels = manifest.build_manifest(samples_frame(), test_fraction=0.2, seed=0)
    paths = {name: tmp_path / "m" / f"{name}.csv" for name in splits}
    manifest.write_manifest(splits, labels, paths, tmp_path / "m" / "labels.json")
    for name, table in splits.items():
        back = manifest.read_manifest(paths[name])
        pd.testing.assert_frame_equal(back, table.astype(str))
    assert manifest.read_labels(tmp_path / "m" / "labels.json") == labels
    assert json.loads((tmp_path / "m" / "labels.json").read_text())[2]["parent"] == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["labels.json", "test.csv", "train.csv"]


def valid_table() -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ["x", "y"], "image_path": ["x.png", "y.png"],
                         "caption": ["", "b"], "category": ["a", "a"], "label_ids": ["0", "0"],
                         "label_names": ["a", "a"]})


def test_read_manifest_empty_caption_stays_string(tmp_path):
    path = tmp_path / "ok.csv"
    valid_table().to_csv(path, index=False)
    assert manifest.read_manifest(path)["caption"].tolist() == ["", "b"]


def test_read_manifest_missing_file(tmp_path):
    path = tmp_path / "none.csv"
    with pytest.raises(DataError) as info:
        manifest.read_manifest(path)
    assert str(path) in str(info.value)


def test_read_manifest_missing_columns(tmp_path):
    path = tmp_path / "cols.csv"
    valid_table().drop(columns=["label_ids", "caption"]).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        manifest.read_manifest(path)
    assert str(path) in str(info.value)
    assert "label_ids" in str(info.value) and "caption" in str(info.value)


def test_read_manifest_header_only(tmp_path):
    path = tmp_path / "empty.csv"
    valid_table().iloc[:0].to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        manifest.read_manifest(path)
    assert str(path) in str(info.value)


def test_read_manifest_zero_byte_file(tmp_path):
    path = tmp_path / "zero.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError):
        manifest.read_manifest(path)


def test_read_manifest_duplicate_ids(tmp_path):
    path = tmp_path / "dup.csv"
    table = valid_table()
    table.loc[1, "sample_id"] = "x"
    table.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        manifest.read_manifest(path)
    assert str(path) in str(info.value) and "'x'" in str(info.value)


def test_label_matrix_known_answer():
    table = pd.DataFrame({"label_ids": ["0;1;2", "0;3", "4", ""]})
    expected = np.array([[1, 1, 1, 0, 0, 0],
                         [1, 0, 0, 1, 0, 0],
                         [0, 0, 0, 0, 1, 0],
                         [0, 0, 0, 0, 0, 0]], dtype=bool)
    got = manifest.label_matrix(table, 6)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, expected)


# ---- Tux Paint stamps -----------------------------------------------------------------------
def _png(path, color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


def _txt(path, text):
    path.write_text(text, encoding="utf-8")


def test_scan_stamps(tmp_path):
    root = tmp_path / "stamps"
    _png(root / "animals/mammals/cat.png")
    _txt(root / "animals/mammals/cat.txt", "A cat purrs.\nfr.utf8=Un chat ronronne.\nde.utf8=Eine Katze\n")
    _png(root / "animals/mammals/cat_mirror.png")  # no .txt
    _png(root / "food/fruit/cartoon/apple.png")
    _txt(root / "food/fruit/cartoon/apple.txt", "\n\n  A red apple.  \nes.utf8=Una manzana roja.\n")
    _png(root / "symbols/alphabets/latin/a.png")
    _txt(root / "symbols/alphabets/latin/a.txt", "The letter A.\n")
    _png(root / "symbols/math/7.png")
    _txt(root / "symbols/math/7.txt", "Seven.\n")
    _png(root / "symbols/math/plus.png")
    _txt(root / "symbols/math/plus.txt", "A plus sign.\n")
    _png(root / "misc/blank.png")
    _txt(root / "misc/blank.txt", "\n   \n")  # no caption line at all

    stamps, skipped = tuxpaint.scan_stamps(root)
    assert skipped == {"glyph": 2, "no_caption": 2}
    by_id = {s.sample_id: s for s in stamps}
    assert sorted(by_id) == ["animals/mammals/cat", "food/fruit/cartoon/apple", "symbols/math/plus"]
    cat = by_id["animals/mammals/cat"]
    assert cat.caption == "A cat purrs."
    assert cat.category == "animals/mammals"
    assert cat.image_path == root / "animals/mammals/cat.png"
    apple = by_id["food/fruit/cartoon/apple"]
    assert apple.caption == "A red apple."
    assert apple.category == "food/fruit/cartoon"
    assert by_id["symbols/math/plus"].category == "symbols/math"
    assert tuxpaint.categories(stamps) == ["animals/mammals", "food/fruit/cartoon", "symbols/math"]


def test_scanned_stamps_feed_build_manifest(tmp_path):
    root = tmp_path / "stamps"
    for i in range(5):
        _png(root / f"animals/birds/b{i}.png")
        _txt(root / f"animals/birds/b{i}.txt", f"bird {i}\n")
        _png(root / f"food/f{i}.png")
        _txt(root / f"food/f{i}.txt", f"food {i}\n")
    stamps, _ = tuxpaint.scan_stamps(root)
    frame = pd.DataFrame([{"sample_id": s.sample_id, "image_path": str(s.image_path),
                           "caption": s.caption, "category": s.category} for s in stamps])
    splits, labels = manifest.build_manifest(frame, test_fraction=0.2, seed=0)
    assert [label.path for label in labels] == ["animals", "animals/birds", "food"]
    assert len(splits["test"]) == 2 and len(splits["train"]) == 8
    assert sorted(splits["test"]["category"].str.split("/").str[0]) == ["animals", "food"]
