"""Tables: one DataFrame rendered as CSV (for machines), Markdown (for reading) and LaTeX (for papers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from xsae.io import atomic_path

FORMATS = ("csv", "md", "tex")


def _formatters(frame: pd.DataFrame, digits: int) -> dict:
    return {c: (lambda v, d=digits: f"{v:.{d}f}") for c in frame.columns
            if pd.api.types.is_float_dtype(frame[c])}


def to_markdown(frame: pd.DataFrame, caption: str = "", digits: int = 3) -> str:
    shown = frame.copy()
    for column, fmt in _formatters(frame, digits).items():
        shown[column] = shown[column].map(fmt)
    body = shown.to_markdown(index=False, disable_numparse=True)
    return (f"{caption}\n\n{body}\n" if caption else f"{body}\n")


def to_latex(frame: pd.DataFrame, caption: str = "", label: str = "", digits: int = 3) -> str:
    """Cells and headers are escaped; the caption is LaTeX source, so it may carry markup."""
    styler = frame.style.hide(axis="index").format(precision=digits, escape="latex")
    styler = styler.format_index(escape="latex", axis=1)
    return styler.to_latex(caption=caption or None, label=label or None, hrules=True,
                           position_float="centering")


def render(frame: pd.DataFrame, outputs: Mapping[str, str | Path], *, caption: str = "",
           label: str = "", digits: int = 3) -> None:
    """Write `frame` in every format named in `outputs` (keys among csv, md, tex), atomically."""
    unknown = set(outputs) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown table formats {sorted(unknown)}; use {FORMATS}")
    writers = {
        "csv": lambda path: frame.to_csv(path, index=False),
        "md": lambda path: Path(path).write_text(to_markdown(frame, caption, digits), encoding="utf-8"),
        "tex": lambda path: Path(path).write_text(to_latex(frame, caption, label, digits),
                                                  encoding="utf-8"),
    }
    for kind, path in outputs.items():
        with atomic_path(path) as tmp:
            writers[kind](tmp)


RECONSTRUCTION_COLUMNS = {
    "nmse": "NMSE", "r2": "R²", "dead_latents": "dead latents", "dead_fraction": "dead (%)",
}


def reconstruction_table(metrics: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per run × stream (self-reconstruction) from tidy reconstruction metrics."""
    tidy = pd.concat(list(metrics), ignore_index=True)
    if "source" in tidy.columns:
        tidy = tidy[tidy["source"] == tidy["stream"]].drop(columns="source")
    keys = [c for c in ("run", "method", "dataset", "split", "stream", "n_latents", "k")
            if c in tidy.columns]
    wide = tidy.pivot_table(index=keys, columns="metric", values="value", aggfunc="first",
                            sort=False).reset_index()
    wide["dead_fraction"] = 100 * wide["dead_fraction"]
    wide["dead_latents"] = wide["dead_latents"].astype(int)
    wide["n_samples"] = wide["n_samples"].astype(int)
    columns = [*keys, "n_samples", *RECONSTRUCTION_COLUMNS]
    table = wide[columns].rename(columns={**RECONSTRUCTION_COLUMNS, "n_samples": "samples",
                                          "n_latents": "L"})
    table.columns.name = None
    return table
