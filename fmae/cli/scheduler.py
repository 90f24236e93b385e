"""`fmae scheduler start|stop|status|unit|run`: the detached dispatcher of the queue."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from fmae.cli.common import ConfigOpt, RunsDirOpt, out

app = typer.Typer(help="The scheduler that runs queued work on free GPU/CPU slots.", no_args_is_help=True)


@app.command("start")
def start_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Start the scheduler in the background (it survives this terminal and SSH)."""
    from fmae.config import load_project
    from fmae.scheduler import LOG_NAME, describe, holder, start_detached

    project = load_project(config, runs_dir)
    info = holder(project.runs_dir)
    if info is not None:
        out.print(f"a scheduler already runs for {project.runs_dir} ({describe(info)})")
        return
    pid = start_detached(project)
    out.print(f"scheduler started: pid {pid}, log {project.runs_dir / LOG_NAME}")


@app.command("stop")
def stop_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Stop the scheduler; running runs go on (cancel them with `fmae queue cancel`)."""
    from fmae.config import load_project
    from fmae.scheduler import stop

    out.print(stop(load_project(config, runs_dir).runs_dir))


@app.command("status")
def status_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Whether a scheduler holds the runs folder, and the queue's counts."""
    from fmae.config import load_project
    from fmae.queue import Queue
    from fmae.scheduler import describe, ensure_running, holder

    project = load_project(config, runs_dir)
    revived = ensure_running(project, quiet=True)  # queued work and no scheduler: bring it back
    if revived:
        out.print(revived, soft_wrap=True)
    info = holder(project.runs_dir)
    out.print(f"scheduler: {'running, ' + describe(info) if info else 'not running'}")
    if (project.runs_dir / "queue.sqlite").exists():
        jobs = Queue(project.runs_dir).jobs()
        counts = {s: sum(j.state == s or (s, j.state) == ("running", "launching") for j in jobs)
                  for s in ("queued", "running", "done", "failed", "cancelled")}
        out.print("queue: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


@app.command("unit")
def unit_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Print a systemd user unit that keeps this runs folder's scheduler running (see docs/architecture.md)."""
    from fmae.config import load_project
    from fmae.scheduler import systemd_unit

    out.file.write(systemd_unit(load_project(config, runs_dir)))


@app.command("run", hidden=True)
def run_cmd(
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
    idle_exit: Annotated[Optional[float], typer.Option("--idle-exit", help="Exit after this many idle seconds.")] = None,
) -> None:
    """Run the scheduler in the foreground (what `start` launches)."""
    from fmae.config import load_project
    from fmae.scheduler import run_foreground

    run_foreground(load_project(config, runs_dir), idle_exit)
