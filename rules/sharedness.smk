# The sharedness paper (wMPPC, Comparative Sharedness): per-layer features → one TopK SAE per
# model × layer × dataset (train split) → its codes on the compared split → pair scores between models
# → Tables 1–3 and 7–26, Figure 1 (layer × layer), Figures 2–4 (Comparative Sharedness), Appendix C.


include: "sharedness_common.smk"


rule sharedness_online:
    """One encoder on one dataset (training_data online): one pass per modality over the training
    samples trains the SAE of every layer that a model of the encoder needs, both towers and every
    seed, on every real token; nothing token-level is stored. Models compared on pooled codes get
    one more pass, over the compared split, that writes them."""
    input:
        unpack(sharedness_online_manifests),
    output:
        directory(SHAREDNESS_ONLINE),
    params:
        saes=sharedness_online_saes,
        online=SHAREDNESS["online"],
        expansion=SHAREDNESS["expansion"],
        encoder=encoder_entry,
        device=config["device"],
        library_code=library_code("sharedness_online.py"),
    resources:
        **job_resources("sharedness_online"),
    threads: rule_threads("sharedness_online")
    priority: PRIORITIES["sharedness_online"]
    log:
        "results/logs/sharedness_online/{dataset}/{encoder}.log",
    conda:
        "../envs/extract.yaml"
    script:
        "../workflow/scripts/sharedness_online.py"


rule sharedness_sae:
    """One model's layer on one dataset: train its TopK SAE (or, training_data online, take it from
    its encoder's online job), encode the compared split (one job per model × layer × dataset, so a
    cluster trains them all in parallel)."""
    input:
        unpack(sharedness_sae_features),
    output:
        weights=f"{SHAREDNESS_SAE}/weights.safetensors",
        history=f"{SHAREDNESS_SAE}/training_log.csv",
        codes=SHAREDNESS_CODES,
        reconstruction=SHAREDNESS_RECONSTRUCTION,
    params:
        sae=sharedness_sae_params,
        expansion=SHAREDNESS["expansion"],
        training_data=SHAREDNESS["training_data"],
        device=config["device"],
        library_code=library_code("sharedness_sae.py"),
    wildcard_constraints:
        model=SHAREDNESS_MODEL_NAMES,
        layer="[0-9]{2}",
    resources:
        **job_resources("sharedness_sae"),
    threads: rule_threads("sharedness_sae")
    log:
        "results/logs/sharedness_sae/{dataset}/{model}/layer{layer}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/sharedness_sae.py"


rule sharedness_saes_table:
    """Held-out NMSE, R² and dead latents of every per-layer SAE."""
    input:
        sharedness_sae_reports,
    output:
        csv=report(
            "results/tables/sharedness_saes.csv",
            caption="../workflow/report/sharedness_saes.rst",
            category="Tables",
            subcategory="Sharedness",
        ),
        md="results/tables/sharedness_saes.md",
        tex="results/tables/sharedness_saes.tex",
    params:
        compare_split=COMPARE_SPLIT,
        library_code=library_code("sharedness_saes_table.py"),
    resources:
        **job_resources("sharedness_saes_table"),
    threads: rule_threads("sharedness_saes_table")
    log:
        "results/logs/sharedness_saes_table.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_saes_table.py"


rule sharedness_pair:
    """Every score between two models' per-layer SAEs on one dataset, both directions."""
    input:
        unpack(sharedness_pair_codes),
    output:
        SHAREDNESS_PAIR,
    params:
        layers=sharedness_pair_layers,
        compare=SHAREDNESS["compare"],
        device=config["device"],
        library_code=library_code("sharedness_pair.py"),
    wildcard_constraints:
        model_a=SHAREDNESS_MODEL_NAMES,
        model_b=SHAREDNESS_MODEL_NAMES,
    resources:
        **job_resources("sharedness_pair"),
    threads: rule_threads("sharedness_pair")
    log:
        "results/logs/sharedness_pair/{dataset}/{model_a}/{model_b}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/sharedness_pair.py"


rule sharedness_table:
    """A source × target matrix of wMPPC or MPPC (Tables 1, 2, 7–26), beside the published one."""
    input:
        pairs=sharedness_table_pairs,
        reference=sharedness_reference,
    output:
        csv=report(
            "results/tables/sharedness_{table}.csv",
            caption="../workflow/report/sharedness_table.rst",
            category=report_category("Tables"),
            subcategory=report_subcategory("Sharedness"),
        ),
        md="results/tables/sharedness_{table}.md",
        tex="results/tables/sharedness_{table}.tex",
    params:
        spec=sharedness_table_spec,
        facts=sharedness_table_facts,
        compare_split=COMPARE_SPLIT,
        library_code=library_code("sharedness_table.py"),
    wildcard_constraints:
        table=_names_pattern(SHAREDNESS["tables"]),
    resources:
        **job_resources("sharedness_table"),
    threads: rule_threads("sharedness_table")
    log:
        "results/logs/sharedness_table/{table}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_table.py"


rule sharedness_average:
    """Table 3: mean wMPPC by source and target modality, per dataset and model set."""
    input:
        pairs=sharedness_average_pairs,
        reference=sharedness_reference,
    output:
        csv=report(
            "results/tables/sharedness_{table}.csv",
            caption="../workflow/report/sharedness_average.rst",
            category=report_category("Tables"),
            subcategory=report_subcategory("Sharedness"),
        ),
        md="results/tables/sharedness_{table}.md",
        tex="results/tables/sharedness_{table}.tex",
    params:
        spec=sharedness_average_spec,
        facts=sharedness_average_facts,
        library_code=library_code("sharedness_average.py"),
    wildcard_constraints:
        table=_names_pattern(SHAREDNESS["averages"]),
    resources:
        **job_resources("sharedness_average"),
    threads: rule_threads("sharedness_average")
    log:
        "results/logs/sharedness_average/{table}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_average.py"


rule sharedness_layerwise:
    """Figure 1: layer × layer heatmaps of the configured model pairs."""
    input:
        sharedness_layerwise_pairs,
    output:
        png=report(
            "results/figures/sharedness_layerwise_{name}.png",
            caption="../workflow/report/sharedness_layerwise.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Sharedness"),
        ),
        pdf="results/figures/sharedness_layerwise_{name}.pdf",
        csv="results/tables/sharedness_layerwise_{name}.csv",
    params:
        spec=sharedness_layerwise_spec,
        facts=sharedness_layerwise_facts,
        library_code=library_code("sharedness_layerwise.py"),
    wildcard_constraints:
        name=_names_pattern(SHAREDNESS["layerwise"]),
    resources:
        **job_resources("sharedness_layerwise"),
    threads: rule_threads("sharedness_layerwise")
    log:
        "results/logs/sharedness_layerwise/{name}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_layerwise.py"


rule sharedness_comparative:
    """Generalized Comparative Sharedness of one model's last-layer features (Eq. 7), and the
    top-activating compared samples of the best-ranked ones (Figures 2–4)."""
    input:
        unpack(sharedness_comparative_inputs),
    output:
        ranking="results/tables/sharedness_comparative_{name}.csv",
        top="results/tables/sharedness_comparative_{name}_top.csv",
    params:
        spec=sharedness_comparative_spec,
        compare=SHAREDNESS["compare"],
        device=config["device"],
        library_code=library_code("sharedness_comparative.py"),
    wildcard_constraints:
        name=_names_pattern(SHAREDNESS["comparative"]),
    resources:
        **job_resources("sharedness_comparative"),
    threads: rule_threads("sharedness_comparative")
    log:
        "results/logs/sharedness_comparative/{name}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/sharedness_comparative.py"


rule sharedness_comparative_figure:
    """Figures 2–4: the best-ranked features and their top-activating test images."""
    input:
        ranking="results/tables/sharedness_comparative_{name}.csv",
        top="results/tables/sharedness_comparative_{name}_top.csv",
        manifest=sharedness_comparative_manifest,
    output:
        png=report(
            "results/figures/sharedness_comparative_{name}.png",
            caption="../workflow/report/sharedness_comparative.rst",
            category=report_category("Figures"),
            subcategory=report_subcategory("Sharedness"),
        ),
        pdf="results/figures/sharedness_comparative_{name}.pdf",
    params:
        spec=sharedness_comparative_spec,
        facts=sharedness_comparative_facts,
        library_code=library_code("sharedness_comparative_figure.py"),
    wildcard_constraints:
        name=_names_pattern(SHAREDNESS["comparative"]),
    resources:
        **job_resources("sharedness_comparative_figure"),
    threads: rule_threads("sharedness_comparative_figure")
    log:
        "results/logs/sharedness_comparative_figure/{name}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_comparative_figure.py"


rule sharedness_shuffle:
    """Appendix C: wMPPC with aligned samples against the same with one side's samples permuted."""
    input:
        unpack(sharedness_shuffle_codes),
    output:
        "results/sharedness/shuffle_{name}.csv",
    params:
        spec=sharedness_shuffle_spec,
        compare=SHAREDNESS["compare"],
        seed=config["seed"],
        device=config["device"],
        library_code=library_code("sharedness_shuffle.py"),
    wildcard_constraints:
        name=_names_pattern(SHAREDNESS["shuffle"]),
    resources:
        **job_resources("sharedness_shuffle"),
    threads: rule_threads("sharedness_shuffle")
    log:
        "results/logs/sharedness_shuffle/{name}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../workflow/scripts/sharedness_shuffle.py"


rule sharedness_shuffle_table:
    """Appendix C's numbers beside the published ones."""
    input:
        result="results/sharedness/shuffle_{name}.csv",
        reference=sharedness_reference,
    output:
        csv=report(
            "results/tables/sharedness_shuffle_{name}.csv",
            caption="../workflow/report/sharedness_shuffle.rst",
            category=report_category("Tables"),
            subcategory=report_subcategory("Sharedness"),
        ),
        md="results/tables/sharedness_shuffle_{name}.md",
        tex="results/tables/sharedness_shuffle_{name}.tex",
    params:
        spec=sharedness_shuffle_spec,
        facts=sharedness_shuffle_facts,
        library_code=library_code("sharedness_shuffle_table.py"),
    wildcard_constraints:
        name=_names_pattern(SHAREDNESS["shuffle"]),
    resources:
        **job_resources("sharedness_shuffle_table"),
    threads: rule_threads("sharedness_shuffle_table")
    log:
        "results/logs/sharedness_shuffle_table/{name}.log",
    conda:
        "../envs/render.yaml"
    script:
        "../workflow/scripts/sharedness_shuffle_table.py"
