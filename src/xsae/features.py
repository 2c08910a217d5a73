"""The feature store: one HDF5 file per dataset × split × encoder.

Layout (row i of every array is row i of the manifest):

    /sample_ids              [N]        utf-8 strings
    /pooled/<modality>       [N, d]     float32 pooled/global features
    /layers/<modality>/<ii>  [N, d_ii]  float32 global token per layer (optional)
    /tokens/<modality>/<ii>  [M, d_ii]  float32 sampled tokens per layer (optional, SAE training data)
    /token_rows/<modality>/<ii> [M]     int64 manifest row of each sampled token

Attributes name the encoder, its weights, the preprocessing of each modality (JSON), the dtype,
the dataset and split, and the manifest's sha256. Any code that combines streams goes through
`load_streams`, which checks that every file lists the same samples.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from xsae.datasets.manifest import read_manifest
from xsae.encoders import Encoder
from xsae.errors import ConfigError, DataError
from xsae.io import atomic_path, sha256_file
from xsae.progress import progress as progress_bar

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StreamRef:
    """Where one stream's features live: a file, a modality and optionally a layer; with `tokens`,
    that layer's token subsample (SAE training data) instead of its global token per sample."""

    path: Path
    modality: str
    layer: int | None = None
    name: str = ""
    tokens: bool = False

    def __post_init__(self) -> None:
        if self.tokens and self.layer is None:
            raise ValueError(f"stream {self.name or self.modality}: tokens are stored per layer; "
                             "give a layer")

    @property
    def key(self) -> str:
        if self.layer is None:
            return f"pooled/{self.modality}"
        return f"{'tokens' if self.tokens else 'layers'}/{self.modality}/{self.layer:02d}"


class _Images(torch.utils.data.Dataset):
    """Decodes (and, where the encoder allows, transforms) images in loader workers."""

    def __init__(self, paths: Sequence[str], manifest: Path, transform=None):
        self.paths, self.manifest, self.transform = list(paths), manifest, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Image.Image | torch.Tensor:
        try:
            with Image.open(self.paths[i]) as image:
                image.load()
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.manifest}: row {i}: cannot read image {self.paths[i]} ({exc})") from exc
        return self.transform(image) if self.transform else image


def encoder_batches(encoder: Encoder, modality: str, table, manifest: Path, batch_size: int,
                    workers: int):
    """(rows, prepared batch) over a manifest table's samples of one modality, in order."""
    if modality == "text":
        captions = table["caption"].tolist()
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            yield len(chunk), encoder.prepare("text", chunk)
        return
    images = _Images(table["image_path"].tolist(), manifest, encoder.image_transform())
    loader = torch.utils.data.DataLoader(images,
                                         batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=list)
    for images in loader:
        yield len(images), encoder.prepare("image", images)


def _append(h5: h5py.File, key: str, values: np.ndarray) -> None:
    """Append rows to a growable dataset (created on first use)."""
    if key not in h5:
        h5.create_dataset(key, shape=(0, *values.shape[1:]), maxshape=(None, *values.shape[1:]),
                          dtype=values.dtype, chunks=(4096, *values.shape[1:]))
    dataset = h5[key]
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values


def extract(encoder: Encoder, manifest_path: str | Path, out_path: str | Path, *,
            modalities: Sequence[str] | None = None, layers: bool = False, batch_size: int = 32,
            workers: int = 0, dataset: str = "", split: str = "", progress: bool = True,
            autocast_dtype: str = "float32", layer_tokens: int = 0, token_seed: int = 0) -> dict:
    """Encode every manifest row with `encoder` and write the feature file atomically.

    With `layer_tokens`, also `layer_tokens` real tokens per sample and layer, sampled from a
    generator seeded with `token_seed` (the same tokens for the same file and seed).
    Returns a summary (rows, dims, seconds, samples/s per modality).
    """
    if layer_tokens < 0:
        raise ConfigError(f"layer_tokens must be nonnegative, got {layer_tokens}")
    if layer_tokens and not layers:
        raise ConfigError(f"encoders.{encoder.spec.name}.layer_tokens: {layer_tokens} tokens per layer need "
                          "layers: true")
    manifest_path, out_path = Path(manifest_path), Path(out_path)
    table = read_manifest(manifest_path)
    modalities = list(modalities or encoder.modalities)
    n = len(table)
    summary: dict = {"n_samples": n, "modalities": {}}
    use_autocast = encoder.device.type == "cuda" and autocast_dtype != "float32"
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("sample_ids", data=np.array(table["sample_id"].tolist(), dtype=object),
                          dtype=h5py.string_dtype("utf-8"))
        attrs = {**encoder.describe(), "format_version": FORMAT_VERSION, "dtype": "float32",
                 "dataset": dataset, "split": split, "manifest": str(manifest_path),
                 "manifest_sha256": sha256_file(manifest_path), "modalities": modalities,
                 "autocast": autocast_dtype if use_autocast else "none", "layer_tokens": layer_tokens,
                 "token_seed": token_seed}
        for key, value in attrs.items():
            h5.attrs[key] = value if isinstance(value, str | int) else json.dumps(value)
        for modality in modalities:
            h5.attrs[f"preprocessing_{modality}"] = json.dumps(encoder.preprocessing(modality))
            start, written = time.perf_counter(), 0
            datasets: dict[str, h5py.Dataset] = {}
            generator = torch.Generator().manual_seed(token_seed)
            bar = progress_bar(total=n, disable=not progress, unit="sample",
                               desc=f"{encoder.spec.name}/{modality}")
            for size, batch in encoder_batches(encoder, modality, table, manifest_path, batch_size, workers):
                context = (torch.autocast("cuda", dtype=getattr(torch, autocast_dtype))
                           if use_autocast else nullcontext())
                with context:
                    out = encoder.encode(modality, batch, layers=layers, tokens_per_sample=layer_tokens,
                                         generator=generator)
                arrays = {f"pooled/{modality}": out.pooled}
                for i, tensor in enumerate(out.layers or []):
                    arrays[f"layers/{modality}/{i:02d}"] = tensor
                for i, (tokens, rows) in enumerate(out.tokens or []):
                    _append(h5, f"tokens/{modality}/{i:02d}", tokens.detach().float().cpu().numpy())
                    _append(h5, f"token_rows/{modality}/{i:02d}", (rows + written).numpy().astype(np.int64))
                for key, tensor in arrays.items():
                    values = tensor.detach().float().cpu().numpy()
                    if key not in datasets:
                        datasets[key] = h5.create_dataset(
                            key, shape=(n, values.shape[1]), dtype="float32",
                            chunks=(min(max(batch_size, 1), n), values.shape[1]))
                    datasets[key][written:written + size] = values
                written += size
                bar.update(size)
            bar.close()
            seconds = time.perf_counter() - start
            summary["modalities"][modality] = {
                "dim": int(datasets[f"pooled/{modality}"].shape[1]), "seconds": round(seconds, 3),
                "samples_per_s": round(n / max(seconds, 1e-9), 1),
                "n_layers": sum(1 for k in datasets if k.startswith("layers/")),
                "n_tokens": int(h5[f"tokens/{modality}/00"].shape[0]) if layer_tokens else 0}
            log.info("%s/%s: %d samples in %.1fs (%.1f samples/s)", encoder.spec.name, modality,
                     n, seconds, n / max(seconds, 1e-9))
    return summary


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: feature file not found; run the extract_features rule for it")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 feature file ({exc}); delete it and "
                        "extract again") from exc


def read_sample_ids(path: str | Path) -> list[str]:
    with _open(Path(path)) as h5:
        if "sample_ids" not in h5:
            raise DataError(f"{path}: no 'sample_ids' dataset; not a feature file of this project")
        return [s.decode() if isinstance(s, bytes) else s for s in h5["sample_ids"][()]]


def read_attrs(path: str | Path) -> dict:
    with _open(Path(path)) as h5:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}


def read_stream(ref: StreamRef) -> np.ndarray:
    """`[N, d]` float32 features of one stream."""
    with _open(ref.path) as h5:
        if ref.key not in h5:
            available = []
            h5.visit(lambda name: available.append(name) if isinstance(h5[name], h5py.Dataset) else None)
            raise DataError(f"{ref.path}: no dataset {ref.key!r} (stream {ref.name or ref.key}); "
                            f"the file has: {', '.join(a for a in available if a != 'sample_ids')}")
        try:
            values = h5[ref.key][()]
        except OSError as exc:
            raise DataError(f"{ref.path}: dataset {ref.key!r} is corrupt ({exc}); delete the file "
                            "and extract again") from exc
    # Checked in blocks: a whole-array mask would cost a quarter of the features' memory again.
    for start in range(0, len(values), 65536):
        finite = np.isfinite(values[start:start + 65536])
        if not finite.all():
            rows = start + np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))
            raise DataError(f"{ref.path}: {ref.key} holds non-finite values, first at row {rows[0]} "
                            f"({len(rows)} such row(s) among rows {start}–{start + len(finite) - 1})")
    return values.astype(np.float32, copy=False)


def load_streams(refs: Sequence[StreamRef]) -> tuple[list[np.ndarray], list[str]]:
    """Features of several streams, checked to describe the same samples in the same order."""
    if not refs:
        raise DataError("no streams given")
    reference_ids = read_sample_ids(refs[0].path)
    for ref in refs[1:]:
        ids = read_sample_ids(ref.path)
        if ids != reference_ids:
            first = next((i for i, (a, b) in enumerate(zip(ids, reference_ids, strict=False)) if a != b),
                         min(len(ids), len(reference_ids)))
            raise DataError(
                f"{ref.path}: sample_ids differ from {refs[0].path} (first difference at row "
                f"{first}; {len(ids)} vs {len(reference_ids)} rows). Both must come from the same "
                "manifest: re-extract the stale file."
            )
    return [read_stream(ref) for ref in refs], reference_ids
