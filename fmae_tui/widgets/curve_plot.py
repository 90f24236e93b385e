"""A live line plot of a few named series (textual-plotext): set the series, then replot.

The legend is the x axis's label, not a box inside the plot (plotext's box covers the lines it names),
and each series has its own marker as well as its colour, so the legend reads without colour too. A
series of one point is drawn as a visible mark on an axis widened around it (a braille dot alone is
nearly invisible, and a zero-width range draws nothing)."""

from __future__ import annotations

from typing import Sequence

from textual_plotext import PlotextPlot

MAX_POINTS = 600  # per series on screen; longer series are thinned evenly (the last point always kept)
MARKERS = ("braille", "x", "+", "o", "*", "#")  # the first series' line, then one mark per series
LEGEND_MARKS = {"braille": "⣿"}
SHORT = 12  # rows: a plot this short has no x label row
COLORS = ("cyan", "orange", "magenta", "green", "red", "blue")


RICH_COLORS = {"orange": "orange1"}  # plotext's name -> Rich's, for a legend drawn outside the plot


def series_style(slot: int) -> tuple[str, str]:
    """(the mark a legend shows, its Rich colour) of the series drawn in this slot."""
    marker, color = MARKERS[slot % len(MARKERS)], COLORS[slot % len(COLORS)]
    return LEGEND_MARKS.get(marker, marker), RICH_COLORS.get(color, color)


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    step = len(xs) / MAX_POINTS
    keep = sorted({int(i * step) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _around(lo: float, hi: float) -> tuple[float, float]:
    """A range that shows a single value (lo == hi) in the middle."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 0.5
    return lo - pad, hi + pad


class CurvePlot(PlotextPlot):
    def __init__(self, title: str, *, xlabel: str = "epoch", id: str | None = None,  # noqa: A002
                 own_legend: bool = True, ylim: tuple[float, float] | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.xlabel = xlabel
        self.ylim = ylim  # a fixed y range (probabilities: 0-1), else fitted to the data
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.slots: dict[str, int] = {}  # a series' fixed style slot (several plots, one legend beside them)
        self.own_legend = own_legend  # False: the screen shows one legend for several plots
        self.legend = ""  # what the x axis's label says: the series and their marks

    @property
    def points(self) -> int:
        """Points held over all series (what would be drawn before thinning)."""
        return sum(len(xs) for xs, _ in self.series.values())

    def set_series(self, name: str, xs: list[float], ys: list[float], slot: int | None = None) -> None:
        self.series[name] = (xs, ys)
        if slot is not None:
            self.slots[name] = slot

    def clear_series(self) -> None:
        self.series.clear()
        self.slots.clear()

    def on_mount(self) -> None:
        self.replot()

    def on_resize(self) -> None:
        self.replot()  # the legend's place depends on the height

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.xlim(None, None)  # back to automatic: a range widened for one point must not stay
        plt.ylim(None, None)
        drawn = [(name, xs, ys) for name, (xs, ys) in self.series.items() if xs]
        plt.title(self.title if drawn else f"{self.title} (nothing yet)")
        marks = []
        for i, (name, xs, ys) in enumerate(drawn):
            tx, ty = _thin(xs, ys)
            single = len(tx) == 1
            slot = self.slots.get(name, i)
            marker = "•" if single and slot == 0 else MARKERS[slot % len(MARKERS)]
            color = COLORS[slot % len(COLORS)]
            (plt.scatter if single else plt.plot)(tx, ty, marker=marker, color=color)
            marks.append(f"{LEGEND_MARKS.get(marker, marker)} {name}")
        if drawn:
            xs_all = [x for _, xs, _ in drawn for x in xs]
            ys_all = [y for _, _, ys in drawn for y in ys]
            if min(xs_all) == max(xs_all):
                plt.xlim(*_around(min(xs_all), max(xs_all)))
            if self.ylim is None and min(ys_all) == max(ys_all):
                plt.ylim(*_around(min(ys_all), max(ys_all)))
        if self.ylim is not None:
            plt.ylim(*self.ylim)
        self.legend = "   ".join(marks) if len(drawn) > 1 and self.own_legend else ""
        # plotext leaves the x label out of a short plot: there the legend goes with the title
        short = 0 < self.size.height < SHORT
        if self.legend and short:  # plotext drops a title wider than the plot: then the title alone
            for title in (f"{self.title}: {self.legend}", f"{self.title}: {self.legend.replace('   ', ' ')}", self.title):
                if len(title) <= self.size.width - 2:
                    break
            plt.title(title)
        plt.xlabel(f"{self.xlabel}   {self.legend}" if self.legend and not short else self.xlabel)
        self.refresh()
