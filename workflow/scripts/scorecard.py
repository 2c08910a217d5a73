"""The scorecard of this run's paper items (rule scorecard)."""

from xsae import provenance, scorecard
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    card = scorecard.scorecard(snakemake.config, root=".", path=snakemake.input.registry)
    scorecard.write(card, snakemake.output.csv, snakemake.output.md)
    log.info("%s", scorecard.summary_line(card))
