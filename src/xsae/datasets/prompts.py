"""Class-prompt "datasets": one text row per (class, template) of a labelled dataset's classes.

Zero-shot classification encodes prompts such as "a photo of a {class}." with a text encoder; as
a manifest they go through the ordinary feature extraction (text only) and keep the label ids of
the dataset they describe, so predictions compare directly with that dataset's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xsae.datasets.manifest import SEPARATOR, Label
from xsae.errors import ConfigError
from xsae.metrics.zero_shot import class_prompts, imagenet_class_names

CLASS_NAME_SOURCES = ("labels", "openai_imagenet")


def leaf_classes(labels: Sequence[Label]) -> list[Label]:
    """The labels that are nobody's parent (ImageNet: all 1000; COCO: the 80 categories)."""
    parents = {label.parent for label in labels if label.parent is not None}
    return [label for label in labels if label.id not in parents]


def display_names(classes: Sequence[Label], how: str, *, wnids: dict[str, str] | None = None) -> list[str]:
    """What a prompt calls each class: its label name, or CLIP's curated ImageNet class name.

    `openai_imagenet` needs `wnids` (label name → WNID): the curated names follow the sorted WNIDs.
    """
    if how == "labels":
        return [label.name for label in classes]
    if how != "openai_imagenet":
        raise ConfigError(f"datasets.<name>.class_names must be one of {CLASS_NAME_SOURCES}, got {how!r}")
    if wnids is None:
        raise ConfigError("class_names: openai_imagenet needs an imagenet_val dataset as classes_of")
    curated = imagenet_class_names()
    if len(wnids) != len(curated):
        raise ConfigError(f"class_names: openai_imagenet lists {len(curated)} classes, the dataset "
                          f"has {len(wnids)}")
    index = {wnid: i for i, wnid in enumerate(sorted(wnids.values()))}
    return [curated[index[wnids[label.name]]] for label in classes]


def prompt_manifest(labels: Sequence[Label], *, class_names: str = "labels",
                    templates: str | Sequence[str] = "openai_imagenet",
                    wnids: dict[str, str] | None = None) -> pd.DataFrame:
    """Manifest rows of the prompts of every leaf class, class-major (row c·T + t is template t of
    class c), carrying the described dataset's own label ids, names and ancestors."""
    classes = leaf_classes(labels)
    if not classes:
        raise ConfigError("classes_of: the dataset has no labels to make prompts for")
    prompts = class_prompts(display_names(classes, class_names, wnids=wnids), templates)
    per_class = len(prompts) // len(classes)
    by_id = {label.id: label for label in labels}

    def ancestors(label: Label) -> list[int]:
        chain = [label.id]
        while by_id[chain[-1]].parent is not None:
            chain.append(by_id[chain[-1]].parent)
        return sorted(chain)

    rows = []
    for c, label in enumerate(classes):
        chain = ancestors(label)
        for t in range(per_class):
            rows.append({"sample_id": f"c{c:04d}_t{t:02d}", "image_path": "",
                         "caption": prompts[c * per_class + t], "category": label.path,
                         "label_ids": SEPARATOR.join(map(str, chain)),
                         "label_names": SEPARATOR.join(by_id[i].path for i in chain),
                         "leaf_ids": str(label.id)})
    return pd.DataFrame(rows)


def imagenet_wnids(root: Path) -> dict[str, str]:
    """Label name → WNID of a provided ImageNet val folder."""
    from xsae.datasets.imagenet import classes

    table = classes(root)
    return dict(zip(table["label"], table["wnid"], strict=True))
