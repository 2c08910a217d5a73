"""Table 3 of the sharedness paper: mean score by source and target modality (rule sharedness_average)."""

from xsae import provenance, tables
from xsae.sharedness_tables import METRIC_NAMES, WEIGHTING_METRIC, average_table, read_pair_scores
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    spec, facts = snakemake.params.spec, snakemake.params.facts
    reference = (tables.read_reference(snakemake.input.reference, spec["reference"])
                 if spec["reference"] else None)
    scores = read_pair_scores(snakemake.input.pairs)
    rows = [(row, scores[scores["dataset"] == row["dataset"]]) for row in spec["rows"]]
    metric = WEIGHTING_METRIC[spec["weighting"]]
    table = average_table(rows, modalities=facts["modalities"],
                          encoder_of={m: tuple(e) for m, e in facts["encoders"].items()}, metric=metric,
                          reference=reference)
    name = METRIC_NAMES[metric]
    caption = " ".join(filter(None, [spec["caption"], f"Average {name} over ordered pairs of distinct "
                                                      "encoders, by source → target modality."]))
    tables.render(table, {k: snakemake.output[k] for k in ("csv", "md", "tex")}, caption=caption,
                  label=f"tab:sharedness-{snakemake.wildcards.table}")
    log.info("\n%s", tables.to_markdown(table))
