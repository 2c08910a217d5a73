"""Fixtures shared by tests: a small Tux-Paint-like package tree and a tiny workflow config."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAMPS = Path("usr/share/tuxpaint/stamps")

#: (relative path without extension, caption or None for no .txt)
FIXTURE_STAMPS = [
    ("animals/birds/crane", "A crowned crane."),
    ("animals/birds/owl", "An owl."),
    ("animals/birds/duck", "A duck on a pond."),
    ("animals/mammals/dog", "A dog."),
    ("animals/mammals/cat", "A cat."),
    ("animals/mammals/cow", "A brown cow."),
    ("food/fruit/apple_green", "A green apple."),
    ("food/fruit/pear", "A pear."),
    ("food/fruit/banana", "A banana."),
    ("food/fruit/cartoon/cherry", "Two cartoon cherries."),
    ("food/vegetables/carrot", "A carrot."),
    ("food/vegetables/leek", "A leek."),
    ("town/roadsigns/stop", "A stop sign."),
    ("town/roadsigns/yield", "A yield sign."),
    ("town/houses/barn", "A red barn."),
    ("town/houses/cabin", "A log cabin."),
    ("vehicles/auto/car", "A blue car."),
    ("vehicles/auto/truck", "A fire truck."),
    ("vehicles/auto/bus", "A school bus."),
    ("vehicles/auto/van", "A van."),
    ("town/roadsigns/stop_mirror", None),  # mirrored copy: no caption, skipped
    ("symbols/alphabets/english/filled/uppercase/a", "The letter A."),  # glyph, skipped
    ("symbols/math/7", "The number seven."),  # digit glyph, skipped
]
N_USABLE = 20


def make_stamps_tree(root: Path, seed: int = 0) -> Path:
    """An unpacked-package folder (root/usr/share/tuxpaint/stamps/...) with small RGBA stamps."""
    rng = np.random.default_rng(seed)
    for relative, caption in FIXTURE_STAMPS:
        png = root / STAMPS / f"{relative}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(48, 96))
        pixels = rng.integers(0, 255, size=(size, size, 4), dtype=np.uint8)
        pixels[..., 3] = np.where(rng.random((size, size)) > 0.3, 255, 0)
        Image.fromarray(pixels, "RGBA").save(png)
        if caption is not None:
            png.with_suffix(".txt").write_text(f"{caption}\nfr.utf8=Traduction.\n", encoding="utf-8")
    return root


def make_deb(tree: Path, out: Path, package: str = "tuxpaint-stamps-fixture",
             version: str = "1.0-1") -> Path:
    """Build a real .deb of `tree` with dpkg-deb (the format apt would download)."""
    control = tree / "DEBIAN"
    control.mkdir(exist_ok=True)
    (control / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Tests <tests@example.invalid>\nDescription: fixture stamps\n", encoding="utf-8")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(out)],
                   check=True, capture_output=True)
    return out


def tiny_config(unpacked: Path) -> dict:
    """The default config, shrunk: fixture stamps, three real encoders, a small fast SAE."""
    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        config = copy.deepcopy(yaml.safe_load(handle))
    config["datasets"]["tuxpaint"].update(unpacked=str(unpacked), sha256=None, test_fraction=0.25)
    for entry in config["encoders"].values():
        entry["batch_size"] = 8
    for run in config["sae_runs"].values():
        run.update(n_latents=64, k=4, epochs=3, batch_size=8, log_every=1, checkpoint_every=2)
    config["sweeps"] = {"latents": {"base": "sparc_sweep_base", "parameter": "n_latents",
                                    "values": [32, 64]}}
    config["evaluation"].update(jaccard_top_n=3, probe_min_positives=2)
    config["figures"]["n_examples"] = 4
    config["synthetic"].update(
        generator={"d": 32, "n_shared": 16, "n_image": 8, "n_text": 8, "sparsity": 0.8, "n_train": 600,
                   "n_eval": 200},
        seeds=[1, 2], distances=[0.0, 0.5], lambda_distance=0.5, multipliers=[1.0])
    config["synthetic"]["sae"].update(n_latents=128, k=4, epochs=3, batch_size=64, log_every=5)
    comparison = config["comparisons"]["tuxpaint"]
    comparison["seeds"] = [1, 2]
    comparison["sae"].update(n_latents=64, k=4, epochs=3, batch_size=8, log_every=1, checkpoint_every=2)
    comparison["steering"]["n_sources"] = 3
    config["sharedness"]["sae"].update(k=4, epochs=1, batch_size=8, log_every=1)
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def job_counts(snakemake_output: str) -> dict[str, int]:
    """Jobs per rule from the first "Job stats:" table Snakemake printed (empty when none)."""
    if "Job stats:" not in snakemake_output:
        return {}
    table = snakemake_output.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match.group(1)] = int(match.group(2))
    jobs.pop("total", None)
    return jobs


def dry_run_jobs(snakemake_output: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job a `snakemake -n` printed, in its order."""
    jobs = []
    for rule, body in re.findall(r"(?ms)^(?:local)?rule (\w+):\n(.*?)(?=^\S|\Z)", snakemake_output):
        fields = {}
        for key in ("wildcards", "resources"):
            match = re.search(rf"(?m)^\s+{key}: (.*)$", body)
            fields[key] = dict(item.split("=", 1) for item in match.group(1).split(", ")) if match else {}
        jobs.append((rule, fields["wildcards"], fields["resources"]))
    return jobs


def stamps_manifests(root: Path, test_fraction: float = 0.25) -> dict[str, Path]:
    """Train and test manifests of a generated Tux Paint stamps tree under `root` (split → CSV)."""
    import pandas as pd

    from xsae.datasets.manifest import build_manifest, write_manifest
    from xsae.datasets.tuxpaint import scan_stamps, stamps_root

    stamps, _ = scan_stamps(stamps_root(make_stamps_tree(root / "tree")))
    samples = pd.DataFrame({"sample_id": [s.sample_id for s in stamps],
                            "image_path": [str(s.image_path) for s in stamps],
                            "caption": [s.caption for s in stamps], "category": [s.category for s in stamps]})
    splits, labels = build_manifest(samples, test_fraction=test_fraction, seed=0)
    paths = {split: root / f"{split}.csv" for split in splits}
    write_manifest(splits, labels, paths, root / "labels.json")
    return paths


def workflow_copy(destination: Path) -> Path:
    """The workflow and its library, copied so that a test can edit the library's code."""
    destination.mkdir(parents=True)
    for part in ("Snakefile", "rules", "workflow", "src", "config", "envs"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / part)
    return destination / "Snakefile"
