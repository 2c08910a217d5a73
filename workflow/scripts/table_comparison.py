"""Table 1 layout for one method comparison (rule table_comparison)."""

import pandas as pd

from xsae import provenance, tables
from xsae.heterogeneity_tables import comparison_table
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    members, spec = snakemake.params.members, snakemake.params.spec
    metrics = {(m["method"], m["seed"]): pd.read_csv(path)
               for m, path in zip(members, snakemake.input.metrics, strict=True)}
    reference = tables.read_reference(snakemake.input.reference, spec["reference_key"] or "")
    table = comparison_table(metrics, spec["methods"], reference)
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")},
                  caption=tables.comparison_caption(spec),
                  label=f"tab:comparison-{snakemake.wildcards.comparison}")
    log.info("\n%s", tables.to_markdown(table))
