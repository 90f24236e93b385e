"""A live line plot of a few named series (textual-plotext): set the series, then replot."""

from __future__ import annotations

from typing import Sequence

from textual_plotext import PlotextPlot

MAX_POINTS = 600  # per series on screen; longer series are thinned evenly (the last point always kept)


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_POINTS:
        return list(xs), list(ys)
    step = len(xs) / MAX_POINTS
    keep = sorted({int(i * step) for i in range(MAX_POINTS)} | {len(xs) - 1})
    return [xs[i] for i in keep], [ys[i] for i in keep]


class CurvePlot(PlotextPlot):
    def __init__(self, title: str, *, id: str | None = None) -> None:  # noqa: A002 (Textual's name)
        super().__init__(id=id)
        self.title = title
        self.series: dict[str, tuple[list[float], list[float]]] = {}

    @property
    def points(self) -> int:
        """Points held over all series (what would be drawn before thinning)."""
        return sum(len(xs) for xs, _ in self.series.values())

    def set_series(self, name: str, xs: list[float], ys: list[float]) -> None:
        self.series[name] = (xs, ys)

    def clear_series(self) -> None:
        self.series.clear()

    def on_mount(self) -> None:
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        drawn = [(name, xs, ys) for name, (xs, ys) in self.series.items() if xs]
        plt.title(self.title if drawn else f"{self.title} (nothing yet)")
        for name, xs, ys in drawn:
            tx, ty = _thin(xs, ys)
            plt.plot(tx, ty, label=name if len(self.series) > 1 else None, marker="braille")
        self.refresh()
