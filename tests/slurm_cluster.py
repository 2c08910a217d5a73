"""A throwaway one-node SLURM cluster with accounting, for tests that submit real jobs.

Why: the Snakemake SLURM executor submits with ``sbatch`` and polls ``sacct``, so a faithful test needs
slurmctld, slurmd, slurmdbd (backed by MariaDB) and munge, all running. Everything here runs as root from
files under one directory, on free ports and private sockets, so it neither needs systemd nor touches (or
clashes with) a cluster or database already on the machine. Standard library only.

    hint = install_hint()  # None, or why not (for pytest.skip)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))  # a short path: unix sockets live in it
    subprocess.run(["sbatch", "--account", cluster.account, ...], env={**os.environ, **cluster.env})
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Debian package of each binary used, for the install hint.
_PACKAGES = {
    "munged": "munge",
    "munge": "munge",
    "unmunge": "munge",
    "mariadb-install-db": "mariadb-server",
    "mariadbd": "mariadb-server",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sacctmgr": "slurm-client",
    "sinfo": "slurm-client",
    "sbatch": "slurm-client",
    "sacct": "slurm-client",
    "scancel": "slurm-client",
}
#: Start order; stop() goes in reverse.
_DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
ACCOUNT = "testacct"
PARTITION = "debug"
NODE = "localhost"
#: The longest unix socket under root: slurmstepd's spool/<node>_<job id>.<batch step id>; sun_path holds 107.
_LONGEST_SOCKET = f"/spool/{NODE}_67043328.4294967291"


class SlurmClusterError(RuntimeError):
    """A daemon did not come up; the message ends with the tail of its log."""


@dataclass
class SlurmCluster:
    """A running cluster: clients need ``env`` (it points them at this cluster's slurm.conf)."""

    root: Path
    account: str
    partition: str
    env: dict[str, str]
    #: The system-wide slurm.conf path linked to this cluster's (see `start_cluster`), if any.
    linked_config: Path | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def stop(self) -> None:
        """Stop every daemon started under ``root`` (newest first), from its pid file; safe to repeat.

        Pid files rather than only our Popen handles, so a cluster whose starter died can still be stopped.
        Jobs still running are killed first: their slurmstepd daemonises and would outlive slurmd.
        """
        marker = f"{self.root}/"  # in every daemon's command line or $SLURM_CONF; the slash: not root2/
        if _alive(_read_pid(self.root / "pids" / "slurmctld.pid"), self._procs.get("slurmctld")):
            # Cancel jobs rather than only kill them: a restart of this root would requeue lost ones.
            # Our slurm.conf whatever self.env says: never cancel the jobs of another cluster.
            env = _own_env(self.root / "etc" / "slurm.conf")
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, SlurmClusterError):
                cmd = [_require("scancel"), f"--partition={self.partition}"]
                subprocess.run(cmd, env=env, capture_output=True, timeout=10)
        _kill_job_sessions(marker)
        for name in reversed(_DAEMONS):
            pid_file = self.root / "pids" / f"{name}.pid"
            if not (pid := _read_pid(pid_file)):
                continue
            proc = self._procs.pop(name, None)
            _terminate(pid, marker, proc)
            if proc is not None:
                proc.poll()  # reap a daemon that had already died, or Popen warns
            pid_file.unlink(missing_ok=True)
        link = self.linked_config
        if link is not None and link.is_symlink() and link.resolve() == self.root / "etc" / "slurm.conf":
            link.unlink()


def install_hint() -> str | None:
    """None when a cluster can be started here, else a one-line reason (missing binaries, not root)."""
    missing = [name for name in _PACKAGES if _which(name) is None]
    if missing:
        packages = " ".join(sorted({_PACKAGES[name] for name in missing}))
        return f"missing {', '.join(missing)}: apt-get install -y {packages}"
    if os.geteuid() != 0:
        return "a test SLURM cluster runs its daemons as root (SlurmUser=root); run as root"
    return None


def start_cluster(
    root: Path, *, cpus: int | None = None, memory_mb: int | None = None, timeout_s: float = 60,
    system_config: Path | None = None,
) -> SlurmCluster:
    """Start munged, MariaDB, slurmdbd, slurmctld and slurmd under ``root`` and wait for an idle node.

    ``cpus`` and ``memory_mb`` size the node (default: this machine's, less some memory headroom); the
    node reports what is configured, so a small machine can pose as a bigger one. ``timeout_s`` bounds the
    whole start; on failure every daemon already started is stopped again.

    ``system_config`` (e.g. /etc/slurm/slurm.conf) becomes a link to this cluster's config until
    `stop`, for clients that ignore ``$SLURM_CONF`` (Snakemake's job-step executor drops every
    ``SLURM_*`` variable before its ``srun``); a file already there is never replaced.
    """
    hint = install_hint()
    if hint is not None:
        raise SlurmClusterError(hint)
    root = root.resolve()
    if len(str(root)) + len(_LONGEST_SOCKET) > 107:
        raise SlurmClusterError(
            f"{root} is too long for the unix sockets under it (at most {107 - len(_LONGEST_SOCKET)}"
            " characters): use a shorter directory, e.g. tmp_path_factory.mktemp('slurm')"
        )
    SlurmCluster(root, ACCOUNT, PARTITION, {}).stop()  # daemons left in root by a starter that died
    for sub in ("etc", "log", "pids", "run", "state", "spool", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cpus = cpus or len(os.sched_getaffinity(0))
    memory_mb = memory_mb or _default_memory_mb()
    deadline = time.monotonic() + timeout_s
    ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
    conf = root / "etc" / "slurm.conf"
    env = {"SLURM_CONF": str(conf)}
    daemon_env = _own_env(conf)
    munge_socket = root / "munge" / "munge.socket"
    cluster = SlurmCluster(root=root, account=ACCOUNT, partition=PARTITION, env=env,
                           linked_config=system_config)
    if system_config is not None:
        if system_config.is_symlink() and not system_config.exists():
            system_config.unlink()  # left by a cluster whose starter died
        if system_config.exists() or system_config.is_symlink():
            raise SlurmClusterError(f"{system_config} exists: this machine has a SLURM config of its own, "
                                    "which a test cluster must not replace")
        system_config.parent.mkdir(parents=True, exist_ok=True)
        system_config.symlink_to(conf)

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = root / "log" / f"{name}.out"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [_require(argv[0]), *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=daemon_env,
                start_new_session=True,
            )
        cluster._procs[name] = proc
        (root / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def wait(name: str, ready: Callable[[], bool], log: Path) -> None:
        """Poll ready() until it holds; fail fast if the daemon dies; either way show its log's tail."""
        proc = cluster._procs[name]
        while not ready():
            if proc.poll() is not None:
                problem = f"{name} exited with status {proc.returncode}"
            elif time.monotonic() > deadline:
                problem = f"{name} not ready within {timeout_s:g}s"
            else:
                time.sleep(0.2)
                continue
            raise SlurmClusterError(problem + _tail(log, root / "log" / f"{name}.out"))

    def client(*argv: str) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client against this cluster; a hang (daemon not answering yet) counts as failure."""
        left = min(10.0, max(1.0, deadline - time.monotonic()))
        try:
            return subprocess.run(
                [_require(argv[0]), *argv[1:]], env=daemon_env, capture_output=True, text=True, timeout=left
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {left:.0f}s")

    try:
        key = root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
            key.chmod(0o400)
        spawn(
            "munged",
            [
                "munged",
                "--foreground",  # so that it logs to stderr: log/munged.out
                "--force",  # a 0700 temporary directory on the socket path is fine here
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={root / 'run' / 'munged.pid'}",
                f"--seed-file={root / 'munge' / 'munged.seed'}",
            ],
        )
        wait("munged", lambda: _munge_works(munge_socket), root / "log" / "munged.out")

        db_socket = _start_mariadb(root, db_port, spawn, max(1.0, deadline - time.monotonic()))
        wait("mariadbd", lambda: _accepts(db_socket), root / "log" / "mariadbd.err")

        # Unique per root, yet the same when a root is started again (slurmctld's saved state names it).
        cluster_name = "t" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
        _write_configs(
            root, cluster_name, cpus, memory_mb, munge_socket, ctld_port, slurmd_port, dbd_port, db_port
        )
        spawn("slurmdbd", ["slurmdbd", "-D"])  # no -f: it reads slurmdbd.conf next to $SLURM_CONF
        wait(
            "slurmdbd",
            lambda: client("sacctmgr", "-i", "-n", "show", "cluster").returncode == 0,
            root / "log" / "slurmdbd.log",
        )
        for argv in (
            ("add", "cluster", cluster_name),
            ("add", "account", ACCOUNT, f"cluster={cluster_name}"),
            ("add", "user", "root", f"account={ACCOUNT}", f"cluster={cluster_name}"),
        ):
            done = client("sacctmgr", "-i", *argv)
            # On a restart of the same root they exist already; sacctmgr then fails with one of these.
            if done.returncode != 0 and not any(
                known in done.stdout + done.stderr for known in ("already exist", "Nothing new added")
            ):
                raise SlurmClusterError(f"sacctmgr {' '.join(argv)}: {done.stdout}{done.stderr}")

        spawn("slurmctld", ["slurmctld", "-D", "-f", str(conf)])
        wait("slurmctld", lambda: client("scontrol", "ping").returncode == 0, root / "log" / "slurmctld.log")
        spawn("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(conf)])
        wait("slurmd", lambda: _node_state(client) == "idle", root / "log" / "slurmd.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_mariadb(
    root: Path, port: int, spawn: Callable[[str, list[str]], object], timeout_s: float
) -> Path:
    """Initialise a private data directory and start mariadbd on it; root logs in without a password."""
    data = root / "mariadb"
    common = ["--no-defaults", f"--datadir={data}", "--user=root", "--innodb-log-file-size=8M"]
    if not (data / "mysql").is_dir():
        install = [_require("mariadb-install-db"), *common, "--auth-root-authentication-method=normal"]
        try:
            done = subprocess.run(
                [*install, "--skip-test-db", "--skip-name-resolve"],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as err:
            raise SlurmClusterError(f"mariadb-install-db took over {timeout_s:.0f}s") from err
        if done.returncode != 0:
            raise SlurmClusterError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
    db_socket = root / "run" / "mariadb.sock"
    spawn(
        "mariadbd",
        [
            "mariadbd",
            *common,
            f"--socket={db_socket}",
            f"--pid-file={root / 'run' / 'mariadbd.pid'}",
            f"--log-error={root / 'log' / 'mariadbd.err'}",
            "--bind-address=127.0.0.1",
            f"--port={port}",
            "--skip-name-resolve",
        ],
    )
    return db_socket


def _write_configs(
    root: Path,
    cluster_name: str,
    cpus: int,
    memory_mb: int,
    munge_socket: Path,
    ctld_port: int,
    slurmd_port: int,
    dbd_port: int,
    db_port: int,
) -> None:
    """Write slurm.conf and slurmdbd.conf (mode 600, or slurmdbd refuses it: it may hold a password)."""
    log, run = root / "log", root / "run"
    slurm_conf = f"""\
ClusterName={cluster_name}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={run / "slurmctld.pid"}
SlurmdPidFile={run / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that gives no --mem is allocated the whole node's memory and runs alone.
DefMemPerCPU={max(1, memory_mb // cpus)}
# The node is what this file says (else fewer real CPUs than configured leave it drained).
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for an hour.
MinJobAge=3600
KillWait=5
InactiveLimit=0
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
# Connections to slurmdbd authenticate through the munge socket named here, not AuthInfo's.
AccountingStoragePass={munge_socket}
AccountingStorageEnforce=associations
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
    dbd_conf = f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={log / "slurmdbd.log"}
PidFile={run / "slurmdbd.pid"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=root
StorageLoc=slurm_acct_db
"""
    (root / "etc" / "slurm.conf").write_text(slurm_conf)
    dbd_path = root / "etc" / "slurmdbd.conf"
    dbd_path.write_text(dbd_conf)
    dbd_path.chmod(0o600)


def _own_env(conf: Path) -> dict[str, str]:
    """os.environ pointed at our slurm.conf, without the SLURM_* variables of a job we may be running in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"SLURM_CONF": str(conf)}


def _node_state(client: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    """The node's compact state as sinfo prints it ("idle", "down*", ...), or "" when unknown."""
    done = client("sinfo", "-h", "-N", "-n", NODE, "-o", "%t")
    return done.stdout.strip() if done.returncode == 0 else ""


def _munge_works(munge_socket: Path) -> bool:
    """A credential made through the socket decodes through it: munged is up and the key is usable."""
    if not munge_socket.exists():
        return False
    cred = subprocess.run([_require("munge"), "-n", "-S", str(munge_socket)], capture_output=True)
    if cred.returncode != 0:
        return False
    decoded = subprocess.run(
        [_require("unmunge"), "-S", str(munge_socket)], input=cred.stdout, capture_output=True
    )
    return decoded.returncode == 0


def _accepts(unix_socket: Path) -> bool:
    """Whether something listens on the unix socket (mariadbd creates it once ready for connections)."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(unix_socket))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on this machine now (all held open together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _default_memory_mb() -> int:
    """Most of this machine's memory (80%), leaving room for everything that is not a job."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 8 // 10 // 1024
    raise SlurmClusterError("no MemTotal in /proc/meminfo")


def _which(name: str) -> str | None:
    """Like shutil.which, also looking in the sbin directories a non-login PATH may lack."""
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    path = os.pathsep.join(d for d in dirs if d)
    return shutil.which(name, path=path)


def _require(name: str) -> str:
    found = _which(name)
    if found is None:
        raise SlurmClusterError(f"{name} not found")
    return found


def _tail(log: Path, stderr: Path, lines: int = 20) -> str:
    """The last lines of a daemon's log, or of its stderr when it died before opening its log."""
    for path in (log, stderr):
        with contextlib.suppress(FileNotFoundError):
            if text := path.read_text(errors="replace").splitlines()[-lines:]:
                return f"\n--- last lines of {path}:\n" + "\n".join(text)
    return f"\n(nothing in {log} nor in {stderr})"


def _terminate(pid: int, marker: str, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the daemon's process group, SIGKILL it after a grace period, and wait until it is gone.

    ``marker`` (the cluster root) must appear in the process's command line or environment ($SLURM_CONF),
    so that a pid file left behind never kills an unrelated process that got the same pid.
    """
    if not any(marker.encode() in _proc_file(pid, name) for name in ("cmdline", "environ")):
        return
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        end = time.monotonic() + grace
        while _alive(pid, proc) and time.monotonic() < end:
            time.sleep(0.05)
        if not _alive(pid, proc):
            return


def _kill_job_sessions(marker: str) -> None:
    """SIGKILL the sessions of this cluster's slurmstepd processes (each job step and what it started).

    A slurmstepd is ours when its environment, inherited from slurmd, holds ``marker`` (in $SLURM_CONF).
    """
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    sessions = {
        _sid(pid)
        for pid in pids
        if _proc_file(pid, "comm") == b"slurmstepd\n" and marker.encode() in _proc_file(pid, "environ")
    } - {None, os.getsid(0)}
    members = [pid for pid in pids if _sid(pid) in sessions]
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 5
    while any(_alive(pid, None) for pid in members) and time.monotonic() < end:
        time.sleep(0.05)


def _read_pid(pid_file: Path) -> int:
    """The pid in a pid file we wrote, or 0 when there is none."""
    try:
        return int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _proc_file(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name>, or b"" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    """Whether pid still runs; a zombie counts as gone (and is reaped when it is our child)."""
    if proc is not None and proc.poll() is not None:
        return False
    state = _proc_file(pid, "stat").rpartition(b")")[2].split()[:1]
    return state not in ([], [b"Z"], [b"X"])
