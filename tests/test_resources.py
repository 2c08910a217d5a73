"""Cluster requests (`xsae.resources`): known answers from hand-made plan rows, and every job of
the default and paper DAGs sized from its own plan row through the slurm profile."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO, dry_run_jobs

from xsae import config as config_module
from xsae.plan import CostRow, load_data
from xsae.resources import MANIFEST_RULES, RULE_JOBS, JobResources, ResourceTable

CLUSTER = {"gpu_rules": [], "runtime_factor": 3, "runtime_minutes_min": 20, "memory_factor": 1.5,
           "memory_mb_base": 4000}


def row(rule: str, job: str, hours: float, memory_gb: float, device: str = "cpu") -> CostRow:
    return CostRow("training", job, "", rule, device, 0, 0.0, hours, 0.0, memory_gb * 1e9, "")


def table(*rows: CostRow, dataset_rows: dict | None = None) -> ResourceTable:
    return ResourceTable(list(rows), dataset_rows or {}, CLUSTER, load_data())


def test_a_job_asks_for_its_plan_estimate_scaled_and_more_on_each_retry():
    resources = table(row("train_sae", "oi_global", 1.0, 2.0, "gpu"), row("train_sae", "oi_local", 0.1, 1.0))
    # 1 h × 3 = 180 min; 4,000 MB + 2 GB × 1.5 = 7,000 MB; a GPU because the plan puts it on one
    assert resources.job("train_sae", {"run": "oi_global"}) == JobResources(180, 7000, 1)
    assert resources.job("train_sae", {"run": "oi_global"}).at_attempt(2) == JobResources(360, 14000, 1)
    # 6 min × 3 = 18 min is under the 20-minute floor
    assert resources.job("train_sae", {"run": "oi_local"}) == JobResources(20, 5500, 0)
    # a name the plan does not know gets the largest of its rule's rows
    assert resources.job("train_sae", {"run": "other"}) == JobResources(180, 7000, 1)
    assert not resources.priced("train_sae", {"run": "other"})


def test_stages_of_one_job_add_up_and_names_match_exactly():
    resources = table(row("synthetic_run", "synthetic/shared/d0.2_s1", 0.5, 1.0),
                      row("synthetic_run", "synthetic/shared/d0.2_s1/score", 0.25, 3.0),
                      row("synthetic_run", "synthetic/shared/d0.2_s10", 9.0, 9.0))
    wildcards = {"method": "shared", "distance": "0.2", "seed": "1"}
    # (0.5 + 0.25) h × 3 = 135 min; the larger stage's memory: 4,000 + 3 GB × 1.5
    assert resources.job("synthetic_run", wildcards) == JobResources(135, 8500, 0)


def test_rules_the_plan_does_not_price_and_manifests():
    resources = table(row("train_sae", "a", 1.0, 1.0), dataset_rows={"coco": 1_000_000})
    assert resources.job("table_sparc", {"table": "x"}) == JobResources(20, 4000, 0)
    assert resources.job("evaluate_sparc", {"run": "a", "split": "test"}) == JobResources(20, 4000, 0)
    # 1e6 rows at 2,000 rows/s: 1/7.2 h × 3 = 25 min; 4,000 MB + 1e6 × 4,000 B × 1.5
    assert resources.job("manifest_labelled", {"dataset": "coco"}) == JobResources(25, 10000, 0)


def test_gpu_rules_come_from_the_config(tmp_path):
    paper = config_module.load_files(config_module.config_files([REPO / "config" / "paper.yaml"]))
    run = next(iter(paper["sae_runs"]))
    assert ResourceTable.from_config(paper).job("train_sae", {"run": run}).gpu == 1
    paper["cluster"]["gpu_rules"] = []
    assert ResourceTable.from_config(paper).job("train_sae", {"run": run}).gpu == 0
    default = config_module.load_files(config_module.config_files([]))
    run = next(iter(default["sae_runs"]))
    assert ResourceTable.from_config(default).job("train_sae", {"run": run}).gpu == 0  # a CPU config


@pytest.mark.slow
@pytest.mark.parametrize("config_file", ["config.yaml", "paper.yaml"])
def test_every_job_of_the_dag_is_sized_from_its_own_plan_row(tmp_path, config_file):
    profile = tmp_path / "profile"
    profile.mkdir()
    text = (REPO / "slurm" / "config.yaml").read_text(encoding="utf-8")
    # Snakemake asks conda for its version even in a dry run; the same profile without conda.
    (profile / "config.yaml").write_text(re.sub(r"(?m)^software-deployment-method:.*$", "", text),
                                         encoding="utf-8")
    path = REPO / "config" / config_file
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--profile", str(profile), "--configfile", str(path),
         "--default-resources", "slurm_account=a", "slurm_partition=p"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    config = config_module.load_files(config_module.config_files([path]))
    resources = ResourceTable.from_config(config)
    jobs = dry_run_jobs(result.stdout + result.stderr)
    assert {rule for rule, _, _ in jobs} >= {"train_sae", "extract_features", "sharedness_sae"}
    for rule, wildcards, asked in jobs:
        if rule in RULE_JOBS:
            assert resources.priced(rule, wildcards), f"the plan has no row for {rule} {wildcards}"
        if rule in RULE_JOBS or rule in MANIFEST_RULES:
            expected = resources.job(rule, wildcards)
            assert (int(asked["runtime"]), int(asked["mem_mb"]), int(asked["gpu"])) == (
                expected.runtime, expected.mem_mb, expected.gpu), (rule, wildcards, asked)
            assert asked["slurm_account"] == "a" and asked["slurm_partition"] == "p"


def test_profile_sizes_nothing_itself():
    """Sizes in the profile would be lost to a command-line --default-resources (and shadow the plan)."""
    text = (REPO / "slurm" / "config.yaml").read_text(encoding="utf-8")
    assert not re.search(r"(?m)^(default-resources|set-resources):", text)
