"""Batched Levenberg-Marquardt object bundle adjustment over padded tracklet tensors (CPU and CUDA).

Problem (one per tracklet ``b``; ``B`` problems padded to ``F`` frames and ``K`` points):

- unknowns: the object pose per frame ``T_odom_obj(f) = (R_f, t_f)`` (6-DoF, or yaw-only: rotation
  increments about the object's up axis only) and ``K`` points ``p_k`` in the object frame;
  a static object has one pose shared by all its frames (``static`` flag: every frame maps to
  pose slot 0);
- residuals: robust (trivial / Huber / Cauchy, Ceres conventions) reprojection
  ``w_fk * (pi(K, T_cam_odom(f) T_odom_obj(f) p_k) - uv_fk)`` with known camera poses and
  intrinsics; a Gaussian prior ``L_f [t_f - t_prior; log(R_prior^T R_f)]`` tying each frame's pose
  to the detector's box (``L_f`` is a 6x6 square-root information, typically weak along the
  viewing ray and strong across it); a constant-velocity prior on each run of three frames
  ``((t_c - t_b)/dt1 - (t_b - t_a)/dt0) / (sigma_acc * dt_mid)`` (and the same on rotation).
  The cost is Ceres': ``0.5 * sum(rho(|r|^2))`` for reprojection plus ``0.5 * |r|^2`` for priors.

Solver: analytic Jacobians; Gauss-Newton normal equations with IRLS weights ``rho'(s)``; Schur
complement on the points (3x3 blocks inverted in closed form), a dense ``6F x 6F`` reduced pose
system per problem solved by batched Cholesky (``cholesky_ex``: a failed factorisation rejects
that problem's step, it never raises); Marquardt damping ``lambda * clamp(diag(H))`` with a
per-problem ``lambda`` (Nielsen update); per-problem convergence masks; at most
``max_iterations`` with an optional early exit (one host sync every ``sync_every`` iterations,
0 = never). Every operation is batched over problems; there is no Python loop over objects.
The same code runs on CPU and CUDA, in float32 or float64, following the inputs' device/dtype.
On CUDA, :class:`~ba_perception.core.oba.cuda_graph.CapturedSolve` replays the whole solve from a CUDA graph (no per-kernel launch
cost) and :class:`~ba_perception.core.oba.cuda_graph.GraphSolveCache` does so for batches of varying size.

Observability (why the scale and the object's motion are determined):

- Pure monocular SfM of one rigid object is known only up to a similarity (7 DoF). Here the camera
  poses ``T_cam_odom(f)`` are known *metrically* from odometry, so the object's points and poses
  live in a metric frame. For a **static** object (one pose for all frames) this is ordinary
  triangulation with known, metric camera motion: depth follows from the baseline (parallax
  ``b / z``), so scale is observable whenever the ego-motion has a baseline that is not along the
  viewing ray of every point. Only the object-frame gauge remains (the 6-DoF choice of object
  frame vs points), which the detector prior fixes (the object frame is the box frame).
- For a **moving** object with free per-frame poses, image evidence alone is ambiguous: scaling the
  object, its points and its whole trajectory about each camera centre by the same factor
  ``s`` leaves every reprojection unchanged (the ego-motion no longer pins scale because the
  object's own motion can absorb it), and per-frame depth is the classic unobservable direction
  of monocular tracking. Two terms remove it: (1) the detector prior gives a metric depth per
  frame (weak along the ray, ``depth_std``) and metric size, so the window *averages* ``F``
  noisy depths through one rigid shape instead of trusting one frame; (2) the constant-velocity
  prior couples the frames, so the object's trajectory cannot absorb the ego-motion's parallax
  freely: any departure of the object's true motion from the ego-motion creates parallax that
  fixes depth, and a smooth-motion object seen from a moving (and especially turning or laterally
  translating) camera becomes observable in the limit of a strong motion prior (it is then the
  static case in a moving frame). The rotation about the viewing ray and the lateral position are
  well observed by reprojection in every frame; yaw by the points' relative parallax.
- The gauge freedom of the object frame relative to its points (6 DoF) is fixed by the pose
  prior. Without a prior (pure reprojection, as in the Ceres comparison) the caller fixes the
  gauge by holding two frames' poses constant (``fixed_frames``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ba_perception.core.geometry import so3_exp, so3_log, so3_right_jacobian_inv
from ba_perception.core.oba.problem import (  # noqa: F401  (the solver's public types, re-exported)
    LOSSES,
    OBAProblem,
    OBAResult,
    OBASolverError,
    OBAState,
    SolverOptions,
    newest_frames,
)

# ----------------------------------------------------------------------------------------------
# preparation


@dataclass
class _Prep:
    uv: torch.Tensor  # (B,F,K,2) sanitised
    m: torch.Tensor  # (B,F,K) float obs mask (also drops points with < 2 obs)
    w: torch.Tensor  # (B,F,K) sqrt weights
    R_co: torch.Tensor  # (B,F,3,3)
    t_co: torch.Tensor  # (B,F,3)
    fxfy: torch.Tensor  # (B,1,1,2)
    cxcy: torch.Tensor  # (B,1,1,2)
    slot: torch.Tensor  # (B,F) long, frame -> pose slot
    free: torch.Tensor  # (B,F,6) float, free pose dofs per slot
    point_active: torch.Tensor  # (B,K) float
    prior_R: torch.Tensor | None
    prior_t: torch.Tensor | None
    prior_L: torch.Tensor | None
    prior_m: torch.Tensor | None  # (B,F) float
    mot_m: torch.Tensor | None  # (B,F-2) float
    mot_dt0: torch.Tensor | None
    mot_dt1: torch.Tensor | None
    mot_dtm: torch.Tensor | None
    mot_w: torch.Tensor | None  # (B,1,6)
    valid: torch.Tensor  # (B,) bool
    any_static: bool = True  # some problem maps several frames to one pose slot
    free_outer: torch.Tensor | None = None  # (B,6P,6P) free_i * free_j
    mot_Jt: torch.Tensor | None = None  # (B,F-2,3,3,3) constant translation rows of the motion Jacobian
    mot_hidx: torch.Tensor | None = None  # flat (6F)^2 positions of the motion term's 6x6 blocks
    mot_gidx: torch.Tensor | None = None  # flat 6F positions of its gradient blocks


def _check(problem: OBAProblem) -> None:
    if problem.obs_uv.dim() != 4 or problem.obs_uv.shape[-1] != 2:
        raise OBASolverError(f"obs_uv must be (B, F, K, 2), got {tuple(problem.obs_uv.shape)}")
    B, F, K = problem.shape
    expect = {
        "obs_mask": (B, F, K), "T_cam_odom": (B, F, 4, 4), "K": (B, 3, 3), "frame_mask": (B, F),
        "stamps_s": (B, F), "obs_sqrt_weight": (B, F, K), "prior_T_odom_obj": (B, F, 4, 4),
        "prior_sqrt_info": (B, F, 6, 6), "prior_mask": (B, F), "fixed_frames": (B, F), "static": (B,),
        "motion_sqrt_info": (B, 6), "problem_mask": (B,),
    }
    for name, shape in expect.items():
        v = getattr(problem, name)
        if v is not None and tuple(v.shape) != shape:
            raise OBASolverError(f"{name} must have shape {shape}, got {tuple(v.shape)}")
    if (problem.prior_T_odom_obj is None) != (problem.prior_sqrt_info is None):
        raise OBASolverError("prior_T_odom_obj and prior_sqrt_info must be given together")


def _finite_rows(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return torch.isfinite(x).flatten(-ndim).all(-1)


def _prepare(problem: OBAProblem, state: OBAState, options: SolverOptions) -> _Prep:
    _check(problem)
    if options.loss not in LOSSES:
        raise OBASolverError(f"loss must be one of {LOSSES}, got {options.loss!r}")
    B, F, K = problem.shape
    dt, dev = problem.obs_uv.dtype, problem.obs_uv.device
    ones_b = torch.ones(B, dtype=torch.bool, device=dev)

    fm = problem.frame_mask.bool() & _finite_rows(problem.T_cam_odom, 2)
    valid = ones_b if problem.problem_mask is None else problem.problem_mask.bool()
    valid = valid & _finite_rows(problem.K, 2) & (problem.K[:, 0, 0] > 0) & (problem.K[:, 1, 1] > 0)
    # A frame flagged valid with a non-finite camera pose (missing ego-motion) invalidates nothing
    # else: it is dropped. Non-finite state poisons only its own problem.
    valid = valid & _finite_rows(state.points_obj, 2) & _finite_rows(state.R_odom_obj, 3) & _finite_rows(state.t_odom_obj, 2)
    fm = fm & valid[:, None]

    eye4 = torch.eye(4, dtype=dt, device=dev)
    T_co = torch.where(fm[..., None, None], problem.T_cam_odom, eye4)
    Kmat = torch.where(valid[:, None, None], problem.K, torch.eye(3, dtype=dt, device=dev))
    uv_ok = torch.isfinite(problem.obs_uv).all(-1)
    m = problem.obs_mask.bool() & uv_ok & fm[..., None]
    w = torch.ones_like(problem.obs_uv[..., 0]) if problem.obs_sqrt_weight is None else problem.obs_sqrt_weight
    m = m & torch.isfinite(w) & (w > 0)
    w = torch.where(m, w, torch.zeros_like(w))
    uv = torch.where(m[..., None], problem.obs_uv, torch.zeros_like(problem.obs_uv))

    static = torch.zeros(B, dtype=torch.bool, device=dev) if problem.static is None else problem.static.bool()
    ar = torch.arange(F, device=dev)
    slot = torch.where(static[:, None], torch.zeros_like(ar)[None], ar[None]).expand(B, F).contiguous()
    # one host sync, outside the LM loop (none when capturing a CUDA graph)
    any_static = problem.static is not None and (options.assume_static or bool(static.any()))

    prep = _Prep(
        uv=uv, m=m.to(dt), w=w, R_co=T_co[..., :3, :3], t_co=T_co[..., :3, 3],
        fxfy=torch.stack([Kmat[:, 0, 0], Kmat[:, 1, 1]], -1)[:, None, None, :],
        cxcy=torch.stack([Kmat[:, 0, 2], Kmat[:, 1, 2]], -1)[:, None, None, :],
        slot=slot, free=torch.zeros(B, F, 6, dtype=dt, device=dev), point_active=torch.zeros(B, K, dtype=dt, device=dev),
        prior_R=None, prior_t=None, prior_L=None, prior_m=None,
        mot_m=None, mot_dt0=None, mot_dt1=None, mot_dtm=None, mot_w=None, valid=valid, any_static=any_static,
    )
    # Drop observations behind the camera at the initial state (they have no projection).
    Xc = _camera_points(prep, state)
    m = m & (Xc[..., 2] > options.min_depth_m)
    # A point needs two observations to be constrained by reprojection alone.
    nobs = m.sum(1)
    pa = nobs >= 2
    m = m & pa[:, None, :]
    prep.m = m.to(dt)
    prep.w = torch.where(m, w, torch.zeros_like(w))
    prep.point_active = pa.to(dt)

    if problem.prior_T_odom_obj is not None and problem.prior_sqrt_info is not None:  # given together (_check)
        pm = fm.clone() if problem.prior_mask is None else problem.prior_mask.bool() & fm
        pm = pm & _finite_rows(problem.prior_T_odom_obj, 2) & _finite_rows(problem.prior_sqrt_info, 2)
        eye6 = torch.eye(6, dtype=dt, device=dev)
        prep.prior_R = torch.where(pm[..., None, None], problem.prior_T_odom_obj[..., :3, :3], eye4[:3, :3])
        prep.prior_t = torch.where(pm[..., None], problem.prior_T_odom_obj[..., :3, 3], torch.zeros((), dtype=dt, device=dev))
        prep.prior_L = torch.where(pm[..., None, None], problem.prior_sqrt_info, eye6)
        prep.prior_m = pm.to(dt)
    else:
        pm = torch.zeros(B, F, dtype=torch.bool, device=dev)

    if problem.motion_sqrt_info is not None and problem.stamps_s is not None and F >= 3:
        s = problem.stamps_s
        dt0, dt1 = s[:, 1:-1] - s[:, :-2], s[:, 2:] - s[:, 1:-1]
        mm = fm[:, :-2] & fm[:, 1:-1] & fm[:, 2:] & ~static[:, None]
        mm = mm & torch.isfinite(dt0) & torch.isfinite(dt1) & (dt0 > 0) & (dt1 > 0)
        mw = torch.where(torch.isfinite(problem.motion_sqrt_info), problem.motion_sqrt_info, torch.zeros_like(problem.motion_sqrt_info))
        mm = mm & (mw.abs().sum(-1) > 0)[:, None]
        one = torch.ones_like(dt0)
        prep.mot_dt0 = torch.where(mm, dt0, one)
        prep.mot_dt1 = torch.where(mm, dt1, one)
        prep.mot_dtm = 0.5 * (prep.mot_dt0 + prep.mot_dt1)
        prep.mot_m = mm.to(dt)
        prep.mot_w = mw[:, None, :]
        # translation rows of the motion Jacobian do not depend on the state: (B, T, slot a|b|c, 3, 3)
        ca, cc = 1 / (prep.mot_dt0 * prep.mot_dtm), 1 / (prep.mot_dt1 * prep.mot_dtm)
        coef = torch.stack([ca, -(ca + cc), cc], -1) * prep.mot_m[..., None]  # (B, T, 3)
        prep.mot_Jt = coef[..., None, None] * torch.diag_embed(mw[:, None, None, :3])
        # flat positions in the (6F x 6F) pose system of each triplet's (slot i, slot j) 6x6 block and 6-vector
        T = F - 2
        tt, ii, jj, oo, pp = torch.meshgrid(*(torch.arange(n, device=dev) for n in (T, 3, 3, 6, 6)), indexing="ij")
        prep.mot_hidx = ((6 * (tt + ii) + oo) * (6 * F) + 6 * (tt + jj) + pp).reshape(-1)
        tt, ii, oo = torch.meshgrid(*(torch.arange(n, device=dev) for n in (T, 3, 6)), indexing="ij")
        prep.mot_gidx = (6 * (tt + ii) + oo).reshape(-1)

    # Free pose dofs per slot: the slot is used by a present frame that has evidence, not held.
    used = torch.zeros(B, F, dtype=dt, device=dev).scatter_add_(1, slot, (m.any(-1) | pm).to(dt)) > 0
    held = torch.zeros(B, F, dtype=dt, device=dev)
    if problem.fixed_frames is not None:
        held = held.scatter_add_(1, slot, (problem.fixed_frames.bool() & fm).to(dt))
    free = (used & (held == 0) & valid[:, None])[..., None].expand(B, F, 6).to(dt).clone()
    if options.yaw_only:
        free[..., 3:5] = 0
    prep.free = free
    fl = free.reshape(B, 6 * F)
    prep.free_outer = fl[:, :, None] * fl[:, None, :]
    return prep


# ----------------------------------------------------------------------------------------------
# residuals and Jacobians


def _frame_poses(prep: _Prep, state: OBAState) -> tuple[torch.Tensor, torch.Tensor]:
    idx = prep.slot
    R = torch.gather(state.R_odom_obj, 1, idx[..., None, None].expand(-1, -1, 3, 3))
    t = torch.gather(state.t_odom_obj, 1, idx[..., None].expand(-1, -1, 3))
    return R, t


def _camera_points(prep: _Prep, state: OBAState) -> torch.Tensor:
    R, t = _frame_poses(prep, state)
    R_cf = prep.R_co @ R  # (B,F,3,3)
    t_cf = (prep.R_co @ t[..., None])[..., 0] + prep.t_co  # (B,F,3)
    # X_cam = R_cam_odom (R_odom_obj p + t_odom_obj) + t_cam_odom
    return torch.einsum("bfij,bkj->bfki", R_cf, state.points_obj) + t_cf[:, :, None, :]


def _robust(s: torch.Tensor, options: SolverOptions) -> tuple[torch.Tensor, torch.Tensor]:
    c = options.loss_scale_px
    if options.loss == "trivial":
        return s, torch.ones_like(s)
    if options.loss == "huber":
        c2 = c * c
        root = torch.sqrt(s.clamp(min=c2))
        return torch.where(s <= c2, s, 2 * c * root - c2), torch.where(s <= c2, torch.ones_like(s), c / root)
    c2 = c * c
    return c2 * torch.log1p(s / c2), 1.0 / (1.0 + s / c2)


def reprojection_residuals(prep: _Prep, state: OBAState, jacobians: bool = False):
    """Weighted reprojection residuals ``(B, F, K, 2)`` (zero where masked) and camera depths.

    Optionally also Jacobians wrt the frame's pose increment ``(B,F,K,2,6)`` and the point
    ``(B,F,K,2,3)``.
    """
    R, t = _frame_poses(prep, state)
    R_cf = prep.R_co @ R
    t_cf = (prep.R_co @ t[..., None])[..., 0] + prep.t_co
    p = state.points_obj
    Xc = torch.einsum("bfij,bkj->bfki", R_cf, p) + t_cf[:, :, None, :]
    z = Xc[..., 2]
    zs = torch.where(prep.m > 0, z, torch.ones_like(z))
    xy = Xc[..., :2] / zs[..., None]
    uv_hat = prep.fxfy * xy + prep.cxcy
    scale = (prep.w * prep.m)[..., None]
    r = scale * (uv_hat - prep.uv)
    if not jacobians:
        return r, z, None, None
    # d pi / d X_cam = [[fx/z, 0, -fx x/z^2], [0, fy/z, -fy y/z^2]]  (times the weight)
    fx, fy = prep.fxfy[..., 0], prep.fxfy[..., 1]
    inv_z = scale[..., 0] / zs
    zero = torch.zeros_like(inv_z)
    Jpi = torch.stack(
        [fx * inv_z, zero, -fx * xy[..., 0] * inv_z, zero, fy * inv_z, -fy * xy[..., 1] * inv_z], -1
    ).reshape(z.shape + (2, 3))
    J_t = _mm(Jpi, prep.R_co[:, :, None])  # d/d t_odom_obj
    J_p = _mm(Jpi, R_cf[:, :, None])  # d/d p_obj
    # d/d dtheta with R <- R exp(dtheta): -J_p skew(p), row-wise  -row^T [p]x = p x row
    J_th = torch.linalg.cross(p[:, None, :, None, :].expand_as(J_p), J_p, dim=-1)
    return r, z, torch.cat([J_t, J_th], -1), J_p


def prior_residuals(prep: _Prep, state: OBAState, jacobians: bool = False):
    """Pose prior residuals ``(B, F, 6)`` and Jacobians ``(B, F, 6, 6)`` wrt the frame's pose increment."""
    assert prep.prior_R is not None and prep.prior_t is not None and prep.prior_L is not None and prep.prior_m is not None, \
        "_prepare sets the prior fields together; callers check prior_m"
    R, t = _frame_poses(prep, state)
    phi = so3_log(prep.prior_R.transpose(-1, -2) @ R)
    e = torch.cat([t - prep.prior_t, phi], -1)
    pm = prep.prior_m[..., None]
    r = (prep.prior_L @ e[..., None])[..., 0] * pm
    if not jacobians:
        return r, None
    J = torch.cat([prep.prior_L[..., :3], prep.prior_L[..., 3:] @ so3_right_jacobian_inv(phi)], -1) * pm[..., None]
    return r, J


def motion_residuals(prep: _Prep, state: OBAState, jacobians: bool = False):
    """Constant-velocity residuals ``(B, F-2, 6)`` on slots (a, b, c) = (f, f+1, f+2), and Jacobians.

    The Jacobians are ``(B, F-2, 3, 6, 6)`` ``[slot a|b|c, residual, dof]``.
    """
    assert (prep.mot_m is not None and prep.mot_dt0 is not None and prep.mot_dt1 is not None and prep.mot_dtm is not None
            and prep.mot_w is not None and prep.mot_Jt is not None), "_prepare sets the motion fields together; callers check mot_m"
    R, t = state.R_odom_obj, state.t_odom_obj
    # the relative rotation of each consecutive pair, once: (a, b) pairs are [:, :-1], (b, c) pairs [:, 1:]
    M = R[:, :-1].transpose(-1, -2) @ R[:, 1:]  # (B, F-1, 3, 3)
    phi = so3_log(M)
    phi0, phi1 = phi[:, :-1], phi[:, 1:]
    dt0, dt1, dtm = prep.mot_dt0[..., None], prep.mot_dt1[..., None], prep.mot_dtm[..., None]
    mm = prep.mot_m[..., None]
    wt, wr = prep.mot_w[..., :3], prep.mot_w[..., 3:]
    r_t = ((t[:, 2:] - t[:, 1:-1]) / dt1 - (t[:, 1:-1] - t[:, :-2]) / dt0) / dtm * wt
    r_r = (phi1 / dt1 - phi0 / dt0) / dtm * wr
    r = torch.cat([r_t, r_r], -1) * mm
    if not jacobians:
        return r, None
    Ji = so3_right_jacobian_inv(phi)  # (B, F-1, 3, 3)
    JiM = Ji @ M.transpose(-1, -2)
    a_, b_ = (1 / (dt0 * dtm))[..., None], (1 / (dt1 * dtm))[..., None]
    wr_ = wr[..., None] * mm[..., None]
    J = torch.zeros(r.shape[:2] + (3, r.shape[-1], 6), dtype=R.dtype, device=R.device)
    J[..., :3, :3] = prep.mot_Jt  # translation rows: constant
    J[..., 3:6, 3:] = torch.stack([a_ * JiM[:, :-1], -(b_ * JiM[:, 1:] + a_ * Ji[:, :-1]), b_ * Ji[:, 1:]], 2) * wr_[:, :, None]
    return r, J


def _cost(prep: _Prep, state: OBAState, options: SolverOptions) -> torch.Tensor:
    r, z, _, _ = reprojection_residuals(prep, state)
    rho, _ = _robust((r * r).sum(-1), options)
    cost = 0.5 * (rho * prep.m).flatten(1).sum(-1)
    behind = ((z <= options.min_depth_m) & (prep.m > 0)).flatten(1).any(-1)
    if prep.prior_m is not None:
        rp, _ = prior_residuals(prep, state)
        cost = cost + 0.5 * (rp * rp).flatten(1).sum(-1)
    if prep.mot_m is not None:
        rm, _ = motion_residuals(prep, state)
        cost = cost + 0.5 * (rm * rm).flatten(1).sum(-1)
    return torch.where(behind, torch.full_like(cost, float("inf")), cost)


def problem_cost(problem: OBAProblem, state: OBAState, options: SolverOptions | None = None) -> torch.Tensor:
    """Ceres-convention cost ``(B,)`` of ``state`` (observations behind the camera at ``state`` are dropped)."""
    options = options or SolverOptions()
    prep = _prepare(problem, state, options)
    cost = _cost(prep, state, options)
    return torch.where(prep.valid, cost, torch.full_like(cost, float("nan")))


def effective_observation_mask(problem: OBAProblem, state: OBAState, options: SolverOptions | None = None) -> torch.Tensor:
    """``(B, F, K)`` bool: the observations the solver uses from ``state``.

    Used means present, finite, in a present frame, in front of the camera, of a point seen at least twice,
    in a valid problem.
    """
    prep = _prepare(problem, state, options or SolverOptions())
    return prep.m > 0


# ----------------------------------------------------------------------------------------------
# normal equations


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Broadcast product of tiny matrices ``(*, n, m) @ (*, m, p)`` as multiply-and-sum.

    Faster than batched GEMM for 2x3 / 3x3 / 6x3 blocks on CPU; one elementwise kernel on CUDA.
    """
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for m in range(1, a.shape[-1]):  # contraction length 2-3: unrolled
        out = out + a[..., :, m, None] * b[..., None, m, :]
    return out


def _inv3(A: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of ``(*, 3, 3)`` matrices via the adjugate."""
    a, b, c = A[..., 0, 0], A[..., 0, 1], A[..., 0, 2]
    d, e, f = A[..., 1, 0], A[..., 1, 1], A[..., 1, 2]
    g, h, i = A[..., 2, 0], A[..., 2, 1], A[..., 2, 2]
    co00, co01, co02 = e * i - f * h, f * g - d * i, d * h - e * g
    det = a * co00 + b * co01 + c * co02
    adj = torch.stack(
        [co00, c * h - b * i, b * f - c * e, co01, a * i - c * g, c * d - a * f, co02, b * g - a * h, a * e - b * d], -1
    ).reshape(A.shape)
    return adj / det[..., None, None]


@dataclass
class _Normal:
    H: torch.Tensor  # (B,6P,6P) pose block (a (B,P,6,P,6) view gives the 6x6 blocks)
    g: torch.Tensor  # (B,P,6)
    W: torch.Tensor  # (B,K,6P,3) point-major pose-point blocks
    V: torch.Tensor  # (B,K,3,3)
    gp: torch.Tensor  # (B,K,3)
    cost: torch.Tensor  # (B,)


def _normal_equations(prep: _Prep, state: OBAState, options: SolverOptions) -> _Normal:
    B, F, K = prep.m.shape
    r, z, Jx, Jp = reprojection_residuals(prep, state, jacobians=True)
    s = (r * r).sum(-1)
    rho, drho = _robust(s, options)
    cost = 0.5 * (rho * prep.m).flatten(1).sum(-1)
    wgt = (drho * prep.m)[..., None, None]
    Jxw = Jx * wgt  # (B,F,K,2,6) IRLS-weighted
    Hf = torch.einsum("bfkri,bfkrj->bfij", Jxw, Jx)  # (B,F,6,6)
    gf = torch.einsum("bfkri,bfkr->bfi", Jxw, r)  # (B,F,6)
    Wf = torch.einsum("bfkri,bfkrj->bfkij", Jxw, Jp)  # (B,F,K,6,3)
    Jpw = Jp * wgt
    V = torch.einsum("bfkri,bfkrj->bkij", Jpw, Jp)  # (B,K,3,3)
    gp = torch.einsum("bfkri,bfkr->bki", Jpw, r)
    if prep.prior_m is not None:
        rp, Jpr = prior_residuals(prep, state, jacobians=True)
        cost = cost + 0.5 * (rp * rp).flatten(1).sum(-1)
        Hf = Hf + Jpr.transpose(-1, -2) @ Jpr
        gf = gf + (Jpr.transpose(-1, -2) @ rp[..., None])[..., 0]
    # frames -> pose slots (identity for moving objects, all -> 0 for static ones)
    idx = prep.slot
    Hs = torch.zeros_like(Hf).scatter_add_(1, idx[..., None, None].expand_as(Hf), Hf)
    g = torch.zeros_like(gf).scatter_add_(1, idx[..., None].expand_as(gf), gf)
    if prep.any_static:
        Wf = torch.zeros_like(Wf).scatter_add_(1, idx[..., None, None, None].expand_as(Wf), Wf)
    W = Wf.permute(0, 2, 1, 3, 4).reshape(B, K, F * 6, 3)
    H = torch.zeros(B, 6 * F, 6 * F, dtype=Hf.dtype, device=Hf.device)
    # H.view(B, F, 6, F, 6)[b, p, i, q, j] = block (p, q), entry (i, j): the per-slot blocks on its diagonal
    H.view(B, F, 6, F, 6).diagonal(dim1=1, dim2=3).add_(Hs.permute(0, 2, 3, 1))
    if prep.mot_m is not None:
        rm, Jm = motion_residuals(prep, state, jacobians=True)
        assert prep.mot_hidx is not None and prep.mot_gidx is not None, "_prepare sets them with mot_m"
        cost = cost + 0.5 * (rm * rm).flatten(1).sum(-1)
        # every triplet's 3x3 grid of 6x6 blocks (and 3 gradient blocks) added into the band in one op each
        H.view(B, -1).index_add_(1, prep.mot_hidx, torch.einsum("btiro,btjrp->btijop", Jm, Jm).reshape(B, -1))
        g.view(B, -1).index_add_(1, prep.mot_gidx, torch.einsum("btiro,btr->btio", Jm, rm).reshape(B, -1))
    behind = ((z <= options.min_depth_m) & (prep.m > 0)).flatten(1).any(-1)
    cost = torch.where(behind, torch.full_like(cost, float("inf")), cost)
    return _Normal(H=H, g=g, W=W, V=V, gp=gp, cost=cost)


def _select_normal(mask: torch.Tensor, a: _Normal, b: _Normal) -> _Normal:
    def w(x, y):
        return torch.where(mask.view((-1,) + (1,) * (x.dim() - 1)), x, y)

    return _Normal(H=w(a.H, b.H), g=w(a.g, b.g), W=w(a.W, b.W), V=w(a.V, b.V), gp=w(a.gp, b.gp), cost=w(a.cost, b.cost))


def _solve_damped(ne: _Normal, prep: _Prep, lam: torch.Tensor, options: SolverOptions):
    """Solve ``(H + lam D) delta = -g`` by the Schur complement on points.

    Returns ``(dx (B,P,6), dp (B,K,3), ok (B,), predicted decrease (B,), L (B,6P,6P))``.
    """
    B, K, P = ne.W.shape[0], ne.W.shape[1], ne.W.shape[2] // 6
    dt = ne.g.dtype
    free = prep.free
    pa = prep.point_active
    Hdiag = ne.H.diagonal(dim1=-2, dim2=-1).reshape(B, P, 6)
    Dp = Hdiag.clamp(options.min_diagonal, options.max_diagonal)  # (B,P,6)
    Dv = torch.diagonal(ne.V, dim1=-2, dim2=-1).clamp(options.min_diagonal, options.max_diagonal)  # (B,K,3)
    lam_ = lam[:, None, None]
    eye3 = torch.eye(3, dtype=dt, device=ne.V.device)
    Va = ne.V + torch.diag_embed(lam_ * Dv)
    Va = torch.where(pa[..., None, None] > 0, Va, eye3)
    Vinv = _inv3(Va)
    Y = ne.W @ Vinv  # (B,K,6P,3) = W_k V_k^-1
    # S = H - sum_k W_k V_k^-1 W_k^T
    S = ne.H - Y.permute(0, 2, 1, 3).reshape(B, 6 * P, 3 * K) @ ne.W.permute(0, 1, 3, 2).reshape(B, 3 * K, 6 * P)
    f = free.reshape(B, 6 * P)
    S.diagonal(dim1=-2, dim2=-1).add_(lam[:, None] * Dp.reshape(B, 6 * P))
    # held / unused dofs: identity rows and columns, zero right-hand side -> zero step
    assert prep.free_outer is not None, "_prepare sets it"
    S.mul_(prep.free_outer).diagonal(dim1=-2, dim2=-1).add_(1 - f)
    gp = ne.gp * pa[..., None]
    rhs = (-ne.g.reshape(B, 6 * P) + torch.einsum("bkpj,bkj->bp", Y, gp)) * f
    L, info = torch.linalg.cholesky_ex(S)
    ok = info == 0
    # two triangular solves rather than cholesky_solve: MAGMA's batched potrs allocates and cannot be graph-captured
    y = torch.linalg.solve_triangular(L, rhs[..., None], upper=False)
    dx = torch.linalg.solve_triangular(L.transpose(-1, -2), y, upper=True)[..., 0] * f
    dx = torch.where(ok[:, None], dx, torch.zeros_like(dx)).reshape(B, P, 6)
    dp = _mm(Vinv, (-gp - torch.einsum("bkpj,bp->bkj", ne.W, dx.reshape(B, 6 * P)))[..., None])[..., 0] * pa[..., None]
    g_dot = (ne.g * free * dx).flatten(1).sum(-1) + (gp * dp).flatten(1).sum(-1)
    d_dot = (Dp * free * dx * dx).flatten(1).sum(-1) + (Dv * pa[..., None] * dp * dp).flatten(1).sum(-1)
    pred = 0.5 * (-g_dot + lam * d_dot)
    return dx, dp, ok, pred, L


def _apply(state: OBAState, dx: torch.Tensor, dp: torch.Tensor) -> OBAState:
    return OBAState(
        R_odom_obj=state.R_odom_obj @ so3_exp(dx[..., 3:]),
        t_odom_obj=state.t_odom_obj + dx[..., :3],
        points_obj=state.points_obj + dp,
    )


def _select(mask: torch.Tensor, a: OBAState, b: OBAState) -> OBAState:
    return OBAState(
        R_odom_obj=torch.where(mask[:, None, None, None], a.R_odom_obj, b.R_odom_obj),
        t_odom_obj=torch.where(mask[:, None, None], a.t_odom_obj, b.t_odom_obj),
        points_obj=torch.where(mask[:, None, None], a.points_obj, b.points_obj),
    )


def _lm_iteration(prep: _Prep, options: SolverOptions, state: OBAState, ne: _Normal, lam: torch.Tensor, nu: torch.Tensor,
                  active: torch.Tensor, converged: torch.Tensor, iterations: torch.Tensor):
    """One LM iteration for every problem (damped step, candidate evaluation, Nielsen update, masks)."""
    dt = ne.cost.dtype
    gmax = torch.cat([(ne.g * prep.free).flatten(1), (ne.gp * prep.point_active[..., None]).flatten(1)], 1).abs().amax(1)
    gconv = gmax <= options.gradient_tolerance
    converged = converged | (active & gconv)
    active = active & ~gconv
    dx, dp, ok, pred, _ = _solve_damped(ne, prep, lam, options)
    cand = _apply(state, dx, dp)
    # Normal equations at the candidate (its cost included): kept where the step is accepted,
    # which saves a separate cost evaluation per iteration.
    ne_c = _normal_equations(prep, cand, options)
    new_cost = ne_c.cost
    accept = active & ok & torch.isfinite(new_cost) & (new_cost < ne.cost)
    rho = (ne.cost - new_cost) / pred.clamp(min=torch.finfo(dt).tiny)
    lam = torch.where(accept, lam * torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3), torch.where(active, lam * nu, lam))
    nu = torch.where(accept, torch.full_like(nu, 2.0), torch.where(active, nu * 2, nu))
    step = torch.cat([dx.flatten(1), dp.flatten(1)], 1).norm(dim=1)
    xnorm = torch.cat([state.t_odom_obj.flatten(1), state.points_obj.flatten(1)], 1).norm(dim=1)
    fconv = accept & ((ne.cost - new_cost) <= options.function_tolerance * ne.cost)
    xconv = accept & (step <= options.parameter_tolerance * (xnorm + options.parameter_tolerance))
    iterations = iterations + active.long()
    state = _select(accept, cand, state)
    converged = converged | fconv | xconv
    stalled = active & (lam > 1e30)
    active = active & ~(fconv | xconv) & ~stalled
    ne = _select_normal(accept, ne_c, ne)
    return state, ne, lam, nu, active, converged, iterations


_COMPILED: dict[str, object] = {}


def _compiled(name: str):
    """``torch.compile``d solver pieces (``SolverOptions.compiled``).

    Elementwise chains fused into few kernels; compiled once per process on first use (tens of seconds), then per new shape.
    """
    if name not in _COMPILED:
        fns: dict[str, Callable[..., Any]] = {"lm_iteration": _lm_iteration, "normal_equations": _normal_equations}
        fn = fns[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def solve(
    problem: OBAProblem,
    init: OBAState,
    options: SolverOptions | None = None,
    initial_lambda: torch.Tensor | None = None,
) -> OBAResult:
    """Refine all problems of the batch at once with Levenberg-Marquardt.

    Args:
        problem: the padded batch (device and dtype of ``problem.obs_uv`` are used throughout).
        init: initial state (warm start: the previous window's result).
        options: solver settings.
        initial_lambda: ``(B,)`` per-problem damping to start from (e.g. ``OBAResult.lam``).

    Returns:
        An :class:`OBAResult`; invalid problems keep their initial state and report NaN cost.

    Raises:
        OBASolverError: inconsistent shapes or an unknown loss.
    """
    options = options or SolverOptions()
    B, F, K = problem.shape
    dt, dev = problem.obs_uv.dtype, problem.obs_uv.device
    if (tuple(init.R_odom_obj.shape) != (B, F, 3, 3) or tuple(init.t_odom_obj.shape) != (B, F, 3)
            or tuple(init.points_obj.shape) != (B, K, 3)):
        raise OBASolverError("init state shapes must be (B,F,3,3), (B,F,3), (B,K,3) matching the problem")
    state = OBAState(*(x.to(device=dev, dtype=dt) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
    prep = _prepare(problem, state, options)
    # Invalid problems: neutral numbers so nothing non-finite flows through shared kernels.
    v4, v3 = prep.valid[:, None, None, None], prep.valid[:, None, None]
    eye3 = torch.eye(3, dtype=dt, device=dev)
    state = OBAState(
        torch.where(v4, state.R_odom_obj, eye3), torch.where(v3, state.t_odom_obj, 0.0), torch.where(v3, state.points_obj, 0.0)
    )
    lam = torch.full((B,), options.initial_lambda, dtype=dt, device=dev) if initial_lambda is None else initial_lambda.to(dev, dt).clone()
    lam = torch.where(torch.isfinite(lam) & (lam > 0), lam, torch.full_like(lam, options.initial_lambda))
    nu = torch.full((B,), 2.0, dtype=dt, device=dev)
    active = prep.valid.clone()
    converged = torch.zeros(B, dtype=torch.bool, device=dev)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    ne = (_compiled("normal_equations") if options.compiled else _normal_equations)(prep, state, options)
    initial_cost = ne.cost.clone()
    active = active & torch.isfinite(ne.cost)
    step_fn = _compiled("lm_iteration") if options.compiled else _lm_iteration
    for it in range(options.max_iterations):
        state, ne, lam, nu, active, converged, iterations = step_fn(prep, options, state, ne, lam, nu, active, converged, iterations)
        if options.sync_every and (it + 1) % options.sync_every == 0 and not bool(active.any()):
            break
    cost = torch.where(prep.valid, ne.cost, torch.full_like(ne.cost, float("nan")))
    cov = None
    if options.compute_covariance:
        cov = _pose_covariance(ne, prep, options)
    # Static problems: every frame carries slot 0's pose.
    Rf, tf = _frame_poses(prep, state)
    state = OBAState(Rf, tf, state.points_obj)
    state = _select(prep.valid, state, OBAState(*(x.to(device=dev, dtype=dt) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj))))
    return OBAResult(
        state=state, cost=cost, initial_cost=torch.where(prep.valid, initial_cost, torch.full_like(cost, float("nan"))),
        iterations=iterations, converged=converged, valid=prep.valid, lam=lam, pose_covariance=cov,
        num_obs=prep.m.flatten(1).sum(-1).long(),
    )


def _pose_covariance(ne: _Normal, prep: _Prep, options: SolverOptions) -> torch.Tensor:
    """``(B, P, 6, P, 6)`` inverse of the points-marginalised information; zero on held dofs."""
    B, P = ne.g.shape[:2]
    tiny = torch.full((B,), max(1e-12, 10 * torch.finfo(ne.g.dtype).eps), dtype=ne.g.dtype, device=ne.g.device)
    _, _, ok, _, L = _solve_damped(ne, prep, tiny, options)
    L = torch.where(ok[:, None, None], L, torch.eye(L.shape[-1], dtype=L.dtype, device=L.device))
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    cov = Linv.transpose(-1, -2) @ Linv  # S^-1 = L^-T L^-1
    f = prep.free.reshape(B, 6 * P)
    cov = cov * f[:, :, None] * f[:, None, :]
    cov = torch.where(ok[:, None, None], cov, torch.full_like(cov, float("nan")))
    return cov.reshape(B, P, 6, P, 6)
