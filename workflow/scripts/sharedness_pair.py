"""Every score between two models' per-layer SAEs on one dataset (rule sharedness_pair)."""

import time

import torch

from xsae import provenance
from xsae.runs import resolve_device, write_metrics
from xsae.sharedness_runs import compare_models, peak_memory_mib, read_codes
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake) as job:
    wildcards, layers = snakemake.wildcards, snakemake.params.layers
    codes_a = {layer: read_codes(path) for layer, path in zip(layers["a"], snakemake.input.a, strict=True)}
    codes_b = {layer: read_codes(path) for layer, path in zip(layers["b"], snakemake.input.b, strict=True)}
    device = resolve_device(snakemake.params.device)
    start = time.perf_counter()
    scores = compare_models(codes_a, codes_b, name_a=wildcards.model_a, name_b=wildcards.model_b,
                            device=device, **snakemake.params.compare)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    scores.insert(0, "dataset", wildcards.dataset)
    write_metrics(scores, snakemake.output[0])
    extra = {"seconds": round(seconds, 3), "peak_memory_mib": round(peak_memory_mib(), 1),
             "layer_pairs": len(codes_a) * len(codes_b), "device": str(device),
             "n_samples": int(scores["n_samples"].iloc[0])}
    if device.type == "cuda":
        extra["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    log.info("%s", extra)
    job.extra.update(extra)
