"""Warm start for local runs: each job's Python forked from an interpreter that already imported
torch and the libraries the rules use, instead of a fresh process that imports them again.

On a CPU machine importing torch alone takes ≈3 s and open_clip ≈7 s, while most jobs of the
embedded default and of the rehearsal compute for well under a second: without this, starting
Python is most of a local run. `run_snakemake` runs Snakemake with a small interpreter wrapper in
place of `sys.executable`, the interpreter Snakemake starts `script:` rules with. For each job the
wrapper connects to a server that preloaded the libraries, hands it the job's script, working
directory, environment and standard streams, and waits for its exit status; the server forks a
child that runs the script as `python script.py` would. Anything else (no server, other arguments)
the wrapper hands to the real interpreter unchanged.

What a job computes does not depend on it: the child gets the job's environment, the thread
counts Snakemake set for the job (BLAS/OpenMP pools resized to them) and a fresh process of its
own; a killed job (its wrapper gone) takes its child's process group with it. Jobs that run in a
conda environment or on a cluster never reach the server: Snakemake starts those with the
environment's own `python`.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib
import io
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "workflow" / "scripts"
#: Libraries the encoder loaders import lazily, preloaded where installed.
LAZY_IMPORTS = ("open_clip", "transformers", "sentence_transformers", "timm", "torchvision",
                "matplotlib.pyplot", "safetensors.torch", "sklearn.linear_model", "threadpoolctl")
_HEADER = struct.Struct("!I")
_READY = "warm-start server ready"
#: Set in a warm-started job's environment (and nowhere else).
MARKER = "XSAE_WARM_START"

WRAPPER = '''#!{python} -IS
# Hands `python SCRIPT.py` to the warm-start server at {address!r}; anything else, or no server,
# goes to the real interpreter. Written by xsae.warm_start.
import json, os, socket, struct, sys

PYTHON = {python!r}
args = sys.argv[1:]
conn = None
if len(args) == 1 and args[0].endswith(".py"):
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect({address!r})
    except OSError:
        conn = None
if conn is None:
    os.execv(PYTHON, [PYTHON, *args])
umask = os.umask(0o022)
os.umask(umask)
request = json.dumps({{"script": os.path.abspath(args[0]), "cwd": os.getcwd(), "umask": umask,
                      "env": dict(os.environ)}}).encode()
socket.send_fds(conn, [b"j"], [0, 1, 2])
conn.sendall(struct.pack("!I", len(request)) + request)
reply = b""
while chunk := conn.recv(64):
    reply += chunk
if not reply:
    sys.exit("warm start: the job's process ended without an exit status (killed?)")
sys.exit(int(reply))
'''


# ---- what to preload ---------------------------------------------------------------------------
def script_imports(scripts_dir: Path = SCRIPTS_DIR) -> list[str]:
    """Every module a workflow script imports at its top level, in first-seen order."""
    modules: dict[str, None] = {}
    for path in sorted(scripts_dir.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                modules.update((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules[node.module] = None
    return list(modules)


def preload(modules: Iterable[str]) -> list[str]:
    """Import what can be imported; return what could not (an optional library not installed)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


# ---- the server and its children ---------------------------------------------------------------
def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    data = b""
    while len(data) < _HEADER.size or len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the wrapper closed the connection mid-request")
        data += chunk
    return json.loads(data[_HEADER.size:]), fds


def _adopt_streams(fds: Sequence[int]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "rb", closefd=False)), encoding="utf-8")
    for name, fd in (("stdout", 1), ("stderr", 2)):
        raw = io.FileIO(fd, "wb", closefd=False)
        stream = io.TextIOWrapper(raw if fd == 2 else io.BufferedWriter(raw), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=fd == 2 or os.isatty(fd),
                                  write_through=fd == 2)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _limit_threads(env: dict[str, str]) -> None:
    """The pools a fresh process would size from OMP_NUM_THREADS & co. (read when the libraries
    loaded, in the server) resized to the job's count."""
    threads = env.get("OMP_NUM_THREADS")
    if not threads or not threads.isdigit():
        return
    with contextlib.suppress(ImportError):
        import threadpoolctl

        threadpoolctl.threadpool_limits(int(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _execute(script: str) -> int:
    """Run `script` as `__main__`, as `python script` would: its exit status; a traceback without
    this module's frame."""
    import builtins

    try:
        source = Path(script).read_bytes()
        exec(compile(source, script, "exec"),
             {"__name__": "__main__", "__file__": script, "__builtins__": builtins})
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1


def _run_job(conn: socket.socket) -> None:
    """In the forked child: become the job's process, run its script, report, exit."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        request, fds = _receive(conn)
        _adopt_streams(fds)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[MARKER] = "1"
        _limit_threads(request["env"])

        def watch() -> None:  # the wrapper gone (job killed): take the job's processes with it
            with contextlib.suppress(OSError):
                conn.recv(1)
            os.killpg(0, signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        script = request["script"]
        sys.argv = [script]
        sys.path[0] = os.path.dirname(script)
        code = _execute(script)
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        conn.sendall(str(code).encode())
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def warm_up() -> None:
    """Work every figure job would repeat on its first plot: matplotlib finding and parsing its
    fonts and loading the PNG and PDF writers."""
    if "matplotlib.pyplot" not in sys.modules:
        return
    plt = sys.modules["matplotlib.pyplot"]
    figure, axes = plt.subplots()
    axes.plot([0, 1], [0, 1], label="x")
    axes.set_title("warm-up")
    axes.legend()
    for form in ("png", "pdf"):
        figure.savefig(io.BytesIO(), format=form)
    plt.close(figure)


def serve(address: str, modules: Sequence[str]) -> None:
    """Preload `modules`, then fork one child per connection until stdin closes."""
    missing = preload(modules)
    warm_up()
    import gc

    gc.collect()
    gc.freeze()  # keep the preloaded objects' pages shared with the children
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reaped by the kernel
    print(f"{_READY}; not installed: {', '.join(missing) or 'none'}", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1024):
            return  # the launcher is gone
        if listener in readable:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _run_job(conn)
            conn.close()


# ---- the launcher ------------------------------------------------------------------------------
@contextlib.contextmanager
def warm_interpreter(modules: Sequence[str] | None = None) -> Iterator[Path]:
    """Start a server preloading `modules` (default: what the workflow scripts import, and the
    encoder libraries); yield the path of a wrapper to run Snakemake's scripts with."""
    modules = list(modules) if modules is not None else [*script_imports(), *LAZY_IMPORTS]
    with tempfile.TemporaryDirectory(prefix="xsae-warm-") as directory:
        address = str(Path(directory) / "server.sock")
        wrapper = Path(directory) / "python"
        wrapper.write_text(WRAPPER.format(python=sys.executable, address=address), encoding="utf-8")
        wrapper.chmod(0o755)
        started = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-m", "xsae.warm_start", "serve", address, *modules],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline().strip()
            if not line.startswith(_READY):
                raise RuntimeError(f"the warm-start server did not start (exit {server.wait()}); "
                                   "run with --cold to see the jobs' own import errors")
            logger.info("warm start: %s modules preloaded in %.1f s (%s)", len(modules),
                        time.perf_counter() - started, line.removeprefix(_READY).lstrip("; "))
            yield wrapper
        finally:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def job_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with this interpreter's folder first on PATH: notebook rules
    call papermill from it, also when the virtual environment was never activated."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_snakemake(args: Sequence[str], *, warm: bool = True, env: Mapping[str, str] | None = None) -> int:
    """Run `snakemake ARGS` in a subprocess (`job_environment(env)`); with `warm`, its script jobs
    start warm. Returns its exit status."""
    env = job_environment(env)
    if not warm or not runs_locally(args):
        return subprocess.run([sys.executable, "-m", "snakemake", *args], env=env, check=False).returncode
    with warm_interpreter() as wrapper:
        command = [sys.executable, "-m", "xsae.warm_start", "snakemake", str(wrapper), *args]
        return subprocess.run(command, env=env, check=False).returncode


#: Arguments under which jobs run elsewhere (a cluster), where `sys.executable` names the Python of
#: the job's own Snakemake process and the wrapper, a local file, must not stand in for it.
REMOTE_ARGUMENTS = ("--executor", "-e", "--profile", "--workflow-profile")
DRY_RUN = ("-n", "--dry-run", "--dryrun")


def _snakemake(wrapper: str, args: list[str]) -> None:
    """Snakemake starts `script:` jobs with `sys.executable` when they have no environment of their
    own (`snakemake.script.PythonScript.execute_script`): point it at the wrapper."""
    from snakemake.cli import main

    sys.executable = wrapper
    main(args)


def runs_locally(args: Sequence[str]) -> bool:
    """Whether Snakemake with `args` starts jobs on this machine: no executor or profile (a
    cluster's nodes would not find the wrapper) and not a dry run (no job at all)."""
    return not any(arg.split("=")[0] in (*REMOTE_ARGUMENTS, *DRY_RUN) for arg in args)


def main(argv: list[str] | None = None) -> None:
    """`serve ADDRESS MODULE...` or `snakemake WRAPPER ARG...`: the two processes `run_snakemake`
    starts (not meant to be called by hand)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], argv[2:])
    elif len(argv) >= 2 and argv[0] == "snakemake":
        _snakemake(argv[1], argv[2:])
    else:
        sys.exit(f"usage: python -m xsae.warm_start serve ADDRESS MODULE... | snakemake WRAPPER ARG...\n"
                 f"got: {argv}")


if __name__ == "__main__":
    main()
