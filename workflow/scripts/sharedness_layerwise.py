"""Figure 1 of the sharedness paper: layer × layer heatmaps (rule sharedness_layerwise)."""

import pandas as pd

from xsae import figures, provenance
from xsae.io import atomic_path
from xsae.sharedness_tables import METRIC_NAMES, WEIGHTING_METRIC, layerwise_matrix, read_pair_scores
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, labels = snakemake.params.spec, snakemake.params.facts["labels"]
    metric = WEIGHTING_METRIC[spec["weighting"]]
    scores = read_pair_scores(snakemake.input)
    scores = scores[scores["dataset"] == spec["dataset"]]
    panels, tidy = [], []
    for source, target in spec["panels"]:
        matrix = layerwise_matrix(scores, source, target, metric)
        matrix.attrs.update(source=labels[source], target=labels[target])
        panels.append((f"{labels[source]} → {labels[target]}", matrix))
        long = matrix.stack().rename("value").reset_index()
        tidy.append(long.assign(source=source, target=target, metric=metric))
    name = METRIC_NAMES[metric]
    figure = figures.layerwise_heatmaps(panels, metric=name)
    if spec["caption"]:
        figure.suptitle(spec["caption"], fontsize=9)
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
    table = pd.concat(tidy, ignore_index=True)[["source", "target", "layer_source", "layer_target", "metric",
                                                "value"]]
    with atomic_path(snakemake.output.csv) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%d panels, %d layer pairs", len(panels), len(table))
