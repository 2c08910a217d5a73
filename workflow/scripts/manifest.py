"""Build the per-split manifests and label hierarchy of a dataset (rule manifest)."""

import pandas as pd

from xsae import provenance
from xsae.datasets import manifest, tuxpaint
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry = snakemake.params.dataset
    stamps, skipped = tuxpaint.scan_stamps(tuxpaint.stamps_root(snakemake.input.unpacked))
    samples = pd.DataFrame({
        "sample_id": [s.sample_id for s in stamps],
        "image_path": [str(s.image_path) for s in stamps],
        "caption": [s.caption for s in stamps],
        "category": [s.category for s in stamps],
    })
    splits, labels = manifest.build_manifest(samples, test_fraction=entry["test_fraction"],
                                             seed=entry["split_seed"])
    manifest.write_manifest(splits, labels, {"train": snakemake.output.train,
                                             "test": snakemake.output.test},
                            snakemake.output.labels)
    counts = {split: len(table) for split, table in splits.items()}
    log.info("%d samples %s, %d labels; skipped %s", len(samples), counts, len(labels), skipped)
    job.extra.update(samples=counts, labels=len(labels), skipped=skipped)
