"""Plot one parameter sweep (rule figure_sweep)."""

import pandas as pd

from xsae import figures, provenance
from xsae.io import atomic_path
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    table = figures.sweep_table(snakemake.params.members, [pd.read_csv(p) for p in snakemake.input])
    with atomic_path(snakemake.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    figure = figures.sweep_figure(table, snakemake.params.parameter,
                                  title=f"sweep {snakemake.wildcards.sweep}")
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
    log.info("\n%s", table.to_string(index=False))
