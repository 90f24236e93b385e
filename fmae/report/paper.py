"""The published numbers (FMAE / FMAE-IAT and the baselines the paper lists), shipped as data.

`paper_results.csv` beside this module holds one published value a line; `paper_rows(dataset)` gives
one `PaperRow` per method with the same column names as fmae's own report rows: "AU1"… and "avg" for
the AU benchmarks (per-AU F1 in %, averaged over the folds, each fold at its test-tuned threshold),
"top1" for FER (top-1 accuracy in %). No numpy, no torch: the app reads this.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from importlib import resources

from fmae.errors import FmaeError
from fmae.metric_catalogue import ACCURACY, F1_BEST

PAPER_FILE = "paper_results.csv"
OURS = ("FMAE", "FMAE-IAT")  # the paper's own methods ("ours" in its tables)
# What the published AU numbers are: the paper's F1, tuned on each test fold.
PAPER_F1_LABEL = f"{F1_BEST.title}, averaged over folds"
PAPER_ACC_LABEL = ACCURACY.name


@dataclass(frozen=True)
class PaperRow:
    dataset: str  # fmae's benchmark name (bp4d, bp4d_plus, disfa, rafdb, affectnet8)
    method: str  # FMAE, FMAE-IAT, MDHR, …
    venue: str  # "ours" for the paper's own methods, else where the baseline was published
    metric: str  # "f1" (AU) or "acc" (FER)
    values: dict[str, float] = field(default_factory=dict)  # column -> value in %; absent = not published

    @property
    def label(self) -> str:
        return f"paper: {self.method}" + ("" if self.venue == "ours" else f" ({self.venue})")

    @property
    def metric_label(self) -> str:
        return PAPER_F1_LABEL if self.metric == "f1" else PAPER_ACC_LABEL


def parse_paper_csv(text: str, source: str = PAPER_FILE) -> list[PaperRow]:
    """Rows of `benchmark,method,venue,metric,key,value` (lines starting with # are comments)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    want = {"benchmark", "method", "venue", "metric", "key", "value"}
    if not want <= set(reader.fieldnames or ()):
        raise FmaeError(f"{source}: needs the columns {', '.join(sorted(want))}")
    rows: dict[tuple[str, str], PaperRow] = {}
    for i, rec in enumerate(reader, start=2):
        try:
            value = float(rec["value"])
        except (TypeError, ValueError):
            raise FmaeError(f"{source}: data line {i}: value {rec['value']!r} is not a number") from None
        key = (rec["benchmark"], rec["method"])
        row = rows.setdefault(key, PaperRow(rec["benchmark"], rec["method"], rec["venue"], rec["metric"], {}))
        column = "top1" if rec["key"] == "top1" else rec["key"]
        row.values[column] = value
    return list(rows.values())


@functools.lru_cache(maxsize=1)
def all_paper_rows() -> tuple[PaperRow, ...]:
    text = resources.files("fmae.report").joinpath(PAPER_FILE).read_text(encoding="utf-8")
    return tuple(parse_paper_csv(text))


def paper_rows(dataset: str) -> list[PaperRow]:
    """The published rows for one benchmark, the paper's own methods first; [] when it has none."""
    rows = [r for r in all_paper_rows() if r.dataset == dataset]
    return sorted(rows, key=lambda r: (r.venue != "ours", OURS.index(r.method) if r.method in OURS else 0))


def find_method(dataset: str, method: str) -> PaperRow:
    """The row of `method` (any case) for `dataset`, or FmaeError listing the methods there are."""
    rows = paper_rows(dataset)
    for row in rows:
        if row.method.lower() == method.strip().lower():
            return row
    names = ", ".join(r.method for r in rows) or "none"
    raise FmaeError(f"--vs {method}: the paper lists no such method for {dataset} (it has: {names})")
