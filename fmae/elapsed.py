"""Seconds as the few characters a table cell or a line says them in: an age ("3h") and a duration
("3m05s"). Their own module, importing nothing: the app's Runs screen draws both in every row, and its
first paint should not wait on the queue's modules to get them."""

from __future__ import annotations

from typing import Optional


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration(seconds: Optional[float]) -> str:
    """"42s", "3m05s", "1h20m"; "-" when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
