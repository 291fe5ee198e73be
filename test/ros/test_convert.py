"""Pose message conversion: the batched form is the single one, and round-trips."""

from __future__ import annotations

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.ros.convert import matrices_to_poses, matrix_to_pose, pose_to_matrix


def test_batched_poses_round_trip_and_match_the_single_conversion():
    rng = np.random.default_rng(0)
    T = np.tile(np.eye(4), (5, 1, 1))
    T[:, :3, :3] = geometry.so3_exp(torch.as_tensor(rng.normal(size=(5, 3)))).numpy()
    T[:, :3, 3] = rng.normal(size=(5, 3)) * 10
    poses = matrices_to_poses(T)
    assert len(poses) == 5 and matrices_to_poses(np.zeros((0, 4, 4))) == []
    for Ti, p in zip(T, poses):
        assert np.allclose(pose_to_matrix(p), Ti, atol=1e-12)
        assert p == matrix_to_pose(Ti)
