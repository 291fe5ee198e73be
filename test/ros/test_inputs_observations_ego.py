"""ros/inputs.py, ros/observations.py and ros/ego_motion.py on real rclpy nodes and messages (no DDS traffic)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from rclpy.parameter import Parameter

from ba_perception.core.detection.decode import Detections
from ba_perception.core.ego_motion import EgoMotionError
from ba_perception.ros.convert import extrinsics_to_matrix
from ba_perception.ros.ego_motion import EGO_MOTION_PARAMS, EgoMotionInput
from ba_perception.ros.inputs import FrameWorker, LatestSlot
from ba_perception.ros.node import PerceptionNode, ns_to_time
from ba_perception.ros.observations import detections_to_msg, msg_to_observations

T0 = 1_700_000_000_000_000_000


class _EgoNode(PerceptionNode):
    PARAMS = EGO_MOTION_PARAMS


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=231)
    yield ctx
    ctx.try_shutdown()


def _node(context, cls=PerceptionNode, **params):
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    if cls is PerceptionNode:
        return PerceptionNode("inputs_test", context=context, parameter_overrides=overrides)
    return cls("ego_test", context=context, parameter_overrides=overrides)


def test_latest_slot_keeps_only_the_newest_item_and_reports_the_drop():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # 1 was never taken
    assert slot.get(timeout=0.1) == 2
    assert slot.get(timeout=0.01) is None
    waiter = threading.Thread(target=lambda: slot.get(timeout=5.0))
    waiter.start()
    slot.close()
    waiter.join(timeout=1.0)
    assert not waiter.is_alive(), "close() must wake a blocked get()"


def test_frame_worker_counts_stale_drops_and_survives_a_failing_frame(context):
    node = _node(context)
    seen, release = [], threading.Event()

    def process(item):
        if item == "boom":
            raise ValueError("bad frame")
        if item == "slow":
            release.wait(5.0)
        seen.append(item)

    worker = FrameWorker(node, process, "frames_dropped_stale")
    try:
        worker.put("boom")
        deadline = time.monotonic() + 5
        while node.counters["rejected.processing_error"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.counters["rejected.processing_error"] == 1
        worker.put("slow")
        while worker.slot._item is not None and time.monotonic() < deadline:  # the worker took "slow"
            time.sleep(0.01)
        worker.put("a")
        worker.put("b")  # replaces "a" while the worker is busy
        release.set()
        while "b" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["slow", "b"]
        assert node.counters["frames_dropped_stale"] == 1
    finally:
        worker.close()
        node.destroy_node()


def _detections(n: int, S: int = 4, D: int = 3, E: int = 5) -> Detections:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return Detections(
        scores=r(n), labels=torch.zeros(n, dtype=torch.int64), box_2d=r(n, 4) * 100, center_uv=r(n, 2),
        center_cam=r(n, 3) * 10 + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64), size_lwh=r(n, 3) + 1,
        yaw=(r(n) - 0.5) * 6, alpha=r(n), depth_std=r(n), lateral_std=r(n), yaw_std=r(n),
        embedding=r(n, E), sample_uv=r(n, S, 2) * 50, descriptors=r(n, S, D))


def test_observations_round_trip_through_the_message():
    from std_msgs.msg import Header

    det = _detections(3)
    K = np.array([[700.0, 0, 620], [0, 700, 190], [0, 0, 1]])
    header = Header(stamp=ns_to_time(T0 + 5), frame_id="camera_optical")
    frame = msg_to_observations(detections_to_msg(det, ["car"] * 3, header, K, (1242, 375)))
    assert frame.stamp_ns == T0 + 5 and frame.image_wh == (1242, 375) and frame.labels == ["car"] * 3
    np.testing.assert_allclose(frame.K, K)
    np.testing.assert_allclose(frame.center_cam, det.center_cam.numpy(), atol=1e-9)
    yaw_err = np.angle(np.exp(1j * (frame.yaw - det.yaw.numpy())))
    np.testing.assert_allclose(yaw_err, 0.0, atol=1e-6)
    np.testing.assert_allclose(frame.size_lwh, det.size_lwh.numpy(), atol=1e-9)
    for name in ("box_2d", "scores", "depth_std", "embedding", "sample_uv", "descriptors"):
        np.testing.assert_allclose(getattr(frame, name), getattr(det, name).float().numpy(), rtol=1e-6, err_msg=name)


def test_empty_observation_array_gives_empty_arrays():
    from std_msgs.msg import Header

    frame = msg_to_observations(detections_to_msg(_detections(0), [], Header(), np.eye(3), (64, 48)))
    assert frame.labels == [] and frame.center_cam.shape == (0, 3) and frame.box_2d.shape == (0, 4)


def _odom(t_ns: int, x: float, yaw: float = 0.0) -> Odometry:
    m = Odometry()
    m.header.stamp = ns_to_time(t_ns)
    m.pose.pose.position.x = x
    m.pose.pose.orientation.z, m.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    return m


def test_camera_pose_is_odometry_times_mounting_and_tf_static_overrides_it(context):
    ext = [1.5, 0.1, 1.4, 0.0, 0.05, 0.0]
    node = _node(context, _EgoNode, camera_extrinsics=ext, ego_wait_s=0.0)
    try:
        ego = EgoMotionInput(node)
        for i in range(5):  # 10 m/s along x, 10 Hz
            ego._on_odom(_odom(T0 + i * 100_000_000, 1.0 * i))
        T = ego.camera_pose(T0 + 250_000_000)  # between two odometry messages: interpolated
        T_odom_base = np.eye(4)
        T_odom_base[0, 3] = 2.5
        np.testing.assert_allclose(T, T_odom_base @ extrinsics_to_matrix(ext), atol=1e-9)
        with pytest.raises(EgoMotionError):
            ego.camera_pose(T0 + 5_000_000_000)  # far beyond the newest odometry
        assert ego.extrinsics_source == "parameter"
    finally:
        node.destroy_node()


def test_tf_static_mounting_overrides_the_parameter(context):
    tf2_msgs = pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is on no registry here (apt ROS 2 has it)")
    node = _node(context, _EgoNode, ego_wait_s=0.0)
    try:
        ego = EgoMotionInput(node)
        ego._on_odom(_odom(T0, 1.0))
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = "base_link", "camera_optical"
        tf.transform.translation.x, tf.transform.translation.z = 2.0, 1.2
        tf.transform.rotation.w = 1.0
        ego._on_tf_static(tf2_msgs.TFMessage(transforms=[tf]))
        assert ego.extrinsics_source.startswith("/tf_static")
        np.testing.assert_allclose(ego.camera_pose(T0)[:3, 3], [1.0 + 2.0, 0.0, 1.2], atol=1e-9)
    finally:
        node.destroy_node()


def test_invalid_odometry_is_rejected_with_a_counted_reason(context):
    node = _node(context, _EgoNode, ego_wait_s=0.0)
    try:
        ego = EgoMotionInput(node)
        bad = _odom(T0, float("nan"))
        ego._on_odom(bad)
        not_unit = _odom(T0, 0.0)
        not_unit.pose.pose.orientation.w = 2.0
        ego._on_odom(not_unit)
        assert node.counters["rejected.ego_motion"] == 2
        with pytest.raises(EgoMotionError):
            ego.camera_pose(T0)
    finally:
        node.destroy_node()
