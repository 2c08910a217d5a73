"""`bench/gpu_check.py --small` on the CPU: every check runs and stays within its tolerance, and the
CUDA-only comparisons are reported as skipped with the reason, so the script is known to work
before the day it meets a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"

CHECKS = {
    "sae_train/global/fp32", "sae_train/global/bf16", "sae_train/local/fp32", "sae_train/local/bf16",
    "sae_train/resume", "sae_train/load_encode",
    "retrieval/dense", "retrieval/codes", "retrieval/multi_caption",
    "correlation/sparse",
    "mamba/selective_scan", "mamba/network",
    "extract/vit_l14_openclip", "extract/dinov2_l14_reg",
}
GROUPS = ("sae_train", "retrieval", "correlation", "mamba", "extract", "peak")
CUDA_ONLY = {f"{group}:cuda" for group in GROUPS}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One run of the script as a user would start it (one CPU thread: steadier on a shared CPU)."""
    report = tmp_path_factory.mktemp("gpu_check") / "report.json"
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--device", "cpu", "--threads", "1", "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout + process.stderr
    return process, json.loads(report.read_text())


def _by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def _value(check: dict, quantity: str) -> float:
    return check["deviations"][quantity]["value"]


def test_every_check_runs_and_passes(run):
    _, report = run
    checks = _by_name(report)
    assert set(checks) == CHECKS
    assert report["ok"] and report["device"] == "cpu" and report["small"]
    for name, check in checks.items():
        assert check["status"] == "OK", (name, check["reason"])
        assert check["deviations"], name
        for quantity, deviation in check["deviations"].items():
            assert deviation["value"] <= deviation["tol"], (name, quantity, deviation)
        assert check["throughput"] and all(v > 0 for v in check["throughput"].values()), name


def test_deviations_are_those_each_comparison_promises(run):
    checks = _by_name(run[1])
    for topk in ("global", "local"):
        fp32, bf16 = checks[f"sae_train/{topk}/fp32"], checks[f"sae_train/{topk}/bf16"]
        # the CPU against itself is bitwise; against the dense float64 reference only rounding remains
        assert _value(fp32, "loss_curve") == 0 and _value(fp32, "weight_update") == 0
        assert fp32["deviations"]["loss_curve"]["tol"] == 0
        assert _value(fp32, "loss_vs_float64") < 1e-5 and _value(fp32, "grad_vs_float64") < 1e-3
        # bf16 autocast moves things, but stays equivalent
        assert 0 < _value(bf16, "grad_vs_float64") <= bf16["deviations"]["grad_vs_float64"]["tol"] <= 0.5
        assert _value(bf16, "loss_curve") < 3e-2
    for name in ("sae_train/resume", "sae_train/load_encode",  # the CPU against itself: bitwise
                 "retrieval/dense", "retrieval/codes", "retrieval/multi_caption"):
        assert all(d["value"] == 0 and d["tol"] == 0 for d in checks[name]["deviations"].values()), name
    correlation = checks["correlation/sparse"]["deviations"]
    assert correlation["best_match_mismatches"]["value"] == 0
    assert max(d["value"] for d in correlation.values()) <= 1e-10
    assert _value(checks["mamba/selective_scan"], "cpu_vs_float64_closed_form") <= 1e-4
    assert _value(checks["mamba/network"], "bf16_autocast_cosine_deficit") <= 1e-2
    for name, modalities in (("extract/vit_l14_openclip", ("image", "text")),
                             ("extract/dinov2_l14_reg", ("image",))):
        deviations = checks[name]["deviations"]
        for modality in modalities:
            assert _value(checks[name], f"cosine_deficit/pooled/{modality}") <= 1e-6
            # keys: cpu_bf16_autocast/<cosine_deficit|mismatch>/<array kind>/<modality>[/<layer>]
            bf16 = {tuple(key.split("/")[1:4]): d["value"] for key, d in deviations.items()
                    if key.startswith("cpu_bf16_autocast/") and key.split("/")[3] == modality}
            kinds = {(measure, kind) for measure, kind, _ in bf16}
            assert kinds == {("cosine_deficit", "pooled"), ("cosine_deficit", "layers"),
                             ("cosine_deficit", "tokens"), ("mismatch", "token_rows")}, (name, kinds)
            assert max(v for key, v in bf16.items() if key[0] == "cosine_deficit") <= 1e-2
            assert all(v == 0 for key, v in bf16.items() if key[0] == "mismatch")


def test_cuda_only_parts_are_reported_as_skipped(run):
    process, report = run
    skipped = {check["name"]: check for check in report["skipped"]}
    assert set(skipped) == CUDA_ONLY
    for check in skipped.values():
        assert check["status"] == "SKIP" and check["reason"].startswith("CUDA-only (")
    assert "Skipped, CUDA-only (no CUDA device):" in process.stdout
    lines = process.stdout.splitlines()
    for name in CUDA_ONLY:
        assert sum(line.split()[:2] == [name, "SKIP"] for line in lines) == 1, name


def test_one_printed_line_per_check(run):
    process, _ = run
    lines = process.stdout.splitlines()
    for name in CHECKS:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert line.split()[1] == "OK" and "max_dev" in line and "/s" in line, line
    assert lines[-1].startswith(f"gpu_check: {len(CHECKS)} OK, 0 FAIL, {len(CUDA_ONLY)} skipped")


def test_paper_widths_need_a_gpu(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu"]) == 2
    assert "--small" in capsys.readouterr().err
