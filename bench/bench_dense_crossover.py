"""Where a training step's dense products beat its sparse ones, measured in the same run.

A TopK step differentiates only the k selected latents of each row: the encoder and decoder
gradients are sums of B·k outer products, grouped by latent (`xsae.sae.sum_by_index`). That
saves B·(L − k)·d multiply-adds but pays a sort and scattered row reads per entry, so when k is a
large fraction of L — the default's per-layer SAEs have L = 32, k = 16 — the dense products
(`[B, L] @ [L, d]`, as plain autograd computes them) are faster. `xsae.sae.dense_products_pay`
decides which path training takes; this script times one single-stream
step (`compute_losses`, backward, Adam) both ways for a range of L / k at the same batch and
width and prints each time, their ratio, and the measured crossover beside the configured one.

    python bench/bench_dense_crossover.py [--batch 8192] [--width 64] [--k 16] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xsae import sae as sae_module
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, compute_losses, make_optimizer, step_optimizer

RATIOS = (2, 4, 8, 16, 32, 64, 128)


def step_seconds(ratio: int, *, dense: bool, batch: torch.Tensor, k: int, steps: int) -> float:
    """Seconds per training step of an SAE with L = ratio · k, on the dense or the sparse path."""
    model = SparseAutoencoder(SAEConfig((batch.shape[1],), ratio * k, k),
                              generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model, 1e-3)
    config = TrainingConfig(epochs=1, batch_size=batch.shape[0], lr=1e-3, auxk_k=0, recon_loss="mse")
    saved = sae_module.DENSE_SPEEDUP
    sae_module.DENSE_SPEEDUP = 10**9 if dense else 0
    try:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            compute_losses(model, [batch], config)[0].backward()
            step_optimizer(optimizer)

        step()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps
    finally:
        sae_module.DENSE_SPEEDUP = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192, help="tokens per step")
    parser.add_argument("--width", type=int, default=64, help="input width d")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest counts")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    args = parser.parse_args()

    batch = torch.randn(args.batch, args.width, generator=torch.Generator().manual_seed(1))
    times: dict[tuple[int, bool], float] = {}
    for _ in range(args.rounds):
        for ratio in RATIOS:
            for dense in (False, True):
                seconds = step_seconds(ratio, dense=dense, batch=batch, k=args.k, steps=args.steps)
                times[ratio, dense] = min(times.get((ratio, dense), float("inf")), seconds)

    print(f"batch {args.batch}, d = {args.width}, k = {args.k}, {torch.get_num_threads()} thread(s); "
          f"fastest of {args.rounds} rounds")
    print(f"{'L / k':>6} {'L':>6} {'sparse ms':>10} {'dense ms':>9} {'sparse / dense':>15}")
    rows = []
    for ratio in RATIOS:
        sparse, dense = times[ratio, False], times[ratio, True]
        rows.append({"ratio": ratio, "n_latents": ratio * args.k, "sparse_s": sparse, "dense_s": dense})
        print(f"{ratio:>6} {ratio * args.k:>6} {sparse * 1e3:>10.2f} {dense * 1e3:>9.2f} "
              f"{sparse / dense:>15.2f}")
    faster = [row["ratio"] for row in rows if row["dense_s"] < row["sparse_s"]]
    measured = max(faster) if faster else 0
    configured = max((r for r in RATIOS if sae_module.dense_products_pay(r * args.k, args.k, args.width)),
                     default=0)
    print(f"dense is faster up to L / k = {measured} here; training takes it up to L / k = {configured}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"batch": args.batch, "width": args.width, "k": args.k, "rows": rows,
                       "measured_crossover": measured,
                       "configured_crossover": configured}, handle, indent=2)


if __name__ == "__main__":
    main()
