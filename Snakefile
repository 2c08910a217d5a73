# Cross-model sparse autoencoders: download → manifest → features → SAE runs → metrics → tables/figures.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


# `--configfile A [B ...]` is the whole configuration (the files merged in order, plus the schema's
# defaults); the embedded default applies only when no config file is given. Read here first, so
# that a syntax error in it names its line and column (Snakemake's loader names neither).
if not workflow.overwrite_configfiles:
    DEFAULT_CONFIG = os.path.join(workflow.basedir, "config", "config.yaml")
    sys.path.insert(0, os.path.join(workflow.basedir, "src"))
    from xsae.config import read_file

    read_file(DEFAULT_CONFIG)

    configfile: DEFAULT_CONFIG


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
