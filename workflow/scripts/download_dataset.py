"""Fetch, verify and unpack a paper dataset (rule download_dataset)."""

from pathlib import Path

from xsae import provenance
from xsae.datasets.sources import source_for
from xsae.io import write_json
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.dataset
    root = Path(snakemake.output.record).parent / "files"
    record = source_for(entry["kind"]).download(root, entry, name=snakemake.wildcards.dataset)
    write_json(snakemake.output.record, record)
    log.info("%s: %s", snakemake.wildcards.dataset, {k: v for k, v in record.items() if k != "files"})
    job.extra.update({k: v for k, v in record.items() if k != "files"})
