"""Each rule's script imports only what its own `envs/` file installs (its pins and their
dependencies), as it would in the conda environment a cluster run builds from that file.

Every script runs its imports in a fresh interpreter in which any installed distribution outside
its environment's closure cannot be imported; a module missing from an env (PIL in train.yaml) or a
heavy import dragged into a light rule (torch into a render rule) fails here. Then the whole
default DAG runs with each rule in a real venv built from its env file (`rule_environments.py`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import job_counts, make_stamps_tree, tiny_config, write_config
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rule_environments import env_requirements, rule_envs, run_in_rule_envs

REPO = Path(__file__).resolve().parents[1]
# Distributions every environment has: the interpreter's own tools. Snakemake's script preamble
# puts the submitting Snakemake's site-packages on the path (for `snakemake` itself) and the
# workflow's `src/` (for `xsae`).
ALWAYS = {"pip", "setuptools", "wheel", "snakemake"}
WORKFLOW_MODULES = {"xsae"}


def rule_scripts() -> dict[str, tuple[str, str]]:
    """rule → (env file, script file), for every rule with a `script:`."""
    return {rule: (env, code) for rule, (env, code, kind) in rule_envs().items() if kind == "script"}


def env_pins(env_file: str) -> set[str]:
    return {canonicalize_name(Requirement(pin).name) for pin in env_requirements(env_file)}


@cache
def blocked_modules(env_file: str) -> list[str]:
    """Top-level modules of installed distributions that the env would not have."""
    allowed = closure(frozenset(env_pins(env_file) | ALWAYS))
    blocked = set()
    for module, dists in metadata.packages_distributions().items():
        if (not any(canonicalize_name(d) in allowed for d in dists) and module.isidentifier()
                and module not in WORKFLOW_MODULES):
            blocked.add(module)
    return sorted(blocked)


@cache
def closure(names: frozenset[str]) -> frozenset[str]:
    """The distributions `names` install: themselves and their dependencies (no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return frozenset(seen)


PROBE = """
import ast, importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the rule's environment)")
sys.meta_path.insert(0, Block())
failures = {}
for script in sys.argv[2:]:
    for node in ast.parse(open(script).read()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            try:
                exec(compile(ast.Module([node], []), script, "exec"), {})
            except ImportError as exc:
                failures[script] = str(exc)
                break
print(json.dumps(failures))
"""


def test_every_script_rule_declares_an_env_that_exists():
    rules = rule_scripts()
    assert len(rules) >= 30
    assert {env for env, _ in rules.values()} <= {p.name for p in (REPO / "envs").glob("*.yaml")}
    assert "torch" in blocked_modules("render.yaml") and "torch" not in blocked_modules("train.yaml")
    assert "PIL" in blocked_modules("evaluate.yaml") or "pillow" in env_pins("evaluate.yaml")


ENVS = sorted({env for env, _ in rule_scripts().values()})


@pytest.mark.parametrize("env", ENVS)
def test_each_rule_script_imports_within_its_own_env(env):
    scripts = {str(REPO / "workflow" / "scripts" / script): rule
               for rule, (rule_env, script) in rule_scripts().items() if rule_env == env}
    result = subprocess.run([sys.executable, "-c", PROBE, ",".join(blocked_modules(env)), *scripts],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout)
    assert not failures, {scripts[script]: error for script, error in failures.items()}


@pytest.mark.slow
def test_every_rule_of_the_default_dag_runs_in_its_own_env(tmp_path):
    """The default DAG (its tiny test config) run end to end with each rule's script in a venv built
    from its own envs/ file: a module or version an env lacks fails its rule here."""
    tree = make_stamps_tree(tmp_path / "package")
    config = write_config(tiny_config(tree), tmp_path / "tiny.yaml")
    planned = run_in_rule_envs(["--cores", "2", "--configfile", str(config), "--dry-run"], tmp_path)
    assert planned.returncode == 0, (planned.stdout + planned.stderr)[-6000:]
    result = run_in_rule_envs(["--cores", "2", "--configfile", str(config)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    dag = job_counts(planned.stdout + planned.stderr)
    assert job_counts(output) == dag and len(dag) >= 30, output[-3000:]  # every job of every rule ran
    assert set(dag) - {"all"} <= set(rule_envs()), "a rule of the DAG runs no Python of its own?"


PARSE_ONLY = """
import importlib.abc, sys
heavy = {"torch", "torchvision", "PIL", "h5py", "scipy", "sklearn", "matplotlib", "open_clip", "transformers"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in heavy:
            raise ModuleNotFoundError(f"the Snakefile imported {name!r} while parsing")
sys.meta_path.insert(0, Block())
from snakemake.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("config_file", ["config.yaml", "paper.yaml"])
def test_the_snakefile_parses_without_model_libraries(tmp_path, config_file):
    """Every job parses the Snakefile again (on a cluster node too): it imports no torch, PIL, h5py..."""
    result = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, "-n", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(REPO / "config" / config_file)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
