"""Static or moving: does one fixed odom point per point track explain an object's image tracks?

With the camera poses known (odometry), every point track of a static object triangulates to one
point in ``odom`` that reprojects onto each of its observations to within the point tracker's
noise, at a depth the detector agrees with. A moving object fails one of the two tests:

- motion across the epipolar lines (crossing traffic; anything moving while the camera stands
  still) leaves reprojection residuals no static point can remove;
- motion along them (traffic on the camera's own road) is explained by a static point at the
  wrong depth: farther for a car driving away, nearer for one approaching. The detector's depth
  contradicts it, by more than the triangulation's own depth uncertainty.

Where the camera did not travel the triangulated depth is unconstrained (its uncertainty is
huge) and the residual alone decides. Unlike comparing the costs of a one-pose and a free-pose
bundle adjustment, this test never looks at how the detector's depth drifts over the window,
which for parked cars grows with the camera's travel (the range changes).

Units: pixels and metres; points and cameras in ``odom``. Everything is batched over problems
and point tracks; the only reduction is a masked median per problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ba_perception.core.oba.solver import OBAProblem


@dataclass(frozen=True)
class StaticEvidence:
    """Per-problem summary of the static triangulation of its point tracks.

    Attributes:
        residual_px: ``(B,)`` median over tracks of the RMS reprojection error of the track's
            static point, pixels (NaN without usable tracks).
        depth_log_ratio: ``(B,)`` median over tracks of ``log(z_tri / z_det)``: the static point's
            depth in the camera of the track's newest observation over the detector's centre
            depth there.
        depth_log_std: ``(B,)`` median over tracks of the relative std of that depth for 1 px of
            track noise (scale it by the noise; huge without camera travel).
        num_tracks: ``(B,)`` tracks with at least ``min_observations`` observations.
    """

    residual_px: torch.Tensor
    depth_log_ratio: torch.Tensor
    depth_log_std: torch.Tensor
    num_tracks: torch.Tensor

    def static(self, noise_px: float, detector_depth_log_std: float, min_tracks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(decided, static)`` bool ``(B,)``: enough tracks to decide, and the decision.

        Static when the median residual is below ``4 * noise_px`` and the depth disagreement is
        within 4 sigma of ``sqrt((noise_px * depth_log_std)^2 + detector_depth_log_std^2)``, the
        second term being the detector's relative depth error (and the centre-to-surface offset).
        """
        var = (noise_px * self.depth_log_std) ** 2 + detector_depth_log_std**2
        consistent = (self.residual_px < 4.0 * noise_px) & (self.depth_log_ratio**2 < 16.0 * var)
        decided = self.num_tracks >= min_tracks
        return decided, decided & consistent


def static_evidence(problem: OBAProblem, min_observations: int = 3) -> StaticEvidence:
    """Triangulate every point track as a static ``odom`` point and summarise the fit per problem.

    Each track's point minimises the sum over its observations of the squared distance to the
    viewing ray, each weighted by ``(f_x / z)^2`` with ``z`` the detector's centre depth in that
    frame, i.e. approximately the squared reprojection error in pixels (closed form: one 3x3
    solve per track). A weak prior at the detector's depth along the newest ray keeps tracks
    without parallax solvable; it does not move points that have parallax.

    Args:
        problem: a batch with detector priors (``prior_T_odom_obj``); the solver's own fields.
        min_observations: observations a track needs to count.

    Returns:
        A :class:`StaticEvidence` in float64 on the problem's device.

    Raises:
        ValueError: the problem has no detector priors.
    """
    if problem.prior_T_odom_obj is None:
        raise ValueError("static_evidence needs the detector priors (prior_T_odom_obj)")
    dt = torch.float64
    B, F, K = problem.shape
    T_cam_odom = problem.T_cam_odom.to(dt)
    T_odom_cam = torch.linalg.inv(T_cam_odom)
    Kmat = problem.K.to(dt)
    mask = problem.obs_mask & problem.frame_mask[..., None] & torch.isfinite(problem.obs_uv).all(-1)
    uv = torch.where(mask[..., None], problem.obs_uv.to(dt), torch.zeros((), dtype=dt, device=mask.device))
    # camera centres relative to the newest frame's (keeps the normal equations well scaled)
    newest = (problem.frame_mask.to(dt) * torch.arange(F, dtype=dt, device=mask.device)).argmax(1)
    origin = T_odom_cam[torch.arange(B), newest, :3, 3]
    centre = T_odom_cam[..., :3, 3] - origin[:, None]  # (B, F, 3)
    rays = torch.einsum("bfij,bjk,bfnk->bfni", T_odom_cam[..., :3, :3], torch.linalg.inv(Kmat),
                        torch.cat([uv, torch.ones_like(uv[..., :1])], -1))
    rays = rays / rays.norm(dim=-1, keepdim=True)  # (B, F, K, 3) unit rays in odom
    c_det = problem.prior_T_odom_obj[..., :3, 3].to(dt)
    z_det = (torch.einsum("bfij,bfj->bfi", T_cam_odom[..., :3, :3], c_det) + T_cam_odom[..., :3, 3])[..., 2].clamp(min=1.0)
    w = (Kmat[:, 0, 0, None] / z_det)[..., None] ** 2 * mask.to(dt)  # (B, F, K)
    proj = torch.eye(3, dtype=dt, device=mask.device) - rays[..., :, None] * rays[..., None, :]
    A = (w[..., None, None] * proj).sum(1)  # (B, K, 3, 3)
    b = (w[..., None, None] * proj @ centre[:, :, None, :, None]).sum(1)[..., 0]
    # the newest observation of each track: its ray, centre and detector depth
    last = (mask.to(dt) * torch.arange(F, dtype=dt, device=mask.device)[:, None]).argmax(1)  # (B, K)
    take = lambda x: torch.gather(x, 1, last[:, None, :, None].expand(B, 1, K, x.shape[-1]))[:, 0]  # noqa: E731
    ray_l = take(rays)
    c_l = take(centre[:, :, None, :].expand(B, F, K, 3))
    z_l = take(z_det[:, :, None, None].expand(B, F, K, 1))[..., 0]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1) + 1e-12
    eye = torch.eye(3, dtype=dt, device=mask.device)
    # the triangulation's own depth uncertainty (no prior): huge where the rays are parallel
    depth_var = torch.einsum("bki,bkij,bkj->bk", ray_l, torch.linalg.inv(A + 1e-12 * trace[..., None, None] * eye), ray_l)
    reg = 1e-6 * trace
    prior = reg[..., None, None] * (ray_l[..., :, None] * ray_l[..., None, :] + 1e-6 * eye)
    A = A + prior
    b = b + (prior @ (c_l + z_l[..., None] * ray_l)[..., None])[..., 0]
    X = torch.linalg.solve(A, b[..., None])[..., 0]  # (B, K, 3), relative to origin
    X_cam = torch.einsum("bfij,bkj->bfki", T_cam_odom[..., :3, :3], X + origin[:, None]) + T_cam_odom[:, :, None, :3, 3]
    p = torch.einsum("bij,bfkj->bfki", Kmat, X_cam)
    err2 = ((p[..., :2] / p[..., 2:3].clamp(min=1e-6) - uv) ** 2).sum(-1)
    behind = (X_cam[..., 2] <= 0) & mask
    n = mask.sum(1)
    ok = n >= min_observations
    rms = torch.sqrt((err2 * mask).sum(1) / n.clamp(min=1))
    rms = torch.where(behind.any(1), torch.full_like(rms, float("inf")), rms)
    z_tri = take(X_cam[..., 2:])[..., 0]  # camera-frame depth, like z_det
    log_ratio = torch.log((z_tri / z_l).clamp(min=1e-3))
    log_std = depth_var.sqrt() / z_l
    nan = torch.full_like(rms, float("nan"))
    med = lambda x: torch.nanmedian(torch.where(ok, x, nan), dim=1).values  # noqa: E731
    return StaticEvidence(med(rms), med(log_ratio), med(log_std), ok.sum(1))
