"""The paper datasets through the workflow's rules: fixtures in the published layouts served on
loopback (COCO, Flowers, Open Images, LAION subset, CC-3M) or provided by hand (ImageNet val),
downloaded, verified, unpacked and turned into manifests by `download_dataset` and `manifest_labelled`."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import write_config
from http_fixtures import loopback_server
from test_datasets_coco_flowers_imagenet import (
    _coco_bodies,
    _devkit_folder,
    _flowers_bodies,
    _serve,
    _sources,
)
from test_datasets_openimages_urllists import (
    LAION_HEADER,
    TRAIN_1,
    A,
    B,
    C,
    D,
    image_requests,
    laion_rows,
    serve_cc3m,
    serve_open_images,
)
from test_workflow import snakemake

from xsae.datasets import coco, flowers
from xsae.datasets.manifest import read_manifest
from xsae.download import DownloadReport
from xsae.rehearsal.datasets import csv_bytes


def coco_config(base_url: str, bodies: dict[str, bytes]) -> dict:
    return {
        "datasets": {"coco": {"kind": "coco2017", "base_url": base_url, "workers": 2,
                              "options": {"sources": _sources(coco.SOURCES, bodies)}}},
        "encoders": {"minilm": {"loader": "minilm_l6_v2"}},
        "features": {},
    }


@pytest.mark.slow
def test_coco_download_and_manifests_through_the_rules(tmp_path):
    bodies = _coco_bodies()
    with loopback_server() as server:
        base = _serve(server, "/coco", bodies)
        configfile = write_config(coco_config(base, bodies), tmp_path / "config.yaml")
        snakemake(tmp_path, configfile=configfile)
    manifests = tmp_path / "results/manifests/coco"
    train, test = read_manifest(manifests / "train.csv"), read_manifest(manifests / "test.csv")
    assert train["sample_id"].tolist() == ["000000000001", "000000000002", "000000000003"]
    assert test["sample_id"].tolist() == ["000000000010"]
    labels = {entry["path"] for entry in json.loads((manifests / "labels.json").read_text())}
    assert {"animal", "animal/dog", "person", "vehicle/bicycle"} <= labels
    first = train.iloc[0]
    assert first["label_names"].split(";") == ["animal", "animal/dog", "person"]
    record = json.loads((tmp_path / "resources/datasets/coco/download.json").read_text())
    assert record["kind"] == "coco2017"
    chain = json.loads((tmp_path / "results/manifests/coco/train.csv.prov.json").read_text())
    assert chain["rule"] == "manifest_labelled"
    assert chain["inputs"][0]["path"] == "resources/datasets/coco/download.json"


@pytest.mark.slow
def test_truncated_archive_fails_the_download_rule_and_writes_no_manifest(tmp_path):
    bodies = _coco_bodies()
    bodies["val2017.zip"] = bodies["val2017.zip"][: len(bodies["val2017.zip"]) // 2]
    with loopback_server() as server:
        base = _serve(server, "/coco", bodies)
        configfile = write_config(coco_config(base, bodies), tmp_path / "config.yaml")
        result = snakemake(tmp_path, configfile=configfile, check=False)
    assert result.returncode != 0
    assert "val2017.zip" in result.stdout + result.stderr
    assert not (tmp_path / "resources/datasets/coco/download.json").exists()
    assert not (tmp_path / "results/manifests/coco/train.csv").exists()


# -------------------------------------------------------------------- the other five paper datasets


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """The snakemake subprocess inherits the environment: no proxy may route loopback requests."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def one_dataset_config(name: str, entry: dict) -> dict:
    """A config whose only dataset is `name`, with no features and one (unused) encoder."""
    return {"datasets": {name: entry}, "encoders": {"minilm": {"loader": "minilm_l6_v2"}},
            "features": {}}


def run_workflow(tmp_path: Path, name: str, entry: dict, *args: str,
                 check: bool = True) -> subprocess.CompletedProcess:
    configfile = write_config(one_dataset_config(name, entry), tmp_path / "config.yaml")
    return snakemake(tmp_path, *args, configfile=configfile, check=check)


def manifests(tmp_path: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    folder = tmp_path / "results" / "manifests" / name
    return (read_manifest(folder / "train.csv"), read_manifest(folder / "test.csv"),
            json.loads((folder / "labels.json").read_text()))


def download_record(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "resources" / "datasets" / name / "download.json").read_text())


def assert_nothing_written(tmp_path: Path, name: str) -> None:
    assert not (tmp_path / "resources" / "datasets" / name / "download.json").exists()
    for file in ("train.csv", "test.csv", "labels.json"):
        assert not (tmp_path / "results" / "manifests" / name / file).exists()


@pytest.mark.slow
def test_flowers_splits_captions_and_labels_through_the_rules(tmp_path):
    bodies = _flowers_bodies()
    with loopback_server() as server:
        base = _serve(server, "/vgg", bodies)
        run_workflow(tmp_path, "flowers", {
            "kind": "flowers102", "base_url": base, "workers": 2,
            "options": {"sources": _sources(flowers.SOURCES, bodies)}})
        assert sorted(seen.path for seen in server.seen) == sorted(f"/vgg/{name}" for name in bodies)
    train, test, labels = manifests(tmp_path, "flowers")
    # setid.mat: trnid [3, 1] + valid [6] → train, tstid [2, 4, 5, 7, 8] → test
    assert train["sample_id"].tolist() == ["image_00001", "image_00003", "image_00006"]
    assert test["sample_id"].tolist() == ["image_00002", "image_00004", "image_00005", "image_00007",
                                          "image_00008"]
    assert train["caption"].tolist() == ["caption 1 of flower 1", "caption 1 of flower 3",
                                         "caption 1 of flower 6"]
    assert train["label_names"].tolist() == ["passion flower", "pink primrose", "hard-leaved pocket orchid"]
    assert train["category"].tolist() == train["label_names"].tolist()
    assert test.set_index("sample_id").loc["image_00005", "label_names"] == "blackberry lily"
    assert test.set_index("sample_id").loc["image_00005", "caption"] == "caption 1 of flower 5"
    # Image paths are relative to the workflow's working directory.
    assert test["image_path"].tolist() == [f"resources/datasets/flowers/files/images/jpg/{s}.jpg"
                                           for s in test["sample_id"]]
    assert all((tmp_path / p).is_file() for p in [*train["image_path"], *test["image_path"]])
    assert len(labels) == 102 and {label["depth"] for label in labels} == {1}
    by_id = {label["id"]: label["path"] for label in labels}
    assert by_id[int(train["label_ids"][1])] == "pink primrose"
    record = download_record(tmp_path, "flowers")
    assert record["kind"] == "flowers102" and record["failures"] == []
    assert set(record["files"]) == {"images", "labels", "setid", "captions"}
    assert record["files"]["captions"]["sha256"] == hashlib.sha256(
        bodies["cvpr2016_flowers.tar.gz"]).hexdigest()
    assert record["files"]["labels"]["bytes"] == len(bodies["imagelabels.mat"])


@pytest.mark.slow
def test_flowers_checksum_mismatch_fails_the_rule_naming_the_file(tmp_path):
    """imagelabels.mat keeps its published MD5 while the server sends other bytes (of the right size)."""
    bodies = _flowers_bodies()
    sources = _sources(flowers.SOURCES, bodies)
    published = flowers.SOURCES["labels"]["md5"]
    sources["labels"]["md5"] = published
    actual = hashlib.md5(bodies["imagelabels.mat"]).hexdigest()
    assert actual != published
    with loopback_server() as server:
        base = _serve(server, "/vgg", bodies)
        result = run_workflow(tmp_path, "flowers", {
            "kind": "flowers102", "base_url": base, "workers": 2, "options": {"sources": sources}},
            check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"imagelabels.mat from {base}/imagelabels.mat: md5 {actual} differs from the expected " \
           f"{published}" in output
    assert "nothing was unpacked" in output
    for other in ("102flowers.tgz from", "setid.mat from", "cvpr2016_flowers.tar.gz from"):
        assert other not in output, "only the bad file is named"
    assert_nothing_written(tmp_path, "flowers")
    files = tmp_path / "resources" / "datasets" / "flowers" / "files"
    assert not (files / "download.json").exists() and not (files / "images").exists()
    assert not (files / "downloads" / "imagelabels.mat").exists(), "the bad file is deleted"


@pytest.mark.slow
def test_imagenet_val_provided_folder_gives_the_test_manifest(tmp_path):
    folder = _devkit_folder(tmp_path / "provided")
    run_workflow(tmp_path, "imagenet", {"kind": "imagenet_val", "provided": str(folder),
                                        "options": {"expected_images": 5}})
    folder_manifests = tmp_path / "results" / "manifests" / "imagenet"
    test = read_manifest(folder_manifests / "test.csv")
    assert test["sample_id"].tolist() == [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
    assert test["label_names"].tolist() == ["tench", "crane (n02012849)", "crane (n03126707)", "tench",
                                            "crane (n02012849)"]
    assert test["caption"].tolist() == ["a photo of a tench.", "a photo of a crane.", "a photo of a crane.",
                                        "a photo of a tench.", "a photo of a crane."]
    assert test["image_path"].tolist() == [
        str((folder / "val" / f"ILSVRC2012_val_{i:08d}.JPEG").resolve()) for i in range(1, 6)]
    train = pd.read_csv(folder_manifests / "train.csv", dtype=str, keep_default_na=False)
    assert train.empty and list(train.columns) == list(test.columns)
    assert (folder_manifests / "train.csv").read_text().strip() == ",".join(test.columns)
    labels = json.loads((folder_manifests / "labels.json").read_text())
    assert sorted(label["path"] for label in labels) == ["crane (n02012849)", "crane (n03126707)", "tench"]
    record = download_record(tmp_path, "imagenet")
    assert record["kind"] == "imagenet_val" and record["provided"] == str(folder.resolve())
    assert (record["n_images"], record["n_classes"], record["failures"]) == (5, 3, [])
    assert record["ground_truth"] == ["ILSVRC2012_validation_ground_truth.txt", "meta.mat"]


@pytest.mark.slow
def test_imagenet_val_without_provided_folder_fails_with_instructions(tmp_path):
    result = run_workflow(tmp_path, "imagenet", {"kind": "imagenet_val", "provided": None}, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # The rule passes the dataset's config key, so the message names the exact key to set.
    assert ("download_dataset: datasets.imagenet.provided is not set, and ImageNet cannot be fetched "
            "automatically.") in output
    assert "Set datasets.imagenet.provided: /path/to/that/folder in your config file" in output
    for needle in ("https://image-net.org/signup.php", "ILSVRC2012_img_val.tar",
                   "MD5 29b22e2961454d5413ddabcf34fc5622", "ILSVRC2012_devkit_t12.tar.gz",
                   "ILSVRC2012_validation_ground_truth.txt and meta.mat",
                   "imagenet-object-localization-challenge"):
        assert needle in output
    assert_nothing_written(tmp_path, "imagenet")


@pytest.mark.slow
def test_open_images_rows_labels_and_failed_image_through_the_rules(tmp_path):
    with loopback_server() as server:
        base = serve_open_images(server)
        run_workflow(tmp_path, "open_images", {
            "kind": "open_images_v7", "base_url": base, "workers": 2,
            "options": {"max_images": {"test": 4, "train": 1}, "timeout": 5, "retries": 1}})
        images = sorted(image_requests(server))
    assert images == sorted([f"/test/{A}.jpg", f"/test/{B}.jpg", f"/test/{C}.jpg", f"/test/{D}.jpg",
                             f"/train/{TRAIN_1}.jpg"]), "max_images caps train at its first id"
    train, test, labels = manifests(tmp_path, "open_images")
    # One row per (image, narrative); D's image is a 404, so its narrative has no row.
    assert test["sample_id"].tolist() == [f"{A}_0", f"{A}_1", f"{B}_0", f"{C}_0"]
    assert test["caption"].tolist() == ["In this picture there is a cat on a car.",
                                        "Here we can see a cat sitting on a car.",
                                        "In this image we can see a dog.", "A tree."]
    # Confidence-0 labels (A: Dog, B: Car, C: Tree) are dropped; ancestors come from the hierarchy.
    cat_and_car = "Animal;Animal/Carnivore;Animal/Carnivore/Cat;Vehicle;Vehicle/Car"
    assert test["label_names"].tolist() == [cat_and_car, cat_and_car,
                                            "Animal;Animal/Carnivore;Animal/Carnivore/Dog", ""]
    assert test["category"].tolist() == ["Vehicle/Car", "Vehicle/Car", "Animal/Carnivore/Dog", ""]
    assert test["image_path"].tolist() == [f"resources/datasets/open_images/files/images/test/{i}.jpg"
                                           for i in (A, A, B, C)]
    assert all((tmp_path / p).is_file() for p in test["image_path"])
    assert train["sample_id"].tolist() == [f"{TRAIN_1}_0"]
    assert train["caption"].tolist() == ["A red car."]
    assert train["label_names"].tolist() == ["Vehicle;Vehicle/Car"]
    assert sorted(label["path"] for label in labels) == [
        "Animal", "Animal/Carnivore", "Animal/Carnivore/Cat", "Animal/Carnivore/Dog", "Tree", "Vehicle",
        "Vehicle/Car", "Wheel"]
    record = download_record(tmp_path, "open_images")
    assert record["kind"] == "open_images_v7" and record["labels"] == 8
    split = record["splits"]["test"]
    assert (split["selected_images"], split["images_resolved"], split["images_failed"]) == (4, 3, 1)
    assert split["failed_image_ids"] == [D]
    assert (split["rows"], split["rows_with_labels"]) == (4, 3)
    assert record["splits"]["train"]["failed_image_ids"] == []
    assert record["options"]["max_images"] == {"train": 1, "test": 4}
    files = tmp_path / "resources" / "datasets" / "open_images" / "files"
    failed = DownloadReport.read(files / split["report"]).failed
    assert [(item.key, item.http_status) for item in failed] == [(D, 404)]


def _images(server, prefix: str) -> list[str]:
    return [seen.path for seen in server.seen if seen.path.startswith(prefix)]


@pytest.mark.slow
def test_laion_subset_failures_recorded_and_rerun_fetches_no_image(tmp_path):
    with loopback_server() as server:
        rows = laion_rows(server)  # row 3: 404, row 7: no URL
        server.add("/laion/8.jpg", b"<!DOCTYPE html><html><body>Image not found</body></html>")
        lists = server.add("/lists/laion.csv", csv_bytes(LAION_HEADER, rows))
        entry = {"kind": "laion_subset", "workers": 2,
                 "options": {"test_fraction": 0.5, "list_urls": {"all": lists}, "timeout": 5}}
        run_workflow(tmp_path, "laion", entry)
        first = _images(server, "/laion/")
        assert sorted(first) == sorted([f"/laion/{i}.jpg" for i in range(12) if i not in (3, 7)]
                                       + ["/laion/missing.jpg"])
        seen = len(server.seen)
        # Snakemake does not rebuild a missing intermediate file whose consumers are up to date, so
        # the deleted record is asked for by name ("--" ends the --configfile list).
        record_path = tmp_path / "resources" / "datasets" / "laion" / "download.json"
        record_path.unlink()
        run_workflow(tmp_path, "laion", entry, "--", "resources/datasets/laion/download.json")
        assert record_path.is_file()
        assert _images(server, "/laion/")[len(first):] == [], "no image is requested again"
        assert server.seen[seen:] == [], "finished shards and the present list send no request at all"
    train, test, labels = manifests(tmp_path, "laion")
    # hash_split(row, 0.5): rows 6, 8, 9 are train; 8 is an HTML page. 3 (404) and 7 (no URL) are test.
    assert train["sample_id"].tolist() == ["laion_subset_train_00000006", "laion_subset_train_00000009"]
    assert train["caption"].tolist() == ["caption number 6", "caption number 9"]
    assert test["sample_id"].tolist() == [f"laion_subset_test_{i:08d}" for i in (0, 1, 2, 4, 5, 10, 11)]
    assert test["caption"].tolist() == [f"caption number {i}" for i in (0, 1, 2, 4, 5, 10, 11)]
    assert set(train["label_names"]) | set(test["label_names"]) == {""} and labels == []
    record = download_record(tmp_path, "laion")
    assert record["kind"] == "laion_subset"
    splits = record["splits"]
    assert (splits["train"]["rows"], splits["train"]["resolved"], splits["train"]["failed"]) == (3, 2, 1)
    assert (splits["test"]["rows"], splits["test"]["resolved"], splits["test"]["failed"]) == (9, 7, 2)
    assert splits["train"]["failures_by_kind"] == {"undecodable": 1}
    assert splits["test"]["failures_by_kind"] == {"http 404": 1, "no url": 1}
    assert (splits["train"]["shards_resumed"], splits["test"]["shards_resumed"]) == (1, 1)


@pytest.mark.slow
def test_cc3m_failures_recorded_and_forced_rerun_fetches_no_image(tmp_path):
    with loopback_server() as server:
        base, _ = serve_cc3m(server)  # train: rows 2 (404) and 4 (HTML page) fail
        entry = {"kind": "cc3m", "base_url": base, "workers": 2, "options": {"timeout": 5}}
        run_workflow(tmp_path, "cc3m", entry)
        first = _images(server, "/img/")
        assert sorted(first) == ["/img/a.jpg", "/img/b.png", "/img/c.jpg?size=large", "/img/d",
                                 "/img/gone.jpg", "/img/moved.jpg", "/img/t1.jpg", "/img/t2.jpg"]
        before = manifests(tmp_path, "cc3m")
        run_workflow(tmp_path, "cc3m", entry, "--forcerun", "download_dataset")
        assert _images(server, "/img/")[len(first):] == [], "no image is requested again"
    train, test, labels = manifests(tmp_path, "cc3m")
    pd.testing.assert_frame_equal(train, before[0])
    assert train["sample_id"].tolist() == ["cc3m_train_00000000", "cc3m_train_00000001",
                                           "cc3m_train_00000003", "cc3m_train_00000005"]
    assert train["caption"].tolist() == ["a red square", 'a "green" square, as png', "a blue square",
                                         "a dark square"]
    assert train["image_path"].tolist() == [
        f"resources/datasets/cc3m/files/images/train/0000/cc3m_train_{row:08d}{suffix}"
        for row, suffix in ((0, ".jpg"), (1, ".png"), (3, ".jpg"), (5, ".img"))]
    assert all((tmp_path / p).is_file() for p in [*train["image_path"], *test["image_path"]])
    assert test["sample_id"].tolist() == ["cc3m_test_00000000", "cc3m_test_00000001"]
    assert test["caption"].tolist() == ["test one", "test two"]
    assert labels == []
    record = download_record(tmp_path, "cc3m")
    assert record["kind"] == "cc3m"
    train_record = record["splits"]["train"]
    assert (train_record["rows"], train_record["resolved"], train_record["failed"]) == (6, 4, 2)
    assert train_record["failures_by_kind"] == {"http 404": 1, "undecodable": 1}
    assert train_record["shards_resumed"] == 1, "the forced rerun reused the finished shard"
    assert (record["splits"]["test"]["resolved"], record["splits"]["test"]["failed"]) == (2, 0)
    files = tmp_path / "resources" / "datasets" / "cc3m" / "files"
    failed = DownloadReport.read(files / train_record["failed_report"])
    assert [(item.key, item.http_status) for item in failed.items] == [
        ("cc3m_train_00000002", 404), ("cc3m_train_00000004", None)]
