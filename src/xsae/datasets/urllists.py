"""Image–caption datasets published as lists of URLs: the LAION-2B subset and Conceptual Captions (CC-3M).

- `laion_subset`: the 70,666-row LAION-2B-en subset the sharedness paper starts from (Hugging Face
  `MayIBorn/laion_2b_en_subset_70666`; the paper kept the 61,642 images still online). One list with
  `URL` and `TEXT` columns, read from the Hub's Parquet conversion. It has no published split, so a
  row goes to "test" when a hash of its row index falls below `test_fraction` (default 0.1), else to
  "train": stable, independent of which images resolve. `test_fraction: 0` holds nothing out: both
  splits are every row, downloaded once (the sharedness paper trains and compares on all pairs).
- `cc3m`: Conceptual Captions, a header-less TSV of `caption<TAB>url` per split: 3,318,333 training
  rows and 15,840 validation rows; validation is our "test" split.

Both lose images over time (dead links, changed pages), so `download` records per image what happened
(a DownloadReport per shard) and `samples` returns only rows whose image arrived AND opens as an image
with PIL; an HTML error page served with status 200 is recorded as a failure and deleted.

Large lists are processed in shards of `shard_size` rows (default 10,000; None: one shard per
split). Each finished shard leaves its report under `reports/{split}/`; a rerun skips a shard whose
report matches its rows and whose images are all still there, without sending a single request; within
an unfinished shard `download_many` skips images already present. Image paths do not depend on the sharding.

Layout under `root`::

    lists/{file}                              the URL lists as published (or `provided` ones, in place)
    images/{split}/{row // 10000:04d}/{sample_id}{ext}
    reports/{split}/rows_{start:08d}-{end:08d}.json   one DownloadReport per shard
    reports/{split}/index.json                which shard reports make up the split
    reports/{split}/failed.csv                every failed row of the split, with the reason
    state.json, download.json                 options for `samples`; the record `download` returns

A `base_url` serves the list files by name (`{base_url}/{file}`); image URLs are used as listed.
`provided` names a folder that already holds the list files under those names (e.g. a CC-3M TSV
fetched by hand from https://ai.google.com/research/ConceptualCaptions/download).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
from PIL import Image

from xsae.download import DownloadItem, DownloadReport, ItemOutcome, download_many
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import sha256_file, write_json

#: Published lists. Neither source publishes checksums or exact byte sizes (`size`/`sha256` None; the
#: downloader records the sha256 it computed). `approx_bytes` is for planning only.
SOURCES: dict[str, dict] = {
    "laion_subset": {
        "homepage": "https://huggingface.co/datasets/MayIBorn/laion_2b_en_subset_70666",
        "lists": {
            "all": {
                # The Hub's own Parquet conversion of the dataset's "train" split (one file).
                "url": "https://huggingface.co/datasets/MayIBorn/laion_2b_en_subset_70666/resolve/"
                       "refs%2Fconvert%2Fparquet/default/train/0000.parquet",
                "file": "laion_2b_en_subset_70666.parquet", "size": None, "sha256": None,
                "approx_bytes": 10_000_000, "rows": 70_666,
            },
        },
        "format": "parquet", "header": True, "url_column": "URL", "caption_column": "TEXT",
        "split": {"all": "hash"},  # no published split; see `test_fraction`
        "approx_bytes_per_image": 200_000,
    },
    "cc3m": {
        "homepage": "https://ai.google.com/research/ConceptualCaptions/download",
        "lists": {
            "train": {
                "url": "https://storage.googleapis.com/gcc-data/Train/GCC-training.tsv",
                "file": "GCC-training.tsv", "size": None, "sha256": None,
                "approx_bytes": 530_000_000, "rows": 3_318_333,
            },
            "test": {
                "url": "https://storage.googleapis.com/gcc-data/Validation/GCC-1.1.0-Validation.tsv",
                "file": "GCC-1.1.0-Validation.tsv", "size": None, "sha256": None,
                "approx_bytes": 2_600_000, "rows": 15_840,
            },
        },
        "format": "tsv", "header": False, "columns": ["caption", "url"],
        "url_column": "url", "caption_column": "caption",
        "split": {"train": "train", "test": "test"},
        "approx_bytes_per_image": 150_000,
    },
}

SPLITS = ("train", "test")
STATE = "state.json"
RECORD = "download.json"
FOLDER_SIZE = 10_000  # images per folder, so no folder holds millions of files
DEFAULT_SHARD_SIZE = 10_000  # rows per shard unless options.shard_size says otherwise (null: one shard)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
_OPTIONS = {"shard_size", "max_images", "retries", "timeout", "test_fraction", "list_urls"}


# ------------------------------------------------------------------------------------------- lists


def _spec(dataset: str | None) -> dict:
    if dataset not in SOURCES:
        raise ConfigError(f"URL-list dataset must be one of {sorted(SOURCES)}, got {dataset!r}")
    return SOURCES[dataset]


def read_list(path: str | Path, spec: Mapping[str, Any]) -> pd.DataFrame:
    """A URL list as a DataFrame with columns row (0-based position in the file), url, caption.

    The format follows the file name (.parquet, .tsv, .csv), else `spec["format"]`. Parquet needs
    pyarrow (or fastparquet). A missing caption becomes ""; a missing URL stays "" (recorded as a
    failure by `download`).
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    kind = suffix if suffix in {"parquet", "tsv", "csv"} else spec["format"]
    try:
        if kind == "parquet":
            table = pd.read_parquet(path)
        else:
            sep = "\t" if kind == "tsv" else ","
            header = "infer" if spec.get("header", True) else None
            names = None if spec.get("header", True) else spec["columns"]
            # QUOTE_NONE for TSV: CC-3M captions contain bare quotes that are not field quoting.
            quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
            table = pd.read_csv(path, sep=sep, header=header, names=names, dtype=str, keep_default_na=False,
                                quoting=quoting)
    except ImportError as exc:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow, which is not installed here ({exc}). Install it "
            "(pip install pyarrow) in the download environment, or convert the list to CSV with URL and "
            "TEXT columns and pass it with options.list_urls."
        ) from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable {kind} URL list ({exc}); delete it and rerun") from exc
    columns = {str(name).lower(): name for name in table.columns}
    found = {}
    for role in ("url_column", "caption_column"):
        wanted = spec[role]
        name = wanted if wanted in table.columns else columns.get(str(wanted).lower())
        if name is None:
            raise DataError(f"{path}: no {wanted!r} column (has {list(table.columns)[:10]}); set "
                            f"SOURCES[...]['{role}'] to the column holding the "
                            f"{role.split('_')[0]}")
        found[role] = name

    def text(column: pd.Series) -> list[str]:
        return ["" if value is None or (isinstance(value, float) and value != value) else str(value).strip()
                for value in column]

    return pd.DataFrame({"row": range(len(table)), "url": text(table[found["url_column"]]),
                         "caption": text(table[found["caption_column"]])})


def hash_split(row: int, test_fraction: float) -> str:
    """"test" for a stable pseudo-random `test_fraction` of row indices, "train" for the rest."""
    digest = hashlib.sha256(f"row:{row}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def in_split(row: int, test_fraction: float, split: str) -> bool:
    """Whether a row belongs to `split`: a stable `test_fraction` of rows is the test split; with
    no hold-out (0) both splits are every row (the comparisons run on the training data)."""
    return True if not test_fraction else hash_split(row, test_fraction) == split


def stored_split(split: str, state: Mapping[str, Any]) -> str:
    """The split whose images and reports serve `split`: with no hold-out, the test split of a
    hash-split list is the training split, so its rows are downloaded and stored once."""
    hashed = "hash" in _spec(state["dataset"])["split"].values()
    return "train" if hashed and not state["test_fraction"] else split


def sample_id(dataset: str, split: str, row: int) -> str:
    return f"{dataset}_{split}_{row:08d}"


def image_path(root: Path, dataset: str, split: str, row: int, url: str) -> Path:
    """Where a row's image lives: a function of the row alone, whatever the sharding."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    suffix = suffix if suffix in _IMAGE_SUFFIXES else ".img"
    folder = Path(root) / "images" / split / f"{row // FOLDER_SIZE:04d}"
    return folder / f"{sample_id(dataset, split, row)}{suffix}"


def split_rows(root: Path, dataset: str, split: str, state: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of `split` (row, url, caption, sample_id), in list order, capped at `max_images`."""
    spec = _spec(dataset)
    parts = []
    for key, assignment in spec["split"].items():
        table = read_list(Path(root) / state["lists"][key], spec)
        if assignment == "hash":
            table = table[[in_split(row, state["test_fraction"], split) for row in table["row"]]]
        elif assignment != split:
            continue
        parts.append(table)
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", "url", "caption"])
    if state.get("max_images") is not None:
        rows = rows.iloc[: state["max_images"]]
    rows = rows.reset_index(drop=True)
    rows["sample_id"] = [sample_id(dataset, split, int(row)) for row in rows["row"]]
    return rows


# ---------------------------------------------------------------------------------------- download


def _check_options(dataset: str, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(f"datasets.<name>.options for {dataset}: unknown {sorted(unknown)}; "
                          f"known: {sorted(_OPTIONS)}")
    for name in ("shard_size", "max_images"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{dataset} options.{name}: expected a positive integer or null, got {value!r}")
    fraction = float(options.get("test_fraction", 0.1))
    if not 0 <= fraction < 1:
        raise ConfigError(f"{dataset} options.test_fraction: expected a number in [0, 1) (0: both splits "
                          f"are every row), got {fraction!r}")
    list_urls = dict(options.get("list_urls") or {})
    unknown_lists = set(list_urls) - set(_spec(dataset)["lists"])
    if unknown_lists:
        raise ConfigError(f"{dataset} options.list_urls: unknown lists {sorted(unknown_lists)}; "
                          f"known: {sorted(_spec(dataset)['lists'])}")
    return {"shard_size": options.get("shard_size", DEFAULT_SHARD_SIZE),
            "max_images": options.get("max_images"),
            "retries": int(options.get("retries", 2)), "timeout": float(options.get("timeout", 20)),
            "test_fraction": fraction, "list_urls": list_urls}


def _fetch_lists(root: Path, dataset: str, opts: dict, base_url: str | None, provided: str | None,
                 progress: bool) -> dict[str, dict]:
    """Fetch (or take from `provided`) every list file; return key → file record."""
    spec = _spec(dataset)
    files: dict[str, dict] = {}
    items = []
    for key, source in spec["lists"].items():
        url = opts["list_urls"].get(key) or (f"{base_url.rstrip('/')}/{source['file']}" if base_url
                                             else source["url"])
        name = PurePosixPath(urlsplit(url).path).name if key in opts["list_urls"] else source["file"]
        dest = root / "lists" / name
        if provided:
            given = Path(provided) / source["file"]
            if not given.is_file():
                raise DownloadError(f"provided={provided}: {source['file']} not found there; put the "
                                    f"{dataset} list file(s) {[s['file'] for s in spec['lists'].values()]} "
                                    "in that folder")
            files[key] = {"file": given.name, "path": str(given.resolve()), "provided": True,
                          "bytes": given.stat().st_size, "sha256": sha256_file(given)}
            continue
        items.append(DownloadItem(url=url, dest=dest, sha256=source.get("sha256"), size=source.get("size"),
                                  key=key))
    report = download_many(items, workers=max(len(items), 1), progress=progress, desc=f"{dataset} lists")
    if report.failed:
        lines = "\n".join(f"  - {item.dest} from {item.url}: {item.reason}" for item in report.failed)
        raise DownloadError(
            f"The {dataset} URL list could not be fetched:\n{lines}\nRerun to try again, or fetch it by "
            f"hand ({spec['homepage']}) and set datasets.<name>.provided to the folder holding it."
        )
    for item in report.items:
        files[item.key] = {"file": Path(item.dest).name, "url": item.url,
                           "path": str(Path(item.dest).relative_to(root)), "bytes": item.bytes,
                           "sha256": item.sha256, "outcome": item.outcome}
    return files


def _decodable(path: Path) -> str | None:
    """None if PIL opens and verifies the file as an image, else why not."""
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as exc:  # PIL raises many types for non-images; every one means "unusable"
        return f"{type(exc).__name__}: {exc}"


def _check_images(report: DownloadReport, workers: int) -> DownloadReport:
    """Mark arrived files that are not images as failed (and delete them)."""
    arrived = [index for index, item in enumerate(report.items) if item.ok]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, 8))) as pool:
        reasons = list(pool.map(lambda index: _decodable(Path(report.items[index].dest)), arrived))
    items = list(report.items)
    for index, reason in zip(arrived, reasons, strict=True):
        if reason is not None:
            Path(items[index].dest).unlink(missing_ok=True)
            items[index] = replace(items[index], outcome="failed",
                                   reason=f"undecodable: not an image PIL can open ({reason}); deleted")
    return DownloadReport(items)


def _shard_is_done(path: Path, rows: pd.DataFrame, dests: list[Path]) -> DownloadReport | None:
    """The shard's report if it exists, covers exactly these rows and every image it lists is present."""
    if not path.is_file():
        return None
    try:
        report = DownloadReport.read(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected = list(zip(rows["sample_id"], rows["url"], strict=True))
    if [(item.key, item.url) for item in report.items] != expected:
        return None
    if any(item.ok and not dest.is_file() for item, dest in zip(report.items, dests, strict=True)):
        return None
    return report


def _download_shard(rows: pd.DataFrame, dests: list[Path], *, workers: int, opts: dict, progress: bool,
                    desc: str) -> DownloadReport:
    with_url = [i for i, url in enumerate(rows["url"]) if url]
    items = [DownloadItem(url=rows["url"].iat[i], dest=dests[i], key=rows["sample_id"].iat[i])
             for i in with_url]
    fetched = download_many(items, workers=workers, retries=opts["retries"], timeout=opts["timeout"],
                            progress=progress, desc=desc) if items else DownloadReport([])
    fetched = _check_images(fetched, workers)
    outcomes: list[ItemOutcome] = [
        ItemOutcome(rows["sample_id"].iat[i], "", str(dests[i]), "failed", reason="the list gives no URL")
        for i in range(len(rows))
    ]
    for i, outcome in zip(with_url, fetched.items, strict=True):
        outcomes[i] = outcome
    return DownloadReport(outcomes)


def _failure_kind(item: ItemOutcome) -> str:
    if item.reason.startswith("undecodable"):
        return "undecodable"
    if item.http_status is not None:
        return f"http {item.http_status}"
    if not item.url:
        return "no url"
    return "connection or other"


def download(root: Path, *, dataset: str | None = None, base_url: str | None = None, workers: int = 8,
             progress: bool = True, provided: str | None = None, **options) -> dict:
    """Fetch a URL list and its images; record which resolved and which failed, per shard and per split.

    Options: `shard_size` (rows per shard, default 10,000; None: one shard), `max_images` (the first
    n rows of each split), `retries` (default 2: dead links are common and each retry of a dead host costs a
    timeout), `timeout` (seconds, default 20), `test_fraction` (laion_subset only), `list_urls`
    ({list key: URL} to fetch a list from elsewhere; the format follows the file name).
    Returns the record also written to `root/download.json`.
    """
    spec = _spec(dataset)
    root = Path(root)
    opts = _check_options(dataset, options)
    files = _fetch_lists(root, dataset, opts, base_url, provided, progress)
    state = {"dataset": dataset, "lists": {key: entry["path"] for key, entry in files.items()},
             "test_fraction": opts["test_fraction"], "max_images": opts["max_images"]}
    write_json(root / STATE, state)
    splits: dict[str, dict] = {}
    for split in SPLITS:
        if stored_split(split, state) != split:  # the same rows, already downloaded
            splits[split] = splits[stored_split(split, state)]
            continue
        rows = split_rows(root, dataset, split, state)
        size = opts["shard_size"] or max(len(rows), 1)
        reports_dir = root / "reports" / split
        shard_files: list[str] = []
        resumed = resolved = 0
        failed: list[ItemOutcome] = []
        for start in range(0, len(rows), size):
            shard = rows.iloc[start:start + size]
            dests = [image_path(root, dataset, split, int(row), url)
                     for row, url in zip(shard["row"], shard["url"], strict=True)]
            path = reports_dir / f"rows_{start:08d}-{start + len(shard):08d}.json"
            report = _shard_is_done(path, shard, dests)
            if report is None:
                report = _download_shard(shard, dests, workers=workers, opts=opts, progress=progress,
                                         desc=f"{dataset} {split} rows {start}-{start + len(shard)}")
                report.write(path)
            else:
                resumed += 1
            shard_files.append(path.name)
            resolved += len(report.succeeded)
            failed.extend(report.failed)
        write_json(reports_dir / "index.json", {"dataset": dataset, "split": split, "rows": len(rows),
                                                "shard_size": opts["shard_size"], "shards": shard_files})
        DownloadReport(failed).write(reports_dir / "failed.csv")
        splits[split] = {
            "rows": len(rows), "resolved": resolved, "failed": len(failed),
            "failures_by_kind": dict(sorted(Counter(_failure_kind(item) for item in failed).items())),
            "shards": len(shard_files), "shards_resumed": resumed,
            "failed_report": str((reports_dir / "failed.csv").relative_to(root)),
            "reports": [str((reports_dir / name).relative_to(root)) for name in shard_files],
        }
    record = {"dataset": dataset, "root": str(root), "homepage": spec["homepage"],
              "options": opts, "files": files, "splits": splits}
    write_json(root / RECORD, record)
    return record


# ----------------------------------------------------------------------------------------- reading


def _state(root: Path) -> dict:
    path = Path(root) / STATE
    if not path.is_file():
        raise DataError(f"{path} not found: run the download (rule download_dataset) for this dataset first")
    return json.loads(path.read_text(encoding="utf-8"))


def samples(root: Path, split: str, dataset: str | None = None) -> pd.DataFrame:
    """Rows whose image resolved and opened as an image: sample_id, image_path, caption, labels ([])."""
    root = Path(root)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    state = _state(root)
    dataset = dataset or state["dataset"]
    if dataset != state["dataset"]:
        raise DataError(f"{root} holds {state['dataset']}, not {dataset}")
    split = stored_split(split, state)
    index_path = root / "reports" / split / "index.json"
    if not index_path.is_file():
        raise DataError(f"{index_path} not found: the {dataset} download did not finish; rerun it")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    resolved: set[str] = set()
    for name in index["shards"]:
        resolved.update(item.key for item in DownloadReport.read(root / "reports" / split / name).items
                        if item.ok)
    rows = split_rows(root, dataset, split, state)
    rows = rows[rows["sample_id"].isin(resolved)]
    paths = [image_path(root, dataset, split, int(row), url)
             for row, url in zip(rows["row"], rows["url"], strict=True)]
    keep = [path.is_file() for path in paths]
    rows = rows[keep]
    return pd.DataFrame({
        "sample_id": rows["sample_id"].tolist(),
        "image_path": [str(path) for path, ok in zip(paths, keep, strict=True) if ok],
        "caption": rows["caption"].tolist(),
        "labels": [[] for _ in range(len(rows))],
    }, columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path, dataset: str | None = None) -> dict[str, str | None]:
    """These datasets have no labels."""
    return {}
