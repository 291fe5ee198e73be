"""Ego-motion input for nodes: nav_msgs/Odometry (+ camera extrinsics) -> ``T_odom_cam`` at any stamp.

The camera's mounting comes from ``/tf_static`` (base_link -> camera frame) when tf2_msgs is
installed and the transform is published, else from the ``camera_extrinsics`` parameter.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ba_perception.core.ego_motion import EgoMotionBuffer, EgoMotionError
from ba_perception.ros.convert import InputError, extrinsics_to_matrix, odometry_to_matrix, pose_to_matrix
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import stamp_ns

if TYPE_CHECKING:
    from ba_perception.ros.node import PerceptionNode

DEFAULT_CAMERA_EXTRINSICS = [1.2, 0.0, 1.65, 0.0, 0.0, 0.0]  # [x, y, z, roll, pitch, yaw] of the camera body frame

EGO_MOTION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("odom_topic", "/odom", "nav_msgs/Odometry of base_link in odom"),
    ParamSpec("camera_extrinsics", DEFAULT_CAMERA_EXTRINSICS,
              "camera body frame in base_link [x, y, z, roll, pitch, yaw] (m, rad); /tf_static overrides"),
    ParamSpec("ego_max_extrapolation_s", 0.06, "largest gap between a frame and the nearest odometry, seconds", min=0.0),
    ParamSpec("ego_wait_s", 0.2, "how long a frame waits for late odometry before it is rejected", min=0.0),
)


class EgoMotionInput:
    """Subscribes odometry (and /tf_static where available) for ``node``."""

    def __init__(self, node: PerceptionNode) -> None:
        from nav_msgs.msg import Odometry

        self.node = node
        self.buffer = EgoMotionBuffer(max_extrapolation_s=node.p["ego_max_extrapolation_s"])
        try:
            self.T_base_cam = extrinsics_to_matrix(node.p["camera_extrinsics"])
        except InputError as err:
            from ba_perception.ros.node import StartupError

            raise StartupError(str(err)) from err
        self.extrinsics_source = "parameter"
        node.create_subscription(Odometry, node.p["odom_topic"], self._on_odom, qos_profile("reliable", 50))
        try:
            from tf2_msgs.msg import TFMessage

            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, qos_profile("latched"))
        except ImportError:
            pass  # tf2_msgs not installed here: extrinsics from the parameter

    def _on_odom(self, msg: Any) -> None:
        try:
            T = odometry_to_matrix(msg)
        except InputError as err:
            self.node.reject(err.reason, str(err))
            return
        t = stamp_ns(msg)
        newest = self.buffer.stamps[-1] if self.buffer.stamps else t
        change = self.buffer.add(t, T)
        if change == "backwards":
            self.node.reject("odom_backwards", f"odometry stamp went back by {(newest - t) / 1e9:.3f} s: ego-motion "
                             "buffer reset (bag looped?), the poses buffered before were dropped")
        elif change == "replaced":
            self.node.reject("odom_duplicate_stamp", "two odometry messages with the same stamp: the newer one kept")

    def _on_tf_static(self, msg: Any) -> None:
        for tf in msg.transforms:
            if tf.header.frame_id.lstrip("/") == "base_link" and "camera" in tf.child_frame_id:
                from geometry_msgs.msg import Point, Pose

                t, q = tf.transform.translation, tf.transform.rotation
                self.T_base_cam = pose_to_matrix(Pose(position=Point(x=t.x, y=t.y, z=t.z), orientation=q))
                self.extrinsics_source = f"/tf_static ({tf.child_frame_id})"

    def reset(self) -> None:
        """Forget all odometry."""
        self.buffer.reset()

    def camera_pose(self, stamp: int) -> np.ndarray:
        """``T_odom_cam`` (camera optical frame) at ``stamp`` ns, waiting up to ``ego_wait_s`` for odometry.

        Raises:
            EgoMotionError: no odometry close enough to the stamp.
        """
        deadline = time.monotonic() + self.node.p["ego_wait_s"]
        while True:
            try:
                return self.buffer.lookup(stamp) @ self.T_base_cam
            except EgoMotionError:
                newest = self.buffer.stamps[-1] if self.buffer.stamps else None
                if time.monotonic() >= deadline or (newest is not None and newest >= stamp):
                    raise
                time.sleep(0.003)
