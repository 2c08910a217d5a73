"""Glue for workflow scripts (logging to the rule's log file, failing with a clear message) and for
running the workflow locally (a stale lock left by a killed run)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xsae.errors import XsaeError


@contextlib.contextmanager
def script(snakemake: Any) -> Iterator[logging.Logger]:
    """Log to the rule's log file and stderr; turn library errors into one readable line."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_files = [p for p in snakemake.log if str(p).endswith(".log")]
    if log_files:
        handlers.append(logging.FileHandler(log_files[0], mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(f"xsae.rule.{snakemake.rule}")
    logger.info("rule %s, wildcards %s", snakemake.rule, dict(snakemake.wildcards.items()))
    try:
        yield logger
    except XsaeError as exc:
        logger.error("%s", exc)
        sys.exit(f"{snakemake.rule}: {exc}")


def snakemake_workdir(args: Sequence[str], cwd: str | Path = ".") -> Path:
    """The folder Snakemake with `args`, started in `cwd`, works in (`-d/--directory`, else `cwd`)."""
    workdir = "."
    for i, arg in enumerate(args):
        if arg in ("-d", "--directory") and i + 1 < len(args):
            workdir = args[i + 1]
        elif arg.startswith("--directory="):
            workdir = arg.partition("=")[2]
    return (Path(cwd) / workdir).resolve()


def _snakemake_running_in(workdir: Path) -> list[int]:
    """Process ids of Snakemake processes working in `workdir`, started there or pointed at it
    with `--directory` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if any("snakemake" in arg for arg in args) and \
                    snakemake_workdir(args, os.readlink(entry / "cwd")) == workdir:
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def recover_stale_lock(workdir: str | Path = ".") -> list[Path]:
    """Remove Snakemake's lock files in `workdir` when no Snakemake process works there: a run
    that was killed leaves them, and the next one would refuse to start. Returns what was
    removed (nothing while a Snakemake process holds the folder, or where /proc is absent)."""
    workdir = Path(workdir).resolve()
    locks = sorted((workdir / ".snakemake" / "locks").glob("*.lock"))
    if not locks or not Path("/proc/self").exists() or _snakemake_running_in(workdir):
        return []
    for lock in locks:
        lock.unlink(missing_ok=True)
    return locks
