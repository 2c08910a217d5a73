"""Sweep expansion, the SPARC evaluation rows and the SPARC tables, on small known inputs."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from xsae import figures, tables
from xsae.config import sweep_runs, validate
from xsae.errors import ConfigError
from xsae.evaluation import EvaluationSettings, Labels, evaluate_multistream
from xsae.metrics.cross_reconstruction import r2_matrix
from xsae.metrics.retrieval import retrieval_metrics, retrieval_ranks
from xsae.sae import SAEConfig, SparseAutoencoder


def base_config() -> dict:
    return {
        "datasets": {"d": {"kind": "tuxpaint_stamps"}},
        "encoders": {"a": {"loader": "efficientnet_lite0"}, "t": {"loader": "minilm_l6_v2"}},
        "features": {"d": ["a", "t"]},
        "streams": {"img": {"encoder": "a", "modality": "image"},
                    "txt": {"encoder": "t", "modality": "text"}},
        "sae_runs": {"base": {"method": "sparc", "dataset": "d", "streams": ["img", "txt"],
                              "n_latents": 128, "k": 8}},
    }


def test_sweeps_generate_named_runs_with_the_swept_value():
    config = base_config()
    config["sweeps"] = {"lat": {"base": "base", "parameter": "n_latents", "values": [32, 64]},
                        "lr": {"base": "base", "parameter": "lr", "values": [1e-4], "topk": ["local"]}}
    resolved = validate(config)
    members = sweep_runs(resolved)
    assert [m["run"] for m in members["lat"]] == ["lat_32_global", "lat_32_local", "lat_64_global",
                                                  "lat_64_local"]
    assert [m["run"] for m in members["lr"]] == ["lr_0p0001_local"]
    run = resolved["sae_runs"]["lat_64_local"]
    assert run["n_latents"] == 64 and isinstance(run["n_latents"], int) and run["topk"] == "local"
    assert run["k"] == 8 and run["method"] == "sparc"
    assert resolved["sae_runs"]["lr_0p0001_local"]["lr"] == 1e-4
    assert resolved["sae_runs"]["base"]["n_latents"] == 128, "the base run is left as it is"
    assert validate(resolved) == resolved, "validation is idempotent"


@pytest.mark.parametrize(("sweep", "message"), [
    ({"base": "nope", "parameter": "k", "values": [4]}, r"sweeps\.s\.base: unknown SAE run 'nope'"),
    ({"base": "base", "parameter": "k", "values": [2.5]}, r"k must be a whole number"),
    ({"base": "base", "parameter": "k", "values": [256]}, r"sae_runs\.s_256_global\.k: 256 exceeds"),
    ({"base": "base", "parameter": "epochs", "values": [1]}, r"sweeps\.s\.parameter"),
])
def test_bad_sweeps_name_the_key(sweep, message):
    config = base_config()
    config["sweeps"] = {"s": sweep}
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_sparc_needs_two_streams():
    config = base_config()
    config["sae_runs"]["base"]["streams"] = ["img"]
    with pytest.raises(ConfigError, match=r"sae_runs\.base\.streams: method sparc needs at least two"):
        validate(config)


@pytest.fixture
def tiny_model_and_data():
    g = torch.Generator().manual_seed(0)
    model = SparseAutoencoder(SAEConfig((6, 6), 24, 3, "global", ("img", "txt")), generator=g)
    latent = torch.randn(40, 6, generator=g)
    inputs = [latent, latent + 0.1 * torch.randn(40, 6, generator=g)]
    leaves = np.zeros((40, 3), dtype=bool)
    leaves[np.arange(40), np.arange(40) % 2 + 1] = True
    all_levels = leaves.copy()
    all_levels[:, 0] = True
    return model, inputs, Labels(all_levels, leaves, [None, 0, 0], ["root", "root/a", "root/b"])


@pytest.mark.parametrize("probe_labels, tasks", [("raw", 3), ("all_levels", 4)])
def test_probe_tasks_are_the_raw_labels_or_every_level(tiny_model_and_data, probe_labels, tasks):
    """The SPARC reference probes the samples' own labels; all_levels adds the folders above them
    (here root/x, the parent of x/a and x/b), and the probe loss is that of the chosen matrix."""
    from xsae.metrics.probes import evaluate_1d_probes

    model, inputs, _ = tiny_model_and_data
    names = ["root/x", "root/x/a", "root/x/b", "root/y"]
    leaves = np.zeros((40, 4), dtype=bool)
    leaves[:10, 1] = leaves[10:20, 2] = leaves[20:, 3] = True
    all_levels = leaves.copy()
    all_levels[:20, 0] = True
    labels = Labels(all_levels, leaves, [None, 0, 0, None], names)
    settings = EvaluationSettings(jaccard_top_n=5, probe_min_positives=5, batch_size=7,
                                  probe_labels=probe_labels)
    rows, extra = evaluate_multistream(model, inputs, labels=labels, settings=settings)
    probes = rows[(rows["metric"].isin(["probe_tasks", "probe_loss"])) & (rows["stream"] == "img")]
    values = probes.set_index("metric")["value"]
    assert values["probe_tasks"] == tasks
    native = extra["codes"][model.config.topk][0]
    expected = evaluate_1d_probes(native, leaves if probe_labels == "raw" else all_levels,
                                  n_latents=model.config.n_latents, min_positives=5, n_candidates=20)
    assert values["probe_loss"] == pytest.approx(expected.mean_test_loss, abs=1e-12)


def test_multistream_rows_equal_the_metric_functions(tiny_model_and_data):
    model, inputs, labels = tiny_model_and_data
    settings = EvaluationSettings(jaccard_top_n=5, probe_min_positives=5, batch_size=7)
    rows, extra = evaluate_multistream(model, inputs, labels=labels, settings=settings,
                                       raw_baseline_pairs=[(0, 1)])

    def value(metric, **fields):
        mask = rows["metric"] == metric
        for key, wanted in fields.items():
            mask &= rows[key] == wanted
        assert mask.sum() == 1, (metric, fields)
        return rows.loc[mask, "value"].iloc[0]

    r2 = r2_matrix(model, inputs, batch_size=settings.batch_size)
    assert value("r2", source="img", target="txt") == pytest.approx(float(r2[1, 0]), abs=1e-12)
    assert value("r2_self_mean") == pytest.approx(float(r2.diagonal().mean()), abs=1e-12)
    for mode in ("global", "local"):
        codes = extra["codes"][mode]
        expected = retrieval_metrics(retrieval_ranks(codes[1], codes[0]))
        assert value("retrieval_R@1", inference=mode, source="txt", target="img") == expected["R@1"]
    raw = retrieval_metrics(retrieval_ranks(inputs[0], inputs[1]))
    assert value("retrieval_MRR", inference="raw_features", source="img", target="txt") == raw["MRR"]
    patterns = rows[rows["metric"] == "activation_pattern"].set_index("variant")["value"]
    assert patterns[["all_dead", "1/2", "all_alive"]].sum() == pytest.approx(1.0)
    # root/a and root/b are tasks; root has no negatives to balance against, so it is skipped
    assert value("probe_tasks", stream="img") == 2
    assert {"top", "all_active"} == set(rows.loc[rows["metric"] == "jaccard", "variant"])
    assert set(extra["codes"]) == {"global", "local"}


def _tidy(pattern_all_alive: float, r1: float) -> pd.DataFrame:
    rows = [("activation_pattern", "global", "", "", "", "all_dead", 1 - pattern_all_alive),
            ("activation_pattern", "global", "", "", "", "1/2", 0.0),
            ("activation_pattern", "global", "", "", "", "all_alive", pattern_all_alive),
            ("activation_pattern", "global", "", "", "", "dead_a", 0.25),
            ("activation_pattern", "global", "", "", "", "dead_b", 0.5),
            ("jaccard", "global", "", "", "", "top", 0.7),
            ("jaccard", "global", "", "", "", "all_active", 0.8),
            ("probe_loss", "global", "a", "", "", "", 0.5),
            ("probe_loss", "global", "b", "", "", "", 0.6),
            ("r2", "global", "", "a", "a", "", 0.9), ("r2", "global", "", "b", "a", "", 0.3),
            ("r2", "global", "", "a", "b", "", 0.4), ("r2", "global", "", "b", "b", "", 0.8),
            ("r2_self_mean", "global", "", "", "", "", 0.85),
            ("r2_cross_mean", "global", "", "", "", "", 0.35),
            ("retrieval_R@1", "global", "", "a", "b", "", r1),
            ("retrieval_R@1", "global", "", "b", "a", "", r1 / 2),
            ("retrieval_R@1", "raw_features", "", "a", "b", "", 0.01)]
    return pd.DataFrame(rows, columns=["metric", "inference", "stream", "source", "target", "variant",
                                       "value"])


def test_sparc_tables_known_values_and_published_rows():
    metrics = {"global_l1": _tidy(0.75, 0.4), "local_l0": _tidy(0.5, 0.2)}
    reference = {"table1_activation_patterns": {"global_l1": {"all_alive": 84.4, "dead_clip_img": 15.6}},
                 "table2_jaccard": {"global_l1": 0.8018},
                 "table3_r2": {"global_l1": {"clip_img": {"clip_img": 0.663}}},
                 "table14_retrieval_r1": {"open_images": {"global_l1": {"clip_img->clip_txt": 0.421}}}}
    out = tables.sparc_tables(metrics, ["a", "b"], reference, {"a": "clip_img", "b": "clip_txt"},
                              "open_images")
    t1 = out["table1_activation_patterns"]
    reproduced = t1[t1["source"] == "reproduced"].set_index("TopK")
    assert reproduced.loc["Global", "all_alive"] == 75.0 and reproduced.loc["Local", "all_dead"] == 50.0
    assert reproduced.loc["Global", "dead b (%)"] == 50.0
    paper = t1[t1["source"] == "paper"].set_index("TopK")
    assert paper.loc["Global", "all_alive"] == 84.4 and paper.loc["Global", "dead a (%)"] == 15.6
    assert np.isnan(paper.loc["Local", "all_alive"])
    t3 = out["table3_r2"].set_index("target")
    assert t3.loc["b", "Global λ=1: a"] == 0.4 and t3.loc["a", "Global λ=1: b"] == 0.3
    assert t3.loc["self mean", "Global λ=1: a"] == 0.85
    assert t3.loc["a", "Global λ=1: a (paper)"] == 0.663
    t14 = out["table14_retrieval_r1"]
    assert t14.loc[t14["source"] == "reproduced", "a→b"].tolist() == [0.4, 0.2, 0.01]
    assert t14.loc[t14["TopK"] == "raw features", "a→b"].item() == 0.01
    assert t14.loc[(t14["source"] == "paper") & (t14["TopK"] == "Global"), "a→b"].item() == 0.421
    t4 = out["table4_probe_loss"]
    assert t4.loc[t4["source"] == "reproduced", "b"].tolist() == [0.6, 0.6]
    assert set(out) == set(tables.SPARC_TABLES)


def test_sparc_tables_show_published_tables_1_to_4_only_beside_open_images():
    """The paper printed Tables 1–4 for Open Images only, Table 14 for Open Images and COCO."""
    metrics = {"global_l1": _tidy(0.75, 0.4)}
    reference = {"table1_activation_patterns": {"global_l1": {"all_alive": 84.4}},
                 "table2_jaccard": {"global_l1": 0.8018},
                 "table3_r2": {"global_l1": {"clip_img": {"clip_img": 0.663}}},
                 "table4_probe_loss": {"global_l1": {"clip_img": 0.5355}},
                 "table14_retrieval_r1": {"coco": {"global_l1": {"clip_img->clip_txt": 0.421}}}}
    out = tables.sparc_tables(metrics, ["a", "b"], reference, {"a": "clip_img", "b": "clip_txt"}, "coco")
    for table in ("table1_activation_patterns", "table2_jaccard", "table4_probe_loss"):
        assert (out[table]["source"] == "reproduced").all(), table
    assert not any("(paper)" in column for column in out["table3_r2"].columns)
    t14 = out["table14_retrieval_r1"]
    assert t14.loc[t14["source"] == "paper", "a→b"].tolist() == [0.421]


def test_r2_table_reads_the_published_matrix_and_means_at_a_dotted_key():
    metrics = {"global_l1": _tidy(0.75, 0.4), "local_l1": _tidy(0.5, 0.2)}
    reference = {"appendix_r2": {"clip": {
        "global_l1": {"clip_img": {"clip_img": 0.657, "clip_txt": 0.574}},
        "local_l1": {"clip_txt": {"clip_img": 0.333}}}},
        "table3_r2": {"global_l1": {"clip_img": {"clip_img": 0.663}}},
        "table3_r2_means": {"global_l1": {"self": 0.693}}}
    aliases = {"a": "clip_img", "b": "clip_txt"}
    t3 = tables.sparc_tables(metrics, ["a", "b"], reference, aliases,
                             r2_reference="appendix_r2.clip")["table3_r2"].set_index("target")
    assert t3.loc["a", "Global λ=1: a (paper)"] == 0.657 and t3.loc["a", "Global λ=1: b (paper)"] == 0.574
    assert t3.loc["b", "Local λ=1: a (paper)"] == 0.333 and np.isnan(t3.loc["a", "Local λ=1: a (paper)"])
    assert np.isnan(t3.loc["self mean", "Global λ=1: a (paper)"])  # the appendix prints no means
    default = tables.sparc_tables(metrics, ["a", "b"], reference, aliases)["table3_r2"]
    assert default.set_index("target").loc["self mean", "Global λ=1: a (paper)"] == 0.693
    assert tables.reference_entry(reference, "appendix_r2.missing") == {}
    assert tables.reference_entry(None, "table3_r2") == {}


def test_sweep_table_means_self_and_cross():
    tidy = pd.DataFrame({"stream": ["a", "a", "b", "b"], "source": ["a", "b", "a", "b"],
                         "metric": ["nmse"] * 4, "value": [0.2, 0.6, 0.8, 0.4]})
    members = [{"run": "r1", "value": 16, "topk": "global"}, {"run": "r2", "value": 16, "topk": "local"}]
    other = copy.deepcopy(tidy)
    other["value"] = [0.1, 0.9, 0.9, 0.3]
    table = figures.sweep_table(members, [tidy, other])
    np.testing.assert_allclose(table[["self_nmse", "cross_nmse"]].to_numpy(), [[0.3, 0.7], [0.2, 0.9]])
    figure = figures.sweep_figure(table, "k")
    assert len(figure.axes) == 2  # NMSE panel and the Global-vs-Local gap panel


def test_sparc_table_sets_must_name_sparc_runs():
    config = base_config()
    config["sae_runs"]["single"] = {"method": "topk", "dataset": "d", "streams": ["img"], "n_latents": 16,
                                    "k": 2}
    config["tables"] = {"sparc": {"d": {"configurations": {"global_l1": "missing"}}}}
    with pytest.raises(ConfigError, match=r"tables\.sparc\.d\.configurations\.global_l1: unknown SAE run"):
        validate(config)
    config["tables"] = {"sparc": {"d": {"configurations": {"global_l1": "single"}}}}
    with pytest.raises(ConfigError, match=r"'single' is not a sparc run"):
        validate(config)
