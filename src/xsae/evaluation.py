"""Evaluation of a multi-stream SAE run on held-out data: every SPARC metric, as tidy rows.

The test features are encoded once per inference mode and every metric family reads those
codes: activation patterns (Table 1), concept-profile Jaccard (Table 2), the R²/NMSE matrices
(Table 3, Figures 6–10), 1-D probes (Table 4) and latent retrieval (Table 14). A Global model is
evaluated with its shared indices and with per-stream TopK at inference, reported separately
(`inference` column), because shared indices leak the pairing into retrieval.

Rows: `metric, inference, stream, source, target, variant, value` (unused fields empty).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from xsae.metrics.activation import activation_patterns, alive_matrix
from xsae.metrics.concepts import collapse_labels, mean_jaccard
from xsae.metrics.cross_reconstruction import reconstruction_matrices, self_cross_means
from xsae.metrics.probes import evaluate_1d_probes
from xsae.metrics.retrieval import retrieval_metrics, retrieval_ranks
from xsae.metrics.top_activations import top_activating
from xsae.sae import Codes, SparseAutoencoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationSettings:
    jaccard_profiles: Sequence[str] = ("top", "all_active")
    jaccard_top_n: int = 50
    label_depth: int | None = None
    probe_min_positives: int = 50
    probe_candidates: int = 20
    #: "raw": probe tasks are the samples' own labels (the SPARC reference: Open Images' boxable
    #: labels, 432 tasks); "all_levels": every level of the hierarchy above them too.
    probe_labels: str = "raw"
    top_activations: int = 10
    batch_size: int = 4096

    @classmethod
    def from_config(cls, entry: dict) -> EvaluationSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})


@dataclass
class Labels:
    """Multi-hot labels of the evaluation rows: every hierarchy level (probe tasks) and the leaf
    labels alone (concept profiles), with each label's parent for collapsing to a depth."""

    all_levels: np.ndarray  # [N, C] bool
    leaves: np.ndarray  # [N, C] bool
    parents: list[int | None]
    names: list[str] = field(default_factory=list)


@torch.no_grad()
def encode_all(model: SparseAutoencoder, inputs: Sequence[torch.Tensor], topk: str | None = None,
               batch_size: int = 4096) -> list[Codes]:
    """Codes of every row, per stream, encoded in batches."""
    parts: list[list[Codes]] = [[] for _ in inputs]
    for start in range(0, inputs[0].shape[0], batch_size):
        for s, codes in enumerate(model.encode([x[start:start + batch_size] for x in inputs], topk)):
            parts[s].append(codes)
    return [Codes.concatenate(p) for p in parts]


def _row(metric: str, value: float, *, inference: str = "", stream: str = "", source: str = "",
         target: str = "", variant: str = "") -> dict:
    return {"metric": metric, "inference": inference, "stream": stream, "source": source,
            "target": target, "variant": variant, "value": float(value)}


def evaluate_multistream(model: SparseAutoencoder, inputs: Sequence[torch.Tensor], *,
                         labels: Labels | None, settings: EvaluationSettings,
                         raw_baseline_pairs: Sequence[tuple[int, int]] = ()) -> tuple[pd.DataFrame, dict]:
    """Tidy metric rows, and the codes per inference mode (for the top-activation data)."""
    names = list(model.config.stream_names)
    L = model.config.n_latents
    modes = ["global", "local"] if model.config.topk == "global" else ["local"]
    rows: list[dict] = []
    codes_by_mode = {}
    timings = {}
    for mode in modes:
        start = time.perf_counter()
        codes_by_mode[mode] = encode_all(model, inputs, mode, settings.batch_size)
        timings[f"encode_{mode}"] = time.perf_counter() - start
    native = codes_by_mode[model.config.topk]
    inference = model.config.topk

    start = time.perf_counter()
    patterns = activation_patterns(alive_matrix(native, L), stream_names=names)
    rows += [_row("activation_pattern", v, inference=inference, variant=k) for k, v in patterns.items()]

    matrices = reconstruction_matrices(model, inputs, None, settings.batch_size)
    for key, matrix in matrices.items():
        for t, target in enumerate(names):
            for s, source in enumerate(names):
                rows.append(_row(key, matrix[t, s], inference=inference, source=source, target=target))
        self_mean, cross_mean = self_cross_means(matrix)
        rows += [_row(f"{key}_self_mean", self_mean, inference=inference),
                 _row(f"{key}_cross_mean", cross_mean, inference=inference)]
    timings["patterns_and_reconstruction"] = time.perf_counter() - start

    if labels is not None:
        start = time.perf_counter()
        leaves = (labels.leaves if settings.label_depth is None
                  else collapse_labels(labels.leaves, labels.parents, settings.label_depth))
        for profile in settings.jaccard_profiles:
            result = mean_jaccard(native, leaves, L, profile=profile, top_n=settings.jaccard_top_n)
            rows.append(_row("jaccard", result.mean, inference=inference, variant=profile))
        timings["jaccard"] = time.perf_counter() - start
        start = time.perf_counter()
        probe_labels = labels.leaves if settings.probe_labels == "raw" else labels.all_levels
        for s, name in enumerate(names):
            probes = evaluate_1d_probes(native[s], probe_labels, n_latents=L,
                                        min_positives=settings.probe_min_positives,
                                        n_candidates=settings.probe_candidates)
            rows.append(_row("probe_loss", probes.mean_test_loss, inference=inference, stream=name))
            rows.append(_row("probe_tasks", len(probes.table), inference=inference, stream=name))
        timings["probes"] = time.perf_counter() - start

    start = time.perf_counter()
    device = model.dec_weight[0].device
    dense_device = device if device.type == "cuda" else None  # sparse products on the CPU
    for mode, codes in codes_by_mode.items():
        for s, source in enumerate(names):
            for t, target in enumerate(names):
                if s == t:
                    continue
                ranks = retrieval_ranks(codes[s], codes[t], device=dense_device)
                rows += [_row(f"retrieval_{k}", v, inference=mode, source=source, target=target)
                         for k, v in retrieval_metrics(ranks).items()]
    for s, t in raw_baseline_pairs:
        ranks = retrieval_ranks(inputs[s], inputs[t])
        rows += [_row(f"retrieval_{k}", v, inference="raw_features", source=names[s], target=names[t])
                 for k, v in retrieval_metrics(ranks).items()]
    timings["retrieval"] = time.perf_counter() - start
    log.info("evaluation timings (s): %s", {k: round(v, 2) for k, v in timings.items()})
    return pd.DataFrame(rows), {"codes": codes_by_mode, "seconds": timings}


def top_activation_table(codes: Sequence[Codes], names: Sequence[str], n_latents: int, top_n: int,
                         sample_ids: Sequence[str]) -> pd.DataFrame:
    """Long table (stream, latent, rank, row, sample_id, value) of each latent's top samples."""
    frames = []
    for name, stream_codes in zip(names, codes, strict=True):
        indices, values = top_activating(stream_codes, n_latents, top_n=top_n)
        latent, rank = np.meshgrid(np.arange(indices.shape[0]), np.arange(indices.shape[1]), indexing="ij")
        frame = pd.DataFrame({"stream": name, "latent": latent.ravel(), "rank": rank.ravel() + 1,
                              "row": indices.numpy().ravel(), "value": values.numpy().ravel()})
        frame = frame[frame["row"] >= 0]
        frame["sample_id"] = np.asarray(sample_ids, dtype=object)[frame["row"].to_numpy()]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
