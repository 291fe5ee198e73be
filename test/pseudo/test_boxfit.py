"""Cuboid fitting on synthetic point sets with known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from ba_perception.pseudo.boxfit import (
    FitOptions, TrackViews, box_corners_odom, fit_box, heading_from_shape, lshape_yaw, project_box,
)
from ba_perception.pseudo.clustering import ObjectCluster

K = np.array([[700.0, 0, 620], [0, 700.0, 180], [0, 0, 1]])


def _cam(x: float, y: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    T[:3, 3] = [x, y, 1.6]
    return T


def _car_surface(center, size, yaw, rng, cams_xy, n=800):
    """Points on the camera-facing vertical faces (height 0.3-1.0 m), a hood in front and a roof behind the centre."""
    l, w, h = size
    pts = []
    # sides at x = +-l/2 and y = +-w/2 in the object frame
    for axis, half, other in ((0, l / 2, w / 2), (1, w / 2, l / 2)):
        for sgn in (-1, 1):
            a = np.zeros((n // 4, 3))
            a[:, axis] = sgn * half
            a[:, 1 - axis] = rng.uniform(-other, other, n // 4)
            a[:, 2] = rng.uniform(0.3, 1.0, n // 4)
            pts.append(a)
    hood = np.stack([rng.uniform(l / 2 - 1.3, l / 2, 150), rng.uniform(-w / 2, w / 2, 150), np.full(150, 0.95)], 1)
    roof = np.stack([rng.uniform(-l / 2 + 0.4, l / 2 - 1.7, 150), rng.uniform(-w / 2 + 0.1, w / 2 - 0.1, 150), np.full(150, h)], 1)
    p = np.concatenate(pts + [hood, roof])
    c, s = np.cos(yaw), np.sin(yaw)
    world = np.stack([center[0] + c * p[:, 0] - s * p[:, 1], center[1] + s * p[:, 0] + c * p[:, 1], p[:, 2]], 1)
    # keep what the cameras can see: faces whose outward normal points to the mean camera position
    cam = cams_xy.mean(0)
    rel = np.array([[c, s], [-s, c]]) @ (cam - center[:2])
    keep = np.ones(len(p), bool)
    keep &= ~((np.abs(p[:, 0]) == l / 2) & (np.sign(p[:, 0]) != np.sign(rel[0])))
    keep &= ~((np.abs(p[:, 1]) == w / 2) & (np.sign(p[:, 1]) != np.sign(rel[1])))
    return world[keep], p[keep, 2]


def _views(center, size, yaw, cams):
    T_cam_odom = np.linalg.inv(np.stack(cams))
    v = TrackViews(np.arange(len(cams)), np.zeros((len(cams), 4)), np.stack([K] * len(cams)), T_cam_odom, (1242, 375))
    boxes, _ = project_box(box_corners_odom(np.array([*center, size[2] / 2]), np.array(size), yaw), v, FitOptions().silhouette_shrink)
    v.boxes = boxes
    return v


def test_lshape_yaw_recovers_the_axes_of_an_l_shaped_point_set():
    rng = np.random.default_rng(0)
    yaw = np.radians(23.0)
    a = np.stack([rng.uniform(-2, 2, 200), np.full(200, -0.9)], 1)
    b = np.stack([np.full(100, 2.0), rng.uniform(-0.9, 0.9, 100)], 1)
    p = np.concatenate([a, b]) + rng.normal(0, 0.02, (300, 2))
    R = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    assert abs(np.degrees(lshape_yaw(p @ R.T)) - 23.0) < 2.0


@pytest.mark.parametrize("center_xy, yaw_deg, source", [
    ((20.0, -4.0), 7.0, "side"),     # parked along the road on the right, facing the ego's travel direction
    ((20.0, 5.0), 183.0, "side"),    # on the left, facing against it
    ((20.0, -7.0), 93.0, "shape"),   # perpendicular, front towards the road (hood seen)
    ((20.0, -7.0), -87.0, "shape"),  # perpendicular, rear towards the road (rear seen)
])
def test_fit_box_recovers_a_parked_car_and_its_heading(center_xy, yaw_deg, source):
    rng = np.random.default_rng(2)
    center, size, yaw = np.array(center_xy), (4.3, 1.78, 1.55), np.radians(yaw_deg)
    cams = [_cam(float(x)) for x in np.linspace(0, 8, 15)]
    cams_xy = np.stack([T[:2, 3] for T in cams])
    pts, h = _car_surface(center, size, yaw, rng, cams_xy)
    pts += rng.normal(0, 0.03, pts.shape)
    cl = ObjectCluster(5, pts, h, pts[:5], np.arange(5), 0.0, np.array([0, 0, 1.0]))
    b = fit_box(cl, _views(center, size, yaw, cams), "car")
    assert b is not None and b.accepted, b.reason
    assert np.linalg.norm(b.center[:2] - center) < 0.25
    dyaw = np.degrees(np.arctan2(np.sin(b.yaw - yaw), np.cos(b.yaw - yaw)))
    assert abs(dyaw) < 4.0 and b.heading_source == source  # heading resolved, not only mod 180
    assert abs(b.size_lwh[0] - size[0]) < 0.5 and b.mean_iou > 0.8


def test_fit_box_rejects_points_that_disagree_with_the_2d_labels():
    rng = np.random.default_rng(3)
    center, size, yaw = np.array([20.0, -4.0]), (4.3, 1.78, 1.55), 0.0
    cams = [_cam(float(x)) for x in np.linspace(0, 8, 15)]
    cams_xy = np.stack([T[:2, 3] for T in cams])
    pts, h = _car_surface(center, size, yaw, rng, cams_xy)
    # a mover's points triangulate at a wrong depth: here 40 % farther than the car its 2D boxes show
    far = np.array([0.0, 0.0]) + (pts[:, :2] - cams_xy.mean(0)) * 1.4 + cams_xy.mean(0)
    wrong = np.concatenate([far, pts[:, 2:]], 1)
    cl = ObjectCluster(9, wrong, h, wrong[:5], np.arange(5), 0.0, np.array([0, 0, 1.0]))
    b = fit_box(cl, _views(center, size, yaw, cams), "car")
    assert b is not None and not b.accepted and "2D agreement" in b.reason


def test_heading_from_shape_reads_the_visible_end():
    rng = np.random.default_rng(4)
    center, size = np.array([0.0, 0.0]), (4.2, 1.8, 1.5)
    cams_front = np.array([[10.0, 0.5]])  # looking at the +x end
    pts, h = _car_surface(center, size, 0.0, rng, cams_front)
    c3 = np.array([0.0, 0.0, 0.75])
    assert heading_from_shape(pts, h, c3, 0.0, np.array(size)) > 0
    assert heading_from_shape(pts, h, c3, np.pi, np.array(size)) < 0
    cams_rear = np.array([[-10.0, 0.5]])
    pts, h = _car_surface(center, size, 0.0, rng, cams_rear)
    assert heading_from_shape(pts, h, c3, 0.0, np.array(size)) > 0
