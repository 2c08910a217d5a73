"""Manifests of a paper dataset's own splits, with its label hierarchy (rule manifest_labelled)."""

import json
from pathlib import Path

from xsae import provenance
from xsae.datasets.manifest import labelled_manifest, write_manifest
from xsae.datasets.sources import source_for
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.dataset
    source = source_for(entry["kind"])
    root = Path(snakemake.input.record).parent / "files"
    hierarchy = source.hierarchy(root)
    splits = {}
    for split in ("train", "test"):
        splits[split], labels = labelled_manifest(source.samples(root, split, entry["manifest_options"]),
                                                       hierarchy)
    write_manifest(splits, labels, {"train": snakemake.output.train, "test": snakemake.output.test},
                   snakemake.output.labels)
    counts = {split: len(table) for split, table in splits.items()}
    # What the download could not fetch (URL datasets lose images) stays with the manifest's record.
    download = json.loads(Path(snakemake.input.record).read_text(encoding="utf-8"))
    lost = {k: v for k, v in download.items() if k != "files"}
    log.info("%s samples, %d labels; download summary: %s", counts, len(labels), lost)
    job.extra.update(samples=counts, labels=len(labels), download=lost)
