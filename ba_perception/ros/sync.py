"""Time synchronizers for several input topics (exact and approximate policies).

This replaces ``message_filters`` where it is not installable; the policies follow
``message_filters.TimeSynchronizer`` and ``ApproximateTimeSynchronizer`` (Python implementation):
each input keeps a bounded queue keyed by the message's ``header.stamp``; a set is emitted when
every input has a message and, for the approximate policy, the spread of their stamps is at most
``slop``. Emitted and older messages leave the queues. A message that leaves a queue without being
emitted (pushed out of a full queue, older than an emitted set, replaced by one with the same stamp,
or cleared by a reset) is counted per input in ``unpaired`` and reported to ``on_drop``. The policy is
pure Python (no rclpy), so it is tested alone; :func:`subscribe_synchronized` wires it to rclpy
subscriptions and counts the unpaired messages on the node as ``rejected.unpaired``.
"""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile


def stamp_ns(msg: Any) -> int:
    """Nanoseconds of ``msg.header.stamp`` (any message with a std_msgs/Header)."""
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


_HEADER_STAMP = struct.Struct("<iI")  # CDR little endian: 4-byte encapsulation, then sec, nanosec


def header_stamp_ns(cdr: bytes | memoryview) -> int | None:
    """Capture stamp (ns) of a serialized message whose first field is a std_msgs/Header, else None."""
    if len(cdr) < 12 or bytes(cdr[:2]) != b"\x00\x01":
        return None
    sec, nsec = _HEADER_STAMP.unpack_from(cdr, 4)
    return sec * 1_000_000_000 + nsec


def restamp(cdr: bytes, stamp_ns: int) -> bytes:
    """Replace the header stamp of a header-first little-endian CDR message."""
    return cdr[:4] + _HEADER_STAMP.pack(stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000) + cdr[12:]


class TimeSynchronizer:
    """Emit one message per input when all inputs agree on the capture stamp.

    Args:
        num_inputs: number of input topics.
        callback: called with one message per input, in input order.
        queue_size: messages kept per input (oldest dropped first).
        slop_s: largest allowed spread of stamps in one set, seconds; 0 means exact matching.
        on_reset: called when a stamp goes backwards by more than ``reset_jump_s`` (bag loop):
            all queues are cleared first.
        reset_jump_s: a backwards jump larger than this resets the synchronizer.
        on_drop: called as ``on_drop(index, n)`` when ``n`` messages of input ``index`` leave without a partner.
    """

    def __init__(
        self,
        num_inputs: int,
        callback: Callable[..., None],
        queue_size: int = 10,
        slop_s: float = 0.0,
        on_reset: Callable[[], None] | None = None,
        reset_jump_s: float = 1.0,
        on_drop: Callable[[int, int], None] | None = None,
    ) -> None:
        if num_inputs < 1:
            raise ValueError("num_inputs must be >= 1")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if slop_s < 0:
            raise ValueError("slop_s must be >= 0")
        self.callback = callback
        self.queue_size = queue_size
        self.slop_ns = int(round(slop_s * 1e9))
        self.on_reset = on_reset
        self.reset_jump_ns = int(reset_jump_s * 1e9)
        self.queues: list[dict[int, Any]] = [{} for _ in range(num_inputs)]
        self.latest_ns: int | None = None
        self.emitted = 0
        self.resets = 0
        self.unpaired = [0] * num_inputs
        self.on_drop = on_drop
        self._lock = threading.Lock()

    def add(self, index: int, msg: Any, stamp: int | None = None) -> None:
        """Offer ``msg`` on input ``index``; ``stamp`` (ns) defaults to ``msg.header.stamp``."""
        t = stamp_ns(msg) if stamp is None else int(stamp)
        drops = [0] * len(self.queues)
        with self._lock:
            if self.latest_ns is not None and t < self.latest_ns - self.reset_jump_ns:
                for i, q in enumerate(self.queues):
                    drops[i] += len(q)
                    q.clear()
                self.latest_ns = None
                self.resets += 1
                if self.on_reset is not None:
                    self.on_reset()
            self.latest_ns = t if self.latest_ns is None else max(self.latest_ns, t)
            queue = self.queues[index]
            drops[index] += t in queue
            queue[t] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
                drops[index] += 1
            matched = self._match(index, t, drops)
        for i, n in enumerate(drops):
            if n:
                self.unpaired[i] += n
                if self.on_drop is not None:
                    self.on_drop(i, n)
        if matched is not None:
            self.emitted += 1
            self.callback(*matched)

    def _match(self, index: int, t: int, drops: list[int]) -> list[Any] | None:
        candidates: list[list[int]] = []
        for i, q in enumerate(self.queues):
            if i == index:
                candidates.append([t])
                continue
            near = sorted((s for s in q if abs(s - t) <= self.slop_ns), key=lambda s: abs(s - t))
            if not near:
                return None
            candidates.append(near)
        for combo in itertools.product(*candidates):
            if max(combo) - min(combo) <= self.slop_ns:
                msgs = [self.queues[i][s] for i, s in enumerate(combo)]
                for i, s in enumerate(combo):
                    q = self.queues[i]
                    for old in [k for k in q if k <= s]:
                        del q[old]
                        drops[i] += old != s
                return msgs
        return None


def subscribe_synchronized(
    node: Node,
    topics: Sequence[tuple[type, str, QoSProfile]],
    callback: Callable[..., None],
    queue_size: int = 10,
    slop_s: float = 0.0,
    on_reset: Callable[[], None] | None = None,
    on_receive: Callable[[int, Any], bool] | None = None,
) -> TimeSynchronizer:
    """Subscribe to ``(msg_type, topic, qos)`` inputs and call ``callback`` with synchronized sets.

    ``on_receive(index, msg)`` runs first for every message and may return False to reject it
    (bad input) before it enters the queues. Messages that leave without a partner are counted on the
    node as ``rejected.unpaired`` (when it has ``reject``, as every PerceptionNode does).
    """
    reject = getattr(node, "reject", None)

    def on_drop(i: int, n: int) -> None:
        if reject is not None:
            reject("unpaired", f"{n} message(s) on {topics[i][1]} dropped without a partner with the same stamp "
                   f"on {', '.join(t[1] for j, t in enumerate(topics) if j != i)}", n)

    sync = TimeSynchronizer(len(topics), callback, queue_size, slop_s, on_reset, on_drop=on_drop)

    def make_cb(i: int) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            if on_receive is None or on_receive(i, msg):
                sync.add(i, msg)

        return cb

    sync.subscriptions = [  # type: ignore[attr-defined]
        node.create_subscription(msg_type, topic, make_cb(i), qos) for i, (msg_type, topic, qos) in enumerate(topics)
    ]
    return sync
