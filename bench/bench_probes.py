"""Benchmark: vectorised 1-D probes (xsae.metrics.probes) against a per-candidate scikit-learn loop.

Random TopK-like codes (N rows, L latents, k active per row, latent popularity skewed as in a
trained SAE) and C multi-hot labels of which about 430 have at least 50 positives, as in the SPARC
Open Images evaluation. The vectorised evaluation runs on every task; the scikit-learn loop (same
splits and candidates, one LogisticRegression(C=1, lbfgs, max_iter=200) fit per candidate) runs on
a subset of tasks spread over the task sizes and is extrapolated to all tasks.

    python bench/bench_probes.py [--rows 100000] [--latents 8192] [--k 64] [--subset 24] [--repeats 3]

The vectorised evaluation is timed warm (best of `--repeats` in one process, as the evaluation
job calls it once per stream); the first, cold call is printed beside it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from xsae.metrics.probes import balanced_split, evaluate_1d_probes
from xsae.sae import Codes


def make_codes(n_rows: int, n_latents: int, k: int, seed: int = 0) -> Codes:
    """k distinct latents per row, drawn without replacement ∝ a Zipf-like popularity (Gumbel top-k)."""
    gen = torch.Generator().manual_seed(seed)
    log_pop = -0.8 * torch.log(torch.arange(1, n_latents + 1, dtype=torch.float32))
    log_pop = log_pop[torch.randperm(n_latents, generator=gen)]
    indices = []
    for start in range(0, n_rows, 4096):
        u = torch.rand(min(4096, n_rows - start), n_latents, generator=gen).clamp_min_(1e-12)
        indices.append((log_pop - torch.log(-torch.log(u))).topk(k, dim=1).indices)
    idx = torch.cat(indices)
    values = torch.empty(idx.shape).exponential_(generator=gen)
    return Codes(values, idx)


def make_labels(n_rows: int, n_classes: int, n_frequent: int, seed: int = 1) -> np.ndarray:
    """`[N, C]` bool: `n_frequent` classes with 50–10,000 positives (log-uniform), the rest 1–49."""
    rng = np.random.default_rng(seed)
    n_pos = np.concatenate([np.exp(rng.uniform(np.log(50), np.log(10_000), n_frequent)),
                            rng.integers(1, 50, n_classes - n_frequent)]).astype(np.int64)
    rng.shuffle(n_pos)
    labels = np.zeros((n_rows, n_classes), dtype=bool)
    for c, n in enumerate(n_pos):
        labels[rng.choice(n_rows, n, replace=False), c] = True
    return labels


def sklearn_task(idx: np.ndarray, val: np.ndarray, labels: np.ndarray, task: int, n_latents: int,
                 n_candidates: int = 20):
    """One task the plain way: split, rank, then one scikit-learn fit per candidate latent."""
    positives = np.flatnonzero(labels[:, task])
    negatives = np.flatnonzero(~labels[:, task])
    split = balanced_split(positives, negatives, task)
    (tr, y_tr), (va, y_va), (te, y_te) = split.train, split.val, split.test
    active_tr = np.where(val[tr] > 0, idx[tr], -1)
    counts = np.bincount(active_tr[y_tr].ravel() + 1, minlength=n_latents + 1)[1:]
    ever = np.bincount(active_tr.ravel() + 1, minlength=n_latents + 1)[1:] > 0
    order = sorted(np.flatnonzero(ever), key=lambda j: (-counts[j], j))[:n_candidates]

    def feature(rows, latent):
        return ((idx[rows] == latent) & (val[rows] > 0)).any(axis=1).astype(np.float64)[:, None]

    best = (np.inf, -1, np.nan)
    for latent in order:
        model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=200)
        model.fit(feature(tr, latent), y_tr)
        v = log_loss(y_va, model.predict_proba(feature(va, latent))[:, 1], labels=[0, 1])
        if v < best[0]:
            t = log_loss(y_te, model.predict_proba(feature(te, latent))[:, 1], labels=[0, 1])
            best = (v, int(latent), t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--latents", type=int, default=8192)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--classes", type=int, default=601)
    parser.add_argument("--frequent", type=int, default=430)
    parser.add_argument("--subset", type=int, default=24, help="tasks timed with the scikit-learn loop")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the vectorised evaluation (binarised); the best is compared")
    args = parser.parse_args()

    t0 = time.perf_counter()
    codes = make_codes(args.rows, args.latents, args.k)
    labels = make_labels(args.rows, args.classes, args.frequent)
    print(f"data: N={args.rows} L={args.latents} k={args.k} C={args.classes} "
          f"({time.perf_counter() - t0:.1f} s to generate)")

    timings: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for binarize, repeats in ((True, args.repeats), (False, 1)):
        for _ in range(repeats):
            t0 = time.perf_counter()
            results[binarize] = evaluate_1d_probes(codes, labels, n_latents=args.latents, binarize=binarize)
            timings[binarize].append(time.perf_counter() - t0)
    res = results[True]
    n_tasks = len(res.table)
    n_rows = int(res.table[["n_train", "n_val", "n_test"]].to_numpy().sum())
    print(f"tasks: {n_tasks} with >= 50 positives, {n_rows} balanced rows in all, "
          f"{n_tasks * 20} candidate probes")
    warm = min(timings[True])
    print(f"vectorised, binarised features: {warm:.3f} s, best of {len(timings[True])} in one process "
          f"(the first, cold: {timings[True][0]:.3f} s)  (mean test loss {res.mean_test_loss:.4f})")
    print(f"vectorised, raw values:         {timings[False][0]:.2f} s  "
          f"(mean test loss {results[False].mean_test_loss:.4f})")

    # scikit-learn loop on tasks spread evenly over the task sizes, extrapolated by the mean.
    by_size = res.table.sort_values("n_pos").reset_index(drop=True)
    picks = by_size.iloc[np.linspace(0, n_tasks - 1, min(args.subset, n_tasks)).round().astype(int)]
    idx = codes.indices.numpy()
    val = codes.values.numpy()
    per_task, max_diff, same_latent = [], 0.0, 0
    for row in picks.itertuples():
        t0 = time.perf_counter()
        _, latent, test = sklearn_task(idx, val, labels, int(row.task), args.latents)
        per_task.append(time.perf_counter() - t0)
        max_diff = max(max_diff, abs(test - row.test_loss))
        same_latent += latent == row.best_latent
    loop = float(np.mean(per_task)) * n_tasks
    print(f"scikit-learn loop: {len(per_task)} tasks in {sum(per_task):.2f} s "
          f"-> {loop:.1f} s extrapolated to {n_tasks} tasks")
    print(f"  agreement on those tasks: same best latent {same_latent}/{len(per_task)}, "
          f"max |test loss difference| {max_diff:.2e} (scikit-learn at its default tol=1e-4)")
    print(f"speed-up (binarised): {loop / warm:.1f}x  "
          f"({loop / timings[True][0]:.1f}x against the cold first call)")


if __name__ == "__main__":
    main()
