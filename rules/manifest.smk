rule manifest:
    """Sample table per split (seeded, stratified) and the label hierarchy of a dataset."""
    input:
        unpacked="resources/datasets/{dataset}/unpacked",
        record="resources/datasets/{dataset}/download.json",
    output:
        train="results/manifests/{dataset}/train.csv",
        test="results/manifests/{dataset}/test.csv",
        labels=LABELS,
    params:
        dataset=dataset_entry,
    log:
        "results/logs/manifest/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/manifest.py"
