"""One source × target matrix of the sharedness paper (rule sharedness_table)."""

from xsae import provenance, tables
from xsae.sharedness_tables import (
    METRIC_NAMES,
    SCOPE_CAPTIONS,
    WEIGHTING_METRIC,
    matrix_table,
    read_pair_scores,
)
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, facts = snakemake.params.spec, snakemake.params.facts
    reference = (tables.read_reference(snakemake.input.reference, spec["reference"])
                 if spec["reference"] else None)
    scores = read_pair_scores(snakemake.input.pairs)
    scores = scores[scores["dataset"] == spec["dataset"]]
    metric = WEIGHTING_METRIC[spec["weighting"]]
    table = matrix_table(scores, spec["sources"], spec["targets"] or spec["sources"], labels=facts["labels"],
                         modalities=facts["modalities"], scope=spec["layers"], metric=metric,
                         reference=reference)
    name = METRIC_NAMES[metric]
    scope = SCOPE_CAPTIONS[spec["layers"]]
    caption = " ".join(filter(None, [spec["caption"],
                                     f"{name} source → target ({scope}) on {spec['dataset']}, "
                                     f"{snakemake.params.compare_split} split."]))
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label=f"tab:sharedness-{snakemake.wildcards.table}")
    log.info("\n%s", tables.to_markdown(table))
