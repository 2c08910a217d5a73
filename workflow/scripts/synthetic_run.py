"""Train and score one synthetic experiment (rule synthetic_run)."""

from xsae import provenance
from xsae.runs import write_metrics
from xsae.synthetic_runs import train_and_score
from xsae.workflow import script

seed = int(snakemake.wildcards.seed)
with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=seed):
    metrics = train_and_score(snakemake.params.spec, snakemake.wildcards.method,
                              float(snakemake.wildcards.distance), seed,
                              train_path=snakemake.input.train, eval_path=snakemake.input.eval,
                              truth_path=snakemake.input.truth, weights_path=snakemake.output.weights,
                              log_path=snakemake.output.history, device=snakemake.params.device)
    write_metrics(metrics, snakemake.output.metrics)
