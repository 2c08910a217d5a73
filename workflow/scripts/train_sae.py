"""Train one SAE run (rule train_sae)."""

from pathlib import Path

from xsae import provenance
from xsae.features import StreamRef
from xsae.runs import train_run
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=snakemake.params.seed) as job:
    refs = [StreamRef(Path(path), s["modality"], s["layer"], s["name"])
            for path, s in zip(snakemake.input, snakemake.params.streams, strict=True)]
    weights = Path(snakemake.output.weights)
    summary = train_run(snakemake.params.run, refs, seed=snakemake.params.seed,
                        device=snakemake.params.device, weights_path=weights,
                        log_path=snakemake.output.history,
                        checkpoint_path=weights.parent / "resume.pt")
    log.info("%s", summary)
    job.extra.update(summary)
