"""The rows of the results tables: `aggregate` turns scored runs into one `GroupRow` per group — an AU
group's folds averaged within a seed, then mean ± sample std over seeds — plus a partial row per set of
folds that incomplete seeds hold (never averaged with the complete seeds). No torch: the app imports this.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from fmae.registry import DatasetSpec, get_dataset
from fmae.report.scoring import RunScore, au_columns, group_label, tested_on
from fmae.summary import as_summary

# --- aggregating -------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One seed of a row (AU: its folds averaged; FER: its run; probe: one probe run), values in %."""

    seed: int
    values: dict[str, float | None]
    runs: list[str]
    folds: list[int] | None = None


def span(values: Iterable[int]) -> str:
    """[1, 2] -> "1–2", [0] -> "0", [1, 3] -> "1,3": a set of folds or seeds as people write it."""
    vs = sorted(set(values))
    if len(vs) > 1 and vs == list(range(vs[0], vs[-1] + 1)):
        return f"{vs[0]}–{vs[-1]}"
    return ",".join(map(str, vs))


def coverage_text(folds: Iterable[int], num_folds: int, seeds: Iterable[int]) -> str:
    """"folds 1–2 of 3, seeds 0–1": what a partial row holds."""
    folds, seeds = sorted(set(folds)), sorted(set(seeds))
    fold_word = "fold" if len(folds) == 1 else "folds"
    return f"{fold_word} {span(folds)} of {num_folds}, {'seed' if len(seeds) == 1 else 'seeds'} {span(seeds)}"


@dataclass
class GroupRow:
    task: str
    dataset: str
    fields: tuple  # ((name, value), …): model, recipe, λ / probed, --by keys
    columns: list[str]  # "AU1"…, "avg" (AU); "top1" (FER, probe)
    mean: dict[str, float | None]
    std: dict[str, float | None]  # sample std (n−1); None when n < 2
    n: int
    samples: list[Sample]
    incomplete: dict[int, list[int]] = field(default_factory=dict)  # seeds left out (complete-only) -> missing folds
    superseded: list[str] = field(default_factory=list)  # older runs of a cell that a newer one replaced
    # A partial row holds the seeds that have exactly these folds (not all of the benchmark's): its own
    # row, never averaged with the complete seeds (an average over 2 folds is not one over 3).
    coverage: tuple[int, ...] | None = None
    num_folds: int | None = None
    degenerate: list[str] = field(default_factory=list)  # runs whose best threshold sits at the grid's edge
    delta: dict[str, float | None] = field(default_factory=dict)  # mean − the reference's, per column
    delta_vs: str | None = None  # the paper row compared with ("FMAE (Ning et al. 2024)")

    @property
    def partial(self) -> bool:
        return self.coverage is not None

    @property
    def group(self) -> str:
        """The group's name without the partial coverage ("vit_tiny fmae λ=0")."""
        return group_label(self.fields)

    @property
    def coverage_label(self) -> str | None:
        if self.coverage is None:
            return None
        return coverage_text(self.coverage, self.num_folds or len(self.coverage), [s.seed for s in self.samples])

    @property
    def label(self) -> str:
        return self.group + (f" · {self.coverage_label}" if self.partial else "")

    @property
    def group_key(self) -> tuple:
        """(task, dataset, fields): the group, shared by its complete and partial rows and its grid."""
        return (self.task, self.dataset, self.fields)

    @property
    def key(self) -> tuple:
        """One row: the group and, for a partial row, the folds it holds."""
        return (*self.group_key, self.coverage)

    def value_of(self, name: str) -> Any:
        """One grouping field's value ("model", "recipe", "lambda_id", "probed" or a --by key)."""
        return dict(self.fields).get(name)


def _mean(values: list[float]) -> float | None:
    ok = [v for v in values if v is not None and not math.isnan(v)]
    return math.fsum(ok) / len(ok) if ok else None


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    ok = [v for v in values if v is not None and not math.isnan(v)]
    if not ok:
        return None, None
    return math.fsum(ok) / len(ok), (statistics.stdev(ok) if len(ok) > 1 else None)


def table_columns(task: str, spec: DatasetSpec, other: str | None = None) -> list[str]:
    """A table's columns: the AUs (a cross-dataset row's: those shared with `other`) and avg, or top1."""
    return [*au_columns(spec.name, other), "avg"] if task == "au" else ["top1"]


def is_degenerate(score: RunScore, epoch: str = "best") -> bool:
    """The run's scored epoch put its best threshold at the grid's edge (every AU predicted, or none).
    summary.json's own `degenerate` flag when the trainer wrote one, else from its best threshold."""
    from fmae.metrics import degenerate_threshold

    if score.ref.task != "au":
        return False
    summary = score.summary if score.summary is not None else as_summary(score.ref.info.summary)
    record = summary.record(epoch) or {}
    if isinstance(record.get("degenerate"), bool):
        return record["degenerate"]
    if epoch == "best" and summary.degenerate is not None:
        return summary.degenerate
    threshold = record.get("best_threshold")
    return isinstance(threshold, (int, float)) and degenerate_threshold(float(threshold))


def _au_sample(seed: int, folds: dict[int, RunScore], columns: list[str]) -> Sample:
    order = sorted(folds)
    values: dict[str, float | None] = {}
    for name in columns[:-1]:
        m = _mean([folds[f].values[name] for f in order])
        values[name] = None if m is None else m * 100
    values["avg"] = _mean([values[c] for c in columns[:-1]])  # type: ignore[misc]
    return Sample(seed, values, [folds[f].run_id for f in order], order)


def aggregate(scores: Iterable[RunScore], *, complete_only: bool = False, epoch: str = "best") -> list[GroupRow]:
    """One row per group; an AU group whose seeds lack folds also gets one partial row per set of folds
    its seeds hold (`complete_only` leaves those seeds out and names them in `incomplete`). A (fold,
    seed) cell with several scored runs keeps the newest (by run id). `epoch` says which summary record
    the degenerate check reads."""
    groups: dict[tuple, list[RunScore]] = defaultdict(list)
    for s in scores:
        groups[s.ref.key].append(s)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], [(n, str(v)) for n, v in k[2]])):
        task, dataset, fields = key
        spec = get_dataset(dataset)
        columns = table_columns(task, spec, tested_on(fields))
        cells: dict[tuple, RunScore] = {}
        superseded = []
        for s in sorted(groups[key], key=lambda s: s.run_id):
            cell = (s.ref.fold, s.ref.seed) if task != "id_probe" else (s.run_id, s.ref.seed)
            if cell in cells:
                superseded.append(cells[cell].run_id)
            cells[cell] = s
        degenerate = {s.run_id for s in cells.values() if is_degenerate(s, epoch)}
        buckets: dict[tuple[int, ...] | None, list[Sample]] = {}
        incomplete: dict[int, list[int]] = {}
        if task == "au":
            by_seed: dict[int, dict[int, RunScore]] = defaultdict(dict)
            for (fold, seed), s in cells.items():
                by_seed[seed][fold] = s
            every = tuple(range(1, spec.num_folds + 1))
            for seed in sorted(by_seed):
                folds = by_seed[seed]
                held = tuple(sorted(folds))
                if held != every and complete_only:
                    incomplete[seed] = [f for f in every if f not in folds]
                    continue
                buckets.setdefault(None if held == every else held, []).append(_au_sample(seed, folds, columns))
            if None not in buckets and (complete_only or not buckets):
                buckets[None] = []  # no complete seed: the group's row says so (n 0)
        else:
            buckets[None] = [Sample(cells[c].ref.seed, {"top1": cells[c].values["top1"] * 100}, [cells[c].run_id])
                             for c in sorted(cells, key=lambda c: (c[1], str(c[0])))]
        for coverage in sorted(buckets, key=lambda c: (c is not None, -len(c or ()), c or ())):
            samples = buckets[coverage]
            mean, std = {}, {}
            for c in columns:
                mean[c], std[c] = _mean_std([smp.values.get(c) for smp in samples])
            runs = {r for smp in samples for r in smp.runs}
            rows.append(GroupRow(task, dataset, fields, columns, mean, std, len(samples), samples,
                                 incomplete if coverage is None else {}, superseded if coverage is None else [],
                                 coverage, spec.num_folds if task == "au" else None, sorted(degenerate & runs)))
    return rows
