"""Build and run the rehearsal: the paper DAG on loopback miniatures and tiny random encoders.

`xsae rehearsal config/paper.yaml --root rehearsal/` builds the miniatures and the stand-in models
under the root, writes `rehearsal/config.yaml` (the paper config transformed by
`xsae.rehearsal.config`), serves the miniatures on 127.0.0.1 for as long as the run lasts and runs
the whole DAG in `rehearsal/work/`. Nothing beyond loopback is contacted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xsae import config as config_module
from xsae.errors import DataError
from xsae.io import write_text
from xsae.provenance import REPO_ROOT
from xsae.rehearsal import config as scaling
from xsae.rehearsal.datasets import DEFAULT_PORT, served_miniatures
from xsae.rehearsal.encoders import tiny_encoders, tiny_layer_count
from xsae.warm_start import run_snakemake

logger = logging.getLogger(__name__)

SNAKEFILE = REPO_ROOT / "Snakefile"
#: Samples per forward pass of the stand-in encoders: with models this small, per-batch overhead
#: would otherwise dominate extraction.
REHEARSAL_BATCH = 64


def rehearsal_config(paper: Mapping[str, Any], datasets: Mapping[str, Mapping[str, Any]],
                     models: str | Path) -> dict[str, Any]:
    """The rehearsal config of `paper` (a config as written, before defaults): `datasets` are the
    miniatures' entries (`xsae.rehearsal.datasets.dataset_overrides`), tiny encoders are built under
    `models`; every run, sweep, table and figure is kept, at rehearsal scale."""
    paper_encoders = paper.get("encoders", {})
    encoders = tiny_encoders(paper_encoders, models, batch_size=REHEARSAL_BATCH)
    for name, entry in encoders.items():
        if entry.get("model") != paper_encoders[name].get("model"):
            entry["stands_in_for"] = paper_encoders[name].get("model") or paper_encoders[name]["loader"]
    rehearsal = scaling.scale(paper, lambda name: tiny_layer_count(paper_encoders[name]))
    rehearsal["datasets"] = scaling.scale_datasets(datasets)
    rehearsal["encoders"] = encoders
    scaling.check_same_shape(paper, rehearsal)
    return rehearsal


@dataclass
class Rehearsal:
    config_path: Path
    workdir: Path
    returncode: int
    seconds: float


def rehearse(paper_path: str | Path, root: str | Path, *, cores: int = 2, port: int = DEFAULT_PORT,
             snakemake_args: Sequence[str] = (), seed: int = 0, warm: bool = True) -> Rehearsal:
    """Build everything under `root`, serve the miniatures and run Snakemake on the rehearsal
    config in `root/work` (extra `snakemake_args`, e.g. `-n`, are passed through; `warm`: jobs
    start from a preloaded interpreter, `xsae.warm_start`)."""
    root = Path(root).resolve()
    paper = config_module.read_file(paper_path)
    config_path = root / "config.yaml"
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            server, _, datasets = stack.enter_context(
                served_miniatures(paper.get("datasets", {}), root / "datasets", seed, port))
        except OSError as exc:
            raise DataError(f"127.0.0.1:{port}: cannot serve the miniatures there ({exc}); is another "
                            "rehearsal running? Choose another port with --port") from exc
        logger.info("miniatures served at %s", server.url())
        rehearsal = rehearsal_config(paper, datasets, root / "models")
        header = (f"# Rehearsal of {paper_path}, written by `xsae rehearsal`: the same runs, tables and "
                  "figures at miniature\n# scale, on loopback data and tiny random encoders. Rebuild "
                  "it rather than editing it.\n")
        write_text(config_path, header + yaml.safe_dump(rehearsal, sort_keys=False))
        config_module.load_files([config_path])  # fails here, naming the key, if the transform broke
        logger.info("prepared in %.1f s: %s", time.perf_counter() - started, config_path)
        args = ["-s", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(config_path),
                "--cores", str(cores), *snakemake_args]
        returncode = run_snakemake(args, warm=warm)
    return Rehearsal(config_path, workdir, returncode, time.perf_counter() - started)
