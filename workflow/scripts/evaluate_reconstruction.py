"""Reconstruction metrics of one SAE run on one split (rule evaluate_reconstruction)."""

from pathlib import Path

from xsae import provenance
from xsae.features import StreamRef
from xsae.runs import evaluate_reconstruction, write_metrics
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    run = snakemake.params.run
    refs = [StreamRef(Path(path), s["modality"], s["layer"], s["name"])
            for path, s in zip(snakemake.input.features, snakemake.params.streams, strict=True)]
    labels = {"run": snakemake.wildcards.run, "method": run["method"], "dataset": run["dataset"],
              "split": snakemake.wildcards.split, "n_latents": run["n_latents"], "k": run["k"]}
    metrics = evaluate_reconstruction(snakemake.input.weights, refs, input_norm=run["input_norm"],
                                      device=snakemake.params.device, labels=labels)
    write_metrics(metrics, snakemake.output[0])
    log.info("\n%s", metrics.to_string(index=False))
