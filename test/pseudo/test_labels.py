"""Pseudo-label files: KITTI tracking lines with confidence and DontCare rows round-trip."""

from __future__ import annotations

import numpy as np

from ba_perception.pseudo.boxfit import FittedBox
from ba_perception.pseudo.labels import box_in_camera, label_lines, read_label_file


def test_label_file_round_trip(tmp_path):
    T_odom_cam = np.eye(4)
    T_odom_cam[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # looking along odom +x
    T_odom_cam[:3, 3] = [5.0, 1.0, 1.6]
    T_cam_odom = np.linalg.inv(T_odom_cam)
    box = FittedBox(track_id=12, cls="car", center=np.array([25.0, -3.0, 0.8]), size_lwh=np.array([4.3, 1.8, 1.6]),
                    yaw=0.4, mean_iou=0.8, centroid_spread_m=0.1, n_points=300, heading_source="shape",
                    accepted=True, confidence=0.77)
    rejected = FittedBox(13, "car", np.zeros(3), np.ones(3), 0.0, 0.2, 0.0, 20, "side", accepted=False, reason="x")
    boxes2d = np.array([[100.0, 150, 180, 200], [300, 160, 330, 190], [400, 150, 420, 200]])
    text = label_lines(3, boxes2d, np.array([12, 13, 40]), ["car", "car", "pedestrian"], {12: box, 13: rejected}, T_cam_odom)
    (tmp_path / "0000.txt").write_text(text)
    rows = read_label_file(tmp_path / "0000.txt")
    assert [r.type for r in rows] == ["Car", "DontCare", "DontCare"]
    assert all(r.frame == 3 for r in rows) and rows[1].track_id == -1 and rows[1].confidence == 0
    r = rows[0]
    c, ry = box_in_camera(box, T_cam_odom)
    assert r.track_id == 12 and abs(r.confidence - 0.77) < 1e-4
    assert np.allclose(r.center_cam, c, atol=1e-5) and abs(r.rotation_y - ry) < 1e-5
    assert np.allclose(r.size_lwh, box.size_lwh, atol=1e-5) and np.allclose(r.box2d, boxes2d[0])
    # back to odom: the centre and yaw written are those of the fitted box
    back = T_odom_cam[:3, :3] @ r.center_cam + T_odom_cam[:3, 3]
    assert np.allclose(back, box.center, atol=1e-5)
    fwd = T_odom_cam[:3, :3] @ np.array([np.cos(r.rotation_y), 0.0, -np.sin(r.rotation_y)])
    assert abs(np.arctan2(fwd[1], fwd[0]) - box.yaw) < 1e-5
