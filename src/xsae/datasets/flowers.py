"""Oxford-102 Flowers (Nilsback & Zisserman 2008) with the captions of Reed et al. (CVPR 2016).

Images, labels and the official split come from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/;
the ten captions per image from Reed et al.'s `cvpr2016_flowers.tar.gz`, whose `text_c10/` folder
holds `class_XXXXX/image_XXXXX.txt` with one caption per line. That archive has no stable host: the
authors share it on Google Drive (the default URL below, which may start answering with a virus-scan
or quota page instead of the file) and copies circulate on other hosts. Set another URL or a local
copy with `download(..., captions_url=...)` (config key `datasets.<name>.captions_url`); a local path
may be the archive itself or a folder containing `text_c10/`. Or put the archive by hand into
`<root>/downloads/cvpr2016_flowers.tar.gz`, where the next run picks it up.

Layout under `root`::

    downloads/imagelabels.mat, setid.mat     (kept) and the archives while they are fetched
    images/jpg/image_00001.jpg ...           8,189 JPEGs
    captions/.../text_c10/class_XXXXX/image_XXXXX.txt
    download.json
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from xsae.datasets.coco import RECORD, fetch_archives, read_record
from xsae.download import extract_archive, verify_archive
from xsae.errors import ConfigError, DataError, DownloadError
from xsae.io import atomic_path, sha256_path, write_json

_VGG = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"

#: Reed et al.'s archive on Google Drive (file id from their README; `confirm=t` skips the
#: "cannot scan for viruses" page). Its host varies, hence `captions_url`.
CAPTIONS_URL = ("https://drive.usercontent.google.com/download?id=0B0ywwgffWnLLcms2WWJQRFNSWXM"
                "&export=download&confirm=t&resourcekey=0-Av8zFbeDDvNcF1sSjDR32w")

#: The VGG site publishes neither checksums nor exact sizes ("330Mb"); `size` is the byte count its
#: server sends, `md5` the values torchvision pins for these files. Nothing is known in advance
#: about the captions archive: its sha256 is recorded.
SOURCES: dict[str, dict] = {
    "images": {"url": _VGG + "102flowers.tgz", "file": "102flowers.tgz", "size": 344_862_509,
               "sha256": None, "md5": "52808999861908f626f3c1f4e79d11fa", "extract_to": "images"},
    "labels": {"url": _VGG + "imagelabels.mat", "file": "imagelabels.mat", "size": 502,
               "sha256": None, "md5": "e0620be6f572b9609742df49c70aed4d"},
    "setid": {"url": _VGG + "setid.mat", "file": "setid.mat", "size": 14_989,
              "sha256": None, "md5": "a5357ecc9cb78c4bef273ce3793fc85c"},
    "captions": {"url": CAPTIONS_URL, "file": "cvpr2016_flowers.tar.gz", "size": None,
                 "sha256": None, "md5": None, "extract_to": "captions"},
}

#: Class names in label order (label 1 = index 0), as in the VGG site's category list and the
#: torchvision/CLIP lists (which spell a few differently: "globe flower", "pink and yellow dahlia",
#: "air plant" for ball moss). Names, not numbers, become the labels.
CLASS_NAMES: tuple[str, ...] = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle",
    "snapdragon", "colt's foot", "king protea", "spear thistle", "yellow iris",
    "globe-flower", "purple coneflower", "peruvian lily", "balloon flower", "giant white arum lily",
    "fire lily", "pincushion flower", "fritillary", "red ginger", "grape hyacinth",
    "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke", "sweet william",
    "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly",
    "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip", "lenten rose",
    "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue",
    "wallflower", "marigold", "buttercup", "oxeye daisy", "common dandelion",
    "petunia", "wild pansy", "primula", "sunflower", "pelargonium",
    "bishop of llandaff", "gaura", "geranium", "orange dahlia", "pink-yellow dahlia",
    "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush", "californian poppy",
    "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy",
    "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium",
    "frangipani", "clematis", "hibiscus", "columbine", "desert-rose",
    "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily",
    "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea",
    "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
)

#: Our split → the setid.mat arrays it is made of. The official protocol trains on trn and tunes
#: on val (10 images per class each); we have no tuning step, so both are training data.
SPLITS = {"train": ("trnid", "valid"), "test": ("tstid",)}

_TEXT_NAME = re.compile(r"image_(\d{5})\.txt")
_CLASS_DIR = re.compile(r"class_(\d{5})")


def _provided_captions(root: Path, local: Path) -> dict:
    """Install captions from a local archive or a folder holding `text_c10/`."""
    target = root / SOURCES["captions"]["extract_to"]
    if local.is_dir():
        if not _find_text_dir(local, must=False):
            raise DownloadError(f"captions_url={local}: no text_c10 folder inside; point it at the "
                                "unpacked cvpr2016_flowers folder or at cvpr2016_flowers.tar.gz")
        with atomic_path(target, directory=True) as tmp:
            shutil.copytree(_find_text_dir(local), tmp / "text_c10")
    elif local.is_file():
        verify_archive(local)
        extract_archive(local, target)
    else:
        raise DownloadError(f"captions_url={local}: no such file or folder")
    return {"file": local.name, "url": str(local), "published_size": None, "outcome": "provided",
            "bytes": local.stat().st_size if local.is_file() else None,
            "sha256": sha256_path(local), "extracted_to": str(target)}


def download(root: Path, *, base_url: str | None = None, workers: int = 8, progress: bool = True,
             captions_url: str | None = None, sources: dict[str, dict] | None = None,
             keep_archives: bool = False) -> dict:
    """Fetch images, labels, split ids and captions (about 330 MB + the captions archive).

    `base_url` serves every file by its name (102flowers.tgz, imagelabels.mat, setid.mat,
    cvpr2016_flowers.tar.gz). `captions_url` replaces the captions source only: a URL, or a local
    archive or folder containing `text_c10/`. If the captions host answers with a web page instead of
    the archive, the DownloadError says where to put a copy fetched by hand.
    """
    root = Path(root)
    sources = dict(SOURCES if sources is None else sources)
    provided = None
    if captions_url and not re.match(r"[a-z][a-z0-9+.-]*://", captions_url):
        provided = Path(captions_url).expanduser()
        installed = (root / sources.pop("captions")["extract_to"]).is_dir()
        earlier = read_record(root).get("files", {}).get("captions") if installed else None
    elif captions_url:  # an explicit captions URL wins over base_url
        sources["captions"] = {**sources["captions"], "url": captions_url, "own_host": True}
    try:
        record = fetch_archives(root, sources, base_url=base_url, workers=workers, progress=progress,
                                keep_archives=keep_archives, desc="Oxford-102 Flowers")
    except DownloadError as exc:
        if "cvpr2016_flowers" in str(exc):
            raise DownloadError(
                f"{exc}\nThe captions archive (Reed et al., cvpr2016_flowers.tar.gz) has no stable host: "
                "fetch it by hand (https://github.com/reedscot/cvpr2016 links it) and either put it at "
                f"{root / 'downloads' / 'cvpr2016_flowers.tar.gz'} or set datasets.<name>.captions_url to "
                "its path or to another URL."
            ) from exc
        raise
    if provided is not None:
        record["files"]["captions"] = earlier or _provided_captions(root, provided)
        write_json(root / RECORD, record)
    return record


# ----------------------------------------------------------------------------------------- reading


def _mat(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the Flowers download (xsae.datasets.flowers.download) first")
    try:
        data = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as exc:
        raise DataError(f"{path}: not a readable .mat file ({exc}); download it again") from exc
    if key not in data:
        names = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: no variable {key!r} (has {names})")
    return np.asarray(data[key]).astype(np.int64).ravel()


def image_labels(root: Path) -> np.ndarray:
    """Label (1..102) of image i+1 at index i, from imagelabels.mat."""
    labels = _mat(Path(root) / "downloads" / SOURCES["labels"]["file"], "labels")
    if labels.size and (labels.min() < 1 or labels.max() > len(CLASS_NAMES)):
        raise DataError(f"imagelabels.mat has labels outside 1..{len(CLASS_NAMES)}")
    return labels


def split_ids(root: Path, split: str) -> list[int]:
    """The 1-based image numbers of a split, sorted."""
    if split not in SPLITS:
        raise ConfigError(f"Flowers split must be one of {sorted(SPLITS)}, got {split!r}")
    path = Path(root) / "downloads" / SOURCES["setid"]["file"]
    return sorted({int(i) for key in SPLITS[split] for i in _mat(path, key)})


def _find_text_dir(folder: Path, must: bool = True) -> Path | None:
    for candidate in [folder / "text_c10", *sorted(folder.glob("*/text_c10")),
                      *sorted(folder.glob("*/*/text_c10"))]:
        if candidate.is_dir():
            return candidate
    if must:
        raise DataError(f"{folder}: no text_c10 folder; the captions archive is not the Reed et al. one "
                        "or was not unpacked; run the Flowers download again")
    return None


def caption_files(root: Path) -> dict[int, tuple[int, Path]]:
    """Image number → (class number of its folder, its caption file)."""
    text_dir = _find_text_dir(Path(root) / SOURCES["captions"]["extract_to"])
    out: dict[int, tuple[int, Path]] = {}
    for path in sorted(text_dir.glob("class_*/image_*.txt")):
        name, folder = _TEXT_NAME.fullmatch(path.name), _CLASS_DIR.fullmatch(path.parent.name)
        if name and folder:
            out[int(name.group(1))] = (int(folder.group(1)), path)
    return out


def first_caption(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if text := " ".join(line.split()):
                return text
    return ""


def samples(root: Path, split: str) -> pd.DataFrame:
    """One row per image: train = setid's trnid + valid (2,040 images), test = tstid (6,149).

    `sample_id` is the file stem (`image_00001`). `caption` is the first of the image's ten captions:
    the ten are interchangeable descriptions by different annotators, so a fixed pick is as good as any
    and keeps the caption one sentence long like the other datasets' (the ten joined run to ~150 CLIP
    tokens and would be cut at CLIP's 77). `labels` is [class name]. A caption file under a class
    folder other than the image's label means the archives do not belong together: DataError.
    """
    root = Path(root)
    labels = image_labels(root)
    texts = caption_files(root)
    folder = root / SOURCES["images"]["extract_to"] / "jpg"
    rows, missing = [], []
    for number in split_ids(root, split):
        if number > labels.size:
            raise DataError(f"setid.mat lists image {number}, but imagelabels.mat has {labels.size} labels")
        label = int(labels[number - 1])
        if number not in texts:
            missing.append(number)
            continue
        text_class, text_path = texts[number]
        if text_class != label:
            raise DataError(f"{text_path}: caption filed under class {text_class}, but imagelabels.mat "
                            f"gives image {number} label {label}")
        stem = f"image_{number:05d}"
        rows.append({"sample_id": stem, "image_path": str(folder / f"{stem}.jpg"),
                     "caption": first_caption(text_path), "labels": [CLASS_NAMES[label - 1]]})
    if missing:
        raise DataError(f"{len(missing)} images of the {split} split have no caption file in text_c10 "
                        f"(e.g. image_{missing[0]:05d}); the captions archive is incomplete")
    return pd.DataFrame(rows, columns=["sample_id", "image_path", "caption", "labels"])


def hierarchy(root: Path) -> dict[str, str | None]:
    """Flat: every class name is a top-level label."""
    return dict.fromkeys(CLASS_NAMES)


__all__ = ["CAPTIONS_URL", "CLASS_NAMES", "SOURCES", "SPLITS", "download", "hierarchy", "samples"]
