"""Evaluation throughput: encoding a held-out set and computing every SPARC metric on it.

Setting of the SPARC target: three streams of 768/512/768, L=8192, k=64, 601 labels with a long
tail of frequencies. Reports rows/s of each metric family (from the evaluation's own timings),
the whole evaluation, and, for reference, the SAE encoding alone measured in the same run.
Retrieval scales with N² (every query against every gallery row); the others with N.

    python bench/bench_eval.py [--rows 20000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from xsae.evaluation import EvaluationSettings, Labels, encode_all, evaluate_multistream
from xsae.sae import SAEConfig, SparseAutoencoder


def synthetic_labels(n_rows: int, n_labels: int, rng: np.random.Generator) -> Labels:
    frequency = np.clip(0.3 / (1 + np.arange(n_labels)) ** 0.8, 50 / n_rows, 0.3)
    leaves = rng.random((n_rows, n_labels)) < frequency
    parents = [None if j < 20 else int(j % 20) for j in range(n_labels)]
    return Labels(leaves.copy(), leaves, parents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    dims, L, k = (768, 512, 768), 8192, 64
    model = SparseAutoencoder(SAEConfig(dims, L, k, "global", ("clip_img", "clip_txt", "dino")),
                              generator=g).to(device).eval()
    shared = torch.randn(args.rows, 256, generator=g)
    inputs = [F.normalize(shared @ torch.randn(256, d, generator=g)
                          + 0.5 * torch.randn(args.rows, d, generator=g), dim=1).to(device) for d in dims]
    labels = synthetic_labels(args.rows, 601, np.random.default_rng(0))

    start = time.perf_counter()
    encode_all(model, inputs)
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rows, extra = evaluate_multistream(model, inputs, labels=labels, settings=EvaluationSettings())
    total = time.perf_counter() - start
    per_family = {name: round(args.rows / max(seconds, 1e-9), 1)
                  for name, seconds in extra["seconds"].items()}
    report = {
        "rows": args.rows, "device": str(device), "threads": torch.get_num_threads(),
        "seconds": {name: round(seconds, 2) for name, seconds in extra["seconds"].items()},
        "rows_per_s": per_family,
        "encode_only_rows_per_s": round(args.rows / encode_seconds, 1),
        "total_seconds": round(total, 2),
        "total_rows_per_s": round(args.rows / total, 1),
        "retrieval_directions": int((rows["metric"] == "retrieval_R@1").sum()),
    }
    retrieval = extra["seconds"].get("retrieval", 0.0)
    report["extrapolated_seconds_at_100k"] = round((total - retrieval) * 100_000 / args.rows
                                                   + retrieval * (100_000 / args.rows) ** 2, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
