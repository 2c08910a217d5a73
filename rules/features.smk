rule extract_features:
    """Encode one dataset split with one encoder into an HDF5 feature file."""
    input:
        manifest=MANIFEST,
        own_code=encoder_own_code,
    output:
        FEATURES,
    params:
        encoder=encoder_entry,
        device=config["device"],
        modalities=dataset_modalities,
        library_code=library_code("extract_features.py"),
    resources:
        **job_resources("extract_features"),
    threads: rule_threads("extract_features")
    priority: PRIORITIES["extract_features"]
    log:
        "results/logs/extract_features/{dataset}/{split}/{encoder}.log",
    conda:
        "../envs/extract.yaml"
    script:
        "../workflow/scripts/extract_features.py"
