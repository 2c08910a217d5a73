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
    log:
        notebook="results/notebooks/dataset_overview_{dataset}.ipynb",
    conda:
        "../envs/render.yaml"
    notebook:
        "../workflow/notebooks/dataset_overview.py.ipynb"
