"""Held-out reconstruction of every per-layer SAE of the sharedness experiments
(rule sharedness_saes_table)."""

import pandas as pd

from xsae import provenance, tables
from xsae.sharedness_tables import reconstruction_summary
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    table = reconstruction_summary([pd.read_csv(path) for path in snakemake.input])
    caption = ("Per-layer TopK SAEs of the sharedness experiments: reconstruction of the test split's "
               "global tokens (NMSE, R²) and latents that never fire there.")
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label="tab:sharedness-saes")
    log.info("\n%s", tables.to_markdown(table))
