"""The sharedness paper's experiments as config data: per-layer SAEs, their comparison, the tables.

Paper: "Explaining how visual, textual and multi-modal encoders share concepts". Config section
`sharedness` (config/README.md) names *models* (an encoder's modality with its stored layers) and
what to compute from them. Every model gets one TopK SAE per layer and dataset, trained on the
train split; each SAE's actual TopK codes on the held-out test split's global tokens are what the
metrics of `xsae.metrics.sharedness` compare:

- a *pair* job computes, for two models on one dataset, ρ_i of every feature of every layer of
  one model against every layer of the other (both directions), and from them the layer × layer
  MPPC / wMPPC map (Figure 1), the all-layers and the last-layer scores (Tables 1–3, 7–26);
- tables pick those scores into source × target matrices or modality averages, beside the
  published numbers;
- Generalized Comparative Sharedness (Eq. 7) ranks one model's last-layer features against two
  groups of models (Figures 2–4), and the shuffle test (Appendix C) compares wMPPC with the
  same after permuting one side's samples.

The config helpers here are pure Python (the workflow builds its DAG from them); the functions
that train, encode and compare work on explicit paths, with or without Snakemake.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from xsae.errors import ConfigError, DataError
from xsae.features import StreamRef, read_sample_ids
from xsae.io import read_npz, write_npz
from xsae.metrics.sharedness import (
    MaxCorrelation,
    all_layers_score,
    generalized_comparative_sharedness,
    last_layer_score,
    layerwise_table,
    max_correlation,
    shuffle_null,
)
from xsae.runs import evaluate_reconstruction, normalize_inputs, resolve_device, train_run, write_metrics
from xsae.sae import Codes, SparseAutoencoder
from xsae.sharedness_tables import METRICS, PAIR_COLUMNS

log = logging.getLogger(__name__)

#: sae_runs keys that each per-layer SAE sets itself.
RESERVED_SAE_KEYS = ("method", "dataset", "streams", "n_latents")
#: Kinds of dataset without a train split (nothing to train a per-layer SAE on).
TEST_ONLY_KINDS = ("imagenet_val", "class_prompts")


# ---- the section as config data --------------------------------------------------------------
@dataclass(frozen=True)
class LayerSAE:
    """One generated SAE: a model's layer on a dataset (one rule instance each)."""

    dataset: str
    model: str
    layer: int

    @property
    def layer_tag(self) -> str:
        """The layer as the feature files number it (`layers/<modality>/<NN>`)."""
        return f"{self.layer:02d}"


def _section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return config.get("sharedness") or {}


def model_label(config: Mapping[str, Any], model: str) -> str:
    """The name tables show (and published numbers are keyed by): the label, else the model name."""
    return _section(config)["models"][model].get("label") or model


def last_layer(config: Mapping[str, Any], model: str) -> int:
    return int(_section(config)["models"][model]["n_layers"]) - 1


def model_uses(config: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Every (where, dataset, model, scope) the section asks for; scope is 'all' or 'last' (None in a
    config not yet validated that leaves a table's layers to the default)."""
    spec = _section(config)
    uses: list[tuple[str, str, str, str]] = []
    for name, table in spec.get("tables", {}).items():
        for model in [*table["sources"], *(table.get("targets") or [])]:
            uses.append((f"sharedness.tables.{name}", table["dataset"], model, table.get("layers")))
    for name, average in spec.get("averages", {}).items():
        for i, row in enumerate(average["rows"]):
            for model in row["models"]:
                uses.append((f"sharedness.averages.{name}.rows[{i}]", row["dataset"], model,
                             row.get("layers")))
    for name, figure in spec.get("layerwise", {}).items():
        for panel in figure["panels"]:
            for model in panel:
                uses.append((f"sharedness.layerwise.{name}.panels", figure["dataset"], model, "all"))
    for name, entry in spec.get("comparative", {}).items():
        for model in [entry["model"], *entry["shared_with"], *entry["not_shared_with"]]:
            uses.append((f"sharedness.comparative.{name}", entry["dataset"], model, "last"))
    for name, entry in spec.get("shuffle", {}).items():
        for model in (entry["source"], entry["target"]):
            uses.append((f"sharedness.shuffle.{name}", entry["dataset"], model, "last"))
    return uses


def layers_needed(config: Mapping[str, Any]) -> dict[tuple[str, str], list[int]]:
    """(dataset, model) → the layers that get an SAE, in order of first use: every layer where
    some use compares all layers, else only the last (e.g. MambaVision in the paper)."""
    spec = _section(config)
    scopes: dict[tuple[str, str], set[str]] = {}
    for _, dataset, model, scope in model_uses(config):
        scopes.setdefault((dataset, model), set()).add(scope)
    needed = {}
    for (dataset, model), wanted in scopes.items():
        entry = spec["models"][model]
        if "all" in wanted and not entry["last_layer_only"]:
            needed[dataset, model] = list(range(entry["n_layers"]))
        else:
            needed[dataset, model] = [entry["n_layers"] - 1]
    return needed


def layer_saes(config: Mapping[str, Any]) -> list[LayerSAE]:
    """The generated per-layer SAEs: one per dataset × model × layer that some output needs."""
    return [LayerSAE(dataset, model, layer)
            for (dataset, model), layers in layers_needed(config).items() for layer in layers]


def _ordered(config: Mapping[str, Any], a: str, b: str) -> tuple[str, str]:
    """A pair in the models' config order: one pair job serves both directions."""
    order = list(_section(config)["models"])
    return (a, b) if order.index(a) <= order.index(b) else (b, a)


def same_encoder(config: Mapping[str, Any], a: str, b: str) -> bool:
    """Two models read the same features (e.g. SAEs of one encoder with two seeds)."""
    models = _section(config)["models"]
    return (models[a]["encoder"], models[a]["modality"]) == (models[b]["encoder"], models[b]["modality"])


def comparison_pairs(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(dataset, model_a, model_b) of every pair job, each once, in config order.

    Tables need every distinct source–target pair; Table-3 averages every pair of distinct
    encoders; layer-wise figures their panels (a model against itself is allowed there).
    """
    spec = _section(config)
    pairs: dict[tuple[str, str, str], None] = {}
    for table in spec.get("tables", {}).values():
        for source in table["sources"]:
            for target in table.get("targets") or table["sources"]:
                if source != target:
                    pairs[(table["dataset"], *_ordered(config, source, target))] = None
    for average in spec.get("averages", {}).values():
        for row in average["rows"]:
            for i, a in enumerate(row["models"]):
                for b in row["models"][i + 1:]:
                    if not same_encoder(config, a, b):
                        pairs[(row["dataset"], *_ordered(config, a, b))] = None
    for figure in spec.get("layerwise", {}).values():
        for source, target in figure["panels"]:
            pairs[(figure["dataset"], *_ordered(config, source, target))] = None
    return list(pairs)


def pair_of(config: Mapping[str, Any], a: str, b: str) -> tuple[str, str]:
    """The (model_a, model_b) of the pair job that holds the scores of a → b."""
    return _ordered(config, a, b)


def sae_entry(config: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The sae_runs-style entry of a model's per-layer SAEs (n_latents is set per layer)."""
    spec = _section(config)
    entry = copy.deepcopy(spec["sae"])
    entry.update(copy.deepcopy(spec["models"][model]["sae"]))
    return entry


def sae_seed(config: Mapping[str, Any], model: str) -> int:
    """The model's seed, else the recipe's, else the global seed."""
    seed = _section(config)["models"][model]["seed"]
    if seed is None:
        seed = sae_entry(config, model).get("seed")
    return int(config["seed"] if seed is None else seed)


def validate_sharedness(config: dict[str, Any], validator: Any, source: str = "config") -> None:
    """Fill the SAE recipe with the sae_runs defaults and check the names the section uses.

    `validator` is the schema's defaulting validator (xsae.config); bad keys fail here, before
    any job starts, with the key path in the message.
    """
    spec = config.get("sharedness")
    if not spec:
        return
    if not spec.get("models"):
        used = [section for section in ("tables", "averages", "layerwise", "comparative", "shuffle")
                if spec.get(section)]
        if used:
            raise ConfigError(f"{source}: sharedness.{used[0]} needs models; define sharedness.models")
        return
    problems: list[str] = []
    run_schema = validator.schema["$defs"]["sae_run"]

    def resolve_recipe(recipe: dict[str, Any], key: str, base: Mapping[str, Any]) -> dict[str, Any]:
        """`base` updated with `recipe`, checked against the sae_runs schema (defaults filled in)."""
        reserved = sorted(set(RESERVED_SAE_KEYS) & set(recipe))
        if reserved:
            problems.append(f"  {key}: {reserved} are set per layer; remove them")
            return recipe
        entry = {**base, **recipe, "method": "topk", "dataset": "sharedness", "streams": ["layer"]}
        for error in sorted(validator.evolve(schema=run_schema).iter_errors(entry),
                            key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
            problems.append(f"  {key}.{path}: {error.message}")
        return {k: v for k, v in entry.items() if k not in RESERVED_SAE_KEYS}

    spec["sae"] = resolve_recipe(spec["sae"], "sharedness.sae", {})
    datasets, encoders, features = config["datasets"], config["encoders"], config["features"]
    from xsae.encoders import LOADERS

    for name, model in spec["models"].items():
        key = f"sharedness.models.{name}"
        resolve_recipe(model["sae"], f"{key}.sae", spec["sae"])  # checks the recipe with these overrides
        encoder = encoders.get(model["encoder"])
        if encoder is None:
            problems.append(f"  {key}.encoder: unknown encoder {model['encoder']!r}; defined encoders: "
                            f"{', '.join(sorted(encoders))}")
            continue
        if not encoder["layers"]:
            problems.append(f"  {key}.encoder: encoder {model['encoder']!r} stores no per-layer features; "
                            f"set encoders.{model['encoder']}.layers: true")
        loader = LOADERS.get(encoder["loader"])
        modalities = getattr(loader, "modalities", None)
        if modalities and model["modality"] not in modalities:
            problems.append(f"  {key}.modality: encoder {model['encoder']!r} has no {model['modality']!r} "
                            f"modality (it has: {', '.join(modalities)})")
        if spec["training_data"] == "tokens" and not encoder.get("layer_tokens"):
            problems.append(f"  {key}.encoder: training_data tokens needs encoders.{model['encoder']}."
                            "layer_tokens > 0")
    for where, dataset, model, scope in model_uses(config):
        if model not in spec["models"]:
            problems.append(f"  {where}: unknown model {model!r}; defined models: "
                            f"{', '.join(sorted(spec['models']))}")
            continue
        if dataset not in datasets:
            problems.append(f"  {where}.dataset: unknown dataset {dataset!r}; defined datasets: "
                            f"{', '.join(sorted(datasets))}")
            continue
        if datasets[dataset]["kind"] in TEST_ONLY_KINDS:
            problems.append(f"  {where}.dataset: {dataset!r} ({datasets[dataset]['kind']}) has no train "
                            "split to train per-layer SAEs on")
        encoder = spec["models"][model]["encoder"]
        if encoder not in features.get(dataset, []):
            problems.append(f"  {where}: model {model!r} needs encoder {encoder!r} in features.{dataset}")
        if scope == "all" and spec["models"][model]["last_layer_only"]:
            problems.append(f"  {where}: model {model!r} is last_layer_only; use it where layers: last")
    for name, table in spec.get("tables", {}).items():
        for role in ("sources", "targets"):
            names = table.get(role) or []
            labels = [model_label(config, m) for m in names if m in spec["models"]]
            duplicated = sorted({label for label in labels if labels.count(label) > 1})
            if duplicated:
                problems.append(f"  sharedness.tables.{name}.{role}: two models share the label(s) "
                                f"{duplicated}; give them distinct labels")
    for name, entry in spec.get("comparative", {}).items():
        key = f"sharedness.comparative.{name}"
        groups = [*entry["shared_with"], *entry["not_shared_with"]]
        overlap = sorted(set(entry["shared_with"]) & set(entry["not_shared_with"]))
        if overlap:
            problems.append(f"  {key}: models in both shared_with and not_shared_with: {overlap}")
        if entry["model"] in groups:
            problems.append(f"  {key}.model: {entry['model']!r} is also in a group it is compared with")
        for other in entry["also_in"]:
            if other not in spec["comparative"] or other == name:
                problems.append(f"  {key}.also_in: unknown comparative entry {other!r}; defined: "
                                f"{', '.join(sorted(set(spec['comparative']) - {name}))}")
            elif spec["comparative"][other]["also_in"]:
                problems.append(f"  {key}.also_in: {other!r} has an also_in of its own; name plain rankings")
            elif (spec["comparative"][other]["model"], spec["comparative"][other]["dataset"]) != (
                    entry["model"], entry["dataset"]):
                problems.append(f"  {key}.also_in: {other!r} ranks another model or dataset")
    names: dict[str, str] = {}
    for section in ("tables", "averages"):
        for name in spec.get(section, {}):
            if name == "saes":
                problems.append(f"  sharedness.{section}.saes: the per-layer SAE summary's name; rename it")
            elif name in names:
                problems.append(f"  sharedness.{section}.{name}: also defined under sharedness.{names[name]}")
            names[name] = section
    for section in ("comparative", "shuffle", "layerwise"):
        for name in spec.get(section, {}):
            if f"{section}_{name}" in names or f"{section}_{name}_top" in names:
                problems.append(f"  sharedness.{section}.{name}: its files collide with table "
                                f"{section}_{name}; rename one")
    if problems:
        lines = list(dict.fromkeys(problems))  # a model used in several places is reported once
        raise ConfigError(f"{source}: inconsistent configuration\n" + "\n".join(lines))


def sharedness_targets(config: Mapping[str, Any]) -> list[str]:
    """Every file the section renders (tables, figures), for the workflow's target list."""
    spec = _section(config)
    if not spec.get("models"):
        return []
    tables = [*spec.get("tables", {}), *spec.get("averages", {}),
              *(f"shuffle_{name}" for name in spec.get("shuffle", {}))]
    outputs = [f"results/tables/sharedness_{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")]
    outputs += [f"results/figures/sharedness_layerwise_{name}.png" for name in spec.get("layerwise", {})]
    outputs += [f"results/figures/sharedness_comparative_{name}.png" for name in spec.get("comparative", {})]
    outputs.append("results/tables/sharedness_saes.csv")
    return outputs


# ---- per-layer SAEs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCodes:
    """One SAE's TopK codes of every sample of a split: `codes` values/indices `[N, k]`."""

    codes: Codes
    n_latents: int
    sample_ids: list[str]

    @property
    def n_rows(self) -> int:
        return int(self.codes.values.shape[0])


def layer_width(ref: StreamRef) -> int:
    """d of one stored layer, read from the file's metadata without loading the array."""
    read_sample_ids(ref.path)  # the file exists and is a feature file
    with h5py.File(ref.path, "r") as h5:
        if ref.key not in h5 and ref.tokens and f"layers/{ref.modality}/{ref.layer:02d}" in h5:
            raise DataError(f"{ref.path}: no sampled tokens {ref.key!r} (model {ref.name or '?'}); set "
                            "encoders.<name>.layer_tokens > 0 and extract again, or train on global tokens "
                            "(sharedness.training_data: global)")
        if ref.key not in h5:
            layers = sorted(h5.get(f"layers/{ref.modality}", {}).keys())
            raise DataError(f"{ref.path}: no dataset {ref.key!r} (model {ref.name or '?'}); the file stores "
                            f"{len(layers)} {ref.modality} layers ({', '.join(layers) or 'none'}): check "
                            "sharedness.models.<name>.n_layers")
        return int(h5[ref.key].shape[1])


@torch.no_grad()
def encode_layer(weights_path: str | Path, ref: StreamRef, *, input_norm: str, device: str = "auto",
                 batch_size: int = 4096) -> LayerCodes:
    """The SAE's TopK codes of every row of one stored layer (what the paper's metrics compare)."""
    torch_device = resolve_device(device)
    model = SparseAutoencoder.load(weights_path, device=torch_device).eval()
    from xsae.features import load_streams

    (features,), sample_ids = load_streams([ref])
    inputs = normalize_inputs(features, input_norm)
    chunks = []
    for start in range(0, inputs.shape[0], batch_size):  # inputs stay on the CPU, chunks visit the device
        (codes,) = model.encode([inputs[start:start + batch_size].to(torch_device)])
        chunks.append(Codes(codes.values.float().cpu(), codes.indices.cpu()))
    return LayerCodes(Codes.concatenate(chunks), model.config.n_latents, sample_ids)


def write_codes(path: str | Path, layer_codes: LayerCodes) -> None:
    write_npz(path, values=layer_codes.codes.values.numpy().astype(np.float32),
              indices=layer_codes.codes.indices.numpy().astype(np.int64),
              n_latents=np.int64(layer_codes.n_latents),
              sample_ids=np.array(layer_codes.sample_ids, dtype=str))


def read_codes(path: str | Path) -> LayerCodes:
    data = read_npz(path, "codes file", "run the sharedness_sae rule for it",
                    required=("values", "indices", "n_latents", "sample_ids"))
    values, indices = data["values"], data["indices"]
    n_latents, sample_ids = int(data["n_latents"]), data["sample_ids"].tolist()
    if values.shape != indices.shape or values.ndim != 2 or len(sample_ids) != values.shape[0]:
        raise DataError(f"{path}: values {values.shape}, indices {indices.shape} and {len(sample_ids)} "
                        "sample ids do not match")
    return LayerCodes(Codes(torch.from_numpy(values), torch.from_numpy(indices)), n_latents, sample_ids)


def train_layer_sae(entry: Mapping[str, Any], train_ref: StreamRef, test_ref: StreamRef, *,
                    expansion: int, seed: int, device: str, weights_path: str | Path,
                    log_path: str | Path, codes_path: str | Path, reconstruction_path: str | Path,
                    labels: Mapping[str, Any] | None = None, checkpoint_path: str | Path | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Train one layer's TopK SAE (n_latents = expansion × the layer's width) on the train
    features, then write its codes of the test features and its held-out reconstruction rows."""
    width = layer_width(train_ref)
    test_width = layer_width(test_ref)
    if test_width != width:
        raise DataError(f"{test_ref.path}: {test_ref.key} has width {test_width}, the train split's "
                        f"{train_ref.path} has {width}")
    run = {**copy.deepcopy(dict(entry)), "method": "topk", "n_latents": expansion * width}
    if run["k"] > run["n_latents"]:
        raise ConfigError(f"sharedness.sae.k: {run['k']} exceeds the {run['n_latents']} latents of "
                          f"{train_ref.name or train_ref.key} (expansion {expansion} × width {width})")
    start = time.perf_counter()
    summary = train_run(run, [train_ref], seed=seed, device=device, weights_path=weights_path,
                        log_path=log_path, checkpoint_path=checkpoint_path, progress=progress)
    summary["train_seconds"] = round(time.perf_counter() - start, 3)
    layer_codes = encode_layer(weights_path, test_ref, input_norm=run["input_norm"], device=device)
    write_codes(codes_path, layer_codes)
    labels = {**(labels or {}), "width": width, "n_latents": run["n_latents"]}
    metrics = evaluate_reconstruction(weights_path, [test_ref], input_norm=run["input_norm"], device=device,
                                      labels=labels)
    write_metrics(metrics, reconstruction_path)
    return {**summary, "width": width, "n_latents": run["n_latents"], "n_test": layer_codes.n_rows}


# ---- comparisons ------------------------------------------------------------------------------
def _check_same_samples(named: Mapping[str, LayerCodes]) -> int:
    """All code sets describe the same samples in the same order; returns N."""
    items = list(named.items())
    first_name, first = items[0]
    for name, other in items[1:]:
        if other.sample_ids != first.sample_ids:
            raise DataError(f"codes of {name} and {first_name} describe different samples "
                            f"({other.n_rows} vs {first.n_rows} rows); both must come from the same "
                            "test manifest: rerun the stale SAE job")
    return first.n_rows


def _max_correlation(a: LayerCodes, b: LayerCodes, options: Mapping[str, Any]) -> MaxCorrelation:
    return max_correlation(a.codes, b.codes, n_features_a=a.n_latents, n_features_b=b.n_latents, **options)


def _direction(layers_a: Mapping[int, LayerCodes], layers_b: Mapping[int, LayerCodes],
               options: Mapping[str, Any]) -> dict[tuple[int, int], MaxCorrelation]:
    pairs = {}
    for layer_a in sorted(layers_a):
        for layer_b in sorted(layers_b):
            pairs[layer_a, layer_b] = _max_correlation(layers_a[layer_a], layers_b[layer_b], options)
    return pairs


def _check_active(pairs: Mapping[tuple[int, int], MaxCorrelation], model: str) -> None:
    for (layer, _), result in pairs.items():
        if float(result.activation_mass.sum()) <= 0:
            raise DataError(f"the SAE of {model} layer {layer} never activates on the test split: "
                            "wMPPC is undefined; check its training log")


def compare_models(layers_a: Mapping[int, LayerCodes], layers_b: Mapping[int, LayerCodes], *,
                   name_a: str, name_b: str, device: str | torch.device | None = None,
                   chunk_rows: int = 4096, method: str = "auto") -> pd.DataFrame:
    """Every score between two models' per-layer SAEs, both directions (one when a = b).

    Tidy rows (`PAIR_COLUMNS`): scope "layer" (one per layer pair: the map of Figure 1), "all"
    (per layer of the source, ρ_i maximised over every layer of the target, averaged over the
    source's layers; Tables 1, 7, 8) and "last" (last against last; Tables 2, 9, 10); metric
    wmppc (Eq. 2–3) or mppc (Eq. 1). Layers are taken in increasing order.
    """
    if not layers_a or not layers_b:
        raise ValueError("each model needs at least one layer of codes")
    n_samples = _check_same_samples({f"{name_a} layer {la}": c for la, c in layers_a.items()}
                                    | {f"{name_b} layer {lb}": c for lb, c in layers_b.items()})
    options = {"device": resolve_device("auto") if device in (None, "auto") else device,
               "chunk_rows": chunk_rows, "method": method}
    directions = [(name_a, layers_a, name_b, layers_b)]
    if name_a != name_b:
        directions.append((name_b, layers_b, name_a, layers_a))
    rows = []
    for source, layers_source, target, layers_target in directions:
        pairs = _direction(layers_source, layers_target, options)
        _check_active(pairs, source)
        for row in layerwise_table(pairs).itertuples(index=False):
            for metric in METRICS:
                rows.append((source, target, "layer", row.layer_a, row.layer_b, metric, getattr(row, metric),
                             n_samples))
        last_source, last_target = max(layers_source), max(layers_target)
        for metric, weighting in METRICS.items():
            rows.append((source, target, "all", -1, -1, metric, all_layers_score(pairs, weighting),
                         n_samples))
            rows.append((source, target, "last", last_source, last_target, metric,
                         last_layer_score(pairs, weighting), n_samples))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# ---- Comparative Sharedness -------------------------------------------------------------------
def comparative_ranking(model: LayerCodes, others: Mapping[str, LayerCodes], shared_with: Sequence[str],
                        not_shared_with: Sequence[str], *, device: str | torch.device | None = None,
                        chunk_rows: int = 4096, method: str = "auto") -> pd.DataFrame:
    """Δ_i^{M→G,H} (Eq. 7) of every feature of M, one row each, best first.

    ρ_i^{M→X} comes from M's codes against each other model's codes on the same samples; the
    columns of `generalized_comparative_sharedness` plus `rho_<model>` for every model compared.
    """
    _check_same_samples({"model": model, **others})
    options = {"device": resolve_device("auto") if device in (None, "auto") else device,
               "chunk_rows": chunk_rows, "method": method}
    results = {name: _max_correlation(model, others[name], options)
               for name in [*shared_with, *not_shared_with]}
    mass = next(iter(results.values())).activation_mass
    ranking = generalized_comparative_sharedness(mass, {n: r.rho for n, r in results.items()}, shared_with,
                                                 not_shared_with)
    for name, result in results.items():
        ranking[f"rho_{name}"] = result.rho.numpy()
    return ranking.sort_values("rank").reset_index(drop=True)


def top_features(ranking: pd.DataFrame, fraction: float) -> list[int]:
    """The features in the top `fraction` of Δ (the paper's top 1%: 81 of 8192), best first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, math.floor(fraction * len(ranking)))
    return ranking.sort_values("rank")["feature"].head(count).astype(int).tolist()


def select_features(ranking: pd.DataFrame, n_features: int, *, fraction: float,
                    also_in: Sequence[pd.DataFrame] = ()) -> list[int]:
    """Up to `n_features` features to show: the best-ranked with Δ > 0 that are also in the top
    `fraction` of every ranking of `also_in` (Figure 2: shared with LLMs and with VLMs)."""
    keep = set(ranking["feature"].astype(int))
    for other in also_in:
        keep &= set(top_features(other, fraction))
    ordered = ranking.sort_values("rank")
    chosen = ordered[(ordered["sharedness"] > 0) & ordered["feature"].isin(keep)]
    return chosen["feature"].astype(int).head(n_features).tolist()


def top_activations(layer_codes: LayerCodes, features: Sequence[int], n: int) -> pd.DataFrame:
    """The `n` samples where each feature's code is largest (positive only), best first.

    Columns: feature, rank (1 = largest), row, sample_id, value.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    values, indices = layer_codes.codes.values, layer_codes.codes.indices
    out = []
    for feature in features:
        rows, slots = torch.nonzero((indices == int(feature)) & (values > 0), as_tuple=True)
        found = values[rows, slots]
        order = torch.argsort(found, descending=True, stable=True)[:n]
        for rank, position in enumerate(order.tolist(), start=1):
            row = int(rows[position])
            out.append({"feature": int(feature), "rank": rank, "row": row,
                        "sample_id": layer_codes.sample_ids[row], "value": float(found[position])})
    return pd.DataFrame(out, columns=["feature", "rank", "row", "sample_id", "value"])


# ---- significance (Appendix C) ------------------------------------------------------------------
def shuffle_test(a: LayerCodes, b: LayerCodes, *, n_permutations: int, seed: int, weighting: str = "mass",
                 device: str | torch.device | None = None, chunk_rows: int = 4096,
                 method: str = "auto") -> dict[str, float]:
    """wMPPC (or MPPC) of A → B on aligned samples against the same with B's samples permuted."""
    n_samples = _check_same_samples({"source": a, "target": b})
    result = shuffle_null(a.codes, b.codes, n_permutations=n_permutations, seed=seed, weighting=weighting,
                          n_features_a=a.n_latents, n_features_b=b.n_latents, chunk_rows=chunk_rows,
                          method=method,
                          device=resolve_device("auto") if device in (None, "auto") else device)
    null = result.null.numpy()
    return {"observed": result.observed, "shuffled_mean": float(null.mean()),
            "shuffled_std": float(null.std(ddof=1)) if len(null) > 1 else math.nan,
            "shuffled_max": float(null.max()), "p_value": result.p_value,
            "n_permutations": n_permutations, "n_samples": n_samples}


# ---- resources ----------------------------------------------------------------------------------
def peak_memory_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
