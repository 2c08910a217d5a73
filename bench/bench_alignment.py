"""Post-hoc alignment at the heterogeneity paper's scale: m = 8192 latents per side, k = 32.

Paired sparse codes with planted structure: the latents form k blocks; each sample fires one latent
per block in the image stream (Zipf-like frequencies, a few latents never fire); the text stream
fires the planted partner σ(j) of each image latent j with probability 0.8 (value = image value
times log-normal noise), else another latent of the same block. Times (a) the coactivation
correlation (streamed float64 moments), (b) the Hungarian assignment on the m×m matrix, (c) the
re-indexing of one stream of a Local SAE, and the Figure 2 table; the correlation step is also
compared, on a smaller N in the same run, with np.corrcoef on dense float64 codes (and with a dense
standardised cross-block matmul), with the maximum difference of the two results. Peak resident
memory above each stage's start is sampled to show it does not grow with N. Prints JSON.

    python bench/bench_alignment.py [--latents 8192] [--samples 100000] [--k 32] [--baseline-samples 2000]
"""

from __future__ import annotations

import os

# numpy's bundled OpenBLAS (0.3.31, DYNAMIC_ARCH) segfaults on this machine's AVX-512 CPU in the SYRK
# call behind np.corrcoef for a [2000, 16384] input (numpy issue #19685 describes the same A @ A.T
# crash); its Haswell kernels run the same product at the same speed here. Set before numpy loads.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from xsae.alignment import (
    coactivation_correlation,
    decoder_cosine_by_correlation,
    match_latents,
    permute_stream_latents,
)
from xsae.sae import Codes, SAEConfig, SparseAutoencoder


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def measured(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak resident MiB above the start), RSS sampled every 5 ms."""
    start_rss, peak, done = rss_mib(), [rss_mib()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return result, seconds, max(peak[0], rss_mib()) - start_rss


def planted_codes(n_samples: int, n_latents: int, k: int, seed: int) -> tuple[Codes, Codes, np.ndarray]:
    """Image and text codes `[N, k]` (distinct latents per row) and the planted σ: text σ[j] ↔ image j."""
    g = torch.Generator().manual_seed(seed)
    block = n_latents // k
    sigma = torch.randperm(n_latents, generator=g)
    weights = 1.0 / (1.0 + torch.randperm(block * k, generator=g).reshape(k, block).double())
    weights[torch.rand(k, block, generator=g) < 0.02] = 0.0  # ~2% of latents never fire
    offsets = (torch.arange(k) * block)[None, :]
    image = torch.stack([torch.multinomial(weights[b], n_samples, replacement=True, generator=g)
                         for b in range(k)], dim=1) + offsets
    other = torch.stack([torch.multinomial(weights[b], n_samples, replacement=True, generator=g)
                         for b in range(k)], dim=1) + offsets
    keep = torch.rand(n_samples, k, generator=g) < 0.8
    text = sigma[torch.where(keep, image, other)]
    image_values = torch.empty(n_samples, k).exponential_(generator=g)
    noise = torch.exp(0.3 * torch.randn(n_samples, k, generator=g))
    text_values = torch.where(keep, image_values * noise, torch.empty(n_samples, k).exponential_(generator=g))
    return Codes(image_values, image), Codes(text_values, text), sigma.numpy()


def naive_corrcoef(dense_a: np.ndarray, dense_b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(dense_a, dense_b, rowvar=False)
    return np.nan_to_num(full[: dense_a.shape[1], dense_a.shape[1]:], nan=0.0)


def dense_cross_block(dense_a: np.ndarray, dense_b: np.ndarray) -> np.ndarray:
    """Standardise the columns, one dense float64 matmul of the cross block only."""
    def standardised(x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(0)
        norm = np.sqrt((centred ** 2).sum(0))
        return np.divide(centred, norm, out=np.zeros_like(centred), where=norm > 0)

    return standardised(dense_a).T @ standardised(dense_b)


def baselines(n_small: int, codes_img: Codes, codes_txt: Codes,
              correlate: Callable[[int, str], Any], n_latents: int) -> dict[str, Any]:
    """Our correlation vs np.corrcoef and a dense cross-block matmul on the first `n_small` samples."""
    ours, ours_seconds, _ = measured(lambda: correlate(n_small, "cpu"))
    ours = ours.correlation.numpy()
    dense_img, dense_txt = (Codes(c.values[:n_small].double(), c.indices[:n_small]).dense(n_latents).numpy()
                            for c in (codes_img, codes_txt))
    naive, naive_seconds, naive_peak = measured(lambda: naive_corrcoef(dense_img, dense_txt))
    result = {
        "samples": n_small,
        "ours_seconds": round(ours_seconds, 3),
        "np_corrcoef_seconds": round(naive_seconds, 2),
        "np_corrcoef_samples_per_s": round(n_small / naive_seconds, 1),
        "np_corrcoef_peak_rss_above_start_mib": round(naive_peak, 1),
        "speedup_vs_np_corrcoef": round(naive_seconds / ours_seconds, 1),
        "max_abs_difference_vs_np_corrcoef": float(np.abs(ours - naive).max()),
        "equal_to_1e-8": bool(np.allclose(ours, naive, atol=1e-8, rtol=0)),
    }
    del naive
    block, block_seconds, _ = measured(lambda: dense_cross_block(dense_img, dense_txt))
    result["dense_cross_block_seconds"] = round(block_seconds, 2)
    result["speedup_vs_dense_cross_block"] = round(block_seconds / ours_seconds, 1)
    result["max_abs_difference_vs_dense_cross_block"] = float(np.abs(ours - block).max())
    return result


def noise_floor_matching(codes_img: Codes, codes_txt: Codes, n_latents: int, chunk_rows: int) -> dict:
    """Hungarian timing on the correlation of codes whose pairing is destroyed by a row shuffle."""
    shuffle = torch.randperm(codes_txt.values.shape[0], generator=torch.Generator().manual_seed(3))
    shuffled = Codes(codes_txt.values[shuffle], codes_txt.indices[shuffle])
    noise = coactivation_correlation(codes_img, shuffled, n_latents, n_latents, chunk_rows=chunk_rows)
    floor, seconds, peak = measured(lambda: match_latents(noise.correlation, noise.alive_a, noise.alive_b))
    return {"seconds": round(seconds, 2), "peak_rss_above_start_mib": round(peak, 1),
            "mean_matched_correlation": round(floor.mean_matched_correlation, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--baseline-samples", type=int, default=2000)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=768, help="embedding width of the SAE to re-index")
    parser.add_argument("--skip-noise-floor", action="store_true", help="skip the unstructured Hungarian run")
    args = parser.parse_args()
    L, N, k = args.latents, args.samples, args.k
    report: dict[str, Any] = {"latents": L, "samples": N, "k": k, "chunk_rows": args.chunk_rows,
                              "threads": torch.get_num_threads()}

    (codes_img, codes_txt, sigma), seconds, _ = measured(lambda: planted_codes(N, L, k, seed=0))
    report["generate_seconds"] = round(seconds, 2)

    # (a) correlation: the whole N, then a quarter of it, to show memory does not grow with N.
    def correlate(n: int, device: str) -> Any:
        return coactivation_correlation(Codes(codes_img.values[:n], codes_img.indices[:n]),
                                        Codes(codes_txt.values[:n], codes_txt.indices[:n]), L, L,
                                        chunk_rows=args.chunk_rows, device=device)

    output_mib = L * L * 8 / 2**20
    correlation_report = {"output_mib": round(output_mib, 1)}
    for n in (N // 4, N):
        stats, seconds, peak = measured(lambda n=n: correlate(n, "cpu"))
        correlation_report[f"cpu_n{n}"] = {"seconds": round(seconds, 2), "samples_per_s": round(n / seconds),
                                           "peak_rss_above_start_mib": round(peak, 1)}
    if torch.cuda.is_available():
        correlate(args.chunk_rows, "cuda")  # warm-up
        gpu_stats, seconds, _ = measured(lambda: correlate(N, "cuda"))
        difference = float((gpu_stats.correlation.cpu() - stats.correlation).abs().max())
        correlation_report["cuda"] = {"seconds": round(seconds, 3), "samples_per_s": round(N / seconds),
                                      "max_abs_difference_to_cpu": difference}
        del gpu_stats
    report["correlation"] = correlation_report

    # naive baselines on a smaller N, in this run
    report["baseline"] = baselines(min(args.baseline_samples, N), codes_img, codes_txt, correlate, L)

    # (b) Hungarian on the full m×m matrix
    matching, seconds, peak = measured(lambda: match_latents(stats.correlation, stats.alive_a, stats.alive_b))
    alive_pairs = matching.matched
    report["hungarian"] = {
        "seconds": round(seconds, 2), "peak_rss_above_start_mib": round(peak, 1),
        "n_alive_image": int(stats.alive_a.sum()), "n_alive_text": int(stats.alive_b.sum()),
        "n_matched": matching.n_matched,
        "mean_matched_correlation": round(matching.mean_matched_correlation, 4),
        "planted_pairs_recovered": float((matching.permutation[alive_pairs] == sigma[alive_pairs]).mean()),
        "is_permutation": bool(np.array_equal(np.sort(matching.permutation), np.arange(L))),
    }

    # (b') Hungarian on a noise-floor matrix (pairing destroyed by shuffling the text rows): no
    # planted structure to exploit, the hardest input the assignment meets in practice.
    if not args.skip_noise_floor:
        report["hungarian_noise_floor"] = noise_floor_matching(codes_img, codes_txt, L, args.chunk_rows)

    # (c) re-index one stream of a two-stream Local SAE
    model = SparseAutoencoder(SAEConfig((args.dim, args.dim), L, k, "local"),
                              generator=torch.Generator().manual_seed(1)).eval()
    probe = [torch.randn(256, args.dim, generator=torch.Generator().manual_seed(2)) for _ in range(2)]
    with torch.no_grad():
        before = model(probe)[1]
    _, seconds, _ = measured(lambda: permute_stream_latents(model, 1, matching.permutation))
    with torch.no_grad():
        after = model(probe)[1]
    report["permute"] = {"seconds": round(seconds, 4), "latents_per_s": round(L / seconds),
                         "max_abs_reconstruction_change": float((after - before).abs().max())}

    # Figure 2 table: all alive pairs binned by correlation, cosine distance of decoder rows
    frame, seconds, peak = measured(lambda: decoder_cosine_by_correlation(
        model.dec_weight[0], model.dec_weight[1], stats))
    report["figure2_table"] = {"seconds": round(seconds, 2), "rows": len(frame),
                               "pairs_per_bin": frame.attrs["pairs_per_bin"],
                               "peak_rss_above_start_mib": round(peak, 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
