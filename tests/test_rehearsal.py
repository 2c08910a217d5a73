"""The rehearsal: `config/paper.yaml` transformed to miniature scale keeps every run, rule, table and
figure, and its whole DAG runs offline (loopback miniatures, tiny random encoders) end to end.

The end-to-end tests are the one place where every paper-only rule executes; a rule that breaks fails
them. They run all 595 jobs in about 7 minutes on two cores (jobs warm-started, `xsae.warm_start`);
`make rehearsal` runs them alone.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import job_counts

from xsae import config, provenance, registry
from xsae.errors import ConfigError
from xsae.rehearsal import config as scaling
from xsae.rehearsal.run import SNAKEFILE, rehearse

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"


# ---- the transformation, by hand ---------------------------------------------------------------
def test_widths_and_k_shrink_by_fixed_factors():
    assert scaling.latents(8192) == 64 and scaling.latents(12288) == 96 and scaling.latents(2048) == 16
    assert scaling.latents(100) == scaling.MIN_LATENTS
    assert scaling.topk(64) == 8 and scaling.topk(32) == 4 and scaling.topk(8) == scaling.MIN_K


def test_an_sae_entry_keeps_its_method_and_shrinks_its_scale():
    entry = {"method": "sparc", "streams": ["a", "b"], "n_latents": 8192, "k": 64, "epochs": 50,
             "batch_size": 256, "lr": 1e-4, "topk": "local", "cross_weight": 0.0,
             "auxk": {"k": 64, "coef": 0.03125, "dead_steps": 1000, "threshold": 1e-3},
             "reinit_every": 100, "log_every": 100, "checkpoint_every": 5000}
    scaled = scaling.scale_sae(entry)
    assert scaled == {**entry, "n_latents": 64, "k": 8, "epochs": 2, "batch_size": 64, "log_every": 2,
                      "checkpoint_every": 1000, "reinit_every": 5,
                      "auxk": {"k": 8, "coef": 0.03125, "dead_steps": 10, "threshold": 1e-3}}
    assert entry["n_latents"] == 8192  # input untouched
    assert scaling.scale_sae({"n_latents": 8192, "k": 256})["k"] == 16  # k ≤ a quarter of the width


def test_sweeps_seeds_and_synthetic_values_shrink_to_two():
    sweeps = scaling.scale_sweeps({
        "latents": {"base": "b", "parameter": "n_latents", "values": [2048, 4096, 8192, 16384]},
        "lr": {"base": "b", "parameter": "lr", "values": [1e-5, 1e-4, 1e-3]}})
    assert sweeps["latents"]["values"] == [16, 32] and sweeps["lr"]["values"] == [1e-5, 1e-4]
    comparisons = scaling.scale_comparisons({
        "full": {"seeds": [1, 2, 3], "steering": {}, "monosemanticity": {}, "sae": {"n_latents": 8192}},
        "ablation": {"seeds": [1, 2, 3], "steering": None, "monosemanticity": None, "sae": {}}})
    assert comparisons["full"]["seeds"] == [1, 2] and comparisons["full"]["sae"]["n_latents"] == 64
    assert comparisons["ablation"]["seeds"] == [1]
    synthetic = scaling.scale_synthetic({"seeds": [1, 2, 3], "distances": [0.0, 0.2, 1.0],
                                         "multipliers": [0.25, 1.0, 64.0], "sae": {}})
    assert synthetic["seeds"] == [1, 2] and synthetic["distances"] == [0.0, 1.0]
    assert synthetic["multipliers"] == [0.25, 64.0]
    assert synthetic["generator"] == scaling.SYNTHETIC_GENERATOR


def test_a_lost_entry_is_named():
    paper = {"sae_runs": {"a": {}, "b": {}}, "sharedness": {"tables": {"t": {}}}}
    with pytest.raises(ConfigError, match=r"lost entries of the paper config: sae_runs\.b, "
                                          r"sharedness\.tables\.t"):
        scaling.check_same_shape(paper, {"sae_runs": {"a": {}}, "sharedness": {"tables": {}}})


def test_sharedness_compares_fewer_models_in_every_table_and_figure():
    models = {m: {"encoder": f"enc_{m}", "n_layers": 24} for m in "abcdef"}
    models["mamba"] = {"encoder": "enc_mamba", "n_layers": 4, "last_layer_only": True}
    sharedness = {
        "models": models,
        "tables": {"t1": {"dataset": "coco", "sources": ["a", "b", "c", "mamba"], "targets": ["d", "e", "f"]},
                   "t2": {"dataset": "laion", "sources": ["c", "a", "b"]}},
        "averages": {"t3": {"rows": [{"dataset": "coco", "models": ["a", "c", "d", "e", "f"]},
                                     {"dataset": "laion", "models": ["b", "f"]}]}},
        "comparative": {"f3": {"dataset": "coco", "model": "a", "shared_with": ["b", "c"],
                               "not_shared_with": ["f", "mamba"]}},
        "shuffle": {"c": {"dataset": "coco", "source": "a", "target": "b"}}}
    scaling.prune_sharedness_models(sharedness)
    assert sharedness["tables"]["t1"]["sources"] == ["a", "b", "mamba"]  # last layer only: kept
    assert sharedness["tables"]["t1"]["targets"] == ["d", "e"]
    assert sharedness["tables"]["t2"]["sources"] == ["c", "a"]
    rows = sharedness["averages"]["t3"]["rows"]
    assert rows[0]["models"] == ["a", "d", "e"] and rows[1]["models"] == ["b", "f"]  # too few: first two
    assert sharedness["comparative"]["f3"]["shared_with"] == ["b"]
    assert sharedness["comparative"]["f3"]["not_shared_with"] == ["f"]
    assert set(sharedness["models"]) == {"a", "b", "c", "d", "e", "f", "mamba"}  # each still named
    del sharedness["comparative"], sharedness["averages"]
    scaling.prune_sharedness_models(sharedness)
    assert set(sharedness["models"]) == {"a", "b", "c", "d", "e", "mamba"}


# ---- the whole rehearsal -------------------------------------------------------------------------
def _paper_dry_run(tmp: Path) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory",
                             str(tmp), "--configfile", str(PAPER), "-n"],
                            capture_output=True, text=True, check=True)
    return job_counts(result.stdout + result.stderr)


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """The rehearsal of config/paper.yaml, run to the end once for this module."""
    root = tmp_path_factory.mktemp("rehearsal")
    result = rehearse(PAPER, root, cores=2, port=0, snakemake_args=["--keep-going"])
    print(f"rehearsal of the paper DAG: {result.seconds:.0f} s", file=sys.stderr)
    return result


@pytest.mark.rehearsal
def test_rehearsal_runs_every_rule_of_the_paper_dag(rehearsed, tmp_path):
    log = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in sorted((rehearsed.workdir / ".snakemake" / "log").glob("*.log")))
    failed = sorted(set(re.findall(r"^Error in rule (\w+):", log, flags=re.MULTILINE)))
    assert rehearsed.returncode == 0, (f"the rehearsal failed in rules {failed}: see their logs in "
                                       f"{rehearsed.workdir}/results/logs")
    paper_jobs = _paper_dry_run(tmp_path)
    ran = job_counts(log)
    assert set(ran) == set(paper_jobs), (set(paper_jobs) ^ set(ran))


@pytest.mark.rehearsal
def test_every_paper_item_is_rendered_beside_its_published_numbers(rehearsed, monkeypatch):
    assert rehearsed.returncode == 0
    paper = config.load_files([PAPER])
    rehearsal = config.load_files([rehearsed.config_path])
    promised = registry.outputs(paper)
    rendered = registry.outputs(rehearsal)
    # the same items, and for each the same tables and figures (sweep members and seeds aside)
    assert {k for k, v in promised.items() if v} == {k for k, v in rendered.items() if v}
    for item, files in promised.items():
        assert set(files) == set(rendered[item]), item
    workdir = rehearsed.workdir
    missing = [f for files in rendered.values() for f in files if not (workdir / f).is_file()]
    assert not missing, missing
    filled = registry.published_cells_filled(rehearsal, workdir)
    assert filled and all(filled.values()), {k: v for k, v in filled.items() if not v}
    scorecard = (workdir / "results" / "scorecard.md").read_text(encoding="utf-8")
    for entry in registry.items():
        if rendered.get(entry.id):
            assert entry.id in scorecard or entry.label in scorecard, entry.id


@pytest.mark.rehearsal
def test_every_table_traces_back_to_a_download(rehearsed, monkeypatch):
    assert rehearsed.returncode == 0
    monkeypatch.chdir(rehearsed.workdir)
    rehearsal = config.load_files([rehearsed.config_path])
    tables = sorted({f for files in registry.outputs(rehearsal).values() for f in files
                     if f.endswith(".csv") and "synthetic" not in f})
    assert tables

    def sources(node: provenance.Node) -> set[str]:
        found = {node.path} if node.record and node.record.get("rule", "").startswith("download") else set()
        for child in node.children:
            found |= sources(child)
        return found

    for table in tables:
        node = provenance.chain(table)
        assert node.record is not None, table
        assert not node.modified, table
        assert sources(node), f"{table}: its provenance does not reach a download"
    config_written = yaml.safe_load(Path(rehearsed.config_path).read_text(encoding="utf-8"))
    assert all(entry.get("base_url", "").startswith("http://127.0.0.1:") or entry.get("provided")
               or entry["kind"] == "class_prompts" or entry.get("files_of")
               for entry in config_written["datasets"].values())
