"""The sharedness paper's tables from pair scores: source × target matrices (Tables 1, 2, 7–26),
modality averages (Table 3), layer × layer maps (Figure 1), the shuffle test (Appendix C) and the
per-layer SAEs' held-out reconstruction, each beside the published numbers where given.

Pair scores are the tidy rows `xsae.sharedness_runs.compare_models` writes (`PAIR_COLUMNS`). This
module needs only pandas, so renderers run without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xsae.errors import DataError

#: How a table names the layers it scores (pair-score scopes; xsae.metrics.sharedness.all_layers_score).
SCOPE_NAMES = {"all": "All", "all_pooled": "All (pooled)", "last": "Last"}
SCOPE_CAPTIONS = {"all": "all layers, the source's layers averaged by feature count as in the authors' code",
                  "all_pooled": "all layers, pooled over every feature of the source's layers",
                  "last": "last layer"}
PAIR_COLUMNS = ["source", "target", "scope", "layer_source", "layer_target", "metric", "value", "n_samples"]
#: Scores of a pair: metric name → weighting of `xsae.metrics.sharedness` (wMPPC by activation
#: mass S_i, Eq. 3; MPPC uniform, Eq. 1).
METRICS = {"wmppc": "mass", "mppc": "uniform"}
WEIGHTING_METRIC = {weighting: metric for metric, weighting in METRICS.items()}
#: how tables, captions and figures write each metric
METRIC_NAMES = {"wmppc": "wMPPC", "mppc": "MPPC"}
MODALITY_PAIRS = (("image", "image"), ("image", "text"), ("text", "image"), ("text", "text"))
MODALITY_NAMES = {"image": "Image", "text": "Text"}


def reconstruction_summary(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per per-layer SAE: NMSE on its training tokens (last logged interval) and on the
    compared vectors, their ratio, R² and dead latents there (a check of the SAEs before reading
    their comparisons: a ratio above 2 means the compared vectors are not what it learned)."""
    tidy = pd.concat(list(frames), ignore_index=True)
    keys = [c for c in ("dataset", "model", "layer", "width", "n_latents") if c in tidy.columns]
    wide = tidy.pivot_table(index=keys, columns="metric", values="value", aggfunc="first",
                            sort=False).reset_index()
    wide.columns.name = None
    for missing in {"train_nmse", "nmse_ratio"} - set(wide.columns):  # files written before the guard
        wide[missing] = float("nan")
    columns = {"train_nmse": "train NMSE", "nmse": "NMSE", "nmse_ratio": "NMSE ratio", "r2": "R²",
               "dead_fraction": "dead (%)", "n_samples": "test samples"}
    wide["dead_fraction"] = 100 * wide["dead_fraction"]
    wide["n_samples"] = wide["n_samples"].astype(int)
    return wide[[*keys, *columns]].rename(columns={**columns, "n_latents": "L"})


def score(scores: pd.DataFrame, source: str, target: str, scope: str, metric: str) -> float:
    """One score from pair rows; a model against itself is 1 (ρ_i = 1 for every active feature,
    the '1' on the paper's diagonals)."""
    if source == target:
        return 1.0
    hit = scores[(scores["source"] == source) & (scores["target"] == target) & (scores["scope"] == scope)
                 & (scores["metric"] == metric)]
    if hit.empty:
        raise DataError(f"no {metric} ({scope}) of {source} → {target} among the pair results")
    return float(hit["value"].iloc[0])


def _published(reference: Mapping[str, Any] | None, *keys: str) -> Any:
    entry: Any = reference or {}
    for key in keys:
        entry = entry.get(key) if isinstance(entry, Mapping) else None
        if entry is None:
            return None
    return entry


def matrix_table(scores: pd.DataFrame, sources: Sequence[str], targets: Sequence[str], *,
                 labels: Mapping[str, str], modalities: Mapping[str, str], scope: str, metric: str,
                 reference: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Source rows × target columns (Tables 1, 2, 7–26), labelled as in the paper.

    With `reference` (label → label → value, the published table), each source that the paper
    lists gets a "paper" row and a "difference" (reproduced − paper) row below its own.
    """
    columns = [labels[t] for t in targets]
    rows = []
    for source in sources:
        reproduced = [score(scores, source, target, scope, metric) for target in targets]
        head = {"modality": MODALITY_NAMES[modalities[source]], "source": labels[source]}
        rows.append({**head, "numbers": "reproduced", **dict(zip(columns, reproduced, strict=True))})
        published = _published(reference, labels[source])
        if published is None:
            continue
        paper = [float(published.get(column, math.nan)) for column in columns]
        rows.append({**head, "numbers": "paper", **dict(zip(columns, paper, strict=True))})
        rows.append({**head, "numbers": "difference",
                     **{c: r - p for c, r, p in zip(columns, reproduced, paper, strict=True)}})
    return pd.DataFrame(rows, columns=["modality", "source", "numbers", *columns])


def modality_averages(scores: pd.DataFrame, models: Sequence[str], *, modalities: Mapping[str, str],
                      encoder_of: Mapping[str, tuple[str, str]], scope: str, metric: str
                      ) -> dict[tuple[str, str], float]:
    """Table 3: mean score over ordered pairs of distinct encoders by (source, target) modality;
    NaN where no such pair exists."""
    means = {}
    for source_modality, target_modality in MODALITY_PAIRS:
        values = [score(scores, a, b, scope, metric) for a in models for b in models
                  if encoder_of[a] != encoder_of[b] and modalities[a] == source_modality
                  and modalities[b] == target_modality]
        means[source_modality, target_modality] = float(np.mean(values)) if values else math.nan
    return means


def average_table(rows: Sequence[tuple[Mapping[str, Any], pd.DataFrame]], *,
                  modalities: Mapping[str, str], encoder_of: Mapping[str, tuple[str, str]], metric: str,
                  reference: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Table 3 from (row spec, its dataset's pair scores): one row per spec, with the published
    row ("paper", keyed by layers then label) and the difference where it exists."""
    names = {pair: f"{MODALITY_NAMES[pair[0]]} → {MODALITY_NAMES[pair[1]]}" for pair in MODALITY_PAIRS}
    out = []
    for spec, scores in rows:
        means = modality_averages(scores, spec["models"], modalities=modalities, encoder_of=encoder_of,
                                  scope=spec["layers"], metric=metric)
        head = {"layers": SCOPE_NAMES[spec["layers"]], "dataset": spec["label"]}
        out.append({**head, "numbers": "reproduced", **{names[p]: v for p, v in means.items()}})
        published = _published(reference, spec["layers"], spec["label"])
        if published is None:
            continue
        paper = {p: float(published.get(f"{p[0]}_{p[1]}", math.nan)) for p in MODALITY_PAIRS}
        out.append({**head, "numbers": "paper", **{names[p]: v for p, v in paper.items()}})
        out.append({**head, "numbers": "difference",
                    **{names[p]: means[p] - paper[p] for p in MODALITY_PAIRS}})
    return pd.DataFrame(out, columns=["layers", "dataset", "numbers", *names.values()])


def layerwise_matrix(scores: pd.DataFrame, source: str, target: str, metric: str = "wmppc") -> pd.DataFrame:
    """Figure 1: `[layers of source, layers of target]` scores of source → target."""
    part = scores[(scores["source"] == source) & (scores["target"] == target) & (scores["scope"] == "layer")
                  & (scores["metric"] == metric)]
    if part.empty:
        raise DataError(f"no layer-wise {metric} of {source} → {target} among the pair results")
    matrix = part.pivot(index="layer_source", columns="layer_target", values="value")
    return matrix.sort_index().sort_index(axis=1)


def shuffle_table(result: Mapping[str, float], *, source: str, target: str, metric: str,
                  reference: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Appendix C's numbers: unshuffled and shuffled scores, beside the paper's where given."""
    rows = [{"numbers": "reproduced", "source": source, "target": target, "metric": metric,
             "unshuffled": result["observed"], "shuffled (mean)": result["shuffled_mean"],
             "shuffled (max)": result["shuffled_max"], "p-value": result["p_value"],
             "permutations": int(result["n_permutations"]), "samples": int(result["n_samples"])}]
    if reference:
        rows.append({"numbers": "paper", "source": reference.get("source", ""),
                     "target": reference.get("target", ""), "metric": metric,
                     "unshuffled": float(reference.get("unshuffled", math.nan)),
                     "shuffled (mean)": float(reference.get("shuffled", math.nan)),
                     "shuffled (max)": math.nan, "p-value": math.nan, "permutations": None, "samples": None})
    return pd.DataFrame(rows)


def read_pair_scores(paths: Iterable[str | Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: pair scores not found; run the sharedness_pair rule for it")
        frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_COLUMNS)
