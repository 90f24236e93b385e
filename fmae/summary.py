"""`summary.json`'s shape, in one place: the trainer writes a `Summary` at every evaluation, and the report,
the CLI, prediction and the app read one back. Torch-free (the app reads it).

`from_json` takes whatever a release wrote: a missing key is None, a record that is not an object is
None, a number that is not a finite number is None, and keys this release does not know are kept in
`extra` and written back unchanged, so a summary survives a round trip through an older or newer fmae.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from fmae.metric_catalogue import Metric, metric

if TYPE_CHECKING:
    from fmae.runs import RunDir

GRID_EDGES = (0.01, 0.99)  # the best-threshold grid's first and last values (metrics.THRESHOLDS)


def degenerate_threshold(threshold: float | None) -> bool:
    """True when a tuned threshold sits at the grid's edge (0.01 or 0.99).

    There the model predicts every AU present (or none): its best-threshold F1 is the all-positive F1,
    not evidence of learning.
    """
    if threshold is None or not math.isfinite(threshold):
        return False
    # a Python bool: numpy's would go into checkpoints, which a weights_only load refuses
    return bool(threshold <= GRID_EDGES[0] + 1e-9 or threshold >= GRID_EDGES[1] - 1e-9)


def degenerate_scores(threshold: float | None, f1_best_mean: float | None, f1_all_positive_mean: float | None) -> bool:
    """True when the tuned threshold found nothing the trivial answers do not: it sits at the grid's edge,
    or its F1 is no better than predicting every AU present (a threshold below every probability, e.g.
    0.13 after a run that never left chance)."""
    if degenerate_threshold(threshold):
        return True
    if f1_best_mean is None or f1_all_positive_mean is None:
        return False
    if not (math.isfinite(f1_best_mean) and math.isfinite(f1_all_positive_mean)):
        return False
    return bool(f1_best_mean <= f1_all_positive_mean + 1e-9)


# Written at the top of an AU summary, from the best epoch's record (or the last, before a best exists).
AU_FLAGS = ("degenerate", "f1_all_positive_mean")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _record(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


@dataclass
class Summary:
    """A run's final and best numbers. `best` and `last` are test records as metrics.jsonl holds them
    (per-AU dicts keyed by AU code); pretraining has no test split, so its `best` is None and its `last`
    is the last epoch's training record."""

    run_id: str | None = None
    task: str | None = None
    dataset: str | None = None
    fold: int | None = None
    seed: int | None = None
    model: str | None = None
    recipe: str | None = None
    lambda_id: float | None = None
    metric: str | None = None  # the record key the best epoch is chosen by (the metric catalogue's key)
    metric_label: str | None = None  # the task's own words for it
    epochs: int | None = None  # planned
    epochs_done: int | None = None
    step: int | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    degenerate: bool | None = None  # AU runs: the best epoch's best threshold at the grid's edge
    f1_all_positive_mean: float | None = None  # AU runs: the F1 of predicting every AU present
    extra: dict[str, Any] = field(default_factory=dict)

    # --- reading and writing --------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        known = _KNOWN.get(cls) or _KNOWN.setdefault(cls, frozenset(f.name for f in fields(cls)) - {"extra"})
        d = data if isinstance(data, dict) else {}
        return cls(
            run_id=_str(d.get("run_id")), task=_str(d.get("task")), dataset=_str(d.get("dataset")),
            fold=_int(d.get("fold")), seed=_int(d.get("seed")), model=_str(d.get("model")),
            recipe=_str(d.get("recipe")), lambda_id=_float(d.get("lambda_id")),
            metric=_str(d.get("metric")), metric_label=_str(d.get("metric_label")),
            epochs=_int(d.get("epochs")), epochs_done=_int(d.get("epochs_done")), step=_int(d.get("step")),
            best_epoch=_int(d.get("best_epoch")), best_value=_float(d.get("best_value")),
            best=_record(d.get("best")), last=_record(d.get("last")),
            degenerate=d["degenerate"] if isinstance(d.get("degenerate"), bool) else None,
            f1_all_positive_mean=_float(d.get("f1_all_positive_mean")),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys in the order this release has always written them; the AU flags only
        where the run has them."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", *AU_FLAGS)}
        out.update({k: getattr(self, k) for k in AU_FLAGS if getattr(self, k) is not None})
        out.update(self.extra)
        return out

    @classmethod
    def read(cls, run: RunDir) -> Summary | None:
        """The run's summary.json, or None before its first evaluation. FmaeError (one line, naming the
        file) when it is not JSON."""
        data = run.read_summary()
        return None if data is None else cls.from_json(data)

    def write(self, run: RunDir) -> None:
        run.write_summary(self.to_json())  # atomic: a failure keeps the old file

    # --- what readers ask of it -----------------------------------------------------------------------
    def record(self, which: str) -> dict[str, Any] | None:
        """The `best` or `last` test record."""
        if which not in ("best", "last"):
            raise ValueError(f"record {which!r}: best or last")
        return self.best if which == "best" else self.last

    @property
    def catalogue_entry(self) -> Metric | None:
        return metric(self.metric or "")

    def headline(self) -> tuple[float | None, Any]:
        """(the number that sums the run up, its epoch): the best epoch's value, else — pretraining, which
        has no best — the last record's value of the metric; the epoch is "?" where the summary lacks it."""
        if self.best_value is not None:
            return self.best_value, self.best_epoch if self.best_epoch is not None else "?"
        last = self.last or {}
        return _float(last.get(self.metric or "")), last.get("epoch", "?")

    @property
    def best_threshold(self) -> float | None:
        return _float((self.best or {}).get("best_threshold"))


_KNOWN: dict[type, frozenset[str]] = {}  # the fields of each class: `fields()` is slow at 10,000 reads a report


def as_summary(data: Summary | dict[str, Any] | None) -> Summary:
    """A `Summary` from either form (an empty one for None): for readers handed a RunInfo's raw JSON."""
    if isinstance(data, Summary):
        return data
    return Summary.from_json(data or {})
