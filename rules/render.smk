rule table_reconstruction:
    """Reconstruction quality of the SAE runs listed under tables.reconstruction."""
    input:
        reconstruction_table_inputs,
    output:
        csv=report(
            "results/tables/reconstruction.csv",
            caption="../workflow/report/table_reconstruction.rst",
            category="Tables",
            subcategory="SAE reconstruction",
        ),
        md="results/tables/reconstruction.md",
        tex="results/tables/reconstruction.tex",
    params:
        table=config["tables"].get("reconstruction"),
        library_code=library_code("table_reconstruction.py"),
    resources:
        **job_resources("table_reconstruction"),
    threads: rule_threads("table_reconstruction")
    log:
        "results/logs/table_reconstruction.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/table_reconstruction.py"


rule figure_training:
    """Loss curves and dead latents over training of one SAE run."""
    input:
        "results/sae/{run}/training_log.csv",
    output:
        png=report(
            "results/figures/sae_training_{run}.png",
            caption="../workflow/report/figure_training.rst",
            category="Figures",
            subcategory="SAE training",
        ),
        pdf="results/figures/sae_training_{run}.pdf",
    params:
        library_code=library_code("figure_training.py"),
    resources:
        **job_resources("figure_training"),
    threads: rule_threads("figure_training")
    log:
        "results/logs/figure_training/{run}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_training.py"


rule figure_dataset_overview:
    """Sample images with captions and label counts; the executed notebook is kept as its record."""
    input:
        train="results/manifests/{dataset}/train.csv",
        test="results/manifests/{dataset}/test.csv",
        labels=LABELS,
    output:
        png=report(
            "results/figures/dataset_overview_{dataset}.png",
            caption="../workflow/report/figure_dataset_overview.rst",
            category="Figures",
            subcategory="Datasets",
        ),
        pdf="results/figures/dataset_overview_{dataset}.pdf",
        counts="results/tables/label_counts_{dataset}.csv",
    params:
        n_examples=config["figures"]["n_examples"],
        seed=config["seed"],
        library_code=library_code("dataset_overview.py.ipynb"),
    resources:
        **job_resources("figure_dataset_overview"),
    threads: rule_threads("figure_dataset_overview")
    log:
        notebook="results/notebooks/dataset_overview_{dataset}.ipynb",
    conda:
        "../envs/render.yaml"
    notebook:
        "../workflow/notebooks/dataset_overview.py.ipynb"


rule table_sparc:
    """One of SPARC's Tables 1–4 and 14 for one set under tables.sparc (e.g. one dataset)."""
    input:
        metrics=sparc_table_inputs,
        reference=sparc_reference_input,
    output:
        csv=report(
            "results/tables/sparc_{set}_{table}.csv",
            caption="../workflow/report/table_sparc.rst",
            category=report_category("Tables"),
            subcategory=report_subcategory("SPARC"),
        ),
        md="results/tables/sparc_{set}_{table}.md",
        tex="results/tables/sparc_{set}_{table}.tex",
    params:
        spec=sparc_set,
        streams=sparc_table_streams,
        library_code=library_code("table_sparc.py"),
    resources:
        **job_resources("table_sparc"),
    threads: rule_threads("table_sparc")
    log:
        "results/logs/table_sparc/{set}_{table}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/table_sparc.py"


rule figure_sweep:
    """Self/cross NMSE against one swept parameter, Global vs Local (SPARC Figures 6–10)."""
    input:
        sweep_inputs,
    output:
        png=report(
            "results/figures/sweep_{sweep}.png",
            caption="../workflow/report/figure_sweep.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("SPARC sweeps"),
        ),
        pdf="results/figures/sweep_{sweep}.pdf",
        csv="results/tables/sweep_{sweep}.csv",
    params:
        members=sweep_members,
        parameter=sweep_parameter,
        library_code=library_code("figure_sweep.py"),
    resources:
        **job_resources("figure_sweep"),
    threads: rule_threads("figure_sweep")
    log:
        "results/logs/figure_sweep/{sweep}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_sweep.py"


rule figure_top_activations:
    """Top-activating samples of chosen latents in every stream (SPARC Figures 3, 11–13)."""
    input:
        top="results/metrics/{run}/top_activations_test.csv",
        manifest=run_test_manifest,
    output:
        png=report(
            "results/figures/top_activations_{run}.png",
            caption="../workflow/report/figure_top_activations.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("SPARC latents"),
        ),
        pdf="results/figures/top_activations_{run}.pdf",
    params:
        n_latents=4,
        per_stream=5,
        library_code=library_code("figure_top_activations.py"),
    resources:
        **job_resources("figure_top_activations"),
    threads: rule_threads("figure_top_activations")
    log:
        "results/logs/figure_top_activations/{run}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_top_activations.py"
