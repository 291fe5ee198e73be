"""Tests of the batched object-BA Levenberg-Marquardt solver."""

from __future__ import annotations

import math

import pytest
import torch

from ba_perception.core.geometry import so3_exp, so3_log, so3_right_jacobian_inv
from ba_perception.core.oba import solver as S
from ba_perception.core.oba.solver import OBASolverError, OBAState, SolverOptions, problem_cost, solve
from ba_perception.data.oba_problems import make_batch

D = torch.float64


def _motion_on(problem, B, acc=2.0, ang=1.0):
    problem.motion_sqrt_info = torch.tensor([1 / acc] * 3 + [1 / ang] * 3, dtype=D).expand(B, 6).clone()
    return problem


def _perturb(state: OBAState, dx: torch.Tensor, dp: torch.Tensor) -> OBAState:
    return S._apply(state, dx, dp)


def test_so3_log_and_right_jacobian_inverse():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 3, generator=g, dtype=D)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(50, 1, generator=g, dtype=D) * 3.0
    assert torch.allclose(so3_log(so3_exp(w)), w, atol=1e-10)
    assert torch.allclose(so3_log(torch.eye(3, dtype=D)), torch.zeros(3, dtype=D))
    d = 1e-7 * torch.randn(50, 3, generator=g, dtype=D)
    lhs = so3_log(so3_exp(w) @ so3_exp(d)) - w
    rhs = (so3_right_jacobian_inv(w) @ d[..., None])[..., 0]
    assert (lhs - rhs).abs().max() < 1e-12


def _fd_check(fun, state, P, K, eps=1e-6):
    """Compare analytic Jacobians of ``fun`` (residual, J over poses/points) with central differences."""
    B = state.points_obj.shape[0]
    worst = 0.0
    for slot in range(P):
        for d in range(6):
            dx = torch.zeros(B, P, 6, dtype=D)
            dx[:, slot, d] = eps
            zp = torch.zeros(B, K, 3, dtype=D)
            rp = fun(_perturb(state, dx, zp))[0]
            rm = fun(_perturb(state, -dx, zp))[0]
            num = (rp - rm) / (2 * eps)
            ana = fun(state, slot, d)
            worst = max(worst, float((num - ana).abs().max() / (ana.abs().max() + 1)))
    return worst


def test_reprojection_jacobians_match_finite_differences():
    sb = make_batch(3, 4, 6, seed=1, noise_px=1.0, with_prior=False)
    opts = SolverOptions()
    state = sb.init
    prep = S._prepare(sb.problem, state, opts)
    B, F, K = sb.problem.shape
    _, _, Jx, Jp = S.reprojection_residuals(prep, state, jacobians=True)

    def fun(st, slot=None, d=None):
        if slot is None:
            return S.reprojection_residuals(prep, st)
        # analytic column: only frame == slot has a derivative
        out = torch.zeros_like(Jx[..., 0])
        out[:, slot] = Jx[:, slot, :, :, d]
        return out

    assert _fd_check(fun, state, F, K) < 1e-6
    eps = 1e-6
    for k in range(K):
        for d in range(3):
            dp = torch.zeros(B, K, 3, dtype=D)
            dp[:, k, d] = eps
            zx = torch.zeros(B, F, 6, dtype=D)
            num = (S.reprojection_residuals(prep, _perturb(state, zx, dp))[0] - S.reprojection_residuals(prep, _perturb(state, zx, -dp))[0]) / (2 * eps)
            ana = torch.zeros_like(num)
            ana[:, :, k] = Jp[:, :, k, :, d]
            assert (num - ana).abs().max() < 1e-5 * (ana.abs().max() + 1)


def test_prior_jacobians_match_finite_differences():
    sb = make_batch(3, 4, 6, seed=2, with_prior=True)
    # a prior far from the state so log() is well away from zero
    state = OBAState(sb.init.R_odom_obj @ so3_exp(0.4 * torch.randn(3, 4, 3, dtype=D)), sb.init.t_odom_obj + 1.0, sb.init.points_obj)
    prep = S._prepare(sb.problem, state, SolverOptions())
    _, J = S.prior_residuals(prep, state, jacobians=True)

    def fun(st, slot=None, d=None):
        if slot is None:
            return S.prior_residuals(prep, st)
        out = torch.zeros_like(J[..., 0])
        out[:, slot] = J[:, slot, :, d]
        return out

    assert _fd_check(fun, state, 4, 6) < 1e-6


def _motion_fd_error(prep, state):
    """Worst relative gap between the motion residuals' analytic Jacobians and central differences."""
    B, F = state.t_odom_obj.shape[:2]
    r, J = S.motion_residuals(prep, state, jacobians=True)  # (B, F-2, n), (B, F-2, 3 slots, n, 6)

    def fun(st, slot=None, d=None):
        if slot is None:
            return S.motion_residuals(prep, st)
        out = torch.zeros_like(r)
        for i in range(3):
            a = slot - i
            if 0 <= a < F - 2:
                out[:, a] = J[:, a, i, :, d]
        return out

    return _fd_check(fun, state, F, state.points_obj.shape[1])


def test_motion_jacobians_match_finite_differences():
    B, F = 2, 5
    sb = make_batch(B, F, 6, seed=3, with_prior=False)
    _motion_on(sb.problem, B)
    g = torch.Generator().manual_seed(5)
    state = OBAState(sb.init.R_odom_obj @ so3_exp(0.5 * torch.randn(B, F, 3, generator=g, dtype=D)), sb.init.t_odom_obj, sb.init.points_obj)
    sb.problem.stamps_s = torch.tensor([[0.0, 0.1, 0.25, 0.3, 0.42]], dtype=D).expand(B, F).clone()
    prep = S._prepare(sb.problem, state, SolverOptions())
    assert _motion_fd_error(prep, state) < 1e-6


def test_noise_free_problems_converge_to_ground_truth():
    sb = make_batch(8, 8, 24, seed=4, noise_px=0.0, with_prior=False, fixed_frames=(0, 1))
    res = solve(sb.problem, sb.init, SolverOptions(loss="trivial", max_iterations=50))
    assert bool(res.valid.all()) and bool(res.converged.all())
    m = S.effective_observation_mask(sb.problem, sb.init)
    seen_f, seen_k = m.any(2), m.any(1)  # frames that left the image keep their initial pose
    assert (~seen_f).any() and seen_f.float().mean() > 0.9
    assert (res.state.t_odom_obj - sb.truth.t_odom_obj)[seen_f].abs().max() < 1e-8
    assert (res.state.R_odom_obj - sb.truth.R_odom_obj)[seen_f].abs().max() < 1e-9
    assert (res.state.points_obj - sb.truth.points_obj)[seen_k].abs().max() < 1e-8
    assert torch.equal(res.state.t_odom_obj[~seen_f], sb.init.t_odom_obj[~seen_f])
    assert float(res.cost.max()) < 1e-12


def test_float32_converges_close_to_ground_truth():
    sb = make_batch(8, 8, 24, seed=5, noise_px=0.0, with_prior=False, fixed_frames=(0, 1))
    res = solve(sb.problem.to(dtype=torch.float32), sb.init, SolverOptions(loss="cauchy", max_iterations=30))
    assert res.cost.dtype == torch.float32
    m = S.effective_observation_mask(sb.problem, sb.init)
    resected = m.sum(2) >= 4  # a pose seen through fewer than 3 points is not determined
    assert (res.state.t_odom_obj.double() - sb.truth.t_odom_obj)[resected].abs().max() < 5e-3
    assert (res.state.points_obj.double() - sb.truth.points_obj)[m.any(1)].abs().max() < 5e-3


def test_prior_and_reprojection_improve_noisy_single_frame_positions():
    B, F = 16, 10
    sb = make_batch(B, F, 32, seed=6, noise_px=1.0, with_prior=True)
    _motion_on(sb.problem, B)
    res = solve(sb.problem, sb.init, SolverOptions(max_iterations=20))
    err_in = (sb.init.t_odom_obj - sb.truth.t_odom_obj).norm(dim=-1).median()
    err_out = (res.state.t_odom_obj - sb.truth.t_odom_obj).norm(dim=-1).median()
    assert bool((res.cost < res.initial_cost).all())
    assert err_out < 0.5 * err_in


def test_static_flag_collapses_to_one_pose():
    B, F = 6, 8
    sb = make_batch(B, F, 24, seed=7, noise_px=1.0, with_prior=True, moving_fraction=0.0)
    sb.problem.static = torch.ones(B, dtype=torch.bool)
    res = solve(sb.problem, sb.init, SolverOptions(max_iterations=20))
    t = res.state.t_odom_obj
    assert (t - t[:, :1]).abs().max() == 0
    assert (res.state.R_odom_obj - res.state.R_odom_obj[:, :1]).abs().max() == 0
    # one pose seen from a 1 s baseline is better than any single noisy prior frame
    err = (t[:, 0] - sb.truth.t_odom_obj[:, 0]).norm(dim=-1)
    err_prior = (sb.init.t_odom_obj - sb.truth.t_odom_obj).norm(dim=-1).mean(1)
    assert err.median() < err_prior.median()


def test_strong_motion_prior_makes_static_object_nearly_one_pose():
    B, F = 6, 8
    sb = make_batch(B, F, 24, seed=8, noise_px=0.5, with_prior=True, moving_fraction=0.0)
    weak = solve(_motion_on(sb.problem, B, acc=100.0, ang=100.0), sb.init, SolverOptions(max_iterations=30))
    strong = solve(_motion_on(sb.problem, B, acc=1e-3, ang=1e-3), sb.init, SolverOptions(max_iterations=30))

    def accel(st):
        t = st.t_odom_obj
        return (t[:, 2:] - 2 * t[:, 1:-1] + t[:, :-2]).norm(dim=-1).max()

    assert accel(strong.state) < 1e-3 < accel(weak.state)


def test_yaw_only_keeps_objects_upright():
    B, F = 4, 6
    sb = make_batch(B, F, 24, seed=9, noise_px=1.0, with_prior=True)
    res = solve(sb.problem, sb.init, SolverOptions(yaw_only=True, max_iterations=10))
    R = res.state.R_odom_obj
    assert torch.allclose(R[..., 2, 2], torch.ones_like(R[..., 2, 2]), atol=1e-12)
    assert bool((res.cost < res.initial_cost).all())


def test_bad_problems_are_isolated_by_masks():
    B, F, K = 6, 6, 16
    sb = make_batch(B, F, K, seed=10, noise_px=1.0, with_prior=True)
    _motion_on(sb.problem, B)
    opts = SolverOptions(max_iterations=8)
    clean = solve(sb.problem, sb.init, opts)
    p = sb.problem
    uv = p.obs_uv.clone()
    uv[1] = float("nan")  # every observation NaN: only priors left
    T = p.T_cam_odom.clone()
    T[2, 3] = float("nan")  # missing ego-motion in one frame
    init = sb.init.clone()
    init.points_obj[3] = float("nan")  # poisoned state
    pm = torch.ones(B, dtype=torch.bool)
    pm[4] = False
    Kmat = p.K.clone()
    Kmat[5, 0, 0] = float("inf")
    bad = S.OBAProblem(**{**p.__dict__, "obs_uv": uv, "T_cam_odom": T, "problem_mask": pm, "K": Kmat})
    res = solve(bad, init, opts)
    assert res.valid.tolist() == [True, True, True, False, False, False]
    assert torch.equal(res.state.t_odom_obj[0], clean.state.t_odom_obj[0])
    assert torch.isfinite(res.state.t_odom_obj[:3]).all() and torch.isfinite(res.cost[:3]).all()
    assert torch.isnan(res.cost[3:]).all()
    assert torch.equal(res.state.t_odom_obj[4], sb.init.t_odom_obj[4])  # disabled: unchanged
    assert int(res.num_obs[1]) == 0


def test_warm_start_needs_few_iterations():
    B = 4
    sb = make_batch(B, 8, 24, seed=11, noise_px=1.0, with_prior=False, fixed_frames=(0, 1))
    opts = SolverOptions(loss="trivial", max_iterations=100)
    first = solve(sb.problem, sb.init, opts)
    again = solve(sb.problem, first.state, opts, initial_lambda=first.lam)
    assert int(again.iterations.max()) <= 2
    assert torch.allclose(again.cost, first.cost, rtol=1e-12)


def test_covariance_is_symmetric_psd_and_zero_on_held_frames():
    B, F = 3, 6
    sb = make_batch(B, F, 24, seed=12, noise_px=1.0, with_prior=False, fixed_frames=(0, 1))
    res = solve(sb.problem, sb.init, SolverOptions(loss="trivial", max_iterations=50))
    C = res.pose_covariance.reshape(B, 6 * F, 6 * F)
    assert torch.allclose(C, C.transpose(1, 2), atol=1e-12)
    assert torch.linalg.eigvalsh(C).min() > -1e-12
    assert C[:, :12].abs().max() == 0
    assert (C.diagonal(dim1=1, dim2=2)[:, 12:] > 0).all()
    # 1 px noise, 24 points, 6 frames: every free pose is known to better than 1 m / 1 rad
    assert float(C.diagonal(dim1=1, dim2=2)[:, 12:].max()) < 1.0


def test_shape_errors_are_reported():
    sb = make_batch(2, 3, 4, seed=13)
    bad = S.OBAProblem(**{**sb.problem.__dict__, "K": torch.eye(3, dtype=D)})
    with pytest.raises(OBASolverError, match="K must have shape"):
        solve(bad, sb.init)
    with pytest.raises(OBASolverError, match="loss"):
        solve(sb.problem, sb.init, SolverOptions(loss="l1"))


def test_cost_matches_definition():
    sb = make_batch(2, 3, 5, seed=14, noise_px=2.0, with_prior=False)
    opts = SolverOptions(loss="cauchy", loss_scale_px=1.5)
    c = problem_cost(sb.problem, sb.init, opts)
    X = torch.einsum("bfij,bkj->bfki", sb.init.R_odom_obj, sb.init.points_obj) + sb.init.t_odom_obj[:, :, None]
    Xc = torch.einsum("bfij,bfkj->bfki", sb.problem.T_cam_odom[..., :3, :3], X) + sb.problem.T_cam_odom[:, :, None, :3, 3]
    uv = Xc[..., :2] / Xc[..., 2:] * sb.problem.K[:, None, None, 0, 0, None] + sb.problem.K[:, None, None, :2, 2]
    s = ((uv - sb.problem.obs_uv) ** 2).sum(-1)
    m = S.effective_observation_mask(sb.problem, sb.init, opts)
    expect = 0.5 * (1.5**2 * torch.log1p(s / 1.5**2) * m).sum((1, 2))
    assert torch.allclose(c, expect, rtol=1e-12)
    assert math.isfinite(float(c.sum()))


def test_covariance_equals_inverse_of_dense_information():
    B, F, K = 1, 4, 10
    sb = make_batch(B, F, K, seed=15, noise_px=1.0, with_prior=False, fixed_frames=(0, 1))
    opts = SolverOptions(loss="trivial", max_iterations=50)
    res = solve(sb.problem, sb.init, opts)
    prep = S._prepare(sb.problem, res.state, opts)
    _, _, Jx, Jp = S.reprojection_residuals(prep, res.state, jacobians=True)
    m = prep.m[0] > 0
    rows = []
    for f in range(F):
        for k in range(K):
            if m[f, k]:
                row = torch.zeros(2, 6 * F + 3 * K, dtype=D)
                row[:, 6 * f : 6 * f + 6] = Jx[0, f, k]
                row[:, 6 * F + 3 * k : 6 * F + 3 * k + 3] = Jp[0, f, k]
                rows.append(row)
    J = torch.cat(rows)
    free = torch.cat([prep.free[0].reshape(-1) > 0, (prep.point_active[0] > 0).repeat_interleave(3)])
    Jf = J[:, free]
    cov_full = torch.linalg.inv(Jf.T @ Jf)
    npose = int((prep.free[0] > 0).sum())
    expect = cov_full[:npose, :npose]
    got = res.pose_covariance[0].reshape(6 * F, 6 * F)[prep.free[0].reshape(-1) > 0][:, prep.free[0].reshape(-1) > 0]
    assert torch.allclose(got, expect, rtol=1e-5, atol=1e-12)
