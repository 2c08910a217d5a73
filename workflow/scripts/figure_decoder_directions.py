"""Figure 2/9 of the heterogeneity paper (rule figure_decoder_directions)."""

import pandas as pd

from xsae import figures, provenance
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    runs = zip(snakemake.params.runs, snakemake.input, strict=True)
    tables = {run: pd.read_csv(path) for run, path in runs}
    figures.save(figures.decoder_directions_figure(tables), snakemake.output.png, snakemake.output.pdf)
    log.info("%s", {run: len(table) for run, table in tables.items()})
