"""Train one per-layer SAE of the sharedness experiments, or take it from its encoder's online job,
and encode the compared split (rule sharedness_sae)."""

from pathlib import Path

from xsae import provenance
from xsae.features import StreamRef
from xsae.sharedness_runs import adopt_online_sae, train_layer_sae
from xsae.workflow import script

sae = snakemake.params.sae
with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=sae["seed"]) as job:
    wildcards = snakemake.wildcards
    name = f"{wildcards.model} layer {wildcards.layer}"
    training_data = snakemake.params.training_data
    compared = snakemake.input.get("compared")  # none for a model compared on pooled codes
    test_ref = compared and StreamRef(Path(compared), sae["modality"], sae["layer"], name)
    weights = Path(snakemake.output.weights)
    outputs = {"weights_path": weights, "log_path": snakemake.output.history,
               "codes_path": snakemake.output.codes, "reconstruction_path": snakemake.output.reconstruction}
    labels = {"dataset": wildcards.dataset, "model": wildcards.model, "layer": sae["layer"]}
    if training_data == "online":
        summary = adopt_online_sae(snakemake.input.train, wildcards.model, sae["layer"], test_ref,
                                   device=snakemake.params.device, labels=labels, **outputs)
    else:
        train_ref = StreamRef(Path(snakemake.input.train), sae["modality"], sae["layer"], name,
                              tokens=training_data == "tokens")
        summary = train_layer_sae(
            sae["entry"], train_ref, test_ref, expansion=snakemake.params.expansion, seed=sae["seed"],
            device=snakemake.params.device, labels=labels, checkpoint_path=weights.parent / "resume.pt",
            **outputs)
    log.info("%s", summary)
    job.extra.update(summary)
