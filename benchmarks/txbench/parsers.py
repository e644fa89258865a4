"""Parsers of the load generators' output: wrk and h2load."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parseWrk(output: str) -> dict[str, Any]:
    """Requests, req/s, p50 and p99, non-2xx and socket errors from C{wrk --latency}."""
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if requests is None or rps is None:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", output, re.M))
    mean = re.search(r"^\s+Latency\s+([\d.]+(?:us|ms|s|m))\s", output, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests": int(requests[1]),
        "seconds": _milliseconds(requests[2] + requests[3]) / 1000,
        "rps": float(rps[1]),
        "p50ms": _milliseconds(percentiles["50"]) if "50" in percentiles else None,
        "p99ms": _milliseconds(percentiles["99"]) if "99" in percentiles else None,
        "meanMs": _milliseconds(mean[1]) if mean else None,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socketErrors": sum(int(n) for n in errors.groups()) if errors else 0,
        "errorKinds": errors[0] if errors else "",
    }


def parseH2load(output: str) -> dict[str, Any]:
    """
    The same from C{h2load}, which reports a mean and no percentiles: p50 and
    p99 stay empty rather than be made up.
    """
    finished = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", output)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    requests = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        output,
    )
    if finished is None or statuses is None or requests is None:
        raise RuntimeError(f"h2load printed no result:\n{output}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return {
        "requests": int(statuses[1]) + int(statuses[2]) + int(statuses[3]) + int(statuses[4]),
        "seconds": seconds,
        "rps": float(finished[3]),
        "p50ms": None,
        "p99ms": None,
        "non2xx": int(statuses[2]) + int(statuses[3]) + int(statuses[4]),
        "socketErrors": int(requests[2]) + int(requests[3]),
        "errorKinds": f"failed {requests[2]}, errored {requests[3]}",
    }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (what wrk reports): None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def parseH2loadLog(text: str) -> dict[str, float | None]:
    """
    p50 and p99 from C{h2load --log-file}: one line per request, tab-separated
    start time (µs since the epoch), status, and µs until the response ended.
    h2load prints no percentiles itself, and p99 at c32 is a target for
    HTTP/2 too.
    """
    durations = [
        int(columns[2]) / 1000
        for columns in (line.split("\t") for line in text.splitlines())
        if len(columns) >= 3 and columns[2].strip().isdigit()
    ]
    return {"p50ms": percentile(durations, 0.5), "p99ms": percentile(durations, 0.99)}
