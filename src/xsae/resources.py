"""What each job asks a cluster scheduler for: wall time, memory and GPUs, from the plan.

A cluster profile with flat sizes either wastes a queue (every SAE asks for a day and 64 GB) or
kills the large jobs, and a command-line `--default-resources` replaces a profile's defaults
wholesale. So every rule declares its own resources, and they come from the estimate `xsae plan`
prints for that job, scaled by `cluster.*` in the config and growing with each retry. Torch-free:
the Snakefile evaluates it while it builds the DAG.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xsae.plan import CostRow, PlanData, load_data, make_plan

#: Rule → its plan job as a glob over the job's wildcards. A job's plan rows (of the same rule) are
#: the one named so and those named `<job>/<stage>` (training and scoring of one job).
RULE_JOBS: dict[str, str] = {
    "extract_features": "{dataset}/{split}/{encoder}",
    "synthetic_data": "synthetic/d{distance}_s{seed}",
    "train_sae": "{run}",
    "synthetic_run": "synthetic/{method}/d{distance}_s{seed}",
    "sharedness_online": "sharedness/{dataset}/online/{encoder}",
    "sharedness_sae": "sharedness/{dataset}/{model}/layer{layer}",
    "evaluate_reconstruction": "{run}/reconstruction",
    "evaluate_sparc": "{run}/sparc",
    "evaluate_comparison": "{run}/{variant}",
    "align_sae": "{run}/align",
    "decoder_directions": "{run}/directions",
    "sharedness_pair": "sharedness/{dataset}/pair/{model_a}/{model_b}",
    "sharedness_comparative": "sharedness/*/comparative/{name}",
    "sharedness_shuffle": "sharedness/*/shuffle/{name}",
}
#: Rules whose plan rows all run at once in one process (their memory adds up).
CONCURRENT_ROWS_RULES = ("sharedness_online",)
#: Rules that build one dataset's sample tables: priced by its rows (costs.yaml `manifest`).
MANIFEST_RULES = ("manifest", "manifest_labelled", "manifest_prompts")
MB = 1e6


@dataclass(frozen=True)
class JobResources:
    """One job's request at its first attempt: wall time in minutes, memory in MB, GPUs."""

    runtime: int
    mem_mb: int
    gpu: int

    def at_attempt(self, attempt: int) -> JobResources:
        """A retry asks for `attempt` times the time and memory: the usual reasons a job dies."""
        return JobResources(self.runtime * attempt, self.mem_mb * attempt, self.gpu)


class ResourceTable:
    """Every job's request, priced once per workflow from the config's plan."""

    def __init__(self, costs: list[CostRow], dataset_rows: Mapping[str, int], cluster: Mapping[str, Any],
                 data: PlanData):
        self.cluster = cluster
        self.dataset_rows = dataset_rows
        self.data = data
        self.rows: dict[str, list[CostRow]] = {}
        for row in costs:
            self.rows.setdefault(row.rule, []).append(row)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], data: PlanData | None = None) -> ResourceTable:
        """The table of a validated config (defaults filled in, `cluster` included)."""
        data = data or load_data()
        plan = make_plan(config, data=data)
        dataset_rows: dict[str, int] = {}
        for row in plan.datasets:
            dataset_rows[row.dataset] = dataset_rows.get(row.dataset, 0) + row.rows
        return cls(plan.costs, dataset_rows, config["cluster"], data)

    def request(self, hours: float, memory_bytes: float, gpu: bool) -> JobResources:
        """The request for a job the plan estimates at `hours` and `memory_bytes`."""
        cluster = self.cluster
        minutes = max(math.ceil(hours * 60 * cluster["runtime_factor"]), cluster["runtime_minutes_min"])
        mem_mb = cluster["memory_mb_base"] + memory_bytes * cluster["memory_factor"] / MB
        return JobResources(minutes, int(math.ceil(mem_mb / 100) * 100), int(gpu))

    def _rows(self, rule: str, wildcards: Mapping[str, str]) -> tuple[list[CostRow], list[CostRow]]:
        """The rule's plan rows, and those of this job."""
        rows = self.rows.get(rule, [])
        job = RULE_JOBS[rule].format(**wildcards)
        return rows, [r for r in rows
                      if fnmatch.fnmatchcase(r.job, job) or fnmatch.fnmatchcase(r.job, f"{job}/*")]

    def job(self, rule: str, wildcards: Mapping[str, str]) -> JobResources:
        """The request of one job of `rule` with these wildcard values.

        Its own plan rows; a job the plan does not name gets the largest of its rule's, and a rule
        the plan does not price (tables, figures) the least request.
        """
        if rule in MANIFEST_RULES:
            rows = self.dataset_rows.get(wildcards.get("dataset", ""), 0)
            return self.request(rows / self.data.value("manifest", "rows_per_s") / 3600,
                                rows * self.data.value("manifest", "bytes_per_row"), False)
        if rule not in RULE_JOBS:
            return self.request(0.0, 0.0, False)
        rows, mine = self._rows(rule, wildcards)
        if not rows:
            return self.request(0.0, 0.0, False)
        chosen = mine or rows
        hours = sum(r.hours for r in mine) if mine else max(r.hours for r in rows)
        gpu = any(r.device == "gpu" for r in chosen)
        memory = (sum if mine and rule in CONCURRENT_ROWS_RULES else max)(r.memory_bytes for r in chosen)
        return self.request(hours, memory, gpu)

    def priced(self, rule: str, wildcards: Mapping[str, str]) -> bool:
        """Whether the plan prices this job by name (the tests hold every rule of RULE_JOBS to it)."""
        return bool(self._rows(rule, wildcards)[1])
