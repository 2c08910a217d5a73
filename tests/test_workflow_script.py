"""`xsae.workflow.script`: a job's failure as one readable line, in the job's log too."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from xsae.io import atomic_path
from xsae.workflow import script


def fake_snakemake(log):
    wildcards = SimpleNamespace(items=lambda: [("run", "a")])
    return SimpleNamespace(rule="train_sae", log=[str(log)], wildcards=wildcards)


def test_a_full_disk_is_one_line_naming_the_file_in_the_log_too(tmp_path):
    log = tmp_path / "job.log"
    final = tmp_path / "results" / "weights.safetensors"
    with pytest.raises(SystemExit) as exited, script(fake_snakemake(log)), atomic_path(final) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    message = str(exited.value.code)
    assert message.startswith(f"train_sae: cannot write {final}: No space left on device (free space")
    assert "\n" not in message and message.split(": ", 1)[1] in log.read_text()
    assert not final.exists() and list(final.parent.iterdir()) == []  # nothing half-written


def test_an_unwritable_folder_and_an_h5py_error_are_named(tmp_path):
    with pytest.raises(SystemExit) as exited, script(fake_snakemake(tmp_path / "job.log")):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/results/x.csv")
    assert "cannot write /data/results/x.csv: Permission denied (make the folder" in exited.value.code
    with pytest.raises(SystemExit) as exited, script(fake_snakemake(tmp_path / "job.log")):
        raise OSError("Unable to create file (unable to open file: name = 'f.h5', errno = 28, "
                      "error message = 'No space left on device')")
    assert "No space left on device (free space" in exited.value.code


def test_other_errors_keep_their_traceback_in_the_log_too(tmp_path, capsys):
    log = tmp_path / "job.log"
    with pytest.raises(FileNotFoundError), script(fake_snakemake(log)):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")
    with pytest.raises(ValueError), script(fake_snakemake(log)):
        raise ValueError("a bug in a table")
    text = log.read_text()
    assert "ERROR" in text and "Traceback (most recent call last)" in text
    assert "ValueError: a bug in a table" in text
    assert "a bug in a table" not in capsys.readouterr().err  # stderr gets it once, from Python, not twice


def test_numeric_threads_come_from_the_config_not_from_the_cores(tmp_path):
    import torch

    from xsae.provenance import Job

    before = torch.get_num_threads()
    job = fake_snakemake(tmp_path / "job.log")
    job.threads, job.config = 7, {"threads": {"train_sae": 3}}  # Snakemake gave 7 cores
    job.input, job.output, job.params = [], [str(tmp_path / "out")], SimpleNamespace(items=lambda: [])
    try:
        with script(job):
            assert torch.get_num_threads() == 3
        assert Job.from_snakemake(job).record()["threads"]["job"] == 3
        job.config = {"threads": {}}  # a rule the config does not list: 1
        with script(job):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_config_files_of_snakemake_arguments():
    from xsae.workflow import configfile_args

    assert configfile_args(["-n", "--configfile", "a.yaml", "b.yaml", "--cores", "2"]) == ["a.yaml", "b.yaml"]
    assert configfile_args(["--configfile=c.yaml", "all"]) == ["c.yaml"]
    assert configfile_args(["--cores", "2", "target"]) == []


def test_xsae_run_names_the_file_line_and_column_of_a_yaml_error(tmp_path):
    """Snakemake itself says only "Config file is not valid JSON or YAML"."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndatasets:\n  tux: {kind: tuxpaint_stamps\n  x: 1\n")
    result = subprocess.run([sys.executable, "-m", "xsae.cli", "run", "--", "-n", "--configfile", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert f'{bad}: not valid YAML' in result.stderr and 'line 4, column 4' in result.stderr


def test_plain_snakemake_names_the_line_and_column_of_a_broken_default_config(tmp_path):
    """The embedded default is read by the Snakefile before Snakemake's own loader sees it."""
    import subprocess
    import sys

    from helpers import workflow_copy

    workflow_copy(tmp_path / "repo")
    default = tmp_path / "repo" / "config" / "config.yaml"
    default.write_text("seed: 1\ndatasets:\n  tux: {kind: tuxpaint_stamps\n  x: 1\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], cwd=tmp_path / "repo",
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{default}: not valid YAML" in output and "line 4, column 4" in output
