# Config access and input/param functions of the sharedness rules (rules/sharedness.smk).
from xsae.sharedness_config import (  # noqa: E402
    POOLED_CODES,
    last_layer,
    layer_saes,
    layers_needed,
    model_label,
    online_jobs,
    pair_of,
    sae_entry,
    sae_seed,
    same_encoder,
    sharedness_targets,
)

SHAREDNESS = config["sharedness"]
SHAREDNESS_MODELS = SHAREDNESS["models"]
SHAREDNESS_LAYERS = layers_needed(config)
SHAREDNESS_SAE = "results/sharedness/{dataset}/sae/{model}/layer{layer}"
SHAREDNESS_PAIR = "results/sharedness/{dataset}/pairs/{model_a}/{model_b}.csv"
SHAREDNESS_ONLINE = "results/sharedness/{dataset}/online/{encoder}"
SHAREDNESS_ONLINE_JOBS = online_jobs(config)
#: the split whose global tokens the SAEs encode and the metrics compare (in the file names)
COMPARE_SPLIT = SHAREDNESS["compare_split"]
SHAREDNESS_CODES = f"{SHAREDNESS_SAE}/codes_{COMPARE_SPLIT}.npz"
SHAREDNESS_RECONSTRUCTION = f"{SHAREDNESS_SAE}/reconstruction_{COMPARE_SPLIT}.csv"
SHAREDNESS_MODEL_NAMES = _names_pattern(SHAREDNESS_MODELS)


def sharedness_outputs():
    return sharedness_targets(config)


def _codes_path(dataset, model, layer):
    return SHAREDNESS_CODES.format(dataset=dataset, model=model, layer=f"{layer:02d}")


def _last_codes(dataset, model):
    return _codes_path(dataset, model, last_layer(config, model))


def _workflow_file(path):
    """A path relative to the working directory, else to this workflow."""
    if not path:
        return []
    if os.path.isabs(path) or os.path.exists(path):
        return [path]
    return [os.path.join(workflow.basedir, path)]


def sharedness_sae_features(wildcards):
    """The stored features it trains on and encodes, or (training_data online) the output of its
    encoder's online job and the compared split's features it encodes (none for a model compared on
    pooled codes: the online job wrote them)."""
    model = SHAREDNESS_MODELS[wildcards.model]
    encoder = model["encoder"]
    files = {"train": FEATURES.format(dataset=wildcards.dataset, split="train", encoder=encoder),
             "compared": FEATURES.format(dataset=wildcards.dataset, split=COMPARE_SPLIT, encoder=encoder)}
    if SHAREDNESS["training_data"] == "online":
        files["train"] = SHAREDNESS_ONLINE.format(dataset=wildcards.dataset, encoder=encoder)
    if model["compared"] == POOLED_CODES:
        del files["compared"]
    return files


def sharedness_online_manifests(wildcards):
    """The training split it streams, and the compared split when some SAE of the job is compared
    on pooled codes."""
    files = {"manifest": MANIFEST.format(dataset=wildcards.dataset, split="train")}
    if any(sae["compared"] == POOLED_CODES for sae in sharedness_online_saes(wildcards)):
        files["compared"] = MANIFEST.format(dataset=wildcards.dataset, split=COMPARE_SPLIT)
    return files


def sharedness_online_saes(wildcards):
    return SHAREDNESS_ONLINE_JOBS[wildcards.dataset, wildcards.encoder]


def sharedness_sae_params(wildcards):
    """What the SAE job needs besides its files: recipe, seed, modality and layer."""
    model = SHAREDNESS_MODELS[wildcards.model]
    return {"entry": sae_entry(config, wildcards.model), "seed": sae_seed(config, wildcards.model),
            "modality": model["modality"], "layer": int(wildcards.layer)}


def sharedness_sae_reports(wildcards):
    return [SHAREDNESS_RECONSTRUCTION.format(
        dataset=sae.dataset, model=sae.model, layer=sae.layer_tag) for sae in layer_saes(config)]


def sharedness_pair_codes(wildcards):
    return {side: [_codes_path(wildcards.dataset, model, layer)
                   for layer in SHAREDNESS_LAYERS[wildcards.dataset, model]]
            for side, model in (("a", wildcards.model_a), ("b", wildcards.model_b))}


def sharedness_pair_layers(wildcards):
    return {side: SHAREDNESS_LAYERS[wildcards.dataset, model]
            for side, model in (("a", wildcards.model_a), ("b", wildcards.model_b))}


def _pair_file(dataset, a, b):
    model_a, model_b = pair_of(config, a, b)
    return SHAREDNESS_PAIR.format(dataset=dataset, model_a=model_a, model_b=model_b)


def _model_facts(models):
    """Labels, modalities and encoders of some models, for the renderers."""
    return {"labels": {m: model_label(config, m) for m in models},
            "modalities": {m: SHAREDNESS_MODELS[m]["modality"] for m in models},
            "encoders": {m: [SHAREDNESS_MODELS[m]["encoder"], SHAREDNESS_MODELS[m]["modality"]]
                         for m in models}}


def sharedness_table_pairs(wildcards):
    spec = SHAREDNESS["tables"][wildcards.table]
    targets = spec["targets"] or spec["sources"]
    files = {_pair_file(spec["dataset"], s, t) for s in spec["sources"] for t in targets if s != t}
    return sorted(files)


def sharedness_table_facts(wildcards):
    spec = SHAREDNESS["tables"][wildcards.table]
    return _model_facts([*spec["sources"], *spec["targets"]])


def sharedness_average_pairs(wildcards):
    """Per row of the table, the pair files of its dataset (rows may share files)."""
    rows = SHAREDNESS["averages"][wildcards.table]["rows"]
    files = set()
    for row in rows:
        models = row["models"]
        files |= {_pair_file(row["dataset"], a, b) for i, a in enumerate(models) for b in models[i + 1:]
                  if not same_encoder(config, a, b)}
    return sorted(files)


def sharedness_average_facts(wildcards):
    rows = SHAREDNESS["averages"][wildcards.table]["rows"]
    return _model_facts(list(dict.fromkeys(m for row in rows for m in row["models"])))


def sharedness_layerwise_pairs(wildcards):
    spec = SHAREDNESS["layerwise"][wildcards.name]
    return sorted({_pair_file(spec["dataset"], a, b) for a, b in spec["panels"]})


def sharedness_layerwise_facts(wildcards):
    spec = SHAREDNESS["layerwise"][wildcards.name]
    return _model_facts(list(dict.fromkeys(m for panel in spec["panels"] for m in panel)))


def sharedness_comparative_inputs(wildcards):
    spec = SHAREDNESS["comparative"][wildcards.name]
    models = [*spec["shared_with"], *spec["not_shared_with"]]
    return {"model": _last_codes(spec["dataset"], spec["model"]),
            "others": [_last_codes(spec["dataset"], m) for m in models],
            "also_in": [f"results/tables/sharedness_comparative_{other}.csv" for other in spec["also_in"]]}


def sharedness_comparative_manifest(wildcards):
    return MANIFEST.format(dataset=SHAREDNESS["comparative"][wildcards.name]["dataset"], split=COMPARE_SPLIT)


def sharedness_comparative_facts(wildcards):
    spec = SHAREDNESS["comparative"][wildcards.name]
    return _model_facts([spec["model"], *spec["shared_with"], *spec["not_shared_with"]])


def sharedness_shuffle_codes(wildcards):
    spec = SHAREDNESS["shuffle"][wildcards.name]
    return {"source": _last_codes(spec["dataset"], spec["source"]),
            "target": _last_codes(spec["dataset"], spec["target"])}


def sharedness_reference(wildcards):
    return _workflow_file(SHAREDNESS["reference"])


def sharedness_table_spec(wildcards):
    return SHAREDNESS["tables"][wildcards.table]


def sharedness_average_spec(wildcards):
    return SHAREDNESS["averages"][wildcards.table]


def sharedness_layerwise_spec(wildcards):
    return SHAREDNESS["layerwise"][wildcards.name]


def sharedness_comparative_spec(wildcards):
    return SHAREDNESS["comparative"][wildcards.name]


def sharedness_shuffle_spec(wildcards):
    return SHAREDNESS["shuffle"][wildcards.name]


def sharedness_shuffle_facts(wildcards):
    spec = SHAREDNESS["shuffle"][wildcards.name]
    return _model_facts([spec["source"], spec["target"]])
