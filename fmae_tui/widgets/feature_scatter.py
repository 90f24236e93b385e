"""The Run screen's feature picture: the 2-D t-SNE points `fmae features` writes beside its PNG (x, y,
subject, path, one 0/1 column per AU), as a terminal scatter coloured by subject or by one AU's presence
(`b` cycles the colouring). The CSV is looked for in the run folder and its features/ folder (the newest
one that has the points' header), and read in a thread worker."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from fmae_tui.screens.base import WorkEnded, in_thread
from fmae_tui.widgets.curve_plot import COLORS, MARKERS

HEADER = ["x", "y", "subject", "path"]
MAX_GROUPS = len(COLORS) * 2  # subjects drawn each in its own colour and mark; the rest as one "other" group


@dataclass
class Points:
    path: Path
    xy: list[tuple[float, float]] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    aus: dict[str, list[int]] = field(default_factory=dict)  # "AU12" -> 0/1 per point


def find_points(run: Path) -> Path | None:
    """The newest CSV of t-SNE points in the run folder or its features/ folder, or None."""
    found = []
    for folder in (run, run / "features"):
        for p in folder.glob("*.csv") if folder.is_dir() else ():
            try:
                with open(p, encoding="utf-8", newline="") as f:
                    head = next(csv.reader(f), [])
            except (OSError, UnicodeDecodeError):
                continue
            if head[:4] == HEADER:
                found.append((p.stat().st_mtime, p))
    return max(found)[1] if found else None


def read_points(run: Path) -> Points | None:
    """The points of the newest CSV (rows that do not parse are skipped), or None when there is none."""
    path = find_points(run)
    if path is None:
        return None
    points = Points(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        head = next(rows)
        au_names = head[4:]
        points.aus = {name: [] for name in au_names}
        for row in rows:
            try:
                x, y = float(row[0]), float(row[1])
                flags = [int(v) for v in row[4:4 + len(au_names)]]
            except (ValueError, IndexError):
                continue
            if len(flags) != len(au_names):
                continue
            points.xy.append((x, y))
            points.subjects.append(row[2])
            for name, v in zip(au_names, flags):
                points.aus[name].append(v)
    return points


class FeatureScatter(Vertical):
    """A line saying what the points are (or why there are none), and the scatter under it."""

    DEFAULT_CSS = """
    FeatureScatter { height: 1fr; }
    FeatureScatter #feature-caption { height: auto; padding: 0 1; }
    FeatureScatter PlotextPlot { height: 1fr; }
    """

    class Read(WorkEnded):
        """The points CSV was looked for and read: `result` is the Points, or None."""

    def __init__(self, run: Path, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.run = Path(run)
        self.points: Points | None = None
        self.colouring = "subject"  # or an AU column's name
        self.looked = False
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("looking for fmae features' points…", "dim"), id="feature-caption")
        yield PlotextPlot()

    def look(self) -> None:
        """Read the newest points CSV again (a worker); the plot follows."""
        in_thread(self, lambda: read_points(self.run), self.Read, group="feature-points", plain=(OSError,))

    def on_feature_scatter_read(self, message: Read) -> None:
        self.looked = True
        self.points = message.result
        self.error = message.error
        self.replot()

    def next_colouring(self) -> str:
        names = ["subject", *(self.points.aus if self.points else [])]
        self.colouring = names[(names.index(self.colouring) + 1) % len(names)] if self.colouring in names else names[0]
        self.replot()
        return self.colouring

    def replot(self) -> None:
        plot = self.query_one(PlotextPlot)
        caption = self.query_one("#feature-caption", Static)
        plt = plot.plt
        plt.clear_data()
        plt.title("")
        p = self.points
        if p is None or not p.xy:
            if self.looked:
                caption.update(Text(self.error or f"no t-SNE points for this run yet: fmae features {self.run} "
                                    "writes them", "dim"))
            plot.refresh()
            return
        if self.colouring == "subject":
            groups: dict[str, list[int]] = {}
            for i, s in enumerate(p.subjects):
                groups.setdefault(s, []).append(i)
            ordered = sorted(groups, key=lambda s: -len(groups[s]))
            named = ordered[:MAX_GROUPS]
            rest = [i for s in ordered[MAX_GROUPS:] for i in groups[s]]
            series = [(MARKERS[1 + k // len(COLORS)], COLORS[k % len(COLORS)], groups[s]) for k, s in enumerate(named)]
            if rest:
                series.append(("·", "gray", rest))
            title = f"coloured by subject ({len(ordered)})"
            legend = "a colour and mark a subject" + (f" (the {MAX_GROUPS} with most frames; · the rest)" if rest else "")
        else:
            flags = p.aus[self.colouring]
            series = [("·", "gray", [i for i, v in enumerate(flags) if not v]),
                      ("x", "red", [i for i, v in enumerate(flags) if v])]
            title = f"coloured by {self.colouring}"
            legend = f"· {self.colouring} absent   x present"
        for marker, colour, idx in series:
            if idx:
                plt.scatter([p.xy[i][0] for i in idx], [p.xy[i][1] for i in idx], marker=marker, color=colour)
        caption.update(Text(f"t-SNE of {len(p.xy)} test frames' encoder features ({p.path.name}), {title}: "
                            f"{legend} · b: next colouring"))
        plt.title(title)
        plot.refresh()
