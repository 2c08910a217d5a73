"""xsae.code_fingerprint: which library code a script reaches, and a fingerprint that moves with
that code only (a synthetic `xsae` package in a temporary import root)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from xsae.code_fingerprint import fingerprint, reach

PACKAGE = {
    "__init__.py": '"""The package."""\n',
    "metrics/__init__.py": "",
    "metrics/retrieval.py": '''
        import numpy as np

        SCALE = 2


        def recall(x):
            """Fraction found."""
            return np.mean(x) * SCALE  # scaled


        def unused(x):
            return x + 1
        ''',
    "metrics/other.py": '''
        def other(x):
            return x
        ''',
    "evaluation.py": '''
        from .metrics import retrieval
        from xsae.metrics.other import other


        def evaluate(x):
            return retrieval.recall(x)


        def evaluate_other(x):
            return other(x)
        ''',
    "registry.py": '''
        LOADERS = {}


        def register(key):
            def decorator(cls):
                LOADERS[key] = cls
                return cls
            return decorator


        def load(key):
            return LOADERS[key]()
        ''',
    "loaders.py": '''
        from xsae.registry import register


        class Small:
            size = 1


        @register("large")
        class Large:
            size = 2


        register("small")(Small)
        ''',
    "plugins.py": '''
        KINDS = {"a": "xsae.metrics.other"}


        def lazy():
            import xsae.metrics.retrieval as r
            return r
        ''',
}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    for name, text in PACKAGE.items():
        path = tmp_path / "xsae" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def script(root: Path, text: str, name: str = "script.py") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def edit(root: Path, module: str, old: str, new: str) -> None:
    path = root / "xsae" / module
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_reach_follows_names_attribute_chains_and_relative_imports(root):
    found = reach(script(root, "from xsae.evaluation import evaluate\nevaluate([1])\n"), root)
    assert ("xsae.evaluation", "evaluate") in found.defs
    assert {("xsae.metrics.retrieval", "recall"), ("xsae.metrics.retrieval", "SCALE")} <= found.defs
    assert ("xsae.metrics.retrieval", "unused") not in found.defs
    assert ("xsae.evaluation", "evaluate_other") not in found.defs
    assert ("xsae.metrics.other", "other") not in found.defs  # imported, never called from here


def test_a_code_line_moves_the_fingerprint_of_the_scripts_that_reach_it_only(root):
    calls = script(root, "from xsae.evaluation import evaluate\nevaluate([1])\n", "calls.py")
    elsewhere = script(root, "from xsae.evaluation import evaluate_other\nevaluate_other(1)\n", "other.py")
    before = fingerprint(calls, root), fingerprint(elsewhere, root)
    edit(root, "metrics/retrieval.py", "* SCALE", "* SCALE * 1")
    after = fingerprint(calls, root), fingerprint(elsewhere, root)
    assert after[0] != before[0] and after[1] == before[1]
    edit(root, "metrics/retrieval.py", "return x + 1", "return x + 2")  # a function nobody calls
    assert (fingerprint(calls, root), fingerprint(elsewhere, root)) == after


def test_comments_docstrings_and_formatting_do_not_move_it(root):
    calls = script(root, "from xsae.evaluation import evaluate\nevaluate([1])\n")
    before = fingerprint(calls, root)
    edit(root, "metrics/retrieval.py", '"""Fraction found."""', '"""The fraction of queries found."""')
    edit(root, "metrics/retrieval.py", "# scaled", "# scaled by the constant")
    edit(root, "metrics/retrieval.py", "np.mean(x) * SCALE", "np.mean( x )*SCALE")
    edit(root, "__init__.py", '"""The package."""', '"""The package, described."""')
    assert fingerprint(calls, root) == before


def test_registered_definitions_join_with_their_registry(root):
    """`@register(...)` and `register(...)(Class)` collect classes on import: they count for a
    script that reads the registry, not for one that merely imports their module."""
    reader = reach(script(root, "import xsae.loaders\nfrom xsae.registry import load\nload('small')\n",
                          "reader.py"), root)
    assert {("xsae.loaders", "Small"), ("xsae.loaders", "Large")} <= reader.defs
    importer = reach(script(root, "import xsae.loaders\n", "importer.py"), root)
    assert not {("xsae.loaders", "Small"), ("xsae.loaders", "Large")} & importer.defs
    assert "xsae.loaders" in importer.modules  # its top level (the register calls) still counts
    before = fingerprint(root / "importer.py", root)
    edit(root, "loaders.py", "size = 1", "size = 3")
    assert fingerprint(root / "importer.py", root) == before
    assert fingerprint(root / "reader.py", root) != fingerprint(root / "importer.py", root)


def test_modules_named_in_strings_or_imported_lazily_are_taken_whole(root):
    found = reach(script(root, "from xsae.plugins import KINDS, lazy\nprint(KINDS, lazy())\n"), root)
    assert {"xsae.metrics.other", "xsae.metrics.retrieval"} <= found.whole
    assert ("xsae.metrics.retrieval", "unused") in found.defs


def test_notebook_code_cells_are_read(root):
    cells = [{"cell_type": "markdown", "source": ["from xsae.plugins import lazy"]},
             {"cell_type": "code",
              "source": ["%matplotlib inline\n", "from xsae.evaluation import evaluate\n", "evaluate([1])"]}]
    notebook = root / "figure.py.ipynb"
    notebook.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    found = reach(notebook, root)
    assert ("xsae.evaluation", "evaluate") in found.defs and "xsae.plugins" not in found.modules


def test_the_cache_answers_until_a_file_of_the_closure_changes(root, tmp_path):
    calls = script(root, "from xsae.evaluation import evaluate\nevaluate([1])\n")
    cache = tmp_path / "cache" / "code.json"
    first = fingerprint(calls, root, cache=cache)
    entry = json.loads(cache.read_text())[str(calls.resolve())]
    assert entry["fingerprint"] == first and str(root / "xsae/metrics/retrieval.py") in entry["files"]
    assert fingerprint(calls, root, cache=cache) == first
    edit(root, "metrics/retrieval.py", "* SCALE", "* SCALE * 1")
    assert fingerprint(calls, root, cache=cache) == fingerprint(calls, root) != first
