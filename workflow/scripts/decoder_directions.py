"""Decoder-direction distances by coactivation of one modality-specific run (rule decoder_directions)."""

from xsae import provenance
from xsae.comparisons import decoder_directions
from xsae.runs import resolve_device, write_metrics
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=snakemake.params.seed) as job:
    table = decoder_directions(snakemake.input.weights, snakemake.input.features,
                               [s["modality"] for s in snakemake.params.streams],
                               input_norm=snakemake.params.run["input_norm"],
                               device=resolve_device(snakemake.params.device), seed=snakemake.params.seed)
    write_metrics(table, snakemake.output[0])
    counts = {str(k): int(v) for k, v in table.attrs.get("pairs_per_bin", {}).items()}
    log.info("pairs per band: %s", counts or table["bin"].value_counts().to_dict())
    job.extra.update(pairs_per_bin=counts)
