"""The chart: req/s against concurrency and against size."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .summary import Row

CHART_SERIES_STYLE = {
    "txfastcgi": "#d62728",
    "txfastcgi-w2": "#ff7f0e",
    "txfastcgi-embedded": "#e377c2",
    "txfastcgi-pypy": "#bcbd22",
    "txfastcgi-baseline": "#8c564b",
    "nginx": "#2ca02c",
    "caddy": "#1f77b4",
    "apache": "#9467bd",
    "jetty": "#8c564b",
    "haproxy": "#17becf",
    "h2o": "#aec7e8",
    "lighttpd": "#98df8a",
    "bare": "#7f7f7f",
}
CONCURRENCY_PANEL = ("tiny-c1", "tiny-c32", "tiny-c256")
CONCURRENCY_LABELS = ("1", "32", "256")
SIZE_PANEL = ("static12-c32", "css95k-c32", "static1m-c32")
SIZE_LABELS = ("12 B", "95 KB", "1 MiB")


def chartSeries(rows: Sequence[Row], panel: Sequence[str]) -> dict[str, list[float | None]]:
    """Req/s of each target at each point of a panel, None where not measured."""
    byKey = {(row.scenario, row.target): row.rps for row in rows}
    targets = [t for t in CHART_SERIES_STYLE if any((s, t) in byKey for s in panel)]
    return {t: [byKey.get((s, t)) for s in panel] for t in targets}


def writeChart(rows: Sequence[Row], out: Path, title: str, forceSVG: bool) -> Path:
    """
    Req/s against concurrency and against response size: a PNG through
    matplotlib if it is installed, else an SVG drawn here, so the chart never
    needs a dependency.
    """
    panels = [
        (
            "req/s against concurrency (14 B response)",
            "connections",
            CONCURRENCY_LABELS,
            chartSeries(rows, CONCURRENCY_PANEL),
        ),
        (
            "req/s against static file size (32 connections)",
            "file size",
            SIZE_LABELS,
            chartSeries(rows, SIZE_PANEL),
        ),
    ]
    if not forceSVG:
        try:
            import matplotlib
        except ImportError:
            pass
        else:
            matplotlib.use("Agg")
            return _matplotlibChart(panels, out / "chart.png", title)
    return _svgChart(panels, out / "chart.svg", title)


Panel = tuple[str, str, Sequence[str], dict[str, list[Optional[float]]]]


def _matplotlibChart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, (heading, xlabel, labels, series) in zip(axes, panels):
        for target, values in series.items():
            points = [(i, v) for i, v in enumerate(values) if v is not None]
            if not points:
                continue
            xs, ys = zip(*points)
            axis.plot(
                xs,
                ys,
                marker="o",
                label=target,
                color=CHART_SERIES_STYLE[target],
                linestyle="--" if target == "bare" else "-",
            )
        axis.set_yscale("log")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(heading, fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("requests per second (log)")
        axis.grid(True, which="both", alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _element(name: str, text: str = "", /, **attributes: object) -> str:
    """One SVG element; C{font_size} becomes C{font-size}, values are escaped."""
    pairs = " ".join(
        f'{key.replace("_", "-")}="{html.escape(str(value))}"' for key, value in attributes.items()
    )
    if text:
        return f"<{name} {pairs}>{html.escape(text)}</{name}>"
    return f"<{name} {pairs}/>"


def _svgChart(panels: Sequence[Panel], path: Path, title: str) -> Path:
    """Two log-scale line charts side by side, written as plain SVG."""
    width, height, panelWidth = 1100, 470, 520
    top, bottom, left = 50, 70, 70
    plotWidth, plotHeight = panelWidth - left, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="11">',
        _element("rect", width=width, height=height, fill="white"),
        _element("text", title, x=width / 2, y=18, text_anchor="middle", font_size=12),
    ]
    for index, (heading, xlabel, labels, series) in enumerate(panels):
        x0 = index * (panelWidth + 40) + left
        values = [v for vs in series.values() for v in vs if v]
        if not values:
            continue
        low = math.floor(math.log10(min(values)))
        high = math.ceil(math.log10(max(values)))

        def y(value: float, low: int = low, high: int = high) -> float:
            return round(top + plotHeight * (1 - (math.log10(value) - low) / (high - low)), 1)

        def x(i: int, x0: int = x0, n: int = len(labels)) -> float:
            return round(x0 + plotWidth * (i + 0.5) / n, 1)

        middle = x0 + plotWidth / 2
        parts += [
            _element("text", heading, x=middle, y=top - 10, text_anchor="middle"),
            _element(
                "rect", x=x0, y=top, width=plotWidth, height=plotHeight, fill="none", stroke="#333"
            ),
            _element("text", xlabel, x=middle, y=top + plotHeight + 40, text_anchor="middle"),
            _element(
                "text",
                "requests per second (log)",
                transform=f"translate({x0 - 50},{top + plotHeight / 2}) rotate(-90)",
                text_anchor="middle",
            ),
        ]
        for tick in (step * 10**power for power in range(low, high + 1) for step in (1, 2, 5)):
            if tick <= 10**high:
                parts.append(
                    _element(
                        "line", x1=x0, x2=x0 + plotWidth, y1=y(tick), y2=y(tick), stroke="#ddd"
                    )
                )
                parts.append(
                    _element("text", f"{tick:g}", x=x0 - 5, y=y(tick) + 4, text_anchor="end")
                )
        for i, label in enumerate(labels):
            parts.append(
                _element("text", label, x=x(i), y=top + plotHeight + 18, text_anchor="middle")
            )
        for rank, (target, vs) in enumerate(series.items()):
            style: dict[str, object] = {"stroke": CHART_SERIES_STYLE[target], "stroke_width": 2}
            if target == "bare":
                style["stroke_dasharray"] = "6,4"
            points = [(x(i), y(v)) for i, v in enumerate(vs) if v]
            line = " ".join(f"{px},{py}" for px, py in points)
            parts.append(_element("polyline", fill="none", points=line, **style))
            for px, py in points:
                parts.append(_element("circle", cx=px, cy=py, r=3.5, fill=style["stroke"]))
            legendY = top + 14 + rank * 16
            legendX = x0 + plotWidth - 110
            parts.append(
                _element(
                    "line", x1=legendX, x2=legendX + 20, y1=legendY - 4, y2=legendY - 4, **style
                )
            )
            parts.append(_element("text", target, x=legendX + 25, y=legendY))
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
    return path
