"""Training memory: a dataset of three streams is held once, not copied per stream or per step.

Writes three feature files (768/512/768 float32, `--rows` rows, the extraction contract), then in a
fresh process loads them the way `train_sae` does (`runs.load_inputs`) and trains a few steps of
the SPARC setting (L=8192, k=64, batch 256, Global, λ=1). Reports the process's peak resident
memory above its baseline, as a multiple of the dataset's size. 1.7M rows of this setting are
13.9 GB; the ratio is what scales.

    python bench/bench_memory.py [--rows 400000] [--steps 10] [--workdir /tmp/xsae-bench-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

DIMS = {"a": 768, "b": 512, "c": 768}


def write_features(folder: Path, rows: int) -> None:
    ids = np.array([f"s{i:07d}" for i in range(rows)], dtype=object)
    rng = np.random.default_rng(0)
    for name, dim in DIMS.items():
        with h5py.File(folder / f"{name}.h5", "w") as h5:
            h5.create_dataset("sample_ids", data=ids, dtype=h5py.string_dtype("utf-8"))
            data = h5.create_dataset("pooled/image", shape=(rows, dim), dtype="float32",
                                     chunks=(min(4096, rows), dim))
            for start in range(0, rows, 65536):
                stop = min(rows, start + 65536)
                data[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(folder: Path, steps: int) -> None:
    """Runs in a fresh process so that its peak memory is this workload's alone."""
    import torch

    from xsae.features import StreamRef
    from xsae.runs import load_inputs
    from xsae.sae import SAEConfig, SparseAutoencoder
    from xsae.training import TrainingConfig, train

    baseline = peak_mib()
    refs = [StreamRef(folder / f"{name}.h5", "image", name=name) for name in DIMS]
    streams, ids = load_inputs(refs, "l2", torch.device("cpu"))
    loaded = peak_mib()
    model = SparseAutoencoder(SAEConfig(tuple(DIMS.values()), 8192, 64, "global"),
                              generator=torch.Generator().manual_seed(0))
    config = TrainingConfig(epochs=1, batch_size=256, lr=1e-4, cross_weight=1.0, log_every=steps)
    train(model, streams, config, progress=False, stop_after_steps=steps)
    dataset_mib = sum(s.numel() * s.element_size() for s in streams) / 2**20
    # Parameters, gradients and Adam's two moments: a constant that does not grow with the rows.
    model_mib = 4 * sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({"rows": len(ids), "dataset_mib": round(dataset_mib, 1),
                      "model_and_optimizer_mib": round(model_mib, 1),
                      "baseline_mib": round(baseline, 1), "after_load_mib": round(loaded, 1),
                      "after_training_mib": round(peak_mib(), 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="xsae-bench-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        write_features(folder, args.rows)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    data = result["dataset_mib"]
    result["load_peak_over_dataset"] = round((result["after_load_mib"] - result["baseline_mib"]) / data, 2)
    result["training_peak_over_dataset"] = round(
        (result["after_training_mib"] - result["baseline_mib"]) / data, 2)
    with_model = data + result["model_and_optimizer_mib"]
    result["training_peak_over_dataset_plus_model"] = round(
        (result["after_training_mib"] - result["baseline_mib"]) / with_model, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
