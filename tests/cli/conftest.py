"""A real single-node Slurm for the tests of ``reprocess --slurm``, private to the session.

``slurm_cluster`` (session) starts munged, slurmctld and slurmd as children of the test
process, each in its own process group, with everything in one temp dir: slurm.conf, the
munge key and socket, state, spool, logs and pid files. Its daemons listen on 127.0.0.1
only, on ports picked free. ``slurm`` (per test) points the Slurm commands at it through
SLURM_CONF (so sbatch / squeue inside ``asapo-hpc reprocess`` use it too). Teardown cancels
every job left, then stops each daemon by its pid (process group), and kills any job step
daemon of this cluster still alive. Skips, naming what to install, without Slurm or root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODE = "localhost"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0

SLURM_CONF = """\
ClusterName=asapotest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=2
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _clean_env() -> dict[str, str]:
    """This process's environment without Slurm's job and option variables (a test run
    inside a Slurm allocation must not submit into it)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}


@dataclass
class SlurmCluster:
    """A running private cluster: its directory, config file and daemons."""

    root: Path
    conf: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**_clean_env(), "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              check=check, timeout=30)

    def logs(self) -> str:
        out = []
        for path in sorted((self.root / "log").iterdir()):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def jobs(self) -> list[str]:
        """Ids of the jobs the controller still runs or queues."""
        done = self.run("squeue", "-h", "-o", "%A", check=False)
        return sorted(set(done.stdout.split())) if done.returncode == 0 else []

    # -- start ---------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(mode=0o700)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(SLURM_CONF.format(root=self.root, ctld_port=ctld_port,
                                               slurmd_port=slurmd_port, node=NODE))
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        # --force: munged wants every directory above its socket world-searchable; ours
        # are private (0700, root only), which is safe here since everything runs as root
        self._spawn("munged", "--foreground", "--force",
                    f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                    f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'seed'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}")
        self._until(lambda: (munge / "munge.socket").exists(), "munged's socket")
        # -D: stay in the foreground (our child); -c: no state from an earlier run
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._until(lambda: "UP" in self.run("scontrol", "ping", check=False).stdout,
                    "slurmctld to answer `scontrol ping`")
        self._spawn("slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self._until(lambda: self.run("sinfo", "-h", "-n", NODE, "-o", "%t",
                                     check=False).stdout.strip() == "idle",
                    f"node {NODE} to be idle in sinfo")

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            self.procs[name] = subprocess.Popen([_binary(name), *args], env=self.env,
                                                stdout=out,
                                                stderr=subprocess.STDOUT, cwd=self.root,
                                                start_new_session=True)

    def _until(self, condition, what: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not condition():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else "timed out"
                raise RuntimeError(f"private Slurm: waiting for {what}: {why}\n{self.logs()}")
            time.sleep(0.1)

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons (slurmd, slurmctld, munged) by pid."""
        try:
            if "slurmd" in self.procs and self.procs["slurmd"].poll() is None:
                self._cancel_jobs()
        finally:
            for name in reversed(DAEMONS):
                if name in self.procs:
                    _stop_group(self.procs.pop(name))
            self._kill_stray_steps()

    def _cancel_jobs(self) -> None:
        jobs = self.jobs()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _kill_stray_steps(self) -> None:
        """slurmstepd daemonizes (it is no child of slurmd): one of this cluster still
        alive after its job was cancelled is killed with its tasks."""
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while (steps := _steps_of(self.conf)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in steps:
            _kill_quietly(pid)


def _binary(name: str) -> str | None:
    """A Slurm or munge program (the daemons live in /usr/sbin, often not on PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _steps_of(conf: Path) -> list[int]:
    """pids of slurmstepd processes started by this cluster's slurmd (SLURM_CONF=conf)."""
    mark = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"slurmstepd"):
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group the daemon leads, SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader's helpers (slurmscriptd), if any
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    missing = [b for b in DAEMONS + CLIENTS if _binary(b) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): "
                    "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd runs jobs as their user): run the "
                    "tests as root, with slurm-wlm and munge installed")
    root = tmp_path_factory.mktemp("slurm", numbered=True)
    cluster = SlurmCluster(root=root, conf=root / "slurm.conf")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster, monkeypatch) -> SlurmCluster:
    """The private cluster, with this test's environment pointing Slurm's commands at it."""
    for key in os.environ:
        if key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
