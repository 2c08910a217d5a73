"""Provenance: every output carries a record of what made it, and records chain to the downloads.

A record is a JSON file beside its output (`<output>.prov.json`): rule, wildcards, params, the
sha256 of every input and output, code version (commit and dirty flag), package versions,
device, seed, start and end time. `chain(path)` walks from any output through the records of
its inputs back to files no rule produced (the downloads), which `xsae provenance PATH` prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from xsae.io import sha256_path, write_json
from xsae.workflow import numeric_threads

SUFFIX = ".prov.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("xsae", "torch", "torchvision", "numpy", "pandas", "h5py", "safetensors", "scipy",
            "scikit-learn", "matplotlib", "pillow", "snakemake", "transformers", "open_clip_torch",
            "sentence-transformers", "papermill")


def record_path(output: str | os.PathLike) -> Path:
    return Path(str(output).rstrip("/") + SUFFIX)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@functools.cache
def code_version(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit of the code that ran, and whether the working tree differed from it."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                    text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        from xsae import __version__

        return {"commit": None, "dirty": None, "version": __version__}
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status), "describe": git("describe", "--always", "--dirty")}


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def device_info() -> dict[str, Any]:
    """The machine the job ran on; CUDA details only if the job imported torch."""
    info: dict[str, Any] = {"host": platform.node(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    candidate = record_path(path)
    if not candidate.is_file():
        return None
    with open(candidate, encoding="utf-8") as handle:
        return json.load(handle)


def _stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """Checksum and stat of a file or folder, reusing the producer's checksum when unchanged."""
    path = Path(path)
    if not path.exists():
        return {"path": str(path), "missing": True}
    stat = _stat(path)
    producer = read_record(path)
    if producer:
        for output in producer.get("outputs", []):
            if output.get("path") == str(path) and output.get("size") == stat["size"] \
                    and output.get("mtime_ns") == stat["mtime_ns"] and "sha256" in output:
                return {"path": str(path), "sha256": output["sha256"], **stat}
    return {"path": str(path), "sha256": sha256_path(path), **stat}


def _library_threads() -> dict[str, int]:
    """The thread pools of the numeric libraries the job imported, as they are at its end."""
    torch = sys.modules.get("torch")
    return {"torch": torch.get_num_threads()} if torch is not None else {}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class Job:
    """An open provenance record; `extra` is free for the job to fill (throughput, counts...)."""

    rule: str
    inputs: Sequence[str]
    outputs: Sequence[str]
    params: Mapping[str, Any] = field(default_factory=dict)
    wildcards: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    #: The job's numeric thread count (`xsae.workflow.numeric_threads`): float sums depend on it.
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=_now)

    def record(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "wildcards": _jsonable(dict(self.wildcards)),
            "params": _jsonable(dict(self.params)),
            "seed": self.seed,
            "threads": {"job": self.threads, **_library_threads()},
            "inputs": [file_entry(p) for p in self.inputs],
            "outputs": [file_entry(p) for p in self.outputs],
            "code": code_version(),
            "packages": package_versions(),
            "device": device_info(),
            "started": self.started,
            "finished": _now(),
            "extra": _jsonable(self.extra),
        }

    @classmethod
    def from_snakemake(cls, snakemake: Any, seed: int | None = None) -> Job:
        """An open record filled from the `snakemake` object a script or notebook receives."""
        return cls(rule=snakemake.rule, inputs=[str(p) for p in snakemake.input],
                   outputs=[str(p) for p in snakemake.output],
                   params=dict(snakemake.params.items()),
                   wildcards=dict(snakemake.wildcards.items()), seed=seed,
                   threads=numeric_threads(snakemake))

    def write(self) -> None:
        record = self.record()
        for output in self.outputs:
            write_json(record_path(output), record)


@contextlib.contextmanager
def recording(current: Job) -> Iterator[Job]:
    """Run a block; if it succeeds, write the record beside every output. Records of an earlier
    run of the same outputs go first: a job killed halfway leaves no record beside outputs it
    did not finish (Snakemake deletes those outputs, but not files it does not know of)."""
    for output in current.outputs:
        record_path(output).unlink(missing_ok=True)
    yield current
    current.write()


def job(rule: str, inputs: Sequence[str], outputs: Sequence[str],
        **kwargs: Any) -> contextlib.AbstractContextManager[Job]:
    return recording(Job(rule=rule, inputs=[str(p) for p in inputs],
                         outputs=[str(p) for p in outputs], **kwargs))


def from_snakemake(snakemake: Any, seed: int | None = None) -> contextlib.AbstractContextManager[Job]:
    """`job(...)` filled from the `snakemake` object a script or notebook receives."""
    return recording(Job.from_snakemake(snakemake, seed))


# ---- walking the chain ----------------------------------------------------------------------
@dataclass
class Node:
    path: str
    record: dict[str, Any] | None
    modified: bool
    children: list[Node]
    repeated: bool = False  # already shown elsewhere in the tree
    sha256: str = ""  # as recorded


def recorded_output(location: Path, record: dict[str, Any] | None
                     ) -> tuple[dict[str, Any] | None, Path | None]:
    """The record's entry for the file at `location`, and the folder the record's relative paths
    are relative to (the job's working directory; None for absolute ones). Outputs are recorded by
    the path the job used, so a relative one matches the trailing parts of the absolute path."""
    if record is None:
        return None, None
    absolute = Path(os.path.abspath(location))
    for output in record.get("outputs", []):
        recorded = Path(output.get("path", ""))
        if recorded.is_absolute():
            if Path(os.path.abspath(recorded)) == absolute:
                return output, None
        elif recorded.parts and absolute.parts[-len(recorded.parts):] == recorded.parts:
            return output, Path(*absolute.parts[:-len(recorded.parts)])
    return None, None


def _modified(path: Path, output: dict[str, Any] | None) -> bool:
    if output is None or not path.exists():
        return False
    stat = _stat(path)
    unchanged_stat = (output.get("size"), output.get("mtime_ns")) == (stat["size"], stat["mtime_ns"])
    if unchanged_stat and not path.is_dir():  # a folder's own stat says little of its content
        return False
    return sha256_path(path) != output.get("sha256")


def chain(path: str | os.PathLike, _seen: set[str] | None = None, _root: Path | None = None) -> Node:
    """The tree of records from `path` back to its sources (shared inputs appear once). `path`
    may be relative to the current folder or absolute, from any folder: a record's inputs are
    found relative to the folder its job ran in."""
    seen = _seen if _seen is not None else set()
    shown = str(path)
    location = Path(path) if _root is None or Path(path).is_absolute() else _root / path
    key = os.path.abspath(location)
    record = read_record(location)
    if key in seen:
        return Node(shown, record, False, [], repeated=True)
    seen.add(key)
    output, root = recorded_output(location, record)
    node = Node(shown, record, _modified(location, output), [], sha256=(output or {}).get("sha256", ""))
    if record is None:
        return node
    if output is None:
        root = _root
    node.children = [chain(entry["path"], seen, root) for entry in record.get("inputs", [])]
    return node


def modified_paths(node: Node) -> list[str]:
    """Every file of the tree changed since its record was written."""
    found = [node.path] if node.modified else []
    for child in node.children:
        found += modified_paths(child)
    return found


def format_chain(node: Node, prefix: str = "", last: bool = True, root: bool = True) -> str:
    connector = "" if root else ("└─ " if last else "├─ ")
    record = node.record
    if node.repeated:
        line = f"{node.path}  (shown above)"
    elif record is None:
        line = f"{node.path}  [source: no record]"
    else:
        code = record.get("code", {})
        commit = (code.get("commit") or code.get("version") or "?")[:10]
        dirty = " dirty" if code.get("dirty") else ""
        wildcards = ",".join(f"{k}={v}" for k, v in record.get("wildcards", {}).items())
        sha = node.sha256[:12]
        line = (f"{node.path}  [rule {record['rule']}"
                f"{' ' + wildcards if wildcards else ''}; sha256 {sha}; code {commit}{dirty}; "
                f"{record.get('finished', '')}]")
        fetched = record.get("extra", {})
        if fetched.get("sha256") and fetched.get("version"):
            line += (f"  package {fetched.get('package', '')} {fetched['version']} "
                     f"sha256 {fetched['sha256'][:12]}")
        if node.modified:
            line += "  ** MODIFIED since recorded **"
    lines = [prefix + connector + line]
    child_prefix = prefix + ("" if root else ("   " if last else "│  "))
    for i, child in enumerate(node.children):
        lines.append(format_chain(child, child_prefix, i == len(node.children) - 1, root=False))
    return "\n".join(lines)
