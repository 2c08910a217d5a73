# The scorecard: every paper item of config/registry.yaml, whether this run rendered it, and how far
# its reproduced numbers are from the published ones.


rule scorecard:
    """One row per paper item: rendered or not, where, and |reproduced − published| of its cells."""
    input:
        paper_items=registry_outputs(),
        registry=REGISTRY_FILE,
    output:
        md=report(
            "results/scorecard.md",
            caption="../workflow/report/scorecard.rst",
            category="Scorecard",
        ),
        csv=report(
            "results/scorecard.csv",
            caption="../workflow/report/scorecard.rst",
            category="Scorecard",
        ),
    params:
        library_code=library_code("scorecard.py"),
    resources:
        **job_resources("scorecard"),
    threads: rule_threads("scorecard")
    log:
        "results/logs/scorecard.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/scorecard.py"
