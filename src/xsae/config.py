"""Configuration: one JSON Schema (Draft 2020-12) with defaults, plus the cross-references it cannot express.

A bad value fails before any job starts, with the key path and the allowed values in the message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from xsae.encoder_catalog import LOADER_MODALITIES
from xsae.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SCHEMA_PATH = CONFIG_DIR / "schema.yaml"
#: The embedded default: what runs when no config file is given.
DEFAULT_CONFIG_PATH = CONFIG_DIR / "config.yaml"


def _with_defaults(validator_class: type) -> type:
    """A validator that fills `default` values into the instance as it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{error.instance!r} is not allowed; choose one of {allowed}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        hint = f" (known keys: {', '.join(allowed)})" if allowed else ""
        return f"{error.message}{hint}"
    return error.message


def validate(config: Mapping[str, Any], *, source: str = "config",
             schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return a deep copy of `config` with defaults filled in, or raise ConfigError naming the key."""
    resolved = copy.deepcopy(dict(config))
    validator = _DefaultingValidator(schema if schema is not None else load_schema())
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_key_path(e)}: {_describe(e)}" for e in errors]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    expand_sweeps(resolved, source=source)
    _expand_comparisons(resolved, validator, source)
    _validate_synthetic(resolved, validator, source)
    check_references(resolved, source=source)
    from xsae.sharedness_config import validate_sharedness

    validate_sharedness(resolved, validator, source)
    return resolved


def _run_with_defaults(entry: dict[str, Any], key: str, validator: Any, source: str) -> dict[str, Any]:
    """A generated SAE run entry checked against the sae_runs schema, defaults filled in."""
    entry = copy.deepcopy(entry)
    run_schema = validator.schema["$defs"]["sae_run"]
    errors = sorted(validator.evolve(schema=run_schema).iter_errors(entry),
                    key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {key}.{_key_path(e)}: {_describe(e)}" for e in errors]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    return entry


def _expand_comparisons(config: dict[str, Any], validator: Any, source: str) -> None:
    """Add every comparison's trained runs to `sae_runs`, checked like hand-written ones."""
    from xsae.comparison_runs import expand_comparisons

    for name, spec in config.get("comparisons", {}).items():
        reserved = sorted({"method", "dataset", "streams", "seed"} & set(spec["sae"]))
        if reserved:
            raise ConfigError(f"{source}: comparisons.{name}.sae: {reserved} are set per run; remove them")
    generated: dict[str, Any] = {}
    expand_comparisons(generated, comparisons=config.get("comparisons", {}), source=source)
    for run, entry in generated.get("sae_runs", {}).items():
        config.setdefault("sae_runs", {})[run] = _run_with_defaults(entry, f"comparisons → sae_runs.{run}",
                                                                    validator, source)


def _validate_synthetic(config: dict[str, Any], validator: Any, source: str) -> None:
    """Fill the synthetic runs' SAE settings with the sae_runs defaults and check the generator's
    keys, so that a typo fails before any job starts."""
    spec = config.get("synthetic")
    if not spec:
        return
    reserved = sorted({"method", "dataset", "streams"} & set(spec["sae"]))
    if reserved:
        raise ConfigError(f"{source}: synthetic.sae: {reserved} are set per run; remove them")
    entry = _run_with_defaults({**spec["sae"], "method": "shared", "dataset": "synthetic",
                                "streams": ["image", "text"]}, "synthetic.sae", validator, source)
    spec["sae"] = {k: v for k, v in entry.items() if k not in ("method", "dataset", "streams")}
    from xsae.synthetic_experiments import generator_config

    try:
        generator_config(spec, spec["distances"][0], 0)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def read_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file as written (no defaults), or ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` deep-merged over `base`, as Snakemake merges several `--configfile`s: mappings
    merge key by key, any other value (lists included) replaces the one below it."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_files(paths: Sequence[str | Path] = ()) -> list[Path]:
    """The files a run reads: those given, in order, or the embedded default when none is."""
    return [Path(p) for p in paths] or [DEFAULT_CONFIG_PATH]


def load_files(paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """What the workflow runs for `snakemake --configfile A B ...`: the files merged in order, then
    validated with the schema's defaults; the embedded default only when no file is given."""
    files = config_files(paths)
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, read_file(path))
    return validate(merged, source=" + ".join(str(p) for p in files))


def load(path: str | Path) -> dict[str, Any]:
    """Load and validate one YAML config file."""
    return load_files([path])


def check_references(config: Mapping[str, Any], *, source: str = "config") -> None:
    """Names used in one section must be defined in another; say which key points nowhere."""
    problems: list[str] = []

    def unknown(key: str, name: str, section: str, known) -> None:
        problems.append(
            f"  {key}: unknown {section} {name!r}; defined {section}s: {', '.join(sorted(known))}"
        )

    datasets, encoders = config["datasets"], config["encoders"]
    streams = config.get("streams", {})
    for name, encoder in encoders.items():
        if encoder["loader"] not in LOADER_MODALITIES:
            problems.append(
                f"  encoders.{name}.loader: unknown loader {encoder['loader']!r}; "
                f"available loaders: {', '.join(sorted(LOADER_MODALITIES))}"
            )
        if (encoder["loader"] == "python") != bool(encoder.get("entry")):
            problems.append(f"  encoders.{name}.entry: " + (
                "loader python needs entry: 'package.module:function'" if encoder["loader"] == "python"
                else f"only loader python takes an entry (this one is {encoder['loader']!r})"))
    for name, entry in datasets.items():
        described = entry.get("classes_of")
        if entry["kind"] == "class_prompts" and (described not in datasets or described == name):
            unknown(f"datasets.{name}.classes_of", described, "dataset", set(datasets) - {name})
        elif entry["kind"] == "class_prompts" and datasets[described]["kind"] == "class_prompts":
            problems.append(f"  datasets.{name}.classes_of: {described!r} is itself a class_prompts dataset")
        elif entry.get("class_names") == "openai_imagenet" and datasets[described]["kind"] != "imagenet_val":
            problems.append(f"  datasets.{name}.class_names: openai_imagenet needs classes_of to be an "
                            f"imagenet_val dataset, not {datasets[described]['kind']}")
        other = entry.get("files_of")
        if other is None:
            continue
        if other not in datasets or other == name:
            unknown(f"datasets.{name}.files_of", other, "dataset", set(datasets) - {name})
        elif datasets[other]["kind"] != entry["kind"] or datasets[other].get("files_of"):
            problems.append(f"  datasets.{name}.files_of: {other!r} must be a dataset of the same kind "
                            f"({entry['kind']}) that downloads its own files")
    def needs_features(key: str, dataset: str, encoder: str) -> None:
        if dataset not in datasets:
            unknown(key, dataset, "dataset", datasets)
        elif encoder in encoders and encoder not in config["features"].get(dataset, []):
            problems.append(f"  {key}: needs features of {encoder!r} on {dataset!r}; add it to "
                            f"features.{dataset}")

    for name, spec in config.get("comparisons", {}).items():
        key = f"comparisons.{name}"
        pair = [streams[s]["encoder"] for s in spec["streams"] if s in streams]
        if len(pair) != 2:
            continue  # the generated runs' unknown streams are reported below
        image, text = pair
        for encoder in pair:
            needs_features(f"{key}.retrieval", spec["retrieval"], encoder)
        if spec["zero_shot"]:
            needs_features(f"{key}.zero_shot.dataset", spec["zero_shot"]["dataset"], image)
            needs_features(f"{key}.zero_shot.prompts", spec["zero_shot"]["prompts"], text)
            prompts = datasets.get(spec["zero_shot"]["prompts"], {})
            if prompts and prompts["kind"] != "class_prompts":
                problems.append(f"  {key}.zero_shot.prompts: {spec['zero_shot']['prompts']!r} must be a "
                                "class_prompts dataset")
        if spec["monosemanticity"]:
            mono_dataset = monosemanticity_dataset(spec)
            if mono_dataset != spec["retrieval"]:
                for encoder in pair:
                    needs_features(f"{key}.monosemanticity.dataset", mono_dataset, encoder)
            for role in ("image_encoder", "text_encoder"):
                encoder = spec["monosemanticity"][role]
                if encoder not in encoders:
                    unknown(f"{key}.monosemanticity.{role}", encoder, "encoder", encoders)
                else:
                    needs_features(f"{key}.monosemanticity.{role}", mono_dataset, encoder)
    for figure, runs in config.get("decoder_directions", {}).items():
        for run in runs:
            entry = config.get("sae_runs", {}).get(run)
            if entry is None:
                unknown(f"decoder_directions.{figure}", run, "SAE run", config.get("sae_runs", {}))
            elif entry["method"] != "modality_specific" or len(entry["streams"]) != 2:
                problems.append(f"  decoder_directions.{figure}: {run!r} must be a modality_specific run "
                                "of two streams (image, text)")
    for dataset, names in config["features"].items():
        if dataset not in datasets:
            unknown(f"features.{dataset}", dataset, "dataset", datasets)
        for encoder in names:
            if encoder not in encoders:
                unknown(f"features.{dataset}", encoder, "encoder", encoders)
    for name, stream in streams.items():
        if stream["encoder"] not in encoders:
            unknown(f"streams.{name}.encoder", stream["encoder"], "encoder", encoders)
        elif stream["layer"] is not None and not encoders[stream["encoder"]]["layers"]:
            problems.append(
                f"  streams.{name}.layer: encoder {stream['encoder']!r} does not store layers; "
                f"set encoders.{stream['encoder']}.layers: true"
            )
    for name, run in config.get("sae_runs", {}).items():
        if run["dataset"] not in datasets:
            unknown(f"sae_runs.{name}.dataset", run["dataset"], "dataset", datasets)
        for stream in run["streams"]:
            if stream not in streams:
                unknown(f"sae_runs.{name}.streams", stream, "stream", streams)
            elif stream in streams and streams[stream]["encoder"] not in config["features"].get(
                run["dataset"], []
            ):
                problems.append(
                    f"  sae_runs.{name}.streams: stream {stream!r} needs encoder "
                    f"{streams[stream]['encoder']!r} in features.{run['dataset']}"
                )
        if run["method"] == "sparc" and len(run["streams"]) < 2:
            problems.append(f"  sae_runs.{name}.streams: method sparc needs at least two streams")
        if run["k"] > run["n_latents"]:
            problems.append(
                f"  sae_runs.{name}.k: {run['k']} exceeds n_latents {run['n_latents']}"
            )
    for table, spec in config.get("tables", {}).items():
        for run in spec.get("runs", []):
            if run not in config.get("sae_runs", {}):
                unknown(f"tables.{table}.runs", run, "SAE run", config.get("sae_runs", {}))
    for name, spec in config.get("tables", {}).get("sparc", {}).items():
        for label, run in spec["configurations"].items():
            if run not in config.get("sae_runs", {}):
                unknown(f"tables.sparc.{name}.configurations.{label}", run, "SAE run",
                        config.get("sae_runs", {}))
            elif config["sae_runs"][run]["method"] != "sparc":
                problems.append(f"  tables.sparc.{name}.configurations.{label}: run {run!r} is not a "
                                "sparc run")
    for dataset in config.get("figures", {}).get("dataset_overview", []):
        if dataset not in datasets:
            unknown("figures.dataset_overview", dataset, "dataset", datasets)
    if problems:
        raise ConfigError(f"{source}: inconsistent configuration\n" + "\n".join(problems))


def _value_label(value: float) -> str:
    return f"{value:g}".replace(".", "p").replace("-", "m").replace("+", "")


def monosemanticity_dataset(comparison: Mapping[str, Any]) -> str:
    """The dataset whose test split a comparison's monosemanticity is scored on (Figure 8)."""
    return comparison["monosemanticity"].get("dataset") or comparison["retrieval"]


def sweep_runs(config: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs each sweep generates: name, swept value and TopK mode, in config order."""
    generated = {}
    for sweep, spec in config.get("sweeps", {}).items():
        generated[sweep] = [
            {"run": f"{sweep}_{_value_label(value)}_{topk}", "value": value, "topk": topk,
             "parameter": spec["parameter"]}
            for value in spec["values"] for topk in spec["topk"]
        ]
    return generated


def expand_sweeps(config: dict[str, Any], *, source: str = "config") -> None:
    """Add every sweep's generated runs to `sae_runs` (idempotent: same names, same entries)."""
    runs = config.setdefault("sae_runs", {})
    for sweep, members in sweep_runs(config).items():
        spec = config["sweeps"][sweep]
        if spec["base"] not in runs:
            raise ConfigError(f"{source}: sweeps.{sweep}.base: unknown SAE run {spec['base']!r}; "
                              f"defined runs: {', '.join(sorted(runs))}")
        for member in members:
            entry = copy.deepcopy(runs[spec["base"]])
            value = member["value"]
            if spec["parameter"] in ("n_latents", "k") and value != int(value):
                raise ConfigError(f"{source}: sweeps.{sweep}.values: {spec['parameter']} must be a "
                                  f"whole number, got {value}")
            entry[spec["parameter"]] = int(value) if spec["parameter"] in ("n_latents", "k") else value
            entry["topk"] = member["topk"]
            runs[member["run"]] = entry


def run_seed(config: Mapping[str, Any], run: Mapping[str, Any]) -> int:
    """The seed of one SAE run: its own if set, else the global seed."""
    return int(run["seed"] if run.get("seed") is not None else config["seed"])
