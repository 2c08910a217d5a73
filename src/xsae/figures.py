"""Figures: PNG (for the report) and PDF (for papers) of the same matplotlib figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from xsae.io import atomic_path


def save(figure: plt.Figure, png: str | Path, pdf: str | Path | None = None, dpi: int = 150) -> None:
    for path, kwargs in ((png, {"dpi": dpi}), (pdf, {})):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix.lstrip("."), bbox_inches="tight", **kwargs)
    plt.close(figure)


def training_curves(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Self-NMSE per stream, AuxK loss and dead latents against training step."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4), constrained_layout=True)
    panels = (("self_nmse/", "self-reconstruction NMSE", True), ("auxk/", "AuxK loss", False),
              ("dead_latents/", "dead latents", False))
    for ax, (prefix, label, log_y) in zip(axes, panels, strict=True):
        for column in [c for c in history.columns if c.startswith(prefix)]:
            ax.plot(history["step"], history[column], label=column.removeprefix(prefix))
        if "cross_nmse/mean" in history and prefix == "self_nmse/":
            ax.plot(history["step"], history["cross_nmse/mean"], "--", label="cross (mean)")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if log_y and (history.filter(like=prefix) > 0).all().all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def dataset_overview(splits: Mapping[str, pd.DataFrame], n_examples: int = 12, seed: int = 0,
                     title: str = "") -> plt.Figure:
    """Sample images with their captions, and sample counts per top-level category and split."""
    table = pd.concat([t.assign(split=s) for s, t in splits.items()], ignore_index=True)
    rng = np.random.default_rng(seed)
    picks = table.iloc[np.sort(rng.choice(len(table), size=min(n_examples, len(table)),
                                          replace=False))]
    columns = min(6, len(picks))
    rows = int(np.ceil(len(picks) / columns))
    figure = plt.figure(figsize=(2.4 * columns, 2.9 * rows + 3.6), constrained_layout=True)
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[2.9] * rows + [3.6])
    for i, (_, sample) in enumerate(picks.iterrows()):
        ax = figure.add_subplot(grid[i // columns, i % columns])
        with Image.open(sample["image_path"]) as image:
            rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        ax.imshow(Image.alpha_composite(canvas, rgba).convert("RGB"))
        ax.set_axis_off()
        ax.set_title("\n".join(textwrap.wrap(sample["caption"], 28)[:3]), fontsize=7)
        ax.text(0.5, -0.04, sample["category"], transform=ax.transAxes, ha="center", va="top",
                fontsize=6, color="0.4")
    counts = (table.assign(top=table["category"].str.split("/").str[0])
              .groupby(["top", "split"]).size().unstack(fill_value=0))
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index]
    ax = figure.add_subplot(grid[rows, :])
    bottom = np.zeros(len(counts))
    for split in counts.columns:
        ax.bar(counts.index, counts[split], bottom=bottom, label=split)
        bottom += counts[split].to_numpy()
    ax.set_ylabel("samples")
    ax.set_title("samples per top-level category")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def category_counts(splits: Mapping[str, pd.DataFrame], depth: int = 1) -> pd.DataFrame:
    """Samples per category (at `depth` levels) and split, as the overview figure shows them."""
    frames: Sequence[pd.DataFrame] = [t.assign(split=s) for s, t in splits.items()]
    table = pd.concat(frames, ignore_index=True)
    table["label"] = table["category"].str.split("/").str[:depth].str.join("/")
    return table.groupby(["label", "split"]).size().unstack(fill_value=0).reset_index()
