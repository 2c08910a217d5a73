"""SAE training throughput against the floor of a TopK step, everything measured in the same run.

Setting of the SPARC speed target: three streams of 768/512/768, L=8192, k=64, batch 256, Global
TopK, λ=1, AuxK on (a quarter of one stream's latents dead, so that AuxK does work).

With TopK every product of a training step can be sparse except the encoder's forward GEMM: the
codes, and so the decodes, the decoder gradient and the encoder's weight gradient, have k
non-zeros per sample. A step therefore cannot be faster than the dense encoder GEMM
`[B, Σd] @ [Σd, L]` plus one Adam update of every parameter (a dense, memory-bound pass over
parameters, gradients and both moments). The script times, in interleaved rounds so that a shared
machine's load falls on all of them alike:

  xsae fp32      this project's step: `compute_losses` (AuxK work only for the stream that can have
                 dead latents, as the trainer does; checked to give the same loss and gradients),
                 backward, decoder-gradient projection, Adam (`make_optimizer`), renormalisation
  xsae bf16      the same under bfloat16 autocast (the `autocast: bf16` run option)
  dense          the straightforward step most SAE code uses: dense logits with autograd, codes
                 scattered into a dense `[B, L]` matrix, every self/cross/AuxK decode a dense
                 `[B, L] @ [L, d]` product; same loss (checked), same updates
  encoder GEMM   the three encoder GEMMs alone (forward, no autograd)
  Adam           one Adam step over parameters of the same shapes alone (fused and foreach are
                 both timed; the faster counts)
  floor          1 / (1/GEMM + 1/Adam), in samples/s

and prints samples/s of each (fastest round, and the median round), each step's ratio to the
floor (from the fastest and from the median rounds), and xsae over the dense baseline. On a
shared machine the median is the steadier figure; a step made of many operations loses more to
other processes than the two single operations of the floor do.

    python bench/bench_train.py [--steps 2] [--rounds 3] [--device cpu] [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from xsae.metrics.reconstruction import nmse_per_sample
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, compute_losses, dead_latent_bounds, make_optimizer

DIMS, N_LATENTS, K, BATCH = (768, 512, 768), 8192, 64, 256


def dense_losses(model: SparseAutoencoder, batch: list[torch.Tensor], config: TrainingConfig) -> torch.Tensor:
    """The same objective, computed the dense way."""
    L = model.config.n_latents
    logits = [model.logits(s, x) for s, x in enumerate(batch)]
    shared = torch.stack(logits).sum(0).topk(model.config.k, dim=1).indices
    dense = [torch.zeros_like(h).scatter(1, shared, F.relu(h.gather(1, shared))) for h in logits]
    recons = [z @ model.dec_weight[s] + model.pre_bias[s] for s, z in enumerate(dense)]
    self_terms = [nmse_per_sample(r, x).mean() for r, x in zip(recons, batch, strict=True)]
    aux_terms = []
    for s, x in enumerate(batch):
        dead = model.steps_since_active(s) > config.dead_steps
        idx = logits[s].masked_fill(~dead, float("-inf")).topk(config.auxk_k, dim=1).indices
        z_aux = torch.zeros(x.shape[0], L, device=x.device).scatter(
            1, idx, F.relu(logits[s].gather(1, idx)) * dead[idx])
        bias = model.pre_bias[s]  # the default AuxK form: target x − x̂ + b_pre, kept when none is dead
        aux_terms.append(nmse_per_sample(z_aux @ model.dec_weight[s] + bias,
                                         x - recons[s].detach() + bias.detach()).mean())
    cross = [nmse_per_sample(dense[s] @ model.dec_weight[t] + model.pre_bias[t], batch[t]).mean()
             for s in range(len(batch)) for t in range(len(batch)) if s != t]
    return (torch.stack(self_terms).mean() + config.auxk_coef * torch.stack(aux_terms).mean()
            + config.cross_weight * torch.stack(cross).mean())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                  loss_fn: Callable[[SparseAutoencoder, list[torch.Tensor]], torch.Tensor]
                  ) -> Callable[[list[torch.Tensor]], None]:
    """One optimisation step as the trainer takes it (its logging and bookkeeping aside)."""
    def step(batch: list[torch.Tensor]) -> None:
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.project_decoder_grads()
        optimizer.step()
        model.normalize_decoder()
    return step


def adam_steps(model: SparseAutoencoder, lr: float) -> dict[str, Callable[[], None]]:
    """Adam alone over copies of the model's parameters with random gradients: fused and foreach
    (where the device has them)."""
    out = {}
    for kind in ("fused", "foreach"):
        params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        try:
            optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **{kind: True})
            optimizer.step()
        except (RuntimeError, TypeError):  # this device or build has no such implementation
            continue
        out[kind] = optimizer.step
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = TrainingConfig(epochs=1, batch_size=BATCH, lr=1e-4, cross_weight=1.0, dead_steps=1000)
    g = torch.Generator().manual_seed(0)
    batches = [[F.normalize(torch.randn(BATCH, d, generator=g), dim=1).to(device) for d in DIMS]
               for _ in range(4)]

    def fresh() -> SparseAutoencoder:
        model = SparseAutoencoder(SAEConfig(DIMS, N_LATENTS, K, "global"),
                                  generator=torch.Generator().manual_seed(1)).to(device)
        model.steps_since_active(1)[: N_LATENTS // 4] = 5000  # a quarter of one stream dead
        return model

    check = fresh()
    # AuxK work only where latents can be dead, as the trainer decides it (same loss and gradients).
    aux_streams = [s for s, bound in enumerate(dead_latent_bounds(check)) if bound > config.dead_steps]
    gradients = []
    for streams in (None, aux_streams):
        check.zero_grad(set_to_none=True)
        loss = compute_losses(check, batches[0], config, aux_streams=streams)[0]
        loss.backward()
        gradients.append([p.grad for p in check.parameters()])
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=0)
    torch.testing.assert_close(loss, dense_losses(check, batches[0], config), rtol=1e-4, atol=1e-5)

    def xsae_losses(m: SparseAutoencoder, b: list[torch.Tensor]) -> torch.Tensor:
        return compute_losses(m, b, config, aux_streams=aux_streams)[0]

    def bf16_losses(m: SparseAutoencoder, b: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return xsae_losses(m, b)

    def gemm(_batch: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, x in enumerate(_batch):
                check.logits(s, x)

    tasks: dict[str, Callable[[list[torch.Tensor]], None]] = {}
    for name, loss_fn in (("xsae fp32", xsae_losses),
                          ("xsae bf16", bf16_losses),
                          ("dense", lambda m, b: dense_losses(m, b, config))):
        model = fresh()
        tasks[name] = training_step(model, make_optimizer(model, config.lr), loss_fn)
    tasks["encoder GEMM"] = gemm
    for kind, step in adam_steps(check, config.lr).items():
        tasks[f"Adam {kind}"] = lambda _batch, step=step: step()

    for task in tasks.values():  # warm-up
        for i in range(2):
            task(batches[i % len(batches)])
    seconds: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(args.rounds):
        for name, task in tasks.items():
            _sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                task(batches[i % len(batches)])
            _sync(device)
            seconds[name].append(time.perf_counter() - start)

    def rate(times: list[float] | float) -> float:
        return args.steps * BATCH / (min(times) if isinstance(times, list) else times)

    best = {name: rate(times) for name, times in seconds.items()}
    median = {name: rate(statistics.median(times)) for name, times in seconds.items()}
    adam_kind = max((name for name in tasks if name.startswith("Adam")), key=best.__getitem__)
    floor = 1 / (1 / best["encoder GEMM"] + 1 / best[adam_kind])
    floor_median = 1 / (1 / median["encoder GEMM"] + 1 / median[adam_kind])
    rows = [("xsae fp32", "xsae step, fp32"), ("xsae bf16", "xsae step, bf16 autocast"),
            ("dense", "dense baseline step"), ("encoder GEMM", "encoder GEMM alone"),
            (adam_kind, f"{adam_kind} alone")]
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"SAE training, streams {'/'.join(map(str, DIMS))}, L={N_LATENTS}, k={K}, batch {BATCH}, "
          f"Global TopK, λ=1, AuxK; {device}" + (f", {threads} threads" if threads else ""))
    print(f"{args.steps} steps × {args.rounds} interleaved rounds; samples/s of the fastest round "
          f"and of the median round\n")
    print(f"{'':28s}{'fastest':>10s}{'median':>10s}{'/ floor':>10s}{'(median)':>10s}")
    for key, label in rows:
        ratio = (f"{best[key] / floor:10.2f}{median[key] / floor_median:10.2f}"
                 if key in ("xsae fp32", "xsae bf16", "dense") else "")
        print(f"{label:28s}{best[key]:10,.0f}{median[key]:10,.0f}{ratio}")
    print(f"{'floor = 1/(1/GEMM + 1/Adam)':28s}{floor:10,.0f}{floor_median:10,.0f}{1:10.2f}{1:10.2f}")
    print(f"\nxsae fp32 / dense baseline: {best['xsae fp32'] / best['dense']:.2f}; "
          f"xsae bf16 / dense baseline: {best['xsae bf16'] / best['dense']:.2f}")

    report = {
        "setting": {"dims": DIMS, "n_latents": N_LATENTS, "k": K, "batch_size": BATCH, "topk": "global",
                    "cross_weight": 1.0, "device": str(device), "threads": threads,
                    "steps_per_round": args.steps, "rounds": args.rounds},
        "samples_per_s_fastest": {name: round(value, 1) for name, value in best.items()},
        "samples_per_s_median": {name: round(value, 1) for name, value in median.items()},
        "adam": adam_kind,
        "floor_samples_per_s": round(floor, 1),
        "floor_samples_per_s_median": round(floor_median, 1),
        "xsae_fp32_over_floor": round(best["xsae fp32"] / floor, 3),
        "xsae_fp32_over_floor_median": round(median["xsae fp32"] / floor_median, 3),
        "xsae_bf16_over_floor": round(best["xsae bf16"] / floor, 3),
        "dense_over_floor": round(best["dense"] / floor, 3),
        "xsae_fp32_over_dense": round(best["xsae fp32"] / best["dense"], 2),
        "seconds": seconds,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
