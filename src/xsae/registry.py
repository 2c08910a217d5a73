"""The paper items: every table and figure of the three papers, declared once in
`config/registry.yaml`, and what a config makes of them.

- `items()`: the declarations (paper, label, title, rule, output selector, published numbers).
- `outputs(config)`: item id → the files a resolved config promises for it (empty when the config
  does not produce it, or no rule does).
- `published(item)`: the item's typed-in published numbers, read from `config/reference/`.
- `table_pairs(frame, layout)`: the (reproduced, published) cells of one rendered table, aligned
  the way its renderer lays them out (`LAYOUTS`).
- `published_cells_filled(config, root)`: per table item with published numbers, whether its
  rendered files carry them.

The scorecard (`xsae.scorecard`), the report's sections (rules/common.smk) and the rehearsal's
checks read these; nothing else lists paper items.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from xsae.errors import ConfigError
from xsae.tables import SPARC_TABLES, reference_entry

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
REGISTRY_PATH = CONFIG_DIR / "registry.yaml"
REFERENCE_DIR = CONFIG_DIR / "reference"
TABLE_FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("png", "pdf")


@dataclass(frozen=True)
class Paper:
    key: str
    name: str
    title: str
    text: str
    reference: str


@dataclass(frozen=True)
class Item:
    """One paper item: a table or figure (or a series the paper prints as one), and where it lives."""

    id: str
    paper: str
    label: str
    title: str
    rule: str | None
    selector: Mapping[str, Any] | None
    published: str
    reference: tuple[str, ...] = ()
    layout: str | None = None
    spread: str | None = None
    note: str = ""

    @property
    def produced(self) -> bool:
        """Some rule renders it (for some config)."""
        return self.rule is not None

    @property
    def has_reference(self) -> bool:
        return bool(self.reference)

    @property
    def covers(self) -> list[str]:
        """The paper's numbered items this one stands for ("Figures 6, 7" → Figure 6, Figure 7)."""
        return covered(self.label)


def covered(label: str) -> list[str]:
    """Expand an item label as the papers number them: "Tables 15–31", "Figure 2 / 9",
    "Figures 1, 4, 5, 14–25"; labels without numbers ("Appendix C", "§2.3") stand for themselves."""
    match = re.fullmatch(r"(Table|Figure)s?\s+([0-9][0-9,/–\- ]*)", label.strip())
    if not match:
        return [label.strip()]
    numbers: list[int] = []
    for part in re.split(r"[,/]", match.group(2)):
        bounds = [int(b) for b in re.split(r"[–-]", part.strip())]
        numbers += range(bounds[0], bounds[-1] + 1)
    return [f"{match.group(1)} {n}" for n in numbers]


# ---- declarations -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load(path: Path) -> tuple[dict[str, Paper], tuple[Item, ...]]:
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    papers = {key: Paper(key=key, **entry) for key, entry in document.get("papers", {}).items()}
    items = []
    for entry in document.get("items", []):
        entry = dict(entry)
        item_id = entry.pop("id")
        paper = item_id.split(".", 1)[0]
        items.append(Item(id=item_id, paper=paper, label=entry.pop("label"), title=entry.pop("title"),
                          rule=entry.pop("rule"), selector=entry.pop("outputs", None),
                          published=entry.pop("published"),
                          reference=tuple(entry.pop("reference", None) or ()),
                          layout=entry.pop("layout", None), spread=entry.pop("spread", None),
                          note=entry.pop("note", "") or ""))
        if entry:
            raise ConfigError(f"{path}: item {item_id}: unknown keys {sorted(entry)}")
    _check(path, papers, items)
    return papers, tuple(items)


def _check(path: Path, papers: Mapping[str, Paper], items: list[Item]) -> None:
    seen: set[str] = set()
    for item in items:
        where = f"{path}: item {item.id}"
        if item.id in seen:
            raise ConfigError(f"{where}: declared twice")
        seen.add(item.id)
        if item.paper not in papers:
            raise ConfigError(f"{where}: unknown paper {item.paper!r}; known: {sorted(papers)}")
        if (item.rule is None) != (item.selector is None):
            raise ConfigError(f"{where}: a rule and an `outputs` selector go together")
        if item.selector is not None and item.selector.get("from") not in SELECTORS:
            raise ConfigError(f"{where}: unknown selector {item.selector.get('from')!r}; "
                              f"known: {sorted(SELECTORS)}")
        if item.reference and item.layout not in LAYOUTS:
            raise ConfigError(f"{where}: published numbers need a layout among {sorted(LAYOUTS)}")


def papers(path: str | Path = REGISTRY_PATH) -> dict[str, Paper]:
    return dict(_load(Path(path))[0])


def items(path: str | Path = REGISTRY_PATH) -> list[Item]:
    """Every paper item, in the registry's order (paper by paper, as the papers number them)."""
    return list(_load(Path(path))[1])


def item(item_id: str, path: str | Path = REGISTRY_PATH) -> Item:
    for entry in items(path):
        if entry.id == item_id:
            return entry
    raise KeyError(f"no paper item {item_id!r} in {path}")


# ---- outputs as a function of the config ---------------------------------------------------------
def _tables(stem: str) -> list[str]:
    return [f"results/tables/{stem}.{ext}" for ext in TABLE_FORMATS]


def _figure(stem: str, data: bool = False) -> list[str]:
    files = [f"results/figures/{stem}.{ext}" for ext in FIGURE_FORMATS]
    return files + ([f"results/tables/{stem}.csv"] if data else [])


def _sparc_sets(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return (config.get("tables") or {}).get("sparc") or {}


def _sparc_table(config: Mapping[str, Any], table: str, r2_reference: str | None = None,
                 dataset: str | None = None) -> list[str]:
    """SPARC Tables 1–4, 14 (and the stream groups' R² Tables 7–13, told apart by the published
    matrix each set is compared with): every set under tables.sparc that renders `table`; with
    `dataset` (the one the paper measured the table on) not the sets compared with another one."""
    files = []
    for name, spec in _sparc_sets(config).items():
        if table not in spec.get("tables", SPARC_TABLES):
            continue
        if r2_reference is not None and spec.get("r2_reference", "table3_r2") != r2_reference:
            continue
        if dataset is not None and spec.get("reference_dataset") not in (None, dataset):
            continue
        files += _tables(f"sparc_{name}_{table}")
    return files


def _sparc_top_activations(config: Mapping[str, Any]) -> list[str]:
    runs = [run for spec in _sparc_sets(config).values() if spec.get("top_activations", True)
            for run in spec["configurations"].values()]
    return [f for run in dict.fromkeys(runs) for f in _figure(f"top_activations_{run}")]


def _sweep(config: Mapping[str, Any], parameter: str) -> list[str]:
    return [f for name, spec in (config.get("sweeps") or {}).items() if spec["parameter"] == parameter
            for f in _figure(f"sweep_{name}", data=True)]


def _decoder_directions(config: Mapping[str, Any]) -> list[str]:
    return [f for name in config.get("decoder_directions") or {}
            for f in _figure(f"decoder_directions_{name}")]


def _synthetic(config: Mapping[str, Any], figure: str) -> list[str]:
    return _figure(f"synthetic_{figure}", data=True) if (config.get("synthetic") or {}).get("seeds") else []


def comparison_table_number(spec: Mapping[str, Any]) -> int:
    """Which of the heterogeneity paper's Tables 1–4 a comparison reproduces: the number its
    `reference_key` starts with (table2_...), else Table 1, whose layout every comparison has."""
    match = re.match(r"table(\d+)_", spec.get("reference_key") or "")
    return int(match.group(1)) if match else 1


def _comparison_table(config: Mapping[str, Any], table: int) -> list[str]:
    return [f for name, spec in (config.get("comparisons") or {}).items()
            if comparison_table_number(spec) == table for f in _tables(f"comparison_{name}")]


def _comparison_figure(config: Mapping[str, Any], figure: str) -> list[str]:
    return [f for name, spec in (config.get("comparisons") or {}).items() if spec.get(figure)
            for f in _figure(f"{figure}_{name}", data=figure == "steering")]


def _sharedness(config: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    spec = config.get("sharedness") or {}
    return (spec.get(section) or {}) if spec.get("models") else {}


def _published_as(name: str, spec: Mapping[str, Any], table: str) -> bool:
    """A sharedness entry stands for the paper's `table` when it names its published numbers, or,
    without any, when it carries the table's name (the default's counterparts)."""
    return spec.get("reference") == table if spec.get("reference") else name == table


def _sharedness_table(config: Mapping[str, Any], table: str, section: str = "tables") -> list[str]:
    return [f for name, spec in _sharedness(config, section).items() if _published_as(name, spec, table)
            for f in _tables(f"sharedness_{name}")]


def _sharedness_average(config: Mapping[str, Any], table: str) -> list[str]:
    return _sharedness_table(config, table, section="averages")


def _sharedness_layerwise(config: Mapping[str, Any]) -> list[str]:
    return [f for name in _sharedness(config, "layerwise")
            for f in _figure(f"sharedness_layerwise_{name}", data=True)]


def _sharedness_comparative(config: Mapping[str, Any]) -> list[str]:
    return [f for name in _sharedness(config, "comparative")
            for f in _figure(f"sharedness_comparative_{name}")]


def _sharedness_shuffle(config: Mapping[str, Any]) -> list[str]:
    return [f for name in _sharedness(config, "shuffle") for f in _tables(f"sharedness_shuffle_{name}")]


#: `outputs.from` of an item → the function of (config, the selector's other keys) listing its files
SELECTORS: dict[str, Callable[..., list[str]]] = {
    "sparc_table": _sparc_table,
    "sparc_top_activations": _sparc_top_activations,
    "sweep": _sweep,
    "decoder_directions": _decoder_directions,
    "synthetic": _synthetic,
    "comparison_table": _comparison_table,
    "comparison_figure": _comparison_figure,
    "sharedness_table": _sharedness_table,
    "sharedness_average": _sharedness_average,
    "sharedness_layerwise": _sharedness_layerwise,
    "sharedness_comparative": _sharedness_comparative,
    "sharedness_shuffle": _sharedness_shuffle,
}


def item_outputs(entry: Item, config: Mapping[str, Any]) -> list[str]:
    """The files `config` (validated, with the schema's defaults) promises for one item."""
    if entry.selector is None:
        return []
    arguments = {k: v for k, v in entry.selector.items() if k != "from"}
    return SELECTORS[entry.selector["from"]](config, **arguments)


def outputs(config: Mapping[str, Any], path: str | Path = REGISTRY_PATH) -> dict[str, list[str]]:
    """Item id → the files `config` promises for it, for every item (empty: not produced)."""
    return {entry.id: item_outputs(entry, config) for entry in items(path)}


def item_of_path(config: Mapping[str, Any], path: str | Path = REGISTRY_PATH) -> dict[str, Item]:
    """Each promised file → the item it belongs to."""
    owner: dict[str, Item] = {}
    for entry in items(path):
        for file in item_outputs(entry, config):
            if file in owner and owner[file].id != entry.id:
                raise ConfigError(f"{file} belongs to both {owner[file].id} and {entry.id}")
            owner[file] = entry
    return owner


def report_section(owner: Mapping[str, Item], files: list[str], path: str | Path = REGISTRY_PATH
                   ) -> tuple[str, str] | None:
    """(paper name, item label) of the first of `files` that renders a paper item, else None:
    the report's category and subcategory."""
    for file in files:
        entry = owner.get(str(file))
        if entry is not None:
            return papers(path)[entry.paper].name, entry.label
    return None


# ---- published numbers ---------------------------------------------------------------------------
def reference_file(entry: Item, path: str | Path = REGISTRY_PATH) -> Path | None:
    """The YAML holding the item's typed-in published numbers (None: the item has none)."""
    return REFERENCE_DIR / papers(path)[entry.paper].reference if entry.reference else None


def published(entry: Item | str, path: str | Path = REGISTRY_PATH) -> dict[str, Any]:
    """Reference key → the published numbers stored there ({} for items without typed-in numbers)."""
    entry = item(entry, path) if isinstance(entry, str) else entry
    file = reference_file(entry, path)
    if file is None:
        return {}
    with open(file, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or {}
    return {key: reference_entry(document, key) for key in entry.reference}


# ---- published cells of rendered tables ----------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where a rendered table keeps its published numbers.

    Row layouts: `marker` names the column saying "reproduced" or "paper"; a paper row is paired
    with the reproduced row that has the same `keys` (and matches `where`), column by column, over
    the numeric columns other than `ignore`. Column layout (`paper_suffix`): the published value of
    column c is in "c<suffix>" of the same row. `spread_suffix`: the paper's spread of column c is
    in "c<suffix>" of the paper row. `diagonal`: cells whose column is named by this row column
    are 1 by definition, not measurements, and are left out.
    """

    marker: str | None = None
    keys: tuple[str, ...] = ()
    where: Mapping[str, str] = field(default_factory=dict)
    paper_suffix: str = ""
    ignore: tuple[str, ...] = ()
    spread_suffix: str = ""
    diagonal: str | None = None


LAYOUTS = {
    # SPARC Tables 1, 2, 4 (xsae.tables.sparc_tables): rows by TopK and λ, source reproduced/paper
    "sparc_rows": Layout(marker="source", keys=("TopK", "λ")),
    # Table 14: the published R@1 were measured with per-stream TopK at inference
    "sparc_retrieval": Layout(marker="source", keys=("TopK", "λ"), where={"inference": "local"}),
    # Table 3 and 7–13 (xsae.tables.r2_table): "<configuration>: <source> (paper)" columns
    "r2_columns": Layout(keys=("target",), paper_suffix=" (paper)"),
    # heterogeneity Tables 1–4 (xsae.heterogeneity_tables.comparison_table): spread in <column>_std
    "comparison": Layout(marker="source", keys=("method",), ignore=("runs",), spread_suffix="_std"),
    # sharedness (xsae.sharedness_tables): numbers reproduced/paper/difference
    "sharedness_matrix": Layout(marker="numbers", keys=("modality", "source"), diagonal="source"),
    "sharedness_average": Layout(marker="numbers", keys=("layers", "dataset")),
    "sharedness_shuffle": Layout(marker="numbers", ignore=("permutations", "samples")),
}
PAIR_COLUMNS = ["row", "column", "reproduced", "published", "spread"]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _key_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def table_pairs(table: pd.DataFrame | str | Path, layout: Layout | str) -> pd.DataFrame:
    """The published cells of one rendered table beside the reproduced ones: one row per cell the
    paper printed (`PAIR_COLUMNS`; reproduced is NaN where this table has no such cell, spread NaN
    where the paper states none)."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    frame = pd.read_csv(table) if isinstance(table, (str, Path)) else table
    rows = []
    if layout.paper_suffix:
        for _, record in frame.iterrows():
            label = " / ".join(_key_text(record[k]) for k in layout.keys)
            for column in frame.columns:
                base = str(column)[: -len(layout.paper_suffix)]
                if str(column).endswith(layout.paper_suffix) and base in frame.columns:
                    rows.append({"row": label, "column": base, "reproduced": _number(record[base]),
                                 "published": _number(record[column]), "spread": math.nan})
        return _pairs_frame(rows)
    marker = frame[layout.marker].astype(str)
    keys = [frame[k].map(_key_text) if k in frame.columns else pd.Series("", index=frame.index)
            for k in layout.keys]
    key = pd.Series(list(zip(*keys, strict=True)) if keys else [()] * len(frame), index=frame.index)
    reproduced = frame[marker == "reproduced"]
    for column, wanted in layout.where.items():
        reproduced = reproduced[reproduced[column].map(_key_text) == wanted]
    skip = {layout.marker, *layout.keys, *layout.ignore, *layout.where}
    for index, record in frame[marker == "paper"].iterrows():
        matches = reproduced[key[reproduced.index] == key[index]]
        own = matches.iloc[0] if len(matches) else None
        for column in frame.columns:
            if column in skip or (layout.spread_suffix and str(column).endswith(layout.spread_suffix)):
                continue
            if layout.diagonal is not None and str(record[layout.diagonal]) == str(column):
                continue
            value = _number(record[column])
            if math.isnan(value):
                continue
            spread_column = f"{column}{layout.spread_suffix}"
            stated = layout.spread_suffix and spread_column in frame.columns
            spread = _number(record[spread_column]) if stated else math.nan
            rows.append({"row": " / ".join(key[index]), "column": str(column),
                         "reproduced": _number(own[column]) if own is not None else math.nan,
                         "published": value, "spread": spread})
    return _pairs_frame(rows)


def _pairs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def item_pairs(entry: Item, config: Mapping[str, Any], root: str | Path = ".") -> dict[str, pd.DataFrame]:
    """Rendered CSV of the item (that exists under `root`) → its published/reproduced cells."""
    if entry.layout is None:
        return {}
    return {file: table_pairs(Path(root) / file, entry.layout) for file in item_outputs(entry, config)
            if file.endswith(".csv") and (Path(root) / file).is_file()}


def published_cells_filled(config: Mapping[str, Any], root: str | Path = ".",
                           path: str | Path = REGISTRY_PATH) -> dict[str, bool]:
    """Per table item with published numbers that `config` renders: whether every one of its
    rendered CSVs (under `root`) shows at least one published number. A missing file is False."""
    filled = {}
    for entry in items(path):
        files = [f for f in item_outputs(entry, config) if f.endswith(".csv")]
        if not entry.has_reference or not files:
            continue
        pairs = item_pairs(entry, config, root)
        filled[entry.id] = all(f in pairs and pairs[f]["published"].notna().any() for f in files)
    return filled
