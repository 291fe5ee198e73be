"""In-process rclpy helpers of the benchmarks and evaluations (the one place outside nodes/ that uses rclpy).

``bench stack`` / ``bench detector`` observe a running graph with a probe node; ``bench transport``
runs an image publisher and subscriber process; ``replay-eval`` reads recorded output messages back
as rclpy messages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class OutputCounter:
    """An in-process rclpy node on ``domain_id`` counting the messages on one topic (raw, not deserialised)."""

    def __init__(self, domain_id: int, msg_type: Any, topic: str, name: str = "bench_probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from ba_perception.ros.params import qos_profile

        self.count = 0
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.node.create_subscription(msg_type, topic, self._on_msg, qos_profile("reliable", 100), raw=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _on_msg(self, _raw: bytes) -> None:
        self.count += 1

    def spin_once(self, timeout_s: float) -> None:
        """Process callbacks for up to ``timeout_s`` seconds."""
        self.executor.spin_once(timeout_sec=timeout_s)

    def close(self) -> None:
        """Shut down the executor, node and context."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


class StackProbe:
    """In-process rclpy probe node for ``bench stack``.

    An in-process rclpy node for ``bench stack``: graph discovery checks and counters of the
    frames played (camera_info stamps), the graph's Track3DArray stamps and objects per frame.
    """

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo

        from ba_perception.ros.params import qos_profile
        from ba_perception_msgs.msg import Detection3DArray, Track3DArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("bench_stack_probe", context=self.context)
        self.frames = 0
        self.in_stamps: list[int] = []  # capture stamps of the frames played (camera_info)
        self.out_stamps: set[int] = set()  # stamps of the Track3DArrays the graph published
        self.objects: list[int] = []
        self.refined: list[int] = []
        self.node.create_subscription(CameraInfo, "/camera/camera_info", self._on_info, qos_profile("reliable", 100), raw=True)
        self.node.create_subscription(Track3DArray, "/ba_perception/tracks", self._on_tracks, qos_profile("reliable", 100), raw=True)
        self.node.create_subscription(Detection3DArray, "/ba_perception/detections", self._on_det, qos_profile_sensor_data)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def _on_info(self, raw: bytes) -> None:
        from ba_perception.ros.sync import header_stamp_ns

        self.frames += 1
        self.in_stamps.append(header_stamp_ns(raw) or -1)

    def _on_tracks(self, raw: bytes) -> None:
        from ba_perception.ros.sync import header_stamp_ns

        self.out_stamps.add(header_stamp_ns(raw) or -1)

    def dropped(self) -> int:
        """Played frames (since the last reset) whose tracks never came out."""
        return sum(1 for s in self.in_stamps if s not in self.out_stamps)

    def _on_det(self, msg: Any) -> None:
        self.objects.append(len(msg.detections))
        self.refined.append(sum(1 for d in msg.detections if d.refined))

    def reset(self) -> None:
        """Clear the frame counters and stamps."""
        self.frames = 0
        self.in_stamps.clear()
        self.out_stamps.clear()
        self.objects.clear()
        self.refined.clear()

    def spin(self, seconds: float) -> None:
        """Process callbacks for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.executor.spin_once(timeout_sec=min(left, 0.05))

    def subscribers(self, topic: str) -> int:
        """Number of subscribers of ``topic``."""
        return self.node.count_subscribers(topic)

    def close(self) -> None:
        """Shut down the executor, node and context."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def image_publisher(args: Any) -> None:
    """Image publisher process of ``bench transport``.

    ``bench transport``'s publisher process: ``args.count`` rgb8 images at ``args.rate`` Hz, stamped
    with the wall clock right before ``publish``; writes ``{"failures": n}`` to ``args.result``.
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from ba_perception.ros.image import numpy_to_image
    from ba_perception.ros.node import ns_to_time

    rclpy.init()
    node = rclpy.create_node("bench_transport_pub")
    pub = node.create_publisher(__import__("sensor_msgs.msg", fromlist=["Image"]).Image, "/bench/image",
                                QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    rgb = np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
    msg = numpy_to_image(rgb, "rgb8")
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # let the reader's matching settle on both sides
    period = 1.0 / args.rate
    t0 = time.monotonic()
    failures = 0
    for i in range(args.count):
        delay = t0 + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg.header.frame_id = str(i)
        msg.header.stamp = ns_to_time(time.time_ns())
        try:
            pub.publish(msg)
        except Exception:  # reliable history full: counted as not delivered
            failures += 1
    time.sleep(1.0)
    Path(args.result).write_text(json.dumps({"failures": failures}))
    node.destroy_node()
    rclpy.shutdown()


def image_subscriber(args: Any) -> None:
    """Image subscriber process of ``bench transport``.

    ``bench transport``'s subscriber process: the wall-clock latency of each image by index,
    written to ``args.result`` as ``{"latency_ms": {index: ms}}``.
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_sub")
    lat: dict[int, float] = {}

    def cb(msg: Image) -> None:
        now = time.time_ns()
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        lat[int(msg.header.frame_id)] = (now - sent) / 1e6

    node.create_subscription(Image, "/bench/image", cb, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + args.count / args.rate + 30
    while len(lat) < args.count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        if Path(args.result + ".done").exists():
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
            break
    Path(args.result).write_text(json.dumps({"latency_ms": lat}))
    node.destroy_node()
    rclpy.shutdown()


def read_stamped_messages(record: Path, topics: Any) -> dict[str, dict[int, Any]]:
    """Messages of a rosbag2 recording as rclpy messages, ``{topic: {header stamp ns: message}}``."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from ba_perception.ros.bag_types import import_message_class

    out: dict[str, dict[int, Any]] = {t: {} for t in topics}
    with Reader(record) as reader:
        classes = {c.topic: import_message_class(c.msgtype) for c in reader.connections}
        for conn, _, raw in reader.messages():
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            out.setdefault(conn.topic, {})[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = msg
    return out
