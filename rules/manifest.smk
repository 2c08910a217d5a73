rule manifest:
    """Sample table per split (seeded, stratified) and the label hierarchy of a dataset."""
    wildcard_constraints:
        dataset=TUXPAINT_DATASETS,
    input:
        unpacked="resources/datasets/{dataset}/unpacked",
        record="resources/datasets/{dataset}/download.json",
    output:
        train="results/manifests/{dataset}/train.csv",
        test="results/manifests/{dataset}/test.csv",
        labels=LABELS,
    params:
        dataset=dataset_entry,
        library_code=library_code("manifest.py"),
    resources:
        **job_resources("manifest"),
    threads: rule_threads("manifest")
    priority: PRIORITIES["manifest"]
    log:
        "results/logs/manifest/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/manifest.py"


rule manifest_labelled:
    """Sample tables of a paper dataset's own splits, with its labels and label hierarchy."""
    wildcard_constraints:
        dataset=SOURCE_DATASETS,
    input:
        record=download_record,
    output:
        train="results/manifests/{dataset}/train.csv",
        test="results/manifests/{dataset}/test.csv",
        labels=LABELS,
    params:
        dataset=dataset_entry,
        library_code=library_code("manifest_labelled.py"),
    resources:
        **job_resources("manifest_labelled"),
    threads: rule_threads("manifest_labelled")
    priority: PRIORITIES["manifest_labelled"]
    log:
        "results/logs/manifest_labelled/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/manifest_labelled.py"


rule manifest_prompts:
    """Class prompts (template × class) of a labelled dataset, as a text-only sample table."""
    wildcard_constraints:
        dataset=PROMPT_DATASETS,
    input:
        unpack(prompt_class_inputs),
    output:
        train="results/manifests/{dataset}/train.csv",
        test="results/manifests/{dataset}/test.csv",
        labels=LABELS,
    params:
        dataset=dataset_entry,
        classes_of=lambda wildcards: config["datasets"][
            config["datasets"][wildcards.dataset]["classes_of"]
        ],
        library_code=library_code("manifest_prompts.py"),
    resources:
        **job_resources("manifest_prompts"),
    threads: rule_threads("manifest_prompts")
    priority: PRIORITIES["manifest_prompts"]
    log:
        "results/logs/manifest_prompts/{dataset}.log",
    conda:
        # the class names and prompt templates of CLIP's zero-shot evaluation come from open_clip
        "../envs/extract.yaml"
    script:
        "../workflow/scripts/manifest_prompts.py"
