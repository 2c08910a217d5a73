"""The sharedness experiments' per-layer SAEs trained as the paper trains them: online, on every
real token of every training sample, one encoder pass per modality (rule sharedness_online).

One job per encoder × dataset: each modality's pass over the training manifest hooks every layer
some model needs and feeds each layer's real tokens (no text padding; CLS/EOT included) to the
`xsae.online_training.OnlineTrainer` of all SAEs reading that layer: every model of the encoder
(both towers of a two-tower model, extra seeds). Nothing token-level reaches the disk.

The step follows the authors' recipe when `samples_per_step` is set: a step holds as many tokens
as that many samples produce (16 images, 256 captions), so the pass has samples / samples_per_step
steps; the tokens of a step come from a shuffling buffer mixing `mix_samples` samples rather than
from exactly those samples. Without it, `batch_size` counts tokens.

Models whose layer's global token is not one of the tokens their SAEs train on (SigLIP2's image
tower has no CLS token; Swin, MambaVision and mean-pooled text encoders store a mean) are compared
on pooled codes (`compared: pooled_codes`): after training, one more pass of the encoder over the
compared split encodes every real token through each such SAE, and a sample's code is the mean of
its tokens' codes with its k largest kept (as many active latents as one token has). The same pass
measures the SAE's reconstruction of those tokens, the vectors it is compared on.

Layers whose SAEs, optimizer states and buffers exceed `memory_budget` are trained in groups, one
pass per group (logged). Seeded and resumable: finished groups are kept beside the output, the
running group checkpointed every `checkpoint_every` samples; a killed job resumes to the same
weights (on CPU).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xsae.datasets.manifest import read_manifest
from xsae.encoders import Encoder
from xsae.errors import ConfigError, DataError
from xsae.features import encoder_batches
from xsae.io import atomic_path, write_json
from xsae.metrics.activation import alive_mask
from xsae.metrics.reconstruction import ReconstructionAccumulator
from xsae.online_training import LayerTrainer, OnlineTrainer, buffer_rows, layer_groups
from xsae.progress import progress as progress_bar
from xsae.runs import normalize_inputs, sae_config_for_run, training_config
from xsae.sae import Codes, SparseAutoencoder, read_metadata
from xsae.sharedness_config import POOLED_CODES, layer_run
from xsae.sharedness_runs import LayerCodes, write_codes

log = logging.getLogger(__name__)

CHECKPOINT = "resume.pt"
#: Tokens encoded at once by the pooling pass (logits of [POOLING_CHUNK, n_latents]).
POOLING_CHUNK = 8192
#: float32 copies of each parameter an Adam step holds: weights, gradient, two moments.
_PARAMETER_COPIES = 4


@dataclass(frozen=True)
class OnlineSAE:
    """One SAE of the job: a sharedness model's layer, with its recipe and seed."""

    model: str
    modality: str
    layer: int
    entry: Mapping[str, Any]
    seed: int
    #: what the comparisons encode: the layer's stored global token, or pooled codes of its tokens
    compared: str = "global_token"

    @property
    def name(self) -> str:
        return f"{self.model}/layer{self.layer:02d}"


def weights_file(folder: str | Path, model: str, layer: int) -> Path:
    return Path(folder) / model / f"layer{layer:02d}.safetensors"


def log_file(folder: str | Path, model: str, layer: int) -> Path:
    return Path(folder) / model / f"layer{layer:02d}_training_log.csv"


def pooled_codes_file(folder: str | Path, model: str, layer: int) -> Path:
    return Path(folder) / model / f"layer{layer:02d}_pooled_codes.npz"


def pooled_reconstruction_file(folder: str | Path, model: str, layer: int) -> Path:
    return Path(folder) / model / f"layer{layer:02d}_pooled_reconstruction.json"


@dataclass(frozen=True)
class LayerShape:
    """What the probe batch says of one layer: its width and real tokens per sample."""

    width: int
    tokens_per_sample: float


@dataclass(frozen=True)
class OnlineSettings:
    expansion: int
    #: modality → samples whose tokens make one step (the authors' 16 images / 256 captions);
    #: a modality absent here steps on `batch_size` tokens of its recipe.
    samples_per_step: Mapping[str, int]
    mix_samples: int = 64
    encoder_batch: int = 32
    workers: int = 0
    checkpoint_every: int = 2048
    memory_budget: float | None = None
    autocast_dtype: str = "float32"


def settings_from_config(online: Mapping[str, Any], encoder_entry: Mapping[str, Any], *, expansion: int,
                         workers: int = 0) -> OnlineSettings:
    """The settings of a job from config section `sharedness.online` and its encoder's entry."""
    budget = online.get("memory_gb")
    return OnlineSettings(expansion=expansion,
                          samples_per_step=dict(online.get("samples_per_step") or {}),
                          mix_samples=online.get("mix_samples", 64),
                          encoder_batch=encoder_entry["batch_size"], workers=workers,
                          checkpoint_every=online.get("checkpoint_every", 4096),
                          memory_budget=None if budget is None else budget * 1e9,
                          autocast_dtype=encoder_entry.get("dtype", "float32"))


def _probe(encoder: Encoder, modality: str, table: pd.DataFrame, manifest: Path, batch: int,
           layers: set[int]) -> dict[int, LayerShape]:
    """Widths and tokens per sample of the needed layers, from the manifest's first batch."""
    size, prepared = next(encoder_batches(encoder, modality, table.iloc[:batch], manifest, batch, 0))
    out = encoder.encode(modality, prepared, all_tokens=True)
    n_layers = len(out.tokens or [])
    missing = sorted(layer for layer in layers if layer >= n_layers)
    if missing:
        raise ConfigError(f"{encoder.spec.name} ({modality}) has {n_layers} layers; sharedness models ask "
                          f"for layer {missing[0]}: check sharedness.models.<name>.n_layers")
    return {layer: LayerShape(int(out.tokens[layer][0].shape[1]), out.tokens[layer][0].shape[0] / size)
            for layer in sorted(layers)}


def _run_entry(sae: OnlineSAE, width: int, expansion: int) -> dict[str, Any]:
    run = layer_run(sae.entry, width, expansion, sae.name)
    if run["epochs"] != 1:
        raise ConfigError(f"sharedness.sae.epochs: online training makes one pass over the data, got "
                          f"{run['epochs']}; set epochs: 1")
    return run


def step_tokens(sae: OnlineSAE, shape: LayerShape, settings: OnlineSettings) -> int:
    """Tokens per optimizer step: `samples_per_step` samples' worth, else the recipe's batch_size."""
    per_step = settings.samples_per_step.get(sae.modality)
    if per_step:
        return max(1, round(per_step * shape.tokens_per_sample))
    return int(sae.entry["batch_size"])


def step_and_buffer(sae: OnlineSAE, shape: LayerShape, settings: OnlineSettings) -> tuple[int, int]:
    """Tokens per step, and rows of the shuffling buffer that mixes `mix_samples` samples."""
    batch = step_tokens(sae, shape, settings)
    return batch, buffer_rows(batch, settings.mix_samples, math.ceil(shape.tokens_per_sample))


def planned_steps(n_samples: int, shape: LayerShape, batch: int) -> int:
    return max(1, math.ceil(n_samples * shape.tokens_per_sample / batch))


def _layer_bytes(width: int, n_latents: int, rows: int, batch: int) -> int:
    parameters = 2 * width * n_latents + width + n_latents
    return 4 * (_PARAMETER_COPIES * parameters + (rows + batch) * width)


class _Pass:
    """One group of SAEs of one modality and everything it needs to train or resume."""

    def __init__(self, index: int, modality: str, saes: Sequence[OnlineSAE], shapes: Mapping[int, LayerShape],
                 n_samples: int, settings: OnlineSettings, device: torch.device):
        self.index, self.modality, self.saes = index, modality, list(saes)
        self.runs, layers = {}, {}
        for sae in self.saes:
            shape = shapes[sae.layer]
            run = _run_entry(sae, shape.width, settings.expansion)
            batch, rows = step_and_buffer(sae, shape, settings)
            config = dataclasses.replace(training_config(run, sae.seed), batch_size=batch)
            sae_config = sae_config_for_run(run, [shape.width], [sae.name])
            generator = torch.Generator().manual_seed(sae.seed)
            model = SparseAutoencoder(sae_config, generator=generator).to(device)
            layers[sae.name] = LayerTrainer(sae.name, model, config, buffer_rows=rows, device=device,
                                            planned_steps=planned_steps(n_samples, shape, batch))
            self.runs[sae.name] = run
        self.trainer = OnlineTrainer(layers)


def train_online(encoder: Encoder, manifest_path: str | Path, saes: Sequence[OnlineSAE], out_dir: str | Path,
                 settings: OnlineSettings, *, compared_manifest: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Train every SAE of `saes` from `encoder`'s tokens of every manifest row; write
    `<model>/layerNN.safetensors` and its training log under `out_dir`, atomically; for SAEs
    compared on pooled codes, also their pooled codes of every row of `compared_manifest` and
    their reconstruction of its tokens.

    Work in progress lives in `out_dir` + ".partial" (finished groups, the checkpoint of the
    running one, finished pooled codes), so that a killed job resumes where it stopped.
    """
    if not saes:
        raise ValueError("online training needs at least one SAE")
    pooled = [sae for sae in saes if sae.compared == POOLED_CODES]
    if pooled and compared_manifest is None:
        raise ValueError(f"{pooled[0].name} is compared on pooled codes: give the compared split's manifest")
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    table = read_manifest(manifest_path)
    n_samples = len(table)
    device = encoder.device
    summary: dict[str, Any] = {"n_samples": n_samples, "passes": [], "saes": {}}
    modalities = [m for m in encoder.modalities if any(sae.modality == m for sae in saes)]
    index = 0
    for modality in modalities:
        chosen = [sae for sae in saes if sae.modality == modality]
        shapes = _probe(encoder, modality, table, manifest_path, settings.encoder_batch,
                        {sae.layer for sae in chosen})
        sizes = []
        for sae in chosen:
            shape = shapes[sae.layer]
            batch, rows = step_and_buffer(sae, shape, settings)
            sizes.append((sae.name, _layer_bytes(shape.width, settings.expansion * shape.width, rows, batch)))
        budget = settings.memory_budget or float("inf")
        groups = layer_groups(sizes, budget)
        if len(groups) > 1:
            log.info("%s (%s): %d SAEs need %.1f GB with their buffers, more than the %.1f GB budget: %d "
                     "passes over the data", encoder.spec.name, modality, len(chosen),
                     sum(size for _, size in sizes) / 1e9, budget / 1e9, len(groups))
        by_name = {sae.name: sae for sae in chosen}
        for group in groups:
            group_saes = [by_name[name] for name in group]
            if not all(weights_file(partial, s.model, s.layer).is_file() for s in group_saes):
                run_pass = _Pass(index, modality, group_saes, shapes, n_samples, settings, device)
                done = _train_pass(encoder, run_pass, table, manifest_path, partial, settings,
                                   progress=progress)
                summary["passes"].append(done)
            index += 1
        for sae in chosen:
            summary["saes"][sae.name] = history_summary(pd.read_csv(log_file(partial, sae.model, sae.layer)))
        todo = [sae for sae in pooled if sae.modality == modality
                and not pooled_reconstruction_file(partial, sae.model, sae.layer).is_file()]
        if todo:
            summary.setdefault("pooled_passes", []).append(
                _pooling_pass(encoder, modality, todo, Path(compared_manifest), partial, settings,
                              progress=progress))
    (partial / CHECKPOINT).unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.replace(out_dir)  # complete: every SAE and log is in it
    return summary


def _train_pass(encoder: Encoder, run_pass: _Pass, table: pd.DataFrame, manifest: Path, partial: Path,
                settings: OnlineSettings, *, progress: bool) -> dict[str, Any]:
    trainer, modality = run_pass.trainer, run_pass.modality
    checkpoint = partial / CHECKPOINT
    partial.mkdir(parents=True, exist_ok=True)
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("pass") == run_pass.index:
            trainer.load_state_dict(state["trainer"])
            log.info("resuming pass %d at sample %d of %d", run_pass.index, trainer.samples_done, len(table))
    norms = {sae.name: run_pass.runs[sae.name]["input_norm"] for sae in run_pass.saes}
    start, done_at_start, saved = time.perf_counter(), trainer.samples_done, trainer.samples_done
    bar = progress_bar(total=len(table), initial=trainer.samples_done, disable=not progress, unit="sample",
                       desc=f"{encoder.spec.name}/{modality} pass {run_pass.index}")
    rest = table.iloc[trainer.samples_done:]
    batches = encoder_batches(encoder, modality, rest, manifest, settings.encoder_batch, settings.workers)
    for size, batch in batches:
        with _autocast(encoder, settings):
            out = encoder.encode(modality, batch, all_tokens=True)
        prepared: dict[tuple[int, str], torch.Tensor] = {}
        fed = {}
        for sae in run_pass.saes:
            key = (sae.layer, norms[sae.name])
            if key not in prepared:
                prepared[key] = normalize_inputs(out.tokens[sae.layer][0].float().clone(), key[1])
            fed[sae.name] = prepared[key]
        trainer.feed(fed, size)
        bar.update(size)
        if settings.checkpoint_every and trainer.samples_done - saved >= settings.checkpoint_every \
                and trainer.samples_done < len(table):
            with atomic_path(checkpoint) as tmp:
                torch.save({"pass": run_pass.index, "trainer": trainer.state_dict()}, tmp)
            saved = trainer.samples_done
    bar.close()
    histories = trainer.finish()
    seconds = time.perf_counter() - start
    for sae in run_pass.saes:
        layer = trainer.layers[sae.name]
        layer.model.save(weights_file(partial, sae.model, sae.layer),
                         extra_metadata={"run": run_pass.runs[sae.name], "seed": sae.seed,
                                         "training": "online", "tokens": layer.tokens_seen,
                                         "steps": layer.step})
        with atomic_path(log_file(partial, sae.model, sae.layer)) as tmp:
            histories[sae.name].to_csv(tmp, index=False)
    samples = trainer.samples_done - done_at_start
    log.info("%s/%s pass %d: %d SAEs, %d samples in %.1fs (%.1f samples/s)", encoder.spec.name, modality,
             run_pass.index, len(run_pass.saes), samples, seconds, samples / max(seconds, 1e-9))
    return {"modality": modality, "saes": [sae.name for sae in run_pass.saes], "seconds": round(seconds, 3),
            "samples_per_s": round(samples / max(seconds, 1e-9), 1)}


def _autocast(encoder: Encoder, settings: OnlineSettings) -> AbstractContextManager:
    """The encoder's autocast dtype on a GPU; nothing on the CPU (features stay float32)."""
    if encoder.device.type == "cuda" and settings.autocast_dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, settings.autocast_dtype))
    return nullcontext()


def pool_codes(codes: Codes, rows: torch.Tensor, n_samples: int, n_latents: int, k: int) -> Codes:
    """Per sample, the mean of its tokens' codes (`codes` `[M, k]`, token m of sample `rows[m]`),
    its `k` largest kept, sorted: `[n_samples, k]`.

    Summed on the CPU in token order, so the result does not depend on the device."""
    values, indices, rows = codes.values.float().cpu(), codes.indices.cpu(), rows.cpu()
    dense = torch.zeros(n_samples, n_latents)
    dense.index_put_((rows.repeat_interleave(indices.shape[1]), indices.reshape(-1)), values.reshape(-1),
                     accumulate=True)
    dense /= torch.bincount(rows, minlength=n_samples).clamp_min(1).unsqueeze(1)
    top = dense.topk(min(k, n_latents), dim=1)
    return Codes(top.values, top.indices)


@torch.no_grad()
def _pooling_pass(encoder: Encoder, modality: str, saes: Sequence[OnlineSAE], manifest: Path, partial: Path,
                  settings: OnlineSettings, *, progress: bool) -> dict[str, Any]:
    """Pooled codes of every row of `manifest` through each trained SAE of `saes`, and each SAE's
    reconstruction of those rows' tokens (NMSE and R² over tokens, latents that never fire)."""
    table = read_manifest(manifest)
    models, norms, tallies, fired, chunks = {}, {}, {}, {}, {}
    for sae in saes:
        weights = weights_file(partial, sae.model, sae.layer)
        models[sae.name] = SparseAutoencoder.load(weights, device=encoder.device).eval()
        norms[sae.name] = read_metadata(weights)["run"]["input_norm"]
        tallies[sae.name] = ReconstructionAccumulator()
        fired[sae.name] = torch.zeros(models[sae.name].config.n_latents, dtype=torch.bool)
        chunks[sae.name] = []
    start = time.perf_counter()
    bar = progress_bar(total=len(table), disable=not progress, unit="sample",
                       desc=f"{encoder.spec.name}/{modality} pooled codes")
    for size, batch in encoder_batches(encoder, modality, table, manifest, settings.encoder_batch,
                                       settings.workers):
        with _autocast(encoder, settings):
            out = encoder.encode(modality, batch, all_tokens=True)
        for sae in saes:
            model = models[sae.name]
            tokens, rows = out.tokens[sae.layer]
            parts = []
            for chunk in tokens.split(POOLING_CHUNK):  # bounds the [tokens, latents] logits
                x = normalize_inputs(chunk.float().clone(), norms[sae.name])
                (codes,) = model.encode([x])
                tallies[sae.name].update(model.decode(0, codes), x)
                fired[sae.name] |= alive_mask(codes, model.config.n_latents).cpu()
                parts.append(codes)
            chunks[sae.name].append(pool_codes(Codes.concatenate(parts), rows, size, model.config.n_latents,
                                               model.config.k))
        bar.update(size)
    bar.close()
    sample_ids = table["sample_id"].astype(str).tolist()
    for sae in saes:
        n_latents = models[sae.name].config.n_latents
        write_codes(pooled_codes_file(partial, sae.model, sae.layer),
                    LayerCodes(Codes.concatenate(chunks[sae.name]), n_latents, sample_ids))
        dead = int((~fired[sae.name]).sum())
        write_json(pooled_reconstruction_file(partial, sae.model, sae.layer),
                   {**tallies[sae.name].result(), "n_tokens": tallies[sae.name].n, "n_samples": len(table),
                    "dead_latents": dead, "dead_fraction": dead / n_latents})
    seconds = time.perf_counter() - start
    log.info("%s/%s pooled codes of %d SAEs on %d samples in %.1fs", encoder.spec.name, modality, len(saes),
             len(table), seconds)
    return {"modality": modality, "saes": [sae.name for sae in saes], "seconds": round(seconds, 3),
            "samples": len(table)}


def history_summary(history: pd.DataFrame) -> dict[str, Any]:
    """Steps, tokens seen and loss at the last logged interval of an online training log."""
    last = history.iloc[-1] if len(history) else {}
    return {"steps": int(last.get("step", 0)), "tokens": int(last.get("tokens", 0)),
            "final_loss": float(last.get("loss", float("nan")))}


def check_layer_output(folder: str | Path, model: str, layer: int, *, pooled: bool = False) -> list[Path]:
    """The weights and log of one SAE in an online job's output (and, `pooled`, its pooled codes
    and their reconstruction record), or an error saying what to run."""
    paths = [weights_file(folder, model, layer), log_file(folder, model, layer)]
    if pooled:
        paths += [pooled_codes_file(folder, model, layer), pooled_reconstruction_file(folder, model, layer)]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: not found in the online training output {folder}; rerun the "
                            "sharedness_online job of this encoder and dataset")
    return paths
