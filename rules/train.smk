rule train_sae:
    """Train one SAE run of `sae_runs` on its streams' training features."""
    input:
        run_feature_files,
    output:
        weights="results/sae/{run}/weights.safetensors",
        history="results/sae/{run}/training_log.csv",
    params:
        run=run_entry,
        streams=run_streams,
        seed=run_seed_of,
        device=config["device"],
        library_code=library_code("train_sae.py"),
    resources:
        **job_resources("train_sae"),
    threads: rule_threads("train_sae")
    priority: PRIORITIES["train_sae"]
    log:
        "results/logs/train_sae/{run}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/train_sae.py"
