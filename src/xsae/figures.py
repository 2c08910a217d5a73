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

from xsae.images import load_rgb
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
        ax.imshow(load_rgb(sample["image_path"]))
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


SWEEP_LABELS = {"n_latents": "number of latents L", "k": "active latents k",
                "cross_weight": "cross-reconstruction weight λ", "lr": "learning rate η"}


def sweep_table(members: Sequence[dict], metrics: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean self and cross NMSE (over streams / ordered pairs) of each run of a sweep."""
    rows = []
    for member, tidy in zip(members, metrics, strict=True):
        nmse = tidy[tidy["metric"] == "nmse"]
        is_self = nmse["stream"] == nmse["source"]
        rows.append({"value": member["value"], "topk": member["topk"], "run": member["run"],
                     "self_nmse": nmse.loc[is_self, "value"].mean(),
                     "cross_nmse": nmse.loc[~is_self, "value"].mean()})
    return pd.DataFrame(rows).sort_values(["topk", "value"]).reset_index(drop=True)


def sweep_figure(table: pd.DataFrame, parameter: str, title: str = "") -> plt.Figure:
    """SPARC Figures 6–10: self/cross NMSE against the swept parameter, Global dashed and Local
    solid; with both modes, a second panel shows the Global-vs-Local gap (Figure 7): the self cost
    (Global − Local self NMSE) and the cross gain (Local − Global cross NMSE)."""
    modes = sorted(set(table["topk"]))
    both = {"global", "local"} <= set(modes)
    figure, axes = plt.subplots(1, 2 if both else 1, figsize=(11 if both else 5.5, 3.6),
                                constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    for mode in modes:
        part = table[table["topk"] == mode]
        style = "--" if mode == "global" else "-"
        ax.plot(part["value"], part["self_nmse"], style, marker="o", color="C0", label=f"{mode} self")
        if part["cross_nmse"].notna().any():
            ax.plot(part["value"], part["cross_nmse"], style, marker="s", color="C3", label=f"{mode} cross")
    ax.set_xlabel(SWEEP_LABELS.get(parameter, parameter))
    ax.set_ylabel("NMSE (mean over streams / pairs)")
    if parameter in ("lr", "cross_weight", "n_latents", "k") and (table["value"] > 0).all():
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if both:
        merged = table[table["topk"] == "global"].merge(table[table["topk"] == "local"], on="value",
                                                        suffixes=("_global", "_local"))
        gap = axes[0, 1]
        gap.plot(merged["value"], merged["self_nmse_global"] - merged["self_nmse_local"], marker="o",
                 label="self cost (Global − Local)")
        gap.plot(merged["value"], merged["cross_nmse_local"] - merged["cross_nmse_global"], marker="s",
                 label="cross gain (Local − Global)")
        gap.axhline(0, color="0.5", lw=0.8)
        gap.set_xlabel(SWEEP_LABELS.get(parameter, parameter))
        gap.set_ylabel("NMSE difference")
        if (merged["value"] > 0).all():
            gap.set_xscale("log")
        gap.grid(alpha=0.3)
        gap.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def _image_tile(ax: plt.Axes, image_path: str | None, title: str | None = None, fontsize: float = 6) -> None:
    """One cell of an image grid: the image under a small title, or an empty frame without one."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image_path is None:
        for spine in ax.spines.values():
            spine.set_visible(False)
        return
    ax.imshow(load_rgb(image_path))
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def pick_latents(top: pd.DataFrame, n: int) -> list[int]:
    """Latents worth showing: active in every stream, with the largest total top activation."""
    streams = top["stream"].nunique()
    per_latent = top.groupby("latent").agg(streams=("stream", "nunique"), mass=("value", "sum"))
    shared = per_latent[per_latent["streams"] == streams]
    chosen = (shared if len(shared) else per_latent).sort_values("mass", ascending=False)
    return chosen.index[:n].tolist()


def read_top_activations(path: str | Path) -> pd.DataFrame:
    """A top-activations table as written, sample ids as text: COCO's "000000262110" read as a
    number would match no manifest row."""
    return pd.read_csv(path, dtype={"sample_id": str})


def top_activations_figure(top: pd.DataFrame, manifest: pd.DataFrame, latents: Sequence[int],
                           per_stream: int = 5, title: str = "") -> plt.Figure:
    """SPARC Figures 3, 11–13: for each latent, its top samples in each stream (image and caption)."""
    streams = list(dict.fromkeys(top["stream"]))
    rows = len(latents) * len(streams)
    figure, axes = plt.subplots(rows, per_stream, figsize=(1.9 * per_stream, 2.15 * rows),
                                constrained_layout=True, squeeze=False)
    by_id = manifest.set_index("sample_id")
    for li, latent in enumerate(latents):
        for si, stream in enumerate(streams):
            r = li * len(streams) + si
            hits = top[(top["latent"] == latent) & (top["stream"] == stream)].sort_values("rank")
            for c in range(per_stream):
                ax = axes[r, c]
                if c == 0:
                    ax.set_ylabel(f"latent {latent}\n{stream}", fontsize=8)
                if c >= len(hits):
                    _image_tile(ax, None)
                    continue
                hit = hits.iloc[c]
                sample = by_id.loc[hit["sample_id"]]
                caption = "\n".join(textwrap.wrap(sample["caption"], 22)[:2])
                _image_tile(ax, sample["image_path"], f"{caption}\n{hit['value']:.3f}", fontsize=6)
    if title:
        figure.suptitle(title)
    return figure


# ---- heterogeneity paper, synthetic experiments ------------------------------------------------
SYNTHETIC_LABELS = {
    "reconstruction_error": "reconstruction error",
    "feature_recovery_error": "feature recovery error",
    "latent_alignment_error": "latent alignment error",
    "feature_alignment_error": "feature alignment error",
    "feature_collapse_rate": "feature collapse rate",
}
SYNTHETIC_STYLE = {  # colours of the paper's figures
    "shared": ("shared SAE", "tab:green"),
    "modality_specific": ("modality-specific SAEs", "goldenrod"),
    "post_hoc": ("post-hoc alignment", "tab:orange"),
    "iso_energy": ("Iso-Energy alignment", "teal"),
    "group_sparse": ("group-sparse loss", "tab:blue"),
}


def _synthetic_rows(table: pd.DataFrame, metric: str, method: str) -> pd.DataFrame:
    part = table[(table["metric"] == metric) & (table["method"] == method)]
    return part.sort_values("distance")


def synthetic_distance_figure(table: pd.DataFrame,
                              metrics: Sequence[str] = ("feature_collapse_rate", "reconstruction_error",
                                                        "feature_recovery_error")) -> plt.Figure:
    """Figure 5: shared vs modality-specific SAEs against the cosine distance of paired concepts;
    mean over seeds with ± one standard deviation shaded."""
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), constrained_layout=True,
                                squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in ("shared", "modality_specific"):
            rows = _synthetic_rows(table, metric, method)
            if rows.empty:
                continue
            label, colour = SYNTHETIC_STYLE[method]
            std = rows["std"].fillna(0)
            ax.plot(rows["distance"], rows["mean"], marker="o", color=colour, label=label)
            ax.fill_between(rows["distance"], rows["mean"] - std, rows["mean"] + std, color=colour, alpha=0.2)
        ax.set_xlabel("cosine distance between paired concept directions")
        ax.set_title(SYNTHETIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return figure


def synthetic_lambda_figure(table: pd.DataFrame, distance: float,
                            metrics: Sequence[str] = ("feature_recovery_error", "latent_alignment_error",
                                                      "feature_alignment_error")) -> plt.Figure:
    """Figure 6: alignment losses against their weight multiplier (log scale), with the shared,
    modality-specific and post-hoc aligned SAEs, which have no λ, as horizontal bands."""
    at = table[np.isclose(table["distance"], distance)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), constrained_layout=True,
                                squeeze=False)
    losses = sorted({m.rsplit("_x", 1)[0] for m in at["method"] if "_x" in m})
    for ax, metric in zip(axes[0], metrics, strict=True):
        for loss in losses:
            rows = at[(at["metric"] == metric) & at["method"].str.startswith(f"{loss}_x")]
            rows = rows.sort_values("multiplier")
            label, colour = SYNTHETIC_STYLE.get(loss, (loss, None))
            std = rows["std"].fillna(0)
            ax.plot(rows["multiplier"], rows["mean"], marker="o", color=colour, label=label)
            ax.fill_between(rows["multiplier"], rows["mean"] - std, rows["mean"] + std, color=colour,
                            alpha=0.2)
        for method in ("shared", "modality_specific", "post_hoc"):
            rows = _synthetic_rows(at, metric, method)
            if rows.empty:
                continue
            label, colour = SYNTHETIC_STYLE[method]
            mean, std = float(rows["mean"].iloc[0]), float(rows["std"].fillna(0).iloc[0])
            ax.axhline(mean, color=colour, ls="--", label=label)
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("λ / default λ")
        ax.set_title(SYNTHETIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(f"cosine distance {distance:g}")
    return figure


# ---- heterogeneity paper, real-data comparisons ------------------------------------------------
COMPARISON_STYLE = {
    "shared": ("shared SAE", "tab:green"),
    "shared_iso_energy": ("+ Iso-Energy", "teal"),
    "shared_group_sparse": ("+ group-sparse", "tab:blue"),
    "modality_specific": ("modality-specific SAEs", "goldenrod"),
    "modality_specific_post_hoc": ("+ post-hoc alignment", "tab:orange"),
}


def steering_summary(steering: pd.DataFrame) -> pd.DataFrame:
    """Mean mAP and MRR over concepts (skipped concepts excluded), then mean and std over seeds."""
    scored = steering[steering["latent"] >= 0] if "latent" in steering else steering
    per_seed = scored.groupby(["method", "seed", "alpha"], as_index=False)[["mAP", "MRR"]].mean()
    summary = per_seed.groupby(["method", "alpha"], as_index=False).agg(
        mAP=("mAP", "mean"), mAP_std=("mAP", "std"), MRR=("MRR", "mean"), MRR_std=("MRR", "std"),
        seeds=("seed", "nunique"))
    return summary


def steering_figure(summary: pd.DataFrame) -> plt.Figure:
    """Figure 7: mAP and MRR against the steering strength α, one line per method."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for ax, metric in zip(axes, ("mAP", "MRR"), strict=True):
        for method, rows in summary.groupby("method", sort=False):
            label, colour = COMPARISON_STYLE.get(method, (method, None))
            rows = rows.sort_values("alpha")
            std = rows[f"{metric}_std"].fillna(0)
            ax.plot(rows["alpha"], rows[metric], marker="o", color=colour, label=label)
            ax.fill_between(rows["alpha"], rows[metric] - std, rows[metric] + std, color=colour, alpha=0.15)
        ax.set_xlabel("steering strength α")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return figure


def monosemanticity_figure(curves: pd.DataFrame) -> plt.Figure:
    """Figure 8: sorted monosemanticity scores per method (first seed), image and text panels."""
    modalities = [m for m in ("image", "text") if m in set(curves.get("modality", []))]
    figure, axes = plt.subplots(1, max(len(modalities), 1), figsize=(4.5 * max(len(modalities), 1), 3.4),
                                constrained_layout=True, squeeze=False)
    for ax, modality in zip(axes[0], modalities, strict=False):
        part = curves[curves["modality"] == modality]
        for method, rows in part.groupby("method", sort=False):
            rows = rows[rows["seed"] == rows["seed"].min()].sort_values("rank")
            label, colour = COMPARISON_STYLE.get(method, (method, None))
            # Post-hoc alignment only re-indexes latents: its curve lies on its unaligned twin's.
            ax.plot(rows["rank"], rows["score"], color=colour, label=label,
                    ls="--" if method.endswith("_post_hoc") else "-")
        ax.set_xlabel("latent (sorted)")
        ax.set_ylabel("monosemanticity score")
        ax.set_title(modality)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return figure


def decoder_directions_figure(tables: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Figure 2/9: per run, the distribution of cosine distances between image and text decoder
    directions, one density per coactivation-correlation band."""
    figure, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.2), constrained_layout=True,
                                squeeze=False, sharey=True)
    edges = np.linspace(0, 2, 81)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        for colour, (band, rows) in enumerate(table.groupby("bin", sort=True)):
            if len(rows) > 1:
                shade = plt.cm.viridis(colour / max(table["bin"].nunique() - 1, 1))
                ax.hist(rows["cosine_distance"], bins=edges, density=True, histtype="step", lw=1.4,
                        color=shade, label=f"c ∈ {band}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("cosine distance of decoder directions")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("density")
    axes[0, -1].legend(fontsize=7)
    return figure


# ---- sharedness paper ------------------------------------------------------------------------------
def layerwise_heatmaps(panels: Sequence[tuple[str, pd.DataFrame]], metric: str = "wMPPC") -> plt.Figure:
    """Figure 1: one heatmap per (title, `[layers of source, layers of target]` matrix), rows =
    source layers from the input upwards, on one shared colour scale."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), constrained_layout=True,
                                squeeze=False)
    finite = [m.to_numpy(dtype=float) for _, m in panels]
    high = max(1e-9, max(float(np.nanmax(m)) if np.isfinite(m).any() else 0.0 for m in finite))
    image = None
    for ax, (title, matrix) in zip(axes[0], panels, strict=True):
        image = ax.imshow(matrix.to_numpy(dtype=float), origin="lower", cmap="viridis", vmin=0, vmax=high,
                          aspect="auto")
        ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], fontsize=7)
        ax.set_yticks(range(matrix.shape[0]), [str(i) for i in matrix.index], fontsize=7)
        ax.set_xlabel(f"layer of {matrix.attrs.get('target', 'target')}")
        ax.set_ylabel(f"layer of {matrix.attrs.get('source', 'source')}")
        ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label=metric)
    return figure


def comparative_features_figure(top: pd.DataFrame, manifest: pd.DataFrame, ranking: pd.DataFrame,
                                n_images: int, title: str = "") -> plt.Figure:
    """Figures 2–4: for each chosen feature (rows of `top`, best Δ first), its top-activating
    samples with their codes, captioned with the feature's Δ and ρ towards each group."""
    features = list(dict.fromkeys(top["feature"].astype(int)))
    if not features:
        figure, ax = plt.subplots(figsize=(6, 1.2))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no feature with positive Comparative Sharedness", ha="center", va="center")
        return figure
    columns = min(n_images, 10)
    rows_per_feature = int(np.ceil(n_images / columns))
    figure, axes = plt.subplots(len(features) * rows_per_feature, columns,
                                figsize=(1.5 * columns, 1.75 * rows_per_feature * len(features) + 0.4),
                                constrained_layout=True, squeeze=False)
    by_id = manifest.set_index("sample_id")
    by_feature = ranking.set_index("feature")
    for f, feature in enumerate(features):
        hits = top[top["feature"] == feature].sort_values("rank")
        facts = by_feature.loc[feature]
        for i in range(rows_per_feature * columns):
            ax = axes[f * rows_per_feature + i // columns, i % columns]
            if i == 0:
                ax.set_ylabel(f"feature {feature} (rank {int(facts['rank'])})\n"
                              f"Δ={facts['sharedness']:.3g}\nmin ρ G={facts['min_rho_shared']:.2f}\n"
                              f"max ρ H={facts['max_rho_not_shared']:.2f}", fontsize=6)
            if i >= len(hits) or i >= n_images:
                _image_tile(ax, None)
                continue
            hit = hits.iloc[i]
            sample = by_id.loc[hit["sample_id"]]
            caption = "\n".join(textwrap.wrap(str(sample["caption"]), 20)[:2])
            _image_tile(ax, sample["image_path"],
                        f"{caption}\n{hit['value']:.2f}" if rows_per_feature == 1 else None, fontsize=5)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
