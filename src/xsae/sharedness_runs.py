"""The sharedness paper's experiments as config data: per-layer SAEs, their comparison, the tables.

Paper: "Explaining how visual, textual and multi-modal encoders share concepts". Config section
`sharedness` (config/README.md) names *models* (an encoder's modality with its stored layers) and
what to compute from them. Every model gets one TopK SAE per layer and dataset, trained on the
train split; each SAE's actual TopK codes on the global tokens of the compared split
(`sharedness.compare_split`: the held-out test split, or the training samples) are what the
metrics of `xsae.metrics.sharedness` compare:

- a *pair* job computes, for two models on one dataset, ρ_i of every feature of every layer of
  one model against every layer of the other (both directions), and from them the layer × layer
  MPPC / wMPPC map (Figure 1), the all-layers and the last-layer scores (Tables 1–3, 7–26);
- tables pick those scores into source × target matrices or modality averages, beside the
  published numbers;
- Generalized Comparative Sharedness (Eq. 7) ranks one model's last-layer features against two
  groups of models (Figures 2–4), and the shuffle test (Appendix C) compares wMPPC with the
  same after permuting one side's samples.

The section as config data (what the workflow builds its DAG from) is `xsae.sharedness_config`;
the functions here train, encode and compare, on explicit paths, with or without Snakemake.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from xsae.errors import DataError
from xsae.features import StreamRef, read_sample_ids
from xsae.io import atomic_path, read_npz, write_npz
from xsae.metrics.sharedness import (
    MaxCorrelation,
    all_layers_score,
    generalized_comparative_sharedness,
    last_layer_score,
    layerwise_table,
    max_correlation,
    shuffle_null,
)
from xsae.runs import evaluate_reconstruction, normalize_inputs, resolve_device, train_run, write_metrics
from xsae.sae import Codes, SparseAutoencoder, read_metadata
from xsae.sharedness_config import layer_run
from xsae.sharedness_tables import METRICS, PAIR_COLUMNS

log = logging.getLogger(__name__)

#: Compared vectors reconstructed this many times worse than the training tokens get a warning,
#: unless still reconstructed well (NMSE below the floor: the ratio of two tiny errors is noise).
NMSE_GUARD = 2.0
NMSE_FLOOR = 0.05

# ---- per-layer SAEs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCodes:
    """One SAE's TopK codes of every sample of a split: `codes` values/indices `[N, k]`."""

    codes: Codes
    n_latents: int
    sample_ids: list[str]

    @property
    def n_rows(self) -> int:
        return int(self.codes.values.shape[0])


def layer_width(ref: StreamRef) -> int:
    """d of one stored layer, read from the file's metadata without loading the array."""
    read_sample_ids(ref.path)  # the file exists and is a feature file
    with h5py.File(ref.path, "r") as h5:
        if ref.key not in h5 and ref.tokens and f"layers/{ref.modality}/{ref.layer:02d}" in h5:
            raise DataError(f"{ref.path}: no sampled tokens {ref.key!r} (model {ref.name or '?'}); set "
                            "encoders.<name>.layer_tokens > 0 and extract again, or train on global tokens "
                            "(sharedness.training_data: global)")
        if ref.key not in h5:
            layers = sorted(h5.get(f"layers/{ref.modality}", {}).keys())
            raise DataError(f"{ref.path}: no dataset {ref.key!r} (model {ref.name or '?'}); the file stores "
                            f"{len(layers)} {ref.modality} layers ({', '.join(layers) or 'none'}): check "
                            "sharedness.models.<name>.n_layers")
        return int(h5[ref.key].shape[1])


@torch.no_grad()
def encode_layer(weights_path: str | Path, ref: StreamRef, *, input_norm: str, device: str = "auto",
                 batch_size: int = 4096) -> LayerCodes:
    """The SAE's TopK codes of every row of one stored layer (what the paper's metrics compare)."""
    torch_device = resolve_device(device)
    model = SparseAutoencoder.load(weights_path, device=torch_device).eval()
    from xsae.features import load_streams

    (features,), sample_ids = load_streams([ref])
    inputs = normalize_inputs(features, input_norm)
    chunks = []
    for start in range(0, inputs.shape[0], batch_size):  # inputs stay on the CPU, chunks visit the device
        (codes,) = model.encode([inputs[start:start + batch_size].to(torch_device)])
        chunks.append(Codes(codes.values.float().cpu(), codes.indices.cpu()))
    return LayerCodes(Codes.concatenate(chunks), model.config.n_latents, sample_ids)


def write_codes(path: str | Path, layer_codes: LayerCodes) -> None:
    write_npz(path, values=layer_codes.codes.values.numpy().astype(np.float32),
              indices=layer_codes.codes.indices.numpy().astype(np.int64),
              n_latents=np.int64(layer_codes.n_latents),
              sample_ids=np.array(layer_codes.sample_ids, dtype=str))


def read_codes(path: str | Path) -> LayerCodes:
    data = read_npz(path, "codes file", "run the sharedness_sae rule for it",
                    required=("values", "indices", "n_latents", "sample_ids"))
    values, indices = data["values"], data["indices"]
    n_latents, sample_ids = int(data["n_latents"]), data["sample_ids"].tolist()
    if values.shape != indices.shape or values.ndim != 2 or len(sample_ids) != values.shape[0]:
        raise DataError(f"{path}: values {values.shape}, indices {indices.shape} and {len(sample_ids)} "
                        "sample ids do not match")
    return LayerCodes(Codes(torch.from_numpy(values), torch.from_numpy(indices)), n_latents, sample_ids)


def train_layer_sae(entry: Mapping[str, Any], train_ref: StreamRef, test_ref: StreamRef, *,
                    expansion: int, seed: int, device: str, weights_path: str | Path,
                    log_path: str | Path, codes_path: str | Path, reconstruction_path: str | Path,
                    labels: Mapping[str, Any] | None = None, checkpoint_path: str | Path | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Train one layer's TopK SAE (n_latents = expansion × the layer's width) on the train
    features, then write its codes of the test features and its held-out reconstruction rows."""
    width = layer_width(train_ref)
    test_width = layer_width(test_ref)
    if test_width != width:
        raise DataError(f"{test_ref.path}: {test_ref.key} has width {test_width}, the train split's "
                        f"{train_ref.path} has {width}")
    run = layer_run(entry, width, expansion, train_ref.name or train_ref.key)
    start = time.perf_counter()
    summary = train_run(run, [train_ref], seed=seed, device=device, weights_path=weights_path,
                        log_path=log_path, checkpoint_path=checkpoint_path, progress=progress)
    summary["train_seconds"] = round(time.perf_counter() - start, 3)
    train_nmse = final_training_nmse(pd.read_csv(log_path))
    return {**summary, **_encode_test(weights_path, test_ref, width, run, device=device,
                                      codes_path=codes_path, reconstruction_path=reconstruction_path,
                                      labels=labels, train_nmse=train_nmse)}


def adopt_online_sae(online_dir: str | Path, model: str, layer: int, test_ref: StreamRef | None, *,
                     device: str, weights_path: str | Path, log_path: str | Path, codes_path: str | Path,
                     reconstruction_path: str | Path,
                     labels: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The same outputs as `train_layer_sae` for an SAE its encoder's online job trained: its
    weights (a hard link where the file system allows, else a copy) and log, and its codes and
    reconstruction rows of the compared split: of the stored global tokens `test_ref`, or, with
    `test_ref` None, the pooled codes the online job wrote and its reconstruction of their tokens."""
    from xsae.sharedness_online import check_layer_output, history_summary

    weights, history, *pooled = check_layer_output(online_dir, model, layer, pooled=test_ref is None)
    metadata = read_metadata(weights)
    run, trained_width = metadata["run"], metadata["sae_config"]["input_dims"][0]
    if test_ref is not None:
        width = layer_width(test_ref)
        if width != trained_width:
            raise DataError(f"{test_ref.path}: {test_ref.key} has width {width}, the SAE {weights} was "
                            f"trained on width {trained_width}: rerun the sharedness_online job of this "
                            "encoder")
    copies = [(weights, weights_path), (history, log_path)] + ([(pooled[0], codes_path)] if pooled else [])
    for source, target in copies:
        with atomic_path(Path(target)) as tmp:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
    trained = pd.read_csv(history)
    train_nmse = final_training_nmse(trained)
    if test_ref is not None:
        return {**history_summary(trained),
                **_encode_test(weights_path, test_ref, trained_width, run, device=device,
                               codes_path=codes_path, reconstruction_path=reconstruction_path, labels=labels,
                               train_nmse=train_nmse)}
    tally = json.loads(pooled[1].read_text(encoding="utf-8"))  # the online job's record of the tokens
    labels = {**(labels or {}), "width": trained_width, "n_latents": run["n_latents"]}
    stream = metadata["sae_config"]["stream_names"][0]
    metrics = pd.DataFrame([{**labels, "stream": stream, "source": stream, "metric": metric,
                             "value": tally[metric]}
                            for metric in ("nmse", "r2", "dead_latents", "dead_fraction", "n_samples")])
    compared = _write_reconstruction(metrics, reconstruction_path, train_nmse,
                                     f"{model} layer {layer}", "pooled codes of every token")
    return {**history_summary(trained), "width": trained_width, "n_latents": run["n_latents"],
            "n_test": int(tally["n_samples"]), "train_nmse": train_nmse, "compared_nmse": compared}


def final_training_nmse(history: pd.DataFrame) -> float:
    """The NMSE of the last logged interval of training (NaN when nothing was logged)."""
    columns = [c for c in history.columns if c.startswith("self_nmse/")]
    if not columns or history.empty:
        return float("nan")
    return float(history[columns].iloc[-1].mean())


def _encode_test(weights_path: str | Path, test_ref: StreamRef, width: int, run: Mapping[str, Any], *,
                 device: str,
                 codes_path: str | Path, reconstruction_path: str | Path,
                 labels: Mapping[str, Any] | None, train_nmse: float) -> dict[str, Any]:
    """Write the SAE's codes of the test features and its held-out reconstruction rows, with the
    training NMSE beside the compared vectors' NMSE: an SAE reconstructs only the distribution it
    was trained on, so compared vectors that it reconstructs far worse (> `NMSE_GUARD` × and
    above `NMSE_FLOOR`) are not what it learned, and its codes of them say little (a warning)."""
    layer_codes = encode_layer(weights_path, test_ref, input_norm=run["input_norm"], device=device)
    write_codes(codes_path, layer_codes)
    labels = {**(labels or {}), "width": width, "n_latents": run["n_latents"]}
    metrics = evaluate_reconstruction(weights_path, [test_ref], input_norm=run["input_norm"], device=device,
                                      labels=labels)
    compared = _write_reconstruction(metrics, reconstruction_path, train_nmse, test_ref.name or test_ref.key,
                                     test_ref.key)
    return {"width": width, "n_latents": run["n_latents"], "n_test": layer_codes.n_rows,
            "train_nmse": train_nmse, "compared_nmse": compared}


def _write_reconstruction(metrics: pd.DataFrame, path: str | Path, train_nmse: float, name: str,
                          compared_what: str) -> float:
    """The reconstruction rows of the compared vectors with the training NMSE and their ratio
    beside them; warns when the ratio exceeds the guard. Returns the compared vectors' NMSE."""
    compared = float(metrics.loc[metrics["metric"] == "nmse", "value"].iloc[0])
    ratio = compared / train_nmse if train_nmse > 0 else float("nan")
    template = metrics[metrics["metric"] == "nmse"].iloc[0].to_dict()
    extra = pd.DataFrame([{**template, "metric": "train_nmse", "value": train_nmse},
                          {**template, "metric": "nmse_ratio", "value": ratio}])
    write_metrics(pd.concat([metrics, extra], ignore_index=True), path)
    if ratio > NMSE_GUARD and compared > NMSE_FLOOR:
        log.warning("%s: NMSE %.3g on the compared vectors (%s) is %.1f× the %.3g of training: they are not "
                    "the distribution the SAE learned, and their codes say little of its features",
                    name, compared, compared_what, ratio, train_nmse)
    return compared


# ---- comparisons ------------------------------------------------------------------------------
def _check_same_samples(named: Mapping[str, LayerCodes]) -> int:
    """All code sets describe the same samples in the same order; returns N."""
    items = list(named.items())
    first_name, first = items[0]
    for name, other in items[1:]:
        if other.sample_ids != first.sample_ids:
            raise DataError(f"codes of {name} and {first_name} describe different samples "
                            f"({other.n_rows} vs {first.n_rows} rows); both must come from the same "
                            "test manifest: rerun the stale SAE job")
    return first.n_rows


def _max_correlation(a: LayerCodes, b: LayerCodes, options: Mapping[str, Any]) -> MaxCorrelation:
    return max_correlation(a.codes, b.codes, n_features_a=a.n_latents, n_features_b=b.n_latents, **options)


def _direction(layers_a: Mapping[int, LayerCodes], layers_b: Mapping[int, LayerCodes],
               options: Mapping[str, Any]) -> dict[tuple[int, int], MaxCorrelation]:
    pairs = {}
    for layer_a in sorted(layers_a):
        for layer_b in sorted(layers_b):
            pairs[layer_a, layer_b] = _max_correlation(layers_a[layer_a], layers_b[layer_b], options)
    return pairs


def _check_active(pairs: Mapping[tuple[int, int], MaxCorrelation], model: str) -> None:
    for (layer, _), result in pairs.items():
        if float(result.activation_mass.sum()) <= 0:
            raise DataError(f"the SAE of {model} layer {layer} never activates on the compared split: "
                            "wMPPC is undefined; check its training log")


def compare_models(layers_a: Mapping[int, LayerCodes], layers_b: Mapping[int, LayerCodes], *,
                   name_a: str, name_b: str, device: str | torch.device | None = None,
                   chunk_rows: int = 4096, method: str = "auto") -> pd.DataFrame:
    """Every score between two models' per-layer SAEs, both directions (one when a = b).

    Tidy rows (`PAIR_COLUMNS`): scope "layer" (one per layer pair: the map of Figure 1), "all"
    (per layer of the source, ρ_i maximised over every layer of the target, averaged over the
    source's layers; Tables 1, 7, 8) and "last" (last against last; Tables 2, 9, 10); metric
    wmppc (Eq. 2–3) or mppc (Eq. 1). Layers are taken in increasing order.
    """
    if not layers_a or not layers_b:
        raise ValueError("each model needs at least one layer of codes")
    n_samples = _check_same_samples({f"{name_a} layer {la}": c for la, c in layers_a.items()}
                                    | {f"{name_b} layer {lb}": c for lb, c in layers_b.items()})
    options = {"device": resolve_device("auto") if device in (None, "auto") else device,
               "chunk_rows": chunk_rows, "method": method}
    directions = [(name_a, layers_a, name_b, layers_b)]
    if name_a != name_b:
        directions.append((name_b, layers_b, name_a, layers_a))
    rows = []
    for source, layers_source, target, layers_target in directions:
        pairs = _direction(layers_source, layers_target, options)
        _check_active(pairs, source)
        for row in layerwise_table(pairs).itertuples(index=False):
            for metric in METRICS:
                rows.append((source, target, "layer", row.layer_a, row.layer_b, metric, getattr(row, metric),
                             n_samples))
        last_source, last_target = max(layers_source), max(layers_target)
        for metric, weighting in METRICS.items():
            for scope, reading in (("all", "layer_mean"), ("all_pooled", "pooled")):
                value = all_layers_score(pairs, weighting, reading)
                rows.append((source, target, scope, -1, -1, metric, value, n_samples))
            rows.append((source, target, "last", last_source, last_target, metric,
                         last_layer_score(pairs, weighting), n_samples))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# ---- Comparative Sharedness -------------------------------------------------------------------
def comparative_ranking(model: LayerCodes, others: Mapping[str, LayerCodes], shared_with: Sequence[str],
                        not_shared_with: Sequence[str], *, device: str | torch.device | None = None,
                        chunk_rows: int = 4096, method: str = "auto") -> pd.DataFrame:
    """Δ_i^{M→G,H} (Eq. 7) of every feature of M, one row each, best first.

    ρ_i^{M→X} comes from M's codes against each other model's codes on the same samples; the
    columns of `generalized_comparative_sharedness` plus `rho_<model>` for every model compared.
    """
    _check_same_samples({"model": model, **others})
    options = {"device": resolve_device("auto") if device in (None, "auto") else device,
               "chunk_rows": chunk_rows, "method": method}
    results = {name: _max_correlation(model, others[name], options)
               for name in [*shared_with, *not_shared_with]}
    mass = next(iter(results.values())).activation_mass
    ranking = generalized_comparative_sharedness(mass, {n: r.rho for n, r in results.items()}, shared_with,
                                                 not_shared_with)
    for name, result in results.items():
        ranking[f"rho_{name}"] = result.rho.numpy()
    return ranking.sort_values("rank").reset_index(drop=True)


def top_features(ranking: pd.DataFrame, fraction: float) -> list[int]:
    """The features in the top `fraction` of Δ (the paper's top 1%: 81 of 8192), best first."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, math.floor(fraction * len(ranking)))
    return ranking.sort_values("rank")["feature"].head(count).astype(int).tolist()


def select_features(ranking: pd.DataFrame, n_features: int, *, fraction: float,
                    also_in: Sequence[pd.DataFrame] = ()) -> list[int]:
    """Up to `n_features` features to show: the best-ranked with Δ > 0 that are also in the top
    `fraction` of every ranking of `also_in` (Figure 2: shared with LLMs and with VLMs)."""
    keep = set(ranking["feature"].astype(int))
    for other in also_in:
        keep &= set(top_features(other, fraction))
    ordered = ranking.sort_values("rank")
    chosen = ordered[(ordered["sharedness"] > 0) & ordered["feature"].isin(keep)]
    return chosen["feature"].astype(int).head(n_features).tolist()


def top_activations(layer_codes: LayerCodes, features: Sequence[int], n: int) -> pd.DataFrame:
    """The `n` samples where each feature's code is largest (positive only), best first.

    Columns: feature, rank (1 = largest), row, sample_id, value.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    values, indices = layer_codes.codes.values, layer_codes.codes.indices
    out = []
    for feature in features:
        rows, slots = torch.nonzero((indices == int(feature)) & (values > 0), as_tuple=True)
        found = values[rows, slots]
        order = torch.argsort(found, descending=True, stable=True)[:n]
        for rank, position in enumerate(order.tolist(), start=1):
            row = int(rows[position])
            out.append({"feature": int(feature), "rank": rank, "row": row,
                        "sample_id": layer_codes.sample_ids[row], "value": float(found[position])})
    return pd.DataFrame(out, columns=["feature", "rank", "row", "sample_id", "value"])


# ---- significance (Appendix C) ------------------------------------------------------------------
def shuffle_test(a: LayerCodes, b: LayerCodes, *, n_permutations: int, seed: int, weighting: str = "mass",
                 device: str | torch.device | None = None, chunk_rows: int = 4096,
                 method: str = "auto") -> dict[str, float]:
    """wMPPC (or MPPC) of A → B on aligned samples against the same with B's samples permuted."""
    n_samples = _check_same_samples({"source": a, "target": b})
    result = shuffle_null(a.codes, b.codes, n_permutations=n_permutations, seed=seed, weighting=weighting,
                          n_features_a=a.n_latents, n_features_b=b.n_latents, chunk_rows=chunk_rows,
                          method=method,
                          device=resolve_device("auto") if device in (None, "auto") else device)
    null = result.null.numpy()
    return {"observed": result.observed, "shuffled_mean": float(null.mean()),
            "shuffled_std": float(null.std(ddof=1)) if len(null) > 1 else math.nan,
            "shuffled_max": float(null.max()), "p_value": result.p_value,
            "n_permutations": n_permutations, "n_samples": n_samples}


# ---- resources ----------------------------------------------------------------------------------
def peak_memory_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
