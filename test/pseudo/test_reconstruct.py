"""Reconstruction with known poses: batched triangulation and the KLT path on a tiny rendered sequence."""

from __future__ import annotations

import numpy as np
import pytest

from ba_perception.pseudo.reconstruct import (
    LabelFrame, box_of_pixels, epipolar_distance, fundamental_from_poses, reconstruct, triangulate_tracks,
)

K = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])


def _cam_pose(x: float) -> np.ndarray:
    """Camera optical frame in odom: at (x, 0, 1.6), looking along odom +x."""
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    T[:3, 3] = [x, 0, 1.6]
    return T


def _project(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    q = X @ P[:3, :3].T + P[:3, 3]
    return q[:, :2] / q[:, 2:3]


def test_triangulate_tracks_recovers_points_with_known_poses():
    rng = np.random.default_rng(0)
    X = np.stack([rng.uniform(10, 30, 200), rng.uniform(-5, 5, 200), rng.uniform(0, 2, 200)], 1)
    poses = [_cam_pose(x) for x in (0.0, 1.0, 2.0, 3.0)]
    P = np.stack([K @ np.linalg.inv(T)[:3] for T in poses])
    feat = np.repeat(np.arange(200), 4)
    frame = np.tile(np.arange(4), 200)
    uv = np.concatenate([_project(P[f], X[i:i + 1]) for i, f in zip(feat, frame)])
    Xh, err = triangulate_tracks(feat, uv, P[frame], 200)
    assert np.abs(Xh - X).max() < 1e-6 and err.max() < 1e-6
    Xh, err = triangulate_tracks(feat, uv + rng.normal(0, 0.3, uv.shape), P[frame], 200)
    rel = np.linalg.norm(Xh - X, axis=1) / np.linalg.norm(X[:, :2], axis=1)
    assert np.median(rel) < 0.03  # 0.3 px noise, 3 m baseline, points 10-30 m ahead
    assert np.median(err) < 0.5


def test_epipolar_distance_zero_for_static_points_and_large_for_lateral_motion():
    Ta, Tb = _cam_pose(0.0), _cam_pose(1.0)
    F = fundamental_from_poses(K, Ta, K, Tb)
    X = np.array([[15.0, 3.0, 1.0], [20.0, -2.0, 0.5]])
    Pa, Pb = K @ np.linalg.inv(Ta)[:3], K @ np.linalg.inv(Tb)[:3]
    assert epipolar_distance(F, _project(Pa, X), _project(Pb, X)).max() < 1e-6
    moved = X + np.array([0.0, 0.5, 0.0])  # the object moved sideways between the frames
    assert epipolar_distance(F, _project(Pa, X), _project(Pb, moved)).min() > 3  # pixels


def test_box_of_pixels_prefers_the_nearer_box_where_boxes_overlap():
    boxes = np.array([[0, 0, 100, 50], [50, 10, 150, 80]], float)  # the second reaches lower: nearer
    uv = np.array([[10, 10], [75, 30], [140, 70], [300, 300]], float)
    assert box_of_pixels(uv, boxes).tolist() == [0, 1, 1, -1]


@pytest.fixture(scope="module")
def tiny_world():
    from ba_perception.data.world import WorldConfig, render_sequence

    return list(render_sequence(WorldConfig(preset="residential", seed=101, width=621, height=188, n_frames=15)))


def test_reconstruct_tiny_rendered_sequence_puts_static_points_on_their_objects(tiny_world):
    frames = []
    for f in tiny_world:
        ok = np.isfinite(f.objects.box_full).all(1)
        frames.append(LabelFrame(f.image, f.K, f.T_odom_base @ f.T_base_cam, f.objects.box_full[ok],
                                 f.objects.track_id[ok], None, f.T_odom_base))
    pc = reconstruct(frames)
    g = tiny_world[0].objects
    static = {int(t): (g.T_odom_obj[i], g.size_lwh[i]) for i, t in enumerate(g.track_id)
              if np.linalg.norm(g.velocity_odom[i]) < 0.05}
    m = np.isin(pc.track_id, list(static))
    assert m.sum() >= 100
    outside = []
    for t in np.unique(pc.track_id[m]):
        T, s = static[int(t)]
        p = (pc.xyz[pc.track_id == t] - T[:3, 3]) @ T[:3, :3]  # in the object frame
        outside.append(np.linalg.norm(np.maximum(np.abs(p) - s / 2, 0), axis=1))
    d = np.concatenate(outside)
    assert np.median(d) < 0.05 and np.percentile(d, 90) < 0.3  # metres outside the true box
    assert len(pc.obs_point) >= 3 * len(pc) and pc.obs_point.max() == len(pc) - 1
