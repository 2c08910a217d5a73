"""Score one run of a method comparison (rule evaluate_comparison)."""

from xsae import provenance
from xsae.comparisons import evaluate_run
from xsae.runs import resolve_device, write_metrics
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=snakemake.params.seed):
    inputs = {key: value for key, value in snakemake.input.items() if key != "weights"}
    metrics, steering, mono = evaluate_run(snakemake.input.weights, snakemake.params.spec,
                                           input_norm=snakemake.params.run["input_norm"], inputs=inputs,
                                           device=resolve_device(snakemake.params.device),
                                           seed=snakemake.params.seed)
    for frame, path in ((metrics, snakemake.output.metrics), (steering, snakemake.output.steering),
                        (mono, snakemake.output.monosemanticity)):
        write_metrics(frame, path)
    log.info("\n%s", metrics.to_string(index=False))
