"""Per-AU F1 over epochs: one row per AU, its F1@0.5 and F1 at the best threshold (tuned on test) as a
curve of block characters over the epochs, with the first, last and best values in numbers. Twelve AUs'
curves on one plot are a tangle at 80 columns; a row each reads at any size."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from fmae.metric_catalogue import F1_05, F1_BEST

BLOCKS = "▁▂▃▄▅▆▇█"
SERIES = ((F1_05.per_au, F1_05.short), (F1_BEST.per_au, F1_BEST.long))


def spark(values: list[float | None], lo: float = 0.0, hi: float = 1.0) -> str:
    """One character per value on a fixed 0–1 scale (F1), so rows compare; "·" where an epoch lacks it."""
    out = []
    for v in values:
        if v is None:
            out.append("·")
            continue
        f = 0.0 if hi <= lo else (min(hi, max(lo, v)) - lo) / (hi - lo)
        out.append(BLOCKS[min(len(BLOCKS) - 1, int(f * len(BLOCKS)))])
    return "".join(out)


def _value(record: dict[str, Any], key: str, au: str) -> float | None:
    per = record.get(key)
    v = per.get(au) if isinstance(per, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def per_au_table(records: list[dict[str, Any]], width: int = 80) -> Table | Text:
    """The table for the test records of a run (one per evaluated epoch, in order)."""
    records = [r for r in records if isinstance(r.get("f1_05"), dict)]
    if not records:
        return Text("no per-AU scores yet: they appear after the first test epoch (AU runs only)", style="dim")
    aus = list(records[-1]["f1_05"])
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    shown = max(4, (width - 40) // 2)  # characters of curve per series that fit
    records = records[-shown:]
    table = Table(box=None, padding=(0, 1), header_style="bold", caption_justify="left",
                  caption=f"{F1_BEST.short}: each AU's threshold tuned on the test fold (the paper's); "
                          "curves on a fixed 0–1 scale, one character an epoch")
    table.add_column("AU", style="bold", no_wrap=True)
    for key, label in SERIES:
        table.add_column(f"{label.split(' (')[0]} e{epochs[-len(records)]}→{epochs[-1]}", no_wrap=True)
        table.add_column("last", justify="right", no_wrap=True)
        table.add_column("best (epoch)", justify="right", no_wrap=True)
    for au in aus:
        cells: list[str] = [au]
        for key, _ in SERIES:
            values = [_value(r, key, au) for r in records]
            known = [(v, r.get("epoch")) for v, r in zip(values, records) if v is not None]
            cells.append(spark(values))
            cells.append(f"{values[-1]:.3f}" if values[-1] is not None else "-")
            if known:
                best, at = max(known, key=lambda p: p[0])
                cells.append(f"{best:.3f} ({at})")
            else:
                cells.append("-")
        table.add_row(*cells)
    return table
