"""The scorecard: rendered or not, and distances to the published numbers, on hand-made tables whose
answers are known."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import REPO

from xsae import registry, scorecard
from xsae.config import load

CONFIG = {
    "tables": {"sparc": {"oi": {"configurations": {"global_l1": "g", "local_l1": "l"},
                                "tables": ["table3_r2"], "top_activations": False}}},
    "comparisons": {"base": {"reference_key": "table1_topk_k32_clip_b32", "steering": None,
                             "monosemanticity": None},
                    "k16": {"reference_key": "table2_topk_k16_clip_b32", "steering": None,
                            "monosemanticity": None}},
}


def write_tables(root):
    out = root / "results" / "tables"
    out.mkdir(parents=True)
    # R²: published cells 0.4, 0.3 (row a) and 0.9 (row b); |Δ| = 0.1, 0.5, 0.2 → max 0.5, median 0.2
    pd.DataFrame({
        "target": ["a", "b"],
        "Global λ=1: a": [0.5, 0.7], "Global λ=1: a (paper)": [0.4, 0.9],
        "Global λ=1: b": [0.8, 0.1], "Global λ=1: b (paper)": [0.3, None],
    }).to_csv(out / "sparc_oi_table3_r2.csv", index=False)
    for ext in ("md", "tex"):
        (out / f"sparc_oi_table3_r2.{ext}").write_text("table\n")
    # comparison: |Δ| = 0.5 (spread 1.0: within), 2.0 (spread 0.5: not), 0.01 (no spread), and a
    # second method's 3.0 (spread 3.0: within, at the edge) → 4 cells, max 3, median 1.25, 2 of 3
    pd.DataFrame([
        {"method": "shared", "source": "reproduced", "runs": 3, "i2t_r1": 6.5, "i2t_r1_std": 0.2,
         "t2i_r1": 5.0, "t2i_r1_std": 0.1, "retrieval_mse": 0.10, "retrieval_mse_std": 0.0},
        {"method": "post_hoc", "source": "reproduced", "runs": 3, "i2t_r1": 13.0, "i2t_r1_std": 1.0,
         "t2i_r1": None, "t2i_r1_std": None, "retrieval_mse": None, "retrieval_mse_std": None},
        {"method": "shared", "source": "paper", "runs": 3, "i2t_r1": 6.0, "i2t_r1_std": 1.0,
         "t2i_r1": 3.0, "t2i_r1_std": 0.5, "retrieval_mse": 0.09, "retrieval_mse_std": None},
        {"method": "post_hoc", "source": "paper", "runs": 3, "i2t_r1": 16.0, "i2t_r1_std": 3.0,
         "t2i_r1": 11.0, "t2i_r1_std": 0.4, "retrieval_mse": None, "retrieval_mse_std": None},
    ]).to_csv(out / "comparison_base.csv", index=False)
    for ext in ("md", "tex"):
        (out / f"comparison_base.{ext}").write_text("table\n")


@pytest.fixture()
def card(tmp_path):
    write_tables(tmp_path)
    return scorecard.scorecard(CONFIG, root=tmp_path).set_index("item_id")


def test_distances_to_published_numbers_are_the_hand_computed_ones(card):
    r2 = card.loc["sparc.table3"]
    assert r2["rendered"] and r2["status"] == "rendered"
    assert r2["where"] == "results/tables/sparc_oi_table3_r2.csv"
    assert (r2["cells"], r2["max_abs_diff"], r2["median_abs_diff"]) == (
        3, pytest.approx(0.5), pytest.approx(0.2))
    assert r2["within_spread"] == ""  # SPARC states no spread
    table1 = card.loc["heterogeneity.table1"]
    assert (table1["cells"], table1["max_abs_diff"], table1["median_abs_diff"]) == (
        4, pytest.approx(3.0), pytest.approx(1.25))
    assert table1["within_spread"] == "2 of 3"
    assert "1 of 5 published cells have no reproduced value" in table1["note"]


def test_items_with_missing_files_are_not_rendered(card, tmp_path):
    missing = card.loc["heterogeneity.table2"]
    assert not missing["rendered"] and missing["status"] == "missing 3 of 3 files"
    assert missing["where"] == "results/tables/comparison_k16.csv" and pd.isna(missing["cells"])
    (tmp_path / "results" / "tables" / "comparison_k16.csv").write_text("method,source\n")
    partly = scorecard.scorecard(CONFIG, root=tmp_path).set_index("item_id").loc["heterogeneity.table2"]
    assert not partly["rendered"] and partly["status"] == "missing 2 of 3 files"
    assert card.loc["sparc.table5", "status"] == scorecard.NO_RULE
    assert not card.loc["sparc.table5", "rendered"]
    assert card.loc["sparc.table7", "status"] == scorecard.NOT_IN_CONFIG


def test_markdown_has_a_row_per_item_and_the_footnotes(tmp_path):
    write_tables(tmp_path)
    frame = scorecard.scorecard(CONFIG, root=tmp_path)
    text = scorecard.markdown(frame)
    assert text.startswith("60 paper items: 2 rendered, 1 promised by this config but not rendered, ")
    assert text.count("\n| ") == 1 + 60  # header and one row per item
    assert "[2] `within spread`" in text and "no spread (one run" in text
    scorecard.write(frame, tmp_path / "card.csv", tmp_path / "card.md")
    back = pd.read_csv(tmp_path / "card.csv")
    assert list(back.columns) == scorecard.COLUMNS and len(back) == 60


def test_default_config_in_an_empty_folder(tmp_path):
    card = scorecard.scorecard(load(REPO / "config" / "config.yaml"), root=tmp_path)
    produced = {e.id for e in registry.items() if e.produced}
    counts = card["status"].value_counts()
    assert counts[scorecard.NO_RULE] == len(registry.items()) - len(produced)
    assert not card["rendered"].any()
    assert scorecard.summary_line(card) == (
        "60 paper items: 0 rendered, 21 promised by this config but not rendered, 31 not in this config, "
        "8 produced by no rule.")
