"""Train every per-layer sharedness SAE of one encoder on one dataset online (rule sharedness_online)."""

from xsae import provenance
from xsae.encoders import EncoderSpec, load_encoder
from xsae.runs import resolve_device
from xsae.sharedness_online import OnlineSAE, settings_from_config, train_online
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.encoder
    device = resolve_device(snakemake.params.device)
    encoder = load_encoder(EncoderSpec.from_config(snakemake.wildcards.encoder, entry, str(device)))
    settings = settings_from_config(snakemake.params.online, entry, expansion=snakemake.params.expansion,
                                    workers=min(4, max(0, snakemake.threads - 2)))  # 2 threads: decode inline
    saes = [OnlineSAE(**sae) for sae in snakemake.params.saes]
    summary = train_online(encoder, snakemake.input.manifest, saes, snakemake.output[0], settings,
                           compared_manifest=snakemake.input.get("compared"))
    log.info("%s", summary)
    job.extra.update(summary)
