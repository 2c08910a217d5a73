"""Train one per-layer SAE of the sharedness experiments and encode the test split (rule sharedness_sae)."""

from pathlib import Path

from xsae import provenance
from xsae.features import StreamRef
from xsae.sharedness_runs import train_layer_sae
from xsae.workflow import script

sae = snakemake.params.sae
with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=sae["seed"]) as job:
    wildcards = snakemake.wildcards
    name = f"{wildcards.model} layer {wildcards.layer}"
    tokens = snakemake.params.training_data == "tokens"
    train_ref = StreamRef(Path(snakemake.input.train), sae["modality"], sae["layer"], name, tokens=tokens)
    test_ref = StreamRef(Path(snakemake.input.test), sae["modality"], sae["layer"], name)
    weights = Path(snakemake.output.weights)
    summary = train_layer_sae(
        sae["entry"], train_ref, test_ref, expansion=snakemake.params.expansion, seed=sae["seed"],
        device=snakemake.params.device, weights_path=weights, log_path=snakemake.output.history,
        codes_path=snakemake.output.codes, reconstruction_path=snakemake.output.reconstruction,
        labels={"dataset": wildcards.dataset, "model": wildcards.model, "layer": sae["layer"]},
        checkpoint_path=weights.parent / "resume.pt")
    log.info("%s", summary)
    job.extra.update(summary)
