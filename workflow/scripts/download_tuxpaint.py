"""Fetch and unpack the Tux Paint stamps package (rule download_tuxpaint)."""

from pathlib import Path

from xsae import provenance
from xsae.datasets import tuxpaint
from xsae.io import write_json
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.dataset
    out_dir = Path(snakemake.output.unpacked).parent
    record = tuxpaint.fetch_package(entry["package"], out_dir, expected_sha256=entry["sha256"],
                                    deb=entry["deb"], unpacked=entry["unpacked"], deb_url=entry["deb_url"])
    log.info("fetched %s", record)
    write_json(snakemake.output.record, record)
    job.extra.update(record)
