"""Figures 2–4 of the sharedness paper: best-ranked features and their top test images
(rule sharedness_comparative_figure)."""

import pandas as pd

from xsae import figures, provenance
from xsae.datasets.manifest import read_manifest
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, labels = snakemake.params.spec, snakemake.params.facts["labels"]
    ranking = pd.read_csv(snakemake.input.ranking)
    top = figures.read_top_activations(snakemake.input.top)
    shared = ", ".join(labels[m] for m in spec["shared_with"])
    not_shared = ", ".join(labels[m] for m in spec["not_shared_with"])
    title = spec["caption"] or (f"{labels[spec['model']]} features shared with every one of "
                                f"G = {{{shared}}}, with none of H = {{{not_shared}}}")
    figure = figures.comparative_features_figure(top, read_manifest(snakemake.input.manifest), ranking,
                                                 spec["n_images"], title=title)
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
    log.info("features shown: %s", list(dict.fromkeys(top["feature"])))
