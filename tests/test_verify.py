"""`xsae verify`: every output checked against its provenance record, by content."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from xsae import provenance
from xsae.verify import Finding, rerun_arguments, verify


def make_run(root: Path) -> None:
    """Two recorded outputs of one job, a recorded folder, a log (not an output) and Snakemake's state."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        (root / "results" / "metrics").mkdir(parents=True)
        (root / "resources" / "data" / "unpacked").mkdir(parents=True)
        (root / "resources" / "data" / "unpacked" / "a.png").write_bytes(b"png")
        with provenance.job("download", [], ["resources/data/unpacked"]):
            pass
        with provenance.job("evaluate", ["resources/data/unpacked"],
                            ["results/metrics/a.csv", "results/metrics/b.csv"]):
            Path("results/metrics/a.csv").write_text("x,y\n1,2\n")
            Path("results/metrics/b.csv").write_text("x,y\n3,4\n")
        (root / "results" / "logs").mkdir()
        (root / "results" / "logs" / "evaluate.log").write_text("log")
        (root / ".snakemake").mkdir()
    finally:
        os.chdir(cwd)


def test_a_finished_run_verifies_clean(tmp_path):
    make_run(tmp_path)
    assert verify(tmp_path, show_progress=False) == []


def test_corrupt_missing_and_unrecorded_files_are_found(tmp_path):
    make_run(tmp_path)
    corrupt = tmp_path / "results/metrics/a.csv"
    stat = corrupt.stat()
    corrupt.write_text("x,y\n9,2\n")  # same size
    os.utime(corrupt, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime: invisible to Snakemake
    (tmp_path / "results/metrics/b.csv").unlink()
    (tmp_path / "results/metrics/stray.csv").write_text("?")
    (tmp_path / "resources/data/unpacked/a.png").write_bytes(b"PNG")  # a recorded folder's content
    found = verify(tmp_path, show_progress=False)
    assert [(f.path, f.problem) for f in found] == [
        ("resources/data/unpacked", "modified"), ("results/metrics/a.csv", "modified"),
        ("results/metrics/b.csv", "missing"), ("results/metrics/stray.csv", "unrecorded")]
    assert rerun_arguments(found) == ["--forcerun", "resources/data/unpacked", "results/metrics/a.csv",
                                      "results/metrics/b.csv"]
    assert rerun_arguments([Finding("results/x", "unrecorded")]) == []


def test_cli_exit_status_and_the_command_it_prints(tmp_path):
    make_run(tmp_path)
    command = [sys.executable, "-m", "xsae.cli", "verify", str(tmp_path), "--quiet"]
    clean = subprocess.run(command, capture_output=True, text=True, check=False)
    assert clean.returncode == 0 and "every recorded output matches" in clean.stdout
    (tmp_path / "results/report.html").write_text("<html>")  # unrecorded: listed, not an error
    listed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and "unrecorded results/report.html" in listed.stdout
    (tmp_path / "results/metrics/b.csv").unlink()
    broken = subprocess.run(command, capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert "missing    results/metrics/b.csv" in broken.stdout
    assert f"xsae run -- --directory {tmp_path} --forcerun results/metrics/b.csv" in broken.stderr


def test_a_job_removes_the_records_of_its_outputs_before_it_runs(tmp_path):
    make_run(tmp_path)
    record = tmp_path / "results/metrics/a.csv.prov.json"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        try:
            with provenance.job("evaluate", [], ["results/metrics/a.csv"]):
                assert not record.exists()  # a job killed from here on leaves no stale record
                raise RuntimeError("killed")
        except RuntimeError:
            pass
    finally:
        os.chdir(cwd)
    assert not record.exists()
