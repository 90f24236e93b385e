"""Training a prepared run folder from the command line: here, or under torchrun with N processes,
then one line (or an error) as the run's status says. `fmae train`, `exec`, `probe-id`, `eval` and
`pretrain` all end here; the queue launches `fmae exec`, so it ends here too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from fmae.cli.common import err, out
from fmae.errors import FmaeError


def train_here(path: Path, resume: bool, quiet: bool, nproc: int = 1) -> None:
    """Train the run folder here, or under torchrun with `nproc` processes (DDP: one per GPU, or gloo
    processes on the CPU), then report as the run's status says."""
    if nproc < 1:
        raise FmaeError(f"--nproc {nproc}: must be at least 1")
    if nproc == 1:
        from fmae.train.trainer import execute

        code = execute(path, resume=resume, quiet=quiet)
    else:
        code = _torchrun(path, nproc, quiet)
    if code in (0, 143):  # the trainer ran to its end, its files closed: the exit may skip the teardown
        from fmae.process_exit import trained

        trained()
    if code == 143:
        err.print(f"cancelled: {path} (resume with `fmae exec {path}`)")
        raise typer.Exit(code)
    if code:
        from fmae.errors import WorkFailed
        from fmae.runs import RunDir

        status = RunDir.open(path).read_status()
        reason = status.get("error") or f"torchrun exited with code {code}"
        if status.get("exit_code") == 2:
            raise FmaeError(reason)
        raise WorkFailed(f"run {path.name} failed: {reason} (see {path}/train.log)")
    if "LOCAL_RANK" not in os.environ:  # under torchrun the launching command reports, once
        out.print(f"run folder: {path}")


def _torchrun(path: Path, nproc: int, quiet: bool) -> int:
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fmae", "exec", str(path)] + (["--quiet"] if quiet else [])
    env = dict(os.environ)
    # One process per GPU on a GPU machine; on the CPU share the cores out instead of oversubscribing.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, env=env).returncode
