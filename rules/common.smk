# The only place that reads `config`: validation, target lists, and input/param functions.
import functools
import os
import sys

LIBRARY = os.path.join(workflow.basedir, "src")
sys.path.insert(0, LIBRARY)
# Jobs (local, in conda envs, or on SLURM nodes) import the library from this checkout; this sets
# the variable for them rather than requiring it from the user, so it is no `envvars:` entry.
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (LIBRARY, os.environ.get("PYTHONPATH")) if p)
)

from xsae.config import monosemanticity_dataset, run_seed, sweep_runs, validate  # noqa: E402
from xsae.comparison_runs import comparison_runs  # noqa: E402
from xsae.synthetic_experiments import experiments as synthetic_experiments  # noqa: E402
from xsae.tables import SPARC_TABLES  # noqa: E402
from xsae import registry  # noqa: E402
from xsae.resources import ResourceTable  # noqa: E402
from xsae.plan import dataset_splits as plan_dataset_splits, feature_splits as plan_feature_splits  # noqa: E402
from xsae.code_fingerprint import fingerprint as code_fingerprint  # noqa: E402
from xsae.encoder_catalog import module_file  # noqa: E402
from xsae.datasets.folder import table_path as folder_table_path  # noqa: E402

config.update(validate(config, source=" + ".join(map(str, workflow.configfiles)) or "config"))

MANIFEST = "results/manifests/{dataset}/{split}.csv"
LABELS = "results/manifests/{dataset}/labels.json"
FEATURES = "results/features/{dataset}/{split}/{encoder}.h5"
SPLITS = ("train", "test")


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    split="train|test",
    encoder="[A-Za-z0-9_]+",
    run="[A-Za-z0-9_]+",
    sweep="[A-Za-z0-9_]+",
    set="[A-Za-z0-9_]+",
    table="|".join(SPARC_TABLES),
    distance=r"[0-9.]+",
    seed=r"[0-9]+",
    method=r"[a-z_]+?(_x[0-9.e+-]+)?",
    figure="distance|lambda",
    variant="trained|aligned",
    comparison="[A-Za-z0-9_]+",


def _names_pattern(names):
    """A wildcard constraint matching exactly these dataset names (nothing when empty)."""
    return "|".join(sorted(names)) or "(?!x)x"


TUXPAINT_DATASETS = _names_pattern(
    name for name, entry in config["datasets"].items() if entry["kind"] == "tuxpaint_stamps"
)
SOURCE_DATASETS = _names_pattern(
    name
    for name, entry in config["datasets"].items()
    if entry["kind"] not in ("tuxpaint_stamps", "class_prompts")
)
PROMPT_DATASETS = _names_pattern(
    name for name, entry in config["datasets"].items() if entry["kind"] == "class_prompts"
)


def library_code(script):
    """Param: the fingerprint of the library code a rule's script or notebook can run, so that a
    change to that code (not to comments or docstrings) reruns the rule, and only such rules."""
    folder = "notebooks" if script.endswith(".ipynb") else "scripts"
    path = os.path.join(workflow.basedir, "workflow", folder, script)

    @functools.cache
    def value():
        return code_fingerprint(path, cache=os.path.join(".snakemake", "xsae-library-code.json"))

    return lambda wildcards: value()


def dataset_splits(dataset):
    """The splits a dataset has features of (test only for kinds without a train split)."""
    return plan_dataset_splits(config, dataset)


def dataset_entry(wildcards):
    return config["datasets"][wildcards.dataset]


def prompt_class_inputs(wildcards):
    """What a class-prompt manifest reads: the labels and the download of the dataset it describes."""
    other = config["datasets"][wildcards.dataset]["classes_of"]
    return {
        "record": download_record_of(other),
        "labels": LABELS.format(dataset=other),
    }


def dataset_modalities(wildcards):
    """Modalities to extract: text only for prompt datasets, else all the encoder has."""
    return ["text"] if config["datasets"][wildcards.dataset]["kind"] == "class_prompts" else None


def dataset_own_files(wildcards):
    """Files of the user's own that a download reads (an image_folder's table): editing one reruns it."""
    entry = config["datasets"][wildcards.dataset]
    if entry["kind"] != "image_folder" or not entry.get("provided"):
        return []
    return [str(folder_table_path(entry["provided"], entry["options"]))]


def download_record_of(dataset):
    """The download a dataset's manifest reads: its own, or that of the entry named by files_of."""
    return f"resources/datasets/{config['datasets'][dataset]['files_of'] or dataset}/download.json"


def download_record(wildcards):
    return download_record_of(wildcards.dataset)


def encoder_entry(wildcards):
    return config["encoders"][wildcards.encoder]


def encoder_own_code(wildcards):
    """The module file of a `loader: python` encoder (found, not imported): editing it reruns the
    encoder's extractions. Nothing for the library's loaders (their code is `library_code`)."""
    entry = config["encoders"][wildcards.encoder]
    if entry["loader"] != "python":
        return []
    return [path for path in [module_file(entry["entry"])] if path]


@functools.cache
def resource_table():
    """Every job's cluster request, priced from this config's plan (once, when first asked)."""
    return ResourceTable.from_config(config)


#: Scheduling priorities (higher first; absent: 0). The heads of the DAG's long chains — data,
#: features, online SAE training, SAE training — start before the independent synthetic runs,
#: which then fill the idle cores; left to itself, a 2-core run spends its first minutes on the
#: synthetic runs and then trains every SAE in series at the end.
PRIORITIES = {
    "download_tuxpaint": 5,
    "download_dataset": 5,
    "manifest": 4,
    "manifest_labelled": 4,
    "manifest_prompts": 4,
    "extract_features": 3,
    "sharedness_online": 2,
    "train_sae": 1,
}


def rule_threads(rule):
    """`threads:` of a rule: its numeric thread count from the config (`xsae.workflow.numeric_threads`
    reads the same key), so Snakemake schedules the cores the job will use."""
    return config["threads"].get(rule, 1)


def job_resources(rule):
    """`resources: **job_resources("<rule>")`: each job's wall time, memory and GPUs from the plan
    (`xsae.resources`), so a cluster run needs no sizes in its profile; a retry asks for more."""

    def request(wildcards, attempt):
        return resource_table().job(rule, dict(wildcards.items())).at_attempt(attempt)

    return {
        "runtime": lambda wildcards, attempt: request(wildcards, attempt).runtime,
        "mem_mb": lambda wildcards, attempt: request(wildcards, attempt).mem_mb,
        "gpu": lambda wildcards, attempt: request(wildcards, attempt).gpu,
    }


def feature_files():
    return [
        FEATURES.format(dataset=dataset, split=split, encoder=encoder)
        for dataset, encoders in config["features"].items()
        for encoder in encoders
        for split in plan_feature_splits(config, dataset, encoder)
    ]


def run_entry(wildcards):
    return config["sae_runs"][wildcards.run]


def run_seed_of(wildcards):
    return run_seed(config, config["sae_runs"][wildcards.run])


def run_streams(wildcards):
    """Stream specs of a run, in order: name, modality, layer (params of train/evaluate rules)."""
    return [
        dict(config["streams"][name], name=name)
        for name in config["sae_runs"][wildcards.run]["streams"]
    ]


def run_feature_files(wildcards):
    """Feature files of a run's streams, on the `split` wildcard (training: the train split)."""
    run = config["sae_runs"][wildcards.run]
    split = wildcards.get("split", "train")
    return [
        FEATURES.format(
            dataset=run["dataset"], split=split, encoder=config["streams"][name]["encoder"]
        )
        for name in run["streams"]
    ]


def run_manifest(wildcards):
    return MANIFEST.format(dataset=config["sae_runs"][wildcards.run]["dataset"], split=wildcards.split)


def run_test_manifest(wildcards):
    return MANIFEST.format(dataset=config["sae_runs"][wildcards.run]["dataset"], split="test")


def run_labels(wildcards):
    return LABELS.format(dataset=config["sae_runs"][wildcards.run]["dataset"])


SWEEPS = sweep_runs(config)
SWEEP_RUNS = {member["run"] for members in SWEEPS.values() for member in members}


def sweep_members(wildcards):
    return SWEEPS[wildcards.sweep]


def sweep_parameter(wildcards):
    return config["sweeps"][wildcards.sweep]["parameter"]


def sweep_inputs(wildcards):
    return [f"results/metrics/{m['run']}/reconstruction_test.csv" for m in SWEEPS[wildcards.sweep]]


def sparc_set(wildcards):
    return config["tables"]["sparc"][wildcards.set]


def sparc_table_inputs(wildcards):
    runs = config["tables"]["sparc"][wildcards.set]["configurations"]
    return [f"results/metrics/{run}/sparc_test.csv" for run in runs.values()]


def sparc_reference_input(wildcards):
    """Published numbers: a path relative to the working directory, else to this workflow."""
    reference = config["tables"]["sparc"][wildcards.set]["reference"]
    if not reference:
        return []
    if os.path.isabs(reference) or os.path.exists(reference):
        return [reference]
    return [os.path.join(workflow.basedir, reference)]


def sparc_table_streams(wildcards):
    first = next(iter(config["tables"]["sparc"][wildcards.set]["configurations"].values()))
    return config["sae_runs"][first]["streams"]


def reconstruction_table_inputs(wildcards):
    spec = config["tables"]["reconstruction"]
    return [
        f"results/metrics/{run}/reconstruction_{spec['split']}.csv" for run in spec["runs"]
    ]


COMPARISONS = comparison_runs(config)
#: run name → comparison, for the runs comparisons generate
COMPARISON_OF_RUN = {m["run"]: name for name, members in COMPARISONS.items() for m in members}
COMPARISON_RUNS = _names_pattern(COMPARISON_OF_RUN)


def comparison_spec(wildcards):
    return config["comparisons"][COMPARISON_OF_RUN[wildcards.run]]


def _stream_encoder(name):
    return config["streams"][name]["encoder"]


def comparison_eval_inputs(wildcards):
    """Weights (as trained or post-hoc aligned) and every feature file a comparison scores on."""
    spec = comparison_spec(wildcards)
    image, text = (_stream_encoder(name) for name in spec["streams"])
    weights = "aligned" if wildcards.variant == "aligned" else "weights"
    inputs = {
        "weights": f"results/sae/{wildcards.run}/{weights}.safetensors",
        "retrieval_image": FEATURES.format(dataset=spec["retrieval"], split="test", encoder=image),
        "retrieval_text": FEATURES.format(dataset=spec["retrieval"], split="test", encoder=text),
        "retrieval_manifest": MANIFEST.format(dataset=spec["retrieval"], split="test"),
        "retrieval_labels": LABELS.format(dataset=spec["retrieval"]),
    }
    if spec["zero_shot"]:
        zero_shot = spec["zero_shot"]
        inputs.update(
            zero_shot_image=FEATURES.format(dataset=zero_shot["dataset"], split="test", encoder=image),
            zero_shot_manifest=MANIFEST.format(dataset=zero_shot["dataset"], split="test"),
            prompts=FEATURES.format(dataset=zero_shot["prompts"], split="test", encoder=text),
            prompts_manifest=MANIFEST.format(dataset=zero_shot["prompts"], split="test"),
        )
        if zero_shot["drop_frequent"]:
            inputs["train_image"] = FEATURES.format(dataset=spec["dataset"], split="train", encoder=image)
    if spec["monosemanticity"]:
        mono = spec["monosemanticity"]
        dataset = monosemanticity_dataset(spec)
        inputs.update(
            external_image=FEATURES.format(dataset=dataset, split="test", encoder=mono["image_encoder"]),
            external_text=FEATURES.format(dataset=dataset, split="test", encoder=mono["text_encoder"]),
        )
        if dataset != spec["retrieval"]:
            inputs.update(
                monosemanticity_image=FEATURES.format(dataset=dataset, split="test", encoder=image),
                monosemanticity_text=FEATURES.format(dataset=dataset, split="test", encoder=text),
                monosemanticity_manifest=MANIFEST.format(dataset=dataset, split="test"),
            )
    return inputs


def comparison_members(wildcards):
    return COMPARISONS[wildcards.comparison]


def comparison_metric_inputs(wildcards):
    return [
        f"results/comparisons/{m['run']}/{m['variant']}/metrics.csv"
        for m in COMPARISONS[wildcards.comparison]
    ]


def comparison_reference_input(wildcards):
    reference = config["comparisons"][wildcards.comparison]["reference"]
    if not reference:
        return []
    if os.path.isabs(reference) or os.path.exists(reference):
        return [reference]
    return [os.path.join(workflow.basedir, reference)]


def comparison_file_inputs(kind):
    def inputs(wildcards):
        return [
            f"results/comparisons/{m['run']}/{m['variant']}/{kind}.csv"
            for m in COMPARISONS[wildcards.comparison]
        ]

    return inputs


def synthetic_figure_inputs(wildcards):
    """Metrics of every synthetic run of one figure (Figure 6 also shows the base methods)."""
    return [f"{e.path}/metrics.csv" for e in SYNTHETIC_RUNS if e.figure == wildcards.figure
            or (wildcards.figure == "lambda" and e.distance == config["synthetic"]["lambda_distance"])]


REGISTRY_FILE = str(registry.REGISTRY_PATH)
#: each file that renders a paper item → that item (config/registry.yaml)
PAPER_ITEM_OF = registry.item_of_path(config)


def registry_outputs():
    """Every file this config promises for a paper item (the scorecard's inputs)."""
    return [path for paths in registry.outputs(config).values() for path in paths]


def report_category(default):
    """Report category of a rule's outputs: the paper whose item they render, else `default`."""
    def category(wildcards, output):
        section = registry.report_section(PAPER_ITEM_OF, list(output))
        return section[0] if section else default

    return category


def report_subcategory(default):
    """Report subcategory of a rule's outputs: the paper item's label (Table 3), else `default`."""
    def subcategory(wildcards, output):
        section = registry.report_section(PAPER_ITEM_OF, list(output))
        return section[1] if section else default

    return subcategory


def final_outputs():
    # Every dataset's manifests, so that a listed dataset is always downloaded and checked.
    outputs = [MANIFEST.format(dataset=dataset, split=split)
               for dataset in config["datasets"] for split in SPLITS]
    outputs += feature_files()
    for run in config["sae_runs"]:
        outputs.append(f"results/metrics/{run}/reconstruction_test.csv")
        if run not in SWEEP_RUNS:
            outputs.append(f"results/figures/sae_training_{run}.png")
    if "reconstruction" in config["tables"]:
        outputs += [f"results/tables/reconstruction.{ext}" for ext in ("csv", "md", "tex")]
    for run, entry in config["sae_runs"].items():
        if entry["method"] == "sparc" and run not in SWEEP_RUNS:
            outputs.append(f"results/metrics/{run}/sparc_test.csv")
    for sweep in SWEEPS:
        outputs.append(f"results/figures/sweep_{sweep}.png")
    for name, spec in config["tables"]["sparc"].items():
        outputs += [f"results/tables/sparc_{name}_{t}.{ext}"
                    for t in spec["tables"] for ext in ("csv", "md", "tex")]
        if spec["top_activations"]:
            outputs += [f"results/figures/top_activations_{run}.png"
                        for run in spec["configurations"].values()]
    for name, spec in config["comparisons"].items():
        outputs += [f"results/tables/comparison_{name}.{ext}" for ext in ("csv", "md", "tex")]
        if spec["steering"]:
            outputs.append(f"results/figures/steering_{name}.png")
        if spec["monosemanticity"]:
            outputs.append(f"results/figures/monosemanticity_{name}.png")
    outputs += [f"results/figures/decoder_directions_{name}.png" for name in config["decoder_directions"]]
    if config["synthetic"].get("seeds"):
        outputs += [f"results/figures/synthetic_{figure}.png" for figure in ("distance", "lambda")]
    for dataset in config["figures"]["dataset_overview"]:
        outputs.append(f"results/figures/dataset_overview_{dataset}.png")
    if config["sharedness"]["models"]:
        outputs += sharedness_outputs()
    outputs += [f"results/tables/plan.{ext}" for ext in ("csv", "md", "tex")]
    outputs += ["results/scorecard.md", "results/scorecard.csv"]
    return outputs
