"""The sharedness section of a config as data: its per-layer SAEs, model pairs and targets, and
its validation. Torch-free: the Snakefile builds the DAG from it while it parses, and
`xsae.sharedness_runs` trains, encodes and compares.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xsae.datasets import TEST_ONLY_KINDS  # kinds without a train split: nothing to train a per-layer SAE on
from xsae.encoder_catalog import LOADER_MODALITIES
from xsae.errors import ConfigError

#: sae_runs keys that each per-layer SAE sets itself.
RESERVED_SAE_KEYS = ("method", "dataset", "streams", "n_latents")


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


#: `sharedness.models.<name>.compared`: the comparisons encode pooled codes of every real token,
#: computed by the encoder's online job (else the layer's stored global token).
POOLED_CODES = "pooled_codes"


def online_jobs(config: Mapping[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(dataset, encoder) → the SAEs its sharedness_online job trains (training_data online): every
    needed layer of every model of that encoder, both modalities and every seed, in config order.
    Each entry holds what `xsae.sharedness_online.OnlineSAE` needs (plain data, a job parameter)."""
    spec = _section(config)
    if spec.get("training_data") != "online":
        return {}
    jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (dataset, model), layers in layers_needed(config).items():
        entry = spec["models"][model]
        for layer in layers:
            jobs.setdefault((dataset, entry["encoder"]), []).append(
                {"model": model, "modality": entry["modality"], "layer": layer,
                 "entry": sae_entry(config, model), "seed": sae_seed(config, model),
                 "compared": entry.get("compared", "global_token")})
    return jobs


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


def layer_run(entry: Mapping[str, Any], width: int, expansion: int, name: str) -> dict[str, Any]:
    """The sae_runs entry of one layer's SAE: the recipe with n_latents = expansion × width."""
    run = {**copy.deepcopy(dict(entry)), "method": "topk", "n_latents": expansion * width}
    if run["k"] > run["n_latents"]:
        raise ConfigError(f"sharedness.sae.k: {run['k']} exceeds the {run['n_latents']} latents of "
                          f"{name} (expansion {expansion} × width {width})")
    return run


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
        modalities = LOADER_MODALITIES.get(encoder["loader"])
        if modalities and model["modality"] not in modalities:
            problems.append(f"  {key}.modality: encoder {model['encoder']!r} has no {model['modality']!r} "
                            f"modality (it has: {', '.join(modalities)})")
        if spec["training_data"] == "online" and sae_entry(config, name)["epochs"] != 1:
            problems.append(f"  {key}.sae.epochs: training_data online makes one pass over the data; "
                            "set epochs: 1 (sharedness.sae or the model's sae)")
        if model.get("compared") == POOLED_CODES and spec["training_data"] != "online":
            problems.append(f"  {key}.compared: pooled_codes are computed by the encoder's online job; set "
                            "sharedness.training_data: online, or compare the global token (global_token)")
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
        reads_features = spec["models"][model].get("compared") != POOLED_CODES
        if reads_features and encoder not in features.get(dataset, []):
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
