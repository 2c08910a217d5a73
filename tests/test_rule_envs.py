"""Each rule's script imports only what its own `envs/` file installs (its pins and their
dependencies), as it would in the conda environment a cluster run builds from that file.

Every script runs its imports in a fresh interpreter in which any installed distribution outside
its environment's closure cannot be imported; a module missing from an env (PIL in train.yaml) or a
heavy import dragged into a light rule (torch into a render rule) fails here.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^(?:local)?rule (\w+):(.*?)(?=^(?:local)?rule |\Z)", re.MULTILINE | re.DOTALL)
# Distributions every environment has: the interpreter's own tools and the workflow itself.
# Distributions every environment has: the interpreter's own tools. Snakemake's script preamble
# puts the submitting Snakemake's site-packages on the path (for `snakemake` itself) and the
# workflow's `src/` (for `xsae`).
ALWAYS = {"pip", "setuptools", "wheel", "snakemake"}
WORKFLOW_MODULES = {"xsae"}


def rule_scripts() -> dict[str, tuple[str, str]]:
    """rule → (env file, script file), for every rule with a `script:`."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text(encoding="utf-8")):
            env = re.search(r'conda:\s*(?:#[^\n]*\n\s*)*"\.\./envs/([\w.]+)"', body)
            script = re.search(r'script:\s*"\.\./workflow/scripts/([\w.]+)"', body)
            if script:
                assert env, f"rule {name} ({smk.name}) runs a script but declares no conda env"
                found[name] = (env.group(1), script.group(1))
    return found


def env_pins(env_file: str) -> set[str]:
    spec = yaml.safe_load((REPO / "envs" / env_file).read_text(encoding="utf-8"))
    pins = set()
    for dependency in spec["dependencies"]:
        if isinstance(dependency, dict):
            pins.update(canonicalize_name(Requirement(p).name) for p in dependency.get("pip", []))
    return pins


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
