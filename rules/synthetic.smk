# The heterogeneity paper's synthetic experiments (Figures 5 and 6): generated data with known
# concept directions → one SAE per method, distance and seed → the five Appendix D.3 metrics.
SYNTHETIC = config["synthetic"]
SYNTHETIC_RUNS = synthetic_experiments(SYNTHETIC) if SYNTHETIC.get("seeds") else []
SYNTHETIC_DATA = "results/synthetic/data/d{distance}_s{seed}"


rule synthetic_data:
    """Paired image/text embeddings from ground-truth concept directions (Appendix D.2)."""
    output:
        train=f"{SYNTHETIC_DATA}/train.h5",
        eval=f"{SYNTHETIC_DATA}/eval.h5",
        truth=f"{SYNTHETIC_DATA}/truth.npz",
    params:
        spec=SYNTHETIC,
        library_code=library_code("synthetic_data.py"),
    resources:
        **job_resources("synthetic_data"),
    threads: rule_threads("synthetic_data")
    log:
        "results/logs/synthetic_data/d{distance}_s{seed}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/synthetic_data.py"


rule synthetic_run:
    """Train one method's SAE on one synthetic dataset and score it against the ground truth."""
    input:
        train=f"{SYNTHETIC_DATA}/train.h5",
        eval=f"{SYNTHETIC_DATA}/eval.h5",
        truth=f"{SYNTHETIC_DATA}/truth.npz",
    output:
        weights="results/synthetic/runs/{method}/d{distance}_s{seed}/weights.safetensors",
        history="results/synthetic/runs/{method}/d{distance}_s{seed}/training_log.csv",
        metrics="results/synthetic/runs/{method}/d{distance}_s{seed}/metrics.csv",
    params:
        spec=SYNTHETIC,
        device=config["device"],
        library_code=library_code("synthetic_run.py"),
    resources:
        **job_resources("synthetic_run"),
    threads: rule_threads("synthetic_run")
    log:
        "results/logs/synthetic_run/{method}/d{distance}_s{seed}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/synthetic_run.py"


rule figure_synthetic:
    """Figure 5 (distance: shared vs modality-specific) or 6 (lambda: alignment-loss weights)."""
    input:
        synthetic_figure_inputs,
    output:
        png=report(
            "results/figures/synthetic_{figure}.png",
            caption="../workflow/report/figure_synthetic.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Heterogeneity: synthetic"),
        ),
        pdf="results/figures/synthetic_{figure}.pdf",
        csv="results/tables/synthetic_{figure}.csv",
    params:
        spec=SYNTHETIC,
        library_code=library_code("figure_synthetic.py"),
    resources:
        **job_resources("figure_synthetic"),
    threads: rule_threads("figure_synthetic")
    log:
        "results/logs/figure_synthetic/{figure}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_synthetic.py"
