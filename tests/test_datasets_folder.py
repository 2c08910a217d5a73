"""Your own images (kind `image_folder`): a folder and a CSV/JSONL/Parquet table become manifests with
captions, multi-level labels and a seeded stratified split; bad rows are skipped and reported with
their row and column; a table that cannot be used fails naming the file and column, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import FIXTURE_STAMPS, STAMPS, make_stamps_tree

from xsae.datasets import folder
from xsae.datasets.manifest import labelled_manifest
from xsae.datasets.sources import source_for
from xsae.errors import ConfigError, DataError

USABLE = [(relative, caption) for relative, caption in FIXTURE_STAMPS if caption is not None][:20]


def own_folder(root: Path) -> tuple[Path, pd.DataFrame]:
    """The fixture stamps as a user's folder: images under `images/`, and a table of file name, two
    caption columns and the stamp's category path as its label."""
    tree = make_stamps_tree(root / "tree")
    images = root / "mine" / "images"
    rows = []
    for relative, caption in USABLE:
        target = images / f"{relative.replace('/', '_')}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tree / STAMPS / f"{relative}.png").read_bytes())
        category = relative.rsplit("/", 1)[0]
        rows.append({"file": f"images/{target.name}", "caption": caption,
                     "alt": f"a {relative.rsplit('/', 1)[1]}", "labels": category})
    return root / "mine", pd.DataFrame(rows)


OPTIONS = {"table": "captions.csv", "image_column": "file", "caption_columns": ["caption", "alt"],
           "label_column": "labels", "test_fraction": 0.25, "seed": 3}


def test_a_folder_becomes_labelled_manifests_with_a_stratified_split(tmp_path):
    mine, table = own_folder(tmp_path)
    table.to_csv(mine / "captions.csv", index=False)
    root = tmp_path / "files"
    record = folder.download(root, provided=str(mine), **OPTIONS)
    assert (record["usable"], record["skipped"]) == (20, 0)
    splits = {split: folder.samples(root, split) for split in ("train", "test")}
    assert record["splits"] == {split: len(frame) for split, frame in splits.items()}
    assert sorted(splits["train"]["sample_id"].tolist() + splits["test"]["sample_id"].tolist()) == \
        sorted(f"images/{relative.replace('/', '_')}" for relative, _ in USABLE)
    # stratified by the first label: every category with 3+ images is in both splits
    for category in ("birds", "mammals", "fruit", "auto"):
        assert all((frame["labels"].map(lambda labels, c=category: c in labels)).any()
                   for frame in splits.values()), category
    row = splits["train"].iloc[0]
    original = table[table["file"] == f"{row['sample_id']}.png"].iloc[0]
    assert row["caption"] == f"{original['caption']} {original['alt']}"  # captions joined
    assert row["labels"] == [original["labels"].rsplit("/", 1)[1]] and Path(row["image_path"]).is_file()
    tree = folder.hierarchy(root)
    assert tree["owl" if "owl" in tree else "birds"] in ("birds", "animals")
    assert tree["birds"] == "animals" and tree["animals"] is None and tree["cartoon"] == "fruit"
    _, labels = labelled_manifest(splits["train"], tree)  # what rule manifest_labelled writes
    assert {label.path for label in labels} >= {"animals/birds", "food/fruit/cartoon"}
    # the same seed splits the same way; each caption as its own row on request
    again = folder.download(tmp_path / "again", provided=str(mine), **OPTIONS)
    assert again["splits"] == record["splits"]
    pd.testing.assert_frame_equal(folder.samples(tmp_path / "again", "test"), splits["test"])
    each = folder.samples(root, "test", captions="each")
    assert len(each) == 2 * len(splits["test"]) and each["sample_id"].str.endswith(("_0", "_1")).all()


def test_jsonl_and_parquet_tables_give_the_same_samples(tmp_path):
    mine, table = own_folder(tmp_path)
    table.to_csv(mine / "captions.csv", index=False)
    listed = table.assign(caption=[[c, a] for c, a in zip(table["caption"], table["alt"], strict=True)])
    splits = ["test" if i % 4 == 0 else "train" for i in range(len(table))]
    listed = listed.drop(columns="alt").assign(split=splits)
    listed.to_json(mine / "captions.jsonl", orient="records", lines=True)
    listed.to_parquet(mine / "captions.parquet", index=False)
    tables = {}
    for name in ("captions.jsonl", "captions.parquet"):
        root = tmp_path / name
        options = {**OPTIONS, "table": name, "caption_columns": ["caption"], "split_column": "split"}
        record = folder.download(root, provided=str(mine), **options)
        assert record["splits"] == {"train": 15, "test": 5}  # the table's own split
        tables[name] = folder.samples(root, "test")
    pd.testing.assert_frame_equal(tables["captions.jsonl"], tables["captions.parquet"])
    assert tables["captions.jsonl"]["caption"].iloc[0] == f"{table['caption'][0]} {table['alt'][0]}"


def test_bad_rows_are_skipped_and_reported_with_row_and_column(tmp_path):
    mine, table = own_folder(tmp_path)
    (mine / "images" / "broken.png").write_bytes(b"not a png")
    (mine / "images" / "extra.png").write_bytes((mine / table["file"][2]).read_bytes())
    bad = pd.DataFrame([
        {"file": "images/missing.png", "caption": "x", "alt": "", "labels": "a/b"},  # row 21
        {"file": "images/broken.png", "caption": "x", "alt": "", "labels": "a/b"},  # row 22
        {"file": table["file"][1], "caption": " ", "alt": "", "labels": "a/b"},  # row 23: no caption
        {"file": table["file"][0], "caption": "again", "alt": "", "labels": "a/b"},  # row 24: duplicate
        {"file": "images/extra.png", "caption": "x", "alt": "", "labels": "a//b"},  # row 25: empty level
    ])
    pd.concat([table, bad], ignore_index=True).to_csv(mine / "captions.csv", index=False)
    root = tmp_path / "files"
    record = folder.download(root, provided=str(mine), **OPTIONS)
    assert (record["rows"], record["usable"], record["skipped"]) == (25, 20, 5)
    skipped = pd.read_csv(root / folder.SKIPPED)
    assert skipped["row"].tolist() == [21, 22, 23, 24, 25]
    assert skipped["column"].tolist() == ["file", "file", "caption,alt", "file", "labels"]
    problems = skipped["problem"].tolist()
    assert "file not found" in problems[0] and "not a readable image" in problems[1]
    assert problems[2] == "no caption" and "duplicate id" in problems[3] and "(first in row 1)" in problems[3]
    assert "empty level" in problems[4]


@pytest.mark.parametrize("change, error, message", [
    (lambda o: o.update(image_column="path"), DataError, r"captions\.csv: no column 'path' \(columns: file"),
    (lambda o: o.update(table="captions.tsv"), ConfigError, r"must be \.csv, \.jsonl or \.parquet"),
    (lambda o: o.update(table="other.csv"), DataError, r"other\.csv: table not found"),
    (lambda o: o.update(test_fraction=1.5), ConfigError, r"test_fraction: expected a number in \(0, 1\)"),
    (lambda o: o.update(colour="red"), ConfigError, r"unknown \['colour'\]"),
])
def test_an_unusable_table_fails_naming_what_to_fix_and_writes_nothing(tmp_path, change, error, message):
    mine, table = own_folder(tmp_path)
    table.to_csv(mine / "captions.csv", index=False)
    options = dict(OPTIONS)
    change(options)
    with pytest.raises(error, match=message):
        folder.download(tmp_path / "files", provided=str(mine), **options)
    assert not (tmp_path / "files").exists()


def test_no_usable_row_and_ambiguous_labels_fail(tmp_path):
    mine, table = own_folder(tmp_path)
    table.assign(file="images/nothing.png").to_csv(mine / "captions.csv", index=False)
    with pytest.raises(DataError, match=r"no usable row \(20 skipped; row 1, column 'file'"):
        folder.download(tmp_path / "a", provided=str(mine), **OPTIONS)
    clash = table.copy()
    clash.loc[5, "labels"] = "plants/birds"  # "birds" is already under "animals"
    clash.to_csv(mine / "captions.csv", index=False)
    with pytest.raises(DataError, match=r"row 6: label 'birds' has parent 'plants', but 'animals' in row 1"):
        folder.download(tmp_path / "b", provided=str(mine), **OPTIONS)
    with pytest.raises(ConfigError, match="needs the folder"):
        folder.download(tmp_path / "c", **OPTIONS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_workflow_source_passes_the_config_entry(tmp_path):
    mine, table = own_folder(tmp_path)
    table.to_csv(mine / "captions.csv", index=False)
    source = source_for("image_folder")
    entry = {"kind": "image_folder", "provided": str(mine), "options": OPTIONS, "workers": 8,
             "base_url": None}
    record = source.download(tmp_path / "files", entry, name="mine")
    assert record["kind"] == "image_folder" and record["usable"] == 20
    assert json.loads((tmp_path / "files" / folder.RECORD).read_text())["table"].endswith("captions.csv")
    each = source.samples(tmp_path / "files", "test", {"captions": "each"})
    assert len(each) == 2 * record["splits"]["test"]


def test_the_own_data_example_runs_the_sae_stages_on_a_folder_through_config_alone(tmp_path, monkeypatch):
    """config/examples/own_data.yaml, pointed at a folder of stamps (one row unusable) and shrunk,
    runs download → manifests → features (its own encoder's too) → SPARC runs → SPARC tables with
    `snakemake` alone."""
    import yaml
    from helpers import REPO, write_config
    from test_workflow import snakemake

    mine, table = own_folder(tmp_path)
    broken = pd.DataFrame([{"file": "images/missing.png", "caption": "gone", "alt": "", "labels": "a/b"}])
    pd.concat([table.rename(columns={"alt": "other"}), broken], ignore_index=True).to_csv(
        mine / "captions.csv", index=False)
    config = yaml.safe_load((REPO / "config" / "examples" / "own_data.yaml").read_text())
    config["datasets"]["mine"]["provided"] = str(mine)
    for run in config["sae_runs"].values():
        run.update(n_latents=32, k=4, epochs=3, batch_size=8, log_every=1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the example encoder's module, run from elsewhere
    snakemake(work, configfile=write_config(config, tmp_path / "own.yaml"))
    with h5py.File(work / "results" / "features" / "mine" / "test" / "colours.h5") as h5:
        histograms = h5["pooled/image"][:]
    assert histograms.shape[1] == 512 and np.allclose(histograms.sum(axis=1), 1)  # colour histograms
    skipped = pd.read_csv(work / "resources" / "datasets" / "mine" / "files" / folder.SKIPPED)
    assert skipped[["row", "column"]].values.tolist() == [[21, "file"]]
    manifests = {split: pd.read_csv(work / "results" / "manifests" / "mine" / f"{split}.csv")
                 for split in ("train", "test")}
    assert sum(len(m) for m in manifests.values()) == 20
    categories = {relative.rsplit("/", 1)[0] for relative, _ in USABLE}
    assert set(manifests["test"]["category"].fillna("")) <= categories
    tables = sorted(path.name for path in (work / "results" / "tables").glob("sparc_mine_*.csv"))
    assert tables, "no SPARC table"
    first = pd.read_csv(work / "results" / "tables" / tables[0])
    assert len(first) and first.select_dtypes("number").notna().all().all()
