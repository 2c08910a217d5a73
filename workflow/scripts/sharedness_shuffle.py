"""Appendix C of the sharedness paper: the shuffle test (rule sharedness_shuffle)."""

import pandas as pd

from xsae import provenance
from xsae.runs import resolve_device, write_metrics
from xsae.sharedness_runs import read_codes, shuffle_test
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake, seed=snakemake.params.seed) as job:
    spec = snakemake.params.spec
    result = shuffle_test(read_codes(snakemake.input.source), read_codes(snakemake.input.target),
                          n_permutations=spec["n_permutations"], seed=snakemake.params.seed,
                          weighting=spec["weighting"], device=resolve_device(snakemake.params.device),
                          **snakemake.params.compare)
    write_metrics(pd.DataFrame([{"source": spec["source"], "target": spec["target"], **result}]),
                  snakemake.output[0])
    log.info("%s", result)
    job.extra.update(result)
