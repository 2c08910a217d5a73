"""Appendix C's numbers beside the published ones (rule sharedness_shuffle_table)."""

import pandas as pd
import yaml

from xsae import provenance, tables
from xsae.sharedness_tables import WEIGHTING_METRIC, shuffle_table
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, labels = snakemake.params.spec, snakemake.params.facts["labels"]
    reference = None
    if snakemake.input.reference and spec["reference"]:
        with open(snakemake.input.reference[0], encoding="utf-8") as handle:
            reference = (yaml.safe_load(handle) or {}).get(spec["reference"])
    result = pd.read_csv(snakemake.input.result).iloc[0].to_dict()
    metric = {"wmppc": "wMPPC", "mppc": "MPPC"}[WEIGHTING_METRIC[spec["weighting"]]]
    table = shuffle_table(result, source=labels[spec["source"]], target=labels[spec["target"]], metric=metric,
                          reference=reference)
    caption = " ".join(filter(None, [spec["caption"], f"{metric} of the last layers on aligned test samples "
                                                      "and with the target's samples permuted."]))
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label=f"tab:sharedness-shuffle-{snakemake.wildcards.name}")
    log.info("\n%s", tables.to_markdown(table))
