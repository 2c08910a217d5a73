"""Check every output of a run against its provenance record, and say what to rerun.

A corrupt file that keeps its size and mtime is invisible to Snakemake, and a deleted intermediate
file is not rebuilt when the targets after it still exist. Every output has a record beside it
with its sha256 (`xsae.provenance`), so `xsae verify` hashes each output again and reports:

- modified: the content differs from the record (corrupt, or edited by hand);
- missing: a record whose output is gone (deleted, or a job killed before it finished);
- unrecorded: a file under results/ that no job recorded (a report, or a file left by something
  else): listed, not an error.

The remedy is Snakemake's `--forcerun` of the bad files: it makes them again and reruns every job
downstream of them, so the original target then rebuilds everything needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xsae.io import sha256_path
from xsae.progress import progress
from xsae.provenance import SUFFIX, read_record, recorded_output

#: Folders of a run whose files jobs write (and record); logs and Snakemake's own state are not outputs.
OUTPUT_FOLDERS = ("results", "resources")
NOT_OUTPUTS = ("results/logs/", "results/notebooks/", ".snakemake/")


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the run's folder
    problem: str  # modified, missing, unrecorded
    detail: str = ""


def _walk(root: Path) -> Iterable[Path]:
    for folder in OUTPUT_FOLDERS:
        base = root / folder
        if base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name


def verify(root: str | os.PathLike = ".", *, show_progress: bool = True) -> list[Finding]:
    """Every problem of the run in `root` (a workflow's working folder), in path order."""
    root = Path(root)
    records, files = [], set()
    for path in _walk(root):
        relative = path.relative_to(root).as_posix()
        if relative.endswith(SUFFIX):
            records.append(path)
        elif not relative.startswith(NOT_OUTPUTS):
            files.add(path)
    findings: list[Finding] = []
    covered: set[Path] = set()
    for record_file in progress(iterable=records, disable=not show_progress, desc="verify", unit="record"):
        output = Path(str(record_file)[:-len(SUFFIX)])
        relative = output.relative_to(root).as_posix()
        covered.add(output)
        if output.is_dir():
            covered.update(p for p in files if output in p.parents)
        record = read_record(output)
        entry, _ = recorded_output(output, record)
        if not output.exists():
            findings.append(Finding(relative, "missing", f"its record {record_file.name} is left"))
        elif entry is None or "sha256" not in entry:
            findings.append(Finding(relative, "unrecorded", "its record does not list it"))
        elif sha256_path(output) != entry["sha256"]:
            findings.append(Finding(relative, "modified", f"sha256 differs from the record "
                                                          f"({entry['sha256'][:12]}…)"))
    findings += [Finding(p.relative_to(root).as_posix(), "unrecorded", "no record beside it")
                 for p in sorted(files - covered)]
    return sorted(findings, key=lambda f: f.path)


def rerun_arguments(findings: Sequence[Finding]) -> list[str]:
    """Snakemake arguments that make the bad files again and everything downstream of them."""
    targets = [f.path for f in findings if f.problem in ("modified", "missing")]
    return ["--forcerun", *targets] if targets else []
