"""Class-prompt manifests: one row per (class, template), with the described dataset's label ids."""

from __future__ import annotations

import pytest

from xsae.datasets.manifest import Label
from xsae.datasets.prompts import display_names, leaf_classes, prompt_manifest
from xsae.errors import ConfigError
from xsae.metrics.zero_shot import imagenet_class_names

LABELS = [Label(0, "animal", "animal", None, 1), Label(1, "animal/cat", "cat", 0, 2),
          Label(2, "animal/dog", "dog", 0, 2), Label(3, "vehicle", "vehicle", None, 1)]


def test_prompts_are_class_major_and_keep_label_ids_and_ancestors():
    table = prompt_manifest(LABELS, templates=["a photo of a {}.", "a drawing of a {}."])
    assert [label.name for label in leaf_classes(LABELS)] == ["cat", "dog", "vehicle"]
    assert table["caption"].tolist() == ["a photo of a cat.", "a drawing of a cat.", "a photo of a dog.",
                                         "a drawing of a dog.", "a photo of a vehicle.",
                                         "a drawing of a vehicle."]
    assert table["leaf_ids"].tolist() == ["1", "1", "2", "2", "3", "3"]
    assert table["label_ids"].tolist()[:2] == ["0;1", "0;1"]
    assert table["label_names"][2] == "animal;animal/dog"
    assert table["sample_id"].tolist()[:3] == ["c0000_t00", "c0000_t01", "c0001_t00"]
    assert (table["image_path"] == "").all()


def test_openai_imagenet_names_follow_sorted_wnids():
    curated = imagenet_class_names()
    # Label names in an order unrelated to the WNIDs: the curated name must follow the WNID.
    wnids = {f"label{999 - i}": f"n{i:08d}" for i in range(1000)}
    classes = [Label(j, f"label{j}", f"label{j}", None, 1) for j in (0, 999, 500)]
    assert display_names(classes, "openai_imagenet", wnids=wnids) == [curated[999], curated[0], curated[499]]
    assert display_names(classes, "labels") == ["label0", "label999", "label500"]
    with pytest.raises(ConfigError, match="needs an imagenet_val dataset"):
        display_names(classes, "openai_imagenet")
    with pytest.raises(ConfigError, match="lists 1000 classes, the dataset has 2"):
        display_names(classes, "openai_imagenet", wnids={"a": "n1", "b": "n2"})


def test_openai_template_set_gives_80_prompts_per_class():
    table = prompt_manifest(LABELS[:2], templates="openai_imagenet")
    assert len(table) == 80 and table["caption"].str.contains("cat").all()
