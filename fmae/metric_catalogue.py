"""Every number fmae reports, once: its record key, its labels, which way is better, and whether it was
tuned on the test fold. The trainer's log lines, the report, the CLI and the app read their labels here,
so a number is called the same everywhere. No imports beyond the standard library: the app reads this.

Three labels, because the places differ in room: `short` for a table cell ("F1 best-thr"), `long` for a
line of text ("F1 best-thr (tuned on test)"), `title` for a table's heading or a report's value label
("F1 best-threshold (tuned on test)"). A test-tuned number carries "(tuned on test)" in `long` and `title`.
"""

from __future__ import annotations

from dataclasses import dataclass

TUNED_TAG = "(tuned on test)"


@dataclass(frozen=True)
class Metric:
    key: str  # the record key in metrics.jsonl and summary.json: "f1_best_mean"
    short: str  # a table cell: "F1 best-thr"
    long: str  # a line of text: "F1 best-thr (tuned on test)"
    name: str  # the full name without the tuned-on-test tag: "F1 best-threshold"
    higher_is_better: bool = True
    tuned_on_test: bool = False  # chosen with the test fold's labels (the paper's F1): never a plain F1
    per_au: str | None = None  # the per-AU dict the mean is over ("f1_best"), for AU metrics
    option: str | None = None  # its name under `fmae report --metric` and the Results screen's `m`

    @property
    def title(self) -> str:
        return f"{self.name} {TUNED_TAG}" if self.tuned_on_test else self.name


F1_05 = Metric("f1_05_mean", "F1@0.5", "F1@0.5", "F1@0.5", per_au="f1_05", option="f1")
F1_BEST = Metric("f1_best_mean", "F1 best-thr", f"F1 best-thr {TUNED_TAG}", "F1 best-threshold",
                 tuned_on_test=True, per_au="f1_best", option="f1_best")
AUC = Metric("auc_mean", "AUC", "AUC", "ROC AUC", per_au="auc", option="auc")
ACCURACY = Metric("accuracy", "acc", "accuracy", "top-1 accuracy")
LOSS = Metric("loss", "loss", "reconstruction loss", "masked-patch reconstruction loss", higher_is_better=False)

METRICS: dict[str, Metric] = {m.key: m for m in (F1_05, F1_BEST, AUC, ACCURACY, LOSS)}
# `fmae report --metric` names, in the order the help lists them
REPORT_METRICS: dict[str, Metric] = {m.option: m for m in METRICS.values() if m.option}
# The AU table's columns: per AU its F1@0.5, best-threshold F1 and AUC
AU_METRICS = (F1_05, F1_BEST, AUC)


def metric(key: str) -> Metric | None:
    """The catalogue's entry for a record key (summary.json's `metric`), or None for a key it lacks."""
    return METRICS.get(key)


def short_label(key: str) -> str:
    m = METRICS.get(key)
    return m.short if m else key


def long_label(key: str) -> str:
    m = METRICS.get(key)
    return m.long if m else key
