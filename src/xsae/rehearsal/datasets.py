"""The paper's datasets in miniature, in their published file formats, and the loopback server that
serves them.

The rehearsal of `config/paper.yaml` must run every download and manifest rule for real: fetch over
HTTP, verify checksums, unpack archives, parse the published annotation formats. So each source is
rebuilt small (60–120 samples per split, a few MB in all) with the same files, names and layouts as
the real one, and served from 127.0.0.1:

* Open Images V7: class descriptions CSV, the nested hierarchy JSON, image lists and human image
  labels (CSV), Localized Narratives (JSONL), one JPEG per image id under `{split}/`;
* COCO 2017: `train2017.zip`, `val2017.zip` and `annotations_trainval2017.zip` with the instances
  (polygons that outline the drawn objects, one crowd RLE) and five captions per image;
* LAION subset (Parquet) and CC-3M (header-less TSVs): URL lists whose URLs point at images on the
  same server, a few of them dead or an HTML page, as real lists are;
* Oxford-102 Flowers: `102flowers.tgz`, `imagelabels.mat`, `setid.mat` and Reed et al.'s caption
  archive; ImageNet val: a folder provided by hand in the devkit layout, whose `meta.mat` lists the
  1,000 real ILSVRC2012 synsets (so CLIP's curated class names resolve) while images use a handful.

Images are small drawings whose shape, colour and texture follow the sample's labels (shape: the
top-level class, colour: the leaf, texture: the depth), so encoders can tell the classes apart, and
every caption names them. Everything is a function of the seed: the same seed gives the same bytes
(archives carry fixed timestamps, `.mat` files a fixed header).

`build_miniatures` writes the files, `serve` serves them, `dataset_overrides` gives the rehearsal
config's dataset entries (base URLs, checksums of the archives, the provided folder). The builders of
single files (`coco_archives`, `flowers_files`, `open_images_files`, ...) are public because the
dataset tests build their hand-written fixtures with them.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import math
import mimetypes
import re
import tarfile
import threading
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import scipy.io
from PIL import Image, ImageDraw

from xsae.errors import ConfigError, DataError
from xsae.io import atomic_path

#: Every label a miniature uses is on at least this many manifest rows of each split it has (the
#: rehearsal's `evaluation.probe_min_positives` must not exceed it, or probe tables lose tasks).
MIN_POSITIVES = 8
#: Side of every drawn image, in pixels.
IMAGE_SIZE = 64
#: URL lists name their images by absolute URL, so they are built for one server address: serving on
#: this port (`serve(root, DEFAULT_PORT)`) keeps the miniatures' bytes the same from run to run.
DEFAULT_PORT = 8765
DEFAULT_BASE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: Downloads in parallel per dataset in the rehearsal.
WORKERS = 4
COCO_CAPTIONS = 5
FLOWERS_CAPTIONS = 10
#: LAION and hub_image_text miniatures hold nothing out, as the paper config's LAION and Flowers (the
#: authors train and compare on all pairs): both splits are every row.
LAION_TEST_FRACTION = 0.0
HUB_TEST_FRACTION = 0.0
URL_LIST_SHARD_SIZE = 32
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


# ================================================================================ loopback server


@dataclass(frozen=True)
class Fault:
    """What a scripted route does to one request instead of answering it normally."""

    status: int | None = None  # answer this status with a short text body
    headers: Mapping[str, str] = field(default_factory=dict)
    truncate: bool = False  # send the full answer's headers, half its body, then close


@dataclass
class Route:
    """How one path answers. Subclasses script flaky sources by overriding `fault`."""

    body: bytes = b""
    status: int = 200  # a status other than 200 (404, 403, ...) is answered every time
    ranges: bool = True  # honour Range; False answers 200 with the whole body every time
    etag: str | None = None
    content_type: str = "application/octet-stream"
    hits: int = 0

    def fault(self, hit: int) -> Fault | None:
        """The fault of the request numbered `hit` (0-based) on this route, or None."""
        return None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    method: str = "GET"


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class LoopbackServer:
    """HTTP/1.1 on 127.0.0.1 in a daemon thread: registered routes first, then files under `folder`.

    Files are read at each request, so a file changed on disk is served changed. GET and HEAD, single
    byte ranges (with If-Range against the ETag) and keep-alive are supported, as the downloader uses
    them; every request is recorded in `seen`. Use as a context manager, or call `close`.
    """

    def __init__(self, folder: str | Path | None = None, *, port: int = 0,
                 route_class: type[Route] = Route) -> None:
        self.folder = Path(folder).resolve() if folder is not None else None
        self.host = "127.0.0.1"
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.route_class = route_class
        self._httpd = ThreadingHTTPServer((self.host, port), _handler(self))
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> LoopbackServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", **kwargs: Any) -> str:
        """Register a route (`kwargs` are fields of `route_class`); returns its URL."""
        self.routes[path] = self.route_class(body=body, **kwargs)
        return self.url(path)

    def publish(self, prefix: str, files: Mapping[str, bytes]) -> str:
        """Register `files` (name → body) under `prefix`; returns the base URL that serves them by name."""
        for name, body in files.items():
            self.add(f"{prefix}/{name}", body)
        return self.url(prefix)

    def requests_for(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def file_route(self, raw_path: str) -> Route | None:
        """The file under `folder` that a request path names (query ignored), or None."""
        if self.folder is None:
            return None
        relative = unquote(urlsplit(raw_path).path).lstrip("/")
        path = (self.folder / relative).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            return None
        body = path.read_bytes()
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Route(body=body, etag=f'"{hashlib.sha256(body).hexdigest()[:20]}"', content_type=kind)


def serve(folder: str | Path, port: int = 0) -> LoopbackServer:
    """Serve the files under `folder` on 127.0.0.1 (`port` 0: any free port), started."""
    return LoopbackServer(folder, port=port).start()


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 5  # idle keep-alive connections end on their own

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _plain(self, status: int, extra: Mapping[str, str] | None = None) -> None:
            body = f"status {status}\n".encode()
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _span(self, route: Route, total: int) -> tuple[int, int] | bool | None:
            """(first, last) byte of a satisfiable Range, None for the whole body, False if unsatisfiable."""
            wanted = _RANGE.fullmatch(self.headers.get("Range", "").strip())
            if not route.ranges or wanted is None:
                return None
            validator = self.headers.get("If-Range")
            if validator is not None and validator != route.etag:
                return None
            first, last = wanted.groups()
            if not first and not last:
                return None
            if not first:  # suffix: the last N bytes
                return (max(total - int(last), 0), total - 1) if total and int(last) else False
            start = int(first)
            if start >= total:
                return False
            return start, min(int(last), total - 1) if last else total - 1

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            with server.lock:
                server.seen.append(Seen(self.path, dict(self.headers.items()), self.command))
                route = server.routes.get(self.path)
                hit = route.hits if route else 0
                if route is not None:
                    route.hits += 1
            if route is None:
                route = server.file_route(self.path)
            if route is None or route.status != 200:
                self._plain(404 if route is None else route.status)
                return
            fault = route.fault(hit)
            if fault is not None and fault.status is not None:
                self._plain(fault.status, fault.headers)
                return
            body = route.body
            span = self._span(route, len(body))
            if span is False:
                self._plain(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            first, last = span if isinstance(span, tuple) else (0, len(body) - 1)
            payload = body[first:last + 1]
            self.send_response(206 if span else 200)
            if span:
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            if route.etag:
                self.send_header("ETag", route.etag)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault is not None and fault.truncate:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


# ================================================================================== file formats


def encode_image(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def solid_image(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6), format: str = "JPEG") -> bytes:
    """A one-colour image: the smallest real image file, for tests that only need one to exist."""
    return encode_image(Image.new("RGB", size, colour), format)


def zip_bytes(members: Mapping[str, bytes], *, store: Sequence[str] = (".jpg", ".jpeg", ".png")) -> bytes:
    """A zip with fixed timestamps (same members → same bytes); folders get their own entries, and
    already compressed members (`store` suffixes) are stored, as COCO's archives do."""
    buffer = io.BytesIO()
    folders = sorted({name[: i + 1] for name in members for i, c in enumerate(name) if c == "/"})
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in folders:
            info = zipfile.ZipInfo(folder, date_time=_FIXED_TIME)
            info.external_attr = (0o40755 << 16) | 0x10
            archive.writestr(info, b"")
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            stored = name.lower().endswith(tuple(store))
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_bytes(members: Mapping[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar (gzipped for "w:gz") with fixed times and owners, so the same members give the same bytes."""
    if mode not in ("w", "w:gz"):
        raise ValueError(f"mode must be 'w' or 'w:gz', got {mode!r}")
    buffer = io.BytesIO()
    folders = sorted({name[:i] for name in members for i, c in enumerate(name) if c == "/"})
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if mode == "w:gz" else data


def mat_bytes(**arrays: Any) -> bytes:
    """A MATLAB 5 .mat file (scipy.io.savemat) whose header carries a fixed date instead of the time."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, arrays, do_compression=True)
    data = buffer.getvalue()
    header = b"MATLAB 5.0 MAT-file Platform: posix, Created on: Thu Jan  1 00:00:00 1970".ljust(116, b"\0")
    return header + data[116:]


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------ Open Images

OPEN_IMAGES_LIST_COLUMNS = ("ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
                            "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
                            "Thumbnail300KURL", "Rotation")
OPEN_IMAGES_LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")


def open_images_image_list(ids: Sequence[str], subset: str) -> bytes:
    """An `*-images-*with-rotation.csv` body: one row per image id, the published columns."""
    rows = [[i, subset, f"https://c{n % 8 + 1}.staticflickr.com/{n % 9 + 1}/{i}_o.jpg",
             f"https://www.flickr.com/photos/{n}", "https://creativecommons.org/licenses/by/2.0/",
             f"https://www.flickr.com/people/{n}", f"photographer {n}", f"image {i}",
             str(40_000 + 97 * n), hashlib.md5(i.encode(), usedforsecurity=False).hexdigest(), "", "0.0"]
            for n, i in enumerate(ids)]
    return csv_bytes(OPEN_IMAGES_LIST_COLUMNS, rows)


def narratives_jsonl(entries: Sequence[tuple[str, str]], dataset_id: str) -> bytes:
    """A Localized Narratives JSONL body: one record per (image id, caption), with the published fields
    (a word-level `timed_caption` and a short mouse trace)."""
    lines = []
    for n, (image_id, caption) in enumerate(entries):
        words = caption.split()
        timed = [{"utterance": word, "start_time": round(0.4 * k, 1), "end_time": round(0.4 * k + 0.3, 1)}
                 for k, word in enumerate(words)]
        trace = [{"x": round(0.1 + 0.2 * k, 3), "y": round(0.5 - 0.1 * k, 3), "t": round(0.05 * k, 3)}
                 for k in range(3)]
        lines.append(json.dumps({"dataset_id": dataset_id, "image_id": image_id, "annotator_id": 90 + n,
                                 "caption": caption, "timed_caption": timed, "traces": [trace],
                                 "voice_recording": f"{dataset_id}/{image_id}_{90 + n}.ogg"}))
    return ("\n".join(lines) + "\n").encode()


def open_images_files(classes: Sequence[tuple[str, str]], hierarchy: Mapping[str, Any],
                      splits: Mapping[str, Mapping[str, Any]]) -> dict[str, bytes]:
    """The annotation files of an Open Images mirror, keyed by their published file names.

    `classes`: (MID, display name); `hierarchy`: the nested `Subcategory` JSON; `splits`: split →
    {"image_ids": [...], "labels": [(ImageID, Source, MID, Confidence)], "narratives": [(image id,
    caption)], "dataset_id": LN's dataset id}.
    """
    from xsae.datasets import openimages

    files = {openimages.SOURCES["classes"]["file"]: csv_bytes(["LabelName", "DisplayName"], classes),
             openimages.SOURCES["hierarchy"]["file"]: json.dumps(hierarchy).encode()}
    for split, content in splits.items():
        names = {kind: openimages.SOURCES[split][kind]["file"]
                 for kind in ("image_list", "labels", "narratives")}
        files[names["image_list"]] = open_images_image_list(content["image_ids"], split)
        files[names["labels"]] = csv_bytes(OPEN_IMAGES_LABEL_COLUMNS, content["labels"])
        files[names["narratives"]] = narratives_jsonl(content["narratives"],
                                                      content.get("dataset_id", f"open_images_{split}"))
    return files


# ------------------------------------------------------------------------------------------- COCO


def coco_archives(images: Mapping[str, Mapping[str, bytes]],
                  annotations: Mapping[str, Any]) -> dict[str, bytes]:
    """COCO 2017's three zips: `images` is image set ("train2017", "val2017") → file name → JPEG;
    `annotations` is JSON name ("instances_val2017", ...) → its content."""
    from xsae.datasets import coco

    files = {}
    for key, image_set in (("train_images", "train2017"), ("val_images", "val2017")):
        files[coco.SOURCES[key]["file"]] = zip_bytes(
            {f"{image_set}/{name}": data for name, data in images.get(image_set, {}).items()})
    files[coco.SOURCES["annotations"]["file"]] = zip_bytes(
        {f"annotations/{name}.json": json_bytes(data) for name, data in annotations.items()})
    return files


# ---------------------------------------------------------------------------------------- Flowers


def flowers_files(images: Mapping[int, bytes], labels: Sequence[int], setid: Mapping[str, Sequence[int]],
                  captions: Mapping[int, Sequence[str]], *,
                  extra_caption_files: Mapping[str, bytes] | None = None,
                  captions_body: bytes | None = None) -> dict[str, bytes]:
    """Oxford-102 Flowers' four files: images (number → JPEG) in `102flowers.tgz`, `imagelabels.mat`
    (label of image i+1 at index i), `setid.mat` (trnid, valid, tstid) and Reed et al.'s
    `cvpr2016_flowers.tar.gz` (captions filed under each image's class). `captions_body` replaces the
    captions archive (e.g. a web page where the archive should be)."""
    texts = {f"cvpr2016_flowers/text_c10/class_{labels[n - 1]:05d}/image_{n:05d}.txt":
             "".join(f"{line}\n" for line in lines).encode() for n, lines in captions.items()}
    texts.update({f"cvpr2016_flowers/{name}": data for name, data in (extra_caption_files or {}).items()})
    return {
        "102flowers.tgz": tar_bytes({f"jpg/image_{n:05d}.jpg": data for n, data in images.items()}),
        "imagelabels.mat": mat_bytes(labels=np.array([list(labels)], dtype=np.uint8)),
        "setid.mat": mat_bytes(**{key: np.array([list(ids)], dtype=np.uint16) for key, ids in setid.items()}),
        "cvpr2016_flowers.tar.gz": captions_body if captions_body is not None else tar_bytes(texts),
    }


# ------------------------------------------------------------------------------ Hub image–text

#: The repository a rehearsal's hub_image_text datasets name (the served files live under it).
REHEARSAL_HUB_REPO = "rehearsal/image-captions"
#: Rows of a hub_image_text miniature, in two Parquet files (as the Hub's conversion shards them).
_HUB_ROWS = (20, 16)


def _build_hub(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    """The Hub's Parquet conversion of an image–caption dataset: a listing of Parquet URLs and the
    files, whose `image` cells are `{bytes, path}` as the `datasets` Image feature stores them."""
    from xsae.datasets import hub
    from xsae.datasets.urllists import in_split

    looks = assign_looks(FLOWERS_CLASSES)
    url = f"{base_url.rstrip('/')}/{name}"
    files, urls = {}, []
    for number, count in enumerate(_HUB_ROWS):
        cells, texts = [], []
        for _ in range(count):
            flower = FLOWERS_CLASSES[int(rng.integers(len(FLOWERS_CLASSES)))]
            look = looks[flower]
            image, background, _ = draw_image([look], rng)
            cells.append({"bytes": encode_image(image), "path": None})
            texts.append(_FLOWERS_TEXT[int(rng.integers(len(_FLOWERS_TEXT)))].format(
                name=flower, colour=look.colour, shape=look.shape, texture=look.texture, bg=background))
        buffer = io.BytesIO()
        pd.DataFrame({"image": cells, "text": texts}).to_parquet(buffer, index=False)
        files[f"files/{number:04d}.parquet"] = buffer.getvalue()
        urls.append(f"{url}/files/{number:04d}.parquet")
    listing = hub.listing_url(url, {"repo": REHEARSAL_HUB_REPO, "config": "default", "split": "train"})
    files[listing.removeprefix(url + "/")] = json.dumps(urls).encode()
    write_files(folder, files)
    rows = {split: sum(in_split(row, HUB_TEST_FRACTION, split) for row in range(sum(_HUB_ROWS)))
            for split in ("train", "test")}
    return Miniature(name, "hub_image_text", folder, rows, {"train": {}, "test": {}}, ())


# --------------------------------------------------------------------------------------- ImageNet


def imagenet_meta_mat(synsets: Sequence[tuple[int, str, str, int]], glosses: Mapping[str, str] | None = None
                      ) -> bytes:
    """The devkit's `meta.mat`: a `synsets` struct array of (ILSVRC2012_ID, WNID, words, num_children)."""
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
             ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    table = np.zeros((len(synsets), 1), dtype=dtype)
    leaf_ids = [ident for ident, _, _, children in synsets if children == 0]
    for row, (ident, wnid, words, children) in enumerate(synsets):
        kids = np.array(leaf_ids[:children], dtype=np.int16) if children else np.zeros((1, 0))
        table[row, 0] = (ident, wnid, words, (glosses or {}).get(wnid, "a gloss"), children, kids,
                         1 if children else 0, 0 if children else 1300)
    return mat_bytes(synsets=table)


def imagenet_val_files(images: Sequence[bytes], truth: Sequence[int],
                       synsets: Sequence[tuple[int, str, str, int]], *,
                       glosses: Mapping[str, str] | None = None, meta: bytes | None = None,
                       devkit: str = "ILSVRC2012_devkit_t12/data") -> dict[str, bytes]:
    """An ImageNet val folder as a user provides it: `val/ILSVRC2012_val_*.JPEG` and, in `devkit`, the
    ground truth (one ILSVRC2012_ID per image, in image order) and `meta.mat` (`meta`: already made)."""
    files = {f"val/ILSVRC2012_val_{n:08d}.JPEG": data for n, data in enumerate(images, start=1)}
    files[f"{devkit}/meta.mat"] = meta if meta is not None else imagenet_meta_mat(synsets, glosses)
    files[f"{devkit}/ILSVRC2012_validation_ground_truth.txt"] = "".join(f"{v}\n" for v in truth).encode()
    return files


# -------------------------------------------------------------------------------------- URL lists

LAION_COLUMNS = ("SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW", "similarity")


def laion_parquet(rows: Sequence[Sequence[Any]], columns: Sequence[str] = LAION_COLUMNS) -> bytes:
    """The LAION subset's list as the Hub's Parquet conversion serves it."""
    buffer = io.BytesIO()
    pd.DataFrame(list(rows), columns=list(columns)).to_parquet(buffer, index=False)
    return buffer.getvalue()


def cc3m_tsv(rows: Sequence[tuple[str, str]]) -> bytes:
    """A Conceptual Captions list: header-less `caption<TAB>url` lines."""
    return "".join(f"{caption}\t{url}\n" for caption, url in rows).encode()


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ======================================================================================= drawings

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (214, 39, 40)), ("blue", (31, 119, 180)), ("green", (44, 160, 44)),
    ("orange", (255, 127, 14)), ("purple", (148, 103, 189)), ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)), ("olive", (150, 150, 30)), ("cyan", (23, 190, 207)),
    ("grey", (110, 110, 110)), ("black", (25, 25, 25)), ("yellow", (235, 205, 30)),
)
BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (246, 246, 240)), ("beige", (232, 220, 192)), ("light blue", (204, 226, 242)),
    ("light green", (212, 236, 204)), ("light grey", (214, 214, 214)),
)
SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "pentagon")
TEXTURES = ("plain", "stripes", "dots", "checks")


@dataclass(frozen=True)
class Look:
    """How a label is drawn, and the words a caption uses for it."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    texture: str


@dataclass(frozen=True)
class Drawn:
    """One object in an image: its look, outline polygon [x0, y0, x1, y1, ...] and bbox [x, y, w, h]."""

    look: Look
    polygon: list[float]
    bbox: list[float]


def _chain(label: str, parents: Mapping[str, str | None]) -> list[str]:
    chain = [label]
    while (parent := parents.get(chain[-1])) is not None:
        chain.append(parent)
    return chain


def assign_looks(leaves: Sequence[str], parents: Mapping[str, str | None] | None = None) -> dict[str, Look]:
    """A distinct look per leaf: shape from its top-level class (from the leaf itself in a flat label
    set), colour from the leaf, texture from its depth (flat: from the leaf)."""
    parents = parents or {}
    tops = sorted({_chain(leaf, parents)[-1] for leaf in leaves})
    flat = all(parents.get(leaf) is None for leaf in leaves)
    looks = {}
    for i, leaf in enumerate(leaves):
        chain = _chain(leaf, parents)
        shape = SHAPES[(i if flat else tops.index(chain[-1])) % len(SHAPES)]
        texture = TEXTURES[(i // len(SHAPES) if flat else len(chain) - 1) % len(TEXTURES)]
        colour, rgb = PALETTE[i % len(PALETTE)]
        looks[leaf] = Look(shape, colour, rgb, texture)
    return looks


def _outline(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: Sequence[float], offset: float) -> list[tuple[float, float]]:
        angles = [offset + turn + 2 * math.pi * k / n for k in range(n)]
        return [(cx + radii[k % len(radii)] * math.cos(a), cy + radii[k % len(radii)] * math.sin(a))
                for k, a in enumerate(angles)]

    if shape == "circle":
        return ring(20, [r], 0.0)
    if shape == "square":
        return ring(4, [r * 1.2], math.pi / 4)
    if shape == "triangle":
        return ring(3, [r * 1.2], -math.pi / 2)
    if shape == "star":
        return ring(10, [r * 1.2, r * 0.5], -math.pi / 2)
    if shape == "cross":
        a, b = r, r * 0.38
        points = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                  (-a, -b), (-b, -b)]
        c, s = math.cos(turn), math.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]
    if shape == "hexagon":
        return ring(6, [r], 0.0)
    if shape == "diamond":
        return ring(4, [r * 1.2, r * 0.75], 0.0)
    if shape == "pentagon":
        return ring(5, [r], -math.pi / 2)
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=256)
def _texture(look: Look, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), look.rgb)
    draw = ImageDraw.Draw(image)
    dark = tuple(int(v * 0.55) for v in look.rgb)
    if look.texture == "stripes":
        for x in range(-size, size, 6):
            draw.line([(x, 0), (x + size, size)], fill=dark, width=2)
    elif look.texture == "dots":
        for x in range(2, size, 6):
            for y in range(2, size, 6):
                draw.ellipse([x, y, x + 2, y + 2], fill=dark)
    elif look.texture == "checks":
        for x in range(0, size, 8):
            for y in range(0, size, 8):
                if (x + y) // 8 % 2:
                    draw.rectangle([x, y, x + 7, y + 7], fill=dark)
    return image


@lru_cache(maxsize=4)
def _ramp(size: int) -> np.ndarray:
    return np.linspace(-12, 12, size).round().astype(np.int16)[None, :, None]


def draw_image(looks: Sequence[Look], rng: np.random.Generator, size: int = IMAGE_SIZE
               ) -> tuple[Image.Image, str, list[Drawn]]:
    """A picture of one object per look on a noisy background: (image, background name, objects)."""
    background, rgb = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    ramp = _ramp(size) * (1 if rng.random() < 0.5 else -1)
    noise = rng.integers(-8, 9, (size, size, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(rgb, dtype=np.int16) + ramp + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    drawn = []
    for look in looks:
        r = float(rng.uniform(0.15, 0.24)) * size
        cx, cy = (float(v) for v in rng.uniform(r * 1.2, size - r * 1.2, 2))
        outline = _outline(look.shape, cx, cy, r, float(rng.uniform(-0.3, 0.3)))
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon(outline, fill=255)
        image.paste(_texture(look, size), (0, 0), mask)
        xs, ys = [x for x, _ in outline], [y for _, y in outline]
        polygon = [round(v, 2) for point in outline for v in point]
        bbox = [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2),
                round(max(ys) - min(ys), 2)]
        drawn.append(Drawn(look, polygon, bbox))
    return image, background, drawn


def _polygon_area(polygon: Sequence[float]) -> float:
    xs, ys = polygon[0::2], polygon[1::2]
    return round(abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2, 2)


def _rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary mask (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _pairs(n: int, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`n` pairs of distinct indices in [0, k), in shuffled order: every full round of k pairs uses each
    index once as first and once as second member, so an index is in at least 2·⌊n/k⌋ pairs."""
    out = []
    for start in range(0, n, k):
        offset = 1 + int(rng.integers(k - 1))
        out += [(i % k, (i % k + offset) % k) for i in range(start, min(n, start + k))]
    return [out[j] for j in rng.permutation(n)]


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


# ===================================================================================== miniatures


@dataclass(frozen=True)
class Miniature:
    """What one dataset's miniature holds, as its manifests must show it.

    `rows`: manifest rows per split (default manifest options); `label_rows`: split → label → rows
    carrying it (a label counts on its own rows and its descendants' rows); `labels`: the labels the
    miniature uses; `failures`: rows per split whose image the download must fail to fetch;
    `captions_per_sample`: captions the source files hold per image (COCO: 5, one row each with
    `manifest_options: {captions: each}`).
    """

    name: str
    kind: str
    folder: Path
    rows: dict[str, int]
    label_rows: dict[str, dict[str, int]]
    labels: tuple[str, ...]
    failures: dict[str, int] = field(default_factory=dict)
    captions_per_sample: int = 1

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


def _label_rows(rows: Sequence[Sequence[str]], parents: Mapping[str, str | None]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for labels in rows:
        counts.update({a for label in labels for a in _chain(label, parents)})
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------------------------ Open Images

#: (MID, display name) of the miniature's classes; the root "Entity" is not a label.
OPEN_IMAGES_CLASSES: tuple[tuple[str, str], ...] = (
    ("/m/0bl9f", "Entity"), ("/m/0jbk", "Animal"), ("/m/01lrl", "Carnivore"), ("/m/0bt9lr", "Dog"),
    ("/m/01yrx", "Cat"), ("/m/015p6", "Bird"), ("/m/03k3r", "Horse"), ("/m/07yv9", "Vehicle"),
    ("/m/01prls", "Land vehicle"), ("/m/0k4j", "Car"), ("/m/0199g", "Bicycle"), ("/m/019jd", "Boat"),
    ("/m/05s2s", "Plant"), ("/m/07j7r", "Tree"), ("/m/0c9ph5", "Flower"), ("/m/02wbm", "Food"),
    ("/m/02xwb", "Fruit"), ("/m/014j1m", "Apple"), ("/m/09qck", "Banana"), ("/m/01g317", "Person"),
    ("/m/083wq", "Wheel"),
)
#: name → children, as nested in bbox_labels_600_hierarchy.json; Wheel is a part of Car and Bicycle.
_OI_TREE: dict[str, list[str]] = {
    "Entity": ["Animal", "Vehicle", "Plant", "Food", "Person", "Wheel"],
    "Animal": ["Carnivore", "Bird", "Horse"], "Carnivore": ["Dog", "Cat"],
    "Vehicle": ["Land vehicle", "Boat"], "Land vehicle": ["Car", "Bicycle"],
    "Plant": ["Tree", "Flower"], "Food": ["Fruit"], "Fruit": ["Apple", "Banana"],
}
_OI_PARTS = {"Car": ["Wheel"], "Bicycle": ["Wheel"]}
#: Leaves an image is drawn around (Wheel comes with every Car and Bicycle).
OPEN_IMAGES_LEAVES = ("Dog", "Cat", "Bird", "Horse", "Car", "Bicycle", "Boat", "Tree", "Flower", "Apple",
                      "Banana", "Person")
_OI_IMAGES = {"train": 96, "test": 48}
_OI_NARRATIVES = (
    "In this image we can see {a} and {b}. In the background there is a {bg} wall.",
    "In this picture I can see {a}, beside it there is {b} on a {bg} surface.",
    "Here we can see {a} and {b}, and the background is {bg}.",
)


def _oi_parents() -> dict[str, str | None]:
    parents: dict[str, str | None] = {}
    for parent, children in _OI_TREE.items():
        for child in children:
            parents.setdefault(child, None if parent == "Entity" else parent)
    return parents


def _oi_hierarchy_json() -> dict:
    mids = {name: mid for mid, name in OPEN_IMAGES_CLASSES}

    def node(name: str) -> dict:
        out: dict[str, Any] = {"LabelName": mids[name]}
        if name in _OI_TREE:
            out["Subcategory"] = [node(child) for child in _OI_TREE[name]]
        if name in _OI_PARTS:
            out["Part"] = [{"LabelName": mids[part]} for part in _OI_PARTS[name]]
        return out

    return node("Entity")


def _build_open_images(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    mids = {label: mid for mid, label in OPEN_IMAGES_CLASSES}
    parents = _oi_parents()
    looks = assign_looks([*OPEN_IMAGES_LEAVES, "Wheel"], parents)
    files: dict[str, bytes] = {}
    splits: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[list[str]]] = {}
    total = sum(_OI_IMAGES.values()) + 8
    ids = iter(sorted(f"{int(v):016x}" for v in rng.choice(2**60, size=total, replace=False)))
    for split, n in _OI_IMAGES.items():
        content: dict[str, Any] = {"image_ids": [], "labels": [], "narratives": [],
                                   "dataset_id": f"open_images_{split}"}
        rows[split] = []
        for a, b in _pairs(n, len(OPEN_IMAGES_LEAVES), rng):
            image_id = next(ids)
            leaves = [OPEN_IMAGES_LEAVES[a], OPEN_IMAGES_LEAVES[b]]
            parts = sorted({p for leaf in leaves for p in _OI_PARTS.get(leaf, [])})
            image, background, _ = draw_image([looks[x] for x in leaves + parts], rng)
            files[f"{split}/{image_id}.jpg"] = encode_image(image)
            content["image_ids"].append(image_id)
            for k, label in enumerate(leaves + parts):
                source = ("verification", "crowdsource-verification")[k % 2]
                content["labels"].append((image_id, source, mids[label], 1))
            absent = [x for x in OPEN_IMAGES_LEAVES if x not in leaves]
            negative = absent[int(rng.integers(len(absent)))]
            content["labels"].append((image_id, "verification", mids[negative], 0))
            phrases = [_a(f"{looks[x].colour} {x.lower()}") for x in leaves]
            for k in range(2 if rng.random() < 0.3 else 1):
                template = _OI_NARRATIVES[(k + int(rng.integers(3))) % 3]
                first, second = phrases if k == 0 else phrases[::-1]
                content["narratives"].append((image_id, template.format(a=first, b=second, bg=background)))
                rows[split].append(leaves + parts)
        # as in the real files: boxable images without a narrative (not fetched) and narratives of
        # images outside the boxable set (ignored)
        for _ in range(2):
            image_id = next(ids)
            content["image_ids"].append(image_id)
            content["labels"].append((image_id, "verification", mids["Tree"], 1))
        for _ in range(2):
            content["narratives"].append((next(ids), "In this image we can see a building."))
        content["labels"].sort()
        order = rng.permutation(len(content["narratives"]))
        content["narratives"] = [content["narratives"][i] for i in order]
        splits[split] = content
    files.update(open_images_files(OPEN_IMAGES_CLASSES, _oi_hierarchy_json(), splits))
    write_files(folder, files)
    return Miniature(name, "open_images_v7", folder, {s: len(r) for s, r in rows.items()},
                     {s: _label_rows(r, parents) for s, r in rows.items()},
                     tuple(sorted(set(parents))))


# ------------------------------------------------------------------------------------------- COCO

#: (id, name, supercategory) as in COCO 2017's instances files.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (6, "bus", "vehicle"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (52, "banana", "food"),
    (53, "apple", "food"), (59, "pizza", "food"),
)
_COCO_IMAGES = {"train2017": 96, "val2017": 48}
_COCO_CAPTIONS = (
    "{A} next to {b}.", "There is {a} and {b} in the picture.", "A photo showing {a} with {b}.",
    "{A} near {b} on a {bg} background.", "Close-up of {a} beside {b}.", "{A} and {b} seen from above.",
    "A {bg} scene with {a} and {b}.", "Someone took a picture of {a} and {b}.",
)
_COCO_EMPTY = ("An empty {bg} scene.", "Nothing but a {bg} background.", "A plain {bg} picture.",
               "A {bg} wall with nothing on it.", "An image of a {bg} surface.")
_COCO_INFO = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0",
              "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"}
_COCO_LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
     "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
]


def _build_coco(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    names = [c[1] for c in COCO_CATEGORIES]
    ids = {c[1]: c[0] for c in COCO_CATEGORIES}
    parents: dict[str, str | None] = {n: (None if n == s else s) for _, n, s in COCO_CATEGORIES}
    parents.update({s: None for _, n, s in COCO_CATEGORIES if s != n})
    looks = assign_looks(names, parents)
    categories = [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES]
    total = sum(_COCO_IMAGES.values()) + 2
    image_ids = iter(int(v) for v in rng.choice(np.arange(1, 581_930), size=total, replace=False))
    annotation_ids = iter(int(v) for v in rng.choice(np.arange(1, 900_000), size=20 * total, replace=False))
    images: dict[str, dict[str, bytes]] = {}
    annotations: dict[str, Any] = {}
    rows: dict[str, list[list[str]]] = {}
    for image_set, n in _COCO_IMAGES.items():
        split = "train" if image_set == "train2017" else "test"
        images[image_set], rows[split] = {}, []
        entries, instances, captions = [], [], []
        plan: list[list[str]] = [[names[a], names[b]] for a, b in _pairs(n, len(names), rng)]
        plan.insert(int(rng.integers(n)), [])  # COCO has images without any instance
        crowd_at = int(rng.integers(n))
        for k, present in enumerate(plan):
            image_id = next(image_ids)
            objects = list(present) + ([present[0]] if present and rng.random() < 0.25 else [])
            image, background, drawn = draw_image([looks[x] for x in objects], rng)
            file_name = f"{image_id:012d}.jpg"
            images[image_set][file_name] = encode_image(image)
            entries.append({"license": (1, 4)[k % 2], "file_name": file_name,
                            "coco_url": f"http://images.cocodataset.org/{image_set}/{file_name}",
                            "height": IMAGE_SIZE, "width": IMAGE_SIZE, "date_captured": "2013-11-14 11:18:45",
                            "flickr_url": f"http://farm{k % 9 + 1}.staticflickr.com/{image_id}_z.jpg",
                            "id": image_id})
            for label, obj in zip(objects, drawn, strict=True):
                instances.append({"segmentation": [obj.polygon], "area": _polygon_area(obj.polygon),
                                  "iscrowd": 0, "image_id": image_id, "bbox": obj.bbox,
                                  "category_id": ids[label], "id": next(annotation_ids)})
            if present and k == crowd_at:
                mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
                mask[4:20, 40:60] = True
                instances.append({"segmentation": _rle(mask), "area": float(mask.sum()), "iscrowd": 1,
                                  "image_id": image_id, "bbox": [40.0, 4.0, 20.0, 16.0],
                                  "category_id": ids[present[0]], "id": next(annotation_ids)})
            if present:
                a, b = (_a(f"{looks[x].colour} {x}") for x in present)
                chosen = rng.choice(len(_COCO_CAPTIONS), size=COCO_CAPTIONS, replace=False)
                texts = [_COCO_CAPTIONS[i].format(a=a, b=b, A=a[0].upper() + a[1:], bg=background)
                         for i in chosen]
            else:
                texts = [t.format(bg=background) for t in _COCO_EMPTY]
            captions += [{"image_id": image_id, "id": next(annotation_ids), "caption": text}
                         for text in texts]
            rows[split].append(present)
        order = rng.permutation(len(entries))
        entries = [entries[i] for i in order]
        header = {"info": _COCO_INFO, "licenses": _COCO_LICENSES, "images": entries}
        annotations[f"instances_{image_set}"] = {**header, "annotations": instances, "categories": categories}
        annotations[f"captions_{image_set}"] = {**header, "annotations": captions}
    write_files(folder, coco_archives(images, annotations))
    return Miniature(name, "coco2017", folder, {s: len(r) for s, r in rows.items()},
                     {s: _label_rows(r, parents) for s, r in rows.items()}, tuple(sorted(parents)),
                     captions_per_sample=COCO_CAPTIONS)


# ---------------------------------------------------------------------------------------- Flowers

FLOWERS_CLASSES = ("sunflower", "rose", "daffodil", "water lily", "foxglove", "tiger lily")
#: images per class in setid.mat's trnid, valid and tstid (train = trnid + valid)
_FLOWERS_PER_CLASS = {"trnid": 8, "valid": 4, "tstid": 8}
_FLOWERS_TEXT = (
    "this {name} has {colour} petals arranged in a {shape} shape.",
    "a {colour} flower with {texture} petals and a {bg} background.",
    "this flower is {colour} in color, with petals shaped like a {shape}.",
    "the petals of this flower are {colour} and {texture}.",
    "a {shape} shaped {colour} flower seen from above.",
    "this flower has large {colour} petals with a {texture} pattern.",
    "the flower shown is {colour} with a {shape} outline.",
    "this is a {colour} {name}.",
    "a single {colour} bloom in front of a {bg} backdrop.",
    "this flower has {texture} {colour} petals.",
)


def _build_flowers(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    from xsae.datasets import flowers

    numbers = [flowers.CLASS_NAMES.index(c) + 1 for c in FLOWERS_CLASSES]
    looks = assign_looks(FLOWERS_CLASSES)
    per_class = sum(_FLOWERS_PER_CLASS.values())
    labels = [int(v) for v in rng.permutation(np.repeat(numbers, per_class))]
    setid: dict[str, list[int]] = {key: [] for key in _FLOWERS_PER_CLASS}
    for label in numbers:
        members = [i + 1 for i, v in enumerate(labels) if v == label]
        start = 0
        for key, count in _FLOWERS_PER_CLASS.items():
            setid[key] += members[start:start + count]
            start += count
    setid = {key: [int(v) for v in rng.permutation(ids)] for key, ids in setid.items()}
    images, captions = {}, {}
    for number, label in enumerate(labels, start=1):
        flower = FLOWERS_CLASSES[numbers.index(label)]
        look = looks[flower]
        image, background, _ = draw_image([look], rng)
        images[number] = encode_image(image)
        words = {"name": flower, "colour": look.colour, "shape": look.shape, "texture": look.texture,
                 "bg": background}
        rest = [_FLOWERS_TEXT[1 + int(i)] for i in rng.permutation(len(_FLOWERS_TEXT) - 1)]
        captions[number] = [t.format(**words) for t in (_FLOWERS_TEXT[0], *rest)]
    listing = "".join(f"class_{n:05d}\n" for n in sorted(numbers)).encode()
    extra = {"allclasses.txt": listing, "trainvalclasses.txt": listing, "testclasses.txt": listing}
    write_files(folder, flowers_files(images, labels, setid, captions, extra_caption_files=extra))
    def names_of(ids: Sequence[int]) -> list[list[str]]:
        return [[FLOWERS_CLASSES[numbers.index(labels[i - 1])]] for i in ids]

    split_rows = {"train": names_of(setid["trnid"] + setid["valid"]), "test": names_of(setid["tstid"])}
    return Miniature(name, "flowers102", folder, {s: len(r) for s, r in split_rows.items()},
                     {s: _label_rows(r, {}) for s, r in split_rows.items()}, FLOWERS_CLASSES)


# --------------------------------------------------------------------------------------- ImageNet

#: Real ILSVRC2012 classes, so CLIP's curated names (by sorted WNID) resolve; "crane" the machine
#: shares its name with the bird and becomes "crane (n03126707)".
IMAGENET_CLASSES = ("n01443537", "n01644373", "n02123045", "n03126707", "n04146614", "n07873807",
                    "n09472597", "n11939491")
_IMAGENET_PER_CLASS = 12


def imagenet_synsets() -> tuple[list[tuple[int, str, str, int]], dict[str, str]]:
    """The 1,000 ILSVRC2012 leaf synsets (ILSVRC2012_ID, WNID, words, 0) in WNID order, plus the
    root "entity" as the devkit lists internal nodes, and WNID → gloss.

    Read from the synset lists that timm ships (installed with open_clip, which the paper's encoders
    need); the files are read without importing timm, which would import torch.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the ImageNet miniature needs timm's synset lists: install open_clip_torch "
                          "(pip install 'xsae[encoders]'), which brings timm")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"

    def table(name: str) -> dict[str, str]:
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        return dict(line.split("\t", 1) for line in lines if "\t" in line)

    wnids = (folder / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    words, glosses = table("imagenet_synset_to_lemma.txt"), table("imagenet_synset_to_definition.txt")
    synsets = [(i, w, words[w], 0) for i, w in enumerate(wnids, start=1)]
    synsets.append((len(wnids) + 1, "n00001740", "entity", len(wnids)))
    glosses = {w: glosses.get(w, "") for w in wnids}
    glosses["n00001740"] = "that which is perceived or known or inferred to have its own distinct existence"
    return synsets, glosses


@lru_cache(maxsize=1)
def _imagenet_meta() -> tuple[bytes, tuple[tuple[int, str, str, int], ...]]:
    """meta.mat of the real synsets (the same for every seed; writing 8,000 struct fields is slow)."""
    synsets, glosses = imagenet_synsets()
    return imagenet_meta_mat(synsets, glosses), tuple(synsets)


def _build_imagenet(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    from xsae.datasets.imagenet import label_names

    meta, synsets = _imagenet_meta()
    ids = {wnid: ident for ident, wnid, _, children in synsets if children == 0}
    words = {wnid: text for _, wnid, text, children in synsets if children == 0}
    names = label_names(words)
    looks = assign_looks(IMAGENET_CLASSES)
    order = [IMAGENET_CLASSES[i] for i in rng.permutation(np.repeat(np.arange(len(IMAGENET_CLASSES)),
                                                                    _IMAGENET_PER_CLASS))]
    images = [encode_image(draw_image([looks[wnid]], rng)[0]) for wnid in order]
    write_files(folder, imagenet_val_files(images, [ids[w] for w in order], synsets, meta=meta))
    rows = {"test": [[names[w]] for w in order]}
    return Miniature(name, "imagenet_val", folder, {"train": 0, "test": len(order)},
                     {"test": _label_rows(rows["test"], {})},
                     tuple(sorted(names[w] for w in IMAGENET_CLASSES)))


# -------------------------------------------------------------------------------------- URL lists

#: What URL-list images show; these datasets have no labels, the captions name the concepts.
URL_LIST_CONCEPTS = ("dog", "cat", "bird", "car", "bicycle", "boat", "tree", "flower", "apple", "pizza")


def _url_list_rows(n: int, rng: np.random.Generator, folder: Path, url: str, prefix: str,
                   caption: Callable[[list[str], Look, str], str], dead: set[int], pages: set[int]
                   ) -> list[tuple[str, str]]:
    """(caption, URL) rows whose images are written under `folder/prefix`; rows in `dead` point at
    nothing (404) and rows in `pages` at an HTML page served as the image."""
    looks = assign_looks(URL_LIST_CONCEPTS)
    out = []
    for row, (a, b) in enumerate(_pairs(n, len(URL_LIST_CONCEPTS), rng)):
        concepts = [URL_LIST_CONCEPTS[a]] + ([URL_LIST_CONCEPTS[b]] if rng.random() < 0.5 else [])
        image, background, _ = draw_image([looks[c] for c in concepts], rng)
        fmt = "PNG" if row % 7 == 3 else "JPEG"
        name = f"{prefix}/{row:05d}.{'png' if fmt == 'PNG' else 'jpg'}"
        query = "?w=64" if row % 11 == 5 else ""
        if row in dead:
            name = f"{prefix}/gone_{row:05d}.jpg"
        elif row in pages:
            write_files(folder, {name: b"<!DOCTYPE html><html><body>This image is no longer available"
                                       b"</body></html>"})
        else:
            write_files(folder, {name: encode_image(image, fmt)})
        out.append((caption(concepts, looks[concepts[0]], background), f"{url}/{name}{query}"))
    return out


def _build_laion(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    from xsae.datasets import urllists

    n = 100
    dead, pages = {17, 62}, {41}
    url = f"{base_url.rstrip('/')}/{name}"

    def caption(concepts: list[str], look: Look, background: str) -> str:
        styles = ("{c} clipart on {bg} background - stock vector", "{C} Illustration | {bg} backdrop",
                  "cute {c} icon, flat design", "{c} drawing for kids - free download")
        text = " and ".join(f"{look.colour} {concepts[0]}" if i == 0 else c for i, c in enumerate(concepts))
        style = styles[int(rng.integers(len(styles)))]
        return style.format(c=text, C=text.title(), bg=background)

    listed = _url_list_rows(n, rng, folder, url, "images", caption, dead, pages)
    rows = [[int(3_000_000_000 + 7919 * i), link, text, IMAGE_SIZE, IMAGE_SIZE, "?", "UNLIKELY",
             round(float(rng.uniform(0.28, 0.42)), 4)] for i, (text, link) in enumerate(listed)]
    write_files(folder, {urllists.SOURCES["laion_subset"]["lists"]["all"]["file"]: laion_parquet(rows)})
    splits = ("train", "test")
    counts = {s: sum(urllists.in_split(i, LAION_TEST_FRACTION, s) for i in range(n)) for s in splits}
    failures = {s: sum(urllists.in_split(i, LAION_TEST_FRACTION, s) for i in dead | pages) for s in splits}
    return Miniature(name, "laion_subset", folder, {s: counts[s] - failures[s] for s in splits},
                     {s: {} for s in splits}, (), failures=failures)


def _build_cc3m(name: str, folder: Path, rng: np.random.Generator, base_url: str) -> Miniature:
    from xsae.datasets import urllists

    sizes, broken = {"train": 90, "test": 45}, {"train": ({23}, {58}), "test": ({30}, set())}
    url = f"{base_url.rstrip('/')}/{name}"

    def caption(concepts: list[str], look: Look, background: str) -> str:
        things = " and ".join(_a(c) for c in concepts)
        return (f"{things} on a {background} background", f"illustration of {things}",
                f"{things} in {look.colour}")[int(rng.integers(3))]

    files = {}
    for split, n in sizes.items():
        dead, pages = broken[split]
        listed = _url_list_rows(n, rng, folder, url, f"images/{split}", caption, dead, pages)
        files[urllists.SOURCES["cc3m"]["lists"][split]["file"]] = cc3m_tsv(listed)
    write_files(folder, files)
    failures = {s: len(d) + len(p) for s, (d, p) in broken.items()}
    return Miniature(name, "cc3m", folder, {s: sizes[s] - failures[s] for s in sizes},
                     {"train": {}, "test": {}}, (), failures=failures)


_BUILDERS: dict[str, Callable[[str, Path, np.random.Generator, str], Miniature]] = {
    "open_images_v7": _build_open_images,
    "coco2017": _build_coco,
    "flowers102": _build_flowers,
    "imagenet_val": _build_imagenet,
    "laion_subset": _build_laion,
    "cc3m": _build_cc3m,
    "hub_image_text": _build_hub,
}
#: kinds whose entries have no files of their own
_NO_FILES = ("class_prompts",)


def _needs_files(entry: Mapping[str, Any]) -> bool:
    return entry["kind"] not in _NO_FILES and not entry.get("files_of")


def build_miniatures(datasets: Mapping[str, Mapping[str, Any]], root: str | Path, seed: int = 0, *,
                     base_url: str = DEFAULT_BASE_URL) -> dict[str, Miniature]:
    """Write a miniature of every dataset entry that downloads files of its own (not `files_of`
    entries, not class prompts) into `root/<name>`, laid out as `serve(root)` must serve it.

    `base_url` is the address `serve(root)` will answer on: URL lists name their images by absolute
    URL. Same seed and base URL → same bytes. Each folder is written atomically (replaced whole).
    """
    root = Path(root)
    out = {}
    for name, entry in datasets.items():
        kind = entry.get("kind")
        if kind is None:
            raise ConfigError(f"datasets.{name}: no kind")
        if not _needs_files(entry):
            continue
        if kind not in _BUILDERS:
            raise ConfigError(f"datasets.{name}.kind: no miniature of {kind!r}; known: {sorted(_BUILDERS)}")
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        with atomic_path(root / name, directory=True) as tmp:
            miniature = _BUILDERS[kind](name, tmp, rng, base_url)
        out[name] = replace(miniature, folder=root / name)
    return out


# ====================================================================================== overrides

#: keys of a paper entry that the rehearsal keeps as they are
_KEPT = ("kind", "files_of", "manifest_options", "classes_of", "class_names", "templates")


def archive_sources(module_sources: Mapping[str, Mapping[str, Any]], bodies: Mapping[str, bytes], *,
                    checksums: bool = True) -> dict[str, dict[str, Any]]:
    """A source module's `SOURCES` with the sizes (and sha256, and md5 where the module checks one)
    of `bodies` (file name → bytes) in place of the published values."""
    out = {}
    for key, source in module_sources.items():
        body = bodies[source["file"]]
        entry = {**source, "size": len(body), "md5": None}
        if checksums:
            entry["sha256"] = hashlib.sha256(body).hexdigest()
            if "md5" in source:
                entry["md5"] = hashlib.md5(body, usedforsecurity=False).hexdigest()
        out[key] = entry
    return out


def _read_sources(module_sources: Mapping[str, Mapping[str, Any]], folder: Path) -> dict[str, dict]:
    bodies = {}
    for source in module_sources.values():
        path = folder / source["file"]
        if not path.is_file():
            raise DataError(f"{path}: not found; build the miniatures (build_miniatures) first")
        bodies[source["file"]] = path.read_bytes()
    return archive_sources(module_sources, bodies)


def _check_list_urls(folder: Path, kind: str, base_url: str) -> None:
    """URL lists hold absolute image URLs: refuse lists built for another server address."""
    from xsae.datasets import urllists

    spec = urllists.SOURCES[kind]
    for source in spec["lists"].values():
        path = folder / source["file"]
        if not path.is_file():
            raise DataError(f"{path}: not found; build the miniatures (build_miniatures) first")
        urls = urllists.read_list(path, spec)["url"]
        wrong = [u for u in urls if u and not u.startswith(base_url.rstrip("/") + "/")]
        if wrong:
            raise DataError(f"{path}: its image URLs ({wrong[0]}) are not on {base_url}; build the "
                            f"miniatures again with base_url={base_url!r}")


def dataset_overrides(datasets: Mapping[str, Mapping[str, Any]], root: str | Path, base_url: str
                      ) -> dict[str, dict[str, Any]]:
    """The rehearsal config's `datasets:` entries for the miniatures under `root` served at `base_url`.

    Each keeps the paper entry's kind, files_of, manifest_options, classes_of, class_names and
    templates; downloads get `base_url/<name>`, few workers and short timeouts; COCO and Flowers get
    `options.sources` with the size and sha256 (Flowers: and md5) of the served archives, so a
    changed byte fails the download; ImageNet gets its folder as `provided` and its image count.
    """
    from xsae.datasets import coco, flowers

    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for name, entry in datasets.items():
        kind = entry["kind"]
        new = {key: entry[key] for key in _KEPT if key in entry}
        out[name] = new
        if not _needs_files(entry):
            continue
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder}: no miniature of datasets.{name}; build the miniatures first")
        url = f"{base_url.rstrip('/')}/{name}"
        if kind == "imagenet_val":
            truth = sorted(folder.rglob("ILSVRC2012_validation_ground_truth.txt"))
            if not truth:
                raise DataError(f"{folder}: no ILSVRC2012_validation_ground_truth.txt; build the "
                                "miniatures first")
            images = len(truth[0].read_text(encoding="utf-8").split())
            new.update(provided=str(folder.resolve()), options={"expected_images": images})
            continue
        new.update(base_url=url, workers=WORKERS)
        if kind in ("coco2017", "flowers102"):
            module = coco if kind == "coco2017" else flowers
            new["options"] = {"sources": _read_sources(module.SOURCES, folder)}
        elif kind == "open_images_v7":
            new["options"] = {"timeout": 10, "retries": 2}
        elif kind == "hub_image_text":
            new["options"] = {**entry.get("options", {}), "repo": REHEARSAL_HUB_REPO, "timeout": 10,
                              "retries": 1, "test_fraction": HUB_TEST_FRACTION, "max_rows": sum(_HUB_ROWS)}
        elif kind in ("laion_subset", "cc3m"):
            _check_list_urls(folder, kind, base_url)
            options: dict[str, Any] = {"shard_size": URL_LIST_SHARD_SIZE, "timeout": 10, "retries": 1}
            if kind == "laion_subset":
                options["test_fraction"] = LAION_TEST_FRACTION
            new["options"] = options
        else:
            raise ConfigError(f"datasets.{name}.kind: no rehearsal entry for {kind!r}")
    return out


@contextlib.contextmanager
def served_miniatures(datasets: Mapping[str, Mapping[str, Any]], root: str | Path, seed: int = 0,
                      port: int = 0
                      ) -> Iterator[tuple[LoopbackServer, dict[str, Miniature], dict[str, dict]]]:
    """Serve `root`, build the miniatures for that address and yield (server, miniatures, overrides)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with serve(root, port) as server:
        miniatures = build_miniatures(datasets, root, seed, base_url=server.url())
        yield server, miniatures, dataset_overrides(datasets, root, server.url())


__all__ = [
    "COCO_CATEGORIES",
    "DEFAULT_BASE_URL",
    "DEFAULT_PORT",
    "FLOWERS_CLASSES",
    "IMAGENET_CLASSES",
    "LAION_COLUMNS",
    "MIN_POSITIVES",
    "OPEN_IMAGES_CLASSES",
    "Fault",
    "LoopbackServer",
    "Miniature",
    "Route",
    "Seen",
    "archive_sources",
    "build_miniatures",
    "cc3m_tsv",
    "coco_archives",
    "csv_bytes",
    "dataset_overrides",
    "encode_image",
    "flowers_files",
    "imagenet_meta_mat",
    "imagenet_val_files",
    "laion_parquet",
    "mat_bytes",
    "narratives_jsonl",
    "open_images_files",
    "open_images_image_list",
    "serve",
    "served_miniatures",
    "solid_image",
    "tar_bytes",
    "write_files",
    "zip_bytes",
]
