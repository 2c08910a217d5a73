"""Render the cost plan of the configured run (rule plan_table)."""

from xsae import plan, provenance
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    data = plan.load_data(snakemake.input.sizes, snakemake.input.costs, snakemake.input.recipes)
    planned = plan.make_plan(snakemake.params.config, data=data, expansion=snakemake.params.expansion)
    plan.write_tables(planned, {k: snakemake.output[k] for k in ("csv", "md", "tex")})
    log.info("\n%s", "\n".join(plan.totals_lines(planned)))
