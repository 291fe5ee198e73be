"""Camera, box and SE(3) geometry shared by the detector, object BA, tracker, world and visualizer.

Conventions (defined here once, used everywhere):

- Camera optical frame (REP-103 ``*_optical``): x right, y down, z forward. Pixel (u, v) has its
  origin at the *centre* of the top-left pixel, so ``u = fx * x / z + cx`` exactly.
- ``odom`` / ego body frames (REP-103): x forward, y left, z up.
- Object frame: origin at the geometric centre of the 3D box, x forward (length ``l``),
  y left (width ``w``), z up (height ``h``). Sizes are ``(l, w, h)`` in metres.
- Yaw in the camera frame follows KITTI's ``rotation_y``: rotation about the camera y axis, 0 when
  the object's forward axis points along camera +x; object up is camera -y.
- Yaw in ``odom`` is the rotation about +z of the object's forward axis.
- Poses are 4x4 homogeneous matrices ``T_a_b`` that map points in frame b to frame a.

All functions take batched torch tensors with shapes documented as ``(*, ...)``; they work on CPU
and CUDA and in float32/float64.
"""

from __future__ import annotations

import math

import torch

# Fixed rotation from the camera optical frame to a REP-103 camera body frame (x fwd, y left, z up).
R_BODY_OPTICAL = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)

# Box corner order: bottom face (z = -h/2) then top face, counter-clockwise seen from above,
# starting at front-left. Edges below index into this order.
_CORNER_SIGNS = torch.tensor(
    [
        [1, 1, -1],
        [-1, 1, -1],
        [-1, -1, -1],
        [1, -1, -1],
        [1, 1, 1],
        [-1, 1, 1],
        [-1, -1, 1],
        [1, -1, 1],
    ],
    dtype=torch.float64,
)
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)


class GeometryError(ValueError):
    """Raised when an input has the wrong shape or invalid values."""


def _check_last(x: torch.Tensor, n: int, name: str) -> None:
    if x.shape[-1] != n:
        raise GeometryError(f"{name} must have shape (*, {n}), got {tuple(x.shape)}")


def valid_intrinsics(K) -> bool:
    """Whether ``K`` is a usable ``(3, 3)`` pinhole matrix: finite, with positive focal lengths."""
    K = torch.as_tensor(K, dtype=torch.float64)
    return K.shape == (3, 3) and bool(torch.isfinite(K).all()) and bool(K[0, 0] > 0) and bool(K[1, 1] > 0)


def project_points(points_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Project camera-frame points to pixels.

    Args:
        points_cam: ``(*, N, 3)`` points in the camera optical frame, metres.
        K: ``(*, 3, 3)`` intrinsics (broadcast against the batch).

    Returns:
        ``(*, N, 2)`` pixel coordinates ``(u, v)``; points with ``z <= 0`` give inf/nan.
    """
    _check_last(points_cam, 3, "points_cam")
    # u = fx * x / z + cx ; v = fy * y / z + cy
    uvw = points_cam @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3]


def unproject_pixels(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Back-project pixels with depth (z, metres) to camera-frame points ``(*, N, 3)``."""
    _check_last(uv, 2, "uv")
    fx, fy, cx, cy = K[..., 0, 0, None], K[..., 1, 1, None], K[..., 0, 2, None], K[..., 1, 2, None]
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    return torch.stack([x, y, depth], dim=-1)


def transform_points(T_a_b: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """Map ``(*, N, 3)`` points from frame b to frame a with ``(*, 4, 4)`` poses."""
    _check_last(points_b, 3, "points_b")
    return points_b @ T_a_b[..., :3, :3].transpose(-1, -2) + T_a_b[..., None, :3, 3]


def make_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Build ``(*, 4, 4)`` poses from rotations ``(*, 3, 3)`` and translations ``(*, 3)``."""
    T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Invert rigid ``(*, 4, 4)`` poses: ``T^-1 = [R^T, -R^T t]``."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return make_pose(Rt, -(Rt @ T[..., :3, 3:4])[..., 0])


def rot_z(yaw: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(*, 3, 3)`` about +z by ``yaw`` radians (odom / body frames)."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    z, o = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(yaw.shape + (3, 3))


def rotation_cam_from_yaw(ry: torch.Tensor) -> torch.Tensor:
    """``R_cam_obj`` ``(*, 3, 3)`` for an upright object with KITTI ``rotation_y`` = ``ry``.

    Columns are the object axes in the camera frame: forward ``(cos ry, 0, -sin ry)``,
    left ``(sin ry, 0, cos ry)``, up ``(0, -1, 0)``.
    """
    c, s = torch.cos(ry), torch.sin(ry)
    z, o = torch.zeros_like(ry), torch.ones_like(ry)
    return torch.stack([c, s, z, z, z, -o, -s, c, z], dim=-1).reshape(ry.shape + (3, 3))


def yaw_from_rotation_cam(R_cam_obj: torch.Tensor) -> torch.Tensor:
    """KITTI ``rotation_y`` of the object's forward axis: ``atan2(-x_z, x_x)``."""
    fwd = R_cam_obj[..., :, 0]
    return torch.atan2(-fwd[..., 2], fwd[..., 0])


def box_corners(R_frame_obj: torch.Tensor, center: torch.Tensor, size_lwh: torch.Tensor) -> torch.Tensor:
    """Eight corners ``(*, 8, 3)`` of boxes with pose ``(R, center)`` and size ``(l, w, h)``.

    Corner order is documented at ``BOX_EDGES``; the frame is whatever ``R``/``center`` are in.
    """
    _check_last(center, 3, "center")
    _check_last(size_lwh, 3, "size_lwh")
    local = 0.5 * _CORNER_SIGNS.to(center) * size_lwh[..., None, :]
    return local @ R_frame_obj.transpose(-1, -2) + center[..., None, :]


def box_corners_cam(center_cam: torch.Tensor, size_lwh: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """Corners ``(*, 8, 3)`` of upright boxes given in the camera frame with KITTI yaw ``ry``."""
    return box_corners(rotation_cam_from_yaw(ry), center_cam, size_lwh)


def observation_angle(center_cam: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """KITTI observation angle ``alpha = ry - atan2(x, z)``, wrapped to ``[-pi, pi)``."""
    return wrap_angle(ry - torch.atan2(center_cam[..., 0], center_cam[..., 2]))


def yaw_from_observation_angle(alpha: torch.Tensor, center_cam: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`observation_angle`: ``ry = alpha + atan2(x, z)``."""
    return wrap_angle(alpha + torch.atan2(center_cam[..., 0], center_cam[..., 2]))


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Wrap angles to ``[-pi, pi)``."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def box2d_from_points(uv: torch.Tensor) -> torch.Tensor:
    """Axis-aligned ``(*, 4)`` boxes ``(x1, y1, x2, y2)`` enclosing ``(*, N, 2)`` pixel points."""
    return torch.cat([uv.amin(dim=-2), uv.amax(dim=-2)], dim=-1)


def iou_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of ``(N, 4)`` and ``(M, 4)`` boxes in ``(x1, y1, x2, y2)`` pixels."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def quaternion_from_matrix(R: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(*, 4)`` in ROS order ``(x, y, z, w)`` from rotations ``(*, 3, 3)``, w >= 0."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate formulas; pick the numerically largest denominator per element.
    qw = torch.sqrt(torch.clamp(1 + tr, min=0)) / 2
    qx = torch.sqrt(torch.clamp(1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], min=0)) / 2
    qy = torch.sqrt(torch.clamp(1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], min=0)) / 2
    qz = torch.sqrt(torch.clamp(1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2], min=0)) / 2
    qx = torch.copysign(qx, m[..., 2, 1] - m[..., 1, 2])
    qy = torch.copysign(qy, m[..., 0, 2] - m[..., 2, 0])
    qz = torch.copysign(qz, m[..., 1, 0] - m[..., 0, 1])
    q = torch.stack([qx, qy, qz, qw], dim=-1)
    return q / q.norm(dim=-1, keepdim=True)


def matrix_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Rotations ``(*, 3, 3)`` from quaternions ``(*, 4)`` in ROS order ``(x, y, z, w)``."""
    _check_last(q, 4, "q")
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation matrices ``(*, 3, 3)`` from axis-angle vectors ``(*, 3)``."""
    _check_last(omega, 3, "omega")
    theta = omega.norm(dim=-1, keepdim=True)[..., None]
    small = theta < 1e-8
    theta_safe = torch.where(small, torch.ones_like(theta), theta)
    K = skew(omega)
    A = torch.where(small, 1 - theta**2 / 6, torch.sin(theta_safe) / theta_safe)
    B = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(theta_safe)) / theta_safe**2)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return eye + A * K + B * (K @ K)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``(*, 3, 3)`` with ``skew(v) @ u == v x u``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors ``(*, 3)`` (radians, |w| <= pi) of rotations ``(*, 3, 3)``; inverse of :func:`so3_exp`."""
    cos = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    # vee((R - R^T) / 2) = sin(theta) * axis
    w = 0.5 * torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = w.norm(dim=-1, keepdim=True)
    theta = torch.atan2(sin, cos[..., None])
    small = theta < 1e-4
    scale = torch.where(small, 1 + theta**2 / 6, theta / torch.where(small, torch.ones_like(sin), sin))
    out = w * scale
    # Near pi, sin(theta) -> 0: take the axis from (R + I) / 2 ~ a a^T, sign from w.
    near_pi = theta[..., 0] > math.pi - 1e-3
    B = 0.5 * (R + torch.eye(3, dtype=R.dtype, device=R.device))
    col = torch.diagonal(B, dim1=-2, dim2=-1).argmax(-1)
    axis = torch.gather(B, -1, col[..., None, None].expand(B.shape[:-1] + (1,)))[..., 0]
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    sign = torch.where((axis * w).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(R.dtype)
    return torch.where(near_pi[..., None], sign * axis * theta, out)


def so3_right_jacobian_inv(omega: torch.Tensor) -> torch.Tensor:
    """Inverse right Jacobians ``(*, 3, 3)`` of SO(3) at ``omega`` ``(*, 3)``.

    ``log(exp(omega) exp(d)) ~= omega + Jr^-1(omega) d`` for small ``d``:
    ``Jr^-1 = I + W/2 + (1/theta^2 - (1 + cos theta) / (2 theta sin theta)) W^2`` with ``W = skew(omega)``.
    """
    _check_last(omega, 3, "omega")
    theta = omega.norm(dim=-1, keepdim=True)[..., None]
    small = theta < 1e-4
    ts = torch.where(small, torch.ones_like(theta), theta)
    c = torch.where(small, 1.0 / 12 + theta**2 / 720, 1 / ts**2 - (1 + torch.cos(ts)) / (2 * ts * torch.sin(ts)))
    W = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(W.shape)
    return eye + 0.5 * W + c * (W @ W)


def boxes_cam_to_frame(T_a_cam: torch.Tensor, center_cam: torch.Tensor, ry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upright camera-frame boxes (centre ``(N, 3)``, KITTI yaw ``(N,)``) -> centre and yaw in a z-up frame a.

    ``T_a_cam`` is ``(4, 4)``; the returned yaw is the rotation about a's +z of the object's
    forward axis (exact when the camera is level; otherwise the forward axis is projected).
    """
    center_a = transform_points(T_a_cam, center_cam[None])[0] if center_cam.ndim == 2 else transform_points(T_a_cam, center_cam)
    fwd_a = rotation_cam_from_yaw(ry)[..., :, 0] @ T_a_cam[:3, :3].transpose(-1, -2)
    return center_a, torch.atan2(fwd_a[..., 1], fwd_a[..., 0])


def ray_covariance(center_cam: torch.Tensor, depth_std: torch.Tensor, lateral_std: torch.Tensor) -> torch.Tensor:
    """Camera-frame covariance ``(N, 3, 3)`` of box centres: ``depth_std`` along the viewing ray, ``lateral_std`` across it (m).

    ``Sigma = lat^2 I + (depth^2 - lat^2) r r^T`` with r the unit ray.
    """
    r = center_cam / center_cam.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    lat2 = (lateral_std**2)[..., None, None]
    dep2 = (depth_std**2)[..., None, None]
    eye = torch.eye(3, dtype=center_cam.dtype, device=center_cam.device)
    return lat2 * eye + (dep2 - lat2) * (r[..., :, None] * r[..., None, :])


def ray_sqrt_information(ray: torch.Tensor, depth_std: torch.Tensor, lateral_std: torch.Tensor) -> torch.Tensor:
    """Square-root information of a ray-aligned position covariance.

    Square-root information ``(N, 3, 3)`` of :func:`ray_covariance` (``L^T L = Sigma^-1``) whose
    rows are the unit viewing ray over ``depth_std`` and two unit directions across it over
    ``lateral_std``: ``(L e)[0]`` is the whitened error along the ray. ``ray`` ``(N, 3)`` unit
    vectors in any frame (the rows are in the same frame); stds in metres.
    """
    # the coordinate axis least aligned with the ray is never parallel to it
    helper = torch.nn.functional.one_hot(ray.abs().argmin(-1), 3).to(ray.dtype)
    across1 = torch.linalg.cross(ray, helper)
    across1 = across1 / across1.norm(dim=-1, keepdim=True)
    across2 = torch.linalg.cross(ray, across1)
    return torch.stack([ray / depth_std[..., None], across1 / lateral_std[..., None], across2 / lateral_std[..., None]], -2)
