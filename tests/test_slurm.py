"""The cluster profile against a real SLURM cluster: the README's command runs a slice of the default
DAG (download → manifest → features → one SAE → its metrics) through `snakemake --profile slurm`,
and every output equals a local run's, byte for byte.

The cluster is one node with accounting (`slurm_cluster.py`; Debian's slurmctld, slurmd, slurmdbd,
munge and MariaDB, which `.ci/run` installs). What the test changes in the profile, and why:

- no conda: conda channels cannot be reached from the test machines (the profile keeps it);
- status checks start after 2 s, not the executor's 40.

The profile's `set-threads` (8 for extraction and training) stays: the node declares 8 CPUs
whatever the machine has, and the outputs still equal the local run's, because the numeric thread
count of each rule is the config's (`threads`), not the cores a job was given.

GPUs: the default config is a CPU config, so no job asks for one (`xsae.resources`); nothing to
override. The config is the default's tiny test variant (fixture stamps, real offline encoders).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, make_stamps_tree, tiny_config, write_config
from slurm_cluster import install_hint, start_cluster

pytestmark = pytest.mark.slow
RUN = "topk_effnet"
TARGET = f"results/metrics/{RUN}/reconstruction_test.csv"
#: Outputs that record where and when they were made, not what.
VOLATILE = re.compile(r"\.prov\.json$|^results/logs/|^\.snakemake/")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    hint = install_hint()
    if hint is not None:
        if shutil.which("apt-get"):
            pytest.fail(f"{hint} (.ci/run installs it)")
        pytest.skip(f"no SLURM here and no apt-get to install it: {hint}")
    system_config = Path("/etc/slurm/slurm.conf")
    if system_config.exists():
        pytest.skip(f"{system_config} exists: this machine is part of a SLURM cluster of its own")
    # The job-step executor's inner srun reads only the system-wide config (it drops $SLURM_CONF).
    started = start_cluster(tmp_path_factory.mktemp("slurm"), cpus=max(8, os.cpu_count() or 1),
                            system_config=system_config)
    yield started
    started.stop()


def _test_profile(folder: Path) -> Path:
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text(encoding="utf-8"))
    profile.pop("software-deployment-method")
    profile.update({"slurm-init-seconds-before-status-checks": 2, "latency-wait": 5, "retries": 0})
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    return folder


def _outputs(workdir: Path) -> dict[str, str]:
    files = {}
    for path in sorted(workdir.rglob("*")):
        relative = path.relative_to(workdir).as_posix()
        made = relative.startswith(("results/", "resources/")) and not VOLATILE.search(relative)
        if made and path.is_file():
            content = path.read_bytes()
            if path.name == "training_log.csv":  # its throughput column is the machine's, not the run's
                content = pd.read_csv(path).drop(columns="samples_per_s").to_csv(index=False).encode()
            files[relative] = hashlib.sha256(content).hexdigest()
    return files


def _snakemake(argv: list[str], workdir: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                             "--directory", str(workdir), *argv], env=env, capture_output=True, text=True,
                            timeout=1800, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def test_readme_cluster_command_runs_the_default_dag_on_slurm_as_locally(cluster, tmp_path):
    config = write_config(tiny_config(make_stamps_tree(tmp_path / "package")), tmp_path / "tiny.yaml")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    local, remote = tmp_path / "local", tmp_path / "cluster"
    _snakemake([TARGET, "--cores", "2", "--configfile", str(config)], local, env)

    # The README's command, with the cluster's account and partition filled in.
    profile = _test_profile(tmp_path / "profile")
    output = _snakemake([TARGET, "--profile", str(profile), "--default-resources",
                         f"slurm_account={cluster.account}", f"slurm_partition={cluster.partition}",
                         "--configfile", str(config)],
                        remote, {**env, **cluster.env})
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", output)
    assert len(submitted) >= 4, output[-4000:]  # manifest, two feature files, the SAE, its metrics

    accounting = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "--format", "JobID,Account,Partition,Timelimit,ReqMem,State"],
        env={**os.environ, **cluster.env}, capture_output=True, text=True, check=True).stdout
    jobs = {line.split("|")[0]: line.split("|") for line in accounting.splitlines() if line}
    for job in submitted:
        _, account, partition, limit, memory, state = jobs[job]
        assert (account, partition, state) == (cluster.account, cluster.partition, "COMPLETED"), jobs[job]
        # The wall time and memory each rule asks for (xsae.resources), though --default-resources
        # replaced the profile's defaults: at least the config's floor of 20 min and 4,000 MB.
        hours, minutes, _ = (int(part) for part in limit.split(":"))
        assert hours * 60 + minutes >= 20 and int(memory.rstrip("M")) >= 4000, jobs[job]

    expected, got = _outputs(local), _outputs(remote)
    assert TARGET in expected and f"results/sae/{RUN}/weights.safetensors" in expected
    assert got == expected, {name: (expected.get(name), got.get(name))
                             for name in set(expected) | set(got) if expected.get(name) != got.get(name)}
