"""The completeness grid of a results group: which (fold, seed) cells are done, running, queued, failed,
cancelled or missing, and the `fmae queue add` matrices that queue exactly the missing cells.

A matrix's command repeats the group's config (model, recipe, λ, and every other value its runs share
that `fmae queue add` would not choose by itself, as --epochs / --set), so the queue's dedupe recognises
the runs it adds as the same experiment; the app's "queue missing" clones the group's newest run into
each cell instead (`fmae.study.queue_missing`). No torch: the app imports this.
"""

from __future__ import annotations

import json
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import tomlkit

from fmae.registry import get_dataset
from fmae.run_spec import same_value
from fmae.study import MATRIX_KEYS, command_options
from fmae.report.scoring import RunRef, group_label, num

if TYPE_CHECKING:
    from fmae.config import ProjectConfig

CELL_STATES = ("done", "running", "queued", "failed", "cancelled", "missing")  # a cell shows the first it has
SYMBOLS = {"done": "✓", "running": "▶", "queued": "…", "failed": "✗", "cancelled": "⊘", "missing": "·"}
_RANK = {s: i for i, s in enumerate(CELL_STATES)}
def _set_text(value: Any) -> str:
    """A value as `--set key=VALUE` reads it back (TOML, or bare text when that reads back the same)."""
    if isinstance(value, str):
        from fmae.config import parse_set_options

        return value if parse_set_options([f"v={value}"])["v"] == value else json.dumps(value)
    return tomlkit.item(value).as_string()


@dataclass
class Matrix:
    """One `fmae queue add` call: folds × seeds of one group (FER: seeds). `options` are the further
    config values it must pass (epochs, and --set pairs)."""

    dataset: str
    folds: list[int] | None
    seeds: list[int]
    model: str
    recipe: str
    lambda_id: float | None
    options: dict[str, Any] = field(default_factory=dict)
    template: str = ""  # the group's newest run: the app's "queue missing" clones it (fmae.study.queue_missing)

    def argv(self, extra: Iterable[str] = ()) -> list[str]:
        argv = ["fmae", "queue", "add", self.dataset]
        if self.folds is not None:
            argv += ["--folds", ",".join(map(str, self.folds))]
        argv += ["--seeds", ",".join(map(str, self.seeds))]
        if self.lambda_id is not None:
            argv += ["--lambdas", num(float(self.lambda_id))]
        argv += ["--model", self.model, "--recipe", self.recipe]
        for key, value in sorted(self.options.items(), key=lambda kv: (kv[0] != "epochs", kv[0])):
            argv += ["--epochs", str(value)] if key == "epochs" else ["--set", f"{key}={_set_text(value)}"]
        return argv + list(extra)

    def command(self, extra: Iterable[str] = ()) -> str:
        """The shell command, quoted: copy, paste, run."""
        return shlex.join(self.argv(extra))

    def cells(self) -> int:
        return len(self.folds or [None]) * len(self.seeds)

    def cell_labels(self) -> list[str]:
        """Each cell this matrix adds, as the queue names it ("fold 3 seed 0 λ 2")."""
        lam = "" if self.lambda_id is None else f" λ {num(float(self.lambda_id))}"
        if self.folds is None:
            return [f"seed {s}" for s in self.seeds]
        return [f"fold {f} seed {s}{lam}" for s in self.seeds for f in self.folds]


@dataclass
class Grid:
    task: str
    dataset: str
    fields: tuple
    folds: list[int | None]  # [None] for FER (one split)
    seeds: list[int]  # the seeds the group's runs used ∪ those the user widened the grid with
    cells: dict[tuple[int | None, int], str]  # (fold, seed) -> one of CELL_STATES
    runs: dict[tuple[int | None, int], list[str]]  # the cell's run ids, oldest first
    to_add: list[Matrix]  # queue exactly the missing cells
    retry: list[str]  # the newest failed / cancelled run of each cell that has nothing better
    exact: bool  # the matrices reproduce the group's config (the queue will see them as the same runs)
    mixed: list[str] = field(default_factory=list)  # config keys on which the group's runs differ

    @property
    def label(self) -> str:
        return group_label(self.fields)

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(CELL_STATES, 0)
        for state in self.cells.values():
            found[state] += 1
        return found

    def missing(self) -> list[tuple[int | None, int]]:
        return [cell for cell, state in self.cells.items() if state == "missing"]

    def commands(self, extra: Iterable[str] = ()) -> list[str]:
        extra = list(extra)
        return [m.command(extra) for m in self.to_add]

    def summary(self) -> str:
        c = self.counts()
        return ", ".join(f"{n} {s}" for s, n in c.items() if n) + f" of {len(self.cells)} cells"

    def to_dict(self, extra: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "group": self.label, "fields": dict(self.fields), "folds": self.folds, "seeds": self.seeds,
            "cells": [{"fold": f, "seed": s, "state": self.cells[(f, s)], "runs": self.runs.get((f, s), [])}
                      for s in self.seeds for f in self.folds],
            "counts": self.counts(), "queue_commands": self.commands(extra), "retry": self.retry,
            "exact": self.exact, "mixed": self.mixed,
        }


def completeness(refs: Iterable[RunRef], *, seeds: Iterable[int] = (), project: ProjectConfig | None = None) -> list[Grid]:
    """One grid per AU / FER group of `refs` (runs in any state): the benchmark's folds × the seeds its
    runs used, plus `seeds` when the user widens it (never fmae.toml's defaults by themselves: a grid
    must not ask for seeds nobody chose). With `project` the queue commands carry every config value the
    project's resolution would otherwise choose differently."""
    groups: dict[tuple, list[RunRef]] = defaultdict(list)
    for ref in refs:
        if ref.task in ("au", "fer"):
            groups[ref.key].append(ref)
    grids = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], [(n, str(v)) for n, v in k[2]])):
        task, dataset, fields = key
        members = sorted(groups[key], key=lambda r: r.id)
        spec = get_dataset(dataset)
        folds: list[int | None] = list(range(1, spec.num_folds + 1)) if task == "au" else [None]
        seed_list = sorted({r.seed for r in members} | {int(s) for s in seeds})
        cells = {(f, s): "missing" for s in seed_list for f in folds}
        runs: dict[tuple, list[str]] = defaultdict(list)
        newest_failed: dict[tuple, str] = {}
        for r in members:
            cell = (r.fold, r.seed)
            runs[cell].append(r.id)
            if _RANK.get(r.state, len(CELL_STATES)) < _RANK[cells[cell]]:
                cells[cell] = r.state
            if r.state in ("failed", "cancelled"):
                newest_failed[cell] = r.id
        retry = [newest_failed[c] for c in sorted(newest_failed, key=lambda c: (c[1], c[0] or 0))
                 if cells[c] in ("failed", "cancelled")]
        common, mixed = _common_config([r.info.config for r in members])
        f = dict(fields)
        lam = f.get("lambda_id") if task == "au" else None
        if project is None:  # no fmae.toml to resolve against: the group's epochs, not exact
            options, exact = ({"epochs": common["epochs"]} if "epochs" in common else {}), False
        else:
            options, exact = command_options(project, common, task=task, dataset=dataset, model=str(f["model"]),
                                             recipe=str(f["recipe"]), lambda_id=lam)
        by_folds: dict[tuple, list[int]] = defaultdict(list)
        for s in seed_list:
            gone = tuple(fold for fold in folds if cells[(fold, s)] == "missing")
            if gone:
                by_folds[gone].append(s)
        to_add = [Matrix(dataset, list(fs) if task == "au" else None, ss, str(f["model"]), str(f["recipe"]),
                         None if lam is None else float(lam), dict(options), str(members[-1].info.path))
                  for fs, ss in by_folds.items()]
        grids.append(Grid(task, dataset, fields, folds, seed_list, cells, dict(runs), to_add, retry,
                          exact and not mixed, mixed))
    return grids


def _all_same(values: list[Any]) -> bool:
    first = values[0]
    # Most keys hold one plain value in every run: equal with equal types is the same value, and saves
    # hashing each (10,000 runs × 60 keys); anything else is compared as the queue compares it.
    plain = type(first) in (str, int, bool) or (type(first) is float and first == first)
    if plain and all(type(v) is type(first) and v == first for v in values[1:]):
        return True
    return all(same_value(v, first) for v in values[1:])


def _common_config(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The values every config shares, and the keys (outside the matrix's own) on which they differ."""
    keys = set().union(*configs) - MATRIX_KEYS
    common, mixed = {}, []
    for key in sorted(keys):
        values = [c.get(key) for c in configs]
        if _all_same(values):
            if values[0] is not None:
                common[key] = values[0]
        else:
            mixed.append(key)
    return common, mixed
