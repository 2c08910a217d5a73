"""Online per-layer training against the same SAEs fed from memory, measured in the same run.

A tiny transformer encoder (random weights, `--layers` blocks of width `--width`, `--tokens` tokens
per sample) runs over `--samples` samples in batches; every block's residual stream trains its own
TopK SAE through `xsae.online_training` (a shuffling buffer per layer). Timed alone, in interleaved
rounds:

  online       encoder forward passes + buffers + every layer's SAE steps (the job's inner loop)
  encoder      the forward passes alone
  SAE steps    the same number of steps of the same SAEs on batches sliced from an in-memory tensor

and reports tokens/s of each and the online overhead: (online − encoder − SAE steps) / SAE steps,
the cost of the buffers and hooks over what training from stored tokens would cost (target: under
0.25). Peak memory of the buffers is `layers × capacity × width × 4` bytes (printed); the buffers
are the only token storage.

    python bench/bench_online.py [--layers 4] [--width 128] [--tokens 64] [--samples 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from xsae.online_training import LayerTrainer, OnlineTrainer, buffer_rows
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, dead_latent_bounds, make_optimizer, take_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-samples", type=int, default=16, help="samples per encoder batch")
    parser.add_argument("--sae-batch", type=int, default=256, help="tokens per SAE step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the report as JSON to this path")
    args = parser.parse_args()

    torch.manual_seed(0)
    blocks = nn.ModuleList(
        nn.TransformerEncoderLayer(args.width, 4, 4 * args.width, dropout=0.0, batch_first=True)
        for _ in range(args.layers)).eval()
    data = torch.randn(args.samples, args.tokens, args.width)
    config = TrainingConfig(epochs=1, batch_size=args.sae_batch, lr=5e-5, auxk_k=0, log_every=50)
    n_tokens = args.samples * args.tokens
    steps = n_tokens // args.sae_batch
    capacity = buffer_rows(args.sae_batch, 4 * args.batch_samples, args.tokens)

    def saes() -> dict[str, SparseAutoencoder]:
        return {f"layer{i:02d}": SparseAutoencoder(SAEConfig((args.width,), 8 * args.width, 32, "local"),
                                                   generator=torch.Generator().manual_seed(i))
                for i in range(args.layers)}

    def forward(batch: torch.Tensor) -> list[torch.Tensor]:
        hidden, out = batch, []
        with torch.inference_mode():
            for block in blocks:
                hidden = block(hidden)
                out.append(hidden.reshape(-1, args.width).clone())
        return out

    def online() -> None:
        trainer = OnlineTrainer({
            name: LayerTrainer(name, model, config, buffer_rows=capacity, planned_steps=steps)
            for name, model in saes().items()})
        for start in range(0, args.samples, args.batch_samples):
            layers = forward(data[start:start + args.batch_samples])
            trainer.feed({f"layer{i:02d}": tokens for i, tokens in enumerate(layers)},
                         n_samples=layers[0].shape[0] // args.tokens)
        trainer.finish()

    def encoder_only() -> None:
        for start in range(0, args.samples, args.batch_samples):
            forward(data[start:start + args.batch_samples])

    stored = torch.randn(steps * args.sae_batch, args.width)

    def sae_steps() -> None:
        for model in saes().values():
            optimizer = make_optimizer(model, config.lr)
            bounds = dead_latent_bounds(model)
            for step, batch in enumerate(stored.split(args.sae_batch)):
                take_step(model, optimizer, [batch], config, step=step, lr=config.lr, dead_bounds=bounds)

    tasks = {"online": online, "encoder": encoder_only, "SAE steps": sae_steps}
    seconds: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(args.rounds):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in seconds.items()}
    overhead = (best["online"] - best["encoder"] - best["SAE steps"]) / best["SAE steps"]
    buffer_mb = args.layers * capacity * args.width * 4 / 1e6
    print(f"online per-layer training: {args.layers} layers × width {args.width}, "
          f"{args.tokens} tokens/sample, {args.samples} samples ({n_tokens:,} tokens per layer), "
          f"SAE L={8 * args.width} k=32 batch {args.sae_batch}; {torch.get_num_threads()} threads; "
          f"fastest of {args.rounds} rounds\n")
    for name in tasks:
        print(f"{name:12s}{best[name]:8.2f} s{n_tokens * args.layers / best[name]:14,.0f} layer-tokens/s")
    print(f"\nonline overhead over the SAE steps: {overhead:+.1%} (target < 25%)")
    print(f"buffers: {args.layers} × {capacity:,} rows × {args.width} × 4 B = {buffer_mb:.1f} MB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"seconds": seconds, "overhead": overhead, "buffer_mb": buffer_mb,
                       "setting": vars(args)}, handle, indent=2)


if __name__ == "__main__":
    main()
