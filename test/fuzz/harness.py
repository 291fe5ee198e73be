"""Drive a node's real subscription callbacks in-process and record what it publishes.

The node is constructed with real rclpy (a private context and DDS domain on localhost). Its
publishers' ``publish`` is wrapped so every message is recorded (and still published); its
subscriptions are found by topic and their callbacks (the guarded ones rclpy would call) are called
directly. Nodes that hand frames to a :class:`~ba_perception.ros.inputs.FrameWorker` thread get the
thread stopped, and the frame the callback put into the worker's slot is processed synchronously by
the same function the thread would call, without the thread's catch-all, so an exception in the
processing fails the test instead of being counted as ``processing_error``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

T0 = 1_700_000_000 * 10**9
DT = 100_000_000
FED = {"messages": 0}  # messages fed to node callbacks in this test process (reported by test/fuzz/conftest.py)


def rss_mb() -> float:
    """Resident set size of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return math.nan


class RosContext:
    """A private rclpy context on a private domain id, localhost discovery only."""

    def __init__(self, domain_id: int) -> None:
        import rclpy

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.nodes: list = []

    def create(self, node_cls: type, **params: Any) -> Any:
        from rclpy.parameter import Parameter

        node = node_cls(context=self.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for n in self.nodes:
            close = getattr(n, "close", None)
            if close is not None:
                close()
            n.destroy_node()
        self.context.try_shutdown()


class Harness:
    """Calls ``node``'s subscription callbacks and records its publications (see the module docstring)."""

    def __init__(self, node: Any, process: Callable[[Any], None] | None = None, worker: Any = None) -> None:
        self.node = node
        self.published: dict[str, list] = {}
        for pub in node.publishers:
            topic = pub.topic_name
            if topic in ("/diagnostics", "/parameter_events", "/rosout"):
                continue
            self.published[topic] = []
            pub.publish = self._recorder(pub, self.published[topic])
        self.subs: dict[str, list] = {}
        for sub in node.subscriptions:
            self.subs.setdefault(sub.topic_name, []).append(sub)
        self.worker = worker
        self.process = process
        if worker is not None:
            worker.close()  # frames are processed synchronously by drain()

    @staticmethod
    def _recorder(pub: Any, out: list) -> Callable[[Any], None]:
        publish = pub.publish

        def record(msg: Any) -> None:
            out.append(msg)
            publish(msg)

        return record

    def feed(self, topic: str, msg: Any) -> None:
        """Call the subscription callbacks of ``topic`` with ``msg`` and process what they handed to the worker."""
        FED["messages"] += 1
        for sub in self.subs[topic]:
            sub.callback(msg)
        self.drain()

    def drain(self) -> None:
        if self.worker is None:
            return
        item = self.worker.slot.get(timeout=0)
        if item is not None:
            self.process(item)

    def rejections(self) -> int:
        """All counted drops: ``rejected.*`` and the stale-frame drops."""
        return sum(v for k, v in self.node.counters.items() if k.startswith("rejected.") or k.startswith("frames_dropped"))

    def n_out(self, topic: str | None = None) -> int:
        return sum(len(v) for k, v in self.published.items() if topic is None or k == topic)

    def callback_errors(self) -> int:
        return self.node.counters.get("rejected.callback_error", 0)


# ---------------------------------------------------------------------------- valid messages
def stamp(k: int) -> Any:
    from ba_perception.ros.node import ns_to_time

    return ns_to_time(T0 + k * DT)


K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 96.0], [0.0, 0.0, 1.0]])


def _pose(x: float, y: float, z: float, yaw: float = 0.0) -> Any:
    from geometry_msgs.msg import Pose

    p = Pose()
    p.position.x, p.position.y, p.position.z = x, y, z
    p.orientation.z, p.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return p


def trace(n: int = 2) -> list:
    from ba_perception.ros.node import make_stage, wall_ns

    now = wall_ns()
    return [make_stage(s, now - 3_000_000, now - 2_000_000, now) for s in ("detector", "track_buffer", "tracker")[:n]]


def detections(k: int, rng: np.random.Generator, n: int = 4, emb: int = 8) -> Any:
    """A valid Detection3DArray (odom) of ``n`` cars moving slowly, frame ``k``."""
    from ba_perception_msgs.msg import Detection3D, Detection3DArray

    msg = Detection3DArray(camera_pose=_pose(k * 0.5, 0.0, 1.6), image_width=640, image_height=192, k=K.ravel().tolist())
    msg.header.stamp, msg.header.frame_id = stamp(k), "odom"
    cov = np.diag([0.04, 0.04, 0.01, -1.0, -1.0, 0.01]).ravel().tolist()
    for j in range(n):
        d = Detection3D(tracklet_id=j + 1, class_label="car", score=0.9, box_2d=[100.0 + 60 * j, 80.0, 140.0 + 60 * j, 110.0],
                        pose=_pose(20.0 + 6 * j + 0.3 * k + rng.normal(0, 0.05), -4.0 + 3 * j, 0.8, 0.1),
                        pose_covariance=cov, velocity_covariance=np.diag([0.25, 0.25, 0.25]).ravel().tolist(),
                        refined=True, is_static=False, num_frames=4,
                        embedding=np.eye(emb, dtype=np.float32)[j % emb].tolist())
        d.size.x, d.size.y, d.size.z = 4.2, 1.8, 1.6
        d.velocity.x = 3.0
        msg.detections.append(d)
    msg.trace = trace(2)
    return msg


def observations(k: int, rng: np.random.Generator, n: int = 3, emb: int = 8) -> Any:
    """A valid ObjectObservationArray (camera optical frame) of ``n`` cars ahead, frame ``k``."""
    from ba_perception_msgs.msg import ObjectObservation, ObjectObservationArray

    msg = ObjectObservationArray(image_width=640, image_height=192, k=K.ravel().tolist())
    msg.header.stamp, msg.header.frame_id = stamp(k), "camera_optical"
    for j in range(n):
        z = 15.0 + 5 * j + rng.normal(0, 0.1)
        x = -3.0 + 3 * j
        u, v = K[0, 0] * x / z + K[0, 2], K[1, 1] * 0.5 / z + K[1, 2]
        p = _pose(x, 0.5, z)
        # object frame (x forward, y left, z up) in the optical frame, car facing away from the camera
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = 0.5, -0.5, 0.5, -0.5
        o = ObjectObservation(class_label="car", score=0.8, box_2d=[u - 20, v - 10, u + 20, v + 10], pose=p,
                              depth_std=1.0, lateral_std=0.2, yaw_std=0.1,
                              embedding=np.eye(emb, dtype=np.float32)[j % emb].tolist(), descriptor_dim=4,
                              sample_uv=np.tile([u, v], 4).astype(np.float32).tolist(),
                              descriptors=np.tile(np.eye(4, dtype=np.float32)[j % 4], 4).tolist())
        o.size.x, o.size.y, o.size.z = 4.2, 1.8, 1.6
        msg.observations.append(o)
    msg.trace = trace(1)
    return msg


def tracks(k: int, rng: np.random.Generator, n: int = 3) -> Any:
    """A valid Track3DArray (odom) of ``n`` tracks, frame ``k``."""
    from ba_perception_msgs.msg import Track3D, Track3DArray

    msg = Track3DArray(camera_pose=_pose(k * 0.5, 0.0, 1.6), image_width=64, image_height=48,
                       k=[50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0])
    # camera_pose above is a body-frame pose; the optical frame looks along odom +x:
    msg.camera_pose.orientation.x, msg.camera_pose.orientation.y = -0.5, 0.5
    msg.camera_pose.orientation.z, msg.camera_pose.orientation.w = -0.5, 0.5
    msg.header.stamp, msg.header.frame_id = stamp(k), "odom"
    for j in range(n):
        t = Track3D(track_id=1000 + j, class_label="car", score=0.9, status=1,
                    pose=_pose(k * 0.5 + 15.0 + 5 * j, -3.0 + 3 * j, 0.8, rng.normal(0, 0.1)),
                    pose_covariance=np.eye(6).ravel().tolist(), age=k, hits=k, box_2d=[10.0, 10.0, 20.0, 20.0])
        t.size.x, t.size.y, t.size.z = 4.2, 1.8, 1.6
        t.velocity.x = 2.0
        msg.tracks.append(t)
    msg.trace = trace(3)
    return msg


def odometry(k: int) -> Any:
    from nav_msgs.msg import Odometry

    o = Odometry()
    o.header.stamp, o.header.frame_id, o.child_frame_id = stamp(k), "odom", "base_link"
    o.pose.pose.position.x = 0.5 * k
    o.pose.pose.orientation.w = 1.0
    return o


ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2")


def image(k: int, rng: np.random.Generator, w: int = 64, h: int = 48, encoding: str = "rgb8") -> Any:
    """A valid raw image of ``encoding`` with stamp ``k``."""
    from ba_perception.ros.image import numpy_to_image

    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}.get(encoding, 2)
    dtype = np.uint16 if encoding == "mono16" else np.uint8
    arr = rng.integers(0, np.iinfo(dtype).max, (h, w, ch) if ch > 1 else (h, w), dtype=dtype)
    img = numpy_to_image(arr, encoding)
    img.header.stamp, img.header.frame_id = stamp(k), "camera_optical"
    return img


def compressed(k: int, rng: np.random.Generator, fmt: str = "jpeg", w: int = 64, h: int = 48) -> Any:
    from ba_perception.ros.image import rgb_to_compressed

    msg = rgb_to_compressed(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), fmt)
    msg.header.stamp, msg.header.frame_id = stamp(k), "camera_optical"
    return msg


def camera_info(k: int, w: int = 64, h: int = 48) -> Any:
    from ba_perception.ros.convert import k_to_camera_info

    info = k_to_camera_info(np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]]), w, h)
    info.header.stamp, info.header.frame_id = stamp(k), "camera_optical"
    return info
