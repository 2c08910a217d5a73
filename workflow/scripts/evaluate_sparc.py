"""Every SPARC metric of a multi-stream run on one split (rule evaluate_sparc)."""

from pathlib import Path

from xsae import provenance
from xsae.evaluation import EvaluationSettings
from xsae.features import StreamRef
from xsae.runs import evaluate_multistream_run, write_metrics
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    run, streams = snakemake.params.run, snakemake.params.streams
    refs = [StreamRef(Path(path), s["modality"], s["layer"], s["name"])
            for path, s in zip(snakemake.input.features, streams, strict=True)]
    metrics, top, info = evaluate_multistream_run(
        snakemake.input.weights, refs, input_norm=run["input_norm"],
        manifest_path=snakemake.input.manifest, labels_path=snakemake.input.labels,
        settings=EvaluationSettings.from_config(snakemake.params.evaluation),
        encoders=[s["encoder"] for s in streams], device=snakemake.params.device)
    metrics.insert(0, "run", snakemake.wildcards.run)
    write_metrics(metrics, snakemake.output.metrics)
    write_metrics(top, snakemake.output.top)
    log.info("%d metric rows; %s", len(metrics), info)
    job.extra.update(info)
