"""Appendix C's numbers beside the published ones (rule sharedness_shuffle_table)."""

import pandas as pd

from xsae import provenance, tables
from xsae.sharedness_tables import METRIC_NAMES, WEIGHTING_METRIC, shuffle_table
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, labels = snakemake.params.spec, snakemake.params.facts["labels"]
    reference = (tables.read_reference(snakemake.input.reference, spec["reference"])
                 if spec["reference"] else None)
    result = pd.read_csv(snakemake.input.result).iloc[0].to_dict()
    metric = METRIC_NAMES[WEIGHTING_METRIC[spec["weighting"]]]
    table = shuffle_table(result, source=labels[spec["source"]], target=labels[spec["target"]], metric=metric,
                          reference=reference)
    caption = " ".join(filter(None, [spec["caption"], f"{metric} of the last layers on aligned test samples "
                                                      "and with the target's samples permuted."]))
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label=f"tab:sharedness-shuffle-{snakemake.wildcards.name}")
    log.info("\n%s", tables.to_markdown(table))
