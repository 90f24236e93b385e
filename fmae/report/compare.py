"""Paired comparison of two results groups, as a reviewer asks it: is A really better than B, or is it
fold and seed noise?

Over the (fold, seed) cells both groups hold (each cell's newest done run, as the tables count it), per
AU and for the mean: Δ = A − B of the cells' mean, in percentage points, with

- a 95 % interval from a bootstrap that resamples test SUBJECTS (a subject's frames are correlated:
  resampling frames makes intervals too narrow). A draw picks each fold's test subjects with
  replacement; the seeds of a fold see the same draw (they were tested on the same people), both
  groups too (the comparison is paired). Computed from each run's predictions/best.npz;
- a two-sided sign-flip permutation test over the cells (each cell's Δ as likely negative as positive
  under the null; every sign pattern when there are ≤ 16 cells);
- a verdict: "better" / "worse" when the interval excludes 0 on that side AND p < 0.05, else
  "within noise". With fewer than 5 cells no sign pattern test can reach p < 0.05: every verdict is
  "within noise", and the notes say so.

For F1@0.5, best-threshold F1 (one threshold for all AUs, tuned on each test fold: the paper's number,
labelled so) and AUC. `compare_groups` is `fmae compare A B`; `compare_rows` gives the app's Results
the pinned baseline's Δ with its interval. numpy only (no torch): the app imports this.
"""

from __future__ import annotations

import re
import zipfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fmae.errors import FmaeError
from fmae.metric_catalogue import AUC, F1_05, F1_BEST
from fmae.registry import get_dataset
from fmae.report.paired_stats import (METRIC_KEYS, SubjectCounts, draws_of, nanmean_cells, scores, sign_flip_p,
                                      subject_counts, with_mean)
from fmae.report.scoring import RunRef, group_label
from fmae.runs import RunDir, RunInfo, list_runs

ALPHA = 0.05
LEVEL = 0.95
VERDICTS = ("better", "worse", "within noise")
TITLES = {"f1": F1_05.title, "f1_best": F1_BEST.title, "auc": AUC.title}


# --- the result --------------------------------------------------------------------------------------------

@dataclass
class MetricDelta:
    """One metric's comparison; every value in % (Δ and its interval in percentage points)."""

    metric: str  # "f1" | "f1_best" | "auc"
    label: str  # "F1 best-threshold (tuned on test)"
    columns: list[str]  # "AU1"…, "avg"
    a: dict[str, float | None]  # A's mean over the cells
    b: dict[str, float | None]
    delta: dict[str, float | None]  # A − B
    low: dict[str, float | None]  # the 95 % bootstrap interval of Δ
    high: dict[str, float | None]
    p: dict[str, float | None]  # sign-flip permutation p (two-sided)
    verdict: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "label": self.label, "columns": self.columns, "a": self.a, "b": self.b,
                "delta": self.delta, "low": self.low, "high": self.high, "p": self.p, "verdict": self.verdict}


@dataclass
class Comparison:
    a: str  # group names, as `fmae report` names the rows
    b: str
    dataset: str
    cells: list[tuple[int | None, int]]  # the (fold, seed) cells both hold
    pairs: list[tuple[str, str]]  # (A's run, B's run) of each cell
    subjects: int  # distinct test subjects resampled
    draws: int
    permutations: int  # sign patterns the permutation test used
    exact: bool  # every sign pattern (not a random sample of them)
    metrics: list[MetricDelta]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fmae_compare": 1, "a": self.a, "b": self.b, "dataset": self.dataset, "unit": "%",
                "delta": "A − B, percentage points", "interval": f"{LEVEL:.0%} bootstrap over test subjects",
                "cells": [{"fold": f, "seed": s, "runs": list(p)} for (f, s), p in zip(self.cells, self.pairs)],
                "subjects": self.subjects, "draws": self.draws, "permutations": self.permutations,
                "exact_permutation": self.exact, "alpha": ALPHA,
                "metrics": [m.to_dict() for m in self.metrics], "notes": self.notes}


# --- reading one run's predictions ---------------------------------------------------------------------

@dataclass
class Predictions:
    probs: np.ndarray  # [N, K] float
    labels: np.ndarray  # [N, K] uint8
    subjects: np.ndarray  # [N] str
    paths: np.ndarray  # [N] str
    codes: list[int]  # the K AU codes, in column order


def load_predictions(run: Path, dataset: str) -> Predictions:
    """predictions/best.npz of an AU run; subject ids parsed from the paths when the file predates them."""
    path = RunDir(run).predictions / "best.npz"
    if not path.is_file():
        raise FmaeError(f"{path}: no saved test predictions (the run has not finished an evaluation)")
    try:
        with np.load(path, allow_pickle=False) as data:
            probs, labels = np.asarray(data["probs"]), np.asarray(data["labels"])
            paths = np.asarray(data["paths"]).astype(str)
            subjects = np.asarray(data["subjects"]).astype(str) if "subjects" in data.files else None
            codes = [int(c) for c in data["au_codes"]] if "au_codes" in data.files else list(get_dataset(dataset).au_codes)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise FmaeError(f"{path}: unreadable ({' '.join(str(e).split())[:120]})") from None
    if subjects is None or len(subjects) != len(probs):
        spec = get_dataset(dataset)
        parsed = [spec.parse_subject(p) for p in paths]
        if any(s is None for s in parsed):
            raise FmaeError(f"{path}: no subject ids saved and none readable from a path such as {paths[0]!r}")
        subjects = np.array(parsed)
    if probs.ndim != 2 or probs.shape != labels.shape or probs.shape[1] != len(codes) or len(paths) != len(probs):
        raise FmaeError(f"{path}: probs {probs.shape}, labels {labels.shape}, {len(paths)} paths and AUs {codes} "
                        "do not fit together")
    if not np.isfinite(probs).all() or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
        raise FmaeError(f"{path}: probabilities outside [0, 1] or not finite — not a run's saved sigmoid outputs")
    return Predictions(probs, labels, subjects, paths, codes)


def _paired(a: Predictions, b: Predictions, ids: tuple[str, str]) -> tuple[Predictions, Predictions]:
    """B's frames and AU columns in A's order; refused when the two runs were tested on other frames."""
    if a.codes != b.codes:
        if sorted(a.codes) != sorted(b.codes):
            raise FmaeError(f"runs {ids[0]} and {ids[1]} scored different AUs ({a.codes} vs {b.codes})")
        cols = [b.codes.index(c) for c in a.codes]
        b = Predictions(b.probs[:, cols], b.labels[:, cols], b.subjects, b.paths, list(a.codes))
    if not np.array_equal(a.paths, b.paths):
        where = {p: i for i, p in enumerate(b.paths)}
        if len(where) != len(b.paths) or len(a.paths) != len(b.paths) or any(p not in where for p in a.paths):
            raise FmaeError(f"runs {ids[0]} and {ids[1]} were tested on different frames ({len(a.paths)} vs "
                            f"{len(b.paths)}): compare runs of the same data")
        order = np.array([where[p] for p in a.paths])
        b = Predictions(b.probs[order], b.labels[order], b.subjects[order], b.paths[order], b.codes)
    if not np.array_equal(a.labels, b.labels):
        raise FmaeError(f"runs {ids[0]} and {ids[1]} hold different labels for the same frames: the label "
                        "files changed between them")
    return a, b


# --- the comparison ----------------------------------------------------------------------------------------

@dataclass
class CellPair:
    fold: int | None
    seed: int
    run_a: Path
    run_b: Path


def compare_cells(pairs: list[CellPair], dataset: str, *, metrics: Iterable[str] = METRIC_KEYS, draws: int = 2000,
                  seed: int = 0, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """The comparison over these cells (each a run of A and a run of B on the same test frames)."""
    from threadpoolctl import threadpool_limits

    # The products are small ([2001 × 14] @ [14 × 1188]): BLAS threads only wait for each other (on
    # a shared 2-core machine the comparison ran 3× slower with them)
    with threadpool_limits(1):
        return _compare_cells(pairs, dataset, list(metrics), draws, seed, names)


def _compare_cells(pairs: list[CellPair], dataset: str, metrics: list[str], draws: int, seed: int,
                   names: tuple[str, str]) -> Comparison:
    bad = [m for m in metrics if m not in METRIC_KEYS]
    if bad or not metrics:
        raise FmaeError(f"--metric {','.join(bad) or '(none)'}: choose from {', '.join(METRIC_KEYS)}")
    if draws < 100:
        raise FmaeError(f"--draws {draws}: give at least 100 bootstrap draws (2000 is the default)")
    if not pairs:
        raise FmaeError(f"{names[0]} and {names[1]} share no (fold, seed) cell with saved predictions: nothing "
                        "to compare")
    rng = np.random.default_rng(seed)
    units: dict[tuple[str, ...], list[tuple[int, Any, Any]]] = defaultdict(list)
    codes: list[int] | None = None
    for i, cell in enumerate(pairs):
        ids = (cell.run_a.name, cell.run_b.name)
        a, b = _paired(load_predictions(cell.run_a, dataset), load_predictions(cell.run_b, dataset), ids)
        if codes is None:
            codes = a.codes
        elif sorted(codes) != sorted(a.codes):
            raise FmaeError(f"run {ids[0]} scored AUs {a.codes}, other cells {codes}")
        cols = [a.codes.index(c) for c in codes]
        people, subject = np.unique(a.subjects, return_inverse=True)
        # The seeds of a fold (and both groups) were tested on the same people: one draw for all of them
        auc = "auc" in metrics
        units[tuple(people)].append((i, _counts(cell.run_a, a, cols, people, subject, auc),
                                     _counts(cell.run_b, b, cols, people, subject, auc)))
    assert codes is not None
    c, k = len(pairs), len(codes)
    observed = {m: np.full((2, c, k + 1), np.nan) for m in metrics}  # [A/B, cell, AU + avg]
    boot_sum = {m: np.zeros((draws, k + 1)) for m in metrics}
    boot_n = {m: np.zeros((draws, k + 1)) for m in metrics}
    for people, members in units.items():
        # row 0 weighs every subject once: the observed numbers; rows 1… are the draws
        w = np.vstack([np.ones((1, len(people))), draws_of(len(people), draws, rng)])
        for i, ca, cb in members:
            sa, sb = scores(ca, w), scores(cb, w)
            for m in metrics:
                va, vb = with_mean(sa[m], m), with_mean(sb[m], m)  # [1 + D, K + 1]
                observed[m][0, i], observed[m][1, i] = va[0], vb[0]
                d = va[1:] - vb[1:]
                ok = ~np.isnan(d)
                boot_sum[m] += np.where(ok, d, 0.0)
                boot_n[m] += ok
    columns = [f"AU{x}" for x in codes] + ["avg"]
    results, permutations, exact = [], 0, True
    for m in metrics:
        deltas = observed[m][0] - observed[m][1]  # [C, K + 1]
        boot = np.divide(boot_sum[m], boot_n[m], out=np.full_like(boot_sum[m], np.nan), where=boot_n[m] > 0)
        p, permutations, exact = sign_flip_p(deltas, rng)
        results.append(_metric_delta(m, columns, observed[m], nanmean_cells(deltas), boot, p))
    notes = _notes(c, permutations, exact)
    subjects = len({p for people in units for p in people})
    return Comparison(names[0], names[1], dataset, [(x.fold, x.seed) for x in pairs],
                      [(x.run_a.name, x.run_b.name) for x in pairs], subjects, draws, permutations, exact, results,
                      notes)


_CACHE: OrderedDict[tuple, SubjectCounts] = OrderedDict()
_CACHE_SIZE = 512  # runs' counts kept (a few KB each): the app compares every row with one pinned baseline


def clear_cache() -> None:
    """Forget every run's counts (a benchmark's cold start)."""
    _CACHE.clear()


def _counts(run: Path, pred: Predictions, cols: list[int], people: np.ndarray, subject: np.ndarray,
            auc: bool) -> SubjectCounts:
    """A run's per-subject counts, kept while its predictions file is unchanged (the counts do not depend
    on the frames' order, so B's realigned frames share B's file's entry)."""
    path = RunDir(run).predictions / "best.npz"
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, tuple(pred.codes[c] for c in cols), tuple(people))
    found = _CACHE.get(key)
    if found is None or (auc and found.concord2 is None):
        found = subject_counts(pred.probs[:, cols], pred.labels[:, cols], subject, len(people), auc)
        _CACHE[key] = found
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


def _metric_delta(metric: str, columns: list[str], observed: np.ndarray, delta: np.ndarray, boot: np.ndarray,
                  p: np.ndarray) -> MetricDelta:
    def pct(x: float) -> float | None:
        return None if np.isnan(x) else float(x) * 100.0

    ok = ~np.isnan(boot)
    low = np.full(len(columns), np.nan)
    high = np.full(len(columns), np.nan)
    for j in range(len(columns)):
        if ok[:, j].any():
            low[j], high[j] = np.percentile(boot[ok[:, j], j], [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    a, b = nanmean_cells(observed[0]), nanmean_cells(observed[1])
    verdict = {}
    for j, col in enumerate(columns):
        significant = not np.isnan(p[j]) and p[j] < ALPHA
        verdict[col] = ("better" if significant and low[j] > 0 else
                        "worse" if significant and high[j] < 0 else "within noise")
    return MetricDelta(metric, TITLES[metric], columns, dict(zip(columns, map(pct, a))), dict(zip(columns, map(pct, b))),
                       dict(zip(columns, map(pct, delta))), dict(zip(columns, map(pct, low))),
                       dict(zip(columns, map(pct, high))),
                       {col: None if np.isnan(v) else float(v) for col, v in zip(columns, p)}, verdict)


def _notes(cells: int, permutations: int, exact: bool) -> list[str]:
    notes = []
    smallest = 2.0 / permutations if exact else 1.0 / permutations
    if smallest >= ALPHA:
        notes.append(f"{cells} cell{'s' if cells != 1 else ''}: the sign-flip test cannot reach p < {ALPHA:g} "
                     f"(smallest possible p = {smallest:.3g}), so every verdict is 'within noise' — add seeds "
                     "or folds (5 cells or more)")
    notes.append("the bootstrap resamples test subjects only; the permutation test over cells carries the "
                 "seed-to-seed and fold-to-fold spread")
    return notes


# --- groups as `fmae report` names them ----------------------------------------------------------------

def normalise_group(name: str) -> str:
    """"vit_tiny fmae lambda=2" and "vit_tiny  fmae λ=2.0" name the same row."""
    text = " ".join(name.split()).lower()
    text = re.sub(r"\b(lambda|lambda_id|l)=", "λ=", text)
    return re.sub(r"λ=(-?\d+)\.0\b", r"λ=\1", text)


def _cells(refs: list[RunRef]) -> dict[tuple[int | None, int], RunRef]:
    """Each cell's newest run (by id), as the tables count it."""
    cells: dict[tuple[int | None, int], RunRef] = {}
    for ref in sorted(refs, key=lambda r: r.id):
        cells[(ref.fold, ref.seed)] = ref
    return cells


def find_group(refs: list[RunRef], name: str, what: str) -> tuple[str, list[RunRef]]:
    """The done AU runs of the group called `name` ("bp4d vit_base fmae λ=0" or without the benchmark)."""
    groups: dict[tuple, list[RunRef]] = defaultdict(list)
    for ref in refs:
        if ref.task == "au" and ref.state == "done":
            groups[ref.key].append(ref)
    want = normalise_group(name)
    hits = [key for key in groups if want in (normalise_group(group_label(key[2])),
                                              normalise_group(f"{key[1]} {group_label(key[2])}"))]
    if not hits:
        known = sorted({f"{key[1]} {group_label(key[2])}" for key in groups})
        listed = "; ".join(known[:8]) + (" …" if len(known) > 8 else "") if known else "no finished AU runs"
        raise FmaeError(f"{what} {name!r}: no group of finished AU runs is called that (groups: {listed})")
    if len(hits) > 1:
        raise FmaeError(f"{what} {name!r} is a group on {', '.join(sorted(k[1] for k in hits))}: put the benchmark "
                        f"first (e.g. '{hits[0][1]} {group_label(hits[0][2])}') or pass --dataset")
    key = hits[0]
    return f"{key[1]} {group_label(key[2])}", groups[key]


def compare_groups(runs_dir: Path, a: str, b: str, *, datasets: Iterable[str] = (), by: Iterable[str] = (),
                   tags: Iterable[str] = (), metrics: Iterable[str] = METRIC_KEYS, draws: int = 2000, seed: int = 0,
                   infos: list[RunInfo] | None = None) -> Comparison:
    """`fmae compare A B`: A vs B over the cells both hold (Δ = A − B)."""
    from fmae.report.collect import Selection, select

    selection = Selection(datasets=tuple(datasets), states=("done",), tags=tuple(tags), by=tuple(by)).checked()
    infos = list_runs(Path(runs_dir)) if infos is None else infos
    refs, _, _ = select(infos, selection)
    name_a, group_a = find_group(refs, a, "A")
    name_b, group_b = find_group(refs, b, "B")
    if group_a[0].key == group_b[0].key:
        raise FmaeError(f"A and B are the same group ({name_a}): name two different rows of `fmae report`")
    if group_a[0].dataset != group_b[0].dataset:
        raise FmaeError(f"A is a {group_a[0].dataset} group, B a {group_b[0].dataset} one: a paired comparison "
                        "needs the same test frames")
    cells_a, cells_b = _cells(group_a), _cells(group_b)
    both = sorted(set(cells_a) & set(cells_b), key=lambda c: (c[1], c[0] or 0))
    pairs = [CellPair(f, s, cells_a[(f, s)].info.path, cells_b[(f, s)].info.path) for f, s in both]
    result = compare_cells(pairs, group_a[0].dataset, metrics=metrics, draws=draws, seed=seed, names=(name_a, name_b))
    for name, cells in ((name_a, cells_a), (name_b, cells_b)):
        extra = len(set(cells) - set(both))
        if extra:
            result.notes.insert(0, f"{name}: {extra} cell{'s' if extra > 1 else ''} the other group lacks, left out")
    return result


def compare_rows(runs_dir: Path, row: Any, baseline: Any, *, metric: str = "f1", draws: int = 2000,
                 seed: int = 0) -> MetricDelta:
    """The Results screen's pinned-baseline Δ with its interval: two `GroupRow`s of one AU report
    (their samples name each cell's run), compared over the cells both hold on `metric`."""
    def cells(r: Any) -> dict[tuple[int | None, int], str]:
        return {(fold, smp.seed): run for smp in r.samples for fold, run in zip(smp.folds or [None], smp.runs)}

    mine, base = cells(row), cells(baseline)
    both = sorted(set(mine) & set(base), key=lambda c: (c[1], c[0] or 0))
    runs_dir = Path(runs_dir)
    pairs = [CellPair(f, s, runs_dir / mine[(f, s)], runs_dir / base[(f, s)]) for f, s in both]
    return compare_cells(pairs, row.dataset, metrics=[metric], draws=draws, seed=seed,
                         names=(row.label, baseline.label)).metrics[0]
