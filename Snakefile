# Cross-model sparse autoencoders: download → manifest → features → SAE runs → metrics → tables/figures.
import os

from snakemake.utils import min_version

min_version("9.0")


# `--configfile A [B ...]` is the whole configuration (the files merged in order, plus the schema's
# defaults); the embedded default applies only when no config file is given.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


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
include: "rules/plan.smk"
include: "rules/scorecard.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
