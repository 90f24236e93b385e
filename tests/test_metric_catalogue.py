"""The metric catalogue: a test-tuned number says so wherever it is named at length, and the report, the
app's tables and the trainer's log line call each number by the catalogue's labels."""

from __future__ import annotations

from fmae.metric_catalogue import AU_METRICS, METRICS, REPORT_METRICS, TUNED_TAG
from fmae.report.scoring import METRICS as REPORT_COLUMNS
from fmae.report.scoring import Scoring
from fmae_tui.screens.results import METRIC_NAMES
from fmae_tui.run_kind import METRIC_LONG, METRIC_SHORT
from fmae_tui.widgets.scores_table import AU_COLUMNS


def test_test_tuned_numbers_say_so_and_only_they_do():
    for m in METRICS.values():
        assert (TUNED_TAG in m.long) == m.tuned_on_test == (TUNED_TAG in m.title), m.key
    assert [m.key for m in METRICS.values() if m.tuned_on_test] == ["f1_best_mean"]
    assert [m.key for m in METRICS.values() if not m.higher_is_better] == ["loss"]


def test_the_report_and_the_app_use_the_catalogues_labels():
    assert list(REPORT_METRICS) == ["f1", "f1_best", "auc"] == list(METRIC_NAMES)
    for name, m in REPORT_METRICS.items():
        assert REPORT_COLUMNS[name] == (m.per_au, m.title) and METRIC_NAMES[name] == m.title
        assert Scoring(metric=name).value_label("au") == f"{m.title} (%)"
    assert AU_COLUMNS == (("f1_05", "F1@0.5"), ("f1_best", "F1 best-thr"), ("auc", "AUC"))
    assert [c for c, _ in AU_COLUMNS] == [m.per_au for m in AU_METRICS]
    assert METRIC_SHORT["f1_best_mean"] == "F1 best-thr" and METRIC_LONG["f1_best_mean"] == "F1 best-thr (tuned on test)"
