"""The sharedness paper in the workflow: config expansion, per-layer SAEs, pair scores, tables,
Comparative Sharedness, the shuffle test, and a tiny end-to-end run of the sharedness targets."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import REPO, make_stamps_tree, stamps_manifests, tiny_config, write_config
from test_workflow import planned_jobs, snakemake
from torch import nn

from xsae import plan
from xsae.config import load, validate
from xsae.encoders import Encoder, EncoderSpec
from xsae.errors import ConfigError, DataError
from xsae.features import StreamRef
from xsae.sae import Codes
from xsae.sharedness_config import (
    comparison_pairs,
    layer_saes,
    layers_needed,
    sae_entry,
    sae_seed,
    sharedness_targets,
)
from xsae.sharedness_runs import (
    LayerCodes,
    comparative_ranking,
    compare_models,
    read_codes,
    select_features,
    shuffle_test,
    top_activations,
    top_features,
    train_layer_sae,
    write_codes,
)
from xsae.sharedness_tables import (
    average_table,
    layerwise_matrix,
    matrix_table,
    reconstruction_summary,
    score,
    shuffle_table,
)


# ---- config ---------------------------------------------------------------------------------------
def _config(**sharedness) -> dict:
    """A minimal config: one dataset, two image encoders and one text encoder with layers."""
    section = {
        "models": {
            "img_a": {"encoder": "cnn_a", "modality": "image", "n_layers": 3, "label": "A (I)"},
            "img_b": {"encoder": "cnn_b", "modality": "image", "n_layers": 2, "label": "B (I)"},
            "txt": {"encoder": "text", "modality": "text", "n_layers": 4, "label": "T (T)"},
            "img_a2": {"encoder": "cnn_a", "modality": "image", "n_layers": 3, "seed": 7},
            "img_last": {"encoder": "cnn_b", "modality": "image", "n_layers": 2, "last_layer_only": True},
        },
        "tables": {"t_all": {"dataset": "d", "sources": ["img_a", "img_b", "txt"], "layers": "all"}},
    }
    section.update(sharedness)
    return {
        "datasets": {"d": {"kind": "tuxpaint_stamps"}},
        "encoders": {"cnn_a": {"loader": "efficientnet_lite0", "layers": True},
                     "cnn_b": {"loader": "mobilenet_v2", "layers": True},
                     "text": {"loader": "minilm_l6_v2", "layers": True},
                     "flat": {"loader": "mobilenet_v2"}},
        "features": {"d": ["cnn_a", "cnn_b", "text", "flat"]},
        "sharedness": section,
    }


def test_layers_pairs_and_targets_follow_what_the_outputs_use():
    config = validate(_config(
        tables={"t_all": {"dataset": "d", "sources": ["img_a", "txt"], "targets": ["img_b"], "layers": "all"},
                "t_last": {"dataset": "d", "sources": ["img_b", "img_last"], "layers": "last"}},
        comparative={"c": {"dataset": "d", "model": "img_a", "shared_with": ["img_a2"],
                           "not_shared_with": ["txt"]}},
        shuffle={"s": {"dataset": "d", "source": "img_a", "target": "img_a2"}},
        layerwise={"f": {"dataset": "d", "panels": [["txt", "txt"]]}}))
    assert layers_needed(config) == {("d", "img_a"): [0, 1, 2], ("d", "txt"): [0, 1, 2, 3],
                                     ("d", "img_b"): [0, 1], ("d", "img_last"): [1], ("d", "img_a2"): [2]}
    assert len(layer_saes(config)) == 3 + 4 + 2 + 1 + 1
    assert [sae.layer_tag for sae in layer_saes(config)][:3] == ["00", "01", "02"]
    # one job per unordered pair, in the models' config order; a model against itself only for a figure
    assert comparison_pairs(config) == [("d", "img_a", "img_b"), ("d", "img_b", "txt"),
                                        ("d", "img_b", "img_last"), ("d", "txt", "txt")]
    targets = sharedness_targets(config)
    assert "results/tables/sharedness_t_all.tex" in targets
    assert "results/tables/sharedness_shuffle_s.md" in targets
    assert "results/figures/sharedness_comparative_c.png" in targets
    assert "results/figures/sharedness_layerwise_f.png" in targets
    assert sharedness_targets(validate({k: v for k, v in _config().items() if k != "sharedness"})) == []


def test_averages_pair_distinct_encoders_only():
    config = validate(_config(tables={}, averages={"t3": {"rows": [
        {"label": "x", "dataset": "d", "models": ["img_a", "img_a2", "txt"], "layers": "last"}]}}))
    # img_a and img_a2 read the same features: no pair between them
    assert comparison_pairs(config) == [("d", "img_a", "txt"), ("d", "txt", "img_a2")]
    assert layers_needed(config)[("d", "txt")] == [3]


def test_recipe_defaults_are_the_papers_and_models_override_them():
    config = validate(_config())
    recipe = config["sharedness"]["sae"]
    assert (recipe["k"], recipe["lr"], recipe["optimizer"], recipe["recon_loss"], recipe["input_norm"],
            recipe["epochs"], recipe["auxk"]["k"]) == (32, 5e-5, "adam", "mse", "none", 1, 0)
    assert "n_latents" not in recipe and "method" not in recipe
    assert config["sharedness"]["expansion"] == 8
    raw = _config(sae={"k": 8, "batch_size": 64})
    raw["sharedness"]["models"]["txt"]["sae"] = {"batch_size": 512}
    config = validate(raw)
    assert sae_entry(config, "img_a")["batch_size"] == 64 and sae_entry(config, "txt")["batch_size"] == 512
    assert sae_entry(config, "txt")["k"] == 8
    assert sae_seed(config, "img_a") == 0 and sae_seed(config, "img_a2") == 7


@pytest.mark.parametrize("change, message", [
    (lambda s: s["tables"]["t_all"]["sources"].append("nope"), "unknown model 'nope'"),
    (lambda s: s["models"]["img_a"].update(encoder="missing"),
     "sharedness.models.img_a.encoder: unknown encoder"),
    (lambda s: s["models"]["img_a"].update(encoder="flat"), "stores no per-layer features"),
    (lambda s: s["models"]["img_a"].update(modality="text"), "has no 'text' modality"),
    (lambda s: s["tables"]["t_all"]["sources"].append("img_last"), "is last_layer_only"),
    (lambda s: s.update(sae={"n_latents": 64}), "set per layer"),
    (lambda s: s.update(sae={"k": 0}), "sharedness.sae.k"),
    (lambda s: s["models"]["txt"].update(sae={"lr": -1}), "sharedness.models.txt.sae.lr"),
    (lambda s: s["tables"]["t_all"].update(dataset="elsewhere"), "unknown dataset 'elsewhere'"),
    (lambda s: s.update(training_data="tokens"), "layer_tokens > 0"),
    (lambda s: s["models"]["img_a"].update(compared="pooled_codes"),
     "sharedness.models.img_a.compared: pooled_codes are computed by the encoder's online job"),
    (lambda s: s["models"]["img_a2"].update(label="A (I)")
     or s["tables"]["t_all"]["sources"].append("img_a2"), "share the label"),
    (lambda s: s.update(comparative={"c": {"dataset": "d", "model": "img_a", "shared_with": ["txt"],
                                           "not_shared_with": ["txt"]}}), "in both shared_with"),
    (lambda s: s.update(comparative={"c": {"dataset": "d", "model": "img_a", "shared_with": ["txt"],
                                           "not_shared_with": ["img_b"], "also_in": ["z"]}}),
     "unknown comparative entry 'z'"),
    (lambda s: s.update(averages={"t_all": {"rows": [{"label": "x", "dataset": "d",
                                                      "models": ["img_a", "txt"]}]}}), "also defined under"),
    (lambda s: s["tables"].update(saes={"dataset": "d", "sources": ["img_a"]}), "SAE summary"),
    (lambda s: s.update(models={}), "sharedness.tables needs models"),
    (lambda s: s["tables"].update(shuffle_s={"dataset": "d", "sources": ["img_a"]})
     or s.update(shuffle={"s": {"dataset": "d", "source": "img_a", "target": "txt"}}), "collide"),
])
def test_bad_sections_fail_naming_the_key(change, message):
    raw = _config()
    change(raw["sharedness"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(raw)


def test_dataset_without_encoder_features_is_refused():
    raw = _config()
    raw["features"]["d"] = ["cnn_a", "text", "flat"]
    with pytest.raises(ConfigError, match=r"needs encoder 'cnn_b' in features\.d"):
        validate(raw)


def test_a_model_compared_on_pooled_codes_needs_no_stored_features():
    """The online job encodes every token itself: the encoder need not be extracted, and the plan
    moves the model's encoding into that job, with a pass over the compared split."""
    raw = _config()
    raw["sharedness"].update(training_data="online", compare_split="test")
    raw["sharedness"]["models"]["img_b"]["compared"] = "pooled_codes"
    raw["features"]["d"] = ["cnn_a", "text", "flat"]
    config = validate(raw)
    assert plan.feature_splits(config, "d", "cnn_a") == ("test",)
    frame = plan.costs_frame(plan.make_plan(config))
    adopted = frame[frame["job"].str.startswith("sharedness/d/img_b/")]
    assert len(adopted) and (adopted["rule"] == "sharedness_sae").all() and (adopted["tflops"] == 0).all()
    pooled = frame[frame["job"].str.match(r"sharedness/d/online/cnn_b/img_b/layer\d\d/pooled_codes")]
    assert len(pooled) == len(adopted) and (pooled["rule"] == "sharedness_online").all()
    assert (pooled["tflops"] > 0).all()
    assert (frame["job"] == "sharedness/d/online/cnn_b/pooling_pass").sum() == 1
    assert (frame["job"] == "sharedness/d/online/cnn_a/pooling_pass").sum() == 0


# ---- codes and their comparison ---------------------------------------------------------------------
def _codes_from_dense(dense: np.ndarray, k: int) -> Codes:
    """TopK codes holding a dense nonnegative matrix with at most k non-zeros per row."""
    values, indices = torch.topk(torch.from_numpy(dense), k, dim=1)
    return Codes(values.float(), indices)


def _random_dense(rng: np.random.Generator, n: int, m: int, k: int) -> np.ndarray:
    dense = np.zeros((n, m))
    for row in range(n):
        dense[row, rng.choice(m, size=k, replace=False)] = rng.exponential(1.0, size=k)
    return dense


def _layer(dense: np.ndarray, k: int, ids: list[str]) -> LayerCodes:
    """Codes of `dense` with k slots per row (at least as many as its busiest row has non-zeros)."""
    k = max(min(k, dense.shape[1]), int((dense > 0).sum(1).max()))
    return LayerCodes(_codes_from_dense(dense, k), dense.shape[1], ids)


def _reference_rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ρ_i = max_j corr(a_i, b_j) with numpy; dead columns of b never win, dead rows of a get 0."""
    m_a = a.shape[1]
    corr = np.corrcoef(a.T, b.T)[:m_a, m_a:]
    alive_a, alive_b = a.std(0) > 0, b.std(0) > 0
    corr = np.where(alive_b[None, :], corr, -np.inf)
    return np.where(alive_a, corr.max(1), 0.0)


def test_compare_models_matches_a_numpy_reference_in_every_scope():
    rng = np.random.default_rng(0)
    n, k, ids = 60, 3, [f"s{i}" for i in range(60)]
    dense_a = [_random_dense(rng, n, m, k) for m in (8, 20)]
    dense_b = [_random_dense(rng, n, m, k) for m in (16, 10, 14)]
    dense_b[1][:, :8] = dense_a[0][:, [3, 1, 0, 2, 7, 6, 5, 4]]  # a copy of layer 0 of A, permuted
    scores = compare_models({0: _layer(dense_a[0], 8, ids), 1: _layer(dense_a[1], k, ids)},
                            {i: _layer(d, 11, ids) for i, d in enumerate(dense_b)}, name_a="A", name_b="B",
                            device="cpu")
    rho = {(i, j): _reference_rho(a, b) for i, a in enumerate(dense_a) for j, b in enumerate(dense_b)}
    mass = [a.sum(0) for a in dense_a]

    def get(scope, metric, source="A", target="B", **layers):
        part = scores[(scores.source == source) & (scores.target == target) & (scores.scope == scope)
                      & (scores.metric == metric)]
        for key, value in layers.items():
            part = part[part[key] == value]
        assert len(part) == 1
        return float(part.value.iloc[0])

    for (i, j), r in rho.items():
        assert get("layer", "wmppc", layer_source=i, layer_target=j) == pytest.approx(
            (mass[i] * r).sum() / mass[i].sum(), abs=1e-6)
        assert get("layer", "mppc", layer_source=i, layer_target=j) == pytest.approx(r.mean(), abs=1e-6)
    # layer 0 of A has a perfect copy among B's layer-1 features
    assert get("layer", "wmppc", layer_source=0, layer_target=1) == pytest.approx(1.0, abs=1e-9)
    best = [np.max([rho[i, j] for j in range(3)], axis=0) for i in range(2)]
    widths = [8, 20]  # A's layers are averaged weighted by their feature counts (the authors' code)
    expected_all = np.average([(mass[i] * best[i]).sum() / mass[i].sum() for i in range(2)], weights=widths)
    assert get("all", "wmppc") == pytest.approx(expected_all, abs=1e-6)
    assert get("all", "mppc") == pytest.approx(np.average([b.mean() for b in best], weights=widths), abs=1e-6)
    pooled_mass, pooled_rho = np.concatenate(mass), np.concatenate(best)
    assert get("all_pooled", "wmppc") == pytest.approx((pooled_mass * pooled_rho).sum() / pooled_mass.sum(),
                                                       abs=1e-6)
    assert get("all_pooled", "mppc") == pytest.approx(pooled_rho.mean(), abs=1e-6)
    assert get("last", "wmppc") == pytest.approx((mass[1] * rho[1, 2]).sum() / mass[1].sum(), abs=1e-6)
    # the other direction comes from the same job
    reverse = _reference_rho(dense_b[2], dense_a[1])
    assert get("last", "mppc", source="B", target="A") == pytest.approx(reverse.mean(), abs=1e-6)
    assert set(scores.n_samples) == {n}
    assert len(scores) == 2 * (2 * 3 * 2 + 2 + 2 + 2)


def test_compare_models_refuses_codes_of_other_samples_and_silent_saes():
    rng = np.random.default_rng(1)
    dense = _random_dense(rng, 20, 8, 2)
    ids = [f"s{i}" for i in range(20)]
    with pytest.raises(DataError, match="describe different samples"):
        compare_models({0: _layer(dense, 2, ids)}, {0: _layer(dense, 2, ids[::-1])}, name_a="a", name_b="b")
    silent = LayerCodes(Codes(torch.zeros(20, 2), torch.zeros(20, 2, dtype=torch.long)), 8, ids)
    with pytest.raises(DataError, match="never activates"):
        compare_models({0: silent}, {0: _layer(dense, 2, ids)}, name_a="a", name_b="b")


def test_codes_round_trip_and_missing_file(tmp_path):
    rng = np.random.default_rng(2)
    layer = _layer(_random_dense(rng, 7, 9, 3), 3, [f"id{i}" for i in range(7)])
    write_codes(tmp_path / "codes.npz", layer)
    back = read_codes(tmp_path / "codes.npz")
    assert back.n_latents == 9 and back.sample_ids == layer.sample_ids
    torch.testing.assert_close(back.codes.values, layer.codes.values)
    assert torch.equal(back.codes.indices, layer.codes.indices)
    with pytest.raises(DataError, match="run the sharedness_sae rule"):
        read_codes(tmp_path / "absent.npz")


# ---- tables ---------------------------------------------------------------------------------------
def _scores(values: dict[tuple[str, str, str], float], metric: str = "wmppc") -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "source": s, "target": t, "scope": scope, "layer_source": -1,
                          "layer_target": -1, "metric": metric, "value": v, "n_samples": 10}
                         for (s, t, scope), v in values.items()])


def test_matrix_table_with_published_rows_and_differences():
    scores = _scores({("a", "b", "all"): 0.4, ("b", "a", "all"): 0.3, ("a", "t", "all"): 0.2,
                      ("t", "a", "all"): 0.1, ("b", "t", "all"): 0.25, ("t", "b", "all"): 0.15,
                      ("a", "b", "last"): 0.9})
    labels = {"a": "A (I)", "b": "B (I)", "t": "T (T)"}
    modalities = {"a": "image", "b": "image", "t": "text"}
    reference = {"A (I)": {"A (I)": 1, "B (I)": 0.5, "T (T)": 0.1}}
    table = matrix_table(scores, ["a", "b", "t"], ["a", "b", "t"], labels=labels, modalities=modalities,
                         scope="all", metric="wmppc", reference=reference)
    assert list(table.columns) == ["modality", "source", "numbers", "A (I)", "B (I)", "T (T)"]
    assert list(table["numbers"]) == ["reproduced", "paper", "difference", "reproduced", "reproduced"]
    assert table.iloc[0][["A (I)", "B (I)", "T (T)"]].tolist() == [1.0, 0.4, 0.2]
    assert table.iloc[2][["A (I)", "B (I)", "T (T)"]].tolist() == pytest.approx([0.0, -0.1, 0.1])
    assert table.iloc[4][["A (I)", "B (I)", "T (T)"]].tolist() == [0.1, 0.15, 1.0]
    assert list(table["modality"]) == ["Image"] * 4 + ["Text"]
    assert score(scores, "a", "b", "last", "wmppc") == 0.9
    with pytest.raises(DataError, match="no mppc"):
        score(scores, "a", "b", "all", "mppc")


def test_average_table_means_by_modality_without_same_encoder_pairs():
    scores = _scores({("i1", "i2", "all"): 0.6, ("i2", "i1", "all"): 0.4, ("i1", "t", "all"): 0.2,
                      ("i2", "t", "all"): 0.1, ("t", "i1", "all"): 0.3, ("t", "i2", "all"): 0.5,
                      ("i1", "i1b", "all"): 0.99, ("i1b", "i1", "all"): 0.99, ("i1b", "i2", "all"): 0.8,
                      ("i2", "i1b", "all"): 0.7, ("i1b", "t", "all"): 0.0, ("t", "i1b", "all"): 0.1})
    modalities = {"i1": "image", "i2": "image", "i1b": "image", "t": "text"}
    encoder_of = {"i1": ("e1", "image"), "i1b": ("e1", "image"), "i2": ("e2", "image"), "t": ("e3", "text")}
    spec = {"label": "D", "layers": "all", "models": ["i1", "i2", "i1b", "t"]}
    table = average_table([(spec, scores)], modalities=modalities, encoder_of=encoder_of, metric="wmppc",
                          reference={"all": {"D": {"image_image": 0.5, "image_text": 0.1, "text_image": 0.3,
                                                   "text_text": 0.2}}})
    reproduced = table.iloc[0]
    assert reproduced["Image → Image"] == pytest.approx(np.mean([0.6, 0.4, 0.8, 0.7]))
    assert reproduced["Image → Text"] == pytest.approx(0.1)
    assert reproduced["Text → Image"] == pytest.approx(0.3)
    assert math.isnan(reproduced["Text → Text"])
    assert list(table["numbers"]) == ["reproduced", "paper", "difference"]
    assert table.iloc[2]["Image → Image"] == pytest.approx(0.625 - 0.5)
    assert table.iloc[0]["layers"] == "All" and table.iloc[0]["dataset"] == "D"


def test_layerwise_matrix_and_reconstruction_summary():
    rows = [{"dataset": "d", "source": "a", "target": "b", "scope": "layer", "layer_source": i,
             "layer_target": j, "metric": "wmppc", "value": 10 * i + j, "n_samples": 5}
            for i in (1, 0) for j in (2, 0, 1)]
    matrix = layerwise_matrix(pd.DataFrame(rows), "a", "b")
    assert matrix.shape == (2, 3) and list(matrix.index) == [0, 1] and list(matrix.columns) == [0, 1, 2]
    assert matrix.loc[1, 2] == 12
    with pytest.raises(DataError, match="no layer-wise"):
        layerwise_matrix(pd.DataFrame(rows), "b", "a")
    measured = (("nmse", 0.2), ("r2", 0.7), ("dead_latents", 2), ("dead_fraction", 0.25), ("n_samples", 9),
                ("train_nmse", 0.05), ("nmse_ratio", 4.0))
    tidy = pd.DataFrame([{"dataset": "d", "model": "a", "layer": 0, "width": 4, "n_latents": 8, "stream": "x",
                          "source": "x", "metric": m, "value": v} for m, v in measured])
    other = tidy.assign(dataset="e", model="b", layer=3, width=6, n_latents=12)  # no cross combinations
    other = other[~other["metric"].isin(["train_nmse", "nmse_ratio"])]  # written before the guard
    summary = reconstruction_summary([tidy, other])
    assert len(summary) == 2 and summary.loc[1, ["train NMSE", "NMSE ratio"]].isna().all()
    first = summary.iloc[:1].to_dict("records")
    assert first == [{"dataset": "d", "model": "a", "layer": 0, "width": 4, "L": 8, "train NMSE": 0.05,
                      "NMSE": 0.2, "NMSE ratio": 4.0, "R²": 0.7, "dead (%)": 25.0, "test samples": 9}]


# ---- Comparative Sharedness --------------------------------------------------------------------------
def test_comparative_ranking_known_answer():
    """Feature 0 of M copies a feature of G only, feature 1 one of H only, feature 2 is in both:
    Δ_0 = S_0 (1 − ρ_H,0²) > 0 = Δ_2 > Δ_1 = S_1 (ρ_G,1² − 1)."""
    rng = np.random.default_rng(3)
    n, ids = 80, [f"s{i}" for i in range(80)]
    base = _random_dense(rng, n, 3, 1) + _random_dense(rng, n, 3, 1)
    g = np.concatenate([base[:, [0, 2]], _random_dense(rng, n, 4, 2)], axis=1)
    h = np.concatenate([base[:, [1, 2]], _random_dense(rng, n, 4, 2)], axis=1)
    ranking = comparative_ranking(_layer(base, 3, ids), {"G": _layer(g, 6, ids), "H": _layer(h, 6, ids)},
                                  ["G"], ["H"], device="cpu")
    by_feature = ranking.set_index("feature")
    rho_h0 = _reference_rho(base, h)[0]
    rho_g1 = _reference_rho(base, g)[1]
    mass = base.sum(0)
    assert by_feature.loc[0, "sharedness"] == pytest.approx(mass[0] * (1 - rho_h0 ** 2), rel=1e-6)
    assert by_feature.loc[1, "sharedness"] == pytest.approx(mass[1] * (rho_g1 ** 2 - 1), rel=1e-6)
    assert by_feature.loc[2, "sharedness"] == pytest.approx(0.0, abs=1e-6)
    assert list(ranking["feature"]) == [0, 2, 1] and list(ranking["rank"]) == [1, 2, 3]
    assert by_feature.loc[0, "rho_G"] == pytest.approx(1.0)
    assert by_feature.loc[1, "rho_H"] == pytest.approx(1.0)
    assert top_features(ranking, 0.34) == [0] and top_features(ranking, 1.0) == [0, 2, 1]
    assert select_features(ranking, 5, fraction=0.5) == [0]  # Δ > 0 only
    other = ranking.assign(rank=[3, 2, 1])  # another ranking whose top third is feature 1
    assert select_features(ranking, 5, fraction=0.34, also_in=[other]) == []


def test_top_activations_orders_each_features_samples():
    values = torch.tensor([[0.5, 0.1], [0.9, 0.0], [0.2, 0.7], [0.0, 0.3]])
    indices = torch.tensor([[4, 1], [4, 2], [1, 4], [4, 1]])
    layer = LayerCodes(Codes(values, indices), 6, ["a", "b", "c", "d"])
    top = top_activations(layer, [4, 1, 5], 2)
    assert top.to_dict("list") == {"feature": [4, 4, 1, 1], "rank": [1, 2, 1, 2], "row": [1, 2, 3, 2],
                                   "sample_id": ["b", "c", "d", "c"],
                                   "value": pytest.approx([0.9, 0.7, 0.3, 0.2])}


def test_shuffle_test_of_an_identical_copy():
    rng = np.random.default_rng(4)
    ids = [f"s{i}" for i in range(100)]
    layer = _layer(_random_dense(rng, 100, 30, 3), 3, ids)
    result = shuffle_test(layer, layer, n_permutations=5, seed=0, device="cpu")
    assert result["observed"] == pytest.approx(1.0, abs=1e-9)
    assert result["shuffled_max"] < 0.6 and result["p_value"] == pytest.approx(1 / 6)
    assert shuffle_test(layer, layer, n_permutations=5, seed=0, device="cpu") == result
    table = shuffle_table(result, source="A", target="A again", metric="wMPPC",
                          reference={"source": "CLIP (I)", "target": "CLIP (I)", "unshuffled": 0.5854,
                                     "shuffled": 0.0125})
    assert list(table["numbers"]) == ["reproduced", "paper"]
    assert table.iloc[1]["unshuffled"] == 0.5854 and table.iloc[1]["shuffled (mean)"] == 0.0125


# ---- one layer's SAE -------------------------------------------------------------------------------------
def _feature_file(path: Path, n: int, widths: list[int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("sample_ids", data=np.array([f"{path.stem}{i}" for i in range(n)], dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        for layer, width in enumerate(widths):
            values = rng.normal(size=(n, width)).astype(np.float32)
            h5.create_dataset(f"layers/image/{layer:02d}", data=values)
    return path


def _recipe(**overrides) -> dict:
    raw = _config(sae={"k": 4, "epochs": 2, "batch_size": 16, "lr": 1e-3, "log_every": 1, **overrides})
    return validate(raw)["sharedness"]["sae"]


def test_train_layer_sae_writes_weights_codes_and_held_out_rows(tmp_path):
    train = _feature_file(tmp_path / "train.h5", 64, [6, 10], 0)
    test = _feature_file(tmp_path / "test.h5", 12, [6, 10], 1)
    outputs = {}
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        summary = train_layer_sae(
            _recipe(), StreamRef(train, "image", 1, "m layer 1"), StreamRef(test, "image", 1, "m layer 1"),
            expansion=3, seed=5, device="cpu", weights_path=out / "weights.safetensors",
            log_path=out / "log.csv", codes_path=out / "codes.npz", reconstruction_path=out / "rec.csv",
            labels={"model": "m", "layer": 1})
        outputs[attempt] = read_codes(out / "codes.npz")
    assert summary["width"] == 10 and summary["n_latents"] == 30 and summary["n_test"] == 12
    assert summary["steps"] == 2 * 4
    codes = outputs["first"]
    assert codes.n_latents == 30 and codes.codes.values.shape == (12, 4)
    assert codes.sample_ids == [f"test{i}" for i in range(12)]
    assert torch.equal(codes.codes.indices, outputs["second"].codes.indices)  # same seed, same SAE
    rec = pd.read_csv(tmp_path / "first" / "rec.csv")
    assert set(rec["metric"]) >= {"nmse", "r2", "dead_fraction"}
    assert (rec["width"] == 10).all() and (rec["n_latents"] == 30).all() and (rec["layer"] == 1).all()


def test_train_layer_sae_on_sampled_tokens(tmp_path):
    train = _feature_file(tmp_path / "train.h5", 20, [6], 0)
    test = _feature_file(tmp_path / "test.h5", 5, [6], 1)
    with h5py.File(train, "a") as h5:
        tokens = np.random.default_rng(2).normal(size=(60, 6)).astype(np.float32)
        h5.create_dataset("tokens/image/00", data=tokens)
    summary = train_layer_sae(
        _recipe(), StreamRef(train, "image", 0, "m", tokens=True), StreamRef(test, "image", 0, "m"),
        expansion=2, seed=0, device="cpu", weights_path=tmp_path / "w.safetensors",
        log_path=tmp_path / "l.csv", codes_path=tmp_path / "c.npz", reconstruction_path=tmp_path / "r.csv")
    assert summary["n_rows"] == 60 and summary["n_test"] == 5  # trained on tokens, encoded the test tokens
    with pytest.raises(DataError, match="no sampled tokens"):
        train_layer_sae(_recipe(), StreamRef(test, "image", 0, "m", tokens=True), StreamRef(test, "image", 0),
                        expansion=2, seed=0, device="cpu", weights_path=tmp_path / "x.safetensors",
                        log_path=tmp_path / "x.csv", codes_path=tmp_path / "x.npz",
                        reconstruction_path=tmp_path / "xr.csv")


def test_the_nmse_guard_fires_on_compared_vectors_unlike_the_training_tokens(tmp_path, caplog):
    """Trained on vectors along three directions, compared on vectors along the other three (a
    representation the SAE never saw): the compared NMSE is many times the training NMSE, reported
    and warned of; compared on vectors like the training ones, it stays quiet."""
    rng = np.random.default_rng(0)

    def along(path, n, axes):
        file = _feature_file(path, n, [6], 0)
        values = np.zeros((n, 6), dtype=np.float32)
        values[np.arange(n), rng.choice(axes, size=n)] = rng.uniform(1, 2, size=n)
        with h5py.File(file, "a") as h5:
            h5["layers/image/00"][...] = values
        return file

    train = along(tmp_path / "train.h5", 200, [0, 1, 2])
    like, unlike = along(tmp_path / "like.h5", 60, [0, 1, 2]), along(tmp_path / "unlike.h5", 60, [3, 4, 5])
    ratios = {}
    for name, test in (("like", like), ("unlike", unlike)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="xsae.sharedness_runs"):
            summary = train_layer_sae(
                _recipe(epochs=10, k=1, lr=1e-2), StreamRef(train, "image", 0, "m"),
                StreamRef(test, "image", 0, name),
                expansion=2, seed=0, device="cpu", weights_path=tmp_path / name / "w.safetensors",
                log_path=tmp_path / name / "l.csv", codes_path=tmp_path / name / "c.npz",
                reconstruction_path=tmp_path / name / "r.csv")
        rows = pd.read_csv(tmp_path / name / "r.csv").set_index("metric")["value"]
        assert rows["train_nmse"] == pytest.approx(summary["train_nmse"])
        assert rows["nmse_ratio"] == pytest.approx(rows["nmse"] / rows["train_nmse"])
        ratios[name] = (rows["nmse_ratio"], [r.getMessage() for r in caplog.records])
    assert not ratios["like"][1]  # the ratio of two tiny errors (< 5%) is noise, not a warning
    assert ratios["unlike"][0] > 2 and "not the distribution the SAE learned" in ratios["unlike"][1][0]


def test_train_layer_sae_errors_name_the_problem(tmp_path):
    train = _feature_file(tmp_path / "train.h5", 16, [2], 0)
    test = _feature_file(tmp_path / "test.h5", 4, [2], 1)
    kwargs = {"expansion": 1, "seed": 0, "device": "cpu", "weights_path": tmp_path / "w.safetensors",
              "log_path": tmp_path / "l.csv", "codes_path": tmp_path / "c.npz",
              "reconstruction_path": tmp_path / "r.csv"}
    with pytest.raises(ConfigError, match=r"sharedness\.sae\.k: 4 exceeds the 2 latents"):
        train_layer_sae(_recipe(), StreamRef(train, "image", 0), StreamRef(test, "image", 0), **kwargs)
    with pytest.raises(DataError, match=r"stores 1 image layers .*n_layers"):
        train_layer_sae(_recipe(), StreamRef(train, "image", 3, "m"), StreamRef(test, "image", 3), **kwargs)
    assert not (tmp_path / "w.safetensors").exists()


# ---- the offline text encoder's layers --------------------------------------------------------------
def test_minilm_layers_follow_the_input_order_and_pool_like_the_model():
    from xsae.encoders import EncoderSpec, load_encoder

    encoder = load_encoder(EncoderSpec(name="minilm", loader="minilm_l6_v2"))
    captions = ["A cat.", "A long caption about a red fire truck parked by the road.", "Two pears."]
    forward = encoder.encode("text", captions, layers=True)
    backward = encoder.encode("text", captions[::-1], layers=True)
    for a, b in zip(forward.layers, backward.layers, strict=True):
        torch.testing.assert_close(a, b.flip(0), rtol=1e-5, atol=1e-5)
    # the last layer, mean-pooled over real tokens and normalised, is the sentence embedding
    torch.testing.assert_close(torch.nn.functional.normalize(forward.layers[-1], dim=-1), forward.pooled,
                               rtol=1e-5, atol=1e-5)
    assert forward.layers[0].std(0).mean() > 0.01  # the embedding layer varies with the caption


# ---- the workflow -------------------------------------------------------------------------------------
SHAREDNESS_RULES = ("sharedness_sae", "sharedness_saes_table", "sharedness_pair", "sharedness_table",
                    "sharedness_average", "sharedness_layerwise", "sharedness_comparative",
                    "sharedness_comparative_figure", "sharedness_shuffle", "sharedness_shuffle_table")


def test_default_dag_has_the_sharedness_jobs(tmp_path):
    """38 per-layer SAEs (EfficientNet 8 and MobileNetV2 8 stages, MiniLM 7 hidden states, second
    seeds of EfficientNet and MiniLM), 5 model pairs, Tables 1–3, Figure 1, one comparative
    figure and the shuffle test."""
    jobs = planned_jobs(tmp_path, REPO / "config" / "config.yaml")
    assert {rule: jobs[rule] for rule in SHAREDNESS_RULES} == {
        "sharedness_sae": 8 + 8 + 7 + 8 + 7, "sharedness_saes_table": 1, "sharedness_pair": 5,
        "sharedness_table": 3, "sharedness_average": 1, "sharedness_layerwise": 1,
        "sharedness_comparative": 1, "sharedness_comparative_figure": 1, "sharedness_shuffle": 1,
        "sharedness_shuffle_table": 1}


def test_paper_dag_covers_every_sharedness_item(tmp_path):
    """Every per-layer SAE of 20 encoders (+ 3 seed controls) on COCO, MambaVision's last layer there,
    and of the 10 large ones on LAION and Flowers; Tables 1–3, 7–26, Figure 1, Figures 2–4,
    Appendix C."""
    config = load(REPO / "config" / "paper.yaml")
    saes = layer_saes(config)
    large = {"clip_l_img": 24, "clip_l_txt": 12, "dfn_l_img": 24, "dfn_l_txt": 12, "siglip2_l_img": 24,
             "siglip2_l_txt": 24, "dinov2_l": 24, "vit_l": 24, "bert_l": 24, "deberta_l": 24}
    base = {name.replace("_l", "_b", 1): 12 for name in large}
    per_dataset = {d: sum(1 for s in saes if s.dataset == d) for d in ("coco", "laion", "flowers")}
    seeds = 24 + 12 + 1  # CLIP-L image and text (Figure 1), CLIP-B/32 image's last layer (Appendix C)
    mambavision = [s for s in saes if s.model == "mambavision_b"]
    assert [(s.dataset, s.layer) for s in mambavision] == [("coco", 3)]
    assert per_dataset == {"coco": sum(large.values()) + sum(base.values()) + seeds + 1,
                           "laion": sum(large.values()), "flowers": sum(large.values())}
    jobs = planned_jobs(tmp_path, REPO / "config" / "paper.yaml")
    assert jobs["sharedness_sae"] == len(saes)
    assert jobs["sharedness_table"] == 2 + 20 + 1 and jobs["sharedness_average"] == 1  # + Table 1 pooled
    assert jobs["sharedness_pair"] == len(comparison_pairs(config))
    assert jobs["sharedness_comparative"] == jobs["sharedness_comparative_figure"] == 4
    assert jobs["sharedness_layerwise"] == jobs["sharedness_shuffle"] == jobs["sharedness_shuffle_table"] == 1
    dry = snakemake(tmp_path, "--dry-run", configfile=REPO / "config" / "paper.yaml").stdout
    for target in ["table1", "table2", "table3", *(f"table{n}" for n in range(7, 27)),
                   "shuffle_appendix_c"]:
        assert f"results/tables/sharedness_{target}.csv" in dry, target
    for figure in ("layerwise_figure1", "comparative_figure2", "comparative_figure3", "comparative_figure4"):
        assert f"results/figures/sharedness_{figure}.png" in dry, figure
    blocks = [block for block in dry.split("\n\n") if "rule sharedness_sae:" in block]
    pooled_sae = re.compile(r"sharedness/\w+/sae/(siglip2_[lb]_img|mambavision_b)/")
    pooled = [block for block in blocks if pooled_sae.search(block)]
    # models compared on pooled codes take them from the online job: no features read, no GPU
    assert pooled and all("gpu=0" in block and "results/features/" not in block for block in pooled)
    assert all("gpu=1" in block for block in blocks if block not in pooled)
    # compared on the training samples, as the authors did (compare_split: train)
    clip = next(block for block in blocks if "results/sharedness/coco/sae/clip_l_img/layer23/" in block)
    assert "results/features/coco/train/sh_clip_l14.h5" in clip and "/test/" not in clip
    assert "codes_train.npz" in clip and "results/sharedness/coco/online/sh_clip_l14" in clip


@pytest.fixture(scope="module")
def sharedness_run(tmp_path_factory):
    """The sharedness targets of the tiny config (20 fixture stamps, SAEs trained online), run once."""
    workdir = tmp_path_factory.mktemp("sharedness")
    make_stamps_tree(workdir / "tree")
    config = tiny_config(workdir / "tree")
    configfile = write_config(config, workdir / "config.yaml")
    targets = sharedness_targets(validate(copy.deepcopy(config)))
    # a flag first: --configfile takes every following word as a file
    snakemake(workdir, "--rerun-incomplete", *targets, configfile=configfile)
    return workdir, config


@pytest.mark.slow
def test_tiny_sharedness_run_renders_every_item(sharedness_run):
    workdir, _ = sharedness_run
    results = workdir / "results"
    table1 = pd.read_csv(results / "tables/sharedness_table1.csv")
    assert list(table1["source"]) == ["EfficientNet (I)", "MobileNetV2 (I)", "MiniLM (T)"]
    values = table1[["EfficientNet (I)", "MobileNetV2 (I)", "MiniLM (T)"]].to_numpy()
    assert np.allclose(np.diag(values), 1.0) and ((values >= -1) & (values <= 1)).all()
    table2 = pd.read_csv(results / "tables/sharedness_table2.csv")
    assert table2.shape == table1.shape and not np.allclose(table2.iloc[:, 3:], table1.iloc[:, 3:])
    # The pooled reading of "all layers": the same diagonal, other numbers where layer widths differ
    pooled = pd.read_csv(results / "tables/sharedness_table1_pooled.csv")
    pooled_values = pooled[["EfficientNet (I)", "MobileNetV2 (I)", "MiniLM (T)"]].to_numpy()
    assert np.allclose(np.diag(pooled_values), 1.0) and not np.allclose(pooled_values, values)
    assert "pooled" in (results / "tables/sharedness_table1_pooled.md").read_text()
    table3 = pd.read_csv(results / "tables/sharedness_table3.csv")
    assert list(table3["layers"]) == ["All", "Last"] and table3["Text → Text"].isna().all()
    # Table 3's Image → Text is the mean of Table 1's two image → text cells
    assert table3.loc[0, "Image → Text"] == pytest.approx(values[:2, 2].mean())
    layerwise = pd.read_csv(results / "tables/sharedness_layerwise_figure1.csv")
    assert len(layerwise) == 8 * 8 + 7 * 7 + 8 * 7
    shuffle = pd.read_csv(results / "tables/sharedness_shuffle_appendix_c.csv")
    assert shuffle.loc[0, "permutations"] == 20 and 0 < shuffle.loc[0, "p-value"] <= 1
    ranking = pd.read_csv(results / "tables/sharedness_comparative_text_not_cnn.csv")
    assert len(ranking) == 2 * 1280 and sorted(ranking["rank"]) == list(range(1, 2 * 1280 + 1))
    saes = pd.read_csv(results / "tables/sharedness_saes.csv")
    assert len(saes) == 38 and set(saes["L"]) >= {2 * 16, 2 * 1280, 2 * 384}
    # six test stamps leave no feature with Δ > 0: the figure says so instead of showing images
    for name, size in (("layerwise_figure1", 10_000), ("comparative_text_not_cnn", 1_000)):
        assert (results / f"figures/sharedness_{name}.png").stat().st_size > size
        assert (results / f"figures/sharedness_{name}.pdf").is_file()
    top = pd.read_csv(results / "tables/sharedness_comparative_text_not_cnn_top.csv")
    assert list(top.columns) == ["feature", "rank", "row", "sample_id", "value"]
    assert set(top["feature"]) <= set(ranking.loc[ranking["sharedness"] > 0, "feature"])
    for ext in ("md", "tex"):
        assert "EfficientNet" in (results / f"tables/sharedness_table1.{ext}").read_text()
    pair = json.loads((results / "sharedness/tuxpaint/pairs/effnet/minilm.csv.prov.json").read_text())
    assert pair["extra"]["layer_pairs"] == 8 * 7 and pair["extra"]["peak_memory_mib"] > 0


@pytest.mark.slow
def test_tiny_sharedness_provenance_reaches_the_download(sharedness_run):
    workdir, _ = sharedness_run
    command = [sys.executable, "-m", "xsae.cli", "provenance", "results/tables/sharedness_table1.md"]
    out = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=True).stdout
    for expected in ("rule sharedness_table", "rule sharedness_pair", "rule sharedness_sae",
                     "rule sharedness_online", "rule manifest", "rule download_tuxpaint"):
        assert expected in out, f"{expected!r} missing from:\n{out}"


@pytest.mark.slow
def test_changing_the_recipe_retrains_only_the_sharedness_saes(sharedness_run):
    workdir, config = sharedness_run
    changed = copy.deepcopy(config)
    changed["sharedness"]["sae"]["lr"] = 2e-3
    targets = sharedness_targets(validate(copy.deepcopy(changed)))
    jobs = planned_jobs(workdir, write_config(changed, workdir / "changed.yaml"), *targets)
    # the online jobs of the three encoders train them again, and each SAE job adopts its SAE
    assert jobs["sharedness_online"] == 3 and jobs["sharedness_sae"] == 38
    assert "extract_features" not in jobs and "train_sae" not in jobs


# ---- token subsamples for SAE training ----------------------------------------------------------------
def test_sample_tokens_draws_real_tokens_without_replacement():
    from xsae.encoders.base import sample_tokens

    tokens = torch.arange(3 * 5, dtype=torch.float32).reshape(3, 5, 1).repeat(1, 1, 2)  # value = 5·b + t
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    picked, rows = sample_tokens(tokens, mask, 3, torch.Generator().manual_seed(0))
    assert rows.tolist() == [0, 0, 1, 1, 1]  # all of sample 0's two, 3 of sample 1's five, none of 2
    positions = picked[:, 0].long() - 5 * rows
    assert sorted(positions[:2].tolist()) == [0, 1] and len(set(positions[2:].tolist())) == 3
    assert torch.equal(picked[:, 0], picked[:, 1])
    again, _ = sample_tokens(tokens, mask, 3, torch.Generator().manual_seed(0))
    assert torch.equal(picked, again)
    everything, rows = sample_tokens(tokens, None, 9, torch.Generator().manual_seed(1))
    assert sorted(everything[:, 0].tolist()) == list(range(15))
    assert rows.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    with pytest.raises(ValueError, match="per_sample"):
        sample_tokens(tokens, mask, 0)


class TinyCNN(Encoder):
    """A fixed two-stage CNN (stand-in for the offline CNNs)."""

    modalities = ("image",)

    def __init__(self):
        super().__init__(EncoderSpec(name="tiny_cnn", loader="test"))
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2))

    def _encode(self, modality, batch):
        return self.net(batch).mean(dim=(2, 3))

    def layer_modules(self, modality):
        return [self.net[1], self.net[2]]


def test_cnn_tokens_are_feature_map_positions():
    encoder = TinyCNN()
    images = torch.rand(2, 3, 64, 64)
    out = encoder.encode("image", images, layers=True, tokens_per_sample=5,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = [encoder.net[:2](images), encoder.net(images)]
    for (tokens, rows), layer_map, pooled in zip(out.tokens, maps, out.layers, strict=True):
        positions = layer_map.flatten(2).transpose(1, 2)  # [B, H·W, C]
        assert rows.tolist() == [0] * 5 + [1] * 5
        for token, row in zip(tokens, rows, strict=True):
            distance = (positions[row] - token).abs().sum(dim=1)
            assert float(distance.min()) < 1e-5  # each token is one position of its own sample
        torch.testing.assert_close(pooled, positions.mean(dim=1))


def test_extract_stores_seeded_token_samples_for_training(tmp_path):
    from xsae.features import extract, load_streams

    paths = stamps_manifests(tmp_path)
    encoder = TinyCNN()
    files = []
    for attempt in range(2):
        out = tmp_path / f"features{attempt}.h5"
        summary = extract(encoder, paths["train"], out, layers=True, layer_tokens=3, batch_size=4,
                          progress=False)
        files.append(out)
    n = summary["n_samples"]
    assert summary["modalities"]["image"]["n_tokens"] == 3 * n
    with h5py.File(files[0]) as first, h5py.File(files[1]) as second:
        for layer in ("00", "01"):
            assert first[f"tokens/image/{layer}"].shape == (3 * n, first[f"layers/image/{layer}"].shape[1])
            assert np.array_equal(first[f"token_rows/image/{layer}"][()], np.repeat(np.arange(n), 3))
            assert np.array_equal(first[f"tokens/image/{layer}"][()], second[f"tokens/image/{layer}"][()])
        assert first.attrs["layer_tokens"] == 3
    (tokens,), ids = load_streams([StreamRef(files[0], "image", 1, "tiny", tokens=True)])
    assert tokens.shape == (3 * n, 6) and len(ids) == n
    with pytest.raises(ConfigError, match="need layers: true"):
        extract(encoder, paths["train"], tmp_path / "bad.h5", layer_tokens=3, progress=False)
    with pytest.raises(ValueError, match="give a layer"):
        StreamRef(files[0], "image", None, tokens=True)


def test_minilm_tokens_are_the_captions_real_tokens():
    from xsae.encoders import EncoderSpec, load_encoder

    encoder = load_encoder(EncoderSpec(name="minilm", loader="minilm_l6_v2"))
    captions = ["A cat.", "A long caption about a red fire truck parked by the road."]
    out = encoder.encode("text", captions, tokens_per_sample=100, generator=torch.Generator().manual_seed(0))
    lengths = encoder.model.preprocess(captions)["attention_mask"].sum(1).tolist()
    for (tokens, rows), layer in zip(out.tokens, out.layers, strict=True):
        assert np.bincount(rows.numpy()).tolist() == lengths  # every real token once, no padding
        for row in (0, 1):  # all of them drawn: their mean is the layer's (token-mean) global token
            torch.testing.assert_close(tokens[rows == row].mean(0), layer[row], rtol=1e-5, atol=1e-5)


def test_open_clip_text_tokens_stop_at_the_end_of_text(tmp_path):
    import open_clip

    from xsae.encoders import EncoderSpec, load_encoder

    name = "xsae-test-sharedness-tiny-clip"
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32,
                                               "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    weights = tmp_path / "random.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), weights)
    encoder = load_encoder(EncoderSpec(name="tiny", loader="open_clip", model=name, pretrained=str(weights)))
    captions = ["a cat", "a dog on a red sofa"]
    out = encoder.encode("text", encoder.prepare("text", captions), layers=True, tokens_per_sample=77,
                         generator=torch.Generator().manual_seed(0))
    eot = open_clip.get_tokenizer(name)(captions).argmax(dim=-1)
    for _, rows in out.tokens:
        assert np.bincount(rows.numpy()).tolist() == (eot + 1).tolist()  # <sot> … <eot>, no padding
    from PIL import Image

    images = [Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)) for i in (1, 2)]
    out = encoder.encode("image", encoder.prepare("image", images), layers=True, tokens_per_sample=100)
    assert [int(t.shape[0]) for t, _ in out.tokens] == [2 * (1 + 7 * 7)] * 2  # CLS + 49 patches each
