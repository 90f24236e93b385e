"""Results over runs: per-AU tables averaged over folds, mean ± std over seeds, the paper beside them.

The pipeline, each step a function the CLI (`fmae report`) and the app's Results screen both call:

    collect(runs_dir, selection, scoring) -> Collected    every selected run, scored from its folder
    aggregate(scores, complete_only=...)  -> [GroupRow]   one row per group (dataset, model, recipe, λ, --by)
    completeness(refs, ...)               -> [Grid]       (fold, seed) cells and what queues the missing
    build(runs_dir, ...)                  -> Results      all of it, one `Report` per benchmark and task

How a row is made (the paper's practice, see the reference protocol): within one seed, each AU's
per-fold value is averaged over the benchmark's folds, and "avg" is the mean over AUs of those; across
seeds the row shows the mean and the sample standard deviation (n−1) with n = the number of seeds.
Seeds missing folds make their own partial row per set of folds they hold ("folds 1–2 of 3, seed 0"),
never averaged with complete seeds; `complete_only` leaves them out. FER rows: top-1 accuracy,
mean ± std over seeds; identity-probe rows: top-1 over every probe run of the group. Values are in %.

numpy only for re-scoring saved predictions (through fmae.metrics); no torch: the app imports this.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fmae.errors import FmaeError
from fmae.report.paper import PaperRow, find_method, paper_rows
from fmae.registry import DATASETS, DatasetSpec, get_dataset
from fmae.report.grid import Grid, Matrix, completeness  # noqa: F401  (part of this module's interface)
from fmae.report.rows import (GroupRow, Sample, table_columns, aggregate, coverage_text, is_degenerate,  # noqa: F401
                              span)
from fmae.report.scoring import (METRICS, PER_AU, TUNED, RunRef, RunScore, Scoring, canonical_value,  # noqa: F401
                              group_fields, group_label, num, parse_threshold, score_run, tested_on)
from fmae.runs import STATES, RunDir, RunInfo, list_runs

if TYPE_CHECKING:
    from fmae.config import ProjectConfig

TASKS = ("au", "fer", "id_probe")  # training runs; pretraining and `fmae eval` runs are left out
# Config keys a row never groups by: they are what a row averages over, or name single runs.
NOT_GROUPABLE = ("fold", "seed", "run_id", "source_run")


# --- which runs -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """Which runs: benchmarks (empty = all), states whose runs are scored, tags a run must all carry,
    and config keys to group by beside dataset, model, recipe and λ."""

    datasets: tuple[str, ...] = ()
    states: tuple[str, ...] = ("done",)
    tags: tuple[str, ...] = ()
    by: tuple[str, ...] = ()

    def checked(self) -> Selection:
        datasets = tuple(dict.fromkeys(get_dataset(d).name for d in self.datasets))
        states = tuple(STATES) if "all" in self.states else tuple(dict.fromkeys(self.states))
        bad = [s for s in states if s not in STATES]
        if bad or not states:
            raise FmaeError(f"--state {','.join(self.states) or '(none)'}: choose from {', '.join(STATES)} or all")
        for key in self.by:
            if key in NOT_GROUPABLE:
                raise FmaeError(f"--by {key}: a row averages over folds and seeds and never splits by run; "
                                "group by a config key such as epochs, blr or init")
        return Selection(datasets, states, tuple(self.tags), tuple(dict.fromkeys(self.by)))


def _probed_label(cfg: dict[str, Any], configs: dict[str, dict[str, Any]]) -> str:
    """What a probe run probed: the source run's group ("bp4d fmae_iat λ=2"), else the checkpoint's name."""
    source = cfg.get("source_run")
    if source and source in configs:
        src = configs[source]
        lam = src.get("lambda_id")
        with_lambda = src.get("task") == "au" and lam is not None
        return f"{src.get('dataset')} {src.get('recipe')}" + (f" λ={num(canonical_value(lam))}" if with_lambda else "")
    if source:
        return f"run {source}"
    init = str(cfg.get("init") or "")
    return Path(init).name if init else "random init"


# --- collecting ------------------------------------------------------------------------------------------

@dataclass
class Collected:
    refs: list[RunRef]  # every selected training run, any state (the completeness grid reads these)
    scores: list[RunScore]  # those in the selected states that could be scored
    skipped: list[str]  # "<run id>: why" for each run left out because its folder could not be read
    left_out: dict[str, int] = field(default_factory=dict)  # runs that are not training runs, by kind


def select(infos: list[RunInfo], selection: Selection) -> tuple[list[RunRef], list[str], dict[str, int]]:
    """The training runs that pass the filters, each with its row key; unreadable folders as one line
    each; and counts of runs of other kinds (pretraining, `fmae eval`)."""
    configs = {i.id: i.config for i in infos if i.config}
    refs, skipped, left_out = [], [], defaultdict(int)
    known_keys: set[str] = set()
    for info in infos:
        cfg = info.config
        if not cfg:  # nothing to filter on: a broken folder is always reported
            skipped.append(f"{info.id}: {info.problem or 'run.toml has no [config]'}")
            continue
        task, dataset = cfg.get("task"), cfg.get("dataset")
        if selection.datasets and dataset not in selection.datasets:
            continue
        cross = task == "au" and bool(cfg.get("eval_dataset"))  # scored on another benchmark: its own rows
        if task not in TASKS or (cfg.get("eval_checkpoint") and not cross):
            left_out["evaluation runs (fmae eval)" if cfg.get("eval_checkpoint") else f"{task} runs"] += 1
            continue
        if selection.tags and not set(selection.tags) <= set(RunDir(info.path).read_tags()):
            continue
        if info.state == "corrupt":
            skipped.append(f"{info.id}: {info.problem}")
            continue
        try:
            spec = get_dataset(str(dataset))
            fold = int(cfg["fold"]) if task == "au" else None
            seed = int(cfg["seed"])
            if fold is not None:
                spec.check_fold(fold)
        except (FmaeError, KeyError, TypeError, ValueError) as e:
            skipped.append(f"{info.id}: run.toml: {e if isinstance(e, FmaeError) else f'bad or missing {e}'}")
            continue
        known_keys.update(cfg)
        probed = _probed_label(cfg, configs) if task == "id_probe" else None
        refs.append(RunRef(info, str(task), spec.name, fold, seed,
                           (task, spec.name, group_fields(cfg, selection.by, probed))))
    for key in selection.by:
        if refs and key not in known_keys:
            import difflib

            close = difflib.get_close_matches(key, sorted(known_keys), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise FmaeError(f"--by {key}: no selected run's config has this key{hint}")
    return refs, skipped, dict(left_out)


def collect(runs_dir: Path, selection: Selection = Selection(), scoring: Scoring = Scoring(), *,
            infos: list[RunInfo] | None = None) -> Collected:
    """Every selected run of `runs_dir` (or of `infos`, e.g. the app's already-read list), scored."""
    selection, scoring = selection.checked(), scoring.checked()
    infos = list_runs(Path(runs_dir)) if infos is None else infos
    refs, skipped, left_out = select(infos, selection)
    scores = []
    for ref in refs:
        if ref.state not in selection.states:
            continue
        if ref.state != "done" and ref.info.summary is None and ref.info.problem is None:
            continue  # not evaluated yet (queued, or ended before its first evaluation): the grid shows it
        try:
            scores.append(score_run(ref, scoring))
        except FmaeError as e:
            skipped.append(f"{ref.id}: {e}")
    return Collected(refs, scores, skipped, left_out)


def compare(row: GroupRow, paper: PaperRow) -> dict[str, float | None]:
    """row mean − published value per column (None where either is missing)."""
    return {c: (row.mean[c] - paper.values[c]) if row.mean.get(c) is not None and c in paper.values else None
            for c in row.columns}


def reference_method(row: GroupRow, versus: str) -> PaperRow | None:
    """The paper row a group is compared with: `versus` = a method name, "none", or "auto" (FMAE-IAT
    for a group trained with identity-adversarial training, λ > 0 or recipe fmae_iat; else FMAE)."""
    if versus == "none" or row.task == "id_probe" or not paper_rows(row.dataset):
        return None
    if versus != "auto":
        try:
            return find_method(row.dataset, versus)
        except FmaeError:  # published for another benchmark of the report (build checks that)
            return None
    lam = row.value_of("lambda_id")
    iat = row.value_of("recipe") == "fmae_iat" or (isinstance(lam, (int, float)) and lam > 0)
    rows = {r.method: r for r in paper_rows(row.dataset)}
    return rows.get("FMAE-IAT" if iat else "FMAE") or rows.get("FMAE")


# --- the whole report ------------------------------------------------------------------------------------

_TASK_TITLES = {"au": "AU detection", "fer": "facial expression recognition", "id_probe": "identity probe"}


@dataclass
class Report:
    """One table: one benchmark and one task, the user's rows, the paper's, and the grids."""

    dataset: str
    task: str
    title: str  # "BP4D — AU detection"
    value_label: str  # what every number is, with its unit: "F1@0.5 (%)"
    epoch_label: str
    how: str  # how a row's numbers were averaged, one sentence
    columns: list[str]  # "AU1"…, "avg" | "top1"
    rows: list[GroupRow]
    paper: list[PaperRow]
    paper_note: str | None  # when the paper's numbers measure something else than these
    grids: list[Grid]
    tested_on: str | None = None  # cross-dataset (`fmae eval --dataset`): the benchmark whose frames were scored

    @property
    def key(self) -> str:
        """What names the table across visits: "bp4d/au"; a cross-dataset one its own, "bp4d→disfa/au"."""
        return f"{self.dataset}→{self.tested_on}/{self.task}" if self.tested_on else f"{self.dataset}/{self.task}"

    def notes(self) -> list[str]:
        """What a reader must know about the rows: partial rows, seeds left out, degenerate and replaced runs."""
        out = []
        for row in self.rows:
            if row.partial:
                out.append(f"{row.label}: averaged over {len(row.coverage or ())} of {row.num_folds} folds: "
                           "not comparable with a complete row or the paper")
            for seed, missing in sorted(row.incomplete.items()):
                folds = ", ".join(map(str, missing))
                out.append(f"{row.label}: seed {seed} lacks fold{'s' if len(missing) > 1 else ''} {folds}: "
                           "left out (complete-only)")
            if row.n == 0:
                out.append(f"{row.label}: no seed has every fold yet: no complete numbers")
            if row.degenerate:
                out.append(f"{row.label}: {len(row.degenerate)} of {sum(len(x.runs) for x in row.samples)} runs "
                           "degenerate (best threshold no better than every AU present, or none predicted)")
            if row.superseded:
                out.append(f"{row.label}: {len(row.superseded)} older run(s) of a cell replaced by a newer one: "
                           + ", ".join(row.superseded))
        for grid in self.grids:
            if grid.mixed:
                keys = ", ".join(grid.mixed)
                out.append(f"{grid.label}: its runs differ in {keys}; each cell counts its newest run "
                           f"(--by {grid.mixed[0]} separates them)")
        if self.paper_note:
            out.append(self.paper_note)
        return out

    def to_dict(self, extra: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "task": self.task, "tested_on": self.tested_on, "title": self.title,
            "value_label": self.value_label,
            "epoch_label": self.epoch_label, "how": self.how, "unit": "%", "columns": self.columns,
            "rows": [_row_dict(r) for r in self.rows],
            "paper": [{"method": p.method, "venue": p.venue, "label": p.label, "metric_label": p.metric_label,
                       "values": {c: p.values.get(c) for c in self.columns}} for p in self.paper],
            "notes": self.notes(), "grids": [g.to_dict(extra) for g in self.grids],
        }


def _row_dict(row: GroupRow) -> dict[str, Any]:
    return {
        "group": row.label, "fields": dict(row.fields), "n": row.n, "mean": row.mean, "std": row.std,
        "delta": row.delta or None, "delta_vs": row.delta_vs, "incomplete_seeds": row.incomplete,
        "partial": row.partial, "coverage": list(row.coverage) if row.coverage else None,
        "degenerate": row.degenerate, "superseded": row.superseded,
        "samples": [{"seed": s.seed, "folds": s.folds, "runs": s.runs, "values": s.values} for s in row.samples],
    }


@dataclass
class Results:
    runs_dir: Path
    selection: Selection
    scoring: Scoring
    reports: list[Report]
    skipped: list[str]  # "<run id>: why", one line each
    left_out: dict[str, int]  # runs of other kinds, by kind
    command_extra: list[str] = field(default_factory=list)  # appended to queue commands (--runs-dir …)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fmae_report": 1, "runs_dir": str(self.runs_dir), "unit": "%",
            "scoring": self.scoring.to_dict(),
            "selection": {"datasets": list(self.selection.datasets), "states": list(self.selection.states),
                          "tags": list(self.selection.tags), "by": list(self.selection.by)},
            "reports": [r.to_dict(self.command_extra) for r in self.reports],
            "skipped": self.skipped, "left_out": self.left_out,
        }


def _how(task: str, spec: DatasetSpec, complete_only: bool) -> str:
    if task == "au":
        return (f"within a seed, each AU's per-fold value is averaged over the {spec.num_folds} folds and avg is the "
                "mean over AUs; a row shows mean ± sample std over seeds (n = seeds)"
                + ("; seeds missing a fold are left out (complete-only)" if complete_only else
                   "; seeds missing folds form partial rows, each named by the folds it holds"))
    if task == "fer":
        return "mean ± sample std over seeds (n = seeds)"
    return "mean ± sample std over probe runs (n = runs)"


def build(runs_dir: Path, selection: Selection = Selection(), scoring: Scoring = Scoring(), *,
          versus: str = "auto", complete_only: bool = False, seeds: Iterable[int] = (),
          project: ProjectConfig | None = None, infos: list[RunInfo] | None = None,
          command_extra: Iterable[str] = ()) -> Results:
    """The whole report: `collect` → `aggregate` → the paper and Δ → `completeness`, one Report per
    (benchmark, task). `versus`: the paper method each row is compared with ("auto": FMAE-IAT for λ > 0,
    else FMAE; "none"). `complete_only`: no partial rows. `seeds`: seeds every grid expects beside those
    its group's runs used (the user widening the grid; empty = only the seeds the runs used)."""
    selection, scoring = selection.checked(), scoring.checked()
    collected = collect(runs_dir, selection, scoring, infos=infos)
    rows = aggregate(collected.scores, complete_only=complete_only, epoch=scoring.epoch)
    # cross-dataset evaluations are not cells a training matrix could queue: no grid
    grids = completeness([r for r in collected.refs if not r.tested_on], seeds=seeds, project=project)
    order = list(DATASETS)
    keys = sorted({(r.task, r.dataset, tested_on(r.fields)) for r in rows} | {(g.task, g.dataset, None) for g in grids},
                  key=lambda k: (order.index(k[1]), TASKS.index(k[0]), k[2] is not None, k[2] or ""))
    _check_versus(versus, [d for t, d, _ in keys if t != "id_probe"])
    reports = []
    for task, dataset, other in keys:
        spec = get_dataset(dataset)
        mine = [r for r in rows if (r.task, r.dataset, tested_on(r.fields)) == (task, dataset, other)]
        if other is not None:
            reports.append(_cross_report(spec, get_dataset(other), scoring, complete_only, mine))
            continue
        published = paper_rows(dataset) if task == "fer" or (task == "au" and scoring.metric != "auc") else []
        # a Δ against the paper only where the numbers are alike (F1@0.5 minus a tuned-on-test F1 misleads)
        like = task != "au" or scoring.like_paper
        for row in mine:
            ref = reference_method(row, versus) if published and like else None
            if ref is not None:
                row.delta, row.delta_vs = compare(row, ref), ref.method
        note = None
        if task == "au" and published and not scoring.like_paper:
            note = (f"the paper's numbers are F1 at one threshold tuned on each test fold; these are "
                    f"{scoring.value_label(task)}: not like for like, so no Δ rows (--metric f1_best compares like "
                    f"with like)")
        elif task == "au" and scoring.metric == "auc" and paper_rows(dataset):
            note = "the paper publishes no AUC: its rows are not shown"
        reports.append(Report(dataset, task, f"{spec.title} — {_TASK_TITLES[task]}", scoring.value_label(task),
                              scoring.epoch_label(), _how(task, spec, complete_only), table_columns(task, spec), mine,
                              published, note, [g for g in grids if (g.task, g.dataset) == (task, dataset)]))
    return Results(Path(runs_dir), selection, scoring, reports, collected.skipped, collected.left_out,
                   list(command_extra))


def _cross_report(spec: DatasetSpec, other: DatasetSpec, scoring: Scoring, complete_only: bool,
                  rows: list[GroupRow]) -> Report:
    """The rows of models trained on `spec` and scored on every frame of `other` (`fmae eval --dataset`)."""
    note = (f"cross-dataset: each {spec.title} fold's model scored on every {other.title} frame (all its subjects "
            f"unseen), over the AUs both label; not comparable with {spec.title}'s own rows or the paper")
    return Report(spec.name, "au", f"{spec.title} → {other.title} — AU detection, cross-dataset",
                  scoring.value_label("au"), scoring.epoch_label(), _how("au", spec, complete_only),
                  table_columns("au", spec, other.name), rows, [], note, [], tested_on=other.name)


def _check_versus(versus: str, datasets: list[str]) -> None:
    """A named method must be published for at least one of the benchmarks in the report."""
    if versus in ("auto", "none") or not datasets:
        return
    errors = []
    for dataset in datasets:
        try:
            find_method(dataset, versus)
            return
        except FmaeError as e:
            errors.append(e)
    raise errors[0]
