"""Real environments for the rules: one venv per file in `envs/`, built from that file's pip pins
alone, and a Snakemake launcher that runs each rule's script in its own rule's venv.

Conda channels cannot be reached from the test machines, so each env file's `pip:` section (every
env is Python 3.11 plus pip pins) is installed with uv into a venv. uv links every venv's files
from one cache, so the three torch environments cost one torch on disk and seconds each after
the first. Venvs are kept under `XSAE_ENV_CACHE` (default `~/.cache/xsae/envs`), keyed by a hash
of their pins, and reused by later runs.

Snakemake starts a `script:` job with `sys.executable` when the job has no environment of its own;
`xsae.warm_start`'s `snakemake WRAPPER ARGS` entry point puts a wrapper there. The wrapper built
here reads the script's name from the temporary copy Snakemake runs (`tmpXXXX.<script>.py`) and
hands it to the Python of that rule's env; a script it does not know fails the job. Snakemake
itself runs from a venv of its own holding Snakemake and what the Snakefile imports while it
parses (the submitting environment of a cluster run): a job's script sees that venv's
site-packages too, as on a cluster (Snakemake's script preamble adds them), so those few
distributions are the only ones a rule's env could lack unnoticed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
#: What Snakemake needs to parse the Snakefile, pinned to this interpreter's versions.
RUNNER_DISTRIBUTIONS = ("snakemake", "snakemake-executor-plugin-slurm", "pandas", "numpy", "pyyaml",
                        "jsonschema")
RULE = re.compile(r"^(?:local)?rule (\w+):(.*?)(?=^(?:local)?rule |\Z)", re.MULTILINE | re.DOTALL)


def cache_root() -> Path:
    return Path(os.environ.get("XSAE_ENV_CACHE", Path.home() / ".cache" / "xsae" / "envs"))


def env_requirements(env_file: str) -> list[str]:
    """The pip pins of one file in envs/ (every env there is Python plus pip pins)."""
    spec = yaml.safe_load((ENVS / env_file).read_text(encoding="utf-8"))
    pins = [pin for dependency in spec["dependencies"] if isinstance(dependency, dict)
            for pin in dependency.get("pip", [])]
    others = [d for d in spec["dependencies"] if isinstance(d, str) and not re.match(r"^(python|pip)\b", d)]
    if others:
        raise AssertionError(f"envs/{env_file}: conda packages {others} have no venv equivalent here")
    return pins


def runner_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNNER_DISTRIBUTIONS]


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        raise AssertionError("uv is not installed: `make setup` installs it (the dev extra)")
    return found


def build_env(name: str, requirements: list[str]) -> Path:
    """A venv with exactly these requirements (and their dependencies), built once and reused."""
    key = hashlib.sha256("\n".join([sys.version, *sorted(requirements)]).encode()).hexdigest()[:12]
    root = cache_root()
    target = root / f"{name}-{key}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, UV_CACHE_DIR=str(root / "uv-cache"), UV_LINK_MODE="hardlink")
    for argv in ([uv(), "venv", "--quiet", "--python", sys.executable, str(target)],
                 [uv(), "pip", "install", "--quiet", "--python", str(target / "bin" / "python"),
                  *find_links(), *requirements]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AssertionError(f"building the {name} env failed: {shlex.join(argv)}\n"
                                 f"{result.stderr[-3000:]}")
    (target / ".complete").write_text("\n".join(requirements), encoding="utf-8")
    return target


def find_links() -> list[str]:
    """pip's local wheel folders (PIP_FIND_LINKS), which uv does not read by itself."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    return [arg for folder in folders for arg in ("--find-links", folder)]


def rule_envs() -> dict[str, tuple[str, str, str]]:
    """rule → (env file, script or notebook file, its kind) for every rule that runs Python."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text(encoding="utf-8")):
            env = re.search(r'conda:\s*(?:#[^\n]*\n\s*)*"\.\./envs/([\w.]+)"', body)
            code = re.search(r'(script|notebook):\s*"\.\./workflow/(?:scripts|notebooks)/([\w.]+)"', body)
            if code:
                assert env, f"rule {name} ({smk.name}) runs Python but declares no conda env"
                found[name] = (env.group(1), code.group(2), code.group(1))
    return found


def write_dispatcher(path: Path, pythons: dict[str, Path], runner: Path) -> Path:
    """The interpreter wrapper: `tmpXXXX.<script>.py` runs in its rule's env, anything else in the runner."""
    cases = []
    for env_file, script, kind in sorted(set(rule_envs().values())):
        if kind == "script":
            cases.append(f'  *.{script}) exec {shlex.quote(str(pythons[env_file]))} "$@" ;;')
    path.write_text("#!/bin/sh\n"
                    'case "$1" in\n' + "\n".join(cases) + "\n"
                    '  *.py) echo "no rule env for the script $1" >&2; exit 97 ;;\n'
                    "esac\n"
                    f'exec {shlex.quote(str(runner / "bin" / "python"))} "$@"\n', encoding="utf-8")
    path.chmod(0o755)
    return path


def run_in_rule_envs(args: list[str], workdir: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` with every script rule in its own env's venv (built when missing), notebook
    rules with their env's papermill first on PATH, and Snakemake in the runner venv."""
    pythons = {env_file: build_env(Path(env_file).stem, env_requirements(env_file)) / "bin" / "python"
               for env_file, _, _ in rule_envs().values()}
    runner = build_env("snakemake", runner_requirements())
    dispatcher = write_dispatcher(workdir / "rule-env-python", pythons, runner)
    notebook_envs = {pythons[env].parent for env, _, kind in rule_envs().values() if kind == "notebook"}
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([*map(str, sorted(notebook_envs)), "/usr/bin", "/bin"])
    env["PYTHONPATH"] = str(REPO / "src")  # xsae.warm_start's entry point; jobs get src/ from the Snakefile
    argv = [str(runner / "bin" / "python"), "-m", "xsae.warm_start", "snakemake", str(dispatcher),
            "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
