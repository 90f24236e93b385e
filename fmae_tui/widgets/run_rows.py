"""What the Runs table keeps of each run and how it filters and sorts them: `RunRow` (made in the look's
worker thread by `run_rows`: the summary parsed once, the filter text, the headline), the filter words
(`parse_filter`, `matches`) and the sort keys (`SORTS`). The table and its cells are runs_table.py."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from fmae.elapsed import age
from fmae.run_watch import slim_summary
from fmae.runs import RunInfo, parse_utc
from fmae.summary import as_summary
from fmae_tui.run_kind import KINDS, METRIC_SHORT, headline, is_degenerate, kind_label, number, run_kind

STATE_RANK = {s: i for i, s in enumerate(("running", "queued", "failed", "corrupt", "cancelled", "done"))}
FIELD_ALIASES = {"state": "state", "dataset": "dataset", "ds": "dataset", "model": "model", "λ": "lambda",
                 "l": "lambda", "lambda": "lambda", "lambda_id": "lambda", "fold": "fold", "seed": "seed",
                 "tag": "tag", "tags": "tag", "task": "task", "kind": "kind", "recipe": "recipe"}


def ago(seconds: float | None) -> str:
    """"3h" as the Queue screen and `fmae queue ls` say an age; "-" when unknown."""
    return "-" if seconds is None else age(seconds)


def progress(info: RunInfo) -> tuple[int | None, int | None]:
    """(epoch, epochs) from status.json, epochs falling back on the config's."""
    epoch, epochs = info.status.get("epoch"), info.status.get("epochs") or info.config.get("epochs")
    return (epoch if isinstance(epoch, int) else None), (epochs if isinstance(epochs, int) else None)


def duration_s(info: RunInfo, now: float) -> float | None:
    """Seconds from start to end (to the last heartbeat, or now, while it runs); None before it starts."""
    started = parse_utc(info.status.get("started"))
    if started is None:
        return None
    end = parse_utc(info.status.get("ended"))
    if end is None:
        end = now if info.state == "running" else parse_utc(info.status.get("heartbeat"))
    return None if end is None else max(0.0, end - started)


def parse_filter(text: str) -> list[tuple[str | None, str]]:
    """Terms that must all match: `field:value` (state, dataset, model, λ, fold, seed, tag, task, kind,
    recipe) or text."""
    terms: list[tuple[str | None, str]] = []
    for word in text.lower().split():
        field, sep, value = word.partition(":")
        if sep and field in FIELD_ALIASES and value:
            terms.append((FIELD_ALIASES[field], value))
        elif not (sep and not value):  # "state:" while still typing: no term yet
            terms.append((None, word))
    return terms


def haystack(info: RunInfo, tags: list[str]) -> str:
    """What a plain filter word is looked for in: the id, state, kind, config values, tags and problem."""
    c = info.config
    return " ".join([info.id, info.state, kind_label(c, wide=True), *map(str, c.values()), *tags,
                     info.problem or "", str(info.status.get("error", ""))]).lower()


def matches(info: RunInfo, tags: list[str], terms: list[tuple[str | None, str]], hay: str | None = None) -> bool:
    c = info.config
    for field, value in terms:
        if field == "state":
            ok = info.state.startswith(value)
        elif field in ("dataset", "model", "task", "recipe"):
            ok = str(c.get(field, "")).lower() == value
        elif field == "kind":
            ok = value in (run_kind(c), kind_label(c).lower(), kind_label(c, wide=True).lower())
        elif field == "tag":
            ok = value in (t.lower() for t in tags)
        elif field in ("lambda", "fold", "seed"):
            have = number(c.get("lambda_id" if field == "lambda" else field))
            ok = have is not None and have == number(value)
        else:
            if hay is None:
                hay = haystack(info, tags)
            ok = value in hay
        if not ok:
            return False
    return True


def _cell_key(info: RunInfo) -> tuple:
    c = info.config
    return (number(c.get("fold")) or -1.0, number(c.get("seed")) or -1.0, number(c.get("lambda_id")) or -1.0)


def _some(value: float | None) -> tuple[bool, float]:
    return value is not None, value or 0.0  # runs without the number sort after those with it


# Ties keep newest first.
# column -> (key on (info, now, images/s, headline value), whether the first press sorts descending).
SORTS: dict[str, tuple[Callable[[RunInfo, float, float | None, float | None], Any], bool]] = {
    "age": (lambda i, now, r, h: 0, False),  # creation order: see _order
    "state": (lambda i, now, r, h: STATE_RANK.get(i.state, 9), False),
    "kind": (lambda i, now, r, h: run_kind(i.config), False),
    "dataset": (lambda i, now, r, h: str(i.config.get("dataset", "~")), False),
    "cell": (lambda i, now, r, h: _cell_key(i), False),
    "model": (lambda i, now, r, h: str(i.config.get("model", "~")), False),
    "recipe": (lambda i, now, r, h: str(i.config.get("recipe", "~")), False),
    "epoch": (lambda i, now, r, h: (progress(i)[0] or 0) / max(1, progress(i)[1] or 1), True),
    "result": (lambda i, now, r, h: _some(h), True),
    "duration": (lambda i, now, r, h: _some(duration_s(i, now)), True),
    "rate": (lambda i, now, r, h: _some(r), True),
}
SORT_ORDER = tuple(SORTS)  # what `s` cycles through


@dataclass(frozen=True)
class RunRow:
    """What the table keeps of one run, made where the run was read (a worker thread): the run with a
    slim summary, its tags and images/s, its headline (value, label, degenerate), filter text, creation."""

    info: RunInfo
    tags: list[str]
    rate: float | None
    head: tuple[float | None, str, bool]
    hay: str
    created: float | None


# What a scanner's `extras` hold of a run for the Runs table: [headline value, its label, degenerate,
# created, filter text], under this tag (bumped when one is made otherwise; the labels and kinds in it,
# so that a renamed one is not shown from an old index).
EXTRAS_TAG = f"run-rows 2 {zlib.crc32(repr((sorted(METRIC_SHORT.items()), sorted(KINDS.items()))).encode()):08x}"


def _extra(extra: Any) -> tuple[tuple[float | None, str, bool], float | None, str] | None:
    if isinstance(extra, list) and len(extra) == 5:
        value, label, degenerate, created, hay = extra
        if (value is None or type(value) is float) and type(label) is str and type(degenerate) is bool and (
                created is None or type(created) is float) and type(hay) is str:
            return (value, label, degenerate), created, hay
    return None


def run_rows(changed: Iterable[tuple], extras: dict[str, Any] | None = None) -> list[RunRow]:
    """(info, tags[, images/s]) tuples, as `RunScanner.scan` gives them, as RunRows: the summary parsed
    once, here, not at every draw and sort. With the scanner's `extras`, the headline, creation and filter
    text come from there where the runs index kept them (making them for 100,000 runs was ~1 CPU-s), and
    go there where they were made."""
    out = []
    for info, tags, *rate in changed:
        known = _extra(extras.get(info.id)) if extras is not None else None
        if known is None:
            slim = slim_summary(info.summary)
            if slim is not info.summary:
                info = replace(info, summary=slim)
            summary = as_summary(slim)
            value, label = headline(summary)
            head = (None if value is None else float(value), label, bool(is_degenerate(summary)))
            created, hay = parse_utc(info.status.get("created")), haystack(info, tags)
            if extras is not None:
                extras[info.id] = [*head, created, hay]
        else:  # a slim scanner's run (only one keeps extras), its summary left unread (see IndexedRun)
            head, created, hay = known
        out.append(RunRow(info, tags, float(rate[0]) if rate and rate[0] is not None else None, head, hay, created))
    return out
