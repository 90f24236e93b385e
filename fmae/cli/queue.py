"""`fmae queue add|ls|cancel|retry|priority|rebuild`: the job queue from the command line.

`add` expands a matrix (folds × seeds × λ) into one queued run folder per cell, skipping cells whose
experiment already has a queued, running or done run; the scheduler then trains them on free slots.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fmae.cli.common import ConfigOpt, LabelsOpt, RootOpt, RunsDirOpt, SetOpt, cli_layer, err, out
from fmae.errors import FmaeError

app = typer.Typer(help="The job queue: add a matrix of runs, list, cancel, retry, reorder.", no_args_is_help=True)

NoSchedulerOpt = Annotated[bool, typer.Option("--no-scheduler", help="Only change the queue; do not start the scheduler.")]


# --- helpers ----------------------------------------------------------------------------------------

def _say(text: str) -> None:
    out.print(text, soft_wrap=True)  # one line each, however narrow the terminal: scripts grep these


def _open_queue(config: Optional[Path], runs_dir: Optional[Path]):
    from fmae.config import load_project
    from fmae.queue import Queue

    project = load_project(config, runs_dir)
    return project, Queue(project.runs_dir)


def _revive(project) -> None:
    """Every command that reads the queue brings a crashed scheduler back when work waits (on stderr:
    stdout stays what the command prints, e.g. `queue ls --json`)."""
    from fmae.scheduler import ensure_running

    said = ensure_running(project, quiet=True)
    if said:
        err.print(said, soft_wrap=True)


def _write(text: str) -> None:
    try:  # bulk output straight to the stream (Rich's rendering costs ~1 ms a line)
        out.file.write(text + "\n")
        out.file.flush()
    except BrokenPipeError:  # `fmae queue ls | head`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.file.fileno())
        raise typer.Exit(0) from None


# --- add --------------------------------------------------------------------------------------------

@app.command("add")
def add_cmd(
    dataset: Annotated[str, typer.Argument(help="Benchmark: bp4d, bp4d_plus, disfa, rafdb, affectnet8, affectnet7.")],
    folds: Annotated[Optional[str], typer.Option("--folds", help="Test folds, e.g. 1,2,3 (default: every fold; FER: none).")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds, e.g. 0,1,2 (default: fmae.toml's defaults.seeds).")] = None,
    lambdas: Annotated[Optional[str], typer.Option("--lambdas", help="Identity-adversarial weights λ, e.g. 0,2 (AU only; default: the recipe's).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="vit_tiny, vit_small, vit_base, vit_large.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="fmae or fmae_iat.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    gpus_per_run: Annotated[Optional[int], typer.Option("--gpus-per-run", help="GPUs each run needs (0 = a CPU slot; default: 1 when there are GPUs).")] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first (default 0).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Add cells that already have a queued, running or done run.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the matrix and the plan; create nothing.")] = False,
    no_scheduler: NoSchedulerOpt = False,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
    root: RootOpt = None,
    labels: LabelsOpt = None,
) -> None:
    """Queue one run per cell of folds × seeds × λ (FER: per seed)."""
    from fmae.config import load_project
    from fmae.queue_ops import add_matrix, cell_label, parse_floats, parse_ints, plan_matrix, start_scheduler

    project = load_project(config, runs_dir)
    matrix = dict(folds=parse_ints(folds, "--folds"), seeds=parse_ints(seeds, "--seeds"),
                  lambdas=parse_floats(lambdas, "--lambdas"), recipe=recipe,
                  cli=cli_layer(model=model, epochs=epochs, set_=set_), gpus_per_run=gpus_per_run,
                  force=force, root=root, labels=labels)
    if dry_run:
        plan, added = plan_matrix(project, dataset, **matrix), []
    else:
        plan, added = add_matrix(project, dataset, priority=priority, **matrix)
    for line in plan.summary():
        _say(line)
    if plan.skipped and not force:
        _say("(--force adds them anyway)")
    if dry_run:
        for cell in plan.to_add:
            _say(f"would add {cell_label(cell.values)}")
        _say("dry run: nothing created")
        return
    for job in added:
        _say(f"added job {job.id}: {job.run_id}")
    if not added:
        _say("nothing added")
        return
    _say(f"queued {len(added)} job(s) (ids {added[0].id}–{added[-1].id}, priority {priority}, "
         f"{plan.gpus_per_run} GPU(s) each) in {project.runs_dir}")
    if not no_scheduler:
        _say(start_scheduler(project))


# --- ls ---------------------------------------------------------------------------------------------

def queue_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table. Formatted by hand: a Rich Table takes over a second for
    a thousand rows, and `fmae queue ls` must answer at once."""
    from fmae.queue_ops import COLUMNS, table_cells

    cells = [table_cells(r) for r in rows]
    columns = list(zip(*cells)) or [()] * len(COLUMNS)
    widths = [max(len(name), max(map(len, column), default=0)) for (name, _), column in zip(COLUMNS, columns)]
    # one format string for every line: 10,000 rows × 12 cells is 120,000 cells to pad
    line = "  ".join(f"{{:{align}{w}}}" for (_, align), w in zip(COLUMNS, widths)).format
    return "\n".join([line(*(name for name, _ in COLUMNS)).rstrip(), "  ".join("─" * w for w in widths),
                      *(line(*c).rstrip() for c in cells)])


@app.command("ls")
def ls_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Every job (default: queued, running and the last 20 finished).")] = False,
    state: Annotated[Optional[str], typer.Option("--state", help="Only these states, e.g. failed or queued,running.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts: a list of job objects.")] = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """The queue's jobs with their run's live state and progress."""
    from fmae.queue_ops import ROW_STATES, counts_line, queue_rows

    states = None
    if state is not None:
        states = {s.strip() for s in state.split(",") if s.strip()}
        bad = sorted(states - set(ROW_STATES))
        if bad or not states:
            raise FmaeError(f"--state {state}: choose from {', '.join(ROW_STATES)}")
    project, q = _open_queue(config, runs_dir)
    _revive(project)
    rows, hidden = queue_rows(q, all_=all_, states=states)
    if as_json:
        _write(json.dumps(rows, indent=1))
        return
    if not rows:
        _say(f"no jobs{' in these states' if states else ''} in {q.db_path}")
    else:
        _say(f"queue {q.runs_dir}")
        _write(queue_table(rows))
    summary = counts_line(rows, hidden)
    if hidden:
        summary += " (--all shows them)"
    if summary:
        out.print(summary)


# --- cancel / retry / priority / rebuild -------------------------------------------------------------

@app.command("cancel")
def cancel_cmd(
    ids: Annotated[Optional[list[str]], typer.Argument(help="Job ids (or run ids).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every queued and running job.")] = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Cancel jobs: a queued one at once; a running one gets SIGTERM (it saves a checkpoint and stops)."""
    from fmae.queue_ops import active_jobs, cancel_job, check_cancellable, resolve_jobs

    if bool(ids) == all_:
        raise FmaeError("give job ids to cancel, or --all (not both)")
    project, q = _open_queue(config, runs_dir)
    jobs = active_jobs(q) if all_ else resolve_jobs(q, ids or [])
    check_cancellable(jobs)
    if not jobs:
        _say("nothing to cancel")
        return
    for job in jobs:
        _say(cancel_job(q, job))
    _revive(project)  # a running job's end is recorded by the scheduler: one must be there


@app.command("retry")
def retry_cmd(
    ids: Annotated[list[str], typer.Argument(help="Job ids (or run ids) of failed or cancelled jobs.")],
    no_scheduler: NoSchedulerOpt = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Queue failed or cancelled jobs again; each resumes from its last checkpoint when it has one."""
    from fmae.queue_ops import check_retryable, resolve_jobs, retry_job, start_scheduler

    project, q = _open_queue(config, runs_dir)
    jobs = resolve_jobs(q, ids)
    check_retryable(jobs)
    for job in jobs:
        _say(retry_job(q, job, project.runs_dir))
    if not no_scheduler:
        _say(start_scheduler(project))


@app.command("priority", context_settings={"ignore_unknown_options": True})
def priority_cmd(
    job_id: Annotated[str, typer.Argument(help="Job id (or run id).")],
    priority: Annotated[int, typer.Argument(help="Higher runs first; 0 is the default; negative ones run last.")],
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Reorder: set a job's priority (queued jobs run by priority, then in the order they were added)."""
    from fmae.queue_ops import resolve_jobs, set_priority

    project, q = _open_queue(config, runs_dir)
    _say(set_priority(q, resolve_jobs(q, [job_id])[0], priority))
    _revive(project)


@app.command("rebuild")
def rebuild_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Add every run folder missing from the queue (e.g. after deleting queue.sqlite), with its state."""
    from fmae.queue_ops import default_gpus_per_run

    project, q = _open_queue(config, runs_dir)
    try:
        gpus = default_gpus_per_run(project)
    except FmaeError:  # a compute.gpus this machine cannot honour: the folders still come back
        gpus = 0
    added = q.rebuild(gpus=gpus)
    counts = q.counts()
    _say(f"rebuilt from run folders: {added} job(s) added; the queue holds "
         + ", ".join(f"{n} {s}" for s, n in counts.items()))
    _revive(project)
