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
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from xsae.datasets.urllists import in_split
from xsae.download import download_file, new_session
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import atomic_path, write_json

ENDPOINT = "https://huggingface.co"
RECORD = "download.json"
ROWS = "rows.csv"
SPLITS = ("train", "test")
_OPTIONS = {"repo", "config", "split", "image_column", "text_column", "test_fraction", "max_rows",
            "timeout", "retries"}


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"datasets.<name>.options: {unknown} are not options of hub_image_text "
                          f"(known: {', '.join(sorted(_OPTIONS))})")
    if not options.get("repo"):
        raise ConfigError("datasets.<name>.options.repo: hub_image_text needs the Hub dataset, e.g. "
                          "efekankavalci/flowers102-captions")
    fraction = float(options.get("test_fraction", 0.1))
    if not 0 <= fraction < 1:
        raise ConfigError(f"datasets.<name>.options.test_fraction: expected a number in [0, 1), got "
                          f"{fraction!r}")
    return {"repo": options["repo"], "config": options.get("config", "default"),
            "split": options.get("split", "train"), "image_column": options.get("image_column", "image"),
            "text_column": options.get("text_column", "text"), "test_fraction": fraction,
            "max_rows": options.get("max_rows"), "timeout": options.get("timeout", 60),
            "retries": options.get("retries", 5)}


def listing_url(endpoint: str, opts: dict[str, Any]) -> str:
    return f"{endpoint.rstrip('/')}/api/datasets/{opts['repo']}/parquet/{opts['config']}/{opts['split']}"


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             **options: Any) -> dict:
    """Fetch the split's Parquet files, write every row's image and caption; returns the record
    also written to `root/download.json`. Options: `repo` (required), `config` (default), `split`
    (train), `image_column` (image), `text_column` (text), `test_fraction` (0.1), `max_rows`."""
    root = Path(root)
    opts = _options(options)
    session = new_session()
    url = listing_url(base_url or ENDPOINT, opts)
    try:
        response = session.get(url, timeout=opts["timeout"])
        response.raise_for_status()
        files = response.json()
    except Exception as exc:  # connection errors, HTTP errors and non-JSON bodies alike
        raise DownloadError(f"{url}: cannot list the Parquet files of {opts['repo']} ({exc}); check the "
                            "connection, datasets.<name>.options.repo and .split, or set base_url to a "
                            "mirror") from exc
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise DownloadError(f"{url}: expected a JSON list of Parquet URLs, got {str(files)[:200]}")
    rows: list[dict[str, Any]] = []
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for number, file_url in enumerate(files):
        local = root / "parquet" / f"{opts['split']}-{number:05d}.parquet"
        if not local.is_file():
            download_file(file_url, local, retries=opts["retries"], timeout=opts["timeout"],
                          session=session, progress=progress)
        table = pd.read_parquet(local)
        for column in (opts["image_column"], opts["text_column"]):
            if column not in table.columns:
                raise DataError(f"{local}: no column {column!r} (it has {', '.join(table.columns)}); set "
                                "datasets.<name>.options.image_column / text_column")
        for value, text in zip(table[opts["image_column"]], table[opts["text_column"]], strict=True):
            if opts["max_rows"] is not None and len(rows) >= int(opts["max_rows"]):
                break
            row = len(rows)
            path = images / f"{row // 10_000:03d}" / f"{row:06d}.png"
            if not path.is_file():
                _write_image(value, path, f"{local} row {row}")
            rows.append({"row": row, "image": str(path.relative_to(root)), "caption": str(text)})
    with atomic_path(root / ROWS) as tmp:
        pd.DataFrame(rows, columns=["row", "image", "caption"]).to_csv(tmp, index=False)
    counts = {split: sum(in_split(r["row"], opts["test_fraction"], split) for r in rows) for split in SPLITS}
    record = {"kind": "hub_image_text", "root": str(root), "listing": url, "files": files, "options": opts,
              "rows": len(rows), "splits": counts}
    write_json(root / RECORD, record)
    return record


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
    return pd.DataFrame({"sample_id": [f"row{int(row):06d}" for row in table["row"]],
                         "image_path": [str(root / path) for path in table["image"]],
                         "caption": table["caption"].tolist(), "labels": [[] for _ in range(len(table))]},
                        columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path) -> dict[str, str | None]:
    """No labels."""
    return {}


__all__ = ["ENDPOINT", "download", "hierarchy", "listing_url", "samples"]
