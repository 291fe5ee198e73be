"""Conversions between ROS messages and the numpy/torch records of core/ (poses, intrinsics, odometry)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import Point, Pose, Quaternion
from sensor_msgs.msg import CameraInfo

from ba_perception.core import geometry

MIN_FOCAL_PX, MAX_FOCAL_PX = 1e-1, 1e6  # sane focal lengths, pixels (a 1e+-300 one is a broken calibration)
MAX_IMAGE_SIDE_PX = 65536  # largest camera_info width / height; principal point within +-this
MAX_COORD_M = 1e6  # largest |coordinate| of a pose accepted from a message, metres
UNIT_QUATERNION_TOL = 1e-2  # | |q| - 1 | above this: not an orientation


class InputError(ValueError):
    """A message whose content is unusable; ``reason`` is a counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pose_to_matrix(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 float64 ``T_frame_child``."""
    q = pose.orientation
    R = geometry.matrix_from_quaternion(torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)).numpy()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = (pose.position.x, pose.position.y, pose.position.z)
    return T


def matrix_to_pose(T: np.ndarray) -> Pose:
    """4x4 ``T_frame_child`` -> ``geometry_msgs/Pose``."""
    return matrices_to_poses(np.asarray(T, dtype=np.float64)[None])[0]


def matrices_to_poses(T: np.ndarray) -> list[Pose]:
    """``(N, 4, 4)`` poses -> ``geometry_msgs/Pose`` each (one batched quaternion conversion)."""
    T = np.asarray(T, dtype=np.float64).reshape(-1, 4, 4)
    q = geometry.quaternion_from_matrix(torch.as_tensor(T[:, :3, :3])).numpy().tolist()
    p = T[:, :3, 3].tolist()
    return [Pose(position=Point(x=pi[0], y=pi[1], z=pi[2]), orientation=Quaternion(x=qi[0], y=qi[1], z=qi[2], w=qi[3]))
            for pi, qi in zip(p, q)]


def pose_problem(pose: Pose) -> str | None:
    """Why a ``geometry_msgs/Pose`` from a message is unusable (None when it is fine).

    Unusable: a NaN/inf entry, a coordinate beyond :data:`MAX_COORD_M`, or an orientation quaternion
    that is not unit length within :data:`UNIT_QUATERNION_TOL` (e.g. the all-zero default).
    """
    p, q = pose.position, pose.orientation
    xyz, quat = (p.x, p.y, p.z), (q.x, q.y, q.z, q.w)
    if not all(math.isfinite(v) for v in xyz + quat):
        return "pose contains NaN/inf"
    if max(abs(v) for v in xyz) > MAX_COORD_M:
        return f"pose position beyond {MAX_COORD_M:g} m"
    n = math.sqrt(sum(v * v for v in quat))
    if abs(n - 1.0) > UNIT_QUATERNION_TOL:
        return f"orientation quaternion is not unit length (|q| = {n:.4g})"
    return None


def box_problem(o: Any) -> str | None:
    """Why a box message (Track3D, Detection3D, ObjectObservation) is unusable (None when it is fine).

    Unusable: a bad pose (:func:`pose_problem`) or a size that is not finite, positive and below
    :data:`MAX_COORD_M`.
    """
    why = pose_problem(o.pose)
    if why is not None:
        return why
    size = (o.size.x, o.size.y, o.size.z)
    if not all(math.isfinite(v) and 0 < v <= MAX_COORD_M for v in size):
        return f"size must be finite and > 0, got {size}"
    return None


def k_problem(K: np.ndarray) -> str | None:
    """Say why a 3x3 intrinsics matrix is unusable.

    Why a 3x3 intrinsics matrix is unusable (None when it is fine): NaN/inf, a focal length outside
    [:data:`MIN_FOCAL_PX`, :data:`MAX_FOCAL_PX`], a principal point or skew beyond
    :data:`MAX_IMAGE_SIDE_PX`, or a last row other than (0, 0, 1).
    """
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)):
        return "K contains NaN/inf"
    fx, fy = K[0, 0], K[1, 1]
    if not (MIN_FOCAL_PX <= fx <= MAX_FOCAL_PX and MIN_FOCAL_PX <= fy <= MAX_FOCAL_PX):
        return f"focal lengths must be in [{MIN_FOCAL_PX:g}, {MAX_FOCAL_PX:g}] px, got fx={fx:g} fy={fy:g}"
    if max(abs(K[0, 1]), abs(K[0, 2]), abs(K[1, 2])) > MAX_IMAGE_SIDE_PX:
        return f"principal point / skew beyond {MAX_IMAGE_SIDE_PX} px: cx={K[0, 2]:g} cy={K[1, 2]:g} s={K[0, 1]:g}"
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or abs(K[2, 2] - 1.0) > 1e-6:
        return f"K must be upper triangular with K[2, 2] = 1, got rows 2-3 {K[1:].ravel().tolist()}"
    return None


def camera_info_to_k(info: CameraInfo) -> np.ndarray:
    """The 3x3 intrinsics of a CameraInfo after validation.

    Raises:
        InputError: reason ``intrinsics``: see :func:`k_problem`, or an image size of 0 or beyond
            :data:`MAX_IMAGE_SIDE_PX`.
    """
    K = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
    why = k_problem(K)
    if why is not None:
        raise InputError("intrinsics", f"camera_info {why}")
    if not (0 < info.width <= MAX_IMAGE_SIDE_PX and 0 < info.height <= MAX_IMAGE_SIDE_PX):
        raise InputError("intrinsics", f"camera_info image size is {info.width}x{info.height}")
    return K


def k_to_camera_info(K: np.ndarray, width: int, height: int, header: Any | None = None) -> CameraInfo:
    """A plumb-bob CameraInfo without distortion for a pinhole ``K``."""
    info = CameraInfo()
    if header is not None:
        info.header = header
    info.width, info.height = int(width), int(height)
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = [float(v) for v in np.asarray(K, dtype=np.float64).reshape(9)]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:3, :3] = K
    info.p = [float(v) for v in P.reshape(12)]
    return info


def odometry_to_matrix(odom: Any) -> np.ndarray:
    """``nav_msgs/Odometry`` -> 4x4 ``T_<frame_id>_<child_frame_id>`` after validation."""
    why = pose_problem(odom.pose.pose)
    if why is not None:
        raise InputError("ego_motion", f"odometry {why}")
    T = pose_to_matrix(odom.pose.pose)
    q = odom.pose.pose.orientation
    if not np.all(np.isfinite(T)):
        raise InputError("ego_motion", "odometry pose contains NaN/inf")
    n = math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
    if abs(n - 1.0) > 1e-3:
        raise InputError("ego_motion", f"odometry quaternion is not unit length (|q| = {n:.4f})")
    return T


def extrinsics_to_matrix(xyz_rpy: list[float]) -> np.ndarray:
    """``[x, y, z, roll, pitch, yaw]`` of the camera *body* frame in base_link -> ``T_base_cam`` (optical).

    The optical frame is the body frame rotated by :data:`geometry.R_BODY_OPTICAL`, as in REP-103.
    """
    if len(xyz_rpy) != 6:
        raise InputError("extrinsics", f"camera extrinsics need 6 values [x, y, z, roll, pitch, yaw], got {len(xyz_rpy)}")
    x, y, z, roll, pitch, yaw = map(float, xyz_rpy)
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    R_body = np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])
    T = np.eye(4)
    T[:3, :3] = R_body @ geometry.R_BODY_OPTICAL.numpy()
    T[:3, 3] = (x, y, z)
    return T
