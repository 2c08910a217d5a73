"""COCO 2017: images with five human captions each and 80 object categories in 12 supercategories.

Source: http://images.cocodataset.org (COCO terms of use: annotations CC BY 4.0, images under their
Flickr licences). Layout under `root` once `download` has run::

    downloads/                      archives while they are fetched (deleted after unpacking
                                    unless keep_archives=True)
    images_train2017/train2017/     118,287 JPEGs            (split "train")
    images_val2017/val2017/         5,000 JPEGs              (split "test")
    annotations_trainval2017/annotations/captions_{train,val}2017.json, instances_{...}.json
    download.json                   what was fetched: files, sizes, sha256, failures

COCO publishes the archive sizes (the Content-Length its bucket serves, recorded in `SOURCES`) but no
checksums, so the sha256 of every archive is computed while it streams and recorded in download.json.

The test split is val2017: the 2017 test images have no public captions or instances.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from xsae.download import DownloadItem, download_many, extract_archive, verify_archive
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import write_json

#: Archives to fetch. `size` is the byte count images.cocodataset.org serves (the site's "18GB",
#: "1GB" and "241MB"); COCO publishes no checksum, so `sha256` is None and the value is recorded.
SOURCES: dict[str, dict] = {
    "train_images": {
        "url": "http://images.cocodataset.org/zips/train2017.zip",
        "file": "train2017.zip",
        "size": 19_336_861_798,
        "sha256": None,
        "extract_to": "images_train2017",
    },
    "val_images": {
        "url": "http://images.cocodataset.org/zips/val2017.zip",
        "file": "val2017.zip",
        "size": 815_585_330,
        "sha256": None,
        "extract_to": "images_val2017",
    },
    "annotations": {
        "url": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "file": "annotations_trainval2017.zip",
        "size": 252_907_541,
        "sha256": None,
        "extract_to": "annotations_trainval2017",
    },
}

#: Our split name → COCO's image set.
SPLITS = {"train": "train2017", "test": "val2017"}

#: How one image's captions become one `caption` string: each caption with its whitespace collapsed
#: (many end in a newline or a trailing space), in annotation-id order, joined by this string.
CAPTION_JOINER = " "

RECORD = "download.json"


class Instance(NamedTuple):
    """One object instance: category name, COCO segmentation (polygons, or RLE for crowds), bbox xywh."""

    category: str
    segmentation: Any
    bbox: list[float]


# ---------------------------------------------------------------------------------------- download


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def source_url(source: dict, base_url: str | None) -> str:
    """The URL of one source; a `base_url` (mirror or test server) serves every file by its name,
    except a source marked `own_host` (a URL the user set for that file alone)."""
    if base_url and not source.get("own_host"):
        return f"{base_url.rstrip('/')}/{source['file']}"
    return source["url"]


def fetch_archives(root: Path, sources: dict[str, dict], *, base_url: str | None = None, workers: int = 8,
                   progress: bool = True, keep_archives: bool = False, desc: str = "download") -> dict:
    """Fetch, verify and unpack `sources` under `root`; shared by the archive-based dataset modules.

    A source is a dict with `url`, `file`, optional `size`, `sha256`, `md5` (checked after the
    download) and `extract_to` (a folder under `root` to unpack an archive into; without it the file
    stays in `root/downloads`). A source whose `extract_to` folder exists is done: unpacking is atomic,
    so the folder is complete. Every download is finished and every archive read through (CRCs,
    end markers) before anything is unpacked: one truncated or wrong file raises DownloadError naming
    it, deletes that file so a rerun fetches it again, and unpacks nothing. Returns the JSON-able
    record also written to `root/download.json`.
    """
    root = Path(root)
    downloads = root / "downloads"
    previous = read_record(root).get("files", {})
    files: dict[str, dict] = {}
    items = []
    for key, source in sources.items():
        url = source_url(source, base_url)
        entry = {"file": source["file"], "url": url, "published_size": source.get("size")}
        extract_to = source.get("extract_to")
        if extract_to and (root / extract_to).is_dir():
            old = previous.get(key, {})
            entry.update(bytes=old.get("bytes"), sha256=old.get("sha256"), outcome="already unpacked",
                         extracted_to=str(root / extract_to))
            files[key] = entry
            continue
        files[key] = entry
        items.append(DownloadItem(url=url, dest=downloads / source["file"], sha256=source.get("sha256"),
                                  size=source.get("size"), key=key))
    report = download_many(items, workers=workers, progress=progress, desc=desc)
    failures: list[dict] = []
    for outcome in report.items:
        source, path = sources[outcome.key], Path(outcome.dest)
        if not outcome.ok:
            failures.append({"key": outcome.key, "file": source["file"], "url": outcome.url,
                             "http_status": outcome.http_status, "reason": outcome.reason})
            continue
        files[outcome.key].update(bytes=outcome.bytes, sha256=outcome.sha256, outcome=outcome.outcome)
        reason = None
        if source.get("md5"):
            actual = md5_file(path)
            files[outcome.key]["md5"] = actual
            if actual != source["md5"].lower():
                reason = f"md5 {actual} differs from the expected {source['md5']}"
        if reason is None and source.get("extract_to"):
            try:
                verify_archive(path)
            except DownloadError as exc:
                reason = str(exc)
        if reason is not None:
            path.unlink(missing_ok=True)
            failures.append({"key": outcome.key, "file": source["file"], "url": outcome.url,
                             "http_status": None, "reason": f"{reason} (the file was deleted)"})
    if failures:
        lines = "\n".join(f"  - {f['file']} from {f['url']}: {f['reason']}" for f in failures)
        raise DownloadError(
            f"{len(failures)} of {len(sources)} files for {root} failed, so nothing was unpacked:\n{lines}\n"
            "Rerun to fetch them again (files that arrived whole are kept); if a file keeps failing, "
            "download it by hand into " + str(downloads) + " under the name shown."
        )
    for key, source in sources.items():
        extract_to = source.get("extract_to")
        if not extract_to or files[key].get("outcome") == "already unpacked":
            files[key].setdefault("path", str(downloads / source["file"]))
            continue
        archive = downloads / source["file"]
        extract_archive(archive, root / extract_to)
        files[key]["extracted_to"] = str(root / extract_to)
        if not keep_archives:
            archive.unlink()
        files[key]["archive_kept"] = keep_archives
    record = {"root": str(root), "files": files, "failures": []}
    write_json(root / RECORD, record)
    return record


def read_record(root: Path) -> dict:
    """The download.json of an earlier run, or {}."""
    try:
        return json.loads((root / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             sources: dict[str, dict] | None = None, keep_archives: bool = False) -> dict:
    """Fetch the COCO 2017 train/val images and the train/val annotations; unpack them under `root`.

    About 20.4 GB are fetched (19.3 GB of train images); unpacking needs the same again while an
    archive and its folder coexist. `sources` replaces `SOURCES` (tests, mirrors).
    """
    return fetch_archives(Path(root), SOURCES if sources is None else sources, base_url=base_url,
                          workers=workers, progress=progress, keep_archives=keep_archives, desc="COCO 2017")


# ----------------------------------------------------------------------------------------- reading


def _image_set(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"COCO split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def annotation_path(root: Path, kind: str, split: str) -> Path:
    """`kind` is "captions" or "instances"."""
    name = f"{kind}_{_image_set(split)}.json"
    return Path(root) / SOURCES["annotations"]["extract_to"] / "annotations" / name


def image_dir(root: Path, split: str) -> Path:
    image_set = _image_set(split)
    key = "train_images" if image_set == "train2017" else "val_images"
    return Path(root) / SOURCES[key]["extract_to"] / image_set


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the COCO download (xsae.datasets.coco.download) first")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable COCO annotation file ({exc}); download it again") from exc


def _category_names(instances: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in sorted(instances["categories"], key=lambda c: c["id"])}


def samples(root: Path, split: str, *, captions: str = "joined") -> pd.DataFrame:
    """One row per image of the split (train → train2017, test → val2017), sorted by image id.

    `sample_id` is the 12-digit image id of the file name (`int(sample_id)` is COCO's image id).
    `caption`: the image's captions (usually 5), each with whitespace collapsed, in annotation-id order,
    joined with `CAPTION_JOINER` (a space), as the SPARC reference does. `labels`: the names of the
    instance categories present in the image, in category-id order ([] for the ~1% of images without
    instances); their supercategories come from `hierarchy`.

    `captions="each"` gives one row per (image, caption) instead, as image–text retrieval needs:
    `sample_id` is `<image id>_<annotation id>`, and rows of one image share its `image_path`.
    """
    if captions not in ("joined", "each"):
        raise ConfigError(f"COCO manifest option captions must be 'joined' or 'each', got {captions!r}")
    root = Path(root)
    caption_table = _load(annotation_path(root, "captions", split))
    instances = _load(annotation_path(root, "instances", split))
    names = _category_names(instances)
    texts: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ann in caption_table["annotations"]:
        texts[ann["image_id"]].append((ann["id"], " ".join(str(ann["caption"]).split())))
    present: dict[int, set[int]] = defaultdict(set)
    for ann in instances["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    folder = image_dir(root, split)
    rows = []
    for image in sorted(caption_table["images"], key=lambda im: im["id"]):
        image_id = image["id"]
        stem, path = Path(image["file_name"]).stem, str(folder / image["file_name"])
        labels = [names[c] for c in sorted(present.get(image_id, ()))]
        ordered = sorted(texts.get(image_id, ()))
        if captions == "each":
            rows += [{"sample_id": f"{stem}_{ann_id}", "image_path": path, "caption": text,
                      "labels": list(labels)} for ann_id, text in ordered]
        else:
            rows.append({"sample_id": stem, "image_path": path,
                         "caption": CAPTION_JOINER.join(text for _, text in ordered), "labels": labels})
    return pd.DataFrame(rows, columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path) -> dict[str, str | None]:
    """Category name → its supercategory; supercategory → None.

    A category named like its own supercategory ("person" in COCO) is one top-level label. A category
    named like a different supercategory would make the names ambiguous and raises DataError.
    """
    root = Path(root)
    path = annotation_path(root, "instances", "test")  # 25 MB instead of 450 MB; same categories
    if not path.is_file():
        path = annotation_path(root, "instances", "train")
    categories = _load(path)["categories"]
    tree: dict[str, str | None] = {}
    for cat in categories:
        tree[cat["name"]] = None if cat["name"] == cat["supercategory"] else cat["supercategory"]
    for cat in categories:
        parent = cat["supercategory"]
        if tree.get(parent) is not None:
            raise DataError(f"{path}: supercategory {parent!r} is also the name of a category with "
                            f"supercategory {tree[parent]!r}; the label names would be ambiguous")
        tree[parent] = None
    return tree


def instances(root: Path, split: str) -> dict[int, list[Instance]]:
    """Image id → its object instances from `instances_<set>.json`, in annotation-id order.

    Images without instances are absent (use `.get(image_id, [])`). Crowd regions (`iscrowd=1`) are
    included; their segmentation is a COCO RLE dict instead of a polygon list.
    """
    data = _load(annotation_path(Path(root), "instances", split))
    names = _category_names(data)
    out: dict[int, list[Instance]] = defaultdict(list)
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        out[ann["image_id"]].append(Instance(names[ann["category_id"]], ann["segmentation"],
                                             [float(v) for v in ann["bbox"]]))
    return dict(out)


__all__ = [
    "CAPTION_JOINER",
    "SOURCES",
    "SPLITS",
    "Instance",
    "annotation_path",
    "download",
    "fetch_archives",
    "hierarchy",
    "image_dir",
    "instances",
    "md5_file",
    "samples",
    "source_url",
]
