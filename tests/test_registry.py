"""The registry of paper items: every item of the reproduction map declared once, the files each
config promises for them (all targets of the workflow's DAG), published numbers, and the cells of
rendered tables that carry them."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from helpers import REPO

from xsae import heterogeneity_tables, registry, sharedness_tables, tables
from xsae.config import load

MAP_CANDIDATES = [REPO / "shared" / "REPRODUCTION_MAP.md", REPO.parent / "shared" / "REPRODUCTION_MAP.md"]
#: items the registry has beyond the map's rows (the map leaves out SPARC's architecture drawing)
BEYOND_MAP = {("sparc", "Figure 2")}
#: paper items the embedded default renders a counterpart of
DEFAULT_ITEMS = {
    "sparc.table1", "sparc.table2", "sparc.table3", "sparc.table4", "sparc.table14",
    "sparc.figures3_11_13", "sparc.figures6_7", "sparc.figure8", "sparc.figure9", "sparc.figure10",
    "heterogeneity.figure5", "heterogeneity.figure6", "heterogeneity.table1", "heterogeneity.figure7",
    "heterogeneity.figure8", "sharedness.table1", "sharedness.table2", "sharedness.table3",
    "sharedness.figure1", "sharedness.figures2_4", "sharedness.appendix_c",
}


def map_items(path: Path) -> dict[str, list[str]]:
    """Paper → the item labels of its table in REPRODUCTION_MAP.md."""
    found: dict[str, list[str]] = {}
    paper = None
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"##\s+(\w+)", line)
        if heading:
            paper = heading.group(1).lower()
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if paper and line.startswith("|") and cells[0] not in ("item", "") and not set(cells[0]) <= set("-"):
            found.setdefault(paper, []).append(cells[0])
    return found


@pytest.fixture(scope="module")
def paper_config():
    return load(REPO / "config" / "paper.yaml")


@pytest.fixture(scope="module")
def default_config():
    return load(REPO / "config" / "config.yaml")


def test_every_map_item_declared_exactly_once():
    path = next((p for p in MAP_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip("REPRODUCTION_MAP.md is not beside this checkout")
    expected = {(paper, number) for paper, labels in map_items(path).items() for label in labels
                for number in registry.covered(label)}
    assert {paper for paper, _ in expected} == {"sparc", "heterogeneity", "sharedness"}
    declared = Counter((entry.paper, number) for entry in registry.items() for number in entry.covers)
    assert [key for key, n in declared.items() if n > 1] == []
    assert expected - set(declared) == set()
    assert set(declared) - expected == BEYOND_MAP
    # SPARC Tables 1–31 and Figures 1–39 are all there
    sparc = {number for paper, number in declared if paper == "sparc"}
    assert sparc == {f"Table {n}" for n in range(1, 32)} | {f"Figure {n}" for n in range(1, 40)}


def test_covered_expands_the_papers_numbering():
    assert registry.covered("Figures 1, 4, 5, 14–16") == ["Figure 1", "Figure 4", "Figure 5", "Figure 14",
                                                          "Figure 15", "Figure 16"]
    assert registry.covered("Figure 2 / 9") == ["Figure 2", "Figure 9"]
    assert registry.covered("Tables 6-8") == ["Table 6", "Table 7", "Table 8"]
    assert registry.covered("Appendix C") == ["Appendix C"]
    assert registry.covered("§2.3") == ["§2.3"]


def test_declarations_are_complete():
    entries = registry.items()
    assert len({e.id for e in entries}) == len(entries) == 60
    for entry in entries:
        assert entry.title and entry.published
        if not entry.produced:
            assert entry.note, f"{entry.id}: say why no rule produces it"
        if entry.published == "numbers" and not entry.has_reference:
            assert entry.note, f"{entry.id}: say why its published numbers are not typed in"


def test_published_numbers_resolve_to_reference_entries():
    for entry in registry.items():
        numbers = registry.published(entry)
        assert set(numbers) == set(entry.reference)
        assert all(numbers.values()), f"{entry.id}: a reference key points at nothing"
    clip = registry.published("sparc.table7")["appendix_r2.clip"]
    assert clip["global_l1"]["clip_img"]["clip_txt"] == 0.574
    assert registry.published("sharedness.appendix_c")["appendix_c"]["shuffled"] == 0.0125
    assert registry.published("sparc.figure8") == {}


def test_paper_config_promises_every_produced_item(paper_config):
    promised = registry.outputs(paper_config)
    for entry in registry.items():
        assert bool(promised[entry.id]) == entry.produced, entry.id
    # Table 3 was published for Open Images; Table 14 for both datasets
    assert promised["sparc.table3"] == [f"results/tables/sparc_openimages_table3_r2.{x}"
                                        for x in ("csv", "md", "tex")]
    assert promised["sparc.table14"] == [f"results/tables/sparc_{s}_table14_retrieval_r1.{x}"
                                         for s in ("openimages", "coco") for x in ("csv", "md", "tex")]
    assert promised["sparc.table9"] == [f"results/tables/sparc_appendix_vision_only_table3_r2.{x}"
                                        for x in ("csv", "md", "tex")]
    assert promised["heterogeneity.table3"][::3] == [f"results/tables/comparison_{c}.csv"
                                                     for c in ("clip_l14", "openclip_b32", "openclip_l14")]
    assert promised["sharedness.table23"][0] == "results/tables/sharedness_table23.csv"
    # one item per file: the report's sections need it
    owner = registry.item_of_path(paper_config)
    section = registry.report_section
    assert section(owner, ["results/tables/sparc_openimages_table3_r2.csv"]) == ("SPARC", "Table 3")
    assert section(owner, ["results/tables/sparc_coco_table3_r2.csv"]) is None  # not in the paper
    assert registry.report_section(owner, ["results/figures/sweep_latents.png"]) == ("SPARC", "Figures 6, 7")
    assert registry.report_section(owner, ["results/tables/reconstruction.csv"]) is None


def test_paper_outputs_are_targets_of_the_paper_dag(paper_config, tmp_path):
    """Every promised file is an output of some job of the paper DAG (its dry-run summary)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config" / "paper.yaml"), "--summary", "--cores", "1"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    targets = {line.split("\t", 1)[0] for line in result.stdout.splitlines()}
    promised = [f for files in registry.outputs(paper_config).values() for f in files]
    assert promised and [f for f in promised if f not in targets] == []
    assert "results/scorecard.md" in targets


def test_default_config_renders_its_counterparts(default_config):
    promised = registry.outputs(default_config)
    assert {item_id for item_id, files in promised.items() if files} == DEFAULT_ITEMS
    assert promised["sparc.table3"] == [f"results/tables/sparc_tuxpaint_table3_r2.{x}"
                                        for x in ("csv", "md", "tex")]
    assert promised["heterogeneity.table1"][0] == "results/tables/comparison_tuxpaint.csv"
    assert promised["sharedness.figures2_4"][0] == "results/figures/sharedness_comparative_text_not_cnn.png"


def test_selectors_follow_the_config():
    config = {"tables": {"sparc": {"a": {"configurations": {"global_l1": "r1"}, "tables": ["table3_r2"],
                                         "r2_reference": "appendix_r2.text", "top_activations": False},
                                   "b": {"configurations": {"local_l1": "r2"}}}},
              "comparisons": {"x": {"reference_key": "table4_batchtopk", "steering": None},
                              "y": {"reference_key": None, "steering": {"concepts_from": "labels"}}},
              "sharedness": {"models": {"m": {}}, "tables": {"mine": {"reference": "table8"}, "table8": {}}}}
    promised = registry.outputs(config)
    formats = ("csv", "md", "tex")
    assert promised["sparc.table12"] == [f"results/tables/sparc_a_table3_r2.{x}" for x in formats]
    assert promised["sparc.table3"] == [f"results/tables/sparc_b_table3_r2.{x}" for x in formats]
    assert promised["sparc.figures3_11_13"] == ["results/figures/top_activations_r2.png",
                                                "results/figures/top_activations_r2.pdf"]
    assert promised["heterogeneity.table4"][0] == "results/tables/comparison_x.csv"
    assert promised["heterogeneity.table1"][0] == "results/tables/comparison_y.csv"
    assert promised["heterogeneity.figure7"] == ["results/figures/steering_y.png",
                                                 "results/figures/steering_y.pdf",
                                                 "results/tables/steering_y.csv"]
    # an entry naming its published table stands for it; one without stands for the table it is named after
    assert promised["sharedness.table8"][::3] == ["results/tables/sharedness_mine.csv",
                                                  "results/tables/sharedness_table8.csv"]
    assert promised["sharedness.figure1"] == [] and promised["sparc.figures6_7"] == []


# ---- rendered tables: which cells are published ----------------------------------------------------
def _tidy(rows):
    columns = ["metric", "inference", "stream", "source", "target", "variant", "value"]
    return pd.DataFrame(rows, columns=columns)


def test_pairs_of_sparc_tables_as_rendered():
    streams = ["a", "b"]
    metrics = {
        "global_l1": _tidy([("r2", "global", "", s, t, "", 0.5 + 0.1 * i) for i, (s, t) in
                            enumerate([("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")])]
                           + [("r2_self_mean", "global", "", "", "", "", 0.6),
                              ("retrieval_R@1", "global", "", "a", "b", "", 0.9),
                              ("retrieval_R@1", "local", "", "a", "b", "", 0.2),
                              ("jaccard", "global", "", "", "", "top", 0.7)]),
    }
    reference = {"table3_r2": {"global_l1": {"clip_img": {"clip_img": 0.4, "clip_txt": 0.3}}},
                 "table3_r2_means": {"global_l1": {"self": 0.65}},
                 "table2_jaccard": {"global_l1": 0.8},
                 "table14_retrieval_r1": {"open_images": {"global_l1": {"clip_img->clip_txt": 0.25}}}}
    rendered = tables.sparc_tables(metrics, streams, reference, {"a": "clip_img", "b": "clip_txt"},
                                   "open_images")
    r2 = registry.table_pairs(rendered["table3_r2"], "r2_columns")
    r2 = r2[r2["published"].notna()].set_index(["row", "column"])
    # rows are targets: R²(a→a) = 0.5 beside 0.4, R²(b→a) = 0.7 beside 0.3, self mean 0.6 beside 0.65
    assert r2.loc[("a", "Global λ=1: a"), "reproduced"] == pytest.approx(0.5)
    assert r2.loc[("a", "Global λ=1: a"), "published"] == pytest.approx(0.4)
    assert r2.loc[("a", "Global λ=1: b"), ["reproduced", "published"]].tolist() == pytest.approx([0.7, 0.3])
    means = r2.loc[("self mean", "Global λ=1: a"), ["reproduced", "published"]]
    assert means.tolist() == pytest.approx([0.6, 0.65])
    assert len(r2) == 3
    jaccard = registry.table_pairs(rendered["table2_jaccard"], "sparc_rows")
    assert jaccard[["row", "column", "reproduced", "published"]].values.tolist() == [
        ["Global / 1", "Jaccard (top)", pytest.approx(0.7), pytest.approx(0.8)]]
    retrieval = registry.table_pairs(rendered["table14_retrieval_r1"], "sparc_retrieval")
    assert retrieval[["column", "reproduced", "published"]].values.tolist() == [
        ["a→b", pytest.approx(0.2), pytest.approx(0.25)]]


def test_pairs_of_comparison_and_sharedness_tables_as_rendered(tmp_path):
    metrics = {("shared", s): pd.DataFrame({"metric": ["i2t_r1", "retrieval_mse"], "value": [v, 0.1]})
               for s, v in ((1, 5.0), (2, 7.0))}
    reference = {"shared": {"i2t_r1": 6.5, "i2t_r1_std": 0.4, "retrieval_mse": 0.09}}
    table = heterogeneity_tables.comparison_table(metrics, ["shared", "modality_specific"], reference)
    path = tmp_path / "comparison.csv"
    table.to_csv(path, index=False)  # as rendered: read back from the CSV
    pairs = registry.table_pairs(path, "comparison").set_index("column")
    assert sorted(pairs.index) == ["i2t_r1", "retrieval_mse"]
    recall = pairs.loc["i2t_r1", ["reproduced", "published", "spread"]]
    assert recall.tolist() == pytest.approx([6.0, 6.5, 0.4])
    assert math.isnan(pairs.loc["retrieval_mse", "spread"])

    scores = pd.DataFrame([{"source": s, "target": t, "scope": "all", "metric": "wmppc", "value": v}
                           for s, t, v in (("x", "y", 0.3), ("y", "x", 0.5))])
    labels, modalities = {"x": "X", "y": "Y"}, {"x": "image", "y": "text"}
    matrix = sharedness_tables.matrix_table(scores, ["x", "y"], ["x", "y"], labels=labels,
                                            modalities=modalities, scope="all", metric="wmppc",
                                            reference={"X": {"X": 1, "Y": 0.2}})
    pairs = registry.table_pairs(matrix, "sharedness_matrix")
    # the diagonal (1 by definition) and the difference rows are left out; Y has no published row
    assert pairs[["row", "column", "reproduced", "published"]].values.tolist() == [
        ["Image / X", "Y", pytest.approx(0.3), pytest.approx(0.2)]]
    shuffle = sharedness_tables.shuffle_table(
        {"observed": 0.6, "shuffled_mean": 0.02, "shuffled_max": 0.03, "p_value": 0.01, "n_permutations": 5,
         "n_samples": 40}, source="x", target="x2", metric="wmppc",
        reference={"source": "CLIP (I)", "unshuffled": 0.5854, "shuffled": 0.0125})
    pairs = registry.table_pairs(shuffle, "sharedness_shuffle").set_index("column")
    assert pairs.loc["unshuffled", ["reproduced", "published"]].tolist() == pytest.approx([0.6, 0.5854])
    assert pairs.loc["shuffled (mean)", ["reproduced", "published"]].tolist() == pytest.approx([0.02, 0.0125])
    assert len(pairs) == 2


def test_published_cells_filled(tmp_path):
    run = {"global_l1": "r"}
    config = {"tables": {"sparc": {"with": {"configurations": run, "tables": ["table3_r2"]},
                                   "without": {"configurations": run, "tables": ["table2_jaccard"]}}},
              "comparisons": {"absent": {"reference_key": "table2_x"}}}
    out = tmp_path / "results" / "tables"
    out.mkdir(parents=True)
    pd.DataFrame({"target": ["a"], "Global λ=1: a": [0.5], "Global λ=1: a (paper)": [0.4]}).to_csv(
        out / "sparc_with_table3_r2.csv", index=False)
    pd.DataFrame({"TopK": ["Global"], "λ": ["1"], "source": ["reproduced"], "Jaccard (top)": [0.7]}).to_csv(
        out / "sparc_without_table2_jaccard.csv", index=False)
    filled = registry.published_cells_filled(config, tmp_path)
    assert filled == {"sparc.table2": False, "sparc.table3": True, "heterogeneity.table2": False}
