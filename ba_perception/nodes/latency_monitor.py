"""latency_monitor: per-stage and end-to-end latency of the pipeline outputs, from their stage traces.

Subscribes to the output topics (any of our array types: they carry ``header`` and ``trace``) and
to the input frame topic (to count frames that never produced an output), publishes a
``ba_perception_msgs/LatencyReport`` and a ``/diagnostics`` status with warn/error thresholds on
the end-to-end p99, prints a live table when asked, and writes a JSON summary at shutdown.

Bounded whatever the input: at most ``max_trace_len`` stage entries of a message are measured
(``rejected.trace_too_long``), at most ``max_series`` latency series are kept (samples of further
stage names are counted as ``rejected.stage_limit``), and the frames awaiting an output are capped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus

from ba_perception.core.latency import LatencyStats, TraceEntry, format_table
from ba_perception.ros.bag_types import import_message_class
from ba_perception.ros.node import MAX_TRACE_STAGES, PerceptionNode, StartupError, run_node, time_to_ns, wall_ns
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import header_stamp_ns


class LatencyMonitor(PerceptionNode):
    """See the module docstring."""

    PARAMS = (
        ParamSpec("output_topic", "/ba_perception/tracks", "pipeline output whose traces are measured"),
        ParamSpec("output_type", "ba_perception_msgs/msg/Track3DArray", "message type of output_topic"),
        ParamSpec("input_topic", "/camera/image_raw", "frame topic used to count frames without output; '' = off"),
        ParamSpec("capture_clock", "wall", "clock of the capture stamps: 'wall' (live camera, restamped replay) "
                  "gives end_to_end; 'sim' only the in-pipeline latency", choices=("wall", "sim")),
        ParamSpec("window", 2000, "samples kept per stage", min=10),
        ParamSpec("max_series", 64, "latency series kept (stage names and their queue/transport companions); "
                  "samples of further names are rejected and counted as stage_limit", min=4),
        ParamSpec("max_trace_len", MAX_TRACE_STAGES, "stage entries measured per message (the newest); longer traces "
                  "are counted as trace_too_long", min=1),
        ParamSpec("drop_timeout_s", 2.0, "an input frame without output after this long counts as dropped", min=0.1),
        ParamSpec("report_period_s", 1.0, "period of the LatencyReport and the live table", min=0.05),
        ParamSpec("warn_ms", 150.0, "end-to-end p99 above this: diagnostics WARN", min=0.0),
        ParamSpec("error_ms", 500.0, "end-to-end p99 above this: diagnostics ERROR", min=0.0),
        ParamSpec("print_table", False, "print the live latency table to stdout"),
        ParamSpec("summary_path", "", "write a JSON summary here at shutdown; '' = off"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("latency_monitor", **kwargs)
        from ba_perception_msgs.msg import LatencyReport

        try:
            cls = import_message_class(self.p["output_type"])
        except LookupError as err:
            raise StartupError(str(err)) from err
        self.stats = LatencyStats(self.p["window"], self.p["max_series"])
        self.pending: OrderedDict[int, int] = OrderedDict()  # input stamp -> wall arrival
        self.outputs: set[int] = set()
        self.create_subscription(cls, self.p["output_topic"], self.on_output, qos_profile("reliable", 50))
        if self.p["input_topic"]:
            from sensor_msgs.msg import Image

            self.create_subscription(Image, self.p["input_topic"], self.on_input, qos_profile("sensor_data", 10), raw=True)
        self.report_pub = self.create_publisher(LatencyReport, "/ba_perception/latency", qos_profile("reliable", 10))
        self.create_timer(self.p["report_period_s"], self.report)

    def on_input(self, raw: bytes) -> None:
        """Count one input message and remember its stamp as pending."""
        stamp = header_stamp_ns(raw)
        if stamp is None:
            self.reject("input_header", f"a message on {self.p['input_topic']} without a readable CDR header; not counted "
                        "as a frame")
            return
        self.count("frames_in")
        if stamp not in self.outputs:
            self.pending[stamp] = wall_ns()
            while len(self.pending) > 4 * self.p["window"]:  # bounded whatever the input rate
                self.pending.popitem(last=False)
                self.count("frames_dropped")
        self._expire()

    def on_output(self, msg: Any) -> None:
        """Record the latency of one output message."""
        now = wall_ns()
        stamp = time_to_ns(msg.header.stamp)
        self.count("frames_out")
        self.pending.pop(stamp, None)
        self.outputs.add(stamp)
        if len(self.outputs) > 4 * self.p["window"]:
            self.outputs = set(sorted(self.outputs)[-self.p["window"]:])
        entries = msg.trace
        if len(entries) > self.p["max_trace_len"]:
            self.reject("trace_too_long", f"trace of {len(entries)} stages; only the newest {self.p['max_trace_len']} "
                        "measured")
            entries = entries[-self.p["max_trace_len"]:]
        trace = [TraceEntry(t.stage, time_to_ns(t.received), time_to_ns(t.start), time_to_ns(t.end)) for t in entries]
        capture = stamp if self.p["capture_clock"] == "wall" else None
        before = self.stats.dropped
        self.stats.add_trace(trace, capture, now)
        if self.stats.dropped > before:
            self.reject("stage_limit", f"{self.stats.dropped - before} samples of stage names beyond max_series "
                        f"{self.p['max_series']} (or longer than the longest name measured) dropped",
                        self.stats.dropped - before)

    def _expire(self) -> None:
        limit = wall_ns() - int(self.p["drop_timeout_s"] * 1e9)
        while self.pending and next(iter(self.pending.values())) < limit:
            self.pending.popitem(last=False)
            self.count("frames_dropped")

    def diagnostic_level(self) -> bytes:
        """Diagnostic level from the end-to-end p99 latency and the warn / error thresholds."""
        e2e = [s for s in self.stats.summary() if s.stage in ("end_to_end", "pipeline")]
        if not e2e:
            return DiagnosticStatus.OK
        p99 = e2e[-1].p99_ms
        if p99 > self.p["error_ms"]:
            return DiagnosticStatus.ERROR
        return DiagnosticStatus.WARN if p99 > self.p["warn_ms"] else DiagnosticStatus.OK

    def report(self) -> None:
        """Publish the latency report."""
        from ba_perception_msgs.msg import LatencyReport, StageLatency

        self._expire()
        rows = self.stats.summary()
        msg = LatencyReport(
            stages=[StageLatency(stage=r.stage, count=r.count, p50_ms=r.p50_ms, p95_ms=r.p95_ms, p99_ms=r.p99_ms,
                                 max_ms=r.max_ms, mean_ms=r.mean_ms) for r in rows],
            frames_received=self.counters["frames_out"], frames_dropped=self.counters["frames_dropped"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.report_pub.publish(msg)
        if self.p["print_table"] and rows:
            print(format_table(rows), flush=True)

    def close(self) -> None:
        """Write the summary JSON when ``summary_path`` is set."""
        if self.p["summary_path"]:
            data = {"stages": [asdict(r) for r in self.stats.summary()], "counters": dict(self.counters),
                    "samples_ms": {k: list(v) for k, v in self.stats.samples.items()}}
            Path(self.p["summary_path"]).write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(LatencyMonitor, argv)


if __name__ == "__main__":
    raise SystemExit(main())
