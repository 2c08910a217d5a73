"""The synthetic experiments as config data: which runs a sweep makes, what each run trains."""

from __future__ import annotations

import pandas as pd
import pytest

from xsae import config
from xsae.errors import ConfigError
from xsae.heterogeneity_tables import summarize
from xsae.synthetic_experiments import experiments, generator_config, run_entry

BASE = {"datasets": {"tux": {"kind": "tuxpaint_stamps"}}, "encoders": {"e": {"loader": "efficientnet_lite0"}},
        "features": {"tux": ["e"]}}


def spec(**synthetic) -> dict:
    return config.validate({**BASE, "synthetic": {"seeds": [1, 2], **synthetic}})["synthetic"]


def test_runs_cover_both_figures_once_each():
    planned = experiments(spec(distances=[0.0, 1.0], lambda_distance=0.5, multipliers=[0.25, 4.0]))
    keys = [(e.figure, e.method, e.distance, e.seed) for e in planned]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2 + 2 * 2 + 2 * 2 * 2
    assert ("lambda", "iso_energy_x0.25", 0.5, 2) in keys and ("lambda", "shared", 0.5, 1) in keys
    assert planned[0].path == "results/synthetic/runs/shared/d0_s1"
    # A λ distance that Figure 5 already trains at adds no duplicate base runs.
    shared = experiments(spec(distances=[0.0, 0.5], lambda_distance=0.5, multipliers=[1.0]))
    assert len(shared) == 2 * 2 * 2 + 2 * 1 * 2


def test_run_entries_map_methods_to_sae_settings():
    s = spec(sae={"n_latents": 64, "k": 4})
    assert run_entry(s, "shared")["method"] == "shared"
    assert run_entry(s, "modality_specific")["n_latents"] == 64
    loss = run_entry(s, "group_sparse_x0.25")
    assert loss["method"] == "shared"
    assert loss["alignment_loss"] == {"kind": "group_sparse", "weight": 0.05, "multiplier": 0.25}
    assert run_entry(s, "iso_energy_x64")["alignment_loss"]["kind"] == "iso_energy"
    with pytest.raises(ConfigError, match="expected one of"):
        run_entry(s, "contrastive_x1")


def test_generator_gets_alpha_from_the_distance_and_rejects_unknown_keys():
    assert generator_config(spec(), 0.25, 3).alignment == 0.75
    assert generator_config(spec(), 0.25, 3).seed == 3
    with pytest.raises(ConfigError, match="unknown keys"):
        generator_config({"generator": {"dims": 3}}, 0.5, 0)


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [{"method": "shared", "distance": 0.5, "multiplier": float("nan"), "metric": "m", "value": v,
             "seed": s} for s, v in ((1, 1.0), (2, 3.0))]
    table = summarize([pd.DataFrame(rows)])
    assert table[["mean", "std", "runs"]].iloc[0].tolist() == [2.0, pytest.approx(2 ** 0.5), 2]


def test_bad_synthetic_sae_settings_fail_at_validation():
    with pytest.raises(ConfigError, match=r"synthetic\.sae\.k"):
        spec(sae={"k": 0})
    with pytest.raises(ConfigError, match="set per run"):
        spec(sae={"streams": ["a"]})
