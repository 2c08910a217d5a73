"""Render the reconstruction table (rule table_reconstruction)."""

import pandas as pd

from xsae import provenance, tables
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    table = tables.reconstruction_table([pd.read_csv(path) for path in snakemake.input])
    tables.render(table, dict(snakemake.output.items()), label="tab:reconstruction",
                  caption="Reconstruction quality of the SAEs on held-out features.")
    log.info("\n%s", tables.to_markdown(table))
