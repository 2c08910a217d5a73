# The only place that reads `config`: validation, target lists, and input/param functions.
import os
import sys

LIBRARY = os.path.join(workflow.basedir, "src")
sys.path.insert(0, LIBRARY)
# Jobs (local, in conda envs, or on SLURM nodes) import the library from this checkout; this sets
# the variable for them rather than requiring it from the user, so it is no `envvars:` entry.
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (LIBRARY, os.environ.get("PYTHONPATH")) if p)
)

from xsae.config import run_seed, validate  # noqa: E402

config.update(validate(config, source="config"))

MANIFEST = "results/manifests/{dataset}/{split}.csv"
LABELS = "results/manifests/{dataset}/labels.json"
FEATURES = "results/features/{dataset}/{split}/{encoder}.h5"
SPLITS = ("train", "test")


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    split="train|test",
    encoder="[A-Za-z0-9_]+",
    run="[A-Za-z0-9_]+",


def dataset_entry(wildcards):
    return config["datasets"][wildcards.dataset]


def encoder_entry(wildcards):
    return config["encoders"][wildcards.encoder]


def encoder_gpus(wildcards):
    return 1 if config["encoders"][wildcards.encoder]["gpu"] else 0


def feature_files():
    return [
        FEATURES.format(dataset=dataset, split=split, encoder=encoder)
        for dataset, encoders in config["features"].items()
        for encoder in encoders
        for split in SPLITS
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


def reconstruction_table_inputs(wildcards):
    spec = config["tables"]["reconstruction"]
    return [
        f"results/metrics/{run}/reconstruction_{spec['split']}.csv" for run in spec["runs"]
    ]


def final_outputs():
    outputs = feature_files()
    for run in config["sae_runs"]:
        outputs.append(f"results/figures/sae_training_{run}.png")
        outputs.append(f"results/metrics/{run}/reconstruction_test.csv")
    if "reconstruction" in config["tables"]:
        outputs += [f"results/tables/reconstruction.{ext}" for ext in ("csv", "md", "tex")]
    for dataset in config["figures"]["dataset_overview"]:
        outputs.append(f"results/figures/dataset_overview_{dataset}.png")
    return outputs
