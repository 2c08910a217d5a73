"""Atomic writes, checked reads and checksums: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xsae.errors import DataError

_CHUNK = 1 << 20
#: Markers a workflow engine drops into folder outputs; not part of the content.
TREE_IGNORE = frozenset({".snakemake_timestamp"})


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The temporary lives in the same folder so the rename is atomic on POSIX file systems.
    On any exception the temporary is removed and `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Arrays to an .npz file, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_npz(path: str | os.PathLike, what: str, produced_by: str,
             required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of an .npz file written by `write_npz` (pickles refused). A missing file, an
    unreadable one or one without the `required` arrays is a DataError naming `what` it should be
    and, when missing, `produced_by` (what to run to make it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; {produced_by}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {what} ({exc}); delete it and rerun") from exc
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DataError(f"{path}: not a readable {what} (no {', '.join(missing)}); delete it and rerun")
    return arrays


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Digest of a folder: relative paths and file contents, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in TREE_IGNORE):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or the tree digest of a folder."""
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)
