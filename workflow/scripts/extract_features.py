"""Encode one dataset split with one encoder (rule extract_features)."""

from xsae import provenance
from xsae.encoders import EncoderSpec, load_encoder
from xsae.features import extract
from xsae.runs import resolve_device
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.encoder
    device = resolve_device(snakemake.params.device)
    encoder = load_encoder(EncoderSpec.from_config(snakemake.wildcards.encoder, entry, str(device)))
    summary = extract(encoder, snakemake.input.manifest, snakemake.output[0],
                      modalities=snakemake.params.modalities, layers=entry["layers"],
                      batch_size=entry["batch_size"],
                      workers=min(4, max(0, snakemake.threads - 2)),  # 2 threads: decode inline
                      dataset=snakemake.wildcards.dataset, split=snakemake.wildcards.split,
                      autocast_dtype=entry["dtype"], layer_tokens=entry["layer_tokens"])
    log.info("%s", summary)
    job.extra.update(summary)
