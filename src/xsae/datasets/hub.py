"""Image–caption datasets on the Hugging Face Hub (kind `hub_image_text`), e.g. the sharedness
paper's Flowers captions `efekankavalci/flowers102-captions` (the authors' loader reads its `train`
split's `image` and `text` columns, 8,189 rows).

The Hub converts every dataset repository to Parquet and lists the files of one config and split
at `<endpoint>/api/datasets/<repo>/parquet/<config>/<split>` (a JSON list of URLs); the download
fetches them with the resumable downloader, decodes each row's image bytes (the `datasets` Image
feature stores `{bytes, path}`) into `images/`, and keeps the captions in `rows.csv`. No `datasets`
or `huggingface_hub` at run time: plain HTTP, so a mirror (`base_url`) or a loopback fixture of the
same layout serves it as well. A stable hash of the row index holds out `test_fraction` of the rows
as the test split (the Hub split is the only one); `test_fraction: 0` compares on the training rows,
as the authors did.

`path` reads a dataset on disk instead, in the same layout: the Parquet files under
`<path>/<config>/<split>/`, else those named `<split>-*.parquet` anywhere under `path` (the
layout of a Hub dataset repository, `data/train-00000-of-00001.parquet`). `label_column` names a
column of labels: multi-level paths (`animals/birds/owl`, several separated by `;`), a list of
them, or a `datasets` ClassLabel (an integer, named from the file's feature metadata).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from xsae.datasets.folder import label_paths, label_tree
from xsae.datasets.urllists import in_split
from xsae.download import download_file, new_session
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import atomic_path, write_json

ENDPOINT = "https://huggingface.co"
RECORD = "download.json"
ROWS = "rows.csv"
SPLITS = ("train", "test")
_OPTIONS = {"repo", "path", "config", "split", "image_column", "text_column", "label_column",
            "test_fraction", "max_rows", "timeout", "retries"}
HIERARCHY = "hierarchy.json"


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"datasets.<name>.options: {unknown} are not options of hub_image_text "
                          f"(known: {', '.join(sorted(_OPTIONS))})")
    if not options.get("repo") and not options.get("path"):
        raise ConfigError("datasets.<name>.options.repo: hub_image_text needs the Hub dataset, e.g. "
                          "efekankavalci/flowers102-captions (or options.path: a dataset on disk)")
    fraction = float(options.get("test_fraction", 0.1))
    if not 0 <= fraction < 1:
        raise ConfigError(f"datasets.<name>.options.test_fraction: expected a number in [0, 1), got "
                          f"{fraction!r}")
    return {"repo": options.get("repo"), "path": options.get("path"),
            "config": options.get("config", "default"),
            "split": options.get("split", "train"), "image_column": options.get("image_column", "image"),
            "text_column": options.get("text_column", "text"), "label_column": options.get("label_column"),
            "test_fraction": fraction,
            "max_rows": options.get("max_rows"), "timeout": options.get("timeout", 60),
            "retries": options.get("retries", 5)}


def listing_url(endpoint: str, opts: dict[str, Any]) -> str:
    return f"{endpoint.rstrip('/')}/api/datasets/{opts['repo']}/parquet/{opts['config']}/{opts['split']}"


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             **options: Any) -> dict:
    """Fetch the split's Parquet files, write every row's image and caption; returns the record
    also written to `root/download.json`. Options: `repo` (or `path`: a dataset on disk), `config`
    (default), `split` (train), `image_column` (image), `text_column` (text), `label_column`
    (none), `test_fraction` (0.1), `max_rows`."""
    root = Path(root)
    opts = _options(options)
    if opts["path"]:
        url, files = str(Path(opts["path"]).expanduser()), _local_files(opts)
        parquet_files = [Path(f) for f in files]
    else:
        url, files = _listing(base_url or ENDPOINT, opts)
        session = new_session()
        parquet_files = []
        for number, file_url in enumerate(files):
            local = root / "parquet" / f"{opts['split']}-{number:05d}.parquet"
            if not local.is_file():
                download_file(file_url, local, retries=opts["retries"], timeout=opts["timeout"],
                              session=session, progress=progress)
            parquet_files.append(local)
    rows: list[dict[str, Any]] = []
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for local in parquet_files:
        table = pd.read_parquet(local)
        for column in filter(None, (opts["image_column"], opts["text_column"], opts["label_column"])):
            if column not in table.columns:
                raise DataError(f"{local}: no column {column!r} (it has {', '.join(table.columns)}); set "
                                "datasets.<name>.options.image_column / text_column / label_column")
        names = _class_names(local, opts["label_column"])
        labels = table[opts["label_column"]] if opts["label_column"] else [None] * len(table)
        cells = zip(table[opts["image_column"]], table[opts["text_column"]], labels, strict=True)
        for value, text, label in cells:
            if opts["max_rows"] is not None and len(rows) >= int(opts["max_rows"]):
                break
            row = len(rows)
            path = images / f"{row // 10_000:03d}" / f"{row:06d}.png"
            if not path.is_file():
                _write_image(value, path, f"{local} row {row}")
            rows.append({"row": row, "image": str(path.relative_to(root)), "caption": str(text),
                         "labels": _labels(label, names, f"{local} row {row}")})
    frame = pd.DataFrame(rows, columns=["row", "image", "caption", "labels"])
    write_json(root / HIERARCHY, label_tree(zip(frame["row"], frame["labels"], strict=True), Path(url)))
    with atomic_path(root / ROWS) as tmp:
        frame.assign(labels=frame["labels"].map(json.dumps)).to_csv(tmp, index=False)
    counts = {split: sum(in_split(r["row"], opts["test_fraction"], split) for r in rows) for split in SPLITS}
    record = {"kind": "hub_image_text", "root": str(root), "listing": url, "files": files, "options": opts,
              "rows": len(rows), "splits": counts}
    write_json(root / RECORD, record)
    return record


def _listing(endpoint: str, opts: dict[str, Any]) -> tuple[str, list[str]]:
    """The Hub's listing URL of the split and the Parquet URLs it lists."""
    url = listing_url(endpoint, opts)
    try:
        response = new_session().get(url, timeout=opts["timeout"])
        response.raise_for_status()
        files = response.json()
    except Exception as exc:  # connection errors, HTTP errors and non-JSON bodies alike
        raise DownloadError(f"{url}: cannot list the Parquet files of {opts['repo']} ({exc}); check the "
                            "connection, datasets.<name>.options.repo and .split, or set base_url to a "
                            "mirror") from exc
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise DownloadError(f"{url}: expected a JSON list of Parquet URLs, got {str(files)[:200]}")
    return url, files


def _local_files(opts: dict[str, Any]) -> list[str]:
    """The split's Parquet files of a dataset on disk, in name order."""
    folder = Path(opts["path"]).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (datasets.<name>.options.path)")
    found = sorted(folder.glob(f"{opts['config']}/{opts['split']}/*.parquet")) or \
        sorted(folder.glob(f"**/{opts['split']}-*.parquet"))
    if not found:
        raise DataError(f"{folder}: no Parquet files of split {opts['split']!r} (looked for "
                        f"{opts['config']}/{opts['split']}/*.parquet and **/{opts['split']}-*.parquet); set "
                        "datasets.<name>.options.split / config")
    return [str(path) for path in found]


def local_rows(options: dict[str, Any]) -> int:
    """Rows of the split of a dataset on disk (`options.path`), from the Parquet files' metadata."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in _local_files(_options(options)))


def _class_names(path: Path, column: str | None) -> list[str] | None:
    """The names of a ClassLabel column, from the `datasets` feature metadata the file carries."""
    if not column:
        return None
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    info = json.loads(metadata.get(b"huggingface", b"{}")).get("info", {})
    feature = (info.get("features") or {}).get(column) or {}
    return list(feature["names"]) if feature.get("_type") == "ClassLabel" and "names" in feature else None


def _labels(value: Any, names: list[str] | None, where: str) -> list[str]:
    """A label cell as label paths: ClassLabel integers by name, else paths (`folder.label_paths`)."""
    if value is None:
        return []
    if names is not None and not isinstance(value, str):
        indices = list(value) if hasattr(value, "__len__") else [value]
        bad = [i for i in indices if not 0 <= int(i) < len(names)]
        if bad:
            raise DataError(f"{where}: class {bad[0]} is outside the {len(names)} names of the column")
        return [names[int(i)] for i in indices]
    try:
        return label_paths(value)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc


def _write_image(value: Any, path: Path, where: str) -> None:
    """A `datasets` Image cell ({bytes, path}, or raw bytes) decoded and written as PNG."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray):
        raise DataError(f"{where}: the image cell holds no bytes ({type(value).__name__})")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                image.convert("RGB").save(tmp, format="PNG")
    except OSError as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from exc


def samples(root: Path, split: str) -> pd.DataFrame:
    """sample_id (`row<NNNNNN>`), image_path, caption, labels ([]): the rows of `split`."""
    root = Path(root)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    record_path = root / RECORD
    if not record_path.is_file():
        raise DataError(f"{record_path} not found: run the download (rule download_dataset) for this "
                        "dataset first")
    fraction = json.loads(record_path.read_text(encoding="utf-8"))["options"]["test_fraction"]
    table = pd.read_csv(root / ROWS, keep_default_na=False)
    table = table[[in_split(int(row), fraction, split) for row in table["row"]]]
    labels = ([[path.split("/")[-1] for path in json.loads(cell)] for cell in table["labels"]]
              if "labels" in table.columns else [[] for _ in range(len(table))])
    return pd.DataFrame({"sample_id": [f"row{int(row):06d}" for row in table["row"]],
                         "image_path": [str(root / path) for path in table["image"]],
                         "caption": table["caption"].tolist(), "labels": labels},
                        columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path) -> dict[str, str | None]:
    """Every label name → its parent's name (None at the top); empty without a label column."""
    path = Path(root) / HIERARCHY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


__all__ = ["ENDPOINT", "download", "hierarchy", "listing_url", "samples"]
