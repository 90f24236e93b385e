"""Runs on a Slurm cluster, through submitit (https://github.com/facebookincubator/submitit).

`submit_run(run, project, gpus=G)` pickles a call of `_train(run)` (which calls
`fmae.train.trainer.execute(run, resume=True)`, exactly what `fmae exec RUN` does) into `RUN/slurm/`,
submits it with `sbatch` and records `executor = "slurm"`, `slurm_cluster` and `slurm_job_id` in the
run's status.json. The trainer then writes the run folder as on any machine. `local=True` uses
submitit's local executor instead (same pickling, same job folder, a detached local process), so the
tests exercise the same path without a cluster.

Mapping of `[executor.slurm]` in fmae.toml (see `slurm_parameters`): partition → --partition, account →
--account (both only when non-empty), time_minutes → --time, cpus_per_task → --cpus-per-task (per task),
mem_gib → --mem (per node), and for a run on N nodes × G GPUs: --nodes=N --gpus-per-node=G with one
task per GPU (DDP over every node: each task gets RANK/WORLD_SIZE/LOCAL_RANK and MASTER_ADDR = the
job's first node from submitit's job environment, as torchrun would set them); a CPU run (G = 0) asks
for no GPU and one task per node. `submit_runs` sends several runs as one job array
(array_parallelism → --array=0-K%P).

Time limits and preemption: submitit signals the job (USR2) before Slurm's limit or a preemption; the
trainer stops at the end of its step and writes last.pt, status.json goes back to queued (`requeues`
counts them), and submitit's checkpoint hook (`_train.checkpoint`) requeues the same call, which resumes
from that step exactly (at most submitit's `max_num_timeout` = 3 times for time-outs).

A job Slurm kills before the trainer can write its end (out of memory, node failure, cancelled while
pending…) leaves status.json at queued/running: `reconcile_slurm(run)` asks submitit for the job's state
and records the end ("slurm: OUT_OF_MEMORY").

Module import is cheap: submitit and torch are imported by the functions that need them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from fmae.errors import FmaeError
from fmae.runs import FINAL_STATES, RunDir, one_line

SLURM_DIR = "slurm"  # submitit's job folder inside the run folder: pickles, sbatch file, logs
ARRAY_DIR = ".slurm"  # a job array's folder, in the runs folder (hidden: the run listing skips it)
SLOT_PREFIX = "slurm"  # a queue row's slot "slurm<job id>": the cluster placed it
SACCT_EVERY_S = 30.0  # the scheduler asks sacct about all its jobs at once, at most this often

# Defaults when fmae.toml has no [executor.slurm] entry for a key (the same as default_fmae.toml).
DEFAULTS = {"partition": "", "account": "", "time_minutes": 720, "cpus_per_task": 8, "mem_gib": 64,
            "array_parallelism": 16}

# Slurm job states (sacct) after which the job runs no more; anything else (PENDING, RUNNING,
# REQUEUED, PREEMPTED — requeued by submitit —, UNKNOWN: not in accounting yet…) is left alone.
# INTERRUPTED is what a local job whose process vanished without a result reports.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
    "REVOKED", "INTERRUPTED",
})

_JOBS: dict[tuple[str, str], Any] = {}  # (job folder, job id) -> submitit Job, for repeated state queries


# --- what runs inside the job ---------------------------------------------------------------------

def _train(path: str) -> int:
    """The submitted function: train the run folder at `path` (resuming from its last checkpoint), and
    return the trainer's exit code (0 done, 143 cancelled). A failure is raised (so Slurm and submitit
    report it too) after status.json records it — by the trainer, or here when it failed before the
    trainer could (an unreadable run.toml, no GPU for device = cuda…)."""
    rank = _prepare_distributed()
    run = Path(path)
    preemption = _Preemption()
    try:
        RunDir.open(run).read_config()  # a broken run folder fails here, before torch is imported
        from fmae.train.trainer import execute

        code = execute(run, resume=True, quiet=False)
    except Exception as e:
        if rank == 0:
            _record_failure(run, e)
        raise
    finally:
        preemption.over = True
    return preemption.requeue_if_caught(run, code, rank)


class _Preemption:
    """submitit's time-out/preemption signal (USR2), turned into a stop at the end of the current step:
    the trainer writes last.pt there, as on a cancel; then submitit's own handler checkpoints this call
    (`_checkpoint`) and requeues the job, which resumes from that very step. (submitit's handler alone
    would exit mid-step, and the requeued job would redo everything since the last epoch's checkpoint.)"""

    def __init__(self) -> None:
        self.caught: int | None = None
        self.over = False  # the trainer has returned: a late signal has nothing left to save or requeue
        self.submitit_handler: Any = None
        try:
            from submitit import JobEnvironment

            sig = JobEnvironment._usr_sig()
        except Exception:
            return
        handler = signal.getsignal(sig)
        if callable(handler):  # installed by submitit: we run inside a job
            self.submitit_handler, self.idle = handler, signal.getsignal(signal.SIGTERM)
            signal.signal(sig, self._caught)

    def _caught(self, signum: int, frame: Any) -> None:
        if self.over:
            return
        self.caught = signum
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop) or stop == self.idle:  # the trainer has not started: nothing to save
            self.submitit_handler(signum, frame)
            return
        stop(signal.SIGTERM, frame)  # the trainer's own cancel: finish the step, write last.pt

    def requeue_if_caught(self, run: Path, code: int, rank: int) -> int:
        if self.caught is None or code != 143:  # 143: the trainer stopped as asked (EXIT_CANCELLED)
            return code
        if rank == 0:  # not "cancelled": the requeued job resumes it
            rd = RunDir(run)
            requeues = int(rd.read_status().get("requeues") or 0) + 1
            rd.mark_queued()
            rd.update_status(requeues=requeues)
        self.submitit_handler(self.caught, None)  # _checkpoint, requeue and exit (or raise: out of requeues)
        return code


def _checkpoint(path: str) -> Any:
    """submitit calls this on a time-out or preemption signal: requeue the same call (it resumes)."""
    from submitit.helpers import DelayedSubmission

    return DelayedSubmission(_train, path)


_train.checkpoint = _checkpoint  # type: ignore[attr-defined]  # makes `_train` checkpointable for submitit


def _prepare_distributed() -> int:
    """Inside a submitit job with several tasks, export the torch.distributed variables the trainer
    reads (as torchrun would); returns this task's global rank (0 outside submitit)."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Each task keeps every GPU of the node visible and picks cuda:LOCAL_RANK (as under torchrun).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return int(env.global_rank)
    except Exception:  # not in a submitit job (a direct call): one process
        return 0


def _record_failure(run: Path, error: BaseException) -> None:
    try:
        rd = RunDir(run)
        if rd.read_status().get("state") not in FINAL_STATES:
            rd.mark_ended("failed", exit_code=int(getattr(error, "exit_code", 1)),
                          error=str(error) or type(error).__name__)
    except Exception:  # never hide the original failure behind a bookkeeping one
        pass


# --- submitting -----------------------------------------------------------------------------------

def _settings(project: Any) -> dict[str, Any]:
    return {**DEFAULTS, **dict(getattr(project, "slurm", {}) or {})}


def slurm_parameters(project: Any, gpus: int, name: str, nodes: int = 1) -> dict[str, Any]:
    """submitit AutoExecutor parameters for a run on `nodes` nodes × `gpus` GPUs each (0 = CPU) named
    `name`, from `project.slurm` ([executor.slurm] in fmae.toml)."""
    s = _settings(project)
    gpus, nodes = int(gpus), int(nodes)
    if gpus < 0:
        raise FmaeError(f"gpus = {gpus}: a run needs 0 (CPU) or more GPUs")
    if nodes < 1:
        raise FmaeError(f"--nodes {nodes}: a run needs at least one node")
    for key in ("time_minutes", "cpus_per_task", "array_parallelism"):
        if int(s[key]) < 1:
            raise FmaeError(f"executor.slurm.{key} = {s[key]}: must be at least 1")
    if float(s["mem_gib"]) <= 0:
        raise FmaeError(f"executor.slurm.mem_gib = {s['mem_gib']}: must be more than 0")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": int(s["time_minutes"]),
        "cpus_per_task": int(s["cpus_per_task"]),
        "mem_gb": s["mem_gib"],
        "nodes": nodes,
        "tasks_per_node": max(1, gpus),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if s["partition"]:
        params["slurm_partition"] = str(s["partition"])
    if s["account"]:
        params["slurm_account"] = str(s["account"])
    return params


def submit_run(run: Path, project: Any, *, gpus: int = 1, nodes: int = 1, local: bool = False) -> str:
    """Submit the run folder `run` to Slurm — or, with `local`, to submitit's local executor — and
    record the job in status.json (executor, slurm_cluster, slurm_job_id). Returns the job id.

    A queued run is submitted as it is; a failed or cancelled one is first reset to queued (a retry;
    it resumes from its last checkpoint); a running or done one is refused. If sbatch refuses the job,
    the run is marked failed with sbatch's reason and FmaeError is raised."""
    return submit_runs([run], project, gpus=gpus, nodes=nodes, local=local)[0]


def submit_runs(runs: list[Path], project: Any, *, gpus: int = 1, nodes: int = 1, local: bool = False) -> list[str]:
    """Submit run folders that ask for the same resources, several as ONE job array (submitit's batch
    submission, at most `[executor.slurm] array_parallelism` of them at once), one as a plain job in
    its own `RUN/slurm/`. An array's job folder is the runs folder's `.slurm/`. Returns the job ids."""
    import submitit

    rds = [RunDir(RunDir.open(r).path.resolve()) for r in runs]  # the job may start in another directory
    states = [rd.read_status().get("state") for rd in rds]
    for rd, state in zip(rds, states):
        if state in ("running", "done"):
            raise FmaeError(f"run {rd.id} is {state}: submit it again only after it ended (fmae retry resets it)")
    cluster = "local" if local else "slurm"
    folder = rds[0].path / SLURM_DIR if len(rds) == 1 else rds[0].path.parent / ARRAY_DIR
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # SlurmExecutor: 'Could not detect "srun"'
        raise FmaeError(f"executor.kind = slurm, but this machine has no Slurm ({one_line(e)}) — submit from a "
                        f"cluster login node, or set executor.kind = \"local\" in {_label(project)}") from None
    name = rds[0].id if len(rds) == 1 else f"fmae-{len(rds)}-runs"
    executor.update_parameters(**slurm_parameters(project, gpus, name, nodes=nodes))
    if len(rds) > 1:
        executor.update_parameters(slurm_array_parallelism=_settings(project)["array_parallelism"])
    for rd, state in zip(rds, states):
        if state != "queued":
            rd.mark_queued()  # a retry: forget the last attempt before the new one can start writing
    try:
        if len(rds) == 1:
            jobs = [executor.submit(_train, str(rds[0].path))]
        else:
            with executor.batch():
                jobs = [executor.submit(_train, str(rd.path)) for rd in rds]
    except Exception as e:  # sbatch refused: bad partition/account, limits, slurmctld unreachable…
        why = (f"{'sbatch' if cluster == 'slurm' else 'submitit'} refused run {rds[0].id}"
               f"{f' and {len(rds) - 1} more' if len(rds) > 1 else ''}: {_last_line(e)} — "
               f"check [executor.slurm] in {_label(project)}")
        for rd in rds:
            rd.mark_ended("failed", error=why)
        raise FmaeError(why) from None
    ids = []
    for rd, job in zip(rds, jobs):
        job_id = str(job.job_id)
        _JOBS[(str(folder), job_id)] = job
        rd.update_status(executor="slurm", slurm_cluster=cluster, slurm_job_id=job_id, slurm_folder=str(folder))
        ids.append(job_id)
    return ids


# --- watching -------------------------------------------------------------------------------------

def load_job(run: Path) -> Any | None:
    """The submitit Job of the run's last submission (None if it was never submitted through here):
    the object `submit_run` made when it was this process, else one reloaded from the job folder."""
    import submitit

    status = RunDir(run).read_status()
    job_id = status.get("slurm_job_id")
    if not job_id:
        return None
    folder = str(status.get("slurm_folder") or Path(run).resolve() / SLURM_DIR)
    job = _JOBS.get((folder, str(job_id)))
    if job is None:
        cls = submitit.LocalJob if status.get("slurm_cluster") == "local" else submitit.SlurmJob
        job = _JOBS[(folder, str(job_id))] = cls(folder=folder, job_id=str(job_id))
    return job


def slurm_state(run: Path, force: bool = False, cached: bool = False) -> str | None:
    """The state of the run's Slurm job as submitit reports it ("PENDING", "RUNNING", "COMPLETED",
    "FAILED", "CANCELLED by 1234", "TIMEOUT", "OUT_OF_MEMORY", "UNKNOWN"…); None if the run was not
    submitted through submitit. Slurm states come from sacct, which submitit's watcher calls at most
    every few seconds to minutes (`force` calls it now; `cached` never: the scheduler asks sacct about
    all its jobs at once, `ask_sacct`). A job whose result file submitit already wrote
    is COMPLETED or FAILED even where sacct is unavailable. A local job: RUNNING, COMPLETED, FAILED or
    INTERRUPTED (its process is gone and left no result)."""
    job = load_job(run)
    if job is None:
        return None
    outcome = _outcome(job)
    cluster = RunDir(run).read_status().get("slurm_cluster")
    if cluster == "local":
        if outcome is not None:
            return "COMPLETED" if outcome[0] == "success" else "FAILED"
        return "RUNNING" if _local_alive(job) else "INTERRUPTED"
    if force:
        # submitit ignores a forced query within 1 ms of the last one; registering (again) resets its clock
        job.watcher.register_job(str(job.job_id))
    mode = "force" if force else "cache" if cached else "standard"
    state = job.watcher.get_state(job.job_id, mode=mode) or "UNKNOWN"
    if state_word(state) not in TERMINAL_STATES and outcome is not None:
        # the function has ended; sacct lags (or accounting is off)
        return "COMPLETED" if outcome[0] == "success" else "FAILED"
    return state


def reconcile_slurm(run: Path, force: bool = False, cached: bool = False) -> str | None:
    """If status.json says queued/running but submitit reports the job ended (killed by Slurm, out of
    memory, node failure, or ended without the trainer recording it), record the end: failed with
    "slurm: STATE" (plus the job's last error line when submitit kept one), or cancelled when the job was
    cancelled. Returns the state written, or None when nothing changed."""
    rd = RunDir(run)
    status = rd.read_status()
    if status.get("executor") != "slurm" or status.get("state") not in ("queued", "running"):
        return None
    state = slurm_state(run, force=force, cached=cached)
    if state is None or state_word(state) not in TERMINAL_STATES:
        return None
    job = load_job(run)
    outcome = _outcome(job) if job is not None else None
    reason = f"slurm: {one_line(state)}"
    if outcome is not None and outcome[0] == "error":
        reason += f": {_last_line(outcome[1])}"
    elif state_word(state) == "COMPLETED":
        reason += f", but the run did not record its end (see {rd.path / SLURM_DIR})"
    if rd.read_status().get("state") not in ("queued", "running"):  # the trainer wrote its end meanwhile
        return None
    new = "cancelled" if state_word(state) == "CANCELLED" else "failed"
    rd.mark_ended(new, error=reason)
    return new


def cancel_slurm(run: Path) -> str:
    """Cancel the run's job the way its cluster does: `scancel` on Slurm (SIGTERM to the job's tasks,
    SIGKILL after Slurm's KillWait), SIGTERM to the controller of a local job (forwarded to its tasks).
    The trainer answers SIGTERM by checkpointing and recording `cancelled`. Never signal the pid/pgid in
    status.json of a Slurm run: they belong to another machine (or, for a local job, to the process
    group of whoever submitted it)."""
    job = load_job(run)
    if job is None:
        raise FmaeError(f"run {Path(run).name} was not submitted through submitit: nothing to cancel there")
    if RunDir(run).read_status().get("slurm_cluster") == "local":
        if _local_alive(job):
            try:
                os.kill(int(job.job_id), signal.SIGTERM)
            except ProcessLookupError:
                return f"local job {job.job_id} had already ended"
            return f"sent SIGTERM to local job {job.job_id}"
        return f"local job {job.job_id} had already ended"
    try:
        job.cancel(check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise FmaeError(f"scancel {job.job_id} failed: {one_line(e)}") from None
    return f"scancel {job.job_id}"


# --- helpers --------------------------------------------------------------------------------------

def _outcome(job: Any) -> tuple[str, Any] | None:
    """("success", result) or ("error", traceback text) from the job's task-0 result file, if written."""
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(job.paths.folder, job_id=job.job_id, task_id=0).result_pickle
    if not path.exists():
        return None
    try:
        outcome = pickle_load(path)
    except Exception:
        return None
    return outcome if isinstance(outcome, tuple) and len(outcome) == 2 else None


def _local_alive(job: Any) -> bool:
    """Whether a local job's controller process still runs."""
    if getattr(job, "_process", None) is not None:  # submitted by this process: poll (and reap) it
        return job.state == "RUNNING"
    pid = int(job.job_id)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        from fmae.runs import pid_alive

        return not Path("/proc/self").exists() and pid_alive(pid)  # no procfs: trust the pid
    zombie = stat.rpartition(")")[2].split()[:1] == ["Z"]
    return not zombie and b"submitit" in cmdline  # a reused pid runs something else


def state_word(state: str) -> str:
    parts = str(state).split()
    return parts[0].upper() if parts else "UNKNOWN"


def _last_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return one_line(lines[-1] if lines else text)


def _label(project: Any) -> str:
    return getattr(project, "label", None) or "fmae.toml"


__all__ = ["submit_run", "slurm_parameters", "slurm_state", "reconcile_slurm", "cancel_slurm", "load_job", "SLURM_DIR"]
