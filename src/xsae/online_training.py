"""Online per-layer SAE training: one pass of an encoder over a dataset trains the SAE of every
layer at once, from every real token the layer produces, with nothing token-level on disk.

The sharedness paper trains each layer's SAE on all patches (or tokens) of every sample. Stored,
that is terabytes (COCO × 257 tokens × 1,024 dims × 24 layers in float32); live, it is one forward
pass. Consecutive tokens of one sample are strongly correlated, so each layer's tokens go through
a `TokenBuffer` that mixes many samples before any step sees them (the activation-store pattern
of SAELens and saev), and each layer's `LayerTrainer` steps its SAE with the same
`xsae.training.take_step` as training from a feature file. Seeded and resumable: every buffer,
generator, model and optimizer is in `OnlineTrainer.state_dict`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from xsae.errors import DataError
from xsae.sae import SparseAutoencoder
from xsae.training import (
    TrainingConfig,
    dead_latent_bounds,
    learning_rate,
    log_row,
    make_optimizer,
    take_step,
)


class TokenBuffer:
    """A shuffling buffer of one layer's tokens, served in batches of `batch_size`.

    Filled to `capacity`, it is shuffled, its first half is served, and the other half stays to be
    mixed with the tokens that come next; `drain` serves what is left at the end of the pass (the
    last batch may be short). Every token pushed is served exactly once. Memory: `capacity` rows of
    `width` float32 values, plus the half being served.
    """

    def __init__(self, width: int, capacity: int, batch_size: int, generator: torch.Generator,
                 device: torch.device | str = "cpu"):
        if batch_size < 1 or capacity < 2 * batch_size:
            raise ValueError(f"a token buffer needs capacity >= 2 × batch_size, got {capacity} "
                             f"and {batch_size}")
        self.capacity, self.batch_size, self.generator = capacity, batch_size, generator
        self.data = torch.empty(capacity, width, device=device)
        self.filled = 0

    @property
    def serve_rows(self) -> int:
        """Rows served each time the buffer is full: half of it, in whole batches."""
        return (self.capacity // 2) // self.batch_size * self.batch_size

    def push(self, tokens: torch.Tensor) -> Iterator[torch.Tensor]:
        """Add `[n, width]` tokens; yields the batches that became ready (none until it is full)."""
        start, n = 0, tokens.shape[0]
        while start < n:
            take = min(self.capacity - self.filled, n - start)
            self.data[self.filled:self.filled + take] = tokens[start:start + take]
            self.filled += take
            start += take
            if self.filled == self.capacity:
                yield from self._serve(self.serve_rows)

    def drain(self) -> Iterator[torch.Tensor]:
        """Serve every token still held, shuffled, in batches (the last may be short)."""
        yield from self._serve(self.filled)

    def _serve(self, count: int) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.filled, generator=self.generator).to(self.data.device)
        mixed = self.data[:self.filled].index_select(0, order)
        served, kept = mixed[:count], mixed[count:]
        self.data[:kept.shape[0]] = kept
        self.filled = kept.shape[0]
        yield from served.split(self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[:self.filled].cpu().clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        data = state["data"]
        self.filled = data.shape[0]
        self.data[:self.filled] = data.to(self.data.device)
        self.generator.set_state(state["generator"].cpu())


class LayerTrainer:
    """One layer's SAE, its optimizer and its buffer: fed tokens, it steps whenever a batch is ready.

    `planned_steps` (the pass's tokens / batch size, estimated before it starts) only sets the
    learning-rate schedule; a constant rate, the sharedness paper's, does not depend on it.
    """

    def __init__(self, name: str, model: SparseAutoencoder, config: TrainingConfig, *, buffer_rows: int,
                 planned_steps: int, device: torch.device | str = "cpu"):
        self.name, self.model, self.config = name, model, config
        self.planned_steps = max(planned_steps, 1)
        self.optimizer = make_optimizer(model, config.lr, optimizer=config.optimizer,
                                        weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        width = model.config.input_dims[0]
        self.buffer = TokenBuffer(width, buffer_rows, config.batch_size, generator, device)
        self.step, self.tokens_seen = 0, 0
        self.rows: list[dict[str, Any]] = []
        self.accumulated: dict[str, torch.Tensor] = {}
        self.interval_steps, self.interval_start = 0, time.perf_counter()
        self.dead_bounds = dead_latent_bounds(model)

    def feed(self, tokens: torch.Tensor) -> None:
        for batch in self.buffer.push(tokens):
            self._step(batch)

    def finish(self) -> pd.DataFrame:
        """Train on what the buffer still holds; the loss log of the whole pass."""
        for batch in self.buffer.drain():
            self._step(batch)
        if self.interval_steps:
            self._log()
        self.model.eval()
        return pd.DataFrame(self.rows)

    def _step(self, batch: torch.Tensor) -> None:
        self.model.train()
        lr = learning_rate(min(self.step, self.planned_steps - 1), self.planned_steps, self.config)
        loss, components = take_step(self.model, self.optimizer, [batch], self.config, step=self.step, lr=lr,
                                     dead_bounds=self.dead_bounds)
        self.dead_bounds = [bound + 1 for bound in self.dead_bounds]
        for key, value in (("loss", loss.detach().reshape(1)), *components.items()):
            self.accumulated[key] = self.accumulated.get(key, 0) + value.detach()
        self.step += 1
        self.interval_steps += 1
        self.tokens_seen += batch.shape[0]
        self.lr = lr
        if self.step % self.config.log_every == 0:
            self._log()

    def _log(self) -> None:
        row = log_row(self.model, self.accumulated, self.interval_steps, self.step, 0,
                       self.model.config.stream_names, self.config.dead_steps)
        self.dead_bounds = dead_latent_bounds(self.model)
        elapsed = time.perf_counter() - self.interval_start
        row.update(lr=self.lr, tokens=self.tokens_seen,
                   tokens_per_s=self.interval_steps * self.config.batch_size / max(elapsed, 1e-9))
        self.rows.append(row)
        self.accumulated, self.interval_steps, self.interval_start = {}, 0, time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer.state_dict(), "step": self.step, "tokens_seen": self.tokens_seen,
                "rows": self.rows, "accumulated": self.accumulated, "interval_steps": self.interval_steps,
                "lr": getattr(self, "lr", None)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.rows, self.accumulated = list(state["rows"]), dict(state["accumulated"])
        self.interval_steps, self.lr = state["interval_steps"], state["lr"]
        self.dead_bounds = dead_latent_bounds(self.model)


class OnlineTrainer:
    """The SAEs of several layers (of one or both modalities, and extra seeds) trained in one pass.

    The caller runs the encoder over the dataset in a fixed order and hands each batch's real
    tokens to `feed` (layer name → `[n, d]`); `samples_done` counts the samples fed, so that a
    resumed job skips exactly those.
    """

    def __init__(self, layers: Mapping[str, LayerTrainer]):
        if not layers:
            raise ValueError("an online trainer needs at least one layer")
        self.layers = dict(layers)
        self.samples_done = 0

    def feed(self, tokens: Mapping[str, torch.Tensor], n_samples: int) -> None:
        missing = set(self.layers) - set(tokens)
        if missing:
            raise DataError(f"online training: no tokens for {sorted(missing)}")
        for name, trainer in self.layers.items():
            trainer.feed(tokens[name])
        self.samples_done += n_samples

    def finish(self) -> dict[str, pd.DataFrame]:
        return {name: trainer.finish() for name, trainer in self.layers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"samples_done": self.samples_done,
                "layers": {name: trainer.state_dict() for name, trainer in self.layers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["layers"]) != set(self.layers):
            raise DataError(f"checkpoint holds layers {sorted(state['layers'])}, this job trains "
                            f"{sorted(self.layers)}: delete it to start the pass again")
        for name, trainer in self.layers.items():
            trainer.load_state_dict(state["layers"][name])
        self.samples_done = state["samples_done"]


def buffer_rows(batch_size: int, samples_mixed: int, tokens_per_sample: int) -> int:
    """Buffer capacity that mixes at least `samples_mixed` samples' tokens into every batch served,
    rounded up to whole batches (at least two)."""
    rows = max(2 * batch_size, samples_mixed * max(tokens_per_sample, 1))
    return math.ceil(rows / batch_size) * batch_size


def layer_groups(sizes: Sequence[tuple[str, int]], budget_bytes: float) -> list[list[str]]:
    """Layers in passes whose SAEs, optimizer states and buffers fit `budget_bytes` together: one pass
    when they all fit. `sizes` lists (layer, bytes) in order; a layer larger than the budget gets a
    pass of its own."""
    groups: list[list[str]] = [[]]
    used = 0.0
    for name, size in sizes:
        if groups[-1] and used + size > budget_bytes:
            groups.append([])
            used = 0.0
        groups[-1].append(name)
        used += size
    return groups
