"""The rehearsal config: `config/paper.yaml` with every rule, run, method, sweep, table and figure
kept and only scale changed, so that the whole paper DAG runs offline on two CPU cores.

What changes, and nothing else (each a rule of `SCALE` or a function below):
- datasets → miniatures in the published file formats, served from loopback
  (`xsae.rehearsal.datasets`); encoders → tiny randomly initialised models of the same loader and
  architecture (`xsae.rehearsal.encoders`); `device: cpu`;
- SAE widths and k divided (`latents`, `topk`), a few epochs, small batches, AuxK's dead-latent
  window shortened; sweeps keep their first two values (scaled like the parameter they set);
- seeds: the first two for the synthetic experiments and for a comparison that computes every
  score, the first for the ablation comparisons; synthetic distances and λ multipliers: the first
  and the last; the synthetic generator at a few dozen concepts;
- per-layer sharedness SAEs on every layer of the tiny models (three transformer blocks: first,
  middle and last; MambaVision's four stages, of which the paper uses the last), for fewer models:
  two per side of each table, one per group of a comparative figure (and features extracted only
  for what reads them);
- evaluation thresholds (probe positives, profile sizes, images per latent) sized for miniatures;
- class prompts: one template per class name instead of CLIP's 80.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from xsae.config import monosemanticity_dataset
from xsae.errors import ConfigError
from xsae.sharedness_config import POOLED_CODES, model_uses

#: SAE width and TopK k are divided so that a run stays a few hundred latents at most.
LATENT_DIVISOR = 128
TOPK_DIVISOR = 8
MIN_LATENTS = 16
MIN_K = 2


def latents(n: int) -> int:
    """A paper width (8192) at rehearsal scale (64); never below MIN_LATENTS."""
    return max(MIN_LATENTS, int(n) // LATENT_DIVISOR)


def topk(k: int) -> int:
    """A paper k (64) at rehearsal scale (8); never below MIN_K."""
    return max(MIN_K, int(k) // TOPK_DIVISOR)


def _first_two(values: list) -> list:
    return list(values[:2])


def _ends(values: list) -> list:
    return list(dict.fromkeys([values[0], values[-1]]))


#: What an SAE training entry (sae_runs.*, comparisons.*.sae, synthetic.sae, sharedness.sae)
#: becomes: key → function of the paper value. Keys not listed are kept.
SAE_SCALE: dict[str, Callable[[Any], Any]] = {
    "n_latents": latents,
    "k": topk,
    "epochs": lambda epochs: min(int(epochs), 2),
    "batch_size": lambda batch: min(int(batch), 64),
    "log_every": lambda _: 2,
    "checkpoint_every": lambda _: 1000,
    "reinit_every": lambda every: min(int(every), 5),
}
AUXK_SCALE: dict[str, Callable[[Any], Any]] = {
    "k": lambda k: topk(k) if k else 0,
    "dead_steps": lambda steps: min(int(steps), 10),
}
#: Sweeps keep their first two values, each scaled as the parameter it sets.
SWEEP_VALUE_SCALE: dict[str, Callable[[Any], Any]] = {"n_latents": latents, "k": topk}
#: The synthetic experiments' generator at a few dozen concepts (Appendix D.2's shape kept).
SYNTHETIC_GENERATOR = {"d": 16, "n_shared": 24, "n_image": 12, "n_text": 12, "sparsity": 0.9,
                       "n_train": 512, "n_eval": 256}
#: Evaluation thresholds for miniatures of a few dozen samples per split.
EVALUATION = {"jaccard_top_n": 5, "probe_min_positives": 3, "probe_candidates": 4,
              "top_activations": 4}
SHUFFLE_PERMUTATIONS = 2
#: Models per side of a sharedness table (the paper's first ones).
TABLE_MODELS = 2
#: One prompt per class ("a photo of a {}.") where the paper uses CLIP's 80 templates.
PROMPT_TEMPLATES = "photo"


def scale_datasets(datasets: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset entries at rehearsal scale: the miniatures' entries, prompts from one template."""
    scaled = copy.deepcopy(dict(datasets))
    for entry in scaled.values():
        if entry.get("kind") == "class_prompts":
            entry["templates"] = PROMPT_TEMPLATES
    return scaled
SHAREDNESS_BATCH = 64


def scale_sae(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One SAE training entry at rehearsal scale (method, streams and every other choice kept)."""
    scaled = copy.deepcopy(dict(entry))
    for key, scale in SAE_SCALE.items():
        if scaled.get(key) is not None:
            scaled[key] = scale(scaled[key])
    if isinstance(scaled.get("auxk"), Mapping):
        scaled["auxk"] = {key: AUXK_SCALE[key](value) if key in AUXK_SCALE else value
                          for key, value in scaled["auxk"].items()}
    if "k" in scaled and "n_latents" in scaled:
        scaled["k"] = min(scaled["k"], scaled["n_latents"] // 4)
    return scaled


def scale_sweeps(sweeps: Mapping[str, Any]) -> dict[str, Any]:
    scaled = {}
    for name, spec in sweeps.items():
        scale = SWEEP_VALUE_SCALE.get(spec["parameter"], lambda value: value)
        values = list(dict.fromkeys(scale(v) for v in spec["values"]))
        scaled[name] = {**copy.deepcopy(dict(spec)), "values": _first_two(values)}
    return scaled


def scale_comparisons(comparisons: Mapping[str, Any]) -> dict[str, Any]:
    """Two seeds for a comparison that computes every score (steering and monosemanticity: the
    paper's Table 1, whose ± spread is then rendered), one for the ablations."""
    scaled = {}
    for name, spec in comparisons.items():
        entry = copy.deepcopy(dict(spec))
        if "seeds" in entry:
            full = entry.get("steering") is not None and entry.get("monosemanticity") is not None
            entry["seeds"] = _first_two(entry["seeds"]) if full else entry["seeds"][:1]
        entry["sae"] = scale_sae(entry.get("sae", {}))
        scaled[name] = entry
    return scaled


def scale_synthetic(synthetic: Mapping[str, Any]) -> dict[str, Any]:
    scaled = copy.deepcopy(dict(synthetic))
    for key, shrink in (("seeds", _first_two), ("distances", _ends), ("multipliers", _ends)):
        if key in scaled:
            scaled[key] = shrink(scaled[key])
    scaled["generator"] = {**scaled.get("generator", {}), **SYNTHETIC_GENERATOR}
    scaled["sae"] = scale_sae(scaled.get("sae", {}))
    return scaled


def _keep(names: list[str], special: set[str]) -> list[str]:
    return list(dict.fromkeys([*names[:TABLE_MODELS], *(name for name in names if name in special)]))


def prune_sharedness_models(sharedness: dict[str, Any]) -> None:
    """Fewer models per comparison, in place: each table's first two sources and targets (and a
    model of a kind found nowhere else: last layer only), the first model of each group of a
    comparative figure, the averages over the models the same dataset's tables keep; models no
    table or figure then names are dropped. Every table, figure and run kind stays."""
    models = sharedness.get("models", {})
    special = {name for name, spec in models.items() if spec.get("last_layer_only")}
    named: dict[str, set[str]] = {}
    for spec in sharedness.get("tables", {}).values():
        spec["sources"] = _keep(spec["sources"], special)
        if spec.get("targets"):
            spec["targets"] = _keep(spec["targets"], special)
        named.setdefault(spec["dataset"], set()).update(spec["sources"], spec.get("targets") or ())
    for spec in sharedness.get("averages", {}).values():
        for row in spec["rows"]:
            kept = [m for m in row["models"] if m in named.get(row["dataset"], set())]
            row["models"] = kept if len(kept) >= 2 else row["models"][:2]
    for spec in sharedness.get("comparative", {}).values():
        spec["shared_with"] = spec["shared_with"][:1]
        spec["not_shared_with"] = spec["not_shared_with"][:1]
    referenced = {model for _, _, model, _ in model_uses({"sharedness": sharedness})}
    sharedness["models"] = {name: spec for name, spec in models.items() if name in referenced}


def scale_sharedness(sharedness: Mapping[str, Any], layer_count: Callable[[str], int]
                     ) -> dict[str, Any]:
    """Per-layer SAEs on every layer of the stand-in models (`layer_count(encoder)` of them), for
    fewer models (`prune_sharedness_models`)."""
    scaled = copy.deepcopy(dict(sharedness))
    prune_sharedness_models(scaled)
    sae = scale_sae(scaled.get("sae", {}))
    sae.pop("n_latents", None)  # the width is expansion × the layer's width
    sae["batch_size"] = SHAREDNESS_BATCH
    scaled["sae"] = sae
    for model in scaled.get("models", {}).values():
        model["n_layers"] = layer_count(model["encoder"])
    for spec in scaled.get("shuffle", {}).values():
        spec["n_permutations"] = min(int(spec.get("n_permutations", 10)), SHUFFLE_PERMUTATIONS)
    return scaled


def used_features(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """`features` less the encoders nothing reads on a dataset (after sharedness models were
    pruned): SAE runs' streams, comparisons' runs and scores, per-layer sharedness SAEs."""
    streams = config.get("streams", {})
    used: set[tuple[str, str]] = set()
    for run in config.get("sae_runs", {}).values():
        used.update((run["dataset"], streams[s]["encoder"]) for s in run["streams"])
    for spec in config.get("comparisons", {}).values():
        image, text = (streams[s]["encoder"] for s in spec["streams"])
        used.update({(spec["dataset"], image), (spec["dataset"], text), (spec["retrieval"], image),
                     (spec["retrieval"], text)})
        if spec.get("zero_shot"):
            used.update({(spec["zero_shot"]["dataset"], image), (spec["zero_shot"]["prompts"], text)})
        if spec.get("monosemanticity"):
            mono_dataset = monosemanticity_dataset(spec)
            used.update((mono_dataset, encoder) for encoder in (image, text))
            used.update((mono_dataset, spec["monosemanticity"][role])
                        for role in ("image_encoder", "text_encoder"))
    sharedness = config.get("sharedness") or {}
    models = sharedness.get("models", {})
    used.update((dataset, models[m]["encoder"])
                for _, dataset, m, _ in model_uses({"sharedness": sharedness})
                if models[m].get("compared") != POOLED_CODES)  # the online job computes those
    kept = {dataset: [e for e in encoders if (dataset, e) in used]
            for dataset, encoders in config.get("features", {}).items()}
    return {dataset: encoders for dataset, encoders in kept.items() if encoders}


def scale(paper: Mapping[str, Any], layer_count: Callable[[str], int]) -> dict[str, Any]:
    """The paper config's runs, sweeps, comparisons, synthetic and sharedness experiments and
    evaluation at rehearsal scale; datasets and encoders untouched (see `rehearsal_config`).
    `layer_count(encoder)`: the layers the rehearsal's model of that encoder stores."""
    config = copy.deepcopy(dict(paper))
    config["device"] = "cpu"
    config["sae_runs"] = {name: scale_sae(entry) for name, entry in config.get("sae_runs", {}).items()}
    config["sweeps"] = scale_sweeps(config.get("sweeps", {}))
    config["comparisons"] = scale_comparisons(config.get("comparisons", {}))
    if config.get("synthetic"):
        config["synthetic"] = scale_synthetic(config["synthetic"])
    if config.get("sharedness"):
        config["sharedness"] = scale_sharedness(config["sharedness"], layer_count)
    config["evaluation"] = {**config.get("evaluation", {}), **EVALUATION}
    config["features"] = used_features(config)
    return config


def check_same_shape(paper: Mapping[str, Any], rehearsal: Mapping[str, Any]) -> None:
    """The rehearsal keeps every name the paper config declares: datasets, encoders, streams, runs,
    sweeps, comparisons, tables and figures (sharedness models and the features only they read
    aside: it compares fewer); raise naming what went missing."""
    missing = []
    for section in ("datasets", "encoders", "streams", "sae_runs", "sweeps",
                    "comparisons", "decoder_directions", "tables", "figures"):
        lost = set(paper.get(section, {})) - set(rehearsal.get(section, {}))
        missing += [f"{section}.{name}" for name in sorted(lost)]
    for section in ("tables", "averages", "layerwise", "comparative", "shuffle"):
        lost = set(paper.get("sharedness", {}).get(section, {})) - set(
            rehearsal.get("sharedness", {}).get(section, {}))
        missing += [f"sharedness.{section}.{name}" for name in sorted(lost)]
    if missing:
        raise ConfigError("rehearsal config lost entries of the paper config: " + ", ".join(missing))
