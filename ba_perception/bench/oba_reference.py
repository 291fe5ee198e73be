"""Reference solve of pure-reprojection object-BA problems with pycolmap's Ceres bundle adjuster (tests/bench only)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ba_perception.core.oba.solver import OBAProblem, OBAState, SolverOptions, effective_observation_mask


class ReferenceError(RuntimeError):
    """Raised when pycolmap is missing or a problem cannot be mapped to COLMAP's BA."""


@dataclass
class ReferenceResult:
    """pycolmap results per problem.

    Attributes:
        state: refined poses (``T_odom_obj`` per frame) and points, float64 CPU.
        cost: ``(B,)`` Ceres final cost ``0.5 * sum(rho(|r|^2))``.
        initial_cost: ``(B,)`` Ceres initial cost.
        solve_s: ``(B,)`` wall time of ``BundleAdjuster.solve`` per problem, seconds.
        build_s: ``(B,)`` wall time to build the reconstruction and adjuster, seconds.
        iterations: ``(B,)`` successful + unsuccessful Ceres steps.
    """

    state: OBAState
    cost: np.ndarray
    initial_cost: np.ndarray
    solve_s: np.ndarray
    build_s: np.ndarray
    iterations: np.ndarray


def have_pycolmap() -> bool:
    """True when pycolmap can be imported."""
    try:
        import pycolmap  # noqa: F401  # imported only to test that it is installed
    except ImportError:
        return False
    return True


def solve_with_pycolmap(
    problem: OBAProblem,
    init: OBAState,
    loss: str = "trivial",
    loss_scale_px: float = 1.0,
    max_iterations: int = 200,
    tight: bool = True,
    num_threads: int = 1,
) -> ReferenceResult:
    """Solve each problem of the batch, one after another, with COLMAP's Ceres bundle adjuster.

    The object-centric problem maps to COLMAP's world-frame BA with the object frame as "world":
    image ``f`` has ``cam_from_world = T_cam_odom(f) @ T_odom_obj(f)`` and the points are the
    object-frame points. Since ``T_cam_odom`` is constant, this is a reparametrisation of the same
    cost, with the same optimum. Frames in ``problem.fixed_frames`` are held constant (gauge);
    intrinsics are constant. Only reprojection terms are supported (no priors, unit weights).
    Unlike our solver, Ceres has no cheirality guard: with a robust loss it may move a point into
    a camera centre to silence an outlier, which our solver refuses (``min_depth_m``).

    Args:
        problem: the batch (priors/motion/static/weights must be absent).
        init: the initial state.
        loss: ``trivial`` | ``huber`` | ``cauchy`` with scale ``loss_scale_px``.
        max_iterations: Ceres' ``max_num_iterations``.
        tight: tolerances near zero so Ceres runs to the true optimum (else COLMAP's defaults).
        num_threads: Ceres threads.

    Raises:
        ReferenceError: pycolmap missing or the problem has terms COLMAP's BA lacks.
    """
    try:
        import pycolmap
    except ImportError as err:
        raise ReferenceError("pycolmap is not installed: pip install pycolmap (test/bench dependency)") from err
    if problem.prior_T_odom_obj is not None or problem.motion_sqrt_info is not None or problem.obs_sqrt_weight is not None:
        raise ReferenceError("pycolmap reference supports pure reprojection problems only (drop priors and weights)")
    if problem.static is not None and bool(problem.static.any()):
        raise ReferenceError("pycolmap reference does not support static (shared-pose) problems")
    B, F, K = problem.shape
    p64 = problem.to(device="cpu", dtype=torch.float64)
    st = OBAState(*(x.detach().to("cpu", torch.float64) for x in (init.R_odom_obj, init.t_odom_obj, init.points_obj)))
    mask = effective_observation_mask(p64, st, SolverOptions()).numpy()
    uv = p64.obs_uv.numpy()
    T_co = p64.T_cam_odom.numpy()
    T_oo = st.T_odom_obj().numpy()
    Kmat = p64.K.numpy()
    fixed = np.zeros((B, F), bool) if p64.fixed_frames is None else p64.fixed_frames.numpy()
    R_out, t_out, p_out = st.R_odom_obj.numpy().copy(), st.t_odom_obj.numpy().copy(), st.points_obj.numpy().copy()
    cost = np.full(B, np.nan)
    cost0 = np.full(B, np.nan)
    solve_s, build_s, iters = np.zeros(B), np.zeros(B), np.zeros(B, int)
    loss_type = {"trivial": "TRIVIAL", "huber": "HUBER", "cauchy": "CAUCHY"}[loss]
    for b in range(B):
        t0 = time.perf_counter()
        rec = pycolmap.Reconstruction()
        fx, fy, cx, cy = Kmat[b, 0, 0], Kmat[b, 1, 1], Kmat[b, 0, 2], Kmat[b, 1, 2]
        cam = pycolmap.Camera(model="PINHOLE", width=int(2 * cx) + 1, height=int(2 * cy) + 1, params=[fx, fy, cx, cy], camera_id=1)
        rec.add_camera_with_trivial_rig(cam)
        frames = [f for f in range(F) if mask[b, f].any()]
        kp_index: dict[tuple[int, int], int] = {}
        for f in frames:
            ks = np.nonzero(mask[b, f])[0]
            for i, k_obs in enumerate(ks):
                kp_index[(f, int(k_obs))] = i
            img = pycolmap.Image(name=str(f), keypoints=uv[b, f, ks].astype(np.float64), camera_id=1, image_id=f + 1)
            cam_from_obj = T_co[b, f] @ T_oo[b, f]
            rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(cam_from_obj[:3, :4]))
        point_ids = {}
        for k in range(K):
            fs = [f for f in frames if mask[b, f, k]]
            if len(fs) < 2:
                continue
            track = pycolmap.Track([pycolmap.TrackElement(f + 1, kp_index[(f, k)]) for f in fs])
            point_ids[k] = rec.add_point3D(p_out[b, k], track)
        opts = pycolmap.BundleAdjustmentOptions()
        opts.refine_focal_length = False
        opts.refine_principal_point = False
        opts.refine_extra_params = False
        opts.refine_sensor_from_rig = False
        opts.print_summary = False
        opts.ceres.loss_function_type = getattr(pycolmap.LossFunctionType, loss_type)
        opts.ceres.loss_function_scale = float(loss_scale_px)
        so = opts.ceres.solver_options
        so.max_num_iterations = int(max_iterations)
        so.num_threads = int(num_threads)
        if tight:
            so.function_tolerance = 1e-16
            so.gradient_tolerance = 1e-16
            so.parameter_tolerance = 1e-16
        cfg = pycolmap.BundleAdjustmentConfig()
        for f in frames:
            cfg.add_image(f + 1)
        cfg.set_constant_cam_intrinsics(1)
        for f in frames:
            if fixed[b, f]:
                cfg.set_constant_rig_from_world_pose(f + 1)
        ba = pycolmap.create_default_bundle_adjuster(opts, cfg, rec)
        t1 = time.perf_counter()
        summary = ba.solve()
        t2 = time.perf_counter()
        assert isinstance(summary, pycolmap.CeresBundleAdjustmentSummary)  # the default adjuster is Ceres'
        cs = summary.ceres_summary
        cost[b], cost0[b] = cs.final_cost, cs.initial_cost
        iters[b] = cs.num_successful_steps + cs.num_unsuccessful_steps
        build_s[b], solve_s[b] = t1 - t0, t2 - t1
        T_oc = np.linalg.inv(T_co[b])
        for f in frames:
            M = np.eye(4)
            M[:3, :4] = rec.image(f + 1).cam_from_world().matrix()
            T = T_oc[f] @ M
            R_out[b, f], t_out[b, f] = T[:3, :3], T[:3, 3]
        for k, pid in point_ids.items():
            p_out[b, k] = rec.point3D(pid).xyz
    state = OBAState(torch.from_numpy(R_out), torch.from_numpy(t_out), torch.from_numpy(p_out))
    return ReferenceResult(state=state, cost=cost, initial_cost=cost0, solve_s=solve_s, build_s=build_s, iterations=iters)
