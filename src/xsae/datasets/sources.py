"""Dataset sources by config `kind`: one place that maps a kind to its download and manifest code.

Every source module offers `download(root, ...) -> record`, `samples(root, split) -> DataFrame`
(sample_id, image_path, caption, labels) and `hierarchy(root) -> {label: parent}`; the
workflow's `download_dataset` and `manifest_labelled` rules call them through `source_for`.
Tux Paint stamps have their own rules (a seeded split instead of published splits).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from xsae.errors import ConfigError

#: kind → (module, dataset name passed to modules that serve several datasets, or None)
KINDS: dict[str, tuple[str, str | None]] = {
    "coco2017": ("xsae.datasets.coco", None),
    "flowers102": ("xsae.datasets.flowers", None),
    "imagenet_val": ("xsae.datasets.imagenet", None),
    "open_images_v7": ("xsae.datasets.openimages", None),
    "laion_subset": ("xsae.datasets.urllists", "laion_subset"),
    "cc3m": ("xsae.datasets.urllists", "cc3m"),
    "hub_image_text": ("xsae.datasets.hub", None),
    "image_folder": ("xsae.datasets.folder", None),
}


@dataclass(frozen=True)
class Source:
    kind: str
    download_fn: Callable[..., dict]
    samples_fn: Callable[..., pd.DataFrame]
    hierarchy_fn: Callable[..., dict[str, str | None]]
    dataset: str | None

    def _named(self) -> dict[str, Any]:
        return {"dataset": self.dataset} if self.dataset else {}

    def download(self, root: Path, entry: dict[str, Any], name: str | None = None) -> dict:
        """Run the source's download with the config entry's mirror, workers and options.

        `name` is the dataset's key in the config; sources that need files provided by hand use it
        to name the exact config key in their messages.
        """
        kwargs = {"base_url": entry.get("base_url"), "workers": entry.get("workers", 8),
                  **self._named(), **entry.get("options", {})}
        if entry.get("provided") is not None or self.kind == "imagenet_val":
            kwargs["provided"] = entry.get("provided")
        if self.kind == "imagenet_val" and name is not None:
            kwargs["name"] = name
        record = self.download_fn(Path(root), **kwargs)
        return {"kind": self.kind, **record}

    def samples(self, root: Path, split: str, options: dict[str, Any] | None = None) -> pd.DataFrame:
        """The split's sample table; `options` are the entry's `manifest_options` (e.g. COCO's
        `captions: each`)."""
        try:
            return self.samples_fn(Path(root), split, **self._named(), **(options or {}))
        except TypeError as exc:
            if "unexpected keyword argument" not in str(exc):
                raise
            raise ConfigError(f"datasets.<name>.manifest_options: {sorted(options or {})} are not options "
                              f"of the {self.kind} manifest ({exc})") from exc

    def hierarchy(self, root: Path) -> dict[str, str | None]:
        return self.hierarchy_fn(Path(root), **self._named())


def source_for(kind: str) -> Source:
    if kind not in KINDS:
        raise ConfigError(f"datasets.<name>.kind: {kind!r} has no download source; known: "
                          f"{', '.join(sorted(KINDS))}")
    module_name, dataset = KINDS[kind]
    module = importlib.import_module(module_name)
    return Source(kind, module.download, module.samples, module.hierarchy, dataset)
