"""Render one SPARC table over the configured runs (rule table_sparc)."""

import pandas as pd

from xsae import provenance, tables
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec = snakemake.params.spec
    metrics = {label: pd.read_csv(path, keep_default_na=False, na_values=[""])
               for label, path in zip(spec["configurations"], snakemake.input.metrics, strict=True)}
    reference = tables.read_reference(snakemake.input.reference)
    all_tables = tables.sparc_tables(metrics, list(snakemake.params.streams), reference,
                                     spec["stream_names"], spec["reference_dataset"],
                                     spec["r2_reference"])
    table = all_tables[snakemake.wildcards.table]
    caption = " ".join(filter(None, [spec["caption"], tables.SPARC_CAPTIONS[snakemake.wildcards.table]]))
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label=f"tab:sparc-{snakemake.wildcards.set}-{snakemake.wildcards.table}")
    log.info("\n%s", tables.to_markdown(table))
