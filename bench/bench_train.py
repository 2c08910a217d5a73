"""SAE training throughput: this project's trainer step vs a dense-decode baseline, same process.

Setting of the SPARC speed target: three streams of 768/512/768, L=8192, k=64, batch 256, Global
TopK, λ=1, AuxK on. The baseline is the straightforward step most SAE code uses: dense logits
with autograd, codes scattered into a dense `[B, L]` matrix, and every self/cross/AuxK decode a
dense `[B, L] @ [L, d]` product. Both compute the same loss (checked below) and both update with
Adam, decoder-gradient projection and renormalisation.

    python bench/bench_train.py [--steps 20] [--device cpu]

Also times this project's step under bfloat16 autocast (the `autocast: bf16` run option).

Prints samples/s of each, their ratio, and the ratio to the SPARC reference code measured on this
2-core CPU (about 43 samples/s for this setting).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from xsae.metrics.reconstruction import nmse_per_sample
from xsae.sae import SAEConfig, SparseAutoencoder
from xsae.training import TrainingConfig, compute_losses, make_optimizer

REFERENCE_SAMPLES_PER_S = 43.0  # SPARC reference code, this setting, this 2-core CPU


def dense_losses(model: SparseAutoencoder, batch: list[torch.Tensor], config: TrainingConfig):
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
        z_aux = torch.zeros(x.shape[0], L).scatter(1, idx, F.relu(logits[s].gather(1, idx)) * dead[idx])
        aux_terms.append(nmse_per_sample(z_aux @ model.dec_weight[s], x - recons[s].detach()).mean()
                         * dead.any())
    cross = [nmse_per_sample(dense[s] @ model.dec_weight[t] + model.pre_bias[t], batch[t]).mean()
             for s in range(len(batch)) for t in range(len(batch)) if s != t]
    return (torch.stack(self_terms).mean() + config.auxk_coef * torch.stack(aux_terms).mean()
            + config.cross_weight * torch.stack(cross).mean())


def time_steps(model, optimizer, batches, loss_fn, steps: int, warmup: int = 2) -> float:
    def step(batch):
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.project_decoder_grads()
        optimizer.step()
        model.normalize_decoder()

    for i in range(warmup):
        step(batches[i % len(batches)])
    if batches[0].device.type == "cuda" if isinstance(batches[0], torch.Tensor) else False:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dims, L, k, batch_size = (768, 512, 768), 8192, 64, 256
    config = TrainingConfig(epochs=1, batch_size=batch_size, lr=1e-4, cross_weight=1.0,
                            dead_steps=1000)
    g = torch.Generator().manual_seed(0)
    batches = [[F.normalize(torch.randn(batch_size, d, generator=g), dim=1).to(device) for d in dims]
               for _ in range(4)]

    def fresh() -> SparseAutoencoder:
        model = SparseAutoencoder(SAEConfig(dims, L, k, "global"),
                                  generator=torch.Generator().manual_seed(1)).to(device)
        model.steps_since_active(1)[: L // 4] = 5000  # a quarter of one stream dead: AuxK does work
        return model

    check = fresh()
    ours_loss = compute_losses(check, batches[0], config)[0]
    torch.testing.assert_close(ours_loss, dense_losses(check, batches[0], config), rtol=1e-4, atol=1e-5)

    def bf16_losses(m, b):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return compute_losses(m, b, config)[0]

    results = {}
    for name, loss_fn in (("xsae", lambda m, b: compute_losses(m, b, config)[0]),
                          ("xsae_bf16_autocast", bf16_losses),
                          ("dense_baseline", lambda m, b: dense_losses(m, b, config))):
        model = fresh()
        seconds = time_steps(model, make_optimizer(model, config.lr), batches, loss_fn, args.steps)
        results[name] = args.steps * batch_size / seconds

    # The floor: the three dense encoder GEMMs alone (forward, no autograd).
    model = fresh()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(args.steps):
            for s, x in enumerate(batches[i % 4]):
                model.logits(s, x)
    results["encoder_gemm_floor"] = args.steps * batch_size / (time.perf_counter() - start)
    report = {
        "setting": {"dims": dims, "n_latents": L, "k": k, "batch_size": batch_size, "topk": "global",
                    "cross_weight": 1.0, "device": str(device), "threads": torch.get_num_threads()},
        "samples_per_s": {key: round(value, 1) for key, value in results.items()},
        "xsae_over_dense_baseline": round(results["xsae"] / results["dense_baseline"], 2),
        "xsae_over_reference_43_per_s": round(results["xsae"] / REFERENCE_SAMPLES_PER_S, 1),
        "xsae_bf16_over_reference_43_per_s": round(results["xsae_bf16_autocast"] / REFERENCE_SAMPLES_PER_S,
                                                   1),
        "xsae_over_gemm_floor": round(results["xsae"] / results["encoder_gemm_floor"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
