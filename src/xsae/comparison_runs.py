"""Method comparisons of "Same Concept, Different Directions" as config data: the runs they train.

A comparison names an image stream and a text stream of one dataset, the SAE settings, the methods
and the seeds; every trained method × seed becomes an ordinary `sae_runs` entry named
`<comparison>_<method>_s<seed>`, trained by the usual rule. Methods:

- `shared`: one SAE for both modalities (m latents);
- `shared_iso_energy`, `shared_group_sparse`: the shared SAE with an auxiliary alignment loss
  (Iso-Energy in the form `iso_energy_loss` names: the authors' cosine form by default);
- `modality_specific`: one SAE per modality (m/2 latents each), indices unrelated across them;
- `modality_specific_post_hoc`: the same SAEs after post-hoc alignment (the text SAE re-indexed by
  the Hungarian matching of coactivation correlations on the training pairs): not trained again.

Torch-free: the Snakefile and the config validation expand comparisons while they parse.
Scoring the runs is `xsae.comparisons`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from xsae.errors import ConfigError

TRAINED_METHODS = ("shared", "shared_iso_energy", "shared_group_sparse", "modality_specific")
METHODS = (*TRAINED_METHODS, "modality_specific_post_hoc")


def run_name(comparison: str, method: str, seed: int) -> str:
    return f"{comparison}_{method}_s{seed}"


def trained_method(method: str) -> str:
    """The trained run a method's numbers come from (post-hoc alignment reuses modality_specific)."""
    return "modality_specific" if method == "modality_specific_post_hoc" else method


def method_entry(spec: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The sae_runs entry of one trained method of a comparison (before schema defaults)."""
    entry = copy.deepcopy(dict(spec["sae"]))
    entry.update(dataset=spec["dataset"], streams=list(spec["streams"]))
    if method == "modality_specific":
        entry["method"] = "modality_specific"
    elif method == "shared":
        entry["method"] = "shared"
    elif method in ("shared_iso_energy", "shared_group_sparse"):
        weight_key = method.removeprefix("shared_")
        kind = spec["iso_energy_loss"] if weight_key == "iso_energy" else weight_key
        entry.update(
            method="shared",
            alignment_loss={"kind": kind, "weight": spec["alignment_weights"][weight_key], "multiplier": 1.0},
        )
    else:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return entry


def comparison_runs(config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per comparison: every (method, seed, run name, variant) it reports, in config order.

    `variant` is `trained` for the run as trained and `aligned` for the post-hoc aligned copy.
    """
    planned = {}
    for name, spec in config.get("comparisons", {}).items():
        planned[name] = [
            {
                "method": method,
                "seed": seed,
                "run": run_name(name, trained_method(method), seed),
                "variant": "aligned" if method == "modality_specific_post_hoc" else "trained",
            }
            for method in spec["methods"]
            for seed in spec["seeds"]
        ]
    return planned


def expand_comparisons(config: dict[str, Any], *, comparisons: Mapping[str, Any] | None = None,
                       source: str = "config") -> None:
    """Add every comparison's trained runs to `config["sae_runs"]` (idempotent: same names, same
    entries); `comparisons` defaults to `config["comparisons"]`."""
    runs = config.setdefault("sae_runs", {})
    for name, spec in (config.get("comparisons", {}) if comparisons is None else comparisons).items():
        if "modality_specific_post_hoc" in spec["methods"] and "modality_specific" not in spec["methods"]:
            raise ConfigError(
                f"{source}: comparisons.{name}.methods: modality_specific_post_hoc aligns "
                "the modality_specific runs; list modality_specific too"
            )
        for method in spec["methods"]:
            if method == "modality_specific_post_hoc":
                continue
            for seed in spec["seeds"]:
                runs[run_name(name, method, seed)] = {**method_entry(spec, method), "seed": seed}
