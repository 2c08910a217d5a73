"""Figure 8 for one method comparison (rule figure_monosemanticity)."""

import pandas as pd

from xsae import figures, provenance
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    parts = [pd.read_csv(path).assign(method=m["method"], seed=m["seed"])
             for m, path in zip(snakemake.params.members, snakemake.input, strict=True)]
    curves = pd.concat(parts, ignore_index=True)
    figures.save(figures.monosemanticity_figure(curves), snakemake.output.png, snakemake.output.pdf)
    log.info("%d scored latents over %d runs", len(curves), len(parts))
