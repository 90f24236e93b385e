"""Training a prepared run folder from the command line: here, under torchrun with N processes (on
this machine, or on several hosts the user names), or submitted to Slurm over several nodes; then one
line (or an error) as the run's status says. `fmae train`, `exec`, `probe-id`, `eval` and `pretrain`
all end here; the queue launches `fmae exec`, so it ends here too."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import typer

from fmae.cli.common import err, out
from fmae.errors import FmaeError


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node torchrun meet: `--nnodes N --node-rank K --master HOST:PORT`.
    The same command runs on every host, with its own K; node 0 hosts the rendezvous at HOST:PORT."""
    nnodes: int
    node_rank: int
    host: str
    port: int


def rendezvous(nnodes: int, node_rank: int, master: str | None) -> Rendezvous | None:
    """The checked `--nnodes/--node-rank/--master` of `fmae exec` (None: one machine)."""
    if nnodes < 1:
        raise FmaeError(f"--nnodes {nnodes}: must be at least 1")
    if nnodes == 1:
        if node_rank or master:
            raise FmaeError("--node-rank and --master are for several hosts: give them with --nnodes N (N > 1)")
        return None
    if not 0 <= node_rank < nnodes:
        raise FmaeError(f"--node-rank {node_rank}: must be 0 to {nnodes - 1} for --nnodes {nnodes}")
    host, sep, port = (master or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FmaeError(f"--master {master or '(missing)'}: give node 0's address and a free port as HOST:PORT, "
                        "e.g. --master node0.example.org:29500 (the same on every node)")
    return Rendezvous(nnodes, node_rank, host, int(port))


class _Terminated(BaseException):
    """SIGTERM while no trainer has taken the signal over (BaseException: no `except Exception` keeps it)."""


class StopBeforeTraining:
    """Ctrl-C or SIGTERM before the trainer installs its own handlers — while torch loads, seconds —
    ends the run `cancelled` (resumable with `fmae exec`, as a cancel during training), with one line
    and exit 130 / 143, instead of leaving it `queued` for ever. Entered before the run folder exists,
    a signal waits until `made(path)`, so that the folder is never left half made nor unrecorded.
    Once the folder exists SIGINT is Python's KeyboardInterrupt again (`fmae predict`'s job reads it)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None

    def __enter__(self) -> "StopBeforeTraining":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM,) if self.path is not None else (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.path is None:
            self._pending = signum
        else:
            _raise_for(signum)

    def made(self, path: Path) -> None:
        """The run folder exists: from now on a signal ends it cancelled (one that came meanwhile, now)."""
        self.path = path
        self._restore(signal.SIGINT)
        if self._pending is not None:
            _raise_for(self._pending)

    def _restore(self, sig: int) -> None:
        if sig in self._previous:  # None: set outside Python; the default is the nearest we can give back
            previous = self._previous.pop(sig)
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig in list(self._previous):
            self._restore(sig)
        if isinstance(exc, KeyboardInterrupt):
            signum = signal.SIGINT
        elif isinstance(exc, _Terminated):
            signum = signal.SIGTERM
        else:
            return
        if self.path is not None:  # (while it is None, our handlers hold the signal: nothing raised)
            _end_unstarted(self.path, "Ctrl-C" if signum == signal.SIGINT else "SIGTERM", 128 + signum)
        raise typer.Exit(128 + signum) from None


def _raise_for(signum: int) -> None:
    raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated()


def _end_unstarted(path: Path, how: str, code: int) -> None:
    from fmae.run_lock import exec_lock_holder
    from fmae.runs import FINAL_STATES, RunDir

    run = RunDir.open(path)
    state = run.read_status().get("state")
    # Not final, and no trainer alive for it (ours released its lock on the way out): nobody else will
    # record this attempt's end. A final state — the trainer's own, or an earlier attempt's — stays.
    if state not in FINAL_STATES and exec_lock_holder(path) is None:
        run.mark_ended("cancelled", exit_code=code, error=f"cancelled ({how}) before training started; a resume "
                       "(`fmae exec`, or a retry in the queue) starts it from the beginning")
        state = "cancelled"
    if state == "cancelled":
        _say_cancelled(path)
    else:
        err.print(f"interrupted ({how}): {path} is {state}", soft_wrap=True)


def _say_cancelled(path: Path) -> None:
    """The one line of a cancelled run, as after a cancel during training."""
    err.print(f"cancelled: {path} (resume with `fmae exec {path}`)", soft_wrap=True)


def train_here(path: Path, resume: bool, quiet: bool, nproc: int = 1, nodes: Rendezvous | None = None) -> None:
    """Train the run folder here, or under torchrun with `nproc` processes (DDP: one per GPU, or gloo
    processes on the CPU) on this host — one of `nodes.nnodes` hosts — then report as the run's status says."""
    if nproc < 1:
        raise FmaeError(f"--nproc {nproc}: must be at least 1")
    with StopBeforeTraining(path):
        if nproc == 1 and nodes is None:
            from fmae.train.trainer import execute

            code = execute(path, resume=resume, quiet=quiet)
        else:
            code = _torchrun(path, nproc, quiet, nodes)
    if code in (0, 130, 143):  # the trainer ran to its end, its files closed: the exit may skip the teardown
        from fmae.process_exit import trained

        trained()
    if code in (130, 143):  # cancelled: SIGINT (Ctrl-C) or SIGTERM
        _say_cancelled(path)
        raise typer.Exit(code)
    if code:  # from torchrun: its workers' run folder says how the run ended
        from fmae.runs import RunDir

        status = RunDir.open(path).read_status()
        if status.get("state") == "cancelled":
            _say_cancelled(path)
            raise typer.Exit(status["exit_code"] if status.get("exit_code") in (130, 143) else 143)
        if status.get("state") != "done":  # done: a signal reached torchrun after its workers had ended
            from fmae.errors import WorkFailed

            reason = status.get("error") or f"torchrun exited with code {code}"
            if status.get("exit_code") == 2:
                raise FmaeError(reason)
            raise WorkFailed(f"run {path.name} failed: {reason} (see {path}/train.log)")
    if "LOCAL_RANK" not in os.environ:  # under torchrun the launching command reports, once
        out.print(f"run folder: {path}" + (f" (node {nodes.node_rank} of {nodes.nnodes})" if nodes else ""))


def _torchrun(path: Path, nproc: int, quiet: bool, nodes: Rendezvous | None) -> int:
    import subprocess

    if nodes is None:
        where = ["--standalone"]
    else:  # static rendezvous: node 0's agent serves the store at HOST:PORT; ranks = node × nproc + local
        where = [f"--nnodes={nodes.nnodes}", f"--node-rank={nodes.node_rank}", f"--master-addr={nodes.host}",
                 f"--master-port={nodes.port}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
           "-m", "fmae", "exec", str(path)] + (["--quiet"] if quiet else [])
    env = dict(os.environ)
    # One process per GPU on a GPU machine; on the CPU share the cores out instead of oversubscribing.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Terminated):  # the agent stops its workers, which checkpoint and end cancelled
        proc.send_signal(signal.SIGTERM)
        return proc.wait()


def submit_to_slurm(path: Path, project: Any, nodes: int, gpus_per_node: int | None, nproc: int) -> bool:
    """`--nodes N --gpus-per-node G`: submit the run through submitit (DDP over N nodes × G GPUs, the
    rendezvous from the job's environment) instead of training here; True when it was submitted.
    [executor.slurm] in fmae.toml says where (its `cluster = "local"` tries the same path here)."""
    if nodes == 1 and gpus_per_node is None:
        return False
    if nodes < 1 or (gpus_per_node is not None and gpus_per_node < 0):
        raise FmaeError(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: need at least 1 node and 0 or more GPUs")
    if nproc != 1:
        raise FmaeError("--nproc is for this machine; on Slurm give --nodes N --gpus-per-node G")
    import shutil

    from fmae.config import CONFIG_NAME
    from fmae.executors.slurm import submit_run

    gpus = 1 if gpus_per_node is None else gpus_per_node
    cluster = (project.slurm or {}).get("cluster", "slurm")
    if cluster == "slurm" and not shutil.which("sbatch"):
        where = project.label if project.path else CONFIG_NAME
        raise FmaeError("--nodes/--gpus-per-node submit the run to Slurm, but this machine has no sbatch — run it on a "
                        f"cluster login node (or set [executor.slurm] cluster = \"local\" in {where} to try the same path "
                        "here)")
    job_id = submit_run(path, project, gpus=gpus, nodes=nodes, local=cluster == "local")
    shape = f"{nodes} node(s) × {gpus} GPU(s)" if gpus else f"{nodes} node(s), CPU"
    out.print(f"submitted {path.name} to {cluster} as job {job_id} ({shape}); it writes {path} as it trains "
              "(follow it in the app, fmae-tui, or its status.json)", soft_wrap=True)
    return True
