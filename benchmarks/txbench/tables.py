"""The result table as text and reStructuredText."""

from __future__ import annotations

from collections.abc import Sequence

from .checks import Verdict
from .summary import Row

COLUMNS = (
    "scenario",
    "target",
    "req/s",
    "vs nginx",
    "vs Caddy",
    "p50 ms",
    "p99 ms",
    "CPU µs/req",
    "peak RSS MB",
    "non-2xx",
    "sock err",
)


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rowCells(row: Row) -> list[str]:
    """A row as the strings every table format shows."""
    return [
        row.scenario,
        row.target,
        f"{row.rps:.0f}{'*' if row.starved else ''}",
        "-" if row.vsNginx is None else f"{row.vsNginx:.2f}x",
        "-" if row.vsCaddy is None else f"{row.vsCaddy:.2f}x",
        _number(row.p50ms, 2),
        _number(row.p99ms, 2),
        _number(row.cpuMicroseconds, 0),
        _number(row.peakRSSMB, 1),
        str(row.non2xx),
        str(row.socketErrors),
    ]


VERDICT_COLUMNS = ("target (issue 12)", "measured", "required", "result", "how")


def verdictCells(verdict: Verdict) -> list[str]:
    """A target's row: what was measured against what is required."""
    return [verdict.target, verdict.measured, verdict.required, verdict.status, verdict.detail]


def textTable(
    header: Sequence[str], lines: Sequence[Sequence[str]], labels: int = 2, grouped: bool = True
) -> str:
    """
    A fixed-width table for the terminal: the first C{labels} columns left
    aligned, numbers right aligned, and when C{grouped} a blank line where
    the first column changes.
    """
    cells = [list(header), *(list(line) for line in lines)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    out = []
    previous = None
    for index, line in enumerate(cells):
        if grouped and index > 1 and line[0] != previous:
            out.append("")
        previous = line[0]
        out.append(
            "  ".join(
                cell.rjust(width) if i >= labels else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths))
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def rstTable(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """The same table as a reStructuredText simple table, for docs/benchmarks.rst."""
    cells = [list(header), *(list(line) for line in lines)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    rule = "  ".join("=" * width for width in widths)

    def render(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()

    return "\n".join([rule, render(cells[0]), rule, *(render(line) for line in cells[1:]), rule])


def machineLines(machine: dict[str, str]) -> list[str]:
    """The machine description, one C{key: value} line each."""
    return [f"{key}: {value}" for key, value in machine.items()]
