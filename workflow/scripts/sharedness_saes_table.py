"""Held-out reconstruction of every per-layer SAE of the sharedness experiments
(rule sharedness_saes_table)."""

import pandas as pd

from xsae import provenance, tables
from xsae.sharedness_tables import reconstruction_summary
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    table = reconstruction_summary([pd.read_csv(path) for path in snakemake.input])
    caption = ("Per-layer TopK SAEs of the sharedness experiments: NMSE on the training tokens (last "
               f"logged interval) and on the compared vectors of the {snakemake.params.compare_split} "
               "split (each layer's global tokens, or every token of models compared on pooled "
               "codes), their "
               "ratio (above 2: the compared vectors are not the distribution the SAE learned), R² "
               "and latents that never fire on the compared vectors.")
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label="tab:sharedness-saes")
    log.info("\n%s", tables.to_markdown(table))
