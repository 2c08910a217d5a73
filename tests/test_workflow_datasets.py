"""A paper dataset through the workflow's rules: COCO fixtures served on loopback, downloaded,
verified, unpacked and turned into manifests by `download_dataset` and `manifest_labelled`."""

from __future__ import annotations

import json

import pytest
from helpers import write_config
from http_fixtures import loopback_server
from test_datasets_coco_flowers_imagenet import _coco_bodies, _serve, _sources
from test_workflow import snakemake

from xsae.datasets import coco
from xsae.datasets.manifest import read_manifest


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
