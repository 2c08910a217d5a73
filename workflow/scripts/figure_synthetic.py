"""Figure 5 or 6 of the heterogeneity paper from the synthetic runs' metrics (rule figure_synthetic)."""

import pandas as pd

from xsae import figures, provenance
from xsae.heterogeneity_tables import summarize
from xsae.io import atomic_path
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    table = summarize([pd.read_csv(path) for path in snakemake.input])
    with atomic_path(snakemake.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    if snakemake.wildcards.figure == "distance":
        figure = figures.synthetic_distance_figure(table)
    else:
        figure = figures.synthetic_lambda_figure(table, snakemake.params.spec["lambda_distance"])
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
    log.info("\n%s", table.to_string(index=False))
