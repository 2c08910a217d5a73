# Method comparisons of the heterogeneity paper on real embeddings: post-hoc alignment of the
# modality-specific runs, scoring every run, and Table 1 / Figures 7 and 8 per comparison.


rule align_sae:
    """Post-hoc alignment: re-index a modality-specific run's text latents by the Hungarian
    matching of coactivation correlations on its training pairs (directions unchanged)."""
    wildcard_constraints:
        run=COMPARISON_RUNS,
    input:
        weights="results/sae/{run}/weights.safetensors",
        features=run_feature_files,
    output:
        weights="results/sae/{run}/aligned.safetensors",
        report="results/sae/{run}/alignment.json",
    params:
        run=run_entry,
        streams=run_streams,
        device=config["device"],
        library_code=library_code("align_sae.py"),
    resources:
        **job_resources("align_sae"),
    threads: rule_threads("align_sae")
    log:
        "results/logs/align_sae/{run}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/align_sae.py"


rule evaluate_comparison:
    """Reconstruction, retrieval, zero-shot, steering and monosemanticity of one run (as trained
    or post-hoc aligned) on the comparison's evaluation datasets."""
    wildcard_constraints:
        run=COMPARISON_RUNS,
    input:
        unpack(comparison_eval_inputs),
    output:
        metrics="results/comparisons/{run}/{variant}/metrics.csv",
        steering="results/comparisons/{run}/{variant}/steering.csv",
        monosemanticity="results/comparisons/{run}/{variant}/monosemanticity.csv",
    params:
        spec=comparison_spec,
        run=run_entry,
        seed=run_seed_of,
        device=config["device"],
        library_code=library_code("evaluate_comparison.py"),
    resources:
        **job_resources("evaluate_comparison"),
    threads: rule_threads("evaluate_comparison")
    log:
        "results/logs/evaluate_comparison/{run}_{variant}.log",
    conda:
        "../envs/evaluate.yaml"
    script:
        "../workflow/scripts/evaluate_comparison.py"


rule table_comparison:
    """Table 1 of the heterogeneity paper for one comparison: mean (± std over seeds) per method."""
    input:
        metrics=comparison_metric_inputs,
        reference=comparison_reference_input,
    output:
        csv=report(
            "results/tables/comparison_{comparison}.csv",
            caption="../workflow/report/table_comparison.rst",
            category=report_category("Tables"),
            subcategory=report_subcategory("Heterogeneity: method comparison"),
        ),
        md="results/tables/comparison_{comparison}.md",
        tex="results/tables/comparison_{comparison}.tex",
    params:
        members=comparison_members,
        spec=lambda wildcards: config["comparisons"][wildcards.comparison],
        library_code=library_code("table_comparison.py"),
    resources:
        **job_resources("table_comparison"),
    threads: rule_threads("table_comparison")
    log:
        "results/logs/table_comparison/{comparison}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/table_comparison.py"


rule figure_steering:
    """Figure 7: mAP and MRR of retrieved images containing the steered-to concept, per method."""
    input:
        comparison_file_inputs("steering"),
    output:
        png=report(
            "results/figures/steering_{comparison}.png",
            caption="../workflow/report/figure_steering.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Heterogeneity: method comparison"),
        ),
        pdf="results/figures/steering_{comparison}.pdf",
        csv="results/tables/steering_{comparison}.csv",
    params:
        members=comparison_members,
        library_code=library_code("figure_steering.py"),
    resources:
        **job_resources("figure_steering"),
    threads: rule_threads("figure_steering")
    log:
        "results/logs/figure_steering/{comparison}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_steering.py"


rule figure_monosemanticity:
    """Figure 8: sorted monosemanticity scores of the image and text latents, per method."""
    input:
        comparison_file_inputs("monosemanticity"),
    output:
        png=report(
            "results/figures/monosemanticity_{comparison}.png",
            caption="../workflow/report/figure_monosemanticity.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Heterogeneity: method comparison"),
        ),
        pdf="results/figures/monosemanticity_{comparison}.pdf",
    params:
        members=comparison_members,
        library_code=library_code("figure_monosemanticity.py"),
    resources:
        **job_resources("figure_monosemanticity"),
    threads: rule_threads("figure_monosemanticity")
    log:
        "results/logs/figure_monosemanticity/{comparison}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_monosemanticity.py"


rule decoder_directions:
    """Cosine distances of image/text decoder directions by coactivation correlation, one run."""
    input:
        weights="results/sae/{run}/weights.safetensors",
        features=run_feature_files,
    output:
        "results/directions/{run}.csv",
    params:
        run=run_entry,
        streams=run_streams,
        seed=run_seed_of,
        device=config["device"],
        library_code=library_code("decoder_directions.py"),
    resources:
        **job_resources("decoder_directions"),
    threads: rule_threads("decoder_directions")
    log:
        "results/logs/decoder_directions/{run}.log",
    conda:
        "../envs/evaluate.yaml"
    script:
        "../workflow/scripts/decoder_directions.py"


rule figure_decoder_directions:
    """Figure 2 (base models) or 9 (large models) of the heterogeneity paper."""
    input:
        lambda wildcards: [
            f"results/directions/{run}.csv" for run in config["decoder_directions"][wildcards.figure]
        ],
    output:
        png=report(
            "results/figures/decoder_directions_{figure}.png",
            caption="../workflow/report/figure_decoder_directions.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Heterogeneity: decoder directions"),
        ),
        pdf="results/figures/decoder_directions_{figure}.pdf",
    params:
        runs=lambda wildcards: config["decoder_directions"][wildcards.figure],
        library_code=library_code("figure_decoder_directions.py"),
    wildcard_constraints:
        figure="[A-Za-z0-9_]+",
    resources:
        **job_resources("figure_decoder_directions"),
    threads: rule_threads("figure_decoder_directions")
    log:
        "results/logs/figure_decoder_directions/{figure}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/figure_decoder_directions.py"
