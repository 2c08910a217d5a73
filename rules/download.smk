rule download_tuxpaint:
    """Fetch the Tux Paint stamps package with apt (or take a local .deb / unpacked folder)."""
    localrule: True
    output:
        unpacked=directory("resources/datasets/{dataset}/unpacked"),
        record="resources/datasets/{dataset}/download.json",
    params:
        dataset=dataset_entry,
    log:
        "results/logs/download_tuxpaint/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/download_tuxpaint.py"
