"""Tux Paint stamps: the embedded default dataset.

Real photos and clip art from the Debian package `tuxpaint-stamps-default`, each with a
human-written English caption (first line of its `.txt`) and a category path from its folders
(e.g. `food/fruit/cartoon`), which gives a real multi-level label hierarchy. The package is GPL-2
and fetched at run time, never committed: with `apt-get download` where apt exists, otherwise from
the Debian archive over HTTPS (`datasets.<name>.deb_url`, the resumable downloader), and unpacked
in Python (a .deb is an `ar` archive holding `data.tar.*`), so no apt or dpkg is needed.
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xsae.errors import DownloadError
from xsae.io import atomic_path, sha256_file

STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")

#: Folders of glyphs rather than pictures (letters of several alphabets).
GLYPH_FOLDERS = ("alphabets",)

_PROVIDE_BY_HAND = (
    "Set datasets.<name>.deb_url to the package's file in the Debian archive (pool/main/...), or "
    "provide the package by hand: download '{package}' (any mirror, or "
    "'apt-get download {package}' on a machine with apt) and set datasets.<name>.deb to the .deb "
    "file, or unpack it with 'dpkg -x' and set datasets.<name>.unpacked to that folder."
)


@dataclass(frozen=True)
class Stamp:
    sample_id: str
    image_path: Path
    caption: str
    category: str


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _apt_lists_empty() -> bool:
    lists = Path("/var/lib/apt/lists")
    return not any(p.name.endswith(("_Packages", "_Packages.lz4", "_Packages.xz", "_Packages.gz"))
                   for p in lists.glob("*")) if lists.is_dir() else True


def apt_download(package: str, dest_dir: Path) -> Path:
    """Fetch `package`'s .deb with `apt-get download` into `dest_dir` and return its path.

    Runs `apt-get update` first when the package lists are empty and we are allowed to (root).
    """
    if shutil.which("apt-get") is None:
        raise DownloadError(
            f"apt-get is not available on this machine, so '{package}' cannot be fetched. "
            + _PROVIDE_BY_HAND.format(package=package)
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    if _apt_lists_empty() and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"])
    result = _run(["apt-get", "download", package], cwd=dest_dir)
    if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"])
        result = _run(["apt-get", "download", package], cwd=dest_dir)
    debs = sorted(dest_dir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise DownloadError(
            f"'apt-get download {package}' failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}\n" + _PROVIDE_BY_HAND.format(package=package)
        )
    return debs[-1]


def deb_members(deb: Path) -> dict[str, bytes]:
    """The members of a .deb (an `ar` archive: debian-binary, control.tar.*, data.tar.*), read in
    Python so that neither dpkg nor ar is needed."""
    data = Path(deb).read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DownloadError(f"{deb}: not a .deb (no ar archive header); delete it and download again")
    members, position = {}, 8
    while position < len(data):
        header = data[position:position + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise DownloadError(f"{deb}: truncated or corrupt ar archive at byte {position}; "
                                "delete it and download again")
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[position + 60:position + 60 + size]
        if len(body) < size:
            raise DownloadError(f"{deb}: truncated (member {name} needs {size} bytes, {len(body)} left); "
                                "delete it and download again")
        members[name] = body
        position += 60 + size + size % 2
    return members


def _tar(members: dict[str, bytes], stem: str, deb: Path) -> tarfile.TarFile:
    found = [name for name in members if name.startswith(f"{stem}.tar")]
    if not found:
        raise DownloadError(f"{deb}: no {stem}.tar.* member (has {sorted(members)})")
    if found[0].endswith(".zst"):
        raise DownloadError(f"{deb}: {found[0]} is zstd-compressed, which Python cannot read; unpack it "
                            "with 'dpkg -x' and set datasets.<name>.unpacked to that folder")
    try:
        return tarfile.open(fileobj=io.BytesIO(members[found[0]]), mode="r:*")
    except tarfile.TarError as exc:
        raise DownloadError(f"{deb}: {found[0]} is not a readable tar archive ({exc})") from exc


def deb_version(deb: Path) -> str:
    """The Version field of the package's control file."""
    with _tar(deb_members(deb), "control", deb) as control:
        member = next((m for m in control.getmembers() if m.name.lstrip("./") == "control"), None)
        text = control.extractfile(member).read().decode() if member else ""
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.partition(":")[2].strip()
    return "unknown"


def unpack_deb(deb: Path, dest: Path) -> None:
    """Extract the package's files into `dest` atomically (a failed unpack leaves no folder), as
    `dpkg -x` would, with tarfile's "data" filter (no paths outside `dest`, no device files)."""
    members = deb_members(deb)
    with atomic_path(dest, directory=True) as tmp, _tar(members, "data", deb) as data:
        try:
            data.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:  # a full disk propagates
            raise DownloadError(f"{deb}: its data archive is truncated or corrupt ({exc}); "
                                "delete it and download again") from exc


def download_deb(url: str, dest_dir: Path, expected_sha256: str | None) -> Path:
    """Fetch a .deb from the Debian archive (or a mirror) with the project's resumable downloader."""
    from xsae.download import download_file

    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / url.rstrip("/").rsplit("/", 1)[-1]
    download_file(url, target, sha256=expected_sha256)
    return target


def fetch_package(package: str, out_dir: Path, *, expected_sha256: str | None = None,
                  deb: str | None = None, unpacked: str | None = None, deb_url: str | None = None) -> dict:
    """Obtain the package and unpack it to `out_dir/unpacked`; return what was fetched.

    The source is, in order of preference, an unpacked folder, a local .deb, apt (where
    `apt-get` exists), or `deb_url` (the file in the Debian archive). The sha256 of the .deb is
    recorded, and checked when `expected_sha256` is given (a mismatch deletes nothing the user
    provided but keeps no copy of it either).
    """
    out_dir = Path(out_dir)
    target = out_dir / "unpacked"
    record: dict = {"package": package}
    if unpacked:
        source = Path(unpacked)
        if not (source / STAMPS_SUBDIR).is_dir():
            raise DownloadError(
                f"datasets.<name>.unpacked={source}: no {STAMPS_SUBDIR} inside; point it at the "
                "folder that 'dpkg -x <package>.deb <folder>' produced"
            )
        with atomic_path(target, directory=True) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True, symlinks=True)
        record.update(source="unpacked", source_path=str(source.resolve()))
        return record
    if deb:
        deb_path = Path(deb)
        if not deb_path.is_file():
            raise DownloadError(f"datasets.<name>.deb={deb_path}: file not found")
        record.update(source="deb", source_path=str(deb_path.resolve()))
    elif shutil.which("apt-get") is None and deb_url:
        staging = out_dir / ".download"
        deb_path = download_deb(deb_url, staging, expected_sha256)
        record.update(source="download", url=deb_url)
    else:
        staging = out_dir / ".apt"
        shutil.rmtree(staging, ignore_errors=True)
        deb_path = apt_download(package, staging)
        record.update(source="apt-get download")
    digest = sha256_file(deb_path)
    if expected_sha256 and digest != expected_sha256:
        if not deb:
            deb_path.unlink(missing_ok=True)
        raise DownloadError(
            f"{deb_path}: sha256 {digest} does not match the expected {expected_sha256} "
            "(datasets.<name>.sha256). The file may be corrupt or a different version; "
            "delete it and download again, or update the expected checksum."
        )
    record.update(deb=deb_path.name, sha256=digest, version=deb_version(deb_path),
                  size_bytes=deb_path.stat().st_size)
    unpack_deb(deb_path, target)
    if not deb:
        shutil.rmtree(deb_path.parent, ignore_errors=True)
    return record


def _is_glyph(relative: Path) -> bool:
    """Letters and digits are glyphs, not pictures: alphabet folders and stamps named by digits."""
    return any(part in GLYPH_FOLDERS for part in relative.parts) or relative.stem.isdigit()


def first_caption_line(text_file: Path) -> str:
    with open(text_file, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line:
                return line
    return ""


def scan_stamps(stamps_root: Path) -> tuple[list[Stamp], dict[str, int]]:
    """Every raster stamp with an English caption; counts of what was skipped and why."""
    stamps: list[Stamp] = []
    skipped = {"glyph": 0, "no_caption": 0}
    for png in sorted(stamps_root.rglob("*.png")):
        relative = png.relative_to(stamps_root)
        if _is_glyph(relative):
            skipped["glyph"] += 1
            continue
        text_file = png.with_suffix(".txt")
        caption = first_caption_line(text_file) if text_file.is_file() else ""
        if not caption:
            skipped["no_caption"] += 1  # e.g. `*_mirror.png`, a mirrored copy of another stamp
            continue
        stamps.append(Stamp(
            sample_id=relative.with_suffix("").as_posix(),
            image_path=png,
            caption=caption,
            category=relative.parent.as_posix() if relative.parent.parts else "uncategorized",
        ))
    return stamps, skipped


def stamps_root(unpacked: Path) -> Path:
    root = Path(unpacked) / STAMPS_SUBDIR
    if not root.is_dir():
        raise DownloadError(f"{unpacked}: no {STAMPS_SUBDIR}; is this an unpacked tuxpaint-stamps package?")
    return root


def categories(stamps: Iterable[Stamp]) -> list[str]:
    return sorted({s.category for s in stamps})
