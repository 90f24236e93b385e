"""What the app tells about runs while it is open, whatever screen is on top: a run that ends `done` or
`failed`, or fails on a non-finite loss, becomes a toast naming the run and what happened (and the
terminal bell where fmae.toml says `[app] bell = true`).

`RunAlerts.look()` is one look at the runs folder (`RunScanner`: a listing and a stat per run, only the
changed runs read again), run in a thread worker every few seconds. The events are the scheduler's own
(`fmae.notify.event_of`), so the app's toast and the `[scheduler] notify` command say the same thing.
Runs already ended when the app opened are not told again."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fmae.notify import event_of
from fmae.run_watch import RunScanner
from fmae.runs import RunInfo, parse_utc
from fmae.summary import as_summary
from fmae_tui.run_kind import METRIC_LONG, headline, headline_at

WHAT = {"done": "run done", "failed": "run failed", "nonfinite_loss": "non-finite loss"}


@dataclass(frozen=True)
class RunAlert:
    run_id: str
    event: str  # fmae.notify's: done, failed, nonfinite_loss
    detail: str  # one line: its headline number, or the error

    @property
    def title(self) -> str:
        return WHAT[self.event]

    @property
    def severity(self) -> str:
        return "information" if self.event == "done" else "error"

    @property
    def timeout(self) -> float:
        """Seconds on screen: a finished run is news for a moment (it sits over the title); a failure longer."""
        return 4.0 if self.event == "done" else 10.0

    @property
    def message(self) -> str:
        return f"{self.run_id}\n{self.detail}"


def _detail(info: RunInfo) -> str:
    if info.state != "done":
        return info.status.get("error") or f"{info.state} (no reason given)"
    summary = as_summary(info.summary)
    value, _ = headline(summary)
    if value is None:
        return "done"
    _, epoch = headline_at(summary)
    which = "epoch" if summary.best_value is None else "best epoch"
    return f"{METRIC_LONG.get(str(summary.metric), summary.metric)} {value:.3f} ({which} {epoch})"


class RunAlerts:
    def __init__(self, runs_dir: Path) -> None:
        # headlines only (10,000 runs' per-AU tables stay on disk); the runs index is the Runs screen's to write
        self.scanner = RunScanner(runs_dir, slim=True, writes_index=False)
        self.since = time.time()
        self._seen: dict[str, RunInfo] = {}  # run id -> the run as last seen
        # Looks that found a run come, gone, or with another state or summary: what the Results screen
        # rebuilds on (a heartbeat every few seconds moves neither).
        self.changes = 0

    def look(self) -> list[RunAlert]:
        """The runs that ended since the last look (or, on the first, since the app opened)."""
        changed, removed = self.scanner.scan()
        seen = self._seen
        moved = bool(removed)
        alerts = []
        for info, _, _ in changed:
            last = seen.get(info.id)
            seen[info.id] = info
            before = None if last is None else last.state
            # a summary compared only for a run read again (a first look leaves 100,000 of them unparsed)
            moved = moved or before != info.state or last.summary != info.summary
            if before == info.state:
                continue
            ended = parse_utc(info.status.get("ended"))
            if before is None and (ended is None or ended < self.since):
                continue  # first seen, and ended before the app opened (or copied in): not news
            event = event_of(info.state, info.status.get("error"))
            if event is not None:
                alerts.append(RunAlert(info.id, event, _detail(info)))
        for run_id in removed:
            seen.pop(run_id, None)
        self.changes += moved
        return alerts
