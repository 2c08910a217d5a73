rule download_tuxpaint:
    """Fetch the Tux Paint stamps package with apt (or take a local .deb / unpacked folder)."""
    localrule: True
    wildcard_constraints:
        dataset=TUXPAINT_DATASETS,
    output:
        unpacked=directory("resources/datasets/{dataset}/unpacked"),
        record="resources/datasets/{dataset}/download.json",
    params:
        dataset=dataset_entry,
        library_code=library_code("download_tuxpaint.py"),
    priority: PRIORITIES["download_tuxpaint"]
    log:
        "results/logs/download_tuxpaint/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/download_tuxpaint.py"


rule download_dataset:
    """Fetch, verify and unpack a paper dataset (or check a folder the user provided)."""
    localrule: True
    wildcard_constraints:
        dataset=SOURCE_DATASETS,
    input:
        dataset_own_files,
    output:
        # The files themselves go to resources/datasets/{dataset}/files, undeclared so that an
        # interrupted download keeps its partial files and resumes; the record lists them.
        record="resources/datasets/{dataset}/download.json",
    params:
        dataset=dataset_entry,
        library_code=library_code("download_dataset.py"),
    priority: PRIORITIES["download_dataset"]
    log:
        "results/logs/download_dataset/{dataset}.log",
    conda:
        "../envs/download.yaml"
    script:
        "../workflow/scripts/download_dataset.py"
