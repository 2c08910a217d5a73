"""Post-hoc alignment of one modality-specific run (rule align_sae)."""

from xsae import provenance
from xsae.comparisons import align_run
from xsae.io import write_json
from xsae.runs import resolve_device
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    report = align_run(snakemake.input.weights, snakemake.input.features,
                       [s["modality"] for s in snakemake.params.streams],
                       input_norm=snakemake.params.run["input_norm"],
                       aligned_path=snakemake.output.weights,
                       device=resolve_device(snakemake.params.device))
    write_json(snakemake.output.report, report)
    summary = {k: v for k, v in report.items() if k != "permutation"}
    log.info("%s", summary)
    job.extra.update(summary)
