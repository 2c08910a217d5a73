"""The rehearsal's dataset miniatures: built for config/paper.yaml's datasets, served on 127.0.0.1 and
run through each source's download and manifest functions, the ones the rules download_dataset,
manifest_labelled and manifest_prompts call."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from xsae.datasets import imagenet
from xsae.datasets.manifest import label_matrices, labelled_manifest
from xsae.datasets.prompts import imagenet_wnids, prompt_manifest
from xsae.datasets.sources import source_for
from xsae.errors import DownloadError
from xsae.io import sha256_tree
from xsae.metrics.probes import task_splits
from xsae.rehearsal.datasets import (
    COCO_CAPTIONS,
    IMAGENET_CLASSES,
    MIN_POSITIVES,
    REHEARSAL_HUB_REPO,
    build_miniatures,
    serve,
    served_miniatures,
)

PAPER = yaml.safe_load((Path(__file__).parents[1] / "config" / "paper.yaml").read_text())["datasets"]
DOWNLOADED = [name for name, entry in PAPER.items()
              if entry["kind"] != "class_prompts" and not entry.get("files_of")]
LABELLED = [name for name in DOWNLOADED
            if PAPER[name]["kind"] not in ("laion_subset", "cc3m", "hub_image_text")]
KEPT = ("kind", "files_of", "manifest_options", "classes_of", "class_names", "templates")


@pytest.fixture(scope="module", autouse=True)
def _loopback_only():
    """No proxy may route loopback requests elsewhere (module scope: the downloads run in a fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            patch.delenv(name, raising=False)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniatures")
    start = time.perf_counter()
    with served_miniatures(PAPER, root, seed=0) as (server, miniatures, overrides):
        yield SimpleNamespace(root=root, server=server, miniatures=miniatures, overrides=overrides,
                              seconds=time.perf_counter() - start)


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory):
    """Every dataset downloaded and turned into manifests as the rules do it; prompts last."""
    out = tmp_path_factory.mktemp("resources")
    records, manifests, labels = {}, {}, {}
    for name, entry in served.overrides.items():
        if entry["kind"] == "class_prompts":
            continue
        files = out / (entry.get("files_of") or name) / "files"
        source = source_for(entry["kind"])
        if not entry.get("files_of"):
            records[name] = source.download(files, entry, name=name)
        hierarchy = source.hierarchy(files)
        manifests[name] = {}
        for split in ("train", "test"):
            samples = source.samples(files, split, entry.get("manifest_options"))
            manifests[name][split], labels[name] = labelled_manifest(samples, hierarchy)
    prompts = {}
    for name, entry in served.overrides.items():
        if entry["kind"] == "class_prompts":
            described = served.overrides[entry["classes_of"]]
            files = out / entry["classes_of"] / "files"
            wnids = imagenet_wnids(files) if described["kind"] == "imagenet_val" else None
            prompts[name] = prompt_manifest(labels[entry["classes_of"]], class_names=entry["class_names"],
                                            templates=entry["templates"], wnids=wnids)
    return SimpleNamespace(out=out, records=records, manifests=manifests, labels=labels, prompts=prompts)


def _label_counts(table: pd.DataFrame) -> dict[str, int]:
    counts: dict[str, int] = {}
    for names in table["label_names"]:
        for path in filter(None, names.split(";")):
            name = path.rsplit("/", 1)[-1]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------------------------------ entries


def test_every_paper_dataset_gets_an_entry_and_every_download_a_miniature(served):
    assert list(served.overrides) == list(PAPER)
    assert sorted(served.miniatures) == sorted(DOWNLOADED)
    base = served.server.url()
    for name, entry in served.overrides.items():
        kept = {k: PAPER[name][k] for k in KEPT if k in PAPER[name]}
        assert {k: entry[k] for k in KEPT if k in entry} == kept, name
        if name not in DOWNLOADED:
            assert not {"base_url", "options", "provided"} & set(entry), name
        elif entry["kind"] == "imagenet_val":
            assert entry["provided"] == str((served.root / name).resolve())
            assert entry["options"] == {"expected_images": served.miniatures[name].rows["test"]}
        else:
            assert entry["base_url"] == f"{base}/{name}" and entry["workers"] <= 4
    for source in served.overrides["coco"]["options"]["sources"].values():
        body = (served.root / "coco" / source["file"]).read_bytes()
        assert source["size"] == len(body) and len(source["sha256"]) == 64
    # the paper's Flowers is a Hub dataset: its miniature serves the Hub's Parquet layout
    flowers = served.overrides["flowers"]
    assert flowers["kind"] == "hub_image_text" and flowers["options"]["repo"] == REHEARSAL_HUB_REPO
    assert flowers["options"]["test_fraction"] == PAPER["flowers"]["options"]["test_fraction"] == 0
    total = sum(m.size_bytes for m in served.miniatures.values())
    assert total < 20 * 2**20, f"miniatures take {total} bytes"
    assert served.seconds < 60, f"building and serving took {served.seconds:.1f} s"


# ----------------------------------------------------------------------------- downloads, manifests


@pytest.mark.parametrize("name", DOWNLOADED)
def test_manifests_have_the_designed_rows(fetched, served, name):
    miniature = served.miniatures[name]
    for split in ("train", "test"):
        assert len(fetched.manifests[name][split]) == miniature.rows[split], split
    assert miniature.rows["test"] > 0
    if name in ("flowers", "laion"):  # no hold-out, as the paper config: compared on the training rows
        assert miniature.rows["train"] == miniature.rows["test"] >= 24
        assert fetched.manifests[name]["train"]["sample_id"].tolist() == \
            fetched.manifests[name]["test"]["sample_id"].tolist()
    elif name != "imagenet":
        assert miniature.rows["train"] > miniature.rows["test"] >= 24
    if miniature.failures:  # URL lists: dead links and web pages are recorded, the rest proceeds
        for split, failed in miniature.failures.items():
            assert fetched.records[name]["splits"][split]["failed"] == failed
            assert fetched.records[name]["splits"][split]["resolved"] == miniature.rows[split]


def test_per_caption_coco_shares_the_coco_download(fetched, served):
    for split in ("train", "test"):
        rows = fetched.manifests["coco_captions"][split]
        assert len(rows) == COCO_CAPTIONS * served.miniatures["coco"].rows[split]
        assert rows["image_path"].nunique() == served.miniatures["coco"].rows[split]
    assert "coco_captions" not in fetched.records


@pytest.mark.parametrize("name", LABELLED)
def test_every_label_has_the_minimum_positives_and_a_probe_task(fetched, served, name):
    miniature = served.miniatures[name]
    for split, designed in miniature.label_rows.items():
        table = fetched.manifests[name][split]
        assert _label_counts(table) == designed, split
        assert set(designed) == set(miniature.labels)
        assert min(designed.values()) >= MIN_POSITIVES, split
        all_levels, _ = label_matrices(table, fetched.labels[name])
        tasks = task_splits(all_levels, min_positives=MIN_POSITIVES)
        names = {label.id: label.name for label in fetched.labels[name]}
        assert sorted(names[t.task] for t in tasks) == sorted(miniature.labels), split


@pytest.mark.parametrize("name", [*DOWNLOADED, "coco_captions"])
def test_captions_are_present_and_name_the_labels(fetched, name):
    words = {label.id: label.name.split(" (")[0].lower() for label in fetched.labels[name]}
    for split, table in fetched.manifests[name].items():
        assert (table["caption"].str.len() > 0).all(), split
        for caption, leaf_ids in zip(table["caption"], table["leaf_ids"], strict=True):
            names = [words[int(i)] for i in leaf_ids.split(";") if i]
            assert not names or any(n in caption.lower() for n in names), (caption, names)


@pytest.mark.parametrize("name", DOWNLOADED)
def test_every_manifest_image_opens(fetched, name):
    for table in fetched.manifests[name].values():
        for path in table["image_path"]:
            with Image.open(path) as image:
                image.verify()


def test_imagenet_prompts_use_clips_curated_names_for_the_miniatures_classes(fetched):
    prompts = fetched.prompts["imagenet_prompts"]
    assert len(prompts) == 1000 * 80, "openai_imagenet: 80 templates for each of the 1,000 classes"
    files = fetched.out / "imagenet" / "files"
    wnid = dict(zip(imagenet.classes(files)["label"], imagenet.classes(files)["wnid"], strict=True))
    used = {label for label in fetched.manifests["imagenet"]["test"]["category"]}
    assert {wnid[label] for label in used} == set(IMAGENET_CLASSES)
    first = prompts.groupby("category")["caption"].first()
    assert first["crane (n03126707)"].endswith("of a construction crane.")
    assert first["tabby"].endswith("of a tabby cat.")
    ids = {str(label.id) for label in fetched.labels["imagenet"] if label.name in used}
    assert set(prompts["leaf_ids"]) >= ids


# ---------------------------------------------------------------------------------- verification


@pytest.mark.parametrize(("name", "file"), [("coco", "val2017.zip")])
def test_a_flipped_byte_in_a_served_archive_fails_the_download(fetched, served, tmp_path, name, file):
    path = served.root / name / file
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    try:
        entry = served.overrides[name]
        with pytest.raises(DownloadError, match=rf"{file}.*expected sha256"):
            source_for(entry["kind"]).download(tmp_path / name, entry, name=name)
    finally:
        path.write_bytes(original)


def test_the_same_seed_gives_the_same_bytes(served, tmp_path):
    again = build_miniatures(PAPER, tmp_path / "again", seed=0, base_url=served.server.url())
    for name in DOWNLOADED:
        assert sha256_tree(again[name].folder) == sha256_tree(served.root / name), name
    subset = {name: PAPER[name] for name in ("coco", "cc3m")}
    other = build_miniatures(subset, tmp_path / "other", seed=1, base_url=served.server.url())
    for name in subset:
        assert sha256_tree(other[name].folder) != sha256_tree(served.root / name), name


def test_the_server_answers_files_with_ranges_head_and_nothing_outside_its_folder(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "f.bin").write_bytes(bytes(range(100)))
    (tmp_path / "secret.txt").write_text("not served")
    with serve(tmp_path / "served") as server, requests.Session() as http:
        whole = http.get(server.url("/f.bin?size=large"))
        assert (whole.status_code, whole.content) == (200, bytes(range(100)))
        tail = http.get(server.url("/f.bin"), headers={"Range": "bytes=90-"})
        assert (tail.status_code, tail.content) == (206, bytes(range(90, 100)))
        assert tail.headers["Content-Range"] == "bytes 90-99/100"
        assert http.get(server.url("/f.bin"), headers={"Range": "bytes=-5"}).content == bytes(range(95, 100))
        stale = http.get(server.url("/f.bin"), headers={"Range": "bytes=10-", "If-Range": '"old"'})
        assert (stale.status_code, len(stale.content)) == (200, 100)
        same = {"Range": "bytes=10-", "If-Range": whole.headers["ETag"]}
        assert http.get(server.url("/f.bin"), headers=same).status_code == 206
        assert http.get(server.url("/f.bin"), headers={"Range": "bytes=100-"}).status_code == 416
        head = http.head(server.url("/f.bin"))
        assert (head.status_code, head.headers["Content-Length"], head.content) == (200, "100", b"")
        assert http.get(server.url("/%2e%2e/secret.txt")).status_code == 404
        assert http.get(server.url("/missing.bin")).status_code == 404
    assert [seen.method for seen in server.seen].count("HEAD") == 1
