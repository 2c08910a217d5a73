"""Glue for workflow scripts (logging to the rule's log file, failing with a clear message) and for
running the workflow locally (a stale lock left by a killed run)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
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
    log_file = logging.FileHandler(log_files[0], mode="w", encoding="utf-8") if log_files else None
    if log_file is not None:
        handlers.append(log_file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(f"xsae.rule.{snakemake.rule}")
    threads = numeric_threads(snakemake)
    torch = sys.modules.get("torch")
    if torch is not None:  # a script that computes imported it (render rules have none)
        torch.set_num_threads(threads)
    logger.info("rule %s, wildcards %s, %d numeric thread(s)", snakemake.rule,
                dict(snakemake.wildcards.items()), threads)
    try:
        yield logger
    except XsaeError as exc:
        logger.error("%s", exc)
        sys.exit(f"{snakemake.rule}: {exc}")
    except OSError as exc:
        if storage_errno(exc) not in STORAGE_ERRORS:
            _traceback_to(log_file, logger)
            raise
        message = storage_message(exc)
        logger.error("%s", message)
        sys.exit(f"{snakemake.rule}: {message}")
    except Exception:  # a bug: its traceback goes to the job's log too (stderr gets it from Python)
        _traceback_to(log_file, logger)
        raise


def _traceback_to(handler: logging.Handler | None, logger: logging.Logger) -> None:
    """The exception being handled, with its traceback, into the job's log file only."""
    if handler is not None:
        handler.handle(logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "unexpected error", (),
                                         sys.exc_info()))


def numeric_threads(snakemake: Any) -> int:
    """The rule's numeric thread count from the config (`threads.<rule>`, 1 when not listed):
    outputs depend on it, so it is the config's, whatever cores Snakemake gave the job."""
    threads = (getattr(snakemake, "config", None) or {}).get("threads") or {}
    return int(threads.get(snakemake.rule, 1))


#: Errors of the storage, not of the code: the disk is full or read-only, or the folder is not ours.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def storage_errno(exc: OSError) -> int | None:
    """The error number, also where a library put it only in the message (h5py: "errno = 28")."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found else None


def storage_message(exc: OSError) -> str:
    """One line: which file (the final name, not its temporary sibling), what the system said, and
    what to do."""
    where = str(exc.filename or "a file")
    temporary = re.fullmatch(r"(.*/)?\.(.+)\.[^./]+\.tmp", where)  # xsae.io.atomic_path's temporaries
    if temporary:
        where = f"{temporary.group(1) or ''}{temporary.group(2)}"
    code = storage_errno(exc)
    reason = exc.strerror or os.strerror(code) if code else str(exc)
    hint = {errno.ENOSPC: "free space there (or point the run at a larger disk) and rerun",
            errno.EDQUOT: "free space in your quota and rerun",
            errno.EROFS: "the file system is read-only: run in a writable folder",
            errno.EACCES: "make the folder writable for you, or run elsewhere",
            errno.EPERM: "make the folder writable for you, or run elsewhere"}[code]
    return f"cannot write {where}: {reason} ({hint}); nothing half-written was kept"


def snakemake_workdir(args: Sequence[str], cwd: str | Path = ".") -> Path:
    """The folder Snakemake with `args`, started in `cwd`, works in (`-d/--directory`, else `cwd`)."""
    workdir = "."
    for i, arg in enumerate(args):
        if arg in ("-d", "--directory") and i + 1 < len(args):
            workdir = args[i + 1]
        elif arg.startswith("--directory="):
            workdir = arg.partition("=")[2]
    return (Path(cwd) / workdir).resolve()


def configfile_args(args: Sequence[str]) -> list[str]:
    """The config files Snakemake with `args` would read (`--configfile(s) A B ...`, `--configfile=A`)."""
    files: list[str] = []
    taking = False
    for arg in args:
        if arg in ("--configfile", "--configfiles"):
            taking = True
        elif arg.startswith(("--configfile=", "--configfiles=")):
            files.append(arg.partition("=")[2])
            taking = False
        elif taking and not arg.startswith("-"):
            files.append(arg)
        else:
            taking = False
    return files


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
