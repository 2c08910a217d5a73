"""Generate one synthetic dataset (rule synthetic_data)."""

from xsae import provenance
from xsae.synthetic_runs import make_dataset
from xsae.workflow import script

seed = int(snakemake.wildcards.seed)
with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=seed) as job:
    summary = make_dataset(snakemake.params.spec, float(snakemake.wildcards.distance), seed,
                           snakemake.output.train, snakemake.output.eval, snakemake.output.truth)
    log.info("%s", summary)
    job.extra.update(summary)
