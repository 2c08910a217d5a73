rule evaluate_reconstruction:
    """NMSE, R² and dead latents of one SAE run on one split (tidy rows)."""
    input:
        weights="results/sae/{run}/weights.safetensors",
        features=run_feature_files,
    output:
        "results/metrics/{run}/reconstruction_{split}.csv",
    params:
        run=run_entry,
        streams=run_streams,
        device=config["device"],
        library_code=library_code("evaluate_reconstruction.py"),
    resources:
        **job_resources("evaluate_reconstruction"),
    threads: rule_threads("evaluate_reconstruction")
    log:
        "results/logs/evaluate_reconstruction/{run}_{split}.log",
    conda:
        "../envs/evaluate.yaml"
    script:
        "../workflow/scripts/evaluate_reconstruction.py"


rule evaluate_sparc:
    """Every SPARC metric of a multi-stream run on one split, and each latent's top samples."""
    input:
        weights="results/sae/{run}/weights.safetensors",
        features=run_feature_files,
        manifest=run_manifest,
        labels=run_labels,
    output:
        metrics="results/metrics/{run}/sparc_{split}.csv",
        top="results/metrics/{run}/top_activations_{split}.csv",
    params:
        run=run_entry,
        streams=run_streams,
        evaluation=config["evaluation"],
        device=config["device"],
        library_code=library_code("evaluate_sparc.py"),
    resources:
        **job_resources("evaluate_sparc"),
    threads: rule_threads("evaluate_sparc")
    log:
        "results/logs/evaluate_sparc/{run}_{split}.log",
    conda:
        "../envs/evaluate.yaml"
    script:
        "../workflow/scripts/evaluate_sparc.py"
