"""The heterogeneity paper's result tables from its runs' metrics, with no torch: Tables 1–4 (one
row per method, mean and spread over seeds, then the published rows) and the synthetic Figures 5–6
(mean and spread over seeds). The render rules build them from CSVs alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: Table 1's columns, in order, named by role (the comparison config says which dataset plays it:
#: `retrieval`, COCO in the paper, and `zero_shot.dataset`, ImageNet): MSE; recalls and accuracy in %.
TABLE_COLUMNS = (
    "retrieval_mse",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "zero_shot_mse",
    "zero_shot",
)


def comparison_table(
    metrics: Mapping[tuple[str, int], pd.DataFrame],
    methods: Sequence[str],
    reference: Mapping[str, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """Table 1 layout: one row per method (mean and spread over seeds), then the published rows.

    `metrics`: (method, seed) → that run's tidy metrics. Columns that a run did not measure (no
    zero-shot dataset, say) are left empty.
    """
    rows = []
    for method in methods:
        values = {}
        for (m, _), frame in metrics.items():
            if m == method:
                for metric, value in zip(frame["metric"], frame["value"], strict=True):
                    values.setdefault(metric, []).append(float(value))
        row = {
            "method": method,
            "source": "reproduced",
            "runs": max((len(v) for v in values.values()), default=0),
        }
        for column in TABLE_COLUMNS:
            data = np.asarray(values.get(column, []), dtype=float)
            row[column] = float(data.mean()) if data.size else float("nan")
            row[f"{column}_std"] = float(data.std(ddof=1)) if data.size > 1 else float("nan")
        rows.append(row)
    for method in methods if reference else ():
        published = reference.get(method)
        if published:
            rows.append(
                {
                    "method": method,
                    "source": "paper",
                    "runs": 3,
                    **{c: published.get(c, float("nan")) for c in TABLE_COLUMNS},
                    **{f"{c}_std": published.get(f"{c}_std", float("nan")) for c in TABLE_COLUMNS},
                }
            )
    return pd.DataFrame(rows)


def summarize(metrics: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every (method, distance, multiplier, metric)."""
    tidy = pd.concat(list(metrics), ignore_index=True)
    keys = ["method", "distance", "multiplier", "metric"]
    grouped = tidy.groupby(keys, dropna=False)["value"]
    table = grouped.agg(mean="mean", std="std", runs="count").reset_index()
    return table.sort_values(keys, na_position="first").reset_index(drop=True)
