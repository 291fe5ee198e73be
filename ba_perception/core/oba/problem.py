"""The object-BA problem, state, options and result records (:mod:`ba_perception.core.oba.solver` solves them)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

LOSSES = ("trivial", "huber", "cauchy")


class OBASolverError(ValueError):
    """Raised when a problem's tensors have inconsistent shapes or options are invalid."""


@dataclass
class OBAProblem:
    """A batch of ``B`` object-BA problems padded to ``F`` frames and ``K`` points.

    Attributes:
        obs_uv: ``(B, F, K, 2)`` observed pixels of point k in frame f (NaN allowed where masked).
        obs_mask: ``(B, F, K)`` bool, observation present.
        T_cam_odom: ``(B, F, 4, 4)`` known camera poses (odom -> camera optical frame), metres.
        K: ``(B, 3, 3)`` pinhole intrinsics (pixels).
        frame_mask: ``(B, F)`` bool, frame present (padding is False).
        stamps_s: ``(B, F)`` capture times in seconds (needed by the motion prior).
        obs_sqrt_weight: ``(B, F, K)`` 1 / pixel std of each observation (default 1).
        prior_T_odom_obj: ``(B, F, 4, 4)`` detector box pose per frame in odom.
        prior_sqrt_info: ``(B, F, 6, 6)`` square-root information of the prior residual
            ``[t - t_prior (odom, m); log(R_prior^T R) (object frame, rad)]``.
        prior_mask: ``(B, F)`` bool, prior present.
        fixed_frames: ``(B, F)`` bool, hold that frame's pose constant (gauge).
        static: ``(B,)`` bool, one pose for all frames of the problem.
        motion_sqrt_info: ``(B, 6)`` ``1/sigma`` of the constant-velocity prior:
            ``(1/(m/s^2)) x3`` for translation (odom axes), ``(1/(rad/s^2)) x3`` for rotation
            (object axes); zeros disable it.
        problem_mask: ``(B,)`` bool, problem enabled.
    """

    obs_uv: torch.Tensor
    obs_mask: torch.Tensor
    T_cam_odom: torch.Tensor
    K: torch.Tensor
    frame_mask: torch.Tensor
    stamps_s: torch.Tensor | None = None
    obs_sqrt_weight: torch.Tensor | None = None
    prior_T_odom_obj: torch.Tensor | None = None
    prior_sqrt_info: torch.Tensor | None = None
    prior_mask: torch.Tensor | None = None
    fixed_frames: torch.Tensor | None = None
    static: torch.Tensor | None = None
    motion_sqrt_info: torch.Tensor | None = None
    problem_mask: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, F, K)``."""
        B, F, K, _ = self.obs_uv.shape
        return B, F, K

    def to(self, device=None, dtype=None) -> OBAProblem:
        """Copy to a device / floating dtype (bool tensors keep their dtype)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                v = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
            out[f.name] = v
        return OBAProblem(**out)


# OBAProblem fields indexed by frame (dim 1); the others are per problem.
PER_FRAME_FIELDS = ("obs_uv", "obs_mask", "T_cam_odom", "frame_mask", "stamps_s", "obs_sqrt_weight", "prior_T_odom_obj",
                    "prior_sqrt_info", "prior_mask", "fixed_frames")


def newest_frames(problem: OBAProblem, state: OBAState, n: int) -> tuple[OBAProblem, OBAState]:
    """Problems and state cut to each problem's newest ``n`` present frames.

    Frames are packed oldest first, padding last, as :func:`~ba_perception.core.oba.refine.build_batch` packs
    them; points are kept.
    """
    B, F, _ = problem.shape
    nf = problem.frame_mask.sum(1)
    j = torch.arange(n, device=nf.device)
    idx = ((nf - n).clamp(min=0)[:, None] + j).clamp(max=F - 1)  # (B, n)

    def newest(x: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, idx.view(B, n, *([1] * (x.dim() - 2))).expand(B, n, *x.shape[2:]))

    cut = OBAProblem(**{f.name: (newest(v) if f.name in PER_FRAME_FIELDS and v is not None else v)
                        for f in fields(problem) for v in [getattr(problem, f.name)]})
    cut.frame_mask = cut.frame_mask & (j[None] < nf[:, None])
    cut.obs_mask = cut.obs_mask & cut.frame_mask[..., None]
    if cut.prior_mask is not None:
        cut.prior_mask = cut.prior_mask & cut.frame_mask
    return cut, OBAState(newest(state.R_odom_obj), newest(state.t_odom_obj), state.points_obj)


@dataclass
class OBAState:
    """Unknowns: object poses per frame in odom and points in the object frame.

    Attributes:
        R_odom_obj: ``(B, F, 3, 3)`` object rotations.
        t_odom_obj: ``(B, F, 3)`` object (box centre) positions in odom, metres.
        points_obj: ``(B, K, 3)`` points in the object frame, metres.
    """

    R_odom_obj: torch.Tensor
    t_odom_obj: torch.Tensor
    points_obj: torch.Tensor

    def clone(self) -> OBAState:
        """Deep copy."""
        return OBAState(self.R_odom_obj.clone(), self.t_odom_obj.clone(), self.points_obj.clone())

    def T_odom_obj(self) -> torch.Tensor:
        """``(B, F, 4, 4)`` poses."""
        T = torch.zeros(self.R_odom_obj.shape[:-2] + (4, 4), dtype=self.R_odom_obj.dtype, device=self.R_odom_obj.device)
        T[..., :3, :3] = self.R_odom_obj
        T[..., :3, 3] = self.t_odom_obj
        T[..., 3, 3] = 1
        return T


@dataclass
class SolverOptions:
    """LM settings. Tolerances follow Ceres' meanings (relative cost decrease, step, gradient)."""

    max_iterations: int = 5
    loss: str = "cauchy"
    loss_scale_px: float = 2.0
    yaw_only: bool = False
    initial_lambda: float = 1e-4
    min_diagonal: float = 1e-6
    max_diagonal: float = 1e32
    function_tolerance: float = 1e-12
    parameter_tolerance: float = 1e-12
    gradient_tolerance: float = 1e-12
    min_depth_m: float = 1e-3
    sync_every: int = 1
    compute_covariance: bool = True
    # No host sync anywhere (CUDA-graph capture): a given ``static`` tensor always takes the
    # shared-slot code path instead of asking the device whether any problem is static.
    assume_static: bool = False
    # Fuse the LM iteration with torch.compile (Triton kernels on CUDA, C++ on CPU): 2x faster on
    # an H100 inside a CUDA graph, but compiling takes tens of seconds per process and per batch
    # shape, so a node's first frames of every new padded size would stall. Off by default.
    compiled: bool = False


@dataclass
class OBAResult:
    """Solver output.

    Attributes:
        state: refined unknowns (static problems: slot 0 broadcast to every frame).
        cost: ``(B,)`` final Ceres-convention cost (NaN for invalid problems).
        initial_cost: ``(B,)`` cost at the initial state.
        iterations: ``(B,)`` LM iterations run per problem.
        converged: ``(B,)`` a tolerance was met.
        valid: ``(B,)`` problem was solvable (enabled and finite inputs).
        lam: ``(B,)`` final damping (pass back as ``initial_lambda`` for a warm start).
        pose_covariance: ``(B, F, 6, F, 6)`` covariance of the per-slot pose increments
            ``[dt (odom, m), dtheta (object frame, rad)]`` with the points marginalised
            (inverse of the Schur complement of the undamped Gauss-Newton information);
            zero for held or unused slots; None unless ``compute_covariance``.
        num_obs: ``(B,)`` observations used.
    """

    state: OBAState
    cost: torch.Tensor
    initial_cost: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    valid: torch.Tensor
    lam: torch.Tensor
    pose_covariance: torch.Tensor | None
    num_obs: torch.Tensor
