"""The manifest contract: one table per dataset split, one row per sample, in feature order.

Columns: `sample_id` (unique), `image_path`, `caption`, `category` (the leaf label path),
`label_ids` and `label_names` (every level of the hierarchy the sample belongs to, `;`-joined).
The label hierarchy lives beside the split tables in `labels.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xsae.errors import DataError
from xsae.io import atomic_path, write_json

MANIFEST_COLUMNS = ("sample_id", "image_path", "caption", "category", "label_ids", "label_names")
SEPARATOR = ";"


@dataclass(frozen=True)
class Label:
    id: int
    path: str  # "animals/mammals"
    name: str  # "mammals"
    parent: int | None
    depth: int  # 1 for top-level categories


def label_hierarchy(category_paths: Iterable[str]) -> list[Label]:
    """Every prefix of every category path is a label; ids follow the sorted paths."""
    prefixes = set()
    for path in category_paths:
        parts = path.split("/")
        prefixes.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    ordered = sorted(prefixes)
    ids = {path: i for i, path in enumerate(ordered)}
    return [
        Label(id=ids[p], path=p, name=p.rsplit("/", 1)[-1],
              parent=ids.get(p.rsplit("/", 1)[0]) if "/" in p else None, depth=p.count("/") + 1)
        for p in ordered
    ]


def labels_of(category: str, ids: dict[str, int]) -> list[int]:
    """Label ids of a category path at every depth, shallowest first."""
    parts = category.split("/")
    return [ids["/".join(parts[: i + 1])] for i in range(len(parts))]


def stratified_split(groups: Sequence[str], test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask, stratified by group, reproducible for a seed.

    Each group contributes round(n * test_fraction) test samples, but at least one training
    sample: small categories stay represented in both splits where they can.
    """
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    is_test = np.zeros(len(groups), dtype=bool)
    for group in sorted(set(groups.tolist())):
        members = np.flatnonzero(groups == group)
        n_test = min(round(len(members) * test_fraction), len(members) - 1)
        if n_test > 0:
            is_test[rng.permutation(members)[:n_test]] = True
    return is_test


def build_manifest(samples: pd.DataFrame, *, test_fraction: float, seed: int,
                   stratify_depth: int = 1) -> tuple[dict[str, pd.DataFrame], list[Label]]:
    """Split `samples` (sample_id, image_path, caption, category) and attach hierarchical labels."""
    missing = {"sample_id", "image_path", "caption", "category"} - set(samples.columns)
    if missing:
        raise DataError(f"samples table lacks columns {sorted(missing)}")
    if samples.empty:
        raise DataError("no samples found: the dataset folder holds no usable images")
    if samples["sample_id"].duplicated().any():
        dup = samples.loc[samples["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"duplicate sample_id {dup!r}")
    labels = label_hierarchy(samples["category"])
    ids = {label.path: label.id for label in labels}
    names = {label.id: label.path for label in labels}
    table = samples.sort_values("sample_id", kind="stable").reset_index(drop=True)
    label_ids = [labels_of(c, ids) for c in table["category"]]
    table["label_ids"] = [SEPARATOR.join(map(str, row)) for row in label_ids]
    table["label_names"] = [SEPARATOR.join(names[i] for i in row) for row in label_ids]
    strata = ["/".join(c.split("/")[:stratify_depth]) for c in table["category"]]
    is_test = stratified_split(strata, test_fraction, seed)
    splits = {
        "train": table.loc[~is_test, list(MANIFEST_COLUMNS)].reset_index(drop=True),
        "test": table.loc[is_test, list(MANIFEST_COLUMNS)].reset_index(drop=True),
    }
    return splits, labels


def write_manifest(splits: dict[str, pd.DataFrame], labels: Sequence[Label],
                   paths: dict[str, str | Path], labels_path: str | Path) -> None:
    for split, table in splits.items():
        with atomic_path(paths[split]) as tmp:
            table.to_csv(tmp, index=False)
    write_json(labels_path, [label.__dict__ for label in labels])


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check one split table; the error names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run the manifest rule for its dataset first")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV manifest ({exc})") from exc
    missing = set(MANIFEST_COLUMNS) - set(table.columns)
    if missing:
        raise DataError(f"{path}: manifest lacks columns {sorted(missing)}")
    if table.empty:
        raise DataError(f"{path}: manifest has no rows (empty split)")
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: duplicate sample_id {duplicated.iloc[0]!r}")
    return table


def read_labels(path: str | Path) -> list[Label]:
    with open(path, encoding="utf-8") as handle:
        return [Label(**entry) for entry in json.load(handle)]


def label_matrix(table: pd.DataFrame, n_labels: int) -> np.ndarray:
    """Multi-hot `[N, n_labels]` bool matrix from the `label_ids` column."""
    matrix = np.zeros((len(table), n_labels), dtype=bool)
    for row, ids in enumerate(table["label_ids"]):
        if ids:
            matrix[row, [int(i) for i in ids.split(SEPARATOR)]] = True
    return matrix


def label_matrices(table: pd.DataFrame, labels: Sequence[Label]) -> tuple[np.ndarray, np.ndarray]:
    """(`[N, C]` every level of each sample's labels, `[N, C]` its own (leaf) labels only)."""
    if "leaf_ids" in table.columns:
        leaves = label_matrix(table.rename(columns={"label_ids": "_all", "leaf_ids": "label_ids"}),
                              len(labels))
        return label_matrix(table, len(labels)), leaves
    ids = {label.path: label.id for label in labels}
    unknown = sorted(set(table["category"]) - set(ids))
    if unknown:
        raise DataError(f"manifest categories missing from the label hierarchy: {unknown[:5]}")
    leaves = np.zeros((len(table), len(labels)), dtype=bool)
    leaves[np.arange(len(table)), [ids[c] for c in table["category"]]] = True
    return label_matrix(table, len(labels)), leaves


def labelled_manifest(samples: pd.DataFrame,
                      hierarchy: dict[str, str | None]) -> tuple[pd.DataFrame, list[Label]]:
    """Manifest rows for a dataset with its own labels and label hierarchy (COCO, Open Images...).

    `samples`: sample_id, image_path, caption, labels (a list of label names per row).
    `hierarchy`: every label name → its parent's name (None at the top). `leaf_ids` holds a
    sample's own labels; `label_ids` adds every ancestor, as the Tux Paint manifests do.
    """
    missing = {"sample_id", "image_path", "caption", "labels"} - set(samples.columns)
    if missing:
        raise DataError(f"samples table lacks columns {sorted(missing)}")
    duplicated = samples.loc[samples["sample_id"].duplicated(), "sample_id"]
    if len(duplicated):
        raise DataError(f"duplicate sample_id {duplicated.iloc[0]!r}")
    unknown = sorted({name for names in samples["labels"] for name in names} - set(hierarchy))
    if unknown:
        raise DataError(f"labels missing from the hierarchy: {unknown[:5]}")

    def path_of(name: str) -> list[str]:
        chain, seen = [name], {name}
        while (parent := hierarchy[chain[-1]]) is not None:
            if parent in seen or parent not in hierarchy:
                raise DataError(f"label hierarchy is broken at {chain[-1]!r} → {parent!r}")
            chain.append(parent)
            seen.add(parent)
        return chain[::-1]

    paths = {name: "/".join(path_of(name)) for name in hierarchy}
    ordered = sorted(hierarchy, key=lambda name: paths[name])
    ids = {name: i for i, name in enumerate(ordered)}
    labels = [Label(id=ids[name], path=paths[name], name=name,
                    parent=ids[hierarchy[name]] if hierarchy[name] is not None else None,
                    depth=len(path_of(name))) for name in ordered]
    table = samples[["sample_id", "image_path", "caption"]].copy()
    leaf_ids = [sorted({ids[name] for name in names}) for names in samples["labels"]]
    all_ids = [sorted({ids[a] for name in names for a in path_of(name)}) for names in samples["labels"]]
    table["category"] = [paths[names[0]] if len(names) else "" for names in samples["labels"]]
    table["label_ids"] = [SEPARATOR.join(map(str, row)) for row in all_ids]
    table["label_names"] = [SEPARATOR.join(labels[i].path for i in row) for row in all_ids]
    table["leaf_ids"] = [SEPARATOR.join(map(str, row)) for row in leaf_ids]
    return table.reset_index(drop=True), labels
