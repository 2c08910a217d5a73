"""Generalized Comparative Sharedness of one model's features (rule sharedness_comparative)."""

import pandas as pd

from xsae import provenance
from xsae.runs import resolve_device, write_metrics
from xsae.sharedness_runs import comparative_ranking, read_codes, select_features, top_activations
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    spec = snakemake.params.spec
    model = read_codes(snakemake.input.model)
    names = [*spec["shared_with"], *spec["not_shared_with"]]
    others = {name: read_codes(path) for name, path in zip(names, snakemake.input.others, strict=True)}
    ranking = comparative_ranking(model, others, spec["shared_with"], spec["not_shared_with"],
                                  device=resolve_device(snakemake.params.device), **snakemake.params.compare)
    ranking.insert(0, "model", spec["model"])
    write_metrics(ranking, snakemake.output.ranking)
    also_in = [pd.read_csv(path) for path in snakemake.input.also_in]
    chosen = select_features(ranking, spec["n_features"], fraction=spec["top_fraction"], also_in=also_in)
    top = top_activations(model, chosen, spec["n_images"])
    write_metrics(top, snakemake.output.top)
    extra = {"n_features": len(ranking), "positive": int((ranking["sharedness"] > 0).sum()),
             "shown": chosen, "n_samples": model.n_rows}
    log.info("%s", extra)
    job.extra.update(extra)
