"""Open Images V7, the densely annotated subset as SPARC uses it: one row per (image, Localized Narrative).

What SPARC's feature extraction reads (AtlasAnalyticsLab/SPARC, `extract_open_images.py`), and where
each piece comes from here:

- images of the boxable subset, one JPEG per image id, fetched one by one from the public Open Images
  bucket (`SOURCES["images"]`, no login) with `download_many`: a bounded pool, every failure recorded;
- human-verified image-level labels of the boxable classes (`*-annotations-human-imagelabels-boxable.csv`,
  columns ImageID, Source, LabelName, Confidence); only Confidence == 1 counts, as in SPARC;
- the boxable class names (`oidv7-class-descriptions-boxable.csv`, MID → display name; labels are
  display names, as SPARC indexes them);
- the class hierarchy (`bbox_labels_600_hierarchy.json`, nested `Subcategory` lists under the root
  "Entity" node, which is not a label);
- Localized Narratives captions (`open_images_{split}_captions.jsonl`, one JSON object per line with
  `image_id` and `caption`). SPARC reads a "simplified" JSON that no script of theirs produces;
  `simplify_narratives` builds the equivalent table (image_id, narrative_index, caption) here, and
  `download` runs it, so nobody writes it by hand.

Layout under `root` once `download` has run::

    annotations/            the annotation files, under their published names
    captions/{split}.csv    simplified narratives (image_id, narrative_index, caption)
    selection/{split}.txt   the image ids this run selected (sorted; `max_images` applied)
    images/{split}/{image_id}.jpg
    reports/images_{split}.json   DownloadReport of the images: which failed and why
    state.json              options and file paths that `samples` needs
    download.json           the record `download` returns

Which images: the boxable image ids of the split that have at least one narrative (sorted, the first
`max_images` when set). Images without a narrative are left out unless `keep_uncaptioned=True`
(then they get one row with caption ""): SPARC trains and evaluates on (image, caption) pairs, a row
with an empty caption gives every text encoder one constant vector that the SAE would learn as a
spurious concept shared by thousands of unrelated images, and it would fetch ~1.2M extra train images
(~360 GB) that the paper never uses. With the default, the test split has SPARC's 126,020 rows.

A `base_url` (mirror, or the loopback server of the tests) serves every annotation file by its file
name (`{base_url}/{file}`) and every image as `{base_url}/{split}/{image_id}.jpg`, the bucket's layout.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from xsae.download import DownloadItem, download_many
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import atomic_path, write_json

_GCS = "https://storage.googleapis.com"

#: Published locations. Open Images and Localized Narratives publish no checksums, so every `sha256`
#: is None and the downloader records the value it computed; `size` stays None (a wrong expected size
#: would fail the download) and `approx_bytes` says roughly what to expect.
SOURCES: dict[str, dict] = {
    "classes": {
        "url": f"{_GCS}/openimages/v7/oidv7-class-descriptions-boxable.csv",
        "file": "oidv7-class-descriptions-boxable.csv", "size": None, "sha256": None, "approx_bytes": 12_064,
    },
    "hierarchy": {
        "url": f"{_GCS}/openimages/2018_04/bbox_labels_600_hierarchy.json",
        "file": "bbox_labels_600_hierarchy.json", "size": None, "sha256": None, "approx_bytes": 86_291,
    },
    "train": {
        # The V7 download page links the boxable image list and the boxable human labels of 2018/V5:
        # those sets did not change in V6/V7 (no "oidv7-*-boxable" label files are published).
        "image_list": {
            "url": f"{_GCS}/openimages/2018_04/train/train-images-boxable-with-rotation.csv",
            "file": "train-images-boxable-with-rotation.csv", "size": None, "sha256": None,
            "approx_bytes": 638_000_000,
        },
        "labels": {
            "url": f"{_GCS}/openimages/v5/train-annotations-human-imagelabels-boxable.csv",
            "file": "train-annotations-human-imagelabels-boxable.csv", "size": None, "sha256": None,
            "approx_bytes": 450_000_000,
        },
        "narratives": {
            "url": f"{_GCS}/localized-narratives/annotations/open_images_train_v6_captions.jsonl",
            "file": "open_images_train_v6_captions.jsonl", "size": None, "sha256": None,
            "approx_bytes": 138_000_000,
        },
    },
    "test": {
        "image_list": {
            "url": f"{_GCS}/openimages/2018_04/test/test-images-with-rotation.csv",
            "file": "test-images-with-rotation.csv", "size": None, "sha256": None,
            "approx_bytes": 45_200_000,
        },
        "labels": {
            "url": f"{_GCS}/openimages/v5/test-annotations-human-imagelabels-boxable.csv",
            "file": "test-annotations-human-imagelabels-boxable.csv", "size": None, "sha256": None,
            "approx_bytes": 32_000_000,
        },
        "narratives": {
            "url": f"{_GCS}/localized-narratives/annotations/open_images_test_captions.jsonl",
            "file": "open_images_test_captions.jsonl", "size": None, "sha256": None,
            "approx_bytes": 31_100_000,
        },
    },
    "images": {
        # One public, anonymous object per image; about 300 KB each on average.
        "url": "https://open-images-dataset.s3.amazonaws.com/{split}/{image_id}.jpg",
        "bucket_split": {"train": "train", "test": "test"},
        "approx_bytes_each": 300_000,
    },
}

SPLITS = ("train", "test")
NARRATIVE_COLUMNS = ("image_id", "narrative_index", "caption")
STATE = "state.json"
RECORD = "download.json"
_OPTIONS = {"max_images", "keep_uncaptioned", "retries", "timeout", "image_url"}
_CHUNK_ROWS = 1_000_000


# ------------------------------------------------------------------------------------- annotations


def simplify_narratives(jsonl_path: str | Path, out_path: str | Path) -> int:
    """Write the compact caption table (image_id, narrative_index, caption) of a narratives JSONL.

    `narrative_index` numbers an image's narratives 0, 1, ... in the order they appear in the file,
    so a sample id `{image_id}_{narrative_index}` is stable for a given file. Rows are sorted by
    (image_id, narrative_index); captions are stripped. Written atomically; returns the row count.
    """
    jsonl_path = Path(jsonl_path)
    by_image: dict[str, list[str]] = defaultdict(list)
    with open(jsonl_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                image_id, caption = entry["image_id"], entry["caption"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{jsonl_path}, line {number}: not a Localized Narratives record with 'image_id' and "
                    f"'caption' ({type(exc).__name__}: {exc}). The file is damaged; delete it and rerun."
                ) from exc
            by_image[str(image_id)].append(" ".join(str(caption).split()))
    rows = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(NARRATIVE_COLUMNS)
        for image_id in sorted(by_image):
            for index, caption in enumerate(by_image[image_id]):
                writer.writerow((image_id, index, caption))
                rows += 1
    return rows


def read_narratives(path: str | Path) -> pd.DataFrame:
    """The simplified caption table as strings (narrative_index as int)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = set(NARRATIVE_COLUMNS) - set(table.columns)
    if missing:
        raise DataError(f"{path}: simplified narratives lack columns {sorted(missing)}; rerun the download")
    table["narrative_index"] = table["narrative_index"].astype(int)
    return table


def class_names(path: str | Path) -> dict[str, str]:
    """MID → display name from a class-descriptions CSV, with (V7) or without (V4/V5) a header row."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and not rows[0][0].startswith("/"):  # "LabelName,DisplayName"
        rows = rows[1:]
    bad = [row for row in rows if len(row) < 2]
    if bad:
        raise DataError(f"{path}: rows without a display name, e.g. {bad[0]}; expected 'MID,DisplayName'")
    return {row[0].strip(): row[1].strip() for row in rows}


def hierarchy_parents(tree: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, str | None]:
    """Label name → parent name from the nested `Subcategory` JSON; the root node is not a label.

    A class listed under several parents keeps the first (depth-first, file order). `Part` lists are
    part-of, not is-a, relations and are ignored. A node whose MID has no display name is skipped and
    its children attach to the nearest named ancestor. Every class in `names` is included; one the
    tree never lists is top level (parent None).
    """
    parents: dict[str, str | None] = {}
    root_mid = tree.get("LabelName")

    def visit(node: Mapping[str, Any], parent: str | None) -> None:
        for child in node.get("Subcategory", []) or []:
            name = names.get(child.get("LabelName", ""))
            if name is not None and name not in parents:
                parents[name] = parent
            visit(child, name if name is not None else parent)

    visit(tree, None)
    for mid, name in names.items():
        if mid != root_mid:
            parents.setdefault(name, None)
    return parents


def read_image_ids(path: str | Path) -> set[str]:
    """The ImageID column of an image list (`*-images-*with-rotation.csv`) or a box file (`*-bbox.csv`)."""
    ids: set[str] = set()
    try:
        for chunk in pd.read_csv(path, usecols=["ImageID"], dtype=str, chunksize=_CHUNK_ROWS):
            ids.update(chunk["ImageID"].dropna())
    except ValueError as exc:
        raise DataError(f"{path}: no ImageID column ({exc}); expected an Open Images image list") from exc
    return ids


def read_positive_labels(path: str | Path, image_ids: set[str],
                         names: Mapping[str, str]) -> dict[str, list[str]]:
    """Image id → sorted display names of its Confidence == 1 labels, for the given images only.

    Labels whose MID has no display name (not a boxable class) are dropped, as they have no place in
    the 601-class label space.
    """
    labels: dict[str, set[str]] = defaultdict(set)
    try:
        chunks = pd.read_csv(path, usecols=["ImageID", "LabelName", "Confidence"], dtype=str,
                             chunksize=_CHUNK_ROWS)
        for chunk in chunks:
            confident = pd.to_numeric(chunk["Confidence"], errors="coerce") == 1
            keep = chunk[confident & chunk["ImageID"].isin(image_ids)]
            for image_id, mid in zip(keep["ImageID"], keep["LabelName"], strict=True):
                name = names.get(mid)
                if name is not None:
                    labels[image_id].add(name)
    except ValueError as exc:
        raise DataError(f"{path}: expected columns ImageID, LabelName, Confidence ({exc})") from exc
    return {image_id: sorted(found) for image_id, found in labels.items()}


# ---------------------------------------------------------------------------------------- download


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(f"datasets.<name>.options for open_images_v7: unknown {sorted(unknown)}; "
                          f"known: {sorted(_OPTIONS)}")
    max_images = options.get("max_images")
    caps = max_images if isinstance(max_images, Mapping) else dict.fromkeys(SPLITS, max_images)
    for split, cap in caps.items():
        if split not in SPLITS or (cap is not None and (not isinstance(cap, int) or cap < 1)):
            raise ConfigError(f"open_images_v7 options.max_images: expected a positive integer (or a "
                              f"mapping of {list(SPLITS)} to one), got {max_images!r}")
    return {
        "max_images": {split: caps.get(split) for split in SPLITS},
        "keep_uncaptioned": bool(options.get("keep_uncaptioned", False)),
        "retries": int(options.get("retries", 5)),
        "timeout": float(options.get("timeout", 30)),
        "image_url": options.get("image_url") or SOURCES["images"]["url"],
    }


def _file_url(source: dict, base_url: str | None) -> str:
    return f"{base_url.rstrip('/')}/{source['file']}" if base_url else source["url"]


def image_url(image_id: str, split: str, *, base_url: str | None = None, pattern: str | None = None) -> str:
    bucket_split = SOURCES["images"]["bucket_split"][split]
    if base_url:
        return f"{base_url.rstrip('/')}/{bucket_split}/{image_id}.jpg"
    return (pattern or SOURCES["images"]["url"]).format(split=bucket_split, image_id=image_id)


def _annotation_sources() -> dict[str, dict]:
    sources = {"classes": SOURCES["classes"], "hierarchy": SOURCES["hierarchy"]}
    for split in SPLITS:
        for kind in ("image_list", "labels", "narratives"):
            sources[f"{split}.{kind}"] = SOURCES[split][kind]
    return sources


def _fetch_annotations(root: Path, base_url: str | None, workers: int, progress: bool) -> dict[str, dict]:
    """Fetch every annotation file (present ones are kept); raise naming the ones that failed."""
    sources = _annotation_sources()
    items = [DownloadItem(url=_file_url(source, base_url), dest=root / "annotations" / source["file"],
                          sha256=source.get("sha256"), size=source.get("size"), key=key)
             for key, source in sources.items()]
    report = download_many(items, workers=min(workers, len(items)), progress=progress,
                           desc="Open Images annotations")
    if report.failed:
        lines = "\n".join(f"  - {item.dest} from {item.url}: {item.reason}" for item in report.failed)
        raise DownloadError(
            f"{len(report.failed)} Open Images annotation files could not be fetched:\n{lines}\n"
            f"Rerun to try again (complete files are kept), or put the files by hand into "
            f"{root / 'annotations'} under the names shown."
        )
    return {item.key: {"file": sources[item.key]["file"], "url": item.url,
                       "path": str(Path(item.dest).relative_to(root)), "bytes": item.bytes,
                       "sha256": item.sha256, "outcome": item.outcome} for item in report.items}


def _state(root: Path) -> dict:
    path = Path(root) / STATE
    if not path.is_file():
        raise DataError(f"{path} not found: run the Open Images download (rule download_dataset) first")
    return json.loads(path.read_text(encoding="utf-8"))


def _split_paths(split: str) -> dict[str, str]:
    return {
        "image_list": f"annotations/{SOURCES[split]['image_list']['file']}",
        "labels": f"annotations/{SOURCES[split]['labels']['file']}",
        "narratives_jsonl": f"annotations/{SOURCES[split]['narratives']['file']}",
        "narratives": f"captions/{split}.csv",
        "selection": f"selection/{split}.txt",
        "images": f"images/{split}",
        "report": f"reports/images_{split}.json",
    }


def select_images(boxable: Iterable[str], narrated: Iterable[str], *, keep_uncaptioned: bool,
                  max_images: int | None) -> list[str]:
    """Sorted boxable image ids (only narrated ones unless `keep_uncaptioned`), the first `max_images`."""
    boxable = set(boxable)
    chosen = sorted(boxable if keep_uncaptioned else boxable & set(narrated))
    return chosen if max_images is None else chosen[:max_images]


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             **options) -> dict:
    """Fetch the annotations, build the simplified captions and fetch the selected images of both splits.

    Options: `max_images` (per split: int, or {"train": n, "test": m}; the first n sorted ids),
    `keep_uncaptioned` (default False, see the module docstring), `retries` and `timeout` per image,
    `image_url` (the per-image URL pattern with `{split}` and `{image_id}`). Rerunning skips files
    already present; images that failed are tried again. Returns the record also written to
    `root/download.json`; per-image outcomes are in `root/reports/images_{split}.json`.
    """
    root = Path(root)
    opts = _check_options(options)
    files = _fetch_annotations(root, base_url, workers, progress)
    state = {"keep_uncaptioned": opts["keep_uncaptioned"], "max_images": opts["max_images"],
             "classes": f"annotations/{SOURCES['classes']['file']}",
             "hierarchy": f"annotations/{SOURCES['hierarchy']['file']}",
             "splits": {split: _split_paths(split) for split in SPLITS}}
    write_json(root / STATE, state)
    splits: dict[str, dict] = {}
    for split in SPLITS:
        paths = {key: root / value for key, value in state["splits"][split].items()}
        n_narratives = simplify_narratives(paths["narratives_jsonl"], paths["narratives"])
        narrated = set(read_narratives(paths["narratives"])["image_id"])
        boxable = read_image_ids(paths["image_list"])
        chosen = select_images(boxable, narrated, keep_uncaptioned=opts["keep_uncaptioned"],
                               max_images=opts["max_images"][split])
        with atomic_path(paths["selection"]) as tmp:
            tmp.write_text("".join(f"{image_id}\n" for image_id in chosen), encoding="utf-8")
        items = [DownloadItem(url=image_url(image_id, split, base_url=base_url, pattern=opts["image_url"]),
                              dest=paths["images"] / f"{image_id}.jpg", key=image_id)
                 for image_id in chosen]
        report = download_many(items, workers=workers, retries=opts["retries"], timeout=opts["timeout"],
                               progress=progress, desc=f"Open Images {split} images")
        report.write(paths["report"])
        splits[split] = {
            "narratives": n_narratives, "narrated_images": len(narrated), "boxable_images": len(boxable),
            "narrated_not_boxable": len(narrated - boxable), "selected_images": len(chosen),
            "images": report.summary(), "images_resolved": len(report.succeeded),
            "images_failed": len(report.failed),
            "failed_image_ids": [item.key for item in report.failed[:1000]],
            "failed_image_ids_truncated": len(report.failed) > 1000,
            "report": state["splits"][split]["report"],
        }
    for split in SPLITS:
        table = samples(root, split)
        splits[split].update(rows=len(table), rows_with_labels=int((table["labels"].str.len() > 0).sum()))
    record = {"dataset": "open_images_v7", "root": str(root), "options": {**opts},
              "files": files, "splits": splits, "labels": len(hierarchy(root))}
    write_json(root / RECORD, record)
    return record


# ----------------------------------------------------------------------------------------- reading


def _names(root: Path, state: dict) -> tuple[dict[str, str], dict[str, str | None]]:
    """(MID → display name of every label, label name → parent name)."""
    names = class_names(root / state["classes"])
    tree = json.loads((root / state["hierarchy"]).read_text(encoding="utf-8"))
    parents = hierarchy_parents(tree, names)
    return {mid: name for mid, name in names.items() if name in parents}, parents


def hierarchy(root: Path) -> dict[str, str | None]:
    """Label display name → parent display name (None at the top; "Entity" is not a label)."""
    root = Path(root)
    return _names(root, _state(root))[1]


def samples(root: Path, split: str) -> pd.DataFrame:
    """One row per (selected image whose JPEG is present, narrative), sorted by sample id.

    Columns: sample_id (`{image_id}_{narrative_index}`), image_path, caption, labels (display names of
    the image's Confidence == 1 boxable labels, sorted; [] if none). With `keep_uncaptioned`, a
    selected image without narratives gives one row `{image_id}_0` with caption "".
    """
    root = Path(root)
    if split not in SPLITS:
        raise ConfigError(f"Open Images split must be one of {list(SPLITS)}, got {split!r}")
    state = _state(root)
    paths = {key: root / value for key, value in state["splits"][split].items()}
    chosen = paths["selection"].read_text(encoding="utf-8").split()
    present = [image_id for image_id in chosen if (paths["images"] / f"{image_id}.jpg").is_file()]
    wanted = set(present)
    mids, _ = _names(root, state)
    labels = read_positive_labels(paths["labels"], wanted, mids)
    narratives = read_narratives(paths["narratives"])
    narratives = narratives[narratives["image_id"].isin(wanted)]
    rows = list(zip(narratives["image_id"], narratives["narrative_index"], narratives["caption"],
                    strict=True))
    if state["keep_uncaptioned"]:
        narrated = set(narratives["image_id"])
        rows += [(image_id, 0, "") for image_id in present if image_id not in narrated]
    rows.sort(key=lambda row: (row[0], row[1]))
    return pd.DataFrame({
        "sample_id": [f"{image_id}_{index}" for image_id, index, _ in rows],
        "image_path": [str(paths["images"] / f"{image_id}.jpg") for image_id, _, _ in rows],
        "caption": [caption for _, _, caption in rows],
        "labels": [list(labels.get(image_id, [])) for image_id, _, _ in rows],
    }, columns=["sample_id", "image_path", "caption", "labels"])
