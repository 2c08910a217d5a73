"""What a run will cost, before it is submitted: `xsae plan [CONFIG...]`.

A reproduction that trains a hundredth of what the paper trained looks like a finished run and
gives different numbers; a cluster job that needs 90 GB on an 80 GB GPU fails after hours in the
queue. Both can be seen from the config alone. This module reads a validated config (the one
`snakemake --configfile` would run) and lists

- every training job: the SAE runs of `sae_runs` (sweeps and comparisons expanded), the synthetic
  runs of the heterogeneity paper and the per-layer SAEs of the sharedness paper, each with its
  optimizer steps, samples (or tokens) seen, epochs, batch, latents and k, and, where a paper states
  its recipe (config/paper_recipes.yaml), the paper's steps and samples beside them; a job that falls
  short of the paper by more than the recipes' `shortfall_factor` is flagged;
- every stage's cost: extraction (one feature file per dataset × split × encoder, and the
  synthetic data), training and evaluation, each with device hours, disk and peak memory.

Nothing is downloaded or run. Sample counts come from config/dataset_sizes.yaml (or from a manifest
that already exists), costs from config/costs.yaml; every figure there carries its basis
(`measured-cpu` by a bench/ script, `published` by a paper or model card, or `assumed`), and the
output lists the figures it used, so a reader sees which hours were measured and which are guesses.
The cost model is deliberately plain: FLOPs divided by a device rate, plus the optimizer's memory
traffic per step; it is meant to be right within a small factor, which is what a go/no-go needs.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from xsae.datasets import TEST_ONLY_KINDS
from xsae.errors import ConfigError
from xsae.sharedness_config import (
    POOLED_CODES,
    comparison_pairs,
    layer_saes,
    layers_needed,
    model_uses,
    sae_entry,
)

REPO = Path(__file__).resolve().parents[2]
DATASET_SIZES_PATH = REPO / "config" / "dataset_sizes.yaml"
COSTS_PATH = REPO / "config" / "costs.yaml"
RECIPES_PATH = REPO / "config" / "paper_recipes.yaml"

STAGES = ("extraction", "training", "evaluation")
#: Dataset kinds with a `max_images` option that caps the rows of each split.
CAPPED_KINDS = ("open_images_v7", "laion_subset", "cc3m", "hub_image_text")
GB = 1e9


# ---- the data files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """One number of config/costs.yaml with what it rests on (measured, published or assumed)."""

    name: str
    value: float
    basis: str
    source: str


@dataclass(frozen=True)
class Count:
    """A sample count and where it comes from."""

    count: int
    source: str


@dataclass
class PlanData:
    """The three data files the plan reads, with their paths for error messages."""

    sizes: dict[str, Any]
    costs: dict[str, Any]
    recipes: dict[str, Any]
    sizes_path: Path = DATASET_SIZES_PATH
    costs_path: Path = COSTS_PATH
    recipes_path: Path = RECIPES_PATH
    used: dict[str, Figure] = field(default_factory=dict)

    def figure(self, *keys: str) -> Figure:
        """The figure at costs[keys...] (a mapping with value, basis, source); remembered as used."""
        node: Any = self.costs
        for depth, key in enumerate(keys):
            if not isinstance(node, Mapping) or key not in node:
                raise ConfigError(f"{self.costs_path}: missing {'.'.join(keys[:depth + 1])}")
            node = node[key]
        name = ".".join(keys)
        if not isinstance(node, Mapping) or not {"value", "basis", "source"} <= set(node):
            raise ConfigError(f"{self.costs_path}: {name} must be a mapping of value, basis and source")
        figure = Figure(name, float(node["value"]), str(node["basis"]), str(node["source"]))
        self.used.setdefault(name, figure)
        return figure

    def value(self, *keys: str) -> float:
        return self.figure(*keys).value


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_data(sizes_path: str | Path = DATASET_SIZES_PATH, costs_path: str | Path = COSTS_PATH,
              recipes_path: str | Path = RECIPES_PATH) -> PlanData:
    """Read the dataset sizes, the cost figures and the papers' recipes."""
    sizes_path, costs_path, recipes_path = Path(sizes_path), Path(costs_path), Path(recipes_path)
    sizes = _read_yaml(sizes_path, "dataset sizes")
    costs = _read_yaml(costs_path, "cost figures")
    recipes = _read_yaml(recipes_path, "paper recipes")
    for path, data, key in ((sizes_path, sizes, "kinds"), (costs_path, costs, "encoders"),
                            (costs_path, costs, "devices"), (recipes_path, recipes, "recipes")):
        if not isinstance(data.get(key), Mapping):
            raise ConfigError(f"{path}: missing the mapping {key!r}")
    return PlanData(sizes, costs, recipes, sizes_path, costs_path, recipes_path)


# ---- sample counts --------------------------------------------------------------------------------
def _count(entry: Any, path: Path, key: str) -> Count:
    if not isinstance(entry, Mapping) or "count" not in entry:
        raise ConfigError(f"{path}: {key}: expected a mapping with count and source")
    return Count(int(entry["count"]), str(entry.get("source", "")))


def _manifest_rows(path: Path) -> int:
    return len(pd.read_csv(path, usecols=[0]))


def _folder_count(entry: Mapping[str, Any], dataset: str, split: str) -> Count:
    """Rows of an image_folder split, from its table before anything is checked (rows the download
    will skip are counted)."""
    from xsae.datasets.folder import read_table, table_path

    options = entry.get("options") or {}
    if not entry.get("provided"):
        raise ConfigError(f"datasets.{dataset}.provided: an image_folder dataset needs its folder")
    path = table_path(entry["provided"], options)
    table = read_table(path)
    if options.get("split_column"):
        values = table[options["split_column"]].astype(str).str.strip().str.lower()
        return Count(int((values == split).sum()), f"{path}: rows with {options['split_column']} = {split}")
    fraction = float(options.get("test_fraction", 0.2))
    test = round(len(table) * fraction)
    return Count(len(table) - test if split == "train" else test,
                 f"{len(table)} rows of {path} × {1 - fraction if split == 'train' else fraction:g}")


def dataset_count(config: Mapping[str, Any], dataset: str, split: str, data: PlanData,
                  manifests: Path | None = None) -> Count:
    """Rows of one split of a configured dataset: from its manifest when it exists, else from
    config/dataset_sizes.yaml, adjusted for the options that change them (test_fraction,
    captions: each, max_images, class templates)."""
    if manifests is not None:
        manifest = Path(manifests) / dataset / f"{split}.csv"
        if manifest.is_file():
            return Count(_manifest_rows(manifest), f"manifest {manifest}")
    entry = config["datasets"][dataset]
    kind = entry["kind"]
    if kind == "image_folder":
        return _folder_count(entry, dataset, split)
    kinds = data.sizes["kinds"]
    where = data.sizes_path
    if kind not in kinds:
        raise ConfigError(f"{where}: kinds.{kind}: no sample counts for dataset kind {kind!r} "
                          f"(datasets.{dataset}); add its split sizes there")
    sizes = kinds[kind]
    options = entry.get("options") or {}
    if kind in TEST_ONLY_KINDS and split == "train":
        return Count(0, f"{kind} has no train split")
    if kind == "class_prompts":
        described = entry["classes_of"]
        described_kind = config["datasets"][described]["kind"]
        classes = _count((sizes.get("classes") or {}).get(described_kind), where,
                         f"kinds.class_prompts.classes.{described_kind} (datasets.{dataset}.classes_of)")
        templates_spec = entry.get("templates", "openai_imagenet")
        if isinstance(templates_spec, list):
            templates = Count(len(templates_spec), f"datasets.{dataset}.templates")
        else:
            templates = _count((sizes.get("templates") or {}).get(templates_spec), where,
                               f"kinds.class_prompts.templates.{templates_spec}")
        return Count(classes.count * templates.count, f"{classes.count} classes ({classes.source}) × "
                     f"{templates.count} templates")
    if kind in ("laion_subset", "hub_image_text"):  # rows held out by a hash at test_fraction
        if kind == "laion_subset":
            total, what = _count(sizes.get("total"), where, "kinds.laion_subset.total"), "pairs"
        else:
            repo, listed = options.get("repo"), (sizes.get("repos") or {}).get(options.get("repo"))
            if listed is None and options.get("max_rows") is not None:  # a repository of known size
                total = Count(int(options["max_rows"]), f"datasets.{dataset}.options.max_rows")
            elif listed is None and options.get("path"):  # a dataset on disk: its files say
                from xsae.datasets.hub import local_rows

                total = Count(local_rows(options), f"its Parquet files under {options['path']}")
            else:
                total = _count(listed, where, f"kinds.hub_image_text.repos.{repo}")
            what = f"rows of {repo or options.get('path')}"
        fraction = float(options.get("test_fraction", sizes.get("default_test_fraction", 0.1)))
        if fraction:  # a stable hold-out
            test = round(total.count * fraction)
            rows, share = (total.count - test, 1 - fraction) if split == "train" else (test, fraction)
        else:  # no hold-out: both splits are every row
            rows, share = total.count, 1
        count = Count(rows, f"{total.count} {what} ({total.source}) × {share:g}")
    elif kind == "tuxpaint_stamps":
        fraction = float(entry.get("test_fraction", sizes.get("default_test_fraction", 0.2)))
        if math.isclose(fraction, float(sizes.get("default_test_fraction", 0.2))):
            count = _count((sizes.get("splits") or {}).get(split), where, f"kinds.{kind}.splits.{split}")
        else:
            total = _count(sizes.get("total"), where, f"kinds.{kind}.total")
            test = round(total.count * fraction)
            count = Count(total.count - test if split == "train" else test,
                          f"{total.count} stamps ({total.source}) split at test_fraction {fraction:g}")
    else:
        table = "splits"
        if kind == "coco2017" and (entry.get("manifest_options") or {}).get("captions") == "each":
            table = "per_caption"
        count = _count((sizes.get(table) or {}).get(split), where, f"kinds.{kind}.{table}.{split}")
    cap = options.get("max_rows" if kind == "hub_image_text" else "max_images")
    if isinstance(cap, Mapping):  # a cap per split
        cap = cap.get(split)
    if kind in CAPPED_KINDS and cap is not None and cap < count.count:
        count = Count(int(cap), f"datasets.{dataset}.options.max_images (of {count.count:,})")
    return count


def caption_tokens(config: Mapping[str, Any], dataset: str, data: PlanData) -> int:
    """Mean tokens of one caption of the dataset (special tokens included; assumed figures)."""
    kind = config["datasets"][dataset]["kind"]
    entry = data.sizes["kinds"].get(kind, {}).get("caption_tokens")
    return _count(entry, data.sizes_path, f"kinds.{kind}.caption_tokens").count


def dataset_splits(config: Mapping[str, Any], dataset: str) -> tuple[str, ...]:
    return ("test",) if config["datasets"][dataset]["kind"] in TEST_ONLY_KINDS else ("train", "test")


def feature_splits(config: Mapping[str, Any], dataset: str, encoder: str) -> tuple[str, ...]:
    """The splits of `dataset` whose `encoder` features are extracted: both for an SAE run's
    stream; for the encoder of a sharedness model used on `dataset` that compares stored global
    tokens, the compared split and, unless its per-layer SAEs train online (streaming the encoder),
    the train split; else the test split."""
    splits = dataset_splits(config, dataset)
    if "train" not in splits:
        return splits
    streams = config.get("streams", {})
    for run in config.get("sae_runs", {}).values():
        if run["dataset"] == dataset and any(streams[name]["encoder"] == encoder for name in run["streams"]):
            return splits
    sharedness = config.get("sharedness") or {}
    models = sharedness.get("models") or {}
    readers = [models[model] for _, used_on, model, _ in model_uses(config)
               if used_on == dataset and model in models and models[model]["encoder"] == encoder
               and models[model].get("compared") != POOLED_CODES]  # pooled codes come from the online job
    if readers:
        read = {sharedness.get("compare_split", "test")}
        if sharedness.get("training_data", "global") != "online":
            read.add("train")
        return tuple(split for split in splits if split in read)
    return ("test",)


# ---- encoder architectures -----------------------------------------------------------------------
@dataclass(frozen=True)
class Tower:
    """One modality of an encoder: what extraction computes and stores, what an SAE reads.

    `tokens` is what the encoder processes per sample (patches + CLS, or the padded text context;
    None: the dataset's caption length); `real_tokens[l]` the tokens a sample really has at layer l
    (feature-map positions of a CNN stage), from which `layer_tokens` are drawn.
    """

    modality: str
    params: float
    tokens: int | None
    width: int
    layer_widths: tuple[int, ...]
    real_tokens: tuple[int, ...]
    gflops: float | None

    def processed_tokens(self, caption: int) -> int:
        return self.tokens if self.tokens is not None else caption

    def tokens_at(self, layer: int, caption: int) -> int:
        """Real (non-padding) tokens of one sample at `layer`."""
        if self.real_tokens:
            return self.real_tokens[layer]
        return caption if self.modality == "text" else self.processed_tokens(caption)

    def activation_values(self, caption: int) -> int:
        """Token × width of the largest layer output of one sample (what activation memory scales with)."""
        if self.real_tokens:
            return max(t * w for t, w in zip(self.real_tokens, self.layer_widths, strict=True))
        return self.processed_tokens(caption) * max((*self.layer_widths, self.width))

    def flops(self, caption: int) -> float:
        """Forward FLOPs per sample: a published figure, else 2 per parameter per token."""
        if self.gflops is not None:
            return self.gflops * 1e9
        return 2.0 * self.params * self.processed_tokens(caption)


def _architecture_entry(data: PlanData, key: str, config_key: str) -> Mapping[str, Any]:
    archs = data.costs["encoders"]
    seen = []
    while True:
        if key not in archs:
            raise ConfigError(f"{data.costs_path}: encoders.{key}: no architecture figures for {config_key} "
                              f"(model or loader {key!r}); add its widths, layers and tokens there, or "
                              f"give {config_key}.architecture in the config")
        entry = archs[key]
        if "same_as" not in entry:
            return entry
        seen.append(key)
        key = entry["same_as"]
        if key in seen:
            raise ConfigError(f"{data.costs_path}: encoders.{key}: same_as loops")


def towers(config: Mapping[str, Any], encoder: str, data: PlanData) -> dict[str, Tower]:
    """modality → Tower of a configured encoder, from config/costs.yaml (keyed by model, else loader;
    a rehearsal's stand-in by the model it stands in for)."""
    entry = config["encoders"][encoder]
    key = entry.get("stands_in_for") or entry.get("model") or entry["loader"]
    if entry.get("architecture"):  # an encoder of the user's own describes itself
        arch, where_arch = entry["architecture"], f"encoders.{encoder}.architecture"
    else:
        arch = _architecture_entry(data, key, f"encoders.{encoder}")
        where_arch = f"{data.costs_path}: encoders.{key}"
    out = {}
    for modality in ("image", "text"):
        spec = arch.get(modality)
        if spec is None:
            continue
        where = f"{where_arch}.{modality}"
        try:
            if "layer_widths" in spec:
                layer_widths = tuple(int(w) for w in spec["layer_widths"])
            else:
                layer_widths = (int(spec["layer_width"]),) * int(spec["n_layers"])
            out[modality] = Tower(
                modality=modality, params=float(spec.get("params_m", 0)) * 1e6,
                tokens=None if spec.get("tokens") is None else int(spec["tokens"]),
                width=int(spec["width"]), layer_widths=layer_widths,
                real_tokens=tuple(int(t) for t in spec.get("real_tokens", ())),
                gflops=None if spec.get("gflops") is None else float(spec["gflops"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: incomplete ({exc}); give width, layer_widths (or layer_width "
                              "and n_layers), params_m or gflops") from exc
        if out[modality].real_tokens and len(out[modality].real_tokens) != len(layer_widths):
            raise ConfigError(f"{where}: real_tokens and layer_widths differ in length")
    if not out:
        raise ConfigError(f"{where_arch}: neither image nor text figures")
    return out


def _tower(config: Mapping[str, Any], encoder: str, modality: str, data: PlanData, key: str) -> Tower:
    found = towers(config, encoder, data)
    if modality not in found:
        raise ConfigError(f"{key}: encoder {encoder!r} has no {modality} figures in {data.costs_path}")
    return found[modality]


def stream_width(config: Mapping[str, Any], stream: str, data: PlanData) -> int:
    """Input width d of a stream: the pooled output, or the width of its layer."""
    spec = config["streams"][stream]
    tower = _tower(config, spec["encoder"], spec["modality"], data, f"streams.{stream}")
    if spec.get("layer") is None:
        return tower.width
    layer = int(spec["layer"])
    if not 0 <= layer < len(tower.layer_widths):
        raise ConfigError(f"streams.{stream}.layer: {layer} is outside the {len(tower.layer_widths)} layers "
                          f"of {spec['encoder']} in {data.costs_path}")
    return tower.layer_widths[layer]


# ---- training jobs ---------------------------------------------------------------------------------
@dataclass
class PaperFigures:
    """What the paper's recipe trains for the same job."""

    recipe: str
    paper: str
    where: str
    samples_per_epoch: int
    epochs: int | None
    batch_size: int
    steps: int | None
    seen: int | None
    seen_per_epoch: int


@dataclass
class TrainingJob:
    """One SAE training job with what it will see, beside the paper's recipe where one applies.

    `unit` is what a row is: `samples` (one feature row per sample or pair) or `tokens` (the
    sharedness SAEs: sampled tokens, or one global token per sample). `latents` and `widths` are per
    trained SAE stream, so that FLOPs and parameters follow the method (shared, modality-specific...).
    """

    job: str
    family: str
    rule: str
    dataset: str
    dataset_kind: str
    method: str
    modality: str
    unit: str
    rows: int
    rows_source: str
    epochs: int
    batch_size: int
    n_latents: int
    k: int
    widths: tuple[int, ...]
    latents: tuple[int, ...]
    parameters: int
    tokens_per_sample: int = 1
    #: Rows held in memory while it trains: 0 is all of them (a feature file loaded whole); an
    #: online job holds only its shuffling buffer and one step.
    held_rows: int = 0
    paper: PaperFigures | None = None
    shortfall: float | None = None
    flagged: bool = False
    captions: str | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps: ⌈rows / batch⌉ per epoch, as the trainer counts them."""
        return math.ceil(self.rows / self.batch_size) * self.epochs if self.rows else 0

    @property
    def seen(self) -> int:
        return self.rows * self.epochs

    @property
    def train_flops_per_row(self) -> float:
        """Dense encoder logits (2·L·d) and their weight gradient (2·L·d) per stream; the sparse
        decodes (2·k·d each) are a few percent and left out."""
        return 4.0 * sum(latent * width for latent, width in zip(self.latents, self.widths, strict=True))

    @property
    def encode_flops_per_row(self) -> float:
        return 2.0 * sum(latent * width for latent, width in zip(self.latents, self.widths, strict=True))


def _parameters(method: str, latents: Sequence[int], widths: Sequence[int]) -> int:
    """Encoder and decoder matrices plus biases; one set for a shared SAE."""
    if method == "shared":
        return 2 * latents[0] * widths[0] + latents[0] + widths[0]
    return sum(2 * latent * width + latent + width for latent, width in zip(latents, widths, strict=True))


def _stream_latents(method: str, n_latents: int, n_streams: int) -> tuple[int, ...]:
    if method == "modality_specific":
        return (n_latents // n_streams,) * n_streams
    return (n_latents,) * n_streams


def sae_run_jobs(config: Mapping[str, Any], data: PlanData,
                 manifests: Path | None = None) -> list[TrainingJob]:
    """One job per entry of `sae_runs` (sweeps and comparisons are already expanded there)."""
    jobs = []
    for name, run in config.get("sae_runs", {}).items():
        widths = tuple(stream_width(config, stream, data) for stream in run["streams"])
        latents = _stream_latents(run["method"], run["n_latents"], len(widths))
        count = dataset_count(config, run["dataset"], "train", data, manifests)
        entry = config["datasets"][run["dataset"]]
        captions = (entry.get("manifest_options") or {}).get("captions", "joined")
        jobs.append(TrainingJob(
            job=name, family="sae_run", rule="train_sae", dataset=run["dataset"], dataset_kind=entry["kind"],
            method=run["method"], modality="", unit="samples", rows=count.count, rows_source=count.source,
            epochs=run["epochs"], batch_size=run["batch_size"], n_latents=run["n_latents"], k=run["k"],
            widths=widths, latents=latents, parameters=_parameters(run["method"], latents, widths),
            captions=captions if entry["kind"] == "coco2017" else None))
    return jobs


def expand(config: Mapping[str, Any]) -> dict[str, Any]:
    """The jobs a validated config generates, as plain data (JSON-able): synthetic experiments and
    datasets, per-layer SAEs with their layers and comparison pairs, comparison and sweep members.

    The helpers that generate them live beside the code that trains (modules that import torch);
    the workflow computes this in its own process and hands it to the plan rule, whose render env
    has no torch. `make_plan` computes it itself when it is not given.
    """
    from xsae.comparison_runs import comparison_runs
    from xsae.config import sweep_runs

    comparisons = comparison_runs(config).items()
    expansion: dict[str, Any] = {
        "comparison_of": {m["run"]: name for name, members in comparisons for m in members},
        "sweep_members": sorted({m["run"] for members in sweep_runs(config).values() for m in members}),
        "synthetic": [], "synthetic_datasets": [], "sharedness": [], "sharedness_layers": {},
        "sharedness_pairs": [],
    }
    spec = config.get("synthetic") or {}
    if spec.get("seeds"):
        from xsae.synthetic_experiments import datasets, experiments, generator_config, run_entry

        for experiment in experiments(spec):
            generator = generator_config(spec, experiment.distance, experiment.seed)
            entry = run_entry(spec, experiment.method)
            expansion["synthetic"].append({
                "job": f"synthetic/{experiment.method}/d{experiment.distance:g}_s{experiment.seed}",
                "method": entry["method"], "d": generator.d, "n_train": generator.n_train,
                "n_eval": generator.n_eval,
                **{key: entry[key] for key in ("n_latents", "k", "epochs", "batch_size")}})
        for distance, seed in datasets(spec):
            generator = generator_config(spec, distance, seed)
            expansion["synthetic_datasets"].append({
                "job": f"synthetic/d{distance:g}_s{seed}", "d": generator.d, "n_train": generator.n_train,
                "n_eval": generator.n_eval,
                "concepts": generator.n_shared + generator.n_image + generator.n_text})
    if (config.get("sharedness") or {}).get("models"):

        for sae in layer_saes(config):
            entry = sae_entry(config, sae.model)
            expansion["sharedness"].append({"dataset": sae.dataset, "model": sae.model, "layer": sae.layer,
                                            **{key: entry[key] for key in ("k", "epochs", "batch_size")}})
        expansion["sharedness_layers"] = {f"{dataset}/{model}": layers
                                          for (dataset, model), layers in layers_needed(config).items()}
        expansion["sharedness_pairs"] = [list(pair) for pair in comparison_pairs(config)]
    return expansion


def synthetic_jobs(expansion: Mapping[str, Any]) -> list[TrainingJob]:
    """One job per synthetic experiment (Figures 5 and 6), on its generated training pairs."""
    jobs = []
    for experiment in expansion["synthetic"]:
        widths = (experiment["d"], experiment["d"])
        latents = _stream_latents(experiment["method"], experiment["n_latents"], 2)
        jobs.append(TrainingJob(
            job=experiment["job"], family="synthetic", rule="synthetic_run", dataset="synthetic",
            dataset_kind="synthetic", method=experiment["method"], modality="", unit="samples",
            rows=experiment["n_train"], rows_source="synthetic.generator.n_train",
            epochs=experiment["epochs"],
            batch_size=experiment["batch_size"], n_latents=experiment["n_latents"], k=experiment["k"],
            widths=widths, latents=latents, parameters=_parameters(experiment["method"], latents, widths)))
    return jobs


def online_job(dataset: str, encoder: str) -> str:
    """The plan's name of a sharedness_online job; its SAEs' rows are named below it."""
    return f"sharedness/{dataset}/online/{encoder}"


def sharedness_jobs(config: Mapping[str, Any], data: PlanData, expansion: Mapping[str, Any],
                    manifests: Path | None = None) -> list[TrainingJob]:
    """One job per per-layer SAE (model × layer × dataset), counted in tokens: every real token of
    each training sample (`training_data: online`, in its encoder's sharedness_online job), its
    sampled tokens (`tokens`) or its one global token."""
    spec = config.get("sharedness") or {}
    if not spec.get("models"):
        return []
    jobs = []
    for sae in expansion["sharedness"]:
        dataset, name, layer = sae["dataset"], sae["model"], int(sae["layer"])
        model = spec["models"][name]
        encoder = config["encoders"][model["encoder"]]
        tower = _tower(config, model["encoder"], model["modality"], data, f"sharedness.models.{name}")
        if layer >= len(tower.layer_widths):
            raise ConfigError(f"sharedness.models.{name}.n_layers: layer {layer} is outside the "
                              f"{len(tower.layer_widths)} layers of {model['encoder']} in {data.costs_path}")
        width = tower.layer_widths[layer]
        samples = dataset_count(config, dataset, "train", data, manifests)
        real = tower.tokens_at(layer, caption_tokens(config, dataset, data))
        job_name, rule = f"sharedness/{dataset}/{name}/layer{layer:02d}", "sharedness_sae"
        batch, held = sae["batch_size"], 0
        if spec["training_data"] == "online":
            per_sample = real
            source = f"{samples.count:,} samples × {per_sample} real tokens ({samples.source})"
            per_step = spec["online"]["samples_per_step"].get(model["modality"])
            batch = per_step * per_sample if per_step else batch
            held = spec["online"]["mix_samples"] * per_sample + batch
            job_name = f"{online_job(dataset, model['encoder'])}/{name}/layer{layer:02d}"
            rule = "sharedness_online"
        elif spec["training_data"] == "tokens":
            per_sample = min(int(encoder["layer_tokens"]), real)
            source = f"{samples.count:,} samples × {per_sample} sampled tokens ({samples.source})"
        else:
            per_sample = 1
            source = f"{samples.count:,} samples × 1 global token ({samples.source})"
        n_latents = int(spec["expansion"]) * width
        jobs.append(TrainingJob(
            job=job_name, family="sharedness", rule=rule, dataset=dataset,
            dataset_kind=config["datasets"][dataset]["kind"], method="topk", modality=model["modality"],
            unit="tokens", rows=samples.count * per_sample, rows_source=source, epochs=sae["epochs"],
            batch_size=batch, n_latents=n_latents, k=sae["k"], widths=(width,), latents=(n_latents,),
            parameters=_parameters("topk", (n_latents,), (width,)), tokens_per_sample=per_sample,
            held_rows=held))
    return jobs


def _matches(job: TrainingJob, match: Mapping[str, Any]) -> bool:
    if match.get("family") != job.family:
        return False
    if "methods" in match and job.method not in match["methods"]:
        return False
    if "dataset_kind" in match and match["dataset_kind"] != job.dataset_kind:
        return False
    if "captions" in match and match["captions"] != job.captions:
        return False
    return "modality" not in match or match["modality"] == job.modality


def _paper_tokens(job: TrainingJob, recipe: Mapping[str, Any], config: Mapping[str, Any],
                  data: PlanData) -> int:
    """Tokens per sample the paper trains on: every token the encoder processes at the job's layer
    (`encoder`), or every real one (`real`: text padding excluded)."""
    if recipe.get("tokens") not in ("encoder", "real"):
        return 1
    dataset, (model, layer) = job.dataset, job.job.split("/")[-2:]
    spec = config["sharedness"]["models"][model]
    tower = _tower(config, spec["encoder"], spec["modality"], data, f"sharedness.models.{model}")
    caption = caption_tokens(config, dataset, data)
    if spec["modality"] == "text" and recipe["tokens"] == "encoder":
        return tower.processed_tokens(caption)  # padding included, as the authors' code trains
    return tower.tokens_at(int(layer.removeprefix("layer")), caption)


def compare_with_papers(jobs: Iterable[TrainingJob], config: Mapping[str, Any], data: PlanData) -> None:
    """Attach the first matching recipe's figures to each job and flag shortfalls in place."""
    factor = float(data.recipes.get("shortfall_factor", 2.0))
    recipes = data.recipes["recipes"]
    for job in jobs:
        for name, recipe in recipes.items():
            if not _matches(job, recipe.get("match") or {}):
                continue
            samples = _count(recipe.get("samples"), data.recipes_path, f"recipes.{name}.samples").count
            epochs = recipe.get("epochs")
            batch = int(recipe["batch_size"])
            tokens = _paper_tokens(job, recipe, config, data)
            steps = math.ceil(samples / batch) * int(epochs) if epochs else None
            seen = samples * tokens * int(epochs) if epochs else None
            job.paper = PaperFigures(
                recipe=name, paper=str(recipe.get("paper", "")), where=str(recipe.get("where", "")),
                samples_per_epoch=samples, epochs=None if epochs is None else int(epochs), batch_size=batch,
                steps=steps, seen=seen, seen_per_epoch=samples * tokens)
            ratios = []
            if steps is not None:
                ratios.append(steps / max(job.steps, 1))
            if seen is not None:
                ratios.append(seen / max(job.seen, 1))
            if steps is None:  # epochs not stated: compare what one epoch holds
                ratios.append(samples * tokens / max(job.rows, 1))
            job.shortfall = max(ratios)
            job.flagged = job.shortfall > factor
            break


# ---- costs -------------------------------------------------------------------------------------------
@dataclass
class CostRow:
    """One job of one stage: its device, time, what it leaves on disk and its peak memory."""

    stage: str
    job: str
    group: str
    rule: str
    device: str
    samples: int
    flops: float
    hours: float
    disk_bytes: float
    memory_bytes: float
    basis: str
    note: str = ""


class _Devices:
    """Device rates and the rule → device choice of one plan."""

    def __init__(self, config: Mapping[str, Any], data: PlanData, target: str):
        self.config, self.data = config, data
        if target == "auto":
            wants_gpu = (any(e.get("gpu") for e in config["encoders"].values())
                         or bool((config.get("sharedness") or {}).get("gpu")))
            fallback = "gpu" if wants_gpu else "cpu"
            target = {"cuda": "gpu", "cpu": "cpu"}.get(config.get("device", "auto"), fallback)
        if target not in ("gpu", "cpu"):
            raise ConfigError(f"plan device must be auto, gpu or cpu, got {target!r}")
        self.target = target
        self.gpu_rules = frozenset((config.get("cluster") or {}).get("gpu_rules") or ())

    def of(self, rule: str, flag: bool = False) -> str:
        """gpu when planning for GPUs and `cluster.gpu_rules` or a config flag gives the rule one."""
        if self.target == "cpu":
            return "cpu"
        return "gpu" if flag or rule in self.gpu_rules else "cpu"

    def rate(self, device: str, kind: str) -> Figure:
        """FLOP/s of `kind` (inference, matmul, correlation) on a device."""
        if device == "cpu" and kind == "matmul":
            return self._cpu_matmul()
        return self.data.figure("devices", device, f"{kind}_tflops")

    def _cpu_matmul(self) -> Figure:
        """The CPU's SAE-training FLOP/s, from bench/bench_train.py's samples/s at its setting, less
        the optimizer traffic and step overhead the plan adds back per step."""
        bench = self.data.figure("devices", "cpu", "sae_training_samples_per_s")
        setting = self.data.costs["devices"]["cpu"].get("sae_training_setting") or {}
        try:
            dims = setting["input_dims"]
            latents, batch = int(setting["n_latents"]), int(setting["batch_size"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{self.data.costs_path}: devices.cpu.sae_training_setting needs input_dims, "
                              "n_latents and batch_size") from exc
        flops = 4.0 * latents * sum(dims) * batch
        parameters = sum(2 * latents * d + latents + d for d in dims)
        step_s = batch / bench.value
        overhead_s = (self.optimizer_s("cpu", parameters)
                      + self.data.value("devices", "cpu", "step_overhead_s"))
        compute_s = max(step_s - overhead_s, 0.25 * step_s)
        return Figure(bench.name, flops / compute_s / 1e12, bench.basis, bench.source)

    def optimizer_s(self, device: str, parameters: int) -> float:
        """Adam's memory traffic for one step over every parameter."""
        traffic = parameters * self.data.value("sae", "optimizer_bytes_per_parameter")
        return traffic / (self.data.value("devices", device, "memory_bandwidth_gb_s") * GB)

    def seconds(self, device: str, kind: str, flops: float) -> tuple[float, Figure]:
        rate = self.rate(device, kind)
        return flops / (rate.value * 1e12), rate


def _basis(device: str, rate: Figure) -> str:
    return f"{device.upper()} {rate.basis} ({rate.name})"


def extraction_costs(config: Mapping[str, Any], data: PlanData, devices: _Devices,
                     expansion: Mapping[str, Any], manifests: Path | None) -> list[CostRow]:
    """One row per feature file extracted (`feature_splits`) and per synthetic dataset."""
    rows = []
    activation_factor = data.value("extraction", "activation_factor")
    for dataset, encoders in config["features"].items():
        kind = config["datasets"][dataset]["kind"]
        caption = caption_tokens(config, dataset, data)
        for encoder in encoders:
            entry = config["encoders"][encoder]
            found = towers(config, encoder, data)
            if kind == "class_prompts":
                found = {m: t for m, t in found.items() if m == "text"}
            device = devices.of("extract_features", bool(entry.get("gpu")))
            weight_bytes = 2 if device == "gpu" and entry.get("dtype") in ("bfloat16", "float16") else 4
            for split in feature_splits(config, dataset, encoder):
                count = dataset_count(config, dataset, split, data, manifests)
                flops = count.count * sum(t.flops(caption) for t in found.values())
                seconds, rate = devices.seconds(device, "inference", flops)
                if "image" in found:
                    loader = count.count / data.value("devices", device, "images_per_s")
                    seconds = max(seconds, loader)
                values = 0
                for tower in found.values():
                    values += tower.width
                    if entry.get("layers"):
                        for layer, width in enumerate(tower.layer_widths):
                            sampled = min(int(entry.get("layer_tokens") or 0),
                                          tower.tokens_at(layer, caption))
                            values += width * (1 + sampled)
                memory = sum(t.params for t in found.values()) * weight_bytes + max(
                    entry["batch_size"] * t.activation_values(caption) * weight_bytes * activation_factor
                    for t in found.values())
                rows.append(CostRow("extraction", f"{dataset}/{split}/{encoder}", dataset, "extract_features",
                                    device, count.count, flops, seconds / 3600, count.count * values * 4.0,
                                    memory, _basis(device, rate)))
    for generated in expansion["synthetic_datasets"]:
        device = devices.of("synthetic_data")
        n = generated["n_train"] + generated["n_eval"]
        flops = n * 2 * 2.0 * generated["concepts"] * generated["d"]  # x = Φz and y = Ψz
        seconds, rate = devices.seconds(device, "matmul", flops)
        size = n * generated["d"] * 2 * 4.0
        rows.append(CostRow("extraction", generated["job"], "synthetic", "synthetic_data", device, n, flops,
                            seconds / 3600, size, 2 * size, _basis(device, rate)))
    return rows


def _training_row(job: TrainingJob, data: PlanData, devices: _Devices, device: str) -> CostRow:
    flops = job.seen * job.train_flops_per_row
    compute_s, rate = devices.seconds(device, "matmul", flops)
    per_step = devices.optimizer_s(device, job.parameters) + data.value("devices", device, "step_overhead_s")
    seconds = compute_s + job.steps * per_step
    inputs = (job.held_rows or job.rows) * sum(job.widths) * 4.0
    batch = min(job.batch_size, max(job.rows, 1))
    memory = (inputs + job.parameters * data.value("sae", "training_state_bytes_per_parameter")
              + batch * sum(job.latents) * data.value("sae", "activation_bytes_per_latent"))
    note = ""
    limit = data.value("devices", device, "memory_gb") * GB
    if memory > limit:
        note = f"needs {memory / GB:.0f} GB, more than the {limit / GB:.0f} GB of the {device}"
    group = job.family if job.family != "sharedness" else f"sharedness/{job.dataset}"
    return CostRow("training", job.job, group, job.rule, device, job.seen, flops, seconds / 3600,
                   job.parameters * 4.0, memory, _basis(device, rate), note)


def training_costs(config: Mapping[str, Any], jobs: Sequence[TrainingJob], data: PlanData,
                   devices: _Devices, manifests: Path | None = None) -> list[CostRow]:
    spec = config.get("sharedness") or {}
    sharedness_gpu = bool(spec.get("gpu"))
    rows = []
    # (dataset, encoder) of every online job → the modalities it trains, and those it pools codes of
    passes: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for job in jobs:
        device = devices.of(job.rule, sharedness_gpu if job.family == "sharedness" else False)
        rows.append(_training_row(job, data, devices, device))
        if job.rule == "sharedness_online":
            model = spec["models"][job.job.split("/")[-2]]
            trained, pooled = passes.setdefault((job.dataset, model["encoder"]), (set(), set()))
            trained.add(job.modality)
            if model.get("compared") == POOLED_CODES:
                pooled.add(job.modality)
    # the online jobs' encoder passes: over the training samples, then the compared ones for pooled codes
    for (dataset, encoder), (trained, pooled) in passes.items():
        device = devices.of("sharedness_online", sharedness_gpu)
        for name, split, modalities in (("encoder_pass", "train", trained),
                                        ("pooling_pass", spec.get("compare_split", "test"), pooled)):
            if not modalities:
                continue
            samples = dataset_count(config, dataset, split, data, manifests).count
            found = {m: t for m, t in towers(config, encoder, data).items() if m in modalities}
            flops = samples * sum(t.flops(caption_tokens(config, dataset, data)) for t in found.values())
            seconds, rate = devices.seconds(device, "inference", flops)
            rows.append(CostRow("training", f"{online_job(dataset, encoder)}/{name}",
                                f"sharedness/{dataset}", "sharedness_online", device, samples, flops,
                                seconds / 3600, 0.0, sum(t.params for t in found.values()) * 4.0,
                                _basis(device, rate)))
    return rows


def _evaluation_row(job: str, group: str, rule: str, device: str, samples: int, flops: float,
                    devices: _Devices, kind: str, disk: float, memory: float, note: str = "") -> CostRow:
    seconds, rate = devices.seconds(device, kind, flops)
    return CostRow("evaluation", job, group, rule, device, samples, flops, seconds / 3600, disk, memory,
                   _basis(device, rate), note)


def evaluation_costs(config: Mapping[str, Any], jobs: Sequence[TrainingJob], data: PlanData,
                     devices: _Devices, expansion: Mapping[str, Any],
                     manifests: Path | None) -> list[CostRow]:
    """Encoding the held-out split and the metrics that dominate: retrieval (N² scores per ordered
    stream pair), post-hoc alignment (a latent × latent correlation on the training codes), and
    the sharedness comparisons (2·N·m_a·m_b per layer pair and direction, as the paper counts)."""
    rows: list[CostRow] = []
    by_name = {job.job: job for job in jobs}
    comparison_of = expansion["comparison_of"]
    sweep_members = set(expansion["sweep_members"])
    n_eval = {e["job"]: e["n_eval"] for e in expansion["synthetic"]}
    for name, run in config.get("sae_runs", {}).items():
        job = by_name[name]
        test = dataset_count(config, run["dataset"], "test", data, manifests).count
        inputs = test * sum(job.widths) * 4.0
        device = devices.of("evaluate_reconstruction")
        rows.append(_evaluation_row(f"{name}/reconstruction", "sae_run", "evaluate_reconstruction", device,
                                    test, 2 * test * job.encode_flops_per_row, devices, "matmul", 0.0,
                                    inputs + job.parameters * 4.0))
        if run["method"] == "sparc" and name not in sweep_members:
            rows.append(_sparc_evaluation(name, run, job, test, data, devices,
                                          inputs + job.parameters * 4.0))
        if name in comparison_of:
            spec = config["comparisons"][comparison_of[name]]
            retrieval = dataset_count(config, spec["retrieval"], "test", data, manifests).count
            device = devices.of("evaluate_comparison")
            flops = retrieval * job.encode_flops_per_row
            if spec.get("zero_shot"):
                zero_shot = dataset_count(config, spec["zero_shot"]["dataset"], "test", data, manifests).count
                flops += zero_shot * job.encode_flops_per_row / 2
            encode_s, rate = devices.seconds(device, "matmul", flops)
            per_score = data.figure("devices", "cpu", "retrieval_seconds_per_score")
            seconds = encode_s + 2 * retrieval * retrieval * per_score.value  # image → text and back
            chunk = data.value("evaluation", "retrieval_chunk_rows")
            memory = retrieval * sum(job.widths) * 4.0 + chunk * retrieval * 4.0
            variants = ("trained", "aligned") if run["method"] == "modality_specific" else ("trained",)
            for variant in variants:
                rows.append(CostRow("evaluation", f"{name}/{variant}", "comparison", "evaluate_comparison",
                                    device, retrieval, flops, seconds / 3600, 0.0, memory,
                                    f"{_basis(device, rate)} + {_basis('cpu', per_score)}"))
            if run["method"] == "modality_specific":
                device = devices.of("align_sae")
                flops = job.rows * job.encode_flops_per_row + 2.0 * job.rows * job.latents[0] * job.latents[1]
                rows.append(_evaluation_row(f"{name}/align", "comparison", "align_sae", device, job.rows,
                                            flops, devices, "correlation", job.parameters * 4.0,
                                            job.latents[0] * job.latents[1] * 8.0 * 2))
    directions = (config.get("decoder_directions") or {}).values()
    for name in dict.fromkeys(run for runs in directions for run in runs):
        job = by_name[name]  # the coactivation correlation over the training pairs, as for alignment
        flops = job.rows * job.encode_flops_per_row + 2.0 * job.rows * job.latents[0] * job.latents[-1]
        rows.append(_evaluation_row(f"{name}/directions", "decoder_directions", "decoder_directions",
                                    devices.of("decoder_directions"), job.rows, flops, devices, "correlation",
                                    0.0, job.latents[0] * job.latents[-1] * 8.0 * 2))
    for job in jobs:
        if job.family != "synthetic":
            continue
        held_out = n_eval[job.job]
        flops = held_out * job.encode_flops_per_row
        if job.method == "modality_specific":  # scored again after post-hoc alignment on the train pairs
            flops += job.rows * job.encode_flops_per_row + 2.0 * job.rows * job.latents[0] * job.latents[1]
        device = devices.of("synthetic_run")
        rows.append(_evaluation_row(f"{job.job}/score", "synthetic", "synthetic_run", device, held_out, flops,
                                    devices, "matmul", 0.0, held_out * sum(job.widths) * 4.0))
    rows += _sharedness_evaluation(config, jobs, data, devices, expansion, manifests)
    return rows


def _sparc_evaluation(name: str, run: Mapping[str, Any], job: TrainingJob, test: int, data: PlanData,
                      devices: _Devices, memory: float) -> CostRow:
    """Every SPARC metric of one run on its N test rows, from bench/bench_eval.py's CPU timings (a
    Global model, evaluated with both inference modes): a part linear in N per stream, and retrieval,
    N² scores per ordered stream pair and mode."""
    streams = len(job.widths)
    modes = 2 if run["topk"] == "global" else 1
    per_row = data.figure("devices", "cpu", "sparc_evaluation_seconds_per_row_stream")
    per_score = data.figure("devices", "cpu", "retrieval_seconds_per_score")
    seconds = (test * streams * per_row.value * modes / 2
               + streams * (streams - 1) * modes * test * test * per_score.value)
    device = devices.of("evaluate_sparc")
    chunk = data.value("evaluation", "retrieval_chunk_rows")
    return CostRow("evaluation", f"{name}/sparc", "sae_run", "evaluate_sparc", device, test, 0.0,
                   seconds / 3600, 0.0, memory + chunk * test * 4.0, _basis("cpu", per_row))


def _sharedness_evaluation(config: Mapping[str, Any], jobs: Sequence[TrainingJob], data: PlanData,
                           devices: _Devices, expansion: Mapping[str, Any],
                           manifests: Path | None) -> list[CostRow]:
    spec = config.get("sharedness") or {}
    if not spec.get("models"):
        return []
    gpu = bool(spec.get("gpu"))
    latents: dict[tuple[str, str, int], int] = {}
    rows = []

    @functools.cache
    def compared(dataset: str) -> int:
        """Samples of the split whose codes are compared."""
        return dataset_count(config, dataset, spec.get("compare_split", "test"), data, manifests).count

    for job in jobs:
        if job.family != "sharedness":
            continue
        dataset, (model, layer) = job.dataset, job.job.split("/")[-2:]
        latents[dataset, model, int(layer.removeprefix("layer"))] = job.n_latents
        n = compared(dataset)
        name, group = f"sharedness/{dataset}/{model}/{layer}", f"sharedness/{dataset}"
        if spec["models"][model].get("compared") == POOLED_CODES:
            # every token of the compared split, in the online job; the SAE job copies the codes
            tokens = n * job.tokens_per_sample
            rows.append(_evaluation_row(f"{job.job.rsplit('/', 2)[0]}/{model}/{layer}/pooled_codes", group,
                                        "sharedness_online", devices.of("sharedness_online", gpu), n,
                                        2 * tokens * job.encode_flops_per_row, devices, "matmul",
                                        n * job.k * 12.0, job.held_rows * job.widths[0] * 4.0))
            rows.append(_evaluation_row(f"{name}/adopt", group, "sharedness_sae",
                                        devices.of("sharedness_sae"), n, 0.0, devices, "matmul",
                                        n * job.k * 12.0, n * job.k * 12.0 + job.parameters * 4.0))
            continue
        device = devices.of("sharedness_sae", gpu)
        rows.append(_evaluation_row(f"{name}/encode", group, "sharedness_sae", device, n,
                                    2 * n * job.encode_flops_per_row, devices, "matmul",
                                    n * job.k * 12.0, n * job.widths[0] * 4.0 + job.parameters * 4.0))
    needed = expansion["sharedness_layers"]
    chunk = float(spec.get("compare", {}).get("chunk_rows", 4096))

    def correlation(dataset: str, pairs: Iterable[tuple[str, int, str, int]],
                    repeats: int = 1) -> tuple[float, float]:
        n = compared(dataset)
        flops, memory = 0.0, 0.0
        for a, layer_a, b, layer_b in pairs:
            m_a, m_b = latents[dataset, a, layer_a], latents[dataset, b, layer_b]
            flops += repeats * 2.0 * n * m_a * m_b
            memory = max(memory, m_a * m_b * 4.0 * 2 + chunk * (m_a + m_b) * 4.0 * 2)
        return flops, memory

    for dataset, a, b in expansion["sharedness_pairs"]:
        directions = [(a, b), (b, a)] if a != b else [(a, b)]
        layer_pairs = [(x, la, y, lb) for x, y in directions
                       for la in needed[f"{dataset}/{x}"] for lb in needed[f"{dataset}/{y}"]]
        flops, memory = correlation(dataset, layer_pairs)
        n = compared(dataset)
        rows.append(_evaluation_row(f"sharedness/{dataset}/pair/{a}/{b}", f"sharedness/{dataset}",
                                    "sharedness_pair", devices.of("sharedness_pair", gpu), n, flops,
                                    devices, "correlation", 0.0, memory))
    last = {model: int(entry["n_layers"]) - 1 for model, entry in spec["models"].items()}
    for name, entry in spec.get("comparative", {}).items():
        dataset, model = entry["dataset"], entry["model"]
        others = [*entry["shared_with"], *entry["not_shared_with"]]
        flops, memory = correlation(dataset, [(model, last[model], x, last[x]) for x in others])
        n = compared(dataset)
        rows.append(_evaluation_row(f"sharedness/{dataset}/comparative/{name}", f"sharedness/{dataset}",
                                    "sharedness_comparative", devices.of("sharedness_comparative", gpu), n,
                                    flops, devices, "correlation", 0.0, memory))
    for name, entry in spec.get("shuffle", {}).items():
        dataset = entry["dataset"]
        source, target = entry["source"], entry["target"]
        flops, memory = correlation(dataset, [(source, last[source], target, last[target])],
                                    repeats=int(entry["n_permutations"]) + 1)
        n = compared(dataset)
        rows.append(_evaluation_row(f"sharedness/{dataset}/shuffle/{name}", f"sharedness/{dataset}",
                                    "sharedness_shuffle", devices.of("sharedness_shuffle", gpu), n, flops,
                                    devices, "correlation", 0.0, memory))
    return rows


# ---- the plan ------------------------------------------------------------------------------------------
@dataclass
class DatasetRow:
    dataset: str
    kind: str
    split: str
    rows: int
    source: str


@dataclass
class Plan:
    """Every training job, every stage's cost, the sample counts and the figures they rest on."""

    source: str
    device: str
    datasets: list[DatasetRow]
    jobs: list[TrainingJob]
    costs: list[CostRow]
    figures: list[Figure]
    shortfall_factor: float

    @property
    def flagged(self) -> list[TrainingJob]:
        return [job for job in self.jobs if job.flagged]


def make_plan(config: Mapping[str, Any], *, data: PlanData | None = None, device: str = "auto",
              manifests: str | Path | None = None, source: str = "config",
              expansion: Mapping[str, Any] | None = None) -> Plan:
    """The plan of a validated config (`xsae.config.load_files` / `validate` output); `expansion`
    is `expand(config)`, computed here when not given."""
    data = data or load_data()
    expansion = expand(config) if expansion is None else expansion
    manifest_dir = None if manifests is None else Path(manifests)
    devices = _Devices(config, data, device)
    jobs = [*sae_run_jobs(config, data, manifest_dir), *synthetic_jobs(expansion),
            *sharedness_jobs(config, data, expansion, manifest_dir)]
    compare_with_papers(jobs, config, data)
    costs = [*extraction_costs(config, data, devices, expansion, manifest_dir),
             *training_costs(config, jobs, data, devices, manifest_dir),
             *evaluation_costs(config, jobs, data, devices, expansion, manifest_dir)]
    datasets = []
    for name, entry in config["datasets"].items():
        for split in dataset_splits(config, name):
            count = dataset_count(config, name, split, data, manifest_dir)
            datasets.append(DatasetRow(name, entry["kind"], split, count.count, count.source))
    figures = sorted(data.used.values(), key=lambda figure: figure.name)
    return Plan(source, devices.target, datasets, jobs, costs, figures,
                float(data.recipes.get("shortfall_factor", 2.0)))


def plan_files(paths: Sequence[str | Path] = (), **options: Any) -> Plan:
    """The plan of what `snakemake --configfile PATHS...` would run (config/config.yaml when none)."""
    from xsae import config as config_module

    files = config_module.config_files(paths)
    loaded = config_module.load_files(files)
    return make_plan(loaded, source=" + ".join(str(p) for p in files), **options)


# ---- tables --------------------------------------------------------------------------------------------
def jobs_frame(plan: Plan) -> pd.DataFrame:
    """One row per training job: what it trains on, its steps and samples, the paper's, the flag."""
    costs = {row.job: row for row in plan.costs if row.stage == "training"}
    records = []
    for job in plan.jobs:
        paper = job.paper
        cost = costs[job.job]
        records.append({
            "job": job.job, "family": job.family, "dataset": job.dataset, "unit": job.unit,
            "rows": job.rows, "epochs": job.epochs, "batch": job.batch_size, "steps": job.steps,
            "seen": job.seen, "latents": job.n_latents, "k": job.k,
            "paper_steps": None if paper is None else paper.steps,
            "paper_seen": None if paper is None else paper.seen or paper.seen_per_epoch,
            "paper_epochs": None if paper is None else paper.epochs,
            "paper_batch": None if paper is None else paper.batch_size,
            "shortfall": None if job.shortfall is None else round(job.shortfall, 2),
            "flag": f"short ×{job.shortfall:.1f}" if job.flagged and job.shortfall else "",
            "device": cost.device, "hours": cost.hours, "memory_gb": cost.memory_bytes / GB,
            "recipe": "" if paper is None else f"{paper.paper}: {paper.where}",
            "rows_source": job.rows_source,
        })
    return pd.DataFrame.from_records(records)


def costs_frame(plan: Plan) -> pd.DataFrame:
    """One row per job of every stage (the CSV the workflow writes), training rows with the job's counts."""
    jobs = {job.job: job for job in plan.jobs}
    records = []
    for row in plan.costs:
        job = jobs.get(row.job) if row.stage == "training" else None
        record = {"stage": row.stage, "job": row.job, "group": row.group, "rule": row.rule,
                  "device": row.device, "samples": row.samples, "tflops": row.flops / 1e12,
                  "hours": row.hours, "disk_gb": row.disk_bytes / GB, "memory_gb": row.memory_bytes / GB,
                  "basis": row.basis, "note": row.note}
        if job is not None:
            paper = job.paper
            record.update(unit=job.unit, epochs=job.epochs, batch=job.batch_size, steps=job.steps,
                          seen=job.seen, latents=job.n_latents, k=job.k,
                          paper_steps=None if paper is None else paper.steps,
                          paper_seen=None if paper is None else paper.seen,
                          shortfall=job.shortfall, flagged=job.flagged)
        records.append(record)
    columns = ["stage", "job", "group", "rule", "unit", "samples", "epochs", "batch", "steps", "seen",
               "latents", "k", "paper_steps", "paper_seen", "shortfall", "flagged", "device", "tflops",
               "hours", "disk_gb", "memory_gb", "basis", "note"]
    return pd.DataFrame.from_records(records).reindex(columns=columns)


def summary_frame(plan: Plan) -> pd.DataFrame:
    """Per stage and group: costed items, GPU- and CPU-hours, disk, peak memory and flagged jobs;
    then a total per stage and an overall total (hours and disk summed, memory the largest).

    An item is one unit of work priced on its own: one extraction, one SAE trained, one
    evaluation (a sharedness evaluation per layer pair). Snakemake's jobs group or split them
    differently; `snakemake -n` counts those."""
    # columns named, so that a config with nothing to train or extract gives a table of zeros
    frame = pd.DataFrame([asdict(row) for row in plan.costs], columns=[f.name for f in fields(CostRow)])
    flagged = {job.job for job in plan.flagged}
    frame["flagged"] = frame["job"].isin(flagged) & (frame["stage"] == "training")
    frame["gpu_hours"] = frame["hours"].where(frame["device"] == "gpu", 0.0)
    frame["cpu_hours"] = frame["hours"].where(frame["device"] == "cpu", 0.0)

    def summarize(part: pd.DataFrame, stage: str, group: str) -> dict[str, Any]:
        return {"stage": stage, "group": group, "items": len(part), "gpu_hours": part["gpu_hours"].sum(),
                "cpu_hours": part["cpu_hours"].sum(), "disk_gb": part["disk_bytes"].sum() / GB,
                "peak_memory_gb": part["memory_bytes"].max() / GB if len(part) else 0.0,
                "flagged": int(part["flagged"].sum())}

    records = []
    for stage in STAGES:
        part = frame[frame["stage"] == stage]
        for group, members in part.groupby("group", sort=False):
            records.append(summarize(members, stage, str(group)))
        records.append(summarize(part, stage, "total"))
    records.append(summarize(frame, "all", "total"))
    return pd.DataFrame.from_records(records)


def datasets_frame(plan: Plan) -> pd.DataFrame:
    return pd.DataFrame([asdict(row) for row in plan.datasets])


def figures_frame(plan: Plan) -> pd.DataFrame:
    return pd.DataFrame([asdict(figure) for figure in plan.figures])


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.astype(object).where(frame.notna(), None)
    for column in shown.columns:
        counts = column in ("paper_steps", "paper_seen", "paper_epochs", "paper_batch")
        if counts or pd.api.types.is_integer_dtype(frame[column]):
            shown[column] = [None if v is None else int(v) for v in shown[column]]
        shown[column] = [_number(v) for v in shown[column]]
    return shown


def totals_lines(plan: Plan) -> list[str]:
    """The totals per stage and overall, and the flagged jobs grouped by family and dataset."""
    summary = summary_frame(plan)
    total = summary[(summary["stage"] == "all")].iloc[0]
    lines = [f"Totals ({plan.source}, planned for {plan.device.upper()}): "
             f"{int(total['items']):,} costed items (extractions, SAEs, evaluations; `snakemake -n` "
             "counts the DAG's jobs), "
             f"{total['gpu_hours']:,.1f} GPU-hours, {total['cpu_hours']:,.1f} CPU-hours, "
             f"{total['disk_gb']:,.1f} GB on disk, peak memory {total['peak_memory_gb']:,.1f} GB"]
    for _, row in summary[(summary["group"] == "total") & (summary["stage"] != "all")].iterrows():
        lines.append(f"  {row['stage']}: {int(row['items']):,} items, {row['gpu_hours']:,.1f} GPU-h, "
                     f"{row['cpu_hours']:,.1f} CPU-h, {row['disk_gb']:,.1f} GB, "
                     f"peak {row['peak_memory_gb']:,.1f} GB")
    flagged = plan.flagged
    lines.append(f"Flagged: {len(flagged)} of {len(plan.jobs)} training jobs fall short of the paper's "
                 f"recipe by more than {plan.shortfall_factor:g}× in steps or samples seen")
    groups: dict[tuple[str, str, str], list[TrainingJob]] = {}
    for job in flagged:
        groups.setdefault((job.family, job.dataset, job.modality), []).append(job)
    for (family, dataset, modality), members in groups.items():
        dataset = f"{dataset} ({modality})" if modality else dataset
        steps = sorted({j.steps for j in members})
        paper = sorted({j.paper.steps for j in members if j.paper and j.paper.steps is not None})
        lines.append(f"  {family} on {dataset}: {len(members)} jobs, {_span(steps)} steps against the "
                     f"paper's {_span(paper)} (short ×{min(j.shortfall or 0 for j in members):.1f} to "
                     f"×{max(j.shortfall or 0 for j in members):.1f})")
    notes = [row for row in plan.costs if row.note]
    for row in notes:
        lines.append(f"  note: {row.stage} {row.job}: {row.note}")
    return lines


def _span(values: Sequence[int]) -> str:
    if not values:
        return "–"
    return f"{values[0]:,}" if values[0] == values[-1] else f"{values[0]:,}–{values[-1]:,}"


def _clipped(frame: pd.DataFrame, column: str, width: int = 80) -> pd.DataFrame:
    """`column` cut to `width` characters for the terminal (the other formats keep it whole)."""
    clipped = frame.copy()
    clipped[column] = [text if len(text) <= width else text[:width - 1] + "…" for text in clipped[column]]
    return clipped


JOB_COLUMNS = ["job", "dataset", "unit", "rows", "epochs", "batch", "steps", "seen", "latents", "k",
               "paper_steps", "paper_seen", "flag", "device", "hours"]


def format_text(plan: Plan) -> str:
    """The readable report: sample counts, every training job, the cost per stage, the figures
    used and the totals (with the flagged jobs) at the bottom."""
    out = [f"Plan of {plan.source} (device: {plan.device})", "", "Samples per dataset split"]
    out.append(_display(_clipped(datasets_frame(plan), "source")).to_string(index=False))
    out += ["", "Training jobs (rows per epoch; seen = rows × epochs; paper = the paper's recipe)"]
    jobs = jobs_frame(plan)
    out.append(_display(jobs[JOB_COLUMNS]).to_string(index=False) if len(jobs) else "(none)")
    out += ["", "Cost per stage (hours on the device the rule gets; memory on that device)"]
    out.append(_display(summary_frame(plan)).to_string(index=False))
    out += ["", "Figures used (basis: measured-cpu = a bench/ script on this project's 2-core CPU; "
            "published = a paper or model card; assumed = an estimate)"]
    out.append(_display(_clipped(figures_frame(plan), "source")).to_string(index=False))
    out += ["", *totals_lines(plan)]
    return "\n".join(out) + "\n"


def format_markdown(plan: Plan) -> str:
    from xsae.tables import to_markdown

    jobs = jobs_frame(plan)
    parts = [f"# Plan of {plan.source} (device: {plan.device})", "", "## Totals", "",
             *(f"- {line.strip()}" for line in totals_lines(plan)), "",
             "## Cost per stage", "", to_markdown(_display(summary_frame(plan))), "",
             "## Training jobs", "", to_markdown(_display(jobs[JOB_COLUMNS])) if len(jobs) else "(none)", "",
             "## Samples per dataset split", "", to_markdown(_display(datasets_frame(plan))), "",
             "## Figures used", "", to_markdown(_display(figures_frame(plan))), ""]
    return "\n".join(parts)


def to_json(plan: Plan) -> str:
    summary = summary_frame(plan)
    document = {
        "source": plan.source, "device": plan.device, "shortfall_factor": plan.shortfall_factor,
        "totals": summary.to_dict(orient="records"),
        "flagged": [job.job for job in plan.flagged],
        "jobs": json.loads(jobs_frame(plan).to_json(orient="records")),
        "costs": json.loads(costs_frame(plan).to_json(orient="records")),
        "datasets": datasets_frame(plan).to_dict(orient="records"),
        "figures": figures_frame(plan).to_dict(orient="records"),
    }
    return json.dumps(document, indent=2, default=_json_value)


def _json_value(value: Any) -> Any:
    """numpy scalars as Python numbers; anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def render(plan: Plan, fmt: str = "text") -> str:
    """The plan as `text` (readable), `md`, `csv` (one row per job of every stage) or `json`."""
    if fmt == "text":
        return format_text(plan)
    if fmt == "md":
        return format_markdown(plan)
    if fmt == "csv":
        return costs_frame(plan).to_csv(index=False)
    if fmt == "json":
        return to_json(plan)
    raise ValueError(f"unknown format {fmt!r}; use text, md, csv or json")


def write_tables(plan: Plan, outputs: Mapping[str, str | Path]) -> None:
    """The workflow's table: `csv` every job of every stage, `md` the readable report, `tex` the
    cost per stage with totals (a LaTeX table of a thousand jobs helps nobody)."""
    from xsae.io import atomic_path
    from xsae.tables import to_latex

    writers = {
        "csv": lambda path: costs_frame(plan).to_csv(path, index=False),
        "md": lambda path: Path(path).write_text(format_markdown(plan), encoding="utf-8"),
        "tex": lambda path: Path(path).write_text(
            to_latex(_display(summary_frame(plan)), caption=totals_lines(plan)[0], label="tab:plan"),
            encoding="utf-8"),
    }
    unknown = set(outputs) - set(writers)
    if unknown:
        raise ValueError(f"unknown plan table formats {sorted(unknown)}; use {sorted(writers)}")
    for kind, path in outputs.items():
        with atomic_path(path) as tmp:
            writers[kind](tmp)
