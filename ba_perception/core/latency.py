"""Latency statistics per pipeline stage over a sliding window (milliseconds)."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StageSummary:
    """Percentiles of one stage's latency over the window, milliseconds."""

    stage: str
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


@dataclass(frozen=True)
class TraceEntry:
    """One stage of a message's trace, wall-clock nanoseconds."""

    stage: str
    received_ns: int
    start_ns: int
    end_ns: int


MAX_STAGE_NAME = 64  # longest stage name measured; longer names are dropped


class LatencyStats:
    """Collects per-stage samples from stage traces; keeps the last ``window`` samples per stage.

    At most ``max_series`` series (stage names, with their ``.queue`` / ``transport.`` companions) are
    kept: samples of a new name beyond that, or of a name longer than :data:`MAX_STAGE_NAME`, are
    dropped and counted in ``dropped`` (one message with thousands of made-up stage names must not
    grow the monitor's memory and CPU for the rest of the run).
    """

    def __init__(self, window: int = 1000, max_series: int = 64) -> None:
        if window < 1 or max_series < 1:
            raise ValueError("window and max_series must be >= 1")
        self.window = window
        self.max_series = max_series
        self.samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.window))
        self.order: list[str] = []
        self.dropped = 0

    def add(self, stage: str, ms: float) -> bool:
        """Add one sample; False (and counted in ``dropped``) when the series is not kept."""
        if stage not in self.samples:
            if len(self.samples) >= self.max_series or len(stage) > MAX_STAGE_NAME + len("transport."):
                self.dropped += 1
                return False
            self.order.append(stage)
        self.samples[stage].append(float(ms))
        return True

    def add_trace(self, trace: list[TraceEntry], capture_ns: int | None, received_ns: int) -> None:
        """Record one output message.

        Per stage: ``<stage>`` = end - start (compute), ``<stage>.queue`` = start - received;
        ``transport.<stage>`` = received - end of the previous stage; ``end_to_end`` = arrival at the
        monitor - capture stamp (when the capture stamp is on the wall clock, else None is passed and
        the first stage's receive time is used, reported as ``pipeline``).
        """
        prev_end = None
        for e in trace:
            if prev_end is not None:
                self.add(f"transport.{e.stage}", (e.received_ns - prev_end) / 1e6)
            self.add(f"{e.stage}.queue", (e.start_ns - e.received_ns) / 1e6)
            self.add(e.stage, (e.end_ns - e.start_ns) / 1e6)
            prev_end = e.end_ns
        if prev_end is not None:
            self.add("transport.monitor", (received_ns - prev_end) / 1e6)
        if trace:
            self.add("pipeline", (received_ns - trace[0].received_ns) / 1e6)
        if capture_ns is not None:
            self.add("end_to_end", (received_ns - capture_ns) / 1e6)

    def summary(self) -> list[StageSummary]:
        """One :class:`StageSummary` per stage in first-seen order (end_to_end last)."""
        names = [s for s in self.order if s != "end_to_end"] + (["end_to_end"] if "end_to_end" in self.samples else [])
        out = []
        for name in names:
            a = np.asarray(self.samples[name], dtype=np.float64)
            p50, p95, p99 = np.percentile(a, [50, 95, 99])
            out.append(StageSummary(name, int(a.size), float(p50), float(p95), float(p99), float(a.max()), float(a.mean())))
        return out


def format_table(rows: list[StageSummary]) -> str:
    """A fixed-width text table of stage summaries."""
    head = f"{'stage':28s} {'n':>6s} {'p50':>8s} {'p95':>8s} {'p99':>8s} {'max':>8s}  (ms)"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.stage:28s} {r.count:6d} {r.p50_ms:8.2f} {r.p95_ms:8.2f} {r.p99_ms:8.2f} {r.max_ms:8.2f}")
    return "\n".join(lines)
