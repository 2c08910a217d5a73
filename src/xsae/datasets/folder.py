"""Your own images (kind `image_folder`): a folder of images and a table that describes them.

The table (CSV, JSONL or Parquet, by its suffix) has one row per image: the image file (relative
to the folder), one or more caption columns, and optionally multi-level labels
(`animals/birds/owl`, several per image separated by `;`), a split (`train` / `test`) and a sample
id. Without a split column the rows are split by a seeded split stratified by each image's first
label, as the Tux Paint manifests are.

`download` reads nothing from the network: it checks every row — the image file exists and opens,
at least one caption is non-empty, the id is unique, the split and the labels are well formed — and
keeps the good rows in `rows.csv`, the bad ones in `skipped.csv` (row number as the table counts
them from 1, column, problem), with their counts in the record. A table where no row is usable, or
that lacks a named column, fails with a message naming the file and the column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from xsae.datasets.manifest import stratified_split
from xsae.errors import ConfigError, DataError
from xsae.io import atomic_path, write_json

ROWS, SKIPPED, HIERARCHY, RECORD = "rows.csv", "skipped.csv", "hierarchy.json", "folder.json"
SPLITS = ("train", "test")
LABEL_SEPARATOR = ";"
CAPTION_JOINER = " "
DEFAULT_TABLE = "captions.csv"
_READERS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_OPTIONS = {"table", "image_column", "caption_columns", "label_column", "split_column", "id_column",
            "test_fraction", "seed"}


def table_path(provided: str | Path, options: dict[str, Any]) -> Path:
    """Where a dataset's table is: `options.table` (default captions.csv) in the folder `provided`."""
    return Path(provided).expanduser() / options.get("table", DEFAULT_TABLE)


def read_table(path: str | Path) -> pd.DataFrame:
    """The table as strings (lists kept as lists), whatever its format."""
    path = Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"{path}: a table must be .csv, .jsonl or .parquet, got {path.suffix!r}")
    if not path.is_file():
        raise DataError(f"{path}: table not found; set datasets.<name>.options.table to a file in the "
                        "folder")
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable {kind} table ({exc})") from exc


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(f"datasets.<name>.options for image_folder: unknown {sorted(unknown)}; known: "
                          f"{sorted(_OPTIONS)}")
    captions = options.get("caption_columns", ["caption"])
    captions = [captions] if isinstance(captions, str) else list(captions)
    fraction = float(options.get("test_fraction", 0.2))
    if not 0 < fraction < 1:
        raise ConfigError(f"image_folder options.test_fraction: expected a number in (0, 1), got "
                          f"{fraction!r}")
    if not captions:
        raise ConfigError("image_folder options.caption_columns: name at least one caption column")
    return {"table": options.get("table", DEFAULT_TABLE),
            "image_column": options.get("image_column", "image"), "caption_columns": captions,
            **{key: options.get(key) for key in ("label_column", "split_column", "id_column")},
            "test_fraction": fraction, "seed": int(options.get("seed", 0))}


def _texts(value: Any) -> list[str]:
    """A caption cell as its captions: a list (JSONL, Parquet) or one string."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    values = list(value) if isinstance(value, list | tuple) or hasattr(value, "tolist") else [value]
    return [" ".join(str(v).split()) for v in values if str(v).strip()]


def label_paths(value: Any) -> list[str]:
    """`animals/birds/owl; plants/tree` → its label paths (each level stripped, empty ones refused)."""
    cells = _texts(value) if not isinstance(value, str) else [value]
    paths = []
    for cell in cells:
        for part in str(cell).split(LABEL_SEPARATOR):
            if part.strip():
                levels = [level.strip() for level in part.split("/")]
                if not all(levels):
                    raise ValueError(f"empty level in label {part.strip()!r}")
                paths.append("/".join(levels))
    return paths


def _image_problem(path: Path) -> str | None:
    from PIL import Image  # here: the workflow reads `table_path` while it parses, without PIL

    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for a broken image
        return f"not a readable image ({type(exc).__name__})"
    return None


def download(root: Path, *, provided: str | None = None, base_url: str | None = None, workers: int = 8,
             progress: bool = True, **options: Any) -> dict:
    """Check the folder's table and images; write the usable rows, the skipped ones and the label
    hierarchy under `root`. Nothing is fetched (`base_url` and `workers` are not used)."""
    if not provided:
        raise ConfigError("datasets.<name>.provided: an image_folder dataset needs the folder that holds "
                          "its images and table")
    folder = Path(provided).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (datasets.<name>.provided)")
    opts = _options(options)
    table_file = table_path(folder, opts)
    table = read_table(table_file)
    named = [opts["image_column"], *opts["caption_columns"],
             *(opts[key] for key in ("label_column", "split_column", "id_column") if opts[key])]
    missing = [column for column in named if column not in table.columns]
    if missing:
        columns = ", ".join(map(str, table.columns))
        raise DataError(f"{table_file}: no column {missing[0]!r} (columns: {columns}); set "
                        "datasets.<name>.options to the table's column names")
    rows, skipped, seen = [], [], {}
    for number, record in enumerate(table.to_dict("records"), start=1):
        row, problem = _check_row(record, folder, opts, seen)
        if problem is not None:
            skipped.append({"row": number, "column": problem[0], "problem": problem[1]})
            continue
        seen[row["sample_id"]] = number
        rows.append({"row": number, **row})
    if not rows:
        first = skipped[0] if skipped else {"row": "-", "column": "-", "problem": "the table is empty"}
        raise DataError(f"{table_file}: no usable row ({len(skipped)} skipped; row {first['row']}, column "
                        f"{first['column']!r}: {first['problem']})")
    frame = pd.DataFrame(rows)
    hierarchy = label_tree(zip(frame["row"], frame["labels"], strict=True), table_file)
    if not opts["split_column"]:
        groups = [labels[0].split("/")[-1] if labels else "" for labels in frame["labels"]]
        is_test = stratified_split(groups, opts["test_fraction"], opts["seed"])
        frame["split"] = ["test" if test else "train" for test in is_test]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / ROWS) as tmp:
        frame.assign(captions=frame["captions"].map(json.dumps), labels=frame["labels"].map(json.dumps)
                     ).to_csv(tmp, index=False)
    with atomic_path(root / SKIPPED) as tmp:
        pd.DataFrame(skipped, columns=["row", "column", "problem"]).to_csv(tmp, index=False)
    write_json(root / HIERARCHY, hierarchy)
    record = {"kind": "image_folder", "folder": str(folder), "table": str(table_file),
              "table_sha256": hashlib.sha256(table_file.read_bytes()).hexdigest(), "options": opts,
              "rows": len(table), "usable": len(frame), "skipped": len(skipped),
              "skipped_report": str(root / SKIPPED),
              "splits": {split: int((frame["split"] == split).sum()) for split in SPLITS}}
    empty = [split for split in SPLITS if not record["splits"][split]]
    if empty:
        raise DataError(f"{table_file}: the {empty[0]} split has no usable row; add rows, or lower/raise "
                        "options.test_fraction (or fix the split column)")
    write_json(root / RECORD, record)
    return record


def _check_row(record: dict[str, Any], folder: Path, opts: dict[str, Any], seen: dict[str, int]
               ) -> tuple[dict[str, str], None] | tuple[None, tuple[str, str]]:
    """A table row as a usable row, or (column, problem) saying why it is skipped."""
    image_column, caption_columns = opts["image_column"], opts["caption_columns"]
    image = str(record[image_column] or "").strip()
    if not image:
        return None, (image_column, "empty")
    path = (folder / image).resolve()
    problem = _image_problem(path)
    if problem:
        return None, (image_column, f"{image}: {problem}")
    captions = [text for column in caption_columns for text in _texts(record[column])]
    if not captions:
        return None, (",".join(caption_columns), "no caption")
    id_column = opts["id_column"]
    sample_id = str(record[id_column]).strip() if id_column else Path(image).with_suffix("").as_posix()
    if not sample_id:
        return None, (id_column, "empty id")
    if sample_id in seen:
        first = seen[sample_id]
        return None, (id_column or image_column, f"duplicate id {sample_id!r} (first in row {first})")
    split = ""
    if opts["split_column"]:
        split = str(record[opts["split_column"]]).strip().lower()
        if split not in SPLITS:
            return None, (opts["split_column"], f"split {split!r} is not train or test")
    labels: list[str] = []
    if opts["label_column"]:
        try:
            labels = label_paths(record[opts["label_column"]])
        except ValueError as exc:
            return None, (opts["label_column"], str(exc))
    return {"sample_id": sample_id, "image_path": str(path), "split": split, "captions": captions,
            "labels": labels}, None


def label_tree(rows: Iterable[tuple[int, Sequence[str]]], where: Path) -> dict[str, str | None]:
    """Label name → parent name over the label paths of every (row number, label paths); a name
    under two parents is refused."""
    parent_of: dict[str, str | None] = {}
    first_row: dict[str, int] = {}
    for number, paths in rows:
        for path in paths:
            levels = path.split("/")
            for depth, name in enumerate(levels):
                parent = levels[depth - 1] if depth else None
                if name in parent_of and parent_of[name] != parent:
                    raise DataError(f"{where}: row {number}: label {name!r} has parent {parent!r}, "
                                    f"but {parent_of[name]!r} in row {first_row[name]}; label names must be "
                                    "unique across the hierarchy (rename one)")
                parent_of.setdefault(name, parent)
                first_row.setdefault(name, number)
    return dict(sorted(parent_of.items()))


def _read(root: Path, name: str) -> Path:
    path = Path(root) / name
    if not path.is_file():
        raise DataError(f"{path} not found: run the download (rule download_dataset) for this dataset "
                        "first")
    return path


def samples(root: Path, split: str, *, captions: str = "joined") -> pd.DataFrame:
    """The usable rows of `split`, in table order: sample_id, image_path, caption (the row's captions
    joined by a space; `captions="each"`: one row per caption, id `<id>_<n>`) and labels (leaf names)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if captions not in ("joined", "each"):
        raise ConfigError(f"image_folder manifest option captions must be 'joined' or 'each', got "
                          f"{captions!r}")
    table = pd.read_csv(_read(root, ROWS), dtype=str, keep_default_na=False)
    out = []
    for record in table[table["split"] == split].to_dict("records"):
        texts: Sequence[str] = json.loads(record["captions"])
        leaves = [path.split("/")[-1] for path in json.loads(record["labels"])]
        if captions == "each":
            out += [{"sample_id": f"{record['sample_id']}_{n}", "image_path": record["image_path"],
                     "caption": text, "labels": list(leaves)} for n, text in enumerate(texts)]
        else:
            out.append({"sample_id": record["sample_id"], "image_path": record["image_path"],
                        "caption": CAPTION_JOINER.join(texts), "labels": leaves})
    return pd.DataFrame(out, columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path) -> dict[str, str | None]:
    """Every label name of the table → its parent's name (None at the top)."""
    return json.loads(_read(root, HIERARCHY).read_text(encoding="utf-8"))
