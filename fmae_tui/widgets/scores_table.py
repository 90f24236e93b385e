"""The best epoch's scores: per AU (F1@0.5, F1 at the best threshold, AUC), per class (recall), or the
plain numbers of a probe, from a test record of summary.json."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from fmae.metric_catalogue import AU_METRICS

AU_COLUMNS = tuple((m.per_au, m.short) for m in AU_METRICS)


def _fmt(value: Any) -> Text:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Text(f"{value:.3f}", justify="right")
    return Text("-", justify="right")


class ScoresTable(DataTable):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.kind = ""  # "au", "fer", "plain" or "" (nothing shown)

    def show(self, record: dict[str, Any] | None) -> None:
        """Rebuild from a test record (a dozen rows at most: no need to patch)."""
        cursor = self.cursor_row
        self.clear(columns=True)
        record = record or {}
        if isinstance(record.get("f1_05"), dict):
            self.kind = "au"
            self.add_column("AU", key="au")
            for key, label in AU_COLUMNS:
                self.add_column(label, key=key)
            per_au = {key: record.get(key) if isinstance(record.get(key), dict) else {} for key, _ in AU_COLUMNS}
            for au in record["f1_05"]:
                self.add_row(Text(au, "bold"), *(_fmt(per_au[key].get(au)) for key, _ in AU_COLUMNS), key=au)
            self.add_row(Text("mean", "bold"), *(_fmt(record.get(f"{key}_mean")) for key, _ in AU_COLUMNS),
                         key="mean")
        elif isinstance(record.get("per_class_recall"), dict):
            self.kind = "fer"
            self.add_column("class", key="class")
            self.add_column("recall", key="recall")
            for name, value in record["per_class_recall"].items():
                self.add_row(Text(name, "bold"), _fmt(value), key=name)
            self.add_row(Text("mean recall", "bold"), _fmt(record.get("mean_class_recall")), key="mean")
            self.add_row(Text("accuracy", "bold"), _fmt(record.get("accuracy")), key="accuracy")
        elif record:
            self.kind = "plain"
            self.add_column("score", key="score")
            self.add_column("value", key="value")
            for name, value in record.items():
                if name not in ("split", "epoch", "step", "t", "seconds") and isinstance(value, (int, float)):
                    self.add_row(Text(name, "bold"), _fmt(value), key=name)
        else:
            self.kind = ""
        if self.row_count:
            self.move_cursor(row=min(cursor, self.row_count - 1), scroll=False)
