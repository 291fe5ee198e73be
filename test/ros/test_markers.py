"""RViz box markers land exactly where the geometry says."""

from __future__ import annotations

import math

import numpy as np
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from ba_perception.ros.markers import box_marker_array


def test_box_corners_are_exact():
    yaw = 0.7
    T = np.eye(4)
    T[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
    T[:3, 3] = [12.0, -3.5, 0.8]
    size = np.array([[4.2, 1.8, 1.6]])
    arr = box_marker_array(Header(frame_id="odom"), T[None], size, [7], ["car"], np.array([[3.0, 4.0, 0.0]]))
    assert arr.markers[0].action == Marker.DELETEALL
    box = next(m for m in arr.markers if m.ns == "boxes")
    pts = np.array([[p.x, p.y, p.z] for p in box.points])
    assert box.type == Marker.LINE_LIST and len(pts) == 24
    # Expected corners by hand: centre + R @ (+-l/2, +-w/2, +-h/2)
    expected = {tuple(np.round(T[:3, 3] + T[:3, :3] @ (np.array([sx, sy, sz]) * size[0] / 2), 9))
                for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)}
    got = {tuple(np.round(p, 9)) for p in pts}
    assert got == expected
    for p in pts:
        d = min(np.abs(np.array(e) - p).max() for e in expected)
        assert d < 1e-6
    # front-left-bottom corner: centre + l/2 * forward + w/2 * left - h/2 * up
    flb = T[:3, 3] + 2.1 * T[:3, 0] + 0.9 * T[:3, 1] - 0.8 * T[:3, 2]
    assert np.abs(pts[0] - flb).max() < 1e-6
    text = next(m for m in arr.markers if m.ns == "labels")
    assert text.text == "7 car 5.0 m/s"
    arrow = next(m for m in arr.markers if m.ns == "velocity")
    assert abs(arrow.points[1].x - 15.0) < 1e-9 and abs(arrow.points[1].y - 0.5) < 1e-9


def test_empty_frame_only_clears():
    arr = box_marker_array(Header(frame_id="odom"), np.zeros((0, 4, 4)), np.zeros((0, 3)), [], [])
    assert [m.action for m in arr.markers] == [Marker.DELETEALL]
