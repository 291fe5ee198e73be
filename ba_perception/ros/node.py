"""What every ba_perception node shares: parameters, bad-input counting, diagnostics, stage traces, main().

A node subclasses :class:`PerceptionNode`, lists its ``PARAMS``, and in callbacks calls
``self.reject(reason, detail)`` for bad input (counted, logged once per reason per
``log_throttle_s``) and ``self.trace(...)`` to append its stage timing. Counters are published on
``/diagnostics`` once per second, so tests and operators see them without reading logs.

Every subscription and timer callback of a :class:`PerceptionNode` is guarded: an exception that
escapes it is counted under ``rejected.callback_error`` and logged once per throttle period
instead of leaving ``rclpy.spin`` (which would kill the node for one bad message). The diagnostics
also carry ``output_age_ms.<topic>``: milliseconds since the node last published on each of its
output topics, so a stalled node is visible as a growing age, not only as drops downstream.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from ba_perception.ros.params import ParameterError, ParamSpec, declare_parameters, qos_profile

if TYPE_CHECKING:
    from ba_perception_msgs.msg import StageTiming

COMMON_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("log_throttle_s", 5.0, "minimum seconds between two log lines for the same bad-input reason", min=0.0),
    ParamSpec("diagnostics_period_s", 1.0, "period of the /diagnostics status with the node's counters", min=0.05),
)


class StartupError(RuntimeError):
    """A node cannot start (missing file, nothing to do): one line on stderr, exit code 2."""


MAX_TRACE_STAGES = 16  # stage entries a node keeps when it extends an input's trace (newest kept)


def wall_ns() -> int:
    """System (wall) clock in nanoseconds; stage traces use it whatever use_sim_time says."""
    return time.time_ns()


def ns_to_time(ns: int) -> TimeMsg:
    """builtin_interfaces/Time from integer nanoseconds."""
    return TimeMsg(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def time_to_ns(t: Any) -> int:
    """Integer nanoseconds from a builtin_interfaces/Time."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def make_stage(stage: str, received_ns: int, start_ns: int, end_ns: int | None = None) -> StageTiming:
    """A StageTiming entry; ``end`` defaults to now (call right before publish)."""
    from ba_perception_msgs.msg import StageTiming

    return StageTiming(
        stage=stage,
        received=ns_to_time(received_ns),
        start=ns_to_time(start_ns),
        end=ns_to_time(wall_ns() if end_ns is None else end_ns),
    )


def extend_trace(trace: Sequence[StageTiming], stage: StageTiming) -> list[StageTiming]:
    """``trace + [stage]`` bounded to the newest :data:`MAX_TRACE_STAGES` entries.

    An input's trace is copied into the output; without a bound one message with a huge trace would
    be copied (and measured by the latency monitor) at every stage downstream.
    """
    return list(trace[-(MAX_TRACE_STAGES - 1):]) + [stage]


class PerceptionNode(Node):
    """Base node: declares ``COMMON_PARAMS + PARAMS``, counts rejects, publishes diagnostics."""

    PARAMS: ClassVar[Sequence[ParamSpec]] = ()

    def __init__(self, name: str, **kwargs: Any) -> None:
        self._last_output: dict[str, float] = {}  # output topic -> monotonic time of the last publish
        super().__init__(name, **kwargs)
        self.p = declare_parameters(self, tuple(COMMON_PARAMS) + tuple(self.PARAMS))
        self.counters: Counter[str] = Counter()
        self._last_log: dict[str, float] = {}
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos_profile("reliable", 10))
        self.create_timer(self.p["diagnostics_period_s"], self.publish_diagnostics)

    def create_publisher(self, msg_type: Any, topic: str, qos_profile: Any, **kwargs: Any) -> Any:
        """``Node.create_publisher``; publishing on it is noted for the ``output_age_ms.<topic>`` diagnostics."""
        pub = super().create_publisher(msg_type, topic, qos_profile, **kwargs)
        if topic in ("/diagnostics", "/parameter_events", "/rosout") or not hasattr(self, "_last_output"):
            return pub
        publish = pub.publish

        def publish_and_note(msg: Any) -> None:
            publish(msg)
            self._last_output[topic] = time.monotonic()

        pub.publish = publish_and_note  # type: ignore[method-assign]  # this publisher's publish also notes the time
        return pub

    def create_subscription(self, msg_type: Any, topic: str, callback: Callable[..., Any], qos_profile: Any,
                            **kwargs: Any) -> Any:
        """``Node.create_subscription`` with the callback guarded (see :meth:`guard`)."""
        return super().create_subscription(msg_type, topic, self.guard(callback, f"subscription {topic}"), qos_profile,
                                           **kwargs)

    def create_timer(self, timer_period_sec: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``Node.create_timer`` with the callback guarded (see :meth:`guard`)."""
        return super().create_timer(timer_period_sec, self.guard(callback, "timer"), *args, **kwargs)

    def guard(self, callback: Callable[..., Any], where: str) -> Callable[..., Any]:
        """Wrap a callback so that its exceptions are counted and logged.

        ``callback`` wrapped so that an exception is counted as ``rejected.callback_error`` and logged
        (throttled, with the innermost frame) instead of propagating into the executor.
        """

        @functools.wraps(callback)
        def guarded(*args: Any) -> Any:
            try:
                return callback(*args)
            except Exception as err:  # noqa: BLE001 - one bad message must never end rclpy.spin
                frame = traceback.extract_tb(err.__traceback__)[-1]
                self.reject("callback_error", f"{where}: {type(err).__name__}: {err} "
                            f"({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}); input dropped")
                return None

        return guarded
    def qos(self, prefix: str = "") -> Any:
        """QoS from the parameters ``[<prefix>_]qos`` (kind) and ``[<prefix>_]qos_depth``."""
        key = f"{prefix}_qos" if prefix else "qos"
        return qos_profile(self.p[key], self.p.get(f"{key}_depth", 5))

    def output_qos(self, prefix: str = "") -> Any:
        """Publisher QoS of a pipeline output.

        Publisher QoS of a pipeline output: as :meth:`qos`, with ``reliable`` upgraded to keep its
        last messages for late-joining readers (transient local; compatible with volatile readers).
        """
        key = f"{prefix}_qos" if prefix else "qos"
        kind = "reliable_history" if self.p[key] == "reliable" else self.p[key]
        return qos_profile(kind, self.p.get(f"{key}_depth", 5))

    def count(self, key: str, n: int = 1) -> None:
        """Increment a diagnostics counter (frames in/out, drops, ...)."""
        self.counters[key] += n

    def reject(self, reason: str, detail: str, n: int = 1) -> None:
        """Count ``n`` bad inputs under ``rejected.<reason>`` and log at most once per reason per throttle period."""
        self.counters[f"rejected.{reason}"] += n
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e18) >= self.p["log_throttle_s"]:
            self._last_log[reason] = now
            n = self.counters[f"rejected.{reason}"]
            self.get_logger().warning(f"rejected input ({reason}, {n} so far): {detail}")

    def diagnostic_level(self) -> bytes:
        """OK unless a subclass says otherwise (e.g. latency over threshold)."""
        return DiagnosticStatus.OK

    def publish_diagnostics(self) -> None:
        """Publish the node's counters and output ages as a diagnostic status."""
        status = DiagnosticStatus(
            level=self.diagnostic_level(),
            name=f"ba_perception: {self.get_fully_qualified_name()}",
            message="rejected inputs" if any(k.startswith("rejected.") for k in self.counters) else "ok",
            hardware_id=self.get_name(),
            values=[KeyValue(key=k, value=str(v)) for k, v in sorted(self.counters.items())]
            + [KeyValue(key=f"output_age_ms.{topic}", value=str(int(1e3 * (time.monotonic() - t))))
               for topic, t in sorted(self._last_output.items())],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def run_node(node_cls: type[Node], argv: Sequence[str] | None = None, **kwargs: Any) -> int:
    """``main()`` body shared by all nodes: init rclpy, announce readiness, spin, clean exit.

    SIGINT or SIGTERM (``ros2 launch``, the project launcher, Ctrl-C in a terminal, which sends
    SIGINT twice under ``ros2 launch``) stops the node between two callbacks: no traceback, no
    callback cut off; then ``close()`` (the node stops its threads), rclpy shutdown,
    ``destroy_node()``, exit 0. Run as a process of its own (``argv`` None: a console script),
    the process then ends at once instead of going through the interpreter's teardown (seconds
    with torch loaded).

    Returns the process exit code: 0 on a clean shutdown, 2 on an invalid parameter or a startup
    error, else the node's ``exit_code`` attribute when it sets one.
    """
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = _StopSignals()
    args = list(sys.argv if argv is None else argv)
    code = 0
    node = None
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node = node_cls(cli_args=remove_ros_args(args)[1:], **kwargs) if _takes_cli(node_cls) else node_cls(**kwargs)
        announce_ready(node)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        stop.spinning = True  # from now on a signal only ends this loop (checked every SPIN_PERIOD_S)
        while rclpy.ok() and not stop.received:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ParameterError, StartupError, FileNotFoundError) as err:
        print(f"{node_cls.__name__}: error: {err}", file=sys.stderr)
        code = 2
    finally:
        stop.spinning = True  # a signal during cleanup is noted, never raised
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()  # stops the node's own threads (a frame in progress is finished and published)
        if rclpy.ok():
            rclpy.try_shutdown()
        if node is not None:
            node.destroy_node()
    code = code or int(getattr(node, "exit_code", 0) or 0)
    if argv is None:
        _exit_now(code)
    return code


SPIN_PERIOD_S = 0.1  # longest a node takes to notice SIGINT/SIGTERM while idle


def announce_ready(node: Node) -> None:
    """Announce that ``node`` is ready to process.

    Publish on the latched :data:`ba_perception.graph.READY_TOPIC` that ``node`` is constructed
    (models loaded, subscriptions created) and ready to process; the bag player waits for it.

    The status carries the node's name (``hardware_id``) and, under the key ``subscription``, the
    resolved topic of each of its subscriptions, so a publisher can wait until it has matched them.
    The publisher stays alive with the node (a node holds its publishers until destroyed).
    """
    from ba_perception.graph import READY_TOPIC

    values = [KeyValue(key="subscription", value=sub.topic_name) for sub in node.subscriptions]
    status = DiagnosticStatus(level=DiagnosticStatus.OK, name=node.get_fully_qualified_name(), message="ready",
                              hardware_id=node.get_name(), values=values)
    node.create_publisher(DiagnosticStatus, READY_TOPIC, qos_profile("reliable_history", 1)).publish(status)


class _StopSignals:
    """SIGINT/SIGTERM handling of a node process (rclpy's own handlers are off).

    While the node starts (models loading), the first signal raises KeyboardInterrupt so it stops
    at once; once it spins, and during cleanup, a signal is only recorded: the spin loop ends after
    the callback in progress, and a second Ctrl-C cannot interrupt ``destroy_node()``.
    """

    def __init__(self) -> None:
        import signal

        self.received: list[int] = []
        self.spinning = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.received.append(signum)
        if not self.spinning and len(self.received) == 1:
            raise KeyboardInterrupt


def _exit_now(code: int) -> None:
    """End the process with ``code`` now: flush output, skip the interpreter teardown."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _takes_cli(node_cls: type[Node]) -> bool:
    import inspect

    return "cli_args" in inspect.signature(node_cls.__init__).parameters
