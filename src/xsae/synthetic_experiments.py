"""The heterogeneity paper's synthetic experiments (Section 7.1, Figures 5 and 6) as config data.

Every experiment is one SAE trained on one generated dataset and scored with the five metrics of
Appendix D.3 against the generator's ground truth:

- Figure 5: `shared` vs `modality_specific` at each cross-modal cosine distance d = 1 − α;
- Figure 6: at one distance, the shared SAE with an auxiliary alignment loss whose weight is the
  loss's default times each multiplier (`iso_energy_x4`, `group_sparse_x0.25`, ...), beside the
  shared, modality-specific and post-hoc aligned models.

A modality-specific run is also scored after post-hoc alignment (the Hungarian re-indexing of its
text latents on the training pairs), reported as method `post_hoc`: same SAEs, aligned indices.

Torch-free: the config validation and the Snakefile expand experiments while they parse.
Generating, training and scoring them is `xsae.synthetic_runs`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from xsae.errors import ConfigError
from xsae.synthetic_config import SyntheticConfig

BASE_METHODS = ("shared", "modality_specific")
#: The scores reported per run; `post_hoc` rows come from modality-specific runs.
METRICS = (
    "reconstruction_error",
    "feature_recovery_error",
    "latent_alignment_error",
    "feature_alignment_error",
    "feature_collapse_rate",
)
_LOSS_METHOD = re.compile(r"^(?P<loss>[a-z_]+?)_x(?P<multiplier>[0-9.e+-]+)$")


@dataclass(frozen=True)
class Experiment:
    """One training run of a sweep: a method on the data of one distance and seed."""

    figure: str  # "distance" (Figure 5) or "lambda" (Figure 6)
    method: str  # shared, modality_specific or <loss>_x<multiplier>
    distance: float
    seed: int

    @property
    def path(self) -> str:
        return f"results/synthetic/runs/{self.method}/d{self.distance:g}_s{self.seed}"


def value_label(value: float) -> str:
    return f"{value:g}"


def experiments(spec: Mapping[str, Any]) -> list[Experiment]:
    """Every run the `synthetic` config section asks for, each once, in a stable order."""
    planned: dict[tuple[str, float, int], Experiment] = {}
    for seed in spec["seeds"]:
        for distance in spec["distances"]:
            for method in BASE_METHODS:
                planned.setdefault((method, distance, seed), Experiment("distance", method, distance, seed))
        distance = spec["lambda_distance"]
        for method in BASE_METHODS:
            planned.setdefault((method, distance, seed), Experiment("lambda", method, distance, seed))
        for loss in spec["alignment_losses"]:
            for multiplier in spec["multipliers"]:
                method = f"{loss}_x{value_label(multiplier)}"
                planned[(method, distance, seed)] = Experiment("lambda", method, distance, seed)
    return list(planned.values())


def datasets(spec: Mapping[str, Any]) -> list[tuple[float, int]]:
    """(distance, seed) of every generated dataset the runs need."""
    return sorted({(e.distance, e.seed) for e in experiments(spec)})


def generator_config(spec: Mapping[str, Any], distance: float, seed: int) -> SyntheticConfig:
    """The generator's settings for one dataset: α = 1 − distance (cos(φ_i, ψ_i) = α)."""
    known = {f.name for f in fields(SyntheticConfig)} - {"alignment", "seed"}
    unknown = set(spec["generator"]) - known
    if unknown:
        raise ConfigError(f"synthetic.generator: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if not 0 <= distance <= 2:
        raise ConfigError(f"synthetic distances must lie in [0, 2] (1 − cos), got {distance}")
    return SyntheticConfig(**spec["generator"], alignment=1.0 - distance, seed=seed)


def run_entry(spec: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The SAE run entry (sae_runs schema, defaults filled) that a method label stands for."""
    entry = copy.deepcopy(dict(spec["sae"]))
    entry.update(dataset="synthetic", streams=["image", "text"])
    if method in BASE_METHODS:
        entry["method"] = method
        return entry
    match = _LOSS_METHOD.match(method)
    if not match or match["loss"] not in spec["alignment_losses"]:
        raise ConfigError(
            f"synthetic method {method!r}: expected one of {BASE_METHODS} or "
            f"<loss>_x<multiplier> with <loss> in {sorted(spec['alignment_losses'])}"
        )
    loss = spec["alignment_losses"][match["loss"]]
    entry.update(
        method="shared",
        alignment_loss={
            "kind": loss["kind"],
            "weight": loss["weight"],
            "multiplier": float(match["multiplier"]),
        },
    )
    return entry
