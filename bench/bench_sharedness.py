"""wMPPC between two SAEs' sparse codes (8192 features, k=32): correlation throughput vs plain matmul.

    python bench/bench_sharedness.py [--rows 20000] [--features 8192] [--k 32] [--chunk-rows 4096]
                                     [--repeats 1]

Two synthetic TopK code sets share structure (B's selection is a noisy, feature-permuted copy of
A's), so ρ is far from the null. The codes are generated once and saved; each phase loads them in
a fresh process so that its peak resident memory is its own (`baseline_mib`: after loading).

  matmul  float32 `Aᵀ B` accumulated over row chunks of the densified codes: exactly the shapes of
          the correlation's matmul (`[m, chunk] @ [chunk, m]` per chunk), nothing else
  dense   `max_correlation(method="dense")`, float32 matmul: densify, centre, matmul, float64
          Chan merge, column-block max. The matmul above is timed again in the same process just
          before and after (after the peak memory is read), and `fraction_of_matmul_rate` divides
          by the faster of those two, so that a shared machine's load affects both alike
  sparse  `max_correlation(method="sparse")`: exact float64 products of the k² active pairs of
          each row; plus wMPPC with B's rows shuffled (Appendix C's null)

GFLOP/s counts 2·N·m_a·m_b for every phase (for the sparse path: the dense-equivalent rate).
With `--repeats R` the phases run R times, interleaved, and each reports its fastest run (the
machine may be shared); `all_seconds` lists every run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xsae.metrics.sharedness import max_correlation, mppc, shuffle_null, wmppc
from xsae.sae import Codes


def peak_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the address space, which exec
    replaces; ru_maxrss survives exec and so would report the parent's peak at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_codes(rows: int, features: int, k: int, seed: int = 0) -> tuple[Codes, Codes]:
    """Gumbel-top-k selections under Zipf feature frequencies; B re-selects from A's noisy,
    feature-permuted logits, so most of A's features have a correlated partner in B."""
    g = torch.Generator().manual_seed(seed)
    log_frequency = -0.8 * torch.log1p(torch.arange(features, dtype=torch.float32))
    permutation = torch.randperm(features, generator=g)
    parts_a, parts_b = [], []
    for start in range(0, rows, 4096):
        n = min(rows, start + 4096) - start
        gumbel = -torch.log(-torch.log(torch.rand(n, features, generator=g).clamp_min(1e-12)))
        logits = log_frequency + gumbel
        top_a = logits.topk(k, dim=1)
        noisy = logits[:, permutation] + 0.7 * torch.randn(n, features, generator=g)
        top_b = noisy.topk(k, dim=1)
        parts_a.append((F.softplus(top_a.values), top_a.indices))
        parts_b.append((F.softplus(top_b.values), top_b.indices))
    return tuple(Codes(torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts]))  # type: ignore[return-value]
                 for parts in (parts_a, parts_b))


def save_codes(codes: tuple[Codes, Codes], out: Path) -> None:
    for name, code in zip("ab", codes, strict=True):
        np.save(out / f"values_{name}.npy", code.values.numpy())
        np.save(out / f"indices_{name}.npy", code.indices.numpy())


def load_codes(out: Path) -> tuple[Codes, Codes]:
    return tuple(Codes(torch.from_numpy(np.load(out / f"values_{name}.npy")),  # type: ignore[return-value]
                       torch.from_numpy(np.load(out / f"indices_{name}.npy"))) for name in "ab")


def matmul_seconds(codes_a: Codes, codes_b: Codes, rows: int, features: int, chunk_rows: int) -> float:
    """Seconds of the correlation's matmul alone: Σ over row chunks of `[m, chunk] @ [chunk, m]`."""
    dense_a = Codes(codes_a.values[:chunk_rows], codes_a.indices[:chunk_rows]).dense(features)
    dense_b = Codes(codes_b.values[:chunk_rows], codes_b.indices[:chunk_rows]).dense(features)
    product = torch.zeros(features, features)
    start_s = time.perf_counter()
    for start in range(0, rows, chunk_rows):
        n = min(rows, start + chunk_rows) - start
        product.addmm_(dense_a[:n].T, dense_b[:n])
    return time.perf_counter() - start_s


def child(phase: str, rows: int, features: int, chunk_rows: int, out: Path) -> None:
    """One phase, in its own process."""
    codes_a, codes_b = load_codes(out)
    baseline = peak_mib()
    flops = 2.0 * rows * features * features
    report: dict[str, float | str] = {"phase": phase}
    if phase == "matmul":
        seconds = matmul_seconds(codes_a, codes_b, rows, features, chunk_rows)
    else:
        before_s = matmul_seconds(codes_a, codes_b, rows, features, chunk_rows) if phase == "dense" else 0.0
        start_s = time.perf_counter()
        result = max_correlation(codes_a, codes_b, n_features_a=features, n_features_b=features,
                                 chunk_rows=chunk_rows, method=phase, matmul_dtype=torch.float32)
        seconds = time.perf_counter() - start_s
        np.save(out / f"rho_{phase}.npy", result.rho.numpy())
        report.update(wmppc=round(wmppc(result.rho, result.activation_mass), 6),
                      mppc=round(mppc(result.rho), 6),
                      dead_features_a=int((~result.alive_a).sum()))
        if phase == "sparse":
            null_start = time.perf_counter()
            null = shuffle_null(codes_a, codes_b, n_permutations=1, seed=0, n_features_a=features,
                                n_features_b=features, chunk_rows=chunk_rows, method="sparse")
            report.update(shuffled_wmppc=round(float(null.null[0]), 6),
                          shuffle_null_seconds=round(time.perf_counter() - null_start, 2))
    report.update(seconds=round(seconds, 3), gflops=round(flops / seconds / 1e9, 1),
                  baseline_mib=round(baseline, 1), peak_mib=round(peak_mib(), 1),
                  increase_mib=round(peak_mib() - baseline, 1))
    if phase == "dense":
        reference_s = min(before_s, matmul_seconds(codes_a, codes_b, rows, features, chunk_rows))
        report.update(adjacent_matmul_gflops=round(flops / reference_s / 1e9, 1),
                      fraction_of_matmul_rate=round(reference_s / seconds, 3))
    print(json.dumps(report))


def run_phase(phase: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--rows", str(args.rows),
               "--features", str(args.features), "--chunk-rows", str(args.chunk_rows), "--out", str(out)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--features", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--phase", choices=["matmul", "dense", "sparse"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args.phase, args.rows, args.features, args.chunk_rows, args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        save_codes(synthetic_codes(args.rows, args.features, args.k), out)
        runs: dict[str, list[dict]] = {"matmul": [], "dense": [], "sparse": []}
        for _ in range(max(1, args.repeats)):
            for phase, reports in runs.items():
                reports.append(run_phase(phase, args, out))
        phases = {phase: {**min(reports, key=lambda r: r["seconds"]),
                          "all_seconds": [r["seconds"] for r in reports]} for phase, reports in runs.items()}
        rho_dense, rho_sparse = np.load(out / "rho_dense.npy"), np.load(out / "rho_sparse.npy")
    matmul, dense, sparse = phases["matmul"], phases["dense"], phases["sparse"]
    report = {
        "rows": args.rows, "features": args.features, "k": args.k, "chunk_rows": args.chunk_rows,
        "threads": torch.get_num_threads(), "device": "cpu",
        "matmul_float32": matmul,
        "dense_correlation": dense,
        "sparse_correlation": {**sparse, "speedup_vs_dense": round(dense["seconds"] / sparse["seconds"], 1)},
        "max_abs_rho_dense_vs_sparse": float(np.abs(rho_dense - rho_sparse).max()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
