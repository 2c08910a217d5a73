"""SAE runs as the config describes them: build, train, save, evaluate.

A run is a method plus hyperparameters plus named streams (config `sae_runs.<name>`); this module
turns such an entry and the stream files into a trained model and tidy metric rows. Rules call it
with explicit paths, so it works the same with or without Snakemake.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xsae.datasets.manifest import label_matrices, read_labels, read_manifest
from xsae.errors import ConfigError, DataError
from xsae.evaluation import (
    EvaluationSettings,
    Labels,
    encode_all,
    evaluate_multistream,
    top_activation_table,
)
from xsae.features import StreamRef, load_streams
from xsae.io import atomic_path, write_json
from xsae.metrics.activation import alive_matrix
from xsae.metrics.cross_reconstruction import reconstruction_matrices
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import AlignmentLoss, TrainingConfig, train

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda was requested but no CUDA device is visible; set device: auto")
    return torch.device(device)


def normalize_inputs(x: np.ndarray | torch.Tensor, how: str) -> torch.Tensor:
    """Row normalisation applied before the SAE at training and evaluation alike.

    In place on float32 input (the feature array is owned by the caller's loader), so a dataset
    is held in memory once, not twice.
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    if how == "l2":
        return x.div_(x.norm(dim=1, keepdim=True).clamp_min_(1e-12))
    if how == "none":
        return x
    raise ValueError(f"input_norm must be 'l2' or 'none', got {how!r}")


def latents_per_stream(total: int, n_streams: int) -> int:
    """m / n_streams: each modality-specific SAE's share of a total latent budget m."""
    if n_streams < 1 or total % n_streams:
        raise ConfigError(f"n_latents={total}: method modality_specific splits it evenly over "
                          f"{n_streams} streams; choose a multiple of {n_streams}")
    return total // n_streams


def sae_config_for_run(run: dict[str, Any], input_dims: Sequence[int],
                       stream_names: Sequence[str]) -> SAEConfig:
    """The SAE a run's method describes.

    topk, sparc: one latent space of n_latents, the run's TopK mode. shared (heterogeneity paper):
    one parameter set for all streams, n_latents = m, Local TopK. modality_specific: one SAE per
    stream, each with n_latents / n_streams latents and Local TopK, so the parameter count equals
    the shared SAE's; the run's `topk` key is not used by these two methods.
    """
    method, n = run["method"], len(input_dims)
    common = {"input_dims": tuple(input_dims), "k": run["k"], "activation": run["activation"],
              "stream_names": tuple(stream_names), "init": run["init"]}
    if method in ("topk", "sparc"):
        return SAEConfig(n_latents=run["n_latents"], topk=run["topk"], **common)
    if method == "shared":
        if len(set(input_dims)) > 1:
            widths = ", ".join(f"{name}={d}" for name, d in zip(stream_names, input_dims, strict=True))
            raise ConfigError(f"method shared needs streams of equal width, got {widths}")
        return SAEConfig(n_latents=run["n_latents"], topk="local", shared_weights=True, **common)
    if method == "modality_specific":
        if run["cross_weight"]:
            raise ConfigError(f"method modality_specific trains independent SAEs; cross_weight must be 0, "
                              f"got {run['cross_weight']}")
        per_stream = latents_per_stream(run["n_latents"], n)
        if run["k"] > per_stream:
            raise ConfigError(f"k={run['k']} exceeds the {per_stream} latents of each modality-specific "
                              f"SAE (n_latents={run['n_latents']} over {n} streams)")
        return SAEConfig(n_latents=per_stream, topk="local", **common)
    raise ConfigError(f"method must be one of topk, sparc, shared, modality_specific, got {method!r}")


def training_config(run: dict[str, Any], seed: int) -> TrainingConfig:
    """The trainer settings of a schema-validated run entry (defaults filled in)."""
    aux = run["auxk"]
    scope = run["grad_clip_scope"]
    if scope == "auto":  # independent SAEs clip independently, like separately trained ones
        scope = "stream" if run["method"] == "modality_specific" else "all"
    alignment = AlignmentLoss(run["alignment_loss"]["kind"], run["alignment_loss"]["weight"],
                              run["alignment_loss"]["multiplier"])
    return TrainingConfig(epochs=run["epochs"], batch_size=run["batch_size"], lr=run["lr"],
                          auxk_k=aux["k"], auxk_coef=aux["coef"], auxk_form=aux["form"],
                          dead_steps=aux["dead_steps"],
                          dead_threshold=aux["threshold"], cross_weight=run["cross_weight"],
                          loss_reduction=run["loss_reduction"], sampler=run["sampler"],
                          reinit_every=run["reinit_every"], autocast=run["autocast"],
                          recon_loss=run["recon_loss"], alignment_loss=alignment,
                          optimizer=run["optimizer"], weight_decay=run["weight_decay"],
                          grad_clip=run["grad_clip"], grad_clip_scope=scope,
                          lr_schedule=run["lr_schedule"], warmup_fraction=run["warmup_fraction"],
                          decoder_norm=run["decoder_norm"],
                          log_every=run["log_every"], checkpoint_every=run["checkpoint_every"],
                          seed=seed)


def load_inputs(refs: Sequence[StreamRef], input_norm: str,
                device: torch.device) -> tuple[list[torch.Tensor], list[str]]:
    arrays, sample_ids = load_streams(refs)
    return [normalize_inputs(a, input_norm).to(device) for a in arrays], sample_ids


def train_run(run: dict[str, Any], refs: Sequence[StreamRef], *, seed: int, device: str,
              weights_path: str | Path, log_path: str | Path,
              checkpoint_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the SAE a config entry describes; write weights and the loss log atomically."""
    torch_device = resolve_device(device)
    inputs, _ = load_inputs(refs, run["input_norm"], torch_device)
    sae_config = sae_config_for_run(run, [x.shape[1] for x in inputs], [ref.name for ref in refs])
    config = training_config(run, seed)
    generator = torch.Generator().manual_seed(seed)
    model = SparseAutoencoder(sae_config, generator=generator).to(torch_device)
    history = train(model, inputs, config, checkpoint_path=checkpoint_path, progress=progress)
    with atomic_path(log_path) as tmp:
        history.to_csv(tmp, index=False)
    model.save(weights_path, extra_metadata={"run": run, "seed": seed})
    if checkpoint_path:
        Path(checkpoint_path).unlink(missing_ok=True)
    last = history.iloc[-1].to_dict() if len(history) else {}
    return {"n_rows": int(inputs[0].shape[0]), "steps": int(last.get("step", 0)),
            "final_loss": float(last.get("loss", float("nan"))),
            "samples_per_s": float(history["samples_per_s"].median()) if len(history) else 0.0}


@torch.no_grad()
def evaluate_reconstruction(weights_path: str | Path, refs: Sequence[StreamRef], *,
                            input_norm: str, device: str = "auto", batch_size: int = 4096,
                            labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Tidy reconstruction rows on held-out features: NMSE and R² for every (target `stream`,
    `source`) pair (self when equal, cross otherwise), and dead latents per stream."""
    torch_device = resolve_device(device)
    model = SparseAutoencoder.load(weights_path, device=torch_device).eval()
    inputs, _ = load_inputs(refs, input_norm, torch_device)
    matrices = reconstruction_matrices(model, inputs, None, batch_size)
    alive = alive_matrix(encode_all(model, inputs, None, batch_size), model.config.n_latents)
    names, rows = model.config.stream_names, []
    for t, target in enumerate(names):
        for s, source in enumerate(names):
            for metric in ("nmse", "r2"):
                rows.append({**(labels or {}), "stream": target, "source": source, "metric": metric,
                             "value": float(matrices[metric][t, s])})
        dead = int((~alive[t]).sum())
        for metric, value in (("dead_latents", dead), ("dead_fraction", dead / model.config.n_latents),
                              ("n_samples", inputs[0].shape[0])):
            rows.append({**(labels or {}), "stream": target, "source": target, "metric": metric,
                         "value": value})
    return pd.DataFrame(rows)


@torch.no_grad()
def evaluate_multistream_run(weights_path: str | Path, refs: Sequence[StreamRef], *, input_norm: str,
                             manifest_path: str | Path, labels_path: str | Path,
                             settings: EvaluationSettings, encoders: Sequence[str],
                             device: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Every SPARC metric of a run on one split, and its top-activating samples per latent.

    The raw-feature retrieval baseline is computed for stream pairs of the same encoder (e.g.
    CLIP image and text, which share an embedding space).
    """
    torch_device = resolve_device(device)
    model = SparseAutoencoder.load(weights_path, device=torch_device).eval()
    inputs, sample_ids = load_inputs(refs, input_norm, torch_device)
    table = read_manifest(manifest_path)
    if table["sample_id"].tolist() != sample_ids:
        raise DataError(f"{manifest_path}: rows differ from the sample_ids of {refs[0].path}; "
                        "re-extract the features from this manifest")
    hierarchy = read_labels(labels_path)
    all_levels, leaves = label_matrices(table, hierarchy)
    labels = Labels(all_levels, leaves, [label.parent for label in hierarchy],
                    [label.path for label in hierarchy])
    pairs = [(s, t) for s in range(len(refs)) for t in range(len(refs))
             if s != t and encoders[s] == encoders[t]]
    metrics, extra = evaluate_multistream(model, inputs, labels=labels, settings=settings,
                                          raw_baseline_pairs=pairs)
    top = top_activation_table(extra["codes"][model.config.topk], model.config.stream_names,
                               model.config.n_latents, settings.top_activations, sample_ids)
    return metrics, top, {"seconds": extra["seconds"], "n_samples": len(sample_ids)}


def write_metrics(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_summary(summary: dict[str, Any], path: str | Path) -> None:
    write_json(path, summary)
