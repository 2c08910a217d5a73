"""Workflow tests: the DAG of the default config, a tiny end-to-end run, and what reruns after a change.

The end-to-end run uses a fixture package tree (20 small stamps) and the three real offline
encoders; it takes about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import N_USABLE, REPO, job_counts, make_stamps_tree, tiny_config, workflow_copy, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, configfile: Path | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def planned_jobs(workdir: Path, configfile: Path | None = None, *args: str) -> dict[str, int]:
    """Jobs per rule that a dry run would execute (empty when nothing is to be done)."""
    result = snakemake(workdir, "--dry-run", *args, configfile=configfile)
    text = result.stdout + result.stderr
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-2000:]
    return job_counts(text)


def test_default_dag_has_every_stage(tmp_path):
    """The default config's DAG: one download, one manifest, 3 encoders × 2 splits; 2 single-stream
    SAEs, 4 SPARC configurations and a sweep base, and 4 sweeps × 3 values × 2 TopK modes; the
    synthetic experiments: 5 distances × 3 seeds of data, 2 methods on each, and 2 losses × 3
    multipliers × 3 seeds at distance 0.5; the Tux Paint comparison: modality-specific SAEs for 3
    seeds, each aligned post hoc and scored before and after."""
    jobs = planned_jobs(tmp_path, REPO / "config" / "config.yaml")
    runs = 2 + 4 + 1 + 4 * 3 * 2 + 3
    assert jobs == {
        "synthetic_data": 5 * 3, "synthetic_run": 5 * 3 * 2 + 2 * 3 * 3, "figure_synthetic": 2,
        "align_sae": 3, "evaluate_comparison": 3 * 2, "table_comparison": 1, "figure_steering": 1,
        "figure_monosemanticity": 1,
        "download_tuxpaint": 1, "manifest": 1, "extract_features": 6,
        "train_sae": runs, "evaluate_reconstruction": runs, "figure_training": 7 + 3,
        "evaluate_sparc": 5, "figure_sweep": 4, "figure_top_activations": 4, "table_sparc": 5,
        "table_reconstruction": 1, "figure_dataset_overview": 1, "all": 1,
        # sharedness: SAEs of EfficientNet (8 layers), MobileNetV2 (8), MiniLM (7) and second seeds
        # of EfficientNet and MiniLM, trained online in one job per encoder; 5 model pairs; Tables
        # 1–3, Figure 1, a comparative figure, Appendix C
        "sharedness_online": 3, "sharedness_sae": 8 + 8 + 7 + 8 + 7, "sharedness_saes_table": 1,
        "sharedness_pair": 5,
        "sharedness_table": 3, "sharedness_average": 1, "sharedness_layerwise": 1,
        "sharedness_comparative": 1, "sharedness_comparative_figure": 1, "sharedness_shuffle": 1,
        "sharedness_shuffle_table": 1, "scorecard": 1, "plan_table": 1,
    }


def test_paper_dag_builds(tmp_path):
    """config/paper.yaml: downloads and manifests of all six datasets (Open Images, COCO, LAION,
    Flowers, CC-3M, ImageNet val), a per-caption COCO manifest from the same download and ImageNet
    class prompts; on GPUs the ten encoders of SPARC's Table 6 on Open Images (eight models) and two
    on COCO, four CLIP-type models on CC-3M and ImageNet, eight on COCO captions; SPARC: the four
    configurations on both datasets, Global and Local on the seven stream groups of Tables 7–13, the
    sweep runs of Figures 6–10, every table; heterogeneity: 7 comparisons (Tables 1–4) × 4 trained
    methods × 3 seeds, each modality-specific run aligned post hoc and every method scored, Figures 2
    and 9 from 8 modality-specific COCO runs, Figures 5 and 6 at full scale; sharedness: see
    tests/test_sharedness_workflow.py."""
    jobs = planned_jobs(tmp_path, REPO / "config" / "paper.yaml")
    sweeps = 2 * 4 * 2 + 5 * 2 + 5 * 1 + 4 * 2  # L at k = 64 and 256, k, λ (Global only), learning rate
    groups = 7 * 2
    comparisons, directions = 7 * 4 * 3, 8
    runs = 8 + groups + 2 + sweeps + comparisons + directions  # 2: the sweeps' bases at k = 64 and 256
    # SPARC: Open Images 8 models, COCO 2 (× 2 splits); heterogeneity: CC-3M 4 (× 2) and MetaCLIP on
    # its validation set (monosemanticity), COCO captions 8 (× 2), ImageNet val and its prompts 4 each
    extraction = (8 + 2) * 2 + 4 * 2 + 1 + 8 * 2 + 4 + 4
    # sharedness: 14 encoders on COCO, the 7 large on LAION and Flowers; the per-layer SAEs train
    # online, and compare the training samples' global tokens (compare_split): only the train split
    # is extracted, and not for MambaVision, compared on pooled codes the online job computes
    extraction += 14 + 7 + 7
    # sharedness: 10 large encoders' layers on 3 datasets, 10 base on COCO, 3 seed controls, the last
    # layer of MambaVision on COCO
    sharedness_saes = 3 * (24 * 8 + 12 * 2) + 12 * 10 + (24 + 12 + 1) + 1
    synthetic = 6 * 3 * 2 + 2 * 3 + 2 * 5 * 3  # Figure 5; Figure 6's base methods at 0.5 and losses
    assert jobs == {
        "synthetic_data": (6 + 1) * 3, "synthetic_run": synthetic, "figure_synthetic": 2,
        "align_sae": 7 * 3, "evaluate_comparison": 7 * 5 * 3, "table_comparison": 7, "figure_steering": 1,
        "figure_monosemanticity": 1, "decoder_directions": directions, "figure_decoder_directions": 2,
        "download_dataset": 6, "manifest_labelled": 7, "manifest_prompts": 1, "extract_features": extraction,
        "figure_dataset_overview": 2, "train_sae": runs, "evaluate_reconstruction": runs,
        "evaluate_sparc": 10 + groups, "figure_training": 10 + groups + comparisons + directions,
        "figure_sweep": 5, "figure_top_activations": 8, "table_reconstruction": 1, "table_sparc": 2 * 5 + 7,
        "all": 1,
        # sharedness pairs: 182, and MambaVision with each of the 10 large models
        # sharedness SAEs trained online: one job per encoder and dataset (15 on COCO, 7 on LAION and
        # Flowers each), then one encoding job per SAE
        "sharedness_online": 15 + 7 + 7,
        "sharedness_sae": sharedness_saes, "sharedness_saes_table": 1, "sharedness_pair": 182 + 10,
        "sharedness_table": 2 + 20 + 1, "sharedness_average": 1, "sharedness_layerwise": 1,
        "sharedness_comparative": 4, "sharedness_comparative_figure": 4, "sharedness_shuffle": 1,
        "sharedness_shuffle_table": 1, "scorecard": 1, "plan_table": 1,
    }
    dry = snakemake(tmp_path, "--dry-run", configfile=REPO / "config" / "paper.yaml").stdout
    blocks = [block for block in dry.split("\n\n") if "rule extract_features:" in block]
    assert len(blocks) == extraction and all("gpu=1" in block for block in blocks)
    assert "results/tables/sparc_appendix_all_table3_r2.csv" in dry
    assert "sparc_appendix_all_table1_activation_patterns" not in dry
    assert "results/features/imagenet/train" not in dry  # ImageNet's train split is not used
    for target in ("comparison_clip_b32_batchtopk.csv", "decoder_directions_large.png",
                   "steering_clip_b32_k32.png"):
        assert target in dry


def test_bad_config_fails_before_any_job(tmp_path):
    config = tiny_config(tmp_path / "tree")
    config["sae_runs"]["topk_effnet"]["streams"] = ["no_such_stream"]
    result = snakemake(tmp_path, "--dry-run", configfile=write_config(config, tmp_path / "c.yaml"),
                       check=False)
    assert result.returncode != 0
    assert "sae_runs.topk_effnet.streams" in result.stderr + result.stdout
    assert "no_such_stream" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete run of the tiny config, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("workflow")
    make_stamps_tree(workdir / "tree")
    configfile = write_config(tiny_config(workdir / "tree"), workdir / "config.yaml")
    snakemake(workdir, configfile=configfile)
    return workdir, configfile


@pytest.mark.slow
def test_end_to_end_outputs(finished_run):
    workdir, _ = finished_run
    results = workdir / "results"
    train = pd.read_csv(results / "manifests/tuxpaint/train.csv")
    test = pd.read_csv(results / "manifests/tuxpaint/test.csv")
    assert len(train) + len(test) == N_USABLE
    assert not set(train.sample_id) & set(test.sample_id)
    table = pd.read_csv(results / "tables/reconstruction.csv")
    assert list(table["run"]) == ["topk_effnet", "topk_minilm"]
    assert table["samples"].tolist() == [len(test), len(test)]
    assert table["NMSE"].between(0, 10).all() and table["R²"].le(1).all()
    for ext in ("md", "tex"):
        assert "topk\\_effnet" in (results / f"tables/reconstruction.{ext}").read_text() or ext == "md"
    for name in ("dataset_overview_tuxpaint", "sae_training_topk_effnet", "sae_training_topk_minilm"):
        assert (results / f"figures/{name}.png").stat().st_size > 10_000
        assert (results / f"figures/{name}.pdf").is_file()
    executed = json.loads((results / "notebooks/dataset_overview_tuxpaint.ipynb").read_text())
    assert executed["metadata"].get("papermill"), "the notebook record was not executed by papermill"
    table1 = pd.read_csv(results / "tables/sparc_tuxpaint_table1_activation_patterns.csv")
    assert list(zip(table1["TopK"], table1["λ"], strict=True)) == [
        ("Global", 1), ("Global", 0), ("Local", 1), ("Local", 0)]
    patterns = table1[["all_dead", "1/3", "2/3", "all_alive"]].sum(axis=1)
    assert patterns.round(6).eq(100).all(), "activation patterns must partition the latents"
    table14 = pd.read_csv(results / "tables/sparc_tuxpaint_table14_retrieval_r1.csv")
    assert set(table14["inference"]) == {"global", "local"}  # Global runs at both inferences
    assert table14.filter(like="→").stack().between(0, 1).all()
    sweep = pd.read_csv(results / "tables/sweep_latents.csv")
    assert sorted(sweep["value"]) == [32, 32, 64, 64] and set(sweep["topk"]) == {"global", "local"}
    assert (results / "figures/sweep_latents.png").stat().st_size > 10_000
    assert (results / "figures/top_activations_sparc_global_l1.png").stat().st_size > 10_000
    counts = pd.read_csv(results / "tables/label_counts_tuxpaint.csv")
    assert counts[["train", "test"]].to_numpy().sum() == N_USABLE


@pytest.mark.slow
def test_method_comparison_end_to_end(finished_run):
    """Heterogeneity Table 1 (retrieval columns), Figures 7 and 8 on the fixture stamps."""
    results = finished_run[0] / "results"
    table = pd.read_csv(results / "tables/comparison_tuxpaint.csv").set_index("method")
    assert table.index.tolist() == ["modality_specific", "modality_specific_post_hoc"]
    assert (table["runs"] == 2).all()
    # Post-hoc alignment re-indexes latents: the reconstructions, and so the MSE, do not change.
    assert table.loc["modality_specific_post_hoc", "retrieval_mse"] == pytest.approx(
        table.loc["modality_specific", "retrieval_mse"], rel=1e-6)
    recalls = table[["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]]
    assert recalls.to_numpy().min() >= 0 and recalls.to_numpy().max() <= 100
    assert (recalls["i2t_r1"] <= recalls["i2t_r10"]).all()
    report = json.loads((results / "sae/tuxpaint_modality_specific_s1/alignment.json").read_text())
    assert sorted(report["permutation"]) == list(range(32))  # a true permutation of 64 / 2 latents
    steering = pd.read_csv(results / "tables/steering_tuxpaint.csv")
    assert set(steering["method"]) == set(table.index) and steering["mAP"].between(0, 1).all()
    for figure in ("steering_tuxpaint", "monosemanticity_tuxpaint"):
        assert (results / f"figures/{figure}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_synthetic_experiments_end_to_end(finished_run):
    """Figures 5 and 6 of the heterogeneity paper at toy scale: every run scored, seeds summarised."""
    results = finished_run[0] / "results"
    distance = pd.read_csv(results / "tables/synthetic_distance.csv")
    assert set(distance["method"]) == {"shared", "modality_specific", "post_hoc"}
    assert sorted(set(distance["distance"])) == [0.0, 0.5] and (distance["runs"] == 2).all()
    lam = pd.read_csv(results / "tables/synthetic_lambda.csv")
    assert set(lam["method"]) == {"shared", "modality_specific", "post_hoc", "iso_energy_x1",
                                  "group_sparse_x1"}
    assert set(lam["distance"]) == {0.5}
    pivot = lam.pivot_table(index="method", columns="metric", values="mean")
    # Post-hoc alignment re-indexes the same SAEs: reconstruction unchanged, latents better aligned.
    assert pivot.loc["post_hoc", "reconstruction_error"] == pytest.approx(
        pivot.loc["modality_specific", "reconstruction_error"], rel=1e-6)
    assert pivot.loc["post_hoc", "latent_alignment_error"] < pivot.loc["modality_specific",
                                                                      "latent_alignment_error"]
    assert pivot.loc["modality_specific", "feature_collapse_rate"] == 0  # separate decoders
    assert pivot.to_numpy().min() >= 0 and pivot["feature_collapse_rate"].max() <= 1
    for figure in ("distance", "lambda"):
        assert (results / f"figures/synthetic_{figure}.png").stat().st_size > 10_000
    runs = list((results / "synthetic/runs").glob("*/*/metrics.csv"))
    assert len(runs) == 2 * 2 * 2 + 2 * 2


@pytest.mark.slow
def test_provenance_chain_reaches_the_download(finished_run):
    workdir, _ = finished_run
    result = subprocess.run([sys.executable, "-m", "xsae.cli", "provenance",
                             "results/tables/reconstruction.md"], cwd=workdir,
                            capture_output=True, text=True, check=True)
    out = result.stdout
    for expected in ("rule table_reconstruction", "rule evaluate_reconstruction", "rule train_sae",
                     "rule extract_features", "rule manifest", "rule download_tuxpaint",
                     "resources/datasets/tuxpaint/unpacked"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    record = json.loads((workdir / "results/sae/topk_effnet/weights.safetensors.prov.json").read_text())
    assert record["seed"] == 0 and record["params"]["run"]["k"] == 4
    assert record["threads"]["job"] == 1 and record["threads"]["torch"] >= 1
    assert record["wildcards"] == {"run": "topk_effnet"}
    assert {"torch", "numpy", "snakemake"} <= set(record["packages"])
    assert "dirty" in record["code"] and record["started"] <= record["finished"]


@pytest.mark.slow
def test_report_renders(finished_run):
    workdir, configfile = finished_run
    snakemake(workdir, "--report", "results/report.html", configfile=configfile)
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert len(html) > 10_000


@pytest.mark.slow
def test_changing_one_sae_parameter_reruns_only_what_depends_on_it(finished_run):
    workdir, configfile = finished_run
    assert planned_jobs(workdir, configfile) == {}
    config = yaml.safe_load(configfile.read_text())
    config["sae_runs"]["topk_effnet"]["k"] = 8
    changed = write_config(config, workdir / "changed.yaml")
    assert planned_jobs(workdir, changed) == {
        "train_sae": 1, "evaluate_reconstruction": 1, "figure_training": 1,
        "table_reconstruction": 1, "plan_table": 1, "all": 1,
    }
    dry = snakemake(workdir, "--dry-run", configfile=changed).stdout
    assert "wildcards: run=topk_minilm" not in dry

    config = yaml.safe_load(configfile.read_text())
    config["sae_runs"]["sparc_local_l0"]["lr"] = 5e-4
    changed = write_config(config, workdir / "changed_sparc.yaml")
    assert planned_jobs(workdir, changed) == {
        "train_sae": 1, "evaluate_reconstruction": 1, "figure_training": 1, "evaluate_sparc": 1,
        "table_sparc": 5, "figure_top_activations": 1, "scorecard": 1, "plan_table": 1, "all": 1,
    }


def test_a_library_change_reruns_only_the_rules_that_run_it(finished_run, tmp_path):
    """Snakemake's code trigger sees only `script:` files: the `library_code` param makes a change
    to one line of `xsae.metrics.retrieval` rerun the rules whose scripts reach it (evaluate_sparc)
    and what depends on them, and a docstring or comment edit rerun nothing."""
    workdir, configfile = finished_run
    snakefile = workflow_copy(tmp_path / "repo")
    retrieval = tmp_path / "repo/src/xsae/metrics/retrieval.py"
    code = retrieval.read_text(encoding="utf-8")

    def planned(text: str) -> dict[str, int]:
        assert text == code or text != retrieval.read_text(encoding="utf-8")  # each edit edits
        retrieval.write_text(text, encoding="utf-8")
        return planned_jobs(workdir, configfile, "-s", str(snakefile))

    # the copy's config files have other paths: the rules reading them rerun in any case
    baseline = planned(code)
    assert baseline == {"plan_table": 1, "scorecard": 1, "all": 1}
    reworded = code.replace('"""R@1/5/10 (fraction', '"""Recall at 1/5/10 (fraction', 1)
    commented = reworded.replace('    metrics["MRR"] =', '    # reciprocal ranks\n    metrics["MRR"] =', 1)
    assert planned(commented) == baseline
    assert planned(code.replace("(1.0 / values).mean()", "np.mean(1.0 / values)", 1)) == baseline | {
        "evaluate_sparc": 5, "table_sparc": 5, "figure_top_activations": 4,
        "evaluate_comparison": 4, "table_comparison": 1, "figure_steering": 1, "figure_monosemanticity": 1,
    }
    record = json.loads((workdir / "results/metrics/sparc_global_l0/sparc_test.csv.prov.json").read_text())
    assert len(record["params"]["library_code"]) == 16


@pytest.mark.slow
def test_verify_finds_silent_damage_and_its_rerun_repairs_it(finished_run):
    """A metrics file corrupted without changing its size or mtime, and a deleted intermediate file
    whose dependents still exist: Snakemake sees neither; `xsae verify` finds both, and its rerun
    leaves a run that verifies clean with nothing left to do."""
    workdir, configfile = finished_run
    verify = [sys.executable, "-m", "xsae.cli", "verify", str(workdir), "--quiet"]
    assert subprocess.run(verify, capture_output=True, text=True, check=False).returncode == 0
    corrupt = workdir / "results/metrics/topk_effnet/reconstruction_test.csv"
    stat, text = corrupt.stat(), corrupt.read_text()
    corrupt.write_text(text.replace("0.", "9.", 1))
    os.utime(corrupt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (workdir / "results/sae/topk_minilm/training_log.csv").unlink()
    assert planned_jobs(workdir, configfile) == {}  # invisible to Snakemake

    found = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert found.returncode == 1
    assert "modified   results/metrics/topk_effnet/reconstruction_test.csv" in found.stdout
    assert "missing    results/sae/topk_minilm/training_log.csv" in found.stdout
    repaired = subprocess.run([*verify, "--rerun", "--", "-s", str(REPO / "Snakefile"), "--cores", "2",
                               "--configfile", str(configfile)], capture_output=True, text=True, check=False)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert corrupt.read_text() == text
    assert subprocess.run(verify, capture_output=True, text=True, check=False).returncode == 0
    assert planned_jobs(workdir, configfile) == {}
