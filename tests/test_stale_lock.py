"""A killed run's lock is removed by `xsae run` when no Snakemake process works in the folder,
and kept while one does."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from xsae.workflow import recover_stale_lock, snakemake_workdir


def _locked(workdir: Path) -> list[Path]:
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    paths = [locks / "0.input.lock", locks / "0.output.lock"]
    for path in paths:
        path.write_text("results/x\n")
    return paths


def test_a_stale_lock_is_removed(tmp_path):
    paths = _locked(tmp_path)
    assert recover_stale_lock(tmp_path) == paths
    assert not any(p.exists() for p in paths)
    assert recover_stale_lock(tmp_path) == []  # nothing left to do


def test_a_lock_held_by_a_running_snakemake_is_kept(tmp_path):
    paths = _locked(tmp_path)
    # a process named snakemake working in the folder, as a running workflow would be
    holder = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 30"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        # wait for bash's exec: until then the process is bash, mid-exec for a moment
        while not Path(f"/proc/{holder.pid}/cmdline").read_bytes().startswith(b"snakemake\0"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert recover_stale_lock(tmp_path) == []
        assert all(p.exists() for p in paths)
    finally:
        holder.kill()
        holder.wait()
    assert recover_stale_lock(tmp_path) == paths


def test_a_folder_without_locks_is_left_alone(tmp_path):
    assert recover_stale_lock(tmp_path) == []
    assert not (tmp_path / ".snakemake").exists()


def test_a_snakemake_pointed_at_the_folder_from_elsewhere_holds_it(tmp_path):
    """`snakemake --directory WORK`, started in another folder (as the rehearsal runs it)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths = _locked(work)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake",
                               "--directory", "../work"], cwd=elsewhere)
    try:
        assert recover_stale_lock(work) == []
        assert all(p.exists() for p in paths)
    finally:
        holder.kill()
        holder.wait()


def test_the_workdir_of_snakemake_arguments(tmp_path):
    assert snakemake_workdir(["--cores", "2"], tmp_path) == tmp_path.resolve()
    assert snakemake_workdir(["-d", "w", "--cores", "2"], tmp_path) == (tmp_path / "w").resolve()
    assert snakemake_workdir(["--directory=/x/y"], tmp_path) == Path("/x/y")
