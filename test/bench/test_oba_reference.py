"""Correctness of the batched object-BA solver against pycolmap's Ceres bundle adjuster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ba_perception.bench.oba_reference import have_pycolmap, solve_with_pycolmap
from ba_perception.core.oba.solver import SolverOptions, effective_observation_mask, problem_cost, solve
from ba_perception.data.oba_problems import make_batch

pytestmark = pytest.mark.skipif(not have_pycolmap(), reason="pycolmap (test/bench dependency) is not installed")


def _camera_depths(problem, state):
    """``(B, F, K)`` depth of every point in every camera, metres."""
    X = torch.einsum("bfij,bkj->bfki", state.R_odom_obj, state.points_obj) + state.t_odom_obj[:, :, None]
    Xc = torch.einsum("bfij,bfkj->bfki", problem.T_cam_odom[..., :3, :3], X) + problem.T_cam_odom[:, :, None, :3, 3]
    return Xc[..., 2]


def test_same_final_cost_as_ceres_on_20_random_reprojection_problems():
    # Pure reprojection (object poses + points), gauge fixed by holding frames 0 and 1.
    sb = make_batch(20, 8, 24, seed=21, noise_px=1.0, with_prior=False, fixed_frames=(0, 1))
    ref = solve_with_pycolmap(sb.problem, sb.init, loss="trivial")
    res = solve(sb.problem, sb.init, SolverOptions(loss="trivial", max_iterations=100))
    ours = res.cost.numpy()
    assert np.allclose(res.initial_cost.numpy(), ref.initial_cost, rtol=1e-12)
    rel = np.abs(ours - ref.cost) / ref.cost
    assert rel.max() < 1e-6, rel
    # our cost function is Ceres' cost function: evaluated at Ceres' optimum it gives Ceres' cost
    again = problem_cost(sb.problem, ref.state, SolverOptions(loss="trivial")).numpy()
    assert np.allclose(again, ref.cost, rtol=1e-10)
    # and the optimum is the same point up to weakly observed directions (median, metres)
    assert np.median(np.abs(res.state.points_obj.numpy() - ref.state.points_obj.numpy())) < 1e-6


@pytest.mark.parametrize("loss", ["cauchy", "huber"])
def test_same_final_cost_as_ceres_with_robust_loss(loss):
    sb = make_batch(6, 8, 24, seed=22, noise_px=1.0, with_prior=False, fixed_frames=(0, 1), outlier_fraction=0.05)
    ref = solve_with_pycolmap(sb.problem, sb.init, loss=loss, loss_scale_px=2.0, max_iterations=300)
    res = solve(sb.problem, sb.init, SolverOptions(loss=loss, loss_scale_px=2.0, max_iterations=300))
    rel = np.abs(res.cost.numpy() - ref.cost) / ref.cost
    # Ceres has no cheirality constraint: with a robust loss it can pull a point into a camera
    # centre (depth ~ 0), where an outlier's projection becomes free. Our solver refuses steps
    # that put an observed point behind min_depth_m, so such problems have a different optimum.
    m = effective_observation_mask(sb.problem, sb.init)
    z = _camera_depths(sb.problem, ref.state)
    sane = ((z > 0.1) | ~m).flatten(1).all(1).numpy()
    assert sane.sum() >= 4
    assert rel[sane].max() < 1e-6, rel
