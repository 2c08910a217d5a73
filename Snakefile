# Cross-model sparse autoencoders: download → manifest → features → SAE runs → metrics → tables/figures.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/manifest.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/render.smk"
include: "rules/synthetic.smk"
include: "rules/heterogeneity.smk"
include: "rules/sharedness.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
