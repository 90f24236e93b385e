"""The study layer: a study is cells — (fold, seed, λ) — of one experiment config. This module expands a
matrix into cells, dedupes them against the runs folder and the queue, plans and adds them.

A cell is a template config cloned with a new (fold, seed, λ) (`clone`): the template's explicit choices
stay as they are, what depends on the cell is derived again. `fmae queue add` and the Launch screen
resolve one template from their options; the Results screen's "queue missing" clones a group's own
run, so a resolved config is never turned back into options to be resolved again. Synthetic data is
generated as its own step before the queue's lock is taken (`prepare_data`). `queue.py` only stores.

No torch here: the app imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from fmae.errors import FmaeError
from fmae.queue import ACTIVE_STATES, DB_NAME, Job, Queue, read_status_fast
from fmae.run_spec import HOW_KEYS, RETIRED_KEYS, config_key, same_value
from fmae.runs import RunDir

if TYPE_CHECKING:
    from fmae.config import ProjectConfig, Resolved

# Keys a cell sets or a single run owns: never copied from a template, never a command's --set.
CELL_KEYS = frozenset({"fold", "seed", "lambda_id"})
RUN_KEYS = frozenset({"source_run", "eval_checkpoint", "eval_dataset", "run_id"})
MATRIX_KEYS = frozenset({"task", "dataset", "recipe", "model"}) | CELL_KEYS | RUN_KEYS | HOW_KEYS | RETIRED_KEYS


def num(x: float) -> str:
    return f"{x:g}"


def cell_label(cfg: dict[str, Any]) -> str:
    if cfg.get("task") == "au":
        return f"fold {cfg['fold']} seed {cfg['seed']} λ {num(float(cfg['lambda_id']))}"
    return f"seed {cfg['seed']}"


# --- cells --------------------------------------------------------------------------------------------

def clone(template: Resolved, *, fold: int | None, seed: int, lambda_id: float | None = None,
          source: str = "command line") -> Resolved:
    """The template's config for another cell. AU cells take the fold (checked against the benchmark)
    and λ (None keeps the template's); FER and probe cells have one split and no identity head."""
    from fmae.config import Resolved
    from fmae.registry import get_dataset

    values = {k: v for k, v in template.values.items() if k not in RUN_KEYS}
    sources = {k: v for k, v in template.sources.items() if k in values}
    spec = get_dataset(str(values["dataset"]))
    if values["task"] == "au":
        if fold is None:
            raise FmaeError(f"--fold is required for {spec.name}: choose 1..{spec.num_folds}")
        values["fold"] = spec.check_fold(fold)
        if lambda_id is not None:
            values["lambda_id"], sources["lambda_id"] = float(lambda_id), source
    else:
        values["fold"], values["lambda_id"] = 0, 0.0
    values["seed"] = int(seed)
    sources.update(fold=source, seed=source)
    return Resolved(values, sources)


def prepare_data(project: ProjectConfig, dataset: str, *, root: Path | None = None, labels: Path | None = None) -> None:
    """Make the configured synthetic data on first use (as `fmae train` does): the study's explicit
    step before any lock, so a first add's minutes of drawing faces hold no one else's queue."""
    from fmae.data.locate import dataset_location, ensure_dataset, missing_labels
    from fmae.registry import get_dataset

    spec = get_dataset(dataset)
    loc = dataset_location(project, spec, root, labels)
    if spec.task == "au" and not (loc.labels or (loc.train_labels and loc.test_labels)):
        raise missing_labels(spec, loc)
    ensure_dataset(spec, loc)


def expand_matrix(project: ProjectConfig, dataset: str, *, folds: Iterable[int] | None, seeds: Iterable[int] | None,
                  lambdas: Iterable[float] | None, recipe: str | None, cli: dict, root: Path | None = None,
                  labels: Path | None = None, generate: bool = True) -> list[Resolved]:
    """One config per cell of folds × seeds × λ, in the order seed, λ, fold (so the first runs done cover
    every fold of one seed): one template resolved from the options, cloned per cell. FER benchmarks have
    no folds and no λ: one cell per seed. Missing folds mean every fold; missing seeds the project's
    default seeds; missing λ the recipe's. With `generate`, configured synthetic data is made first."""
    from fmae.registry import get_dataset
    from fmae.run_config import resolve_run_config

    spec = get_dataset(dataset)
    seeds_ = _unique(seeds) if seeds is not None else _unique(project.defaults.get("seeds") or [0])
    if spec.task == "au":
        folds_ = _unique(folds) if folds is not None else list(range(1, spec.num_folds + 1))
        lambdas_: list[float | None] = _unique(float(x) for x in lambdas) if lambdas is not None else [None]
    else:
        folds_, lambdas_ = [None], [None]
    if not seeds_ or not folds_ or not lambdas_:
        raise FmaeError("the matrix is empty: give at least one fold, seed and λ")
    if lambdas is not None and spec.task == "au" and "lambda_id" in cli:
        raise FmaeError("--lambdas and --set lambda_id=… both given: use one")
    for fold in folds_:  # every fold named is checked before anything is made
        if fold is not None:
            spec.check_fold(fold)
    template = resolve_run_config(project, spec.name, recipe=recipe, fold=folds_[0], seed=int(seeds_[0]),
                                  cli=dict(cli), root=root, labels=labels, generate=generate)
    return [clone(template, fold=fold, seed=int(seed), lambda_id=lam)
            for seed in seeds_ for lam in lambdas_ for fold in folds_]


def _unique(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def template_of(project: ProjectConfig, run_path: Path) -> tuple[Resolved, bool]:
    """A run folder's config as a template — its values and recorded sources — and whether its data
    were located again: a clone reads the data its template read while they are there, else where the
    project locates the dataset today (then configured synthetic data may need making)."""
    from fmae.config import Resolved
    from fmae.data.locate import dataset_location, missing_labels
    from fmae.registry import get_dataset
    from fmae.run_config import with_locations

    run = RunDir.open(run_path)
    values = {k: v for k, v in run.read_config().items() if k not in RETIRED_KEYS}
    set_by = run.read_provenance().get("set_by")
    recorded = {str(k).rsplit(".", 1)[-1]: str(v) for k, v in (set_by or {}).items()} if isinstance(set_by, dict) else {}
    template = Resolved(values, {k: recorded.get(k, f"run {run.id}") for k in values})
    if values.get("data_root") and Path(str(values["data_root"])).is_dir():
        return template, False
    spec = get_dataset(str(values["dataset"]))
    loc = dataset_location(project, spec, None, None)
    if spec.task == "au" and not (loc.labels or (loc.train_labels and loc.test_labels)):
        raise missing_labels(spec, loc)
    return with_locations(project, template, loc), True


# --- dedupe and the plan ------------------------------------------------------------------------------

def existing_runs(runs_dir: Path, keys: Iterable[str], *, queue: Queue | None = None,
                  states: Iterable[str] = ACTIVE_STATES) -> dict[str, list[tuple[str, str]]]:
    """For each key, the runs with that config whose status.json state is in `states`, as (run_id, state)
    pairs: the queue's jobs (matched by their stored key) and the run folders the queue does not hold
    (e.g. made by `fmae train`; their run.toml is read). Without a queue every folder is read."""
    runs_dir = Path(runs_dir)
    wanted, states = set(keys), set(states)
    found: dict[str, list[tuple[str, str]]] = {}
    known: set[str] = set()
    for run_id, key in (queue.keys() if queue is not None else []):
        known.add(run_id)
        if key in wanted:
            status = read_status_fast(runs_dir / run_id)
            if status is not None and status["state"] in states:
                found.setdefault(key, []).append((run_id, status["state"]))
    try:
        names = sorted(e.name for e in os.scandir(runs_dir)
                       if not e.name.startswith(".") and e.name not in known and e.is_dir())
    except OSError:
        names = []
    for name in names:
        run = RunDir(runs_dir / name)
        status = read_status_fast(run.path)
        if status is None or status["state"] not in states:
            continue
        try:
            key = config_key(run.read_config())
        except (FmaeError, OSError):
            continue
        if key in wanted:
            found.setdefault(key, []).append((name, status["state"]))
    return found


def default_gpus_per_run(project: ProjectConfig) -> int:
    """1 when the scheduler's plan for this machine has GPU slots (fmae.toml's compute settings and what
    NVML reports), else 0 (a CPU slot)."""
    from fmae.gpus import plan_slots

    slots = plan_slots(project)
    return 1 if slots and slots[0].kind == "gpu" else 0


@dataclass
class MatrixPlan:
    """Cells checked against the runs folder: what would be added and what skipped."""

    dataset: str
    task: str
    cells: list[Resolved]
    to_add: list[Resolved]
    skipped: list[tuple[Resolved, str]]  # (cell, why)
    gpus_per_run: int
    dims: str                  # "folds 1,2,3 × seeds 0 × λ 0,2"
    plan: str                  # the GPU plan in one line
    ignored: list[str] = field(default_factory=list)  # options that mean nothing for this dataset

    def summary(self) -> list[str]:
        lines = [f"{self.dataset} matrix: {self.dims} = {len(self.cells)} cell(s): {len(self.to_add)} to add, "
                 f"{len(self.skipped)} skipped"]
        if self.ignored:
            lines.append(f"({' and '.join(self.ignored)} ignored: {self.dataset} is a FER benchmark with one "
                         "split and no λ)")
        lines.append(self.plan)
        lines += [f"skip {cell_label(cell.values)}: {why}" for cell, why in self.skipped]
        return lines


def plan_cells(project: ProjectConfig, cells: list[Resolved], *, gpus_per_run: Optional[int] = None,
               force: bool = False, queue: Optional[Queue] = None, ignored: Iterable[str] = ()) -> MatrixPlan:
    """Sort cells into those to add and those skipped because their experiment already has a queued,
    running or done run (or repeats an earlier cell)."""
    from fmae.gpus import plan_text

    if gpus_per_run is not None and gpus_per_run < 0:
        raise FmaeError(f"GPUs per run {gpus_per_run}: must be 0 (CPU) or more")
    if not cells:
        raise FmaeError("the matrix is empty: give at least one fold, seed and λ")
    first = cells[0].values
    gpus = default_gpus_per_run(project) if gpus_per_run is None else gpus_per_run
    au = first["task"] == "au"
    dims = []
    if au:
        dims.append("folds " + ",".join(str(f) for f in dict.fromkeys(c.values["fold"] for c in cells)))
    dims.append("seeds " + ",".join(str(s) for s in dict.fromkeys(c.values["seed"] for c in cells)))
    if au:
        dims.append("λ " + ",".join(num(float(x)) for x in dict.fromkeys(c.values["lambda_id"] for c in cells)))
    if queue is None and (project.runs_dir / DB_NAME).exists():
        queue = Queue(project.runs_dir)
    keys = [config_key(c.values) for c in cells]
    existing = {} if force else existing_runs(project.runs_dir, keys, queue=queue)
    to_add, skipped, seen = [], [], set()
    for cell, key in zip(cells, keys):
        if key in seen:
            skipped.append((cell, "a duplicate cell of this matrix"))
        elif key in existing:
            skipped.append((cell, ", ".join(f"{rid} ({state})" for rid, state in existing[key])))
        else:
            to_add.append(cell)
        seen.add(key)
    return MatrixPlan(str(first["dataset"]), str(first["task"]), cells, to_add, skipped, gpus, " × ".join(dims),
                      plan_text(project, gpus), list(ignored))


def plan_matrix(project: ProjectConfig, dataset: str, *, folds: Optional[list[int]] = None,
                seeds: Optional[list[int]] = None, lambdas: Optional[list[float]] = None,
                recipe: Optional[str] = None, cli: Optional[dict[str, Any]] = None,
                gpus_per_run: Optional[int] = None, force: bool = False, root: Optional[Path] = None,
                labels: Optional[Path] = None, generate: bool = False, queue: Optional[Queue] = None) -> MatrixPlan:
    """Expand folds × seeds × λ (FER: seeds) and plan the cells (`plan_cells`). `cli` is the options
    layer over recipe and fmae.toml ({"model": …, "epochs": …, …})."""
    from fmae.registry import get_dataset

    spec = get_dataset(dataset)
    if gpus_per_run is not None and gpus_per_run < 0:
        raise FmaeError(f"GPUs per run {gpus_per_run}: must be 0 (CPU) or more")
    cells = expand_matrix(project, spec.name, folds=folds, seeds=seeds, lambdas=lambdas, recipe=recipe,
                          cli=dict(cli or {}), root=root, labels=labels, generate=generate)
    ignored = [flag for flag, given in (("folds", folds), ("λ", lambdas)) if given and spec.task != "au"]
    return plan_cells(project, cells, gpus_per_run=gpus_per_run, force=force, queue=queue, ignored=ignored)


def add_cells(project: ProjectConfig, plan_again: Any, *, priority: int = 0,
              progress: Optional[Any] = None) -> tuple[MatrixPlan, list[Job]]:
    """`plan_again(queue)` under the queue's lock (so two adds of the same cells cannot both add them),
    then a queued run folder and a row per cell to add. `progress(line)` hears each one."""
    from fmae.run_config import create_run

    queue = Queue(project.runs_dir)
    added: list[Job] = []
    with queue.exclusive():
        plan = plan_again(queue)
        for cell in plan.to_add:
            run = create_run(project.runs_dir, cell)
            job = queue.add(run, priority=priority, gpus=plan.gpus_per_run, nproc=max(1, plan.gpus_per_run))
            added.append(job)
            if progress is not None:
                progress(f"added job {job.id}: {run.id}")
    return plan, added


def add_matrix(project: ProjectConfig, dataset: str, *, priority: int = 0,
               progress: Optional[Any] = None, **matrix: Any) -> tuple[MatrixPlan, list[Job]]:
    """Make the data (first use), then plan the matrix again under the queue's lock and add its new
    cells. Does not start the scheduler."""
    matrix.pop("generate", None)
    plan_matrix(project, dataset, **matrix)  # every mistake in the options is said before data is made
    prepare_data(project, dataset, root=matrix.get("root"), labels=matrix.get("labels"))
    return add_cells(project, lambda q: plan_matrix(project, dataset, queue=q, **matrix),
                     priority=priority, progress=progress)


# --- a results group's missing cells --------------------------------------------------------------------

def command_options(project: ProjectConfig, common: dict[str, Any], *, task: str, dataset: str, model: str,
                    recipe: str, lambda_id: Any) -> tuple[dict[str, Any], bool]:
    """The --epochs / --set values of a `fmae queue add` that resolves to `common` (the config a group's
    runs share), and whether it does: the values that differ from the resolution without them, less what
    the resolver derives from the rest (a warmup capped at a shorter run's epochs). Two resolutions."""
    from fmae.run_config import cap_warmup, resolve_run_config

    base = {"model": model, **({"lambda_id": float(lambda_id)} if lambda_id is not None else {})}

    def resolve(options: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return resolve_run_config(project, dataset, recipe=recipe, fold=1 if task == "au" else None, seed=0,
                                      cli={**base, **options}, generate=False).values
        except FmaeError:
            return None

    plain = resolve({})
    if plain is None:
        return {}, False
    wanted = {k: v for k, v in common.items() if k not in MATRIX_KEYS}
    options = {k: v for k, v in wanted.items() if not same_value(plain.get(k), v)}
    if "warmup_epochs" in options and "epochs" in options:
        capped = {"epochs": options["epochs"], "warmup_epochs": plain["warmup_epochs"]}
        cap_warmup(capped, {"warmup_epochs": ""})
        if same_value(capped["warmup_epochs"], options["warmup_epochs"]):
            del options["warmup_epochs"]  # the shorter run caps the recipe's warmup by itself
    resolved = resolve(options)
    if resolved is None:
        return options, False
    exact = all(same_value(resolved.get(k), v) for k, v in wanted.items()) and not [
        k for k in resolved if k not in MATRIX_KEYS and k not in wanted and resolved[k] is not None]
    return options, exact


def queue_missing(project: ProjectConfig, grid: Any) -> tuple[list[MatrixPlan], list[Job]]:
    """Queue a completeness grid's missing cells: the group's newest run cloned into each (the app's
    "queue missing"); data made first, dedupe under the lock, as `fmae queue add`."""
    plans, jobs = [], []
    for matrix in grid.to_add:
        template, located = template_of(project, matrix.template)
        if located:
            prepare_data(project, matrix.dataset)
        lam = None if matrix.lambda_id is None else float(matrix.lambda_id)
        cells = [clone(template, fold=fold, seed=seed, lambda_id=lam, source=f"study (like {Path(matrix.template).name})")
                 for seed in matrix.seeds for fold in (matrix.folds or [None])]
        plan, added = add_cells(project, lambda q: plan_cells(project, cells, queue=q))
        plans.append(plan)
        jobs += added
    return plans, jobs
