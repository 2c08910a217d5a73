"""Tables: one DataFrame rendered as CSV (for machines), Markdown (for reading) and LaTeX (for papers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from xsae.io import atomic_path

FORMATS = ("csv", "md", "tex")


def _formatters(frame: pd.DataFrame, digits: int) -> dict:
    return {c: (lambda v, d=digits: "" if pd.isna(v) else f"{v:.{d}f}") for c in frame.columns
            if pd.api.types.is_float_dtype(frame[c])}


def to_markdown(frame: pd.DataFrame, caption: str = "", digits: int = 3) -> str:
    shown = frame.copy()
    for column, fmt in _formatters(frame, digits).items():
        shown[column] = shown[column].map(fmt)
    body = shown.to_markdown(index=False, disable_numparse=True)
    return (f"{caption}\n\n{body}\n" if caption else f"{body}\n")


def to_latex(frame: pd.DataFrame, caption: str = "", label: str = "", digits: int = 3) -> str:
    """Cells and headers are escaped; the caption is LaTeX source, so it may carry markup."""
    styler = frame.style.hide(axis="index").format(precision=digits, escape="latex", na_rep="")
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


# ---- SPARC tables ---------------------------------------------------------------------------
SPARC_TABLES = ("table1_activation_patterns", "table2_jaccard", "table3_r2", "table4_probe_loss",
                "table14_retrieval_r1")
SPARC_CAPTIONS = {
    "table1_activation_patterns": "Activation patterns across streams and dead latents per stream (%).",
    "table2_jaccard": "Mean generalized Jaccard similarity of concept profiles.",
    "table3_r2": "R² of reconstructing each target stream (rows) from each source stream's codes (columns).",
    "table4_probe_loss": "Mean test loss of the best 1-D probe per task.",
    "table14_retrieval_r1": "Latent retrieval R@1 for every ordered pair of streams.",
}
#: The dataset of SPARC's published Tables 1–4 (and of its appendix's R² tables).
TABLES_1_TO_4_DATASET = "open_images"
CONFIGURATIONS = {"global_l1": ("Global", 1.0), "global_l0": ("Global", 0.0),
                  "local_l1": ("Local", 1.0), "local_l0": ("Local", 0.0)}


def _value(tidy: pd.DataFrame, metric: str, **fields) -> float:
    mask = tidy["metric"] == metric
    for key, wanted in fields.items():
        mask &= tidy[key].fillna("") == wanted
    values = tidy.loc[mask, "value"]
    return float(values.iloc[0]) if len(values) else float("nan")


def _configuration_columns(label: str, source: str) -> dict:
    topk, lam = CONFIGURATIONS[label]
    return {"TopK": topk, "λ": f"{lam:g}", "source": source}


def read_reference(paths: Sequence[str | Path], key: str | None = None) -> dict | None:
    """The published numbers of a rule's optional `reference` input (a YAML file): the whole
    document, or with `key` its entry at that dotted key ({} where absent); None without input."""
    if not paths:
        return None
    import yaml

    with open(paths[0], encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    return document if key is None else reference_entry(document, key)


def reference_entry(reference: dict | None, key: str) -> dict:
    """The entry of `reference` at a dotted `key` (e.g. "appendix_r2.clip"); {} where absent."""
    entry: Any = reference or {}
    for part in key.split("."):
        entry = entry.get(part, {}) if isinstance(entry, dict) else {}
    return entry if isinstance(entry, dict) else {}


def sparc_tables(metrics: dict[str, pd.DataFrame], stream_names: list[str],
                 reference: dict | None = None, aliases: dict[str, str] | None = None,
                 reference_dataset: str | None = None,
                 r2_reference: str = "table3_r2") -> dict[str, pd.DataFrame]:
    """SPARC Tables 1–4 and 14 from the tidy metrics of each configuration (global_l1, ...).

    With `reference` (config/reference/sparc.yaml), published values appear as rows with
    source "paper"; `aliases` maps this config's stream names to the paper's. The R² matrix is
    compared with the published one at `r2_reference` (Table 3 by default; the appendix's
    stream-group Tables 7–13 live under `appendix_r2.<group>`), and with its self/cross means at
    `<r2_reference>_means` where the paper printed them.
    """
    aliases = aliases or {}
    paper_name = {s: aliases.get(s, s) for s in stream_names}
    n = len(stream_names)
    pattern_keys = ["all_dead", *[f"{j}/{n}" for j in range(1, n)], "all_alive"]
    pairs = [(s, t) for s in stream_names for t in stream_names if s != t]
    table1, table2, table4, table14 = [], [], [], []
    for label, tidy in metrics.items():
        row = _configuration_columns(label, "reproduced")
        row.update({key: 100 * _value(tidy, "activation_pattern", variant=key) for key in pattern_keys})
        row.update({f"dead {s} (%)": 100 * _value(tidy, "activation_pattern", variant=f"dead_{s}")
                    for s in stream_names})
        table1.append(row)
        table2.append({**_configuration_columns(label, "reproduced"),
                       "Jaccard (top)": _value(tidy, "jaccard", variant="top"),
                       "Jaccard (all active)": _value(tidy, "jaccard", variant="all_active")})
        table4.append({**_configuration_columns(label, "reproduced"),
                       **{s: _value(tidy, "probe_loss", stream=s) for s in stream_names}})
        for mode in sorted(set(tidy.loc[tidy["metric"] == "retrieval_R@1", "inference"])):
            if mode == "raw_features":
                continue
            table14.append({**_configuration_columns(label, "reproduced"), "inference": mode,
                            **{f"{s}→{t}": _value(tidy, "retrieval_R@1", inference=mode, source=s,
                                                  target=t) for s, t in pairs}})
    any_metrics = next(iter(metrics.values()))
    raw = {f"{s}→{t}": _value(any_metrics, "retrieval_R@1", inference="raw_features", source=s, target=t)
           for s, t in pairs}
    if any(pd.notna(v) for v in raw.values()):
        table14.append({"TopK": "raw features", "λ": "", "source": "reproduced",
                        "inference": "", **raw})
    # Tables 1–4 were published for Open Images only; Table 14 for Open Images and COCO.
    on_tables_1_to_4 = reference_dataset in (None, TABLES_1_TO_4_DATASET)
    if reference:
        for label in metrics:
            r1 = reference.get("table14_retrieval_r1", {}).get(reference_dataset or "", {}).get(label, {})
            table14.append({**_configuration_columns(label, "paper"), "inference": "",
                            **{f"{s}→{t}": r1.get(f"{paper_name[s]}->{paper_name[t]}", float("nan"))
                               for s, t in pairs}})
            if not on_tables_1_to_4:
                continue
            row = _configuration_columns(label, "paper")
            published = reference.get("table1_activation_patterns", {}).get(label, {})
            row.update({key: published.get(key, float("nan")) for key in pattern_keys})
            row.update({f"dead {s} (%)": published.get(f"dead_{paper_name[s]}", float("nan"))
                        for s in stream_names})
            table1.append(row)
            table2.append({**_configuration_columns(label, "paper"),
                           "Jaccard (top)": reference.get("table2_jaccard", {}).get(label, float("nan")),
                           "Jaccard (all active)": float("nan")})
            probes = reference.get("table4_probe_loss", {}).get(label, {})
            table4.append({**_configuration_columns(label, "paper"),
                           **{s: probes.get(paper_name[s], float("nan")) for s in stream_names}})
    r2_published = reference if on_tables_1_to_4 else None
    return {"table1_activation_patterns": pd.DataFrame(table1), "table2_jaccard": pd.DataFrame(table2),
            "table3_r2": r2_table(metrics, stream_names, reference_entry(r2_published, r2_reference),
                                  reference_entry(r2_published, f"{r2_reference}_means"), paper_name),
            "table4_probe_loss": pd.DataFrame(table4), "table14_retrieval_r1": pd.DataFrame(table14)}


def r2_table(metrics: dict[str, pd.DataFrame], stream_names: list[str],
             published_r2: dict | None = None, published_means: dict | None = None,
             paper_name: dict[str, str] | None = None) -> pd.DataFrame:
    """R²(s→t), rows = targets, one column per (configuration, source), as in SPARC Table 3.

    `published_r2` maps configuration → target → source → value and `published_means`
    configuration → {self, cross}; configurations found there get a "(paper)" column per source.
    """
    paper_name = paper_name or {s: s for s in stream_names}
    published_r2, published_means = published_r2 or {}, published_means or {}
    rows = []
    for target in [*stream_names, "self mean", "cross mean"]:
        row = {"target": target}
        for label, tidy in metrics.items():
            prefix = CONFIGURATIONS[label][0] + f" λ={CONFIGURATIONS[label][1]:g}"
            for source in stream_names:
                if target in stream_names:
                    value = _value(tidy, "r2", source=source, target=target)
                elif source == stream_names[0]:
                    value = _value(tidy, "r2_self_mean" if target == "self mean" else "r2_cross_mean")
                else:
                    value = float("nan")
                row[f"{prefix}: {source}"] = value
                if label in published_r2:
                    matrix, means = published_r2[label], published_means.get(label, {})
                    if target in stream_names:
                        paper = matrix.get(paper_name[target], {}).get(paper_name[source], float("nan"))
                    elif source == stream_names[0]:
                        paper = means.get("self" if target == "self mean" else "cross", float("nan"))
                    else:
                        paper = float("nan")
                    row[f"{prefix}: {source} (paper)"] = paper
        rows.append(row)
    return pd.DataFrame(rows)


# ---- heterogeneity paper -----------------------------------------------------------------------
COMPARISON_CAPTION = ("Reconstruction MSE and image↔text Recall@k (%) in the latent space on the retrieval "
                      "dataset, reconstruction MSE and zero-shot top-1 accuracy (%) on the classification "
                      "dataset; mean and standard deviation (_std) over seeds.")


def comparison_caption(spec: Mapping[str, Any]) -> str:
    """The comparison table's caption, naming the datasets that play each role (its columns are
    named by role: retrieval_*, zero_shot_*)."""
    zero_shot = (spec.get("zero_shot") or {}).get("dataset") or "none"
    return (f"{COMPARISON_CAPTION} Retrieval dataset: {spec['retrieval']}; "
            f"classification dataset: {zero_shot}.")
