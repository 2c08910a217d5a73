"""Manifests of a paper dataset's own splits, with its label hierarchy (rule manifest_labelled)."""

from pathlib import Path

from xsae import provenance
from xsae.datasets.manifest import labelled_manifest, write_manifest
from xsae.datasets.sources import source_for
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    source = source_for(snakemake.params.dataset["kind"])
    root = Path(snakemake.input.record).parent / "files"
    hierarchy = source.hierarchy(root)
    splits = {}
    for split in ("train", "test"):
        splits[split], labels = labelled_manifest(source.samples(root, split), hierarchy)
    write_manifest(splits, labels, {"train": snakemake.output.train, "test": snakemake.output.test},
                   snakemake.output.labels)
    counts = {split: len(table) for split, table in splits.items()}
    log.info("%s samples, %d labels", counts, len(labels))
    job.extra.update(samples=counts, labels=len(labels))
