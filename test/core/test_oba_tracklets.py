"""Tests of short-term tracklet association and the bounded sliding window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ba_perception.core.geometry import invert_pose, rotation_cam_from_yaw
from ba_perception.data.oba_problems import camera_poses
from ba_perception.core.oba.tracklets import MAX_WINDOW, TrackletBuffer, TrackletConfig, TrackletError, observation_from_box

K = np.array([[720.0, 0, 640], [0, 720.0, 360], [0, 0, 1]])
SIZE = np.array([4.2, 1.8, 1.5])


def _scene(F=12, dt=0.1, parked_x=25.0):
    """Ego at 10 m/s; car A ahead-left moving 8 m/s same direction, car B parked ahead-right."""
    T_odom_cam = camera_poses(F, dt, 10.0, 0.0).numpy()
    frames = []
    rng = np.random.default_rng(0)
    emb = {name: (lambda v: v / np.linalg.norm(v))(rng.normal(size=16)) for name in "AB"}
    for f in range(F):
        T_cam_odom = invert_pose(torch.as_tensor(T_odom_cam[f])).numpy()
        obs = []
        for name, start, v in (("A", np.array([15.0, 3.0, 0.75]), 8.0), ("B", np.array([parked_x, -3.5, 0.75]), 0.0)):
            c_odom = start + np.array([v * f * dt, 0, 0])
            c_cam = T_cam_odom[:3, :3] @ c_odom + T_cam_odom[:3, 3]
            R = rotation_cam_from_yaw(torch.tensor(0.0, dtype=torch.float64)).numpy()
            e = emb[name] + 0.05 * rng.normal(size=16)
            obs.append(observation_from_box(c_cam, R, SIZE, K, embedding=e / np.linalg.norm(e), class_label="car"))
        frames.append((int(f * dt * 1e9), obs, T_odom_cam[f]))
    return frames


def test_two_cars_keep_their_tracklets_with_motion_compensation():
    buf = TrackletBuffer(TrackletConfig(window=8))
    ids = []
    for stamp, obs, T in _scene():
        _, assign = buf.update(stamp, obs, T, K)
        ids.append(assign)
    assert ids[0] == [1, 2]
    assert all(a == [1, 2] for a in ids)
    assert len(buf) == 2
    assert all(len(t.frames) == 8 for t in buf.tracks.values())  # window capped at W


def test_parked_car_needs_motion_compensation_at_low_frame_rate():
    # At 2 Hz the parked car's box moves a lot in the image; compensation with ego-motion keeps it.
    frames = _scene(F=6, dt=0.5, parked_x=45.0)
    buf = TrackletBuffer(TrackletConfig(appearance_min=-1.0, iou_weight=1.0, iou_min=0.6))
    assigns = [buf.update(s, o, T, K)[1] for s, o, T in frames]
    assert all(a[1] == 2 for a in assigns)
    buf2 = TrackletBuffer(TrackletConfig(appearance_min=-1.0, iou_weight=1.0, iou_min=0.6))
    assigns2 = [buf2.update(s, o, None, K)[1] for s, o, T in frames]  # no ego-motion: no compensation
    assert any(a[1] != 2 for a in assigns2[1:])


def test_appearance_gate_refuses_a_different_object():
    frames = _scene(F=2)
    buf = TrackletBuffer()
    buf.update(frames[0][0], frames[0][1], frames[0][2], K)
    s, obs, T = frames[1]
    obs[0].embedding = -obs[0].embedding  # same place, different appearance
    _, assign = buf.update(s, obs, T, K)
    assert assign[0] not in (1, 2) and assign[1] == 2


def test_ambiguous_link_is_refused():
    s0, obs0, T0 = _scene(F=1)[0]
    buf = TrackletBuffer(TrackletConfig(appearance_min=-1.0))
    buf.update(s0, obs0[:1], T0, K)
    # two identical candidates for one tracklet: a wrong link is worse than none
    _, assign = buf.update(s0 + 1, [obs0[0], obs0[0]], T0, K)
    assert 1 not in assign


def test_tracklets_expire_and_memory_is_bounded():
    frames = _scene(F=3)
    buf = TrackletBuffer(TrackletConfig(max_misses=1, max_tracklets=3, window=100))
    assert buf.window == MAX_WINDOW
    buf.update(frames[0][0], frames[0][1], frames[0][2], K)
    buf.update(frames[1][0], [], frames[1][2], K)
    assert len(buf) == 2
    buf.update(frames[2][0], [], frames[2][2], K)
    assert len(buf) == 0
    # many unrelated detections at once: never more than max_tracklets
    s, obs, T = frames[0]
    many = [observation_from_box(np.array([x, 0.0, 20.0]), np.eye(3)[[0, 2, 1]] * [[1], [-1], [1]], SIZE, K) for x in (-12.0, -6.0, 0.0, 6.0, 12.0)]
    buf.update(s + 10, many, T, K)
    assert len(buf) == 3


def test_nan_detection_is_skipped_and_bad_config_rejected():
    s, obs, T = _scene(F=1)[0]
    obs[0].box_2d = np.array([np.nan, 0, 1, 1])
    buf = TrackletBuffer()
    _, assign = buf.update(s, obs, T, K)
    assert assign[0] == -1 and assign[1] == 1
    T_bad = T.copy()
    T_bad[0, 0] = np.nan
    _, assign = buf.update(s + 1, obs, T_bad, K)  # missing ego-motion: stored as None, still associates
    assert assign[1] == 1 and buf.tracks[1].last.T_odom_cam is None
    with pytest.raises(TrackletError):
        TrackletBuffer(TrackletConfig(window=0))
