"""DoubleClustering on synthetic point sets with known objects."""

from __future__ import annotations

import numpy as np

from ba_perception.pseudo.clustering import double_clustering, main_cluster_mask
from ba_perception.pseudo.reconstruct import PointCloud


def test_main_cluster_mask_keeps_the_largest_depth_run_per_group():
    group = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    depth = np.array([10.0, 10.2, 10.4, 25.0, 25.1, 5.0, 9.0, 9.1, 9.2])
    gap = np.full(9, 1.0)
    assert main_cluster_mask(group, depth, gap).tolist() == [True, True, True, False, False, False, True, True, True]


def _cam(x: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    T[:3, 3] = [x, 0, 1.6]
    return T


def test_double_clustering_separates_object_from_background_and_ground():
    rng = np.random.default_rng(1)
    car = np.stack([rng.uniform(19, 23, 300), rng.uniform(2.1, 3.9, 300), rng.uniform(0.3, 1.5, 300)], 1)
    behind = np.stack([rng.uniform(30, 35, 60), rng.uniform(1, 5, 60), rng.uniform(0.5, 3, 60)], 1)  # seen through the box
    ground = np.stack([rng.uniform(18, 24, 80), rng.uniform(1, 5, 80), rng.uniform(-0.05, 0.05, 80)], 1)
    xyz = np.concatenate([car, behind, ground])
    n = len(xyz)
    frames = 5
    pc = PointCloud(xyz=xyz, track_id=np.full(n, 7), reproj_px=np.zeros(n), angle_deg=np.full(n, 5.0),
                    obs_point=np.repeat(np.arange(n), frames), obs_frame=np.tile(np.arange(frames), n),
                    obs_uv=np.zeros((n * frames, 2)))
    T_cam = np.stack([_cam(float(x)) for x in range(frames)])
    T_base = np.stack([np.eye(4)] * frames)
    for k in range(frames):
        T_base[k, 0, 3] = k
    out = double_clustering(pc, T_cam, T_base)
    assert list(out) == [7]
    c = out[7]
    assert len(c.points) == 300  # exactly the car: no ground, nothing behind
    assert abs(c.ground_z) < 1e-9 and c.points[:, 0].max() < 23.01
    assert len(c.frames) == frames
