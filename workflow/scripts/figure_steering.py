"""Figure 7 for one method comparison (rule figure_steering)."""

import pandas as pd

from xsae import figures, provenance
from xsae.io import atomic_path
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    parts = []
    for member, path in zip(snakemake.params.members, snakemake.input, strict=True):
        frame = pd.read_csv(path)
        parts.append(frame.assign(method=member["method"], seed=member["seed"]))
    steering = pd.concat(parts, ignore_index=True)
    summary = figures.steering_summary(steering)
    with atomic_path(snakemake.output.csv) as tmp:
        summary.to_csv(tmp, index=False)
    figures.save(figures.steering_figure(summary), snakemake.output.png, snakemake.output.pdf)
    log.info("\n%s", summary.to_string(index=False))
