"""Every command the README shows works verbatim from the root of a fresh clone.

Snakemake commands run as dry runs (`-n`), make targets as `make -n`, benchmarks with `--help`;
`xsae` commands run as written. The clone is the working tree's tracked and unignored files copied
to a new folder, with the project's virtual environment linked in, as `make setup` leaves it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import dry_run_jobs

REPO = Path(__file__).resolve().parents[1]
NO_CONDA_PROFILE = "slurm_without_conda"
#: Rules that run on the submitting node (`localrule: True`): no cluster request.
LOCAL_RULES = {"all", "download_tuxpaint", "download_dataset", "plan_table"}
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks, comments stripped, in order."""
    commands = []
    for block in BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8")):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    profile = (root / "slurm" / "config.yaml").read_text(encoding="utf-8")
    (root / NO_CONDA_PROFILE).mkdir()
    (root / NO_CONDA_PROFILE / "config.yaml").write_text(
        re.sub(r"(?m)^software-deployment-method:.*$", "", profile), encoding="utf-8")
    # the README's example of a user's own overlay on the default
    (root / "my.yaml").write_text("seed: 1\n", encoding="utf-8")
    # the folder config/examples/own_data.yaml points at (its table; a dry run reads no image)
    (root / "my_images").mkdir()
    (root / "my_images" / "captions.csv").write_text("file,caption,labels\n", encoding="utf-8")
    return root


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{cwd / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def _dry(argv: list[str]) -> list[str]:
    """The same command with no side effects (and placeholders filled in)."""
    argv = [re.sub(r"<(\w+)>", r"test_\1", arg) for arg in argv]
    program = Path(argv[0]).name
    if program == "make":
        return ["make", "-n", *argv[1:]]
    if program == "snakemake":
        if "slurm" in argv and shutil.which("conda") is None:
            # The cluster profile builds each rule's conda env, and Snakemake asks conda for its
            # version even in a dry run; where conda cannot be installed, the same profile less
            # that one line is used.
            argv = [arg if arg != "slurm" else NO_CONDA_PROFILE for arg in argv]
        return argv if "-n" in argv or "--dry-run" in argv else [*argv, "-n"]
    if program == "python" and argv[1].startswith("bench/"):
        return [*argv, "--help"]
    if program == "xsae" and argv[1] == "run":
        return [*argv, "-n"]  # argv ends with Snakemake's arguments
    if program == "xsae" and argv[1] == "rehearsal":
        return [*argv, "--", "-n"]  # builds the miniatures and lists the rehearsal's jobs
    if program == "xsae":
        return argv
    raise AssertionError(f"README command {shlex.join(argv)!r}: no way to check it here; add a case")


COMMANDS = readme_commands()


def test_readme_shows_the_commands_it_promises():
    assert "make run" in COMMANDS and "make test" in COMMANDS
    assert "snakemake -n --configfile config/paper.yaml" in COMMANDS
    assert "snakemake -n --profile slurm --configfile config/paper.yaml" in COMMANDS


def _assert_every_job_sized(argv: list[str], output: str) -> None:
    """The cluster command as the README writes it submits every job with a wall time and memory
    (its `--default-resources` replaces the profile's, so the sizes live in the rules), and with the
    account and partition it was given."""
    jobs = [job for job in dry_run_jobs(output) if job[0] not in LOCAL_RULES]
    assert jobs, output[-2000:]
    for rule, _, resources in jobs:
        assert int(resources.get("runtime", 0)) > 0 and int(resources.get("mem_mb", 0)) > 0, (rule, resources)
        if "--default-resources" in argv:
            assert resources.get("slurm_account") == "test_account", (rule, resources)
            assert resources.get("slurm_partition") == "test_partition", (rule, resources)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_works_from_a_fresh_clone(clone, command):
    argv = shlex.split(command)
    result = _run(_dry(argv), clone)
    output = result.stdout + result.stderr
    if argv[:2] == [".venv/bin/xsae", "provenance"]:
        # nothing has run in a fresh clone: the command says so and what the record would be
        assert result.returncode == 1, output
        assert f"{argv[2]}: no provenance record" in output
        return
    assert result.returncode == 0, f"{command!r} failed in a fresh clone:\n{output[-3000:]}"
    if argv[0] == "snakemake" or (Path(argv[0]).name == "xsae" and argv[1:2] in (["rehearsal"], ["run"])):
        assert "Job stats:" in output, output[-2000:]
        paper = "config/paper.yaml" in argv
        own = "config/examples/own_data.yaml" in argv
        # the paper config (and a user's own folder) run their own DAG and nothing of the embedded
        # default, and vice versa
        assert ("download_tuxpaint" in output) is not (paper or own), output[-2000:]
        assert ("download_dataset" in output) is (paper or own), output[-2000:]
    if "--profile" in argv:
        _assert_every_job_sized(argv, output)
    if argv[0] == "make":
        assert any(tool in output for tool in ("snakemake", "pytest", "xsae run", "bench/")), output
