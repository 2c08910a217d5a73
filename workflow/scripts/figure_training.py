"""Plot the training curves of one SAE run (rule figure_training)."""

import pandas as pd

from xsae import figures, provenance
from xsae.workflow import script

with script(snakemake), provenance.from_snakemake(snakemake):
    history = pd.read_csv(snakemake.input[0])
    figure = figures.training_curves(history, title=f"SAE run {snakemake.wildcards.run}")
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
