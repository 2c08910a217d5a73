"""ImageNet-1k (ILSVRC2012) validation set: 50,000 images of 1,000 WordNet classes, provided by hand.

ImageNet is only distributed to registered users, so nothing is downloaded: `download` checks a folder
the user provides (config key `datasets.<name>.provided`), and raises DownloadError with step-by-step
instructions (`INSTRUCTIONS`) when it is missing or incomplete. Accepted contents of that folder:

* images: the 50,000 `ILSVRC2012_val_XXXXXXXX.JPEG` directly in it, or in `val/`,
  `ILSVRC2012_img_val/` or Kaggle's `ILSVRC/Data/CLS-LOC/val/` (also sorted into one sub-folder per
  class), or the unopened `ILSVRC2012_img_val.tar` (unpacked into `<root>/val`);
* ground truth, either the devkit's `ILSVRC2012_validation_ground_truth.txt` + `meta.mat` (loose, in
  `data/`, in `ILSVRC2012_devkit_t12/data/`, or the unopened `ILSVRC2012_devkit_t12.tar.gz`), or
  Kaggle's `LOC_val_solution.csv` + `LOC_synset_mapping.txt` (or + `meta.mat`).

Images are used where they are (unless unpacked from the tar): the folder must stay in place.
`download` writes `<root>/val_index.csv` (sample_id, image_path, wnid), `<root>/classes.csv`
(wnid, words, label) and `<root>/download.json`; `samples` reads only those.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from xsae.datasets.coco import md5_file
from xsae.download import extract_archive, verify_archive
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import atomic_path, sha256_file, write_json

#: What image-net.org serves after login (https://image-net.org/challenges/LSVRC/2012/2012-downloads.php,
#: which lists the MD5s). Nothing here is fetched; the values check archives a user provides.
SOURCES: dict[str, dict] = {
    "val_images": {"url": "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
                   "file": "ILSVRC2012_img_val.tar", "size": 6_744_924_160, "sha256": None,
                   "md5": "29b22e2961454d5413ddabcf34fc5622", "login_required": True},
    "devkit": {"url": "https://image-net.org/data/ILSVRC/2012/ILSVRC2012_devkit_t12.tar.gz",
               "file": "ILSVRC2012_devkit_t12.tar.gz", "size": None, "sha256": None,
               "md5": "fa75699e90414af021442c21a62c3abf", "login_required": True},
}

VAL_IMAGES = 50_000
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
#: ImageNet has no captions; the text of a sample is CLIP's zero-shot prompt with its class name
#: (so text features on ImageNet encode the label, nothing more).
CAPTION_TEMPLATE = "a photo of a {name}."
COLUMNS = ["sample_id", "image_path", "caption", "labels"]

_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
_IMAGE_DIRS = ("", "val", "ILSVRC2012_img_val", "ILSVRC/Data/CLS-LOC/val")
_TRUTH_DIRS = ("", "data", "ILSVRC2012_devkit_t12/data", "devkit", "LOC")

INSTRUCTIONS = """\
ImageNet-1k (ILSVRC2012) cannot be downloaded without an account; provide its validation set by hand:
  1. Create an account at https://image-net.org/signup.php (approval can take days), log in and
     accept the terms of access (non-commercial research and education only).
  2. From https://image-net.org/challenges/LSVRC/2012/2012-downloads.php download
       - "Validation images (all tasks)": ILSVRC2012_img_val.tar
         (6,744,924,160 bytes, MD5 29b22e2961454d5413ddabcf34fc5622), and
       - "Development kit (Task 1 & 2)": ILSVRC2012_devkit_t12.tar.gz
         (about 2.5 MB, MD5 fa75699e90414af021442c21a62c3abf).
     Alternative source: the Kaggle competition
     https://www.kaggle.com/competitions/imagenet-object-localization-challenge/data
     (its ILSVRC/Data/CLS-LOC/val/ folder, LOC_val_solution.csv and LOC_synset_mapping.txt).
  3. Put them into one folder: either the two archives as they are, or unpacked, i.e. the 50,000
     files ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG (in the folder or in val/)
     together with ILSVRC2012_validation_ground_truth.txt and meta.mat from the devkit's data/ folder
     (or Kaggle's LOC_val_solution.csv and LOC_synset_mapping.txt).
  4. Set {key}: /path/to/that/folder in your config file (config/config.yaml) and rerun.
     The images are read from that folder, so leave it in place."""


def instructions(name: str | None = None) -> str:
    return INSTRUCTIONS.format(key=config_key(name))


def config_key(name: str | None = None) -> str:
    return f"datasets.{name or '<name>'}.provided"


def _fail(problem: str, name: str | None) -> DownloadError:
    return DownloadError(f"{problem}\n{instructions(name)}")


# ------------------------------------------------------------------------------------- class names


def label_names(words: dict[str, str]) -> dict[str, str]:
    """WNID → label name: the first synonym of its words ("tench, Tinca tinca" → "tench"); names that
    several classes share ("crane" the bird and the machine, "maillot") get their WNID appended,
    "crane (n02012849)", so every label name is unique."""
    first = {wnid: text.split(",")[0].strip() for wnid, text in words.items()}
    counts: dict[str, int] = {}
    for name in first.values():
        counts[name] = counts.get(name, 0) + 1
    return {wnid: name if counts[name] == 1 else f"{name} ({wnid})" for wnid, name in first.items()}


def read_meta(path: Path) -> tuple[dict[int, str], dict[str, str]]:
    """(ILSVRC2012_ID → WNID, WNID → words) of the 1,000 leaf synsets (the classes) in meta.mat."""
    try:
        synsets = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True)["synsets"]).ravel()
        ids = [int(v) for v in synsets["ILSVRC2012_ID"]]
        wnids = [str(v) for v in synsets["WNID"]]
        words = [str(v) for v in synsets["words"]]
        children = [int(v) for v in synsets["num_children"]]
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"{path}: not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, "
                        f"WNID, words, num_children): {exc}") from exc
    leaves = [i for i, n in enumerate(children) if n == 0]
    return {ids[i]: wnids[i] for i in leaves}, {wnids[i]: words[i] for i in leaves}


def read_synset_mapping(path: Path) -> dict[str, str]:
    """Kaggle's LOC_synset_mapping.txt: `n01440764 tench, Tinca tinca` per line."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            out[wnid] = words.strip()
    return out


# ----------------------------------------------------------------------------------- ground truth


def _first(folder: Path, dirs: tuple[str, ...], name: str) -> Path | None:
    for sub in dirs:
        if (candidate := folder / sub / name).is_file():
            return candidate
    return None


def _ground_truth(folders: list[Path]) -> tuple[dict[str, str], dict[str, str], list[Path]]:
    """(image stem → WNID, WNID → words, files used) from the devkit or the Kaggle files, or DataError."""
    def find(name: str) -> Path | None:
        return next((p for folder in folders if (p := _first(folder, _TRUTH_DIRS, name))), None)

    meta, truth = find(META), find(GROUND_TRUTH)
    if truth is not None and meta is not None:
        id_to_wnid, words = read_meta(meta)
        lines = [line.strip() for line in truth.read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = {}
        for number, value in enumerate(lines, start=1):
            if not value.isdigit() or int(value) not in id_to_wnid:
                raise DataError(f"{truth}, line {number}: {value!r} is not an ILSVRC2012_ID of {meta}")
            labels[f"ILSVRC2012_val_{number:08d}"] = id_to_wnid[int(value)]
        return labels, words, [truth, meta]
    solution = find(KAGGLE_SOLUTION)
    mapping = find(KAGGLE_SYNSETS)
    if solution is not None and (mapping is not None or meta is not None):
        words = read_synset_mapping(mapping) if mapping is not None else read_meta(meta)[1]
        labels = {}
        with open(solution, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                tokens = (row.get("PredictionString") or "").split()
                if not tokens or tokens[0] not in words:
                    raise DataError(f"{solution}: image {row.get('ImageId')!r} has no known WNID")
                labels[row["ImageId"]] = tokens[0]
        return labels, words, [solution, mapping if mapping is not None else meta]
    found = [str(p) for p in (meta, truth, solution, mapping) if p is not None]
    raise DataError("no ground truth: need ILSVRC2012_validation_ground_truth.txt + meta.mat (devkit) or "
                    "LOC_val_solution.csv + LOC_synset_mapping.txt (Kaggle)"
                    + (f"; found only {', '.join(found)}" if found else ""))


def _find_images(folder: Path) -> tuple[Path, dict[str, Path]]:
    """(the folder, image stem → path) for the first accepted image folder that holds any images."""
    for sub in _IMAGE_DIRS:
        base = folder / sub
        if not base.is_dir():
            continue
        found = {p.stem: p for pattern in ("ILSVRC2012_val_*.JPEG", "*/ILSVRC2012_val_*.JPEG")
                 for p in base.glob(pattern) if _IMAGE.fullmatch(p.name)}
        if found:
            return base, found
    return folder, {}


def _unpack_provided(archive: Path, target: Path, expected: dict, name: str | None) -> dict:
    """Check a provided archive (size, md5 where known, readable to its end) and unpack it."""
    size = archive.stat().st_size
    if expected.get("size") is not None and size != expected["size"]:
        raise _fail(f"{archive} has {size} bytes, expected {expected['size']}: incomplete download?", name)
    digest = md5_file(archive)
    if expected.get("md5") and digest != expected["md5"]:
        raise _fail(f"{archive}: MD5 {digest}, expected {expected['md5']}: corrupt download?", name)
    verify_archive(archive)
    extract_archive(archive, target)
    return {"path": str(archive), "bytes": size, "md5": digest, "sha256": sha256_file(archive),
            "extracted_to": str(target)}


# ----------------------------------------------------------------------------------------- download


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             provided: str | None = None, name: str | None = None,
             expected_images: int | None = VAL_IMAGES, sources: dict[str, dict] | None = None) -> dict:
    """Check the user-provided ImageNet val folder and index it under `root`; nothing is fetched.

    `base_url`, `workers` and `progress` exist for the uniform interface and are unused. `name` is the
    dataset's name in the config, used in the messages. Raises DownloadError, with `INSTRUCTIONS`, when
    `provided` is unset or not a folder, when the ground truth is missing or does not list
    `expected_images` images (None: any number), or when images it lists are missing. Provided
    archives are checked against `sources` (default `SOURCES`: size and MD5) before they are unpacked.
    """
    root = Path(root)
    sources = SOURCES if sources is None else sources
    if not provided:
        raise _fail(f"{config_key(name)} is not set, and ImageNet cannot be fetched automatically.", name)
    folder = Path(provided).expanduser()
    if not folder.is_dir():
        raise _fail(f"{config_key(name)}={provided}: no such folder.", name)
    record: dict = {"dataset": "imagenet-1k val", "provided": str(folder.resolve()), "files": {},
                    "failures": []}
    devkit_dir = root / "devkit"
    devkit_tar = folder / sources["devkit"]["file"]
    if devkit_tar.is_file() and not devkit_dir.is_dir():
        record["files"]["devkit"] = _unpack_provided(devkit_tar, devkit_dir, sources["devkit"], name)
    searched = [folder, *sorted(devkit_dir.glob("*"))] if devkit_dir.is_dir() else [folder]
    try:
        truth, words, truth_files = _ground_truth(searched)
    except DataError as exc:
        raise _fail(f"{config_key(name)}={provided}: {exc}.", name) from exc
    for path in truth_files:
        record["files"][path.name] = {"path": str(path), "bytes": path.stat().st_size,
                                      "sha256": sha256_file(path)}
    if expected_images is not None and len(truth) != expected_images:
        raise _fail(f"{truth_files[0]} lists {len(truth)} images, not the {expected_images:,} of the "
                    "ILSVRC2012 validation set: a truncated or different file.", name)
    images_dir, images = _find_images(folder)
    val_tar = folder / sources["val_images"]["file"]
    if not images and (root / "val").is_dir():
        images_dir, images = _find_images(root)
    elif not images and val_tar.is_file():
        record["files"]["val_images"] = _unpack_provided(val_tar, root / "val", sources["val_images"], name)
        images_dir, images = _find_images(root)
    missing = sorted(set(truth) - set(images))
    if missing:
        shown = ", ".join(f"{m}.JPEG" for m in missing[:3])
        raise _fail(f"{config_key(name)}={provided}: {len(missing):,} of the {len(truth):,} validation "
                    f"images listed in {truth_files[0].name} are missing (e.g. {shown}); "
                    f"found {len(set(truth) & set(images)):,}.", name)
    labels = label_names(words)
    listing = hashlib.sha256()
    total = 0
    with atomic_path(root / "val_index.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "image_path", "wnid"])
        for stem in sorted(truth):
            size = images[stem].stat().st_size
            total += size
            listing.update(f"{stem}\0{size}\n".encode())
            writer.writerow([stem, str(images[stem].resolve()), truth[stem]])
    with atomic_path(root / "classes.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["wnid", "words", "label"])
        for wnid in sorted(words):
            writer.writerow([wnid, words[wnid], labels[wnid]])
    record.update(n_images=len(truth), n_classes=len(set(truth.values())), image_bytes=total,
                  images_dir=str(images_dir.resolve()),
                  listing_sha256=listing.hexdigest(), ground_truth=[p.name for p in truth_files])
    write_json(root / "download.json", record)
    return record


# ----------------------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the ImageNet check (xsae.datasets.imagenet.download) with "
                        f"{config_key()} set first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def classes(root: Path) -> pd.DataFrame:
    """wnid, words (meta.mat's synonyms) and label (the name used in `labels`), one row per class."""
    return _read_csv(Path(root) / "classes.csv")


def samples(root: Path, split: str, *, caption_template: str = CAPTION_TEMPLATE) -> pd.DataFrame:
    """test: the 50,000 val images, sorted by number; train: an empty table with the same columns
    (the 1.28M-image ImageNet train set, 138 GB, is not used).

    `sample_id` is the file stem (`ILSVRC2012_val_00000001`), `labels` is [label name] (see
    `label_names`), `caption` the `caption_template` filled with the label's first synonym.
    """
    if split == "train":
        return pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})
    if split != "test":
        raise ConfigError(f"ImageNet split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    index = _read_csv(root / "val_index.csv")
    table = classes(root).set_index("wnid")
    unknown = sorted(set(index["wnid"]) - set(table.index))
    if unknown:
        raise DataError(f"{root / 'val_index.csv'}: WNIDs missing from classes.csv: {unknown[:5]}")
    label = table["label"].to_dict()
    short = {wnid: words.split(",")[0].strip() for wnid, words in table["words"].items()}
    return pd.DataFrame({
        "sample_id": index["sample_id"],
        "image_path": index["image_path"],
        "caption": [caption_template.format(name=short[w]) for w in index["wnid"]],
        "labels": [[label[w]] for w in index["wnid"]],
    }, columns=COLUMNS)


def hierarchy(root: Path) -> dict[str, str | None]:
    """Flat: every class label (from classes.csv) is top level."""
    return dict.fromkeys(classes(root)["label"])


__all__ = [
    "CAPTION_TEMPLATE",
    "INSTRUCTIONS",
    "SOURCES",
    "VAL_IMAGES",
    "classes",
    "config_key",
    "download",
    "hierarchy",
    "instructions",
    "label_names",
    "samples",
]
