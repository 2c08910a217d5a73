# What the configured run costs before it runs (`xsae plan`): every training job's optimizer steps
# and samples seen beside the paper's recipe, and hours, disk and peak memory per stage.
from xsae.plan import expand as plan_expansion  # noqa: E402

#: The figures the plan rests on, read from this workflow's checkout.
PLAN_DATA = {
    "sizes": os.path.join(workflow.basedir, "config", "dataset_sizes.yaml"),
    "costs": os.path.join(workflow.basedir, "config", "costs.yaml"),
    "recipes": os.path.join(workflow.basedir, "config", "paper_recipes.yaml"),
}
#: The config sections the plan reads: changing any of them re-prices the run, nothing else does.
PLAN_CONFIG = {
    section: config.get(section)
    for section in ("device", "datasets", "encoders", "features", "streams", "sae_runs", "sweeps",
                    "comparisons", "synthetic", "sharedness", "cluster")
}
#: The jobs the config generates (synthetic, per-layer SAEs...), as plain data: the rule's env has no torch.
PLAN_EXPANSION = plan_expansion(config)


rule plan_table:
    """Steps, samples, hours, disk and memory of every job, before the first one runs."""
    input:
        **PLAN_DATA,
    output:
        csv=report(
            "results/tables/plan.csv",
            caption="../workflow/report/table_plan.rst",
            category="Tables",
            subcategory="Plan",
        ),
        md="results/tables/plan.md",
        tex="results/tables/plan.tex",
    params:
        config=PLAN_CONFIG,
        expansion=PLAN_EXPANSION,
        library_code=library_code("plan_table.py"),
    localrule: True
    log:
        "results/logs/plan_table.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/plan_table.py"
