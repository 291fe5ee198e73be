"""bag_player: play a rosbag2 (MCAP or sqlite3, via rosbags) into the graph.

Modes: recorded timing scaled by ``rate`` (optionally publishing ``/clock``), or **lockstep**:
publish the next frame of ``lockstep_trigger_topic`` only after the pipeline output for the
previous one arrived on ``lockstep_topic`` (matched by header stamp), for drop-free evaluation.
Messages are published as the bag's serialized CDR bytes, so any standard-typed bag plays
byte-identical; topics whose types are not installed here are skipped with one log line.
Before the first message it waits until every node of ``wait_for_nodes`` (the launchers fill in the
graph's other nodes) announced on ``/ba_perception/ready`` that it is ready to process, and every
played topic has matched those nodes' subscriptions; it does not play into a graph still loading.
Topics recorded from a transient-local publisher (``/tf_static``, map-like data; the bag's offered
QoS) are played latched, keeping all of their messages, so a node that starts late still gets them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
import rclpy.duration
from rclpy.qos import QoSProfile
from rosbags.rosbag2 import Reader

from ba_perception.graph import READY_TOPIC
from ba_perception.ros.bag_types import BagTypeError, import_message_class
from ba_perception.ros.node import PerceptionNode, StartupError, run_node, wall_ns
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import header_stamp_ns, restamp


def recorded_latched(conn: Any) -> bool:
    """Whether a bag connection was recorded from a transient-local (latched) publisher."""
    from rosbags.interfaces import QosDurability

    profiles = getattr(getattr(conn, "ext", None), "offered_qos_profiles", None) or []
    return any(getattr(q, "durability", None) == QosDurability.TRANSIENT_LOCAL for q in profiles)


class BagPlayer(PerceptionNode):
    """Publishes a bag's messages; see the module docstring."""

    PARAMS = (
        ParamSpec("bag", "", "path of the rosbag2 folder or .mcap/.db3 file to play"),
        ParamSpec("rate", 1.0, "playback speed factor for recorded timing", min=0.01, max=100.0),
        ParamSpec("loop", False, "restart from the beginning after the last message"),
        ParamSpec("topics", [""], "topics to play; empty = every topic whose type is installed"),
        ParamSpec("publish_clock", False, "publish /clock from the bag's timestamps (for use_sim_time)"),
        ParamSpec("qos", "reliable", "QoS of the published topics (topics recorded latched, e.g. /tf_static, play latched)",
                  choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 10, "queue depth of the published topics", min=1),
        ParamSpec("wait_for_subscribers", 0, "before playing, wait until every played topic has this many subscribers", min=0),
        ParamSpec("ready_topics", [""], "before playing, wait until each 'topic=N' has a publisher and N subscribers "
                  "(the pipeline's outputs are being recorded)"),
        ParamSpec("wait_timeout_s", 30.0, "give up waiting for subscribers after this long", min=0.0),
        ParamSpec("wait_for_nodes", [""], "before playing, wait until these nodes announced that they are ready "
                  "(/ba_perception/ready) and the played topics matched their subscriptions; the launchers set the "
                  "graph's nodes"),
        ParamSpec("ready_timeout_s", 300.0, "do not play (exit 1) when wait_for_nodes are not all ready after this "
                  "long; 0 = wait forever", min=0.0),
        ParamSpec("lockstep", False, "publish frame N+1 only when the output for frame N arrived"),
        ParamSpec("lockstep_trigger_topic", "/camera/image_raw", "the frame topic that lockstep paces"),
        ParamSpec("lockstep_topic", "/ba_perception/tracks", "pipeline output that acknowledges a frame (header stamp)"),
        ParamSpec("lockstep_type", "ba_perception_msgs/msg/Track3DArray", "message type of lockstep_topic"),
        ParamSpec("lockstep_timeout_s", 5.0, "count a frame as dropped if no output arrives within this", min=0.01),
        ParamSpec("restamp", False, "rewrite header stamps to the wall-clock publish time (latency benchmarks)"),
        ParamSpec("stamp_map_path", "", "with restamp: when playback ends, write {restamped: original} header stamps "
                  "(ns) here as JSON, so outputs can be traced back to the bag's frames"),
        ParamSpec("start_delay_s", 0.0, "sleep before the first message", min=0.0),
        ParamSpec("exit_when_done", True, "shut down the node after the last message"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_player", **kwargs)
        path = Path(self.p["bag"])
        if not self.p["bag"] or not path.exists():
            raise StartupError(f"bag {str(path)!r} does not exist (set the 'bag' parameter)")
        try:
            self.reader = Reader(path)
            self.reader.open()
        except Exception as err:  # rosbags raises ReaderError and others for damaged bags
            raise StartupError(f"cannot open bag {str(path)!r}: {err}") from err
        wanted = {t for t in self.p["topics"] if t}
        qos = qos_profile(self.p["qos"], self.p["qos_depth"])
        self.publishers_by_topic: dict[str, Any] = {}
        self.connections = []
        for conn in self.reader.connections:
            if wanted and conn.topic not in wanted:
                continue
            if conn.topic in self.publishers_by_topic:
                self.connections.append(conn)
                continue
            try:
                cls = import_message_class(conn.msgtype)
            except BagTypeError as err:
                self.get_logger().info(f"skipping {conn.topic}: {err}")
                self.count("skipped_topics")
                continue
            self.publishers_by_topic[conn.topic] = self.create_publisher(
                cls, conn.topic, qos_profile("reliable_history", max(1, conn.msgcount)) if recorded_latched(conn) else qos)
            self.connections.append(conn)
        missing = wanted - set(self.publishers_by_topic)
        if missing:
            self.get_logger().warning(f"topics not in the bag or not installable: {sorted(missing)}")
        if not self.publishers_by_topic:
            raise StartupError(f"nothing to play in {path}")
        self.clock_pub = None
        if self.p["publish_clock"]:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self._ack = threading.Condition()
        self._acked: set[int] = set()
        if self.p["lockstep"]:
            cls = import_message_class(self.p["lockstep_type"])
            self.create_subscription(cls, self.p["lockstep_topic"], self._on_ack, qos_profile("reliable", 100), raw=True)
        self._ready_cv = threading.Condition()
        self._ready_nodes: dict[str, list[str]] = {}  # node name -> topics of its subscriptions
        if any(self.p["wait_for_nodes"]):
            from diagnostic_msgs.msg import DiagnosticStatus

            self.create_subscription(DiagnosticStatus, READY_TOPIC, self._on_ready, qos_profile("reliable_history", 100))
        self.exit_code = 0
        self.stamp_map: dict[int, int] = {}  # restamped -> original capture stamp
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="bag_player", daemon=True)
        self._thread.start()

    def _on_ack(self, raw: bytes) -> None:
        stamp = header_stamp_ns(raw)
        if stamp is None:
            return
        with self._ack:
            self._acked.add(stamp)
            self._ack.notify_all()

    def _on_ready(self, status: Any) -> None:
        with self._ready_cv:
            self._ready_nodes[status.hardware_id] = [kv.value for kv in status.values if kv.key == "subscription"]
            self._ready_cv.notify_all()

    def _graph_waiting_for(self) -> list[str]:
        """List what the graph still lacks before playing may start.

        What the graph still lacks: nodes not ready, or played topics that have not matched the
        subscriptions the ready nodes announced (empty when playing may start).
        """
        wanted = [n for n in self.p["wait_for_nodes"] if n]
        missing = [n for n in wanted if n not in self._ready_nodes]
        if missing:
            return missing
        for topic, pub in self.publishers_by_topic.items():
            expected = sum(self._ready_nodes[n].count(topic) for n in wanted)
            if pub.get_subscription_count() < expected:
                missing.append(f"{topic} ({pub.get_subscription_count()}/{expected} subscriptions matched)")
        return missing

    def _wait_graph_ready(self) -> bool:
        """Wait for ``wait_for_nodes``; False (logged as an error) when ``ready_timeout_s`` passed."""
        if not any(self.p["wait_for_nodes"]):
            return True
        t0 = time.monotonic()
        timeout = self.p["ready_timeout_s"] or float("inf")
        next_log = t0 + 10.0
        while self._running():
            with self._ready_cv:
                missing = self._graph_waiting_for()
                if not missing:
                    self.get_logger().info(f"graph ready after {time.monotonic() - t0:.1f} s; playing")
                    return True
                now = time.monotonic()
                if now - t0 > timeout:
                    self.get_logger().error(f"not playing: still waiting for {', '.join(missing)} after "
                                            f"{now - t0:.0f} s (ready_timeout_s)")
                    self.exit_code = 1
                    return False
                if now >= next_log:
                    next_log = now + 10.0
                    self.get_logger().warning(f"waiting {now - t0:.0f} s for {', '.join(missing)} before playing")
                self._ready_cv.wait(0.05)
        return False

    def _ready(self) -> bool:
        need = self.p["wait_for_subscribers"]
        if need > 0 and min(p.get_subscription_count() for p in self.publishers_by_topic.values()) < need:
            return False
        for item in self.p["ready_topics"]:
            if not item:
                continue
            topic, _, n = item.partition("=")
            if self.count_publishers(topic) < 1 or self.count_subscribers(topic) < int(n or 1):
                return False
        return True

    def _wait_subscribers(self) -> None:
        if self.p["wait_for_subscribers"] <= 0 and not any(self.p["ready_topics"]):
            return
        deadline = time.monotonic() + self.p["wait_timeout_s"]
        while self._running() and time.monotonic() < deadline:
            if self._ready():
                # The graph view says the endpoints exist, not that every writer/reader pair between
                # other processes has matched yet (measured up to 0.7 s under load): let them settle.
                self._stop.wait(1.0)
                return
            self._stop.wait(0.02)
        self.get_logger().warning("playing although the graph is not fully connected (wait_timeout_s passed)")

    def _play(self) -> None:
        try:
            if not self._wait_graph_ready():
                return
            self._wait_subscribers()
            self._stop.wait(self.p["start_delay_s"])
            while self._running():
                self._play_once()
                if not self.p["loop"]:
                    break
        except Exception as err:  # a truncated bag must not hang the process
            self.get_logger().error(f"playback stopped: {err}")
            self.count("errors")
        finally:
            self.get_logger().info(
                f"played {self.counters['published']} messages, "
                f"{self.counters['lockstep_timeouts']} lockstep timeouts")
            if self.p["stamp_map_path"]:
                self._write_stamp_map(Path(self.p["stamp_map_path"]))
            self.done.set()
            if self.p["exit_when_done"]:
                self.publish_diagnostics()
                rclpy.try_shutdown()

    def _play_once(self) -> None:
        rate, lockstep = self.p["rate"], self.p["lockstep"]
        trigger = self.p["lockstep_trigger_topic"]
        t0_bag = t0_wall = None
        pending: int | None = None  # stamp of the last trigger frame awaiting its output
        for conn, t_bag, raw in self.reader.messages(connections=self.connections):
            if not self._running():
                return
            if lockstep:
                if conn.topic == trigger and pending is not None:
                    self._wait_ack(pending)
                    pending = None
            else:
                if t0_bag is None:
                    t0_bag, t0_wall = t_bag, time.monotonic()
                delay = t0_wall + (t_bag - t0_bag) / 1e9 / rate - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
            if self.clock_pub is not None:
                from rosgraph_msgs.msg import Clock

                self.clock_pub.publish(Clock(clock=rclpy.time.Time(nanoseconds=t_bag).to_msg()))
            data = bytes(raw)
            stamp = header_stamp_ns(data)
            if self.p["restamp"] and stamp is not None:
                new = self._restamped(stamp)
                data = restamp(data, new)
                stamp = new
            if lockstep and conn.topic == trigger:
                pending = stamp
            self._publish(conn.topic, data)
        if lockstep and pending is not None:
            self._wait_ack(pending)
        for pub in self.publishers_by_topic.values():  # let reliable readers take the tail
            if self._running():
                pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))

    def _write_stamp_map(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({str(k): v for k, v in self.stamp_map.items()}))
            tmp.replace(path)  # a reader never sees half a file
        except OSError as err:
            self.get_logger().error(f"cannot write the stamp map {path}: {err}")
            self.count("errors")

    def _restamped(self, original: int) -> int:
        for new, orig in reversed(list(self.stamp_map.items())[-16:]):
            if orig == original:
                return new
        new = wall_ns()
        self.stamp_map[new] = original
        return new

    def _publish(self, topic: str, data: bytes) -> None:
        for attempt in range(50):
            try:
                self.publishers_by_topic[topic].publish(data)
                self.count("published")
                return
            except Exception:  # reliable writer history full: the reader fell behind
                time.sleep(0.002 * (attempt + 1))
        self.count("publish_failures")

    def _wait_ack(self, stamp: int | None) -> None:
        if stamp is None:
            return
        deadline = time.monotonic() + self.p["lockstep_timeout_s"]
        with self._ack:
            while stamp not in self._acked:
                left = deadline - time.monotonic()
                if left <= 0 or not self._running():
                    self.count("lockstep_timeouts")
                    return
                self._ack.wait(min(left, 0.1))
            self._acked.discard(stamp)
            self.count("lockstep_acked")

    def _running(self) -> bool:
        return rclpy.ok() and not self._stop.is_set()

    def close(self) -> None:
        """Stop playback (the message being published completes), then close the bag."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self.reader.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(BagPlayer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
