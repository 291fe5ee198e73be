"""The track buffer's per-frame step: stamps, per-object validation, solve scheduling, publishable boxes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ba_perception.core.oba.refine import publishable_boxes
from ba_perception.core.oba.stage import TrackBufferConfig, TrackBufferConfigError, TrackBufferStage
from ba_perception.core.oba.tracklets import observation_from_box

K = np.array([[700.0, 0, 620], [0, 700.0, 187], [0, 0, 1]])
DT = 100_000_000
T0 = 50 * 10**9


def _pose(k: int) -> np.ndarray:
    """Camera optical frame in odom, moving 1 m per frame along odom x (camera z)."""
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    T[0, 3] = float(k)
    return T


def _obs(k: int, **kw):
    """A parked car 30 m ahead of the start, seen from frame k."""
    c_odom = np.array([30.0, 2.0, 0.0])
    T_cam_odom = np.linalg.inv(_pose(k))
    c = T_cam_odom[:3, :3] @ c_odom + T_cam_odom[:3, 3]
    o = observation_from_box(c, T_cam_odom[:3, :3], np.array([4.2, 1.8, 1.5]), K, depth_std=1.0,
                             embedding=np.array([1.0, 0.0], np.float32))
    return replace(o, **kw)


def _stage(**kw) -> TrackBufferStage:
    return TrackBufferStage(TrackBufferConfig(refine=replace(TrackBufferConfig().refine, correspondences="none"), **kw))


def test_frames_link_into_one_tracklet_and_are_refined():
    stage = _stage()
    for k in range(5):
        res = stage.step(T0 + k * DT, [_obs(k)], _pose(k), K)
        assert not res.rejected and not res.reset and res.solved
    assert len(res.boxes) == 1 and res.boxes[0].refined and res.boxes[0].num_frames == 5
    assert res.assignment == [res.boxes[0].tracklet_id]


def test_a_stamp_going_back_resets_and_the_frame_is_used():
    stage = _stage()
    for k in range(4):
        stage.step(T0 + k * DT, [_obs(k)], _pose(k), K)
    res = stage.step(T0, [_obs(0)], _pose(0), K)  # the bag looped
    assert res.reset == "stamp_backwards" and not res.rejected
    assert len(res.boxes) == 1 and res.boxes[0].num_frames == 1  # a fresh tracklet
    assert stage.step(T0 + DT, [_obs(1)], _pose(1), K).boxes[0].num_frames == 2  # and it continues


def test_a_gap_of_more_than_max_stamp_jump_s_starts_a_new_stream_with_its_first_frame():
    stage = _stage()
    for k in range(3):
        stage.step(T0 + k * DT, [_obs(k)], _pose(k), K)
    later = T0 + 3600 * 10**9  # a pause, or a replay restamped with the wall clock
    res = stage.step(later, [_obs(3)], _pose(3), K)
    assert not res.rejected and res.reset == "stamp_gap" and res.boxes[0].num_frames == 1  # used at once
    res = stage.step(later + DT, [_obs(4)], _pose(4), K)
    assert not res.reset and res.boxes[0].num_frames == 2


def test_invalid_intrinsics_reject_the_frame():
    stage = _stage()
    bad = K.copy()
    bad[0, 0] = np.nan
    assert stage.step(T0, [_obs(0)], _pose(0), bad).rejected == "intrinsics"
    assert stage.last_stamp_ns is None


@pytest.mark.parametrize("field, value, reason", [
    ("box_2d", np.array([np.nan, 0.0, 10.0, 10.0]), "nonfinite_box"),
    ("center_cam", np.array([0.0, np.inf, 10.0]), "nonfinite_pose"),
    ("size_lwh", np.array([4.0, np.nan, 1.5]), "nonfinite_size"),
    ("depth_std", float("nan"), "nonfinite_std"),
])
def test_an_observation_with_a_non_finite_value_is_dropped_and_counted_the_rest_goes_on(field, value, reason):
    stage = _stage()
    good = _obs(0)
    res = stage.step(T0, [good, _obs(0, **{field: value})], _pose(0), K)
    assert res.dropped == {reason: 1}
    assert res.assignment[1] == -1 and res.assignment[0] > 0 and len(res.boxes) == 1


def test_solve_every_n_republishes_the_last_refinement_between_solves():
    stage = _stage(solve_every_n=3)
    solved = [stage.step(T0 + k * DT, [_obs(k)], _pose(k), K) for k in range(6)]
    assert [r.solved for r in solved] == [True, False, True, False, False, True]  # a new tracklet is solved at once
    assert solved[4].boxes[0] is solved[2].boxes[0]
    with pytest.raises(TrackBufferConfigError):
        TrackBufferConfig(solve_every_n=0)


def test_publishable_boxes_never_carry_a_non_finite_value():
    stage = _stage()
    box = stage.step(T0, [_obs(0)], _pose(0), K).boxes[0]  # one frame: unrefined, velocity unknown (NaN)
    assert not box.refined and np.isnan(box.velocity_odom).all()
    bad_size = replace(box, tracklet_id=2, size_lwh=np.array([np.nan, 1.0, 1.0]))
    no_ego = replace(box, tracklet_id=3, center_odom=np.full(3, np.nan))
    kept, dropped = publishable_boxes([box, bad_size, no_ego])
    assert [b.tracklet_id for b in kept] == [box.tracklet_id]
    assert dropped == {"nonfinite_size": 1, "nonfinite_centre": 1}
    b = kept[0]
    for v in (b.center_odom, b.R_odom_obj, b.center_cam, b.size_lwh, b.velocity_odom, b.pose_covariance, b.velocity_covariance):
        assert np.isfinite(v).all()
    assert (b.velocity_odom == 0).all() and (np.diag(b.velocity_covariance) == -1).all()  # unknown, said so
