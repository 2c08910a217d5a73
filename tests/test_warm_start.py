"""Warm start: a job forked from the preloaded server behaves as `python script.py` would (cwd,
environment, argv, streams, exit status, thread counts), a killed job takes its process with it,
and a Snakemake rule run warm writes the same bytes as one run cold."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xsae import warm_start

JOB = textwrap.dedent("""
    import os, sys, time
    import torch
    print("cwd", os.getcwd(), "argv", sys.argv[1:], "name", __name__, flush=True)
    print("env", os.environ.get("JOB_VALUE"), os.environ.get("XSAE_WARM_START"), flush=True)
    print("threads", torch.get_num_threads(), flush=True)
    print("to stderr", file=sys.stderr)
    mode = os.environ.get("JOB_MODE", "")
    if mode == "raise":
        raise ValueError("the job failed")
    if mode == "message":
        sys.exit("a readable message")
    if mode == "status":
        sys.exit(3)
    if mode == "sleep":
        open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
        time.sleep(60)
""")


@pytest.fixture(scope="module")
def wrapper():
    with warm_start.warm_interpreter(["torch"]) as path:
        yield path


def run_job(wrapper: Path, script: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(wrapper), str(script)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, check=False)


def test_a_job_runs_as_its_own_script_would(wrapper, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_job(wrapper, script, workdir, JOB_VALUE="42", OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"cwd {workdir} argv [] name __main__", "env 42 1", "threads 1"]
    assert result.stderr == "to stderr\n"
    two = run_job(wrapper, script, workdir, OMP_NUM_THREADS="2")
    assert two.stdout.splitlines()[-1] == "threads 2"  # Snakemake's per-job count, not the server's


@pytest.mark.parametrize(("mode", "status", "stderr_end"), [
    ("raise", 1, "ValueError: the job failed\n"),
    ("message", 1, "a readable message\n"),
    ("status", 3, "to stderr\n"),
])
def test_a_failing_job_reports_as_python_would(wrapper, tmp_path, mode, status, stderr_end):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    result = run_job(wrapper, script, tmp_path, JOB_MODE=mode)
    assert result.returncode == status
    assert result.stderr.endswith(stderr_end)
    if mode == "raise":  # the script's own frames, none of the server's
        assert f'File "{script}", line 10' in result.stderr and "warm_start.py" not in result.stderr


def test_a_killed_job_takes_its_process_with_it(wrapper, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    pid_file = tmp_path / "pid"
    job = subprocess.Popen([str(wrapper), str(script)], cwd=tmp_path,
                           env={**os.environ, "JOB_MODE": "sleep", "PID_FILE": str(pid_file)})
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    job.kill()
    job.wait()
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, f"job process {pid} outlived its wrapper"
        time.sleep(0.05)


def test_anything_but_a_script_goes_to_the_real_interpreter(wrapper, tmp_path):
    code = "import sys, os; print(sys.executable, os.environ.get('XSAE_WARM_START'))"
    result = subprocess.run([str(wrapper), "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [sys.executable, "None"]


def test_without_a_server_the_wrapper_runs_the_script_cold(tmp_path):
    address = tmp_path / "absent.sock"
    wrapper = tmp_path / "python"
    wrapper.write_text(warm_start.WRAPPER.format(python=sys.executable, address=str(address)))
    wrapper.chmod(0o755)
    script = tmp_path / "job.py"
    script.write_text("import os; print(os.environ.get('XSAE_WARM_START'))")
    result = subprocess.run([str(wrapper), str(script)], capture_output=True, text=True, check=True)
    assert result.stdout == "None\n"


def test_the_server_preloads_what_the_workflow_scripts_import(tmp_path):
    (tmp_path / "a.py").write_text("import torch\nfrom xsae import io\nfrom .local import x\n"
                                   "def f():\n    import late\n")
    (tmp_path / "b.py").write_text("import numpy as np, torch\nfrom xsae.workflow import script\n")
    assert warm_start.script_imports(tmp_path) == ["torch", "xsae", "numpy", "xsae.workflow"]
    assert "torch" in warm_start.script_imports()  # the real scripts
    assert warm_start.preload(["json", "surely_not_installed_module"]) == ["surely_not_installed_module"]


SNAKEFILE = """
rule all:
    input: "out/weights.bin", "out/where.txt"

rule compute:
    output: weights="out/weights.bin", where="out/where.txt"
    threads: 2
    script: "compute.py"
"""
COMPUTE = """
import os
import torch
torch.manual_seed(0)
x = torch.randn(300, 200)
w = torch.linalg.lstsq(x, torch.randn(300, 50)).solution
w = torch.nn.functional.relu(x @ w).sum(0)
open(snakemake.output.weights, "wb").write(w.numpy().tobytes())
open(snakemake.output.where, "w").write(str(os.environ.get("XSAE_WARM_START")))
"""


def test_a_snakemake_rule_run_warm_writes_the_bytes_of_a_cold_run(tmp_path):
    outputs = {}
    for warm in (False, True):
        workdir = tmp_path / ("warm" if warm else "cold")
        workdir.mkdir()
        (workdir / "Snakefile").write_text(SNAKEFILE)
        (workdir / "compute.py").write_text(COMPUTE)
        status = warm_start.run_snakemake(["-s", str(workdir / "Snakefile"), "--directory", str(workdir),
                                           "--cores", "2", "--quiet"], warm=warm)
        assert status == 0
        outputs[warm] = (workdir / "out" / "weights.bin").read_bytes()
        assert (workdir / "out" / "where.txt").read_text() == ("1" if warm else "None")
    assert outputs[True] == outputs[False]


def test_cluster_runs_keep_the_real_interpreter():
    assert warm_start.runs_locally(["--cores", "2", "--configfile", "config/paper.yaml"])
    assert not warm_start.runs_locally(["--profile", "slurm", "-n"])
    assert not warm_start.runs_locally(["--executor=slurm"])
    assert not warm_start.runs_locally(["-e", "slurm"])


def test_jobs_find_the_interpreters_tools_without_an_activated_venv():
    env = warm_start.job_environment({"PATH": "/usr/bin:/bin", "OTHER": "x"})
    assert env["PATH"].split(os.pathsep) == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    assert env["OTHER"] == "x"
