"""The scorecard: one row per paper item (`xsae.registry`), saying whether this run rendered it,
where, and for items with published numbers how far the reproduced cells are from them.

Distances are |reproduced − published| over the cells the rendered tables show side by side
(`registry.table_pairs`); "within spread" counts the cells whose distance is at most the spread
the paper prints beside the number (± over runs), and is left empty where the paper states none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xsae import registry
from xsae.io import atomic_path
from xsae.tables import to_markdown

COLUMNS = ["paper", "item", "title", "rule", "published", "rendered", "status", "where", "cells",
           "max_abs_diff", "median_abs_diff", "within_spread", "note", "item_id"]
NO_RULE = "no rule produces it"
NOT_IN_CONFIG = "not in this config"

FOOTNOTES = (
    "Differences are |reproduced − published| over the cells a rendered table shows beside a "
    "published number; `cells` counts those with both numbers. Cells that are 1 by definition (a "
    "model against itself in the sharedness matrices) are left out; SPARC Table 14 is compared on "
    "its per-stream TopK inference rows, the setting of the published R@1.",
    "`within spread` counts cells within the spread the paper prints beside the number, out of "
    "the cells that have one: the heterogeneity paper's Tables 1–4 give ± (standard deviation over "
    "three runs) for recalls and zero-shot accuracy, not for the MSE columns. It is empty for "
    "SPARC and the sharedness paper, which print one number per cell with no spread (one run "
    "each), and for items without published numbers.",
    "Items with no rule are not rendered by any config; `note` says what they would need. "
    "Published numbers of another dataset or scale are not compared: the embedded default's "
    "tables carry none, so its rows show only whether each counterpart was rendered.",
)


def summarise(pairs: pd.DataFrame) -> dict[str, Any]:
    """Cells with both numbers, largest and median |reproduced − published|, and (when any cell
    has a stated spread) how many of those are within it."""
    both = pairs[pairs["reproduced"].notna() & pairs["published"].notna()]
    distance = (both["reproduced"] - both["published"]).abs().to_numpy(dtype=float)
    spread = both["spread"].to_numpy(dtype=float)
    has_spread = ~np.isnan(spread)
    return {
        "cells": int(distance.size),
        "max_abs_diff": float(distance.max()) if distance.size else math.nan,
        "median_abs_diff": float(np.median(distance)) if distance.size else math.nan,
        "within": int((distance[has_spread] <= spread[has_spread] + 1e-12).sum()),
        "with_spread": int(has_spread.sum()),
        "published_cells": int(pairs["published"].notna().sum()),
    }


def _primary(files: list[str]) -> list[str]:
    """The files a reader opens: a figure's PNG, else a table's CSV."""
    return [f for f in files if f.endswith(".png")] or [f for f in files if f.endswith(".csv")]


def item_row(entry: registry.Item, config: Mapping[str, Any], root: str | Path = ".",
             paper_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The scorecard row of one item."""
    files = registry.item_outputs(entry, config)
    missing = [f for f in files if not (Path(root) / f).is_file()]
    if not entry.produced:
        status = NO_RULE
    elif not files:
        status = NOT_IN_CONFIG
    elif missing:
        status = f"missing {len(missing)} of {len(files)} files"
    else:
        status = "rendered"
    row = {"paper": (paper_names or {}).get(entry.paper, entry.paper), "item": entry.label,
           "title": entry.title, "rule": entry.rule or "", "published": entry.published,
           "rendered": bool(files) and not missing, "status": status,
           "where": ", ".join(_primary(files)), "cells": math.nan, "max_abs_diff": math.nan,
           "median_abs_diff": math.nan, "within_spread": "", "note": entry.note, "item_id": entry.id}
    pairs = list(registry.item_pairs(entry, config, root).values()) if entry.has_reference else []
    if pairs:
        stats = summarise(pd.concat(pairs, ignore_index=True))
        row.update(cells=stats["cells"], max_abs_diff=stats["max_abs_diff"],
                   median_abs_diff=stats["median_abs_diff"])
        if entry.spread and stats["with_spread"]:
            row["within_spread"] = f"{stats['within']} of {stats['with_spread']}"
        extra = ""
        if not stats["published_cells"] and not missing:
            extra = "the rendered tables show no published numbers (the config names no reference)"
        elif stats["cells"] < stats["published_cells"]:
            extra = (f"{stats['published_cells'] - stats['cells']} of {stats['published_cells']} "
                     "published cells have no reproduced value")
        row["note"] = "; ".join(filter(None, [entry.note, extra]))
    return row


def scorecard(config: Mapping[str, Any], root: str | Path = ".",
              path: str | Path = registry.REGISTRY_PATH) -> pd.DataFrame:
    """One row per paper item of the registry, for the files of `config` under `root`."""
    names = {key: paper.name for key, paper in registry.papers(path).items()}
    rows = [item_row(entry, config, root, names) for entry in registry.items(path)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["cells"] = frame["cells"].astype("Int64")
    return frame


def summary_line(card: pd.DataFrame) -> str:
    promised = card["status"].isin([NO_RULE, NOT_IN_CONFIG])
    return (f"{len(card)} paper items: {int(card['rendered'].sum())} rendered, "
            f"{int((~card['rendered'] & ~promised).sum())} promised by this config but not rendered, "
            f"{int((card['status'] == NOT_IN_CONFIG).sum())} not in this config, "
            f"{int((card['status'] == NO_RULE).sum())} produced by no rule.")


def _shown(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(card: pd.DataFrame) -> str:
    """The scorecard as Markdown: a summary line, the table, the footnotes."""
    shown = pd.DataFrame({
        "paper": card["paper"], "item": card["item"],
        "rendered": card["rendered"].map({True: "yes", False: "no"}),
        "status": card["status"], "where": card["where"],
        "cells": card["cells"].map(_shown), "max abs diff [1]": card["max_abs_diff"].map(_shown),
        "median abs diff [1]": card["median_abs_diff"].map(_shown),
        "within spread [2]": card["within_spread"], "note [3]": card["note"],
    })
    notes = "\n".join(f"[{i}] {text}" for i, text in enumerate(FOOTNOTES, start=1))
    return f"{to_markdown(shown, caption=summary_line(card))}\n{notes}\n"


def write(card: pd.DataFrame, csv: str | Path, md: str | Path) -> None:
    """Write the scorecard's CSV and Markdown atomically."""
    with atomic_path(csv) as tmp:
        card.to_csv(tmp, index=False)
    with atomic_path(md) as tmp:
        Path(tmp).write_text(markdown(card), encoding="utf-8")
