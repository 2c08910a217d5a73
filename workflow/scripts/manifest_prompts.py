"""Class prompts of a labelled dataset as a text-only manifest (rule manifest_prompts)."""

import shutil
from pathlib import Path

from xsae import provenance
from xsae.datasets.manifest import read_labels
from xsae.datasets.prompts import imagenet_wnids, prompt_manifest
from xsae.io import atomic_path
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    entry, classes_of = snakemake.params.dataset, snakemake.params.classes_of
    root = Path(snakemake.input.record).parent / "files"
    wnids = imagenet_wnids(root) if classes_of["kind"] == "imagenet_val" else None
    table = prompt_manifest(read_labels(snakemake.input.labels), class_names=entry["class_names"],
                            templates=entry["templates"], wnids=wnids)
    for split, rows in (("train", table.iloc[:0]), ("test", table)):
        with atomic_path(snakemake.output[split]) as tmp:
            rows.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.labels) as tmp:  # the described dataset's labels, unchanged
        shutil.copyfile(snakemake.input.labels, tmp)
    log.info("%d prompts for %d classes", len(table), table["leaf_ids"].nunique())
    job.extra.update(prompts=len(table), classes=int(table["leaf_ids"].nunique()))
