"""KITTI tracking result files: tracker output written in camera coordinates reads back exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ba_perception.core.geometry import R_BODY_OPTICAL, rotation_cam_from_yaw
from ba_perception.core.tracking import STATUS_COASTING, STATUS_CONFIRMED, TrackOutput
from ba_perception.eval.mot import evaluate_mot
from ba_perception.eval.tracking_kitti import (
    TrackingKittiError,
    mot_frames_from_kitti,
    read_tracking_file,
    write_tracking_file,
)


def _track(tid, center, yaw, status=STATUS_CONFIRMED, label="car"):
    return TrackOutput(
        track_id=tid, class_label=label, status=status, score=0.9, center=np.asarray(center, float),
        velocity=np.zeros(3), yaw=yaw, size=np.array([4.0, 1.8, 1.5]), position_cov=np.eye(3),
        velocity_cov=np.eye(3), age=1, hits=1, frames_since_update=0, box_2d=np.array([10.0, 20.0, 50.0, 60.0]),
    )


def _T_cam_odom():
    # Camera 1.6 m above the odom origin, looking along odom +x.
    T_odom_cam = np.eye(4)
    T_odom_cam[:3, :3] = R_BODY_OPTICAL.numpy()
    T_odom_cam[:3, 3] = [0.0, 0.0, 1.6]
    return np.linalg.inv(T_odom_cam)


def test_written_tracks_read_back_in_camera_coordinates(tmp_path):
    T = _T_cam_odom()
    frames = [
        (0, [_track(1, [10.0, 2.0, 0.75], 0.3), _track(2, [20.0, -1.0, 0.75], -1.0, STATUS_COASTING)], T),
        (1, [_track(1, [11.0, 2.0, 0.75], 0.3), _track(3, [5.0, 0.0, 0.9], math.pi / 2, label="pedestrian")], T),
    ]
    path = tmp_path / "0000.txt"
    assert write_tracking_file(path, frames) == 3  # the coasting track is not written
    rows = read_tracking_file(path)
    r0 = rows[0]
    assert list(r0.ids) == [1] and r0.labels == ["car"]
    # odom (10, 2, 0.75) with the camera 1.6 m up -> optical (x=-2, y=1.6-0.75, z=10)
    np.testing.assert_allclose(r0.centers_cam[0], [-2.0, 0.85, 10.0], atol=1e-6)
    np.testing.assert_allclose(r0.sizes_lwh[0], [4.0, 1.8, 1.5])
    # rotation_y gives back the odom heading: forward axis of R_cam_obj == R_cam_odom @ (cos, sin, 0)
    fwd_cam = rotation_cam_from_yaw(torch.tensor(r0.rotation_y[0], dtype=torch.float64)).numpy()[:, 0]
    np.testing.assert_allclose(fwd_cam, T[:3, :3] @ [math.cos(0.3), math.sin(0.3), 0.0], atol=1e-6)
    assert rows[1].labels == ["car", "pedestrian"]
    np.testing.assert_allclose(rows[1].boxes_2d[0], [10, 20, 50, 60])


def test_kitti_files_feed_the_metrics(tmp_path):
    T = _T_cam_odom()
    frames = [(k, [_track(1, [10.0 + k, 2.0, 0.75], 0.0), _track(2, [20.0, -1.0, 0.75], 0.0)], T) for k in range(4)]
    write_tracking_file(tmp_path / "gt.txt", frames)
    (tmp_path / "gt.txt").write_text((tmp_path / "gt.txt").read_text() + "2 -1 DontCare -1 -1 -10 0 0 5 5 -1 -1 -1 -1000 -1000 -1000 -10\n")
    # Prediction: same objects, but track 2 changes id in frame 2.
    pred = [(k, [_track(7, [10.0 + k, 2.0, 0.75], 0.0), _track(8 if k < 2 else 9, [20.0, -1.0, 0.75], 0.0)], T) for k in range(4)]
    write_tracking_file(tmp_path / "pred.txt", pred)
    mf = mot_frames_from_kitti(tmp_path / "gt.txt", tmp_path / "pred.txt")
    assert len(mf) == 4
    r = evaluate_mot(mf, similarity="3d")["car"]
    assert (r["TP"], r["FN"], r["FP"], r["IDSW"]) == (8, 0, 0, 1)
    r2 = evaluate_mot(mf, similarity="2d")["car"]
    assert r2["TP"] == 8


def test_malformed_line_names_the_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("0 1 Car 0 0\n")
    with pytest.raises(TrackingKittiError, match="bad.txt:1"):
        read_tracking_file(p)
