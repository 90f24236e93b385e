"""`fmae queue add|ls|cancel|retry|priority|rebuild`: the job queue from the command line.

`add` expands a matrix (folds × seeds × λ) into one queued run folder per cell, skipping cells whose
experiment already has a queued, running or done run; the scheduler then trains them on free slots.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fmae.cli import ConfigOpt, LabelsOpt, RootOpt, RunsDirOpt, app, err, out
from fmae.cli_train import SetOpt, _cli_layer
from fmae.errors import FmaeError

queue_app = typer.Typer(help="The job queue: add a matrix of runs, list, cancel, retry, reorder.",
                        no_args_is_help=True)
app.add_typer(queue_app, name="queue")

NoSchedulerOpt = Annotated[bool, typer.Option("--no-scheduler", help="Only change the queue; do not start the scheduler.")]
FINISHED = ("done", "failed", "cancelled")
RECENT_FINISHED = 20


# --- helpers ----------------------------------------------------------------------------------------

def _say(text: str) -> None:
    out.print(text, soft_wrap=True)  # one line each, however narrow the terminal: scripts grep these


def _ints(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise FmaeError(f"{flag} {text}: expected whole numbers separated by commas, e.g. {flag} 1,2,3") from None
    if not values:
        raise FmaeError(f"{flag} {text!r}: give at least one value")
    return values


def _floats(text: Optional[str], flag: str) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise FmaeError(f"{flag} {text}: expected numbers separated by commas, e.g. {flag} 0,2") from None
    if not values:
        raise FmaeError(f"{flag} {text!r}: give at least one value")
    return values


def _num(x: float) -> str:
    return f"{x:g}"


def _cell_label(cfg: dict[str, Any]) -> str:
    if cfg.get("task") == "au":
        return f"fold {cfg['fold']} seed {cfg['seed']} λ {_num(float(cfg['lambda_id']))}"
    return f"seed {cfg['seed']}"


def _default_gpus_per_run(project) -> int:
    """1 when the scheduler's plan for this machine has GPU slots (fmae.toml's compute.gpus/device and
    what NVML reports), else 0 (a CPU slot)."""
    try:
        from fmae.gpus import plan_slots
    except ImportError:
        plan_slots = None
    if plan_slots is not None:
        slots = plan_slots(project)
        return 1 if slots and slots[0].kind == "gpu" else 0
    if project.device == "cpu":
        return 0
    if isinstance(project.gpus, list):
        return 1 if project.gpus else 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return 1 if pynvml.nvmlDeviceGetCount() > 0 else 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: the CPU it is
        return 0


def _plan_line(project, gpus_per_run: int, cells: int) -> str:
    """fmae.gpus's one-line plan ("GPU plan: 4 GPUs … → 4 runs at once"), or a plain CPU line without it."""
    try:
        from fmae.gpus import plan_text
    except ImportError:
        plan_text = None
    if plan_text is not None:
        return plan_text(project, gpus_per_run)
    when = "" if not cells else f", {cells} run(s) {'at once' if cells <= project.cpu_slots else 'in turn'}"
    return f"CPU: {project.cpu_slots} slot(s){when}" + (f"; {gpus_per_run} GPU(s) per run" if gpus_per_run else "")


def _ensure_scheduler(project) -> None:
    try:
        from fmae.scheduler import ensure_running
    except ModuleNotFoundError as e:
        if e.name != "fmae.scheduler":
            raise
        _say("scheduler: not available in this fmae; the jobs stay queued")
        return
    _say(ensure_running(project))


def _open_queue(config: Optional[Path], runs_dir: Optional[Path]):
    from fmae.config import load_project
    from fmae.queue import Queue

    project = load_project(config, runs_dir)
    return project, Queue(project.runs_dir)


def _resolve_ids(q, ids: list[str]):
    """Jobs named by job id or run id, in the order given (duplicates dropped); FmaeError for unknown ones."""
    jobs = {}
    for text in ids:
        text = text.strip().rstrip("/")
        job = q.get(int(text)) if text.isdigit() else q.get_run(Path(text).name)
        if job is None:
            raise FmaeError(f"job {text}: no such job in {q.db_path} (see `fmae queue ls --all`)")
        jobs[job.id] = job
    return list(jobs.values())


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _progress(status: Optional[dict]) -> str:
    if not status:
        return "-"
    parts = []
    if status.get("epoch") is not None:
        parts.append(f"e {status['epoch']}/{status.get('epochs', '?')}")
    if status.get("step") is not None:
        parts.append(f"s {status['step']}/{status.get('total_steps', '?')}")
    return " · ".join(parts) or "-"


def _write(text: str) -> None:
    try:  # bulk output straight to the stream (Rich's rendering costs ~1 ms a line)
        out.file.write(text + "\n")
        out.file.flush()
    except BrokenPipeError:  # `fmae queue ls | head`: the reader has all it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.file.fileno())
        raise typer.Exit(0) from None


# --- add --------------------------------------------------------------------------------------------

@queue_app.command("add")
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
    from fmae.queue import DB_NAME, Queue, config_key, existing_runs, expand_matrix
    from fmae.registry import get_dataset
    from fmae.run_config import create_run

    project = load_project(config, runs_dir)
    spec = get_dataset(dataset)
    if gpus_per_run is not None and gpus_per_run < 0:
        raise FmaeError(f"--gpus-per-run {gpus_per_run}: must be 0 (CPU) or more")
    fold_list, seed_list, lambda_list = _ints(folds, "--folds"), _ints(seeds, "--seeds"), _floats(lambdas, "--lambdas")
    cli = _cli_layer(model=model, epochs=epochs, set_=set_)
    cells = expand_matrix(project, spec.name, folds=fold_list, seeds=seed_list, lambdas=lambda_list, recipe=recipe,
                          cli=cli, root=root, labels=labels, generate=not dry_run)
    gpus = _default_gpus_per_run(project) if gpus_per_run is None else gpus_per_run

    ignored = [flag for flag, given in (("--folds", folds), ("--lambdas", lambdas)) if given and spec.task != "au"]
    dims = []
    if spec.task == "au":
        dims.append("folds " + ",".join(str(f) for f in dict.fromkeys(c.values["fold"] for c in cells)))
    dims.append("seeds " + ",".join(str(s) for s in dict.fromkeys(c.values["seed"] for c in cells)))
    if spec.task == "au":
        dims.append("λ " + ",".join(_num(float(x)) for x in dict.fromkeys(c.values["lambda_id"] for c in cells)))

    runs = project.runs_dir
    queue = Queue(runs) if not dry_run or (runs / DB_NAME).exists() else None
    lock = queue.exclusive() if queue is not None and not dry_run else contextlib.nullcontext()
    with lock:  # no second `queue add` of the same cells between the check and the adding
        keys = [config_key(c.values) for c in cells]
        existing = {} if force else existing_runs(runs, keys, queue=queue)
        to_add, skipped, seen = [], [], set()
        for cell, key in zip(cells, keys):
            if key in seen:
                skipped.append((cell, "a duplicate cell of this matrix"))
            elif key in existing:
                skipped.append((cell, ", ".join(f"{rid} ({state})" for rid, state in existing[key])))
            else:
                to_add.append(cell)
            seen.add(key)
        _say(f"{spec.name} matrix: {' × '.join(dims)} = {len(cells)} cell(s): {len(to_add)} to add, "
                  f"{len(skipped)} skipped")
        if ignored:
            _say(f"({' and '.join(ignored)} ignored: {spec.name} is a FER benchmark with one split and no λ)")
        _say(_plan_line(project, gpus, len(to_add)))
        for cell, why in skipped:
            _say(f"skip {_cell_label(cell.values)}: {why}")
        if skipped and not force:
            _say("(--force adds them anyway)")
        if dry_run:
            for cell in to_add:
                _say(f"would add {_cell_label(cell.values)}")
            _say("dry run: nothing created")
            return
        assert queue is not None
        added = []
        for cell in to_add:
            run = create_run(runs, cell)
            job = queue.add(run, priority=priority, gpus=gpus, nproc=max(1, gpus))
            added.append(job)
            _say(f"added job {job.id}: {run.id}")
    if not added:
        _say("nothing added")
        return
    _say(f"queued {len(added)} job(s) (ids {added[0].id}–{added[-1].id}, priority {priority}, "
              f"{gpus} GPU(s) each) in {runs}")
    if not no_scheduler:
        _ensure_scheduler(project)


# --- ls ---------------------------------------------------------------------------------------------

def queue_rows(q, *, all_: bool = False, states: Optional[set[str]] = None,
               recent: int = RECENT_FINISHED) -> tuple[list[dict[str, Any]], int]:
    """The rows `fmae queue ls` shows, each a job's fields plus its status.json facts, and how many
    finished jobs were hidden. `state` is status.json's (or "corrupt"); `queue_state` the table's cache."""
    from fmae.queue import read_status_fast

    now = time.time()
    rows = []
    for job in q.jobs():
        status = read_status_fast(job.path)
        row = {k: v for k, v in vars(job).items()}
        row["path"] = str(job.path)
        row["queue_state"] = job.state
        row["state"] = status["state"] if status else "corrupt"
        for key in ("epoch", "epochs", "step", "total_steps", "host"):
            row[key] = status.get(key) if status else None
        if status and status.get("error"):
            row["error"] = status["error"]
        row["progress"] = _progress(status)
        row["age_s"] = now - job.added
        rows.append(row)
    if states:
        rows = [r for r in rows if r["state"] in states]
    hidden = 0
    if not all_ and not states:
        finished = [r for r in rows if r["state"] in FINISHED]
        keep = {r["id"] for r in sorted(finished, key=lambda r: (r["ended"] or r["added"], r["id"]))[-recent:]}
        hidden = len(finished) - len(keep)
        rows = [r for r in rows if r["state"] not in FINISHED or r["id"] in keep]
    return rows, hidden


COLUMNS = (("id", ">"), ("state", "<"), ("dataset", "<"), ("fold", ">"), ("seed", ">"), ("λ", ">"),
           ("model", "<"), ("GPU", "<"), ("progress", "<"), ("age", ">"))


def table_cells(r: dict[str, Any]) -> list[str]:
    """One `fmae queue ls` row as the text of its columns (COLUMNS)."""
    au = r["task"] == "au"
    state = r["state"] + (f" p{r['priority']}" if r["priority"] and r["state"] == "queued" else "")
    if r["state"] == "running" and r["cancel_requested"]:
        state = "cancelling"
    return [str(r["id"]), state, r["dataset"], str(r["fold"]) if au else "-", str(r["seed"]),
            _num(r["lambda_id"]) if au else "-", r["model"], r["slot"] or "-", r["progress"], _age(r["age_s"])]


def queue_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table. Formatted by hand: a Rich Table takes over a second for
    a thousand rows, and `fmae queue ls` must answer at once."""
    cells = [table_cells(r) for r in rows]
    widths = [max([len(name), *(len(c[i]) for c in cells)]) for i, (name, _) in enumerate(COLUMNS)]
    aligns = [align for _, align in COLUMNS]

    def line(values: list[str]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, a, w in zip(values, aligns, widths)).rstrip()

    return "\n".join([line([name for name, _ in COLUMNS]), "  ".join("─" * w for w in widths),
                      *(line(c) for c in cells)])


@queue_app.command("ls")
def ls_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Every job (default: queued, running and the last 20 finished).")] = False,
    state: Annotated[Optional[str], typer.Option("--state", help="Only these states, e.g. failed or queued,running.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts: a list of job objects.")] = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """The queue's jobs with their run's live state and progress."""
    from fmae.runs import STATES

    states = None
    if state is not None:
        states = {s.strip() for s in state.split(",") if s.strip()}
        bad = sorted(states - set(STATES) - {"corrupt"})
        if bad or not states:
            raise FmaeError(f"--state {state}: choose from {', '.join(STATES)}, corrupt")
    _, q = _open_queue(config, runs_dir)
    rows, hidden = queue_rows(q, all_=all_, states=states)
    if as_json:
        _write(json.dumps(rows, indent=1))
        return
    if not rows:
        _say(f"no jobs{' in these states' if states else ''} in {q.db_path}")
    else:
        _say(f"queue {q.runs_dir}")
        _write(queue_table(rows))
    order = (*STATES, "corrupt")
    counts = {s: sum(r["state"] == s for r in rows) for s in order}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if hidden:
        summary += f"; {hidden} older finished job(s) hidden (--all shows them)"
    if summary:
        out.print(summary)


# --- cancel / retry / priority / rebuild -------------------------------------------------------------

@queue_app.command("cancel")
def cancel_cmd(
    ids: Annotated[Optional[list[str]], typer.Argument(help="Job ids (or run ids).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every queued and running job.")] = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Cancel jobs: a queued one at once; a running one gets SIGTERM (it saves a checkpoint and stops)."""
    from fmae.runs import RunDir

    if bool(ids) == all_:
        raise FmaeError("give job ids to cancel, or --all (not both)")
    _, q = _open_queue(config, runs_dir)
    jobs = q.jobs(states=("queued", "running")) if all_ else _resolve_ids(q, ids or [])
    for job in jobs:
        if job.state not in ("queued", "running"):
            raise FmaeError(f"job {job.id} ({job.run_id}) is {job.state}: only queued or running jobs can be cancelled")
    if not jobs:
        _say("nothing to cancel")
        return
    for job in jobs:
        now = q.cancel(job.id)
        if now.state == "cancelled":
            try:
                RunDir(now.path).mark_ended("cancelled", error="cancelled before it started")
            except (FmaeError, OSError) as e:
                err.print(f"job {now.id}: cancelled in the queue, but its status.json could not be written: {e}")
            _say(f"job {now.id} cancelled (it had not started): {now.run_id}")
            continue
        _say(f"job {now.id} {_signal_running(now)}: {now.run_id}")


def _signal_running(job) -> str:
    from fmae.queue import read_status_fast

    status = read_status_fast(job.path) or {}
    host = status.get("host")
    pgid = job.pgid or status.get("pgid")
    if not pgid or int(pgid) <= 1 or int(pgid) == os.getpgrp():
        return "cancel requested (no process group to signal yet; the scheduler stops it)"
    if host and host != socket.gethostname():
        return f"cancel requested (it runs on {host}; the scheduler there stops it)"
    try:
        os.killpg(int(pgid), signal.SIGTERM)
    except ProcessLookupError:
        return "cancel requested (its process is gone; the scheduler records the end)"
    except PermissionError:
        return f"cancel requested (no permission to signal process group {pgid})"
    return f"cancelling: SIGTERM sent to process group {pgid} (it saves a checkpoint; SIGKILL after a grace period)"


@queue_app.command("retry")
def retry_cmd(
    ids: Annotated[list[str], typer.Argument(help="Job ids (or run ids) of failed or cancelled jobs.")],
    no_scheduler: NoSchedulerOpt = False,
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Queue failed or cancelled jobs again; each resumes from its last checkpoint when it has one."""
    from fmae.queue import read_status_fast
    from fmae.runs import RunDir

    project, q = _open_queue(config, runs_dir)
    jobs = _resolve_ids(q, ids)
    for job in jobs:
        status = read_status_fast(job.path)
        truth = status["state"] if status else "corrupt"
        # The row may still say running for a moment after the run folder says it ended (the scheduler
        # has not noticed the exit yet): the folder is the truth, so that is retryable too.
        if job.state not in ("failed", "cancelled") and not (job.state == "running" and truth in ("failed", "cancelled")):
            raise FmaeError(f"job {job.id} ({job.run_id}) is {job.state}: only failed or cancelled jobs can be retried"
                            + (" — a done run is not re-run; queue a new one" if job.state == "done" else ""))
        if truth not in ("failed", "cancelled"):
            raise FmaeError(f"job {job.id} ({job.run_id}): its status.json says {truth}; only failed or cancelled "
                            "runs can be retried")
    for job in jobs:
        if job.state == "running":
            _settle(q, job, project.runs_dir)
        # status.json first: once the row says queued the scheduler may start it at any moment.
        RunDir(job.path).mark_queued()
        q.requeue(job.id)
        last = job.path / "checkpoints" / "last.pt"
        how = "resumes from checkpoints/last.pt" if last.is_file() else "starts from the beginning (no checkpoint)"
        _say(f"job {job.id} queued again, {how}: {job.run_id}")
    if not no_scheduler:
        _ensure_scheduler(project)


def _settle(q, job, runs_dir: Path, wait: float = 30.0) -> None:
    """Wait until the row of a run that has ended (by its status.json) is final too. A scheduler holding
    the runs folder records the end itself (it must, before the job is queued again, or it would take the
    requeued run for a vanished one); without one, the row is finished here once the process is gone."""
    from fmae.queue import read_status_fast
    from fmae.runs import FINAL_STATES, pid_alive

    try:
        from fmae.scheduler import holder
    except ModuleNotFoundError as e:
        if e.name != "fmae.scheduler":
            raise
        holder = None
    deadline = time.monotonic() + wait
    while True:
        fresh = q.get(job.id)
        if fresh is None or fresh.state in FINAL_STATES:
            return
        if holder is None or holder(runs_dir) is None:
            status = read_status_fast(job.path) or {}
            here = status.get("host") in (None, socket.gethostname())
            pid = fresh.pid or status.get("pid")
            if not (here and pid and pid_alive(int(pid))) and status.get("state") in FINAL_STATES:
                q.finish(job.id, status["state"], error=status.get("error"))
                return
        if time.monotonic() > deadline:
            raise FmaeError(f"job {job.id} ({job.run_id}): its run has ended but its process has not exited "
                            f"after {wait:.0f} s — retry again in a moment")
        time.sleep(0.1)


@queue_app.command("priority", context_settings={"ignore_unknown_options": True})
def priority_cmd(
    job_id: Annotated[str, typer.Argument(help="Job id (or run id).")],
    priority: Annotated[int, typer.Argument(help="Higher runs first; 0 is the default; negative ones run last.")],
    config: ConfigOpt = None,
    runs_dir: RunsDirOpt = None,
) -> None:
    """Reorder: set a job's priority (queued jobs run by priority, then in the order they were added)."""
    _, q = _open_queue(config, runs_dir)
    job = _resolve_ids(q, [job_id])[0]
    q.set_priority(job.id, priority)
    pending = [j.id for j in q.pending()]
    where = f"; {pending.index(job.id) + 1} of {len(pending)} in line" if job.id in pending else f" ({job.state})"
    _say(f"job {job.id}: priority {priority}{where}")


@queue_app.command("rebuild")
def rebuild_cmd(config: ConfigOpt = None, runs_dir: RunsDirOpt = None) -> None:
    """Add every run folder missing from the queue (e.g. after deleting queue.sqlite), with its state."""
    project, q = _open_queue(config, runs_dir)
    try:
        gpus = _default_gpus_per_run(project)
    except FmaeError:  # a compute.gpus this machine cannot honour: the folders still come back
        gpus = 0
    added = q.rebuild(gpus=gpus)
    counts = q.counts()
    _say(f"rebuilt from run folders: {added} job(s) added; the queue holds "
              + ", ".join(f"{n} {s}" for s, n in counts.items()))
