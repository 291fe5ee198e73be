"""Metric depth cues that do not come from the detector: ground contact and triangulation, fused per tracklet.

A monocular detector's depth on a new camera is biased, and its error persists from frame to
frame, so the object BA cannot average it away: it inherits it. Two geometric sources give
metric depth independently of the learned depth:

- **ground contact**: a car stands on the road. The ray through the bottom of its 2D box meets
  the road plane at the box's nearest bottom corner; the box centre is that point minus the
  corner's offset (from the detector's yaw and size, which a depth bias does not change).
  The road is the odom ``z = 0`` plane (base_link on the road, planar odometry), so the camera's
  height is ``T_odom_cam``'s ``z``. The relative error grows with range:
  ``sigma_rel^2 = (z sigma_v / (f H))^2 + (z sigma_pitch / H)^2 + (sigma_H / H)^2 + (sigma_off / z)^2``
  (box-bottom pixel error, road pitch, camera height, corner offset), ``H`` the camera height.
- **triangulation** of a static object's point tracks over the ego motion (known odometry): each
  track's static point, at the distance its parallax gives, against where its ray enters the
  (current) box. Only for tracklets whose tracks triangulate as static against the detector +
  ground depth (:func:`~ba_perception.core.oba.motion_state.static_evidence`); its uncertainty is
  the triangulation's own, from the observed parallax and the point-track noise.

The detector's depth error is treated as one unknown scale per tracklet (``log s``, prior
``N(0, detector_bias_log_std^2)``); each cue measures it with a calibrated variance and the
information-weighted mean is the fused scale. The detector's priors of every frame are then moved
along their viewing rays by ``s`` (and their along-ray std scaled by ``s``) before the BA. The cue
with the largest information is reported as the one that dominated the depth.

Everything is batched over tracklets, frames and point tracks; the only Python loop packs the
2D boxes' bottom rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from ba_perception.core.oba.motion_state import static_evidence

if TYPE_CHECKING:
    from ba_perception.core.oba.refine import RefineBatch
    from ba_perception.core.oba.refine_config import RefineConfig
    from ba_perception.core.oba.solver import OBAProblem

DEPTH_CUES = ("detector", "ground", "triangulation", "all")
CUE_NAMES = ("detector", "ground", "triangulation")  # index of :attr:`CueResult.dominant`
_BOTTOM_SIGNS = (  # the box's four bottom corners in the object frame (x forward, y left, z up)
    (1.0, 1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, -1.0), (1.0, -1.0, -1.0))


class DepthCueError(ValueError):
    """An invalid depth-cue setting, or a problem without the detector priors that the cues correct."""


@dataclass(frozen=True)
class DepthCueConfig:
    """Uncertainties of the depth cues (what each cue's variance is made of).

    Attributes:
        detector_bias_log_std: prior std of the detector's per-tracklet depth bias, log scale
            (its frame-to-frame correlated error on an unknown camera).
        ground_bottom_std_px: error of the 2D box's bottom row, pixels.
        ground_bottom_correlation: share of that error's variance that persists over a tracklet's
            frames (the rest averages over the frames).
        road_pitch_std_rad: error of the road plane's slope under the object (flat-road model), radians.
        camera_height_std_m: error of the camera's height above the road, metres.
        ground_offset_std_m: error of the nearest bottom corner's offset from the centre (the
            detector's yaw and size), metres.
        image_margin_px: a box whose bottom is within this of the image's bottom edge (estimated
            as ``2 c_y``) is truncated: no ground cue.
        triangulation_model_log_std: floor of the triangulation cue's std, log scale (tracked points
            off the box's surface).
        min_tracks: tracks with a usable triangulation a tracklet needs for the triangulation cue.
    """

    detector_bias_log_std: float = 0.15
    ground_bottom_std_px: float = 2.0
    ground_bottom_correlation: float = 0.5
    road_pitch_std_rad: float = 0.003
    camera_height_std_m: float = 0.05
    ground_offset_std_m: float = 0.3
    image_margin_px: float = 2.0
    triangulation_model_log_std: float = 0.03
    min_tracks: int = 4

    def __post_init__(self) -> None:
        stds = (self.detector_bias_log_std, self.ground_bottom_std_px, self.road_pitch_std_rad,
                self.camera_height_std_m, self.ground_offset_std_m, self.triangulation_model_log_std)
        if not all(s > 0 for s in stds) or not 0 <= self.ground_bottom_correlation <= 1:
            raise DepthCueError(f"depth cue stds must be > 0 and ground_bottom_correlation in [0, 1]; got {self}")


@dataclass
class CueResult:
    """Per tracklet ``(B,)``: each cue's estimate of the detector's log depth scale and the fusion.

    Attributes:
        ground_log_scale, ground_log_std: the ground cue (NaN / inf where it has none).
        tri_log_scale, tri_log_std: the triangulation cue (NaN / inf where it has none).
        log_scale, log_std: the fused scale (0 / ``detector_bias_log_std`` with no cue).
        dominant: index into :data:`CUE_NAMES` of the cue with the most information.
    """

    ground_log_scale: torch.Tensor
    ground_log_std: torch.Tensor
    tri_log_scale: torch.Tensor
    tri_log_std: torch.Tensor
    log_scale: torch.Tensor
    log_std: torch.Tensor
    dominant: torch.Tensor

    def names(self) -> list[str]:
        """The dominant cue's name per tracklet."""
        return [CUE_NAMES[i] for i in self.dominant.tolist()]


def _prior_pose(problem: OBAProblem) -> torch.Tensor:
    """``(B, F, 4, 4)`` detector box poses in odom (``prior_T_odom_obj``), which every cue needs."""
    if problem.prior_T_odom_obj is None:
        raise DepthCueError("depth cues need the problem's detector priors (prior_T_odom_obj)")
    return problem.prior_T_odom_obj


def _camera_depth(T_cam_odom: torch.Tensor, x_odom: torch.Tensor) -> torch.Tensor:
    """Camera-frame ``z`` of odom points ``(..., 3)`` (``T_cam_odom`` ``(..., 4, 4)``)."""
    return (T_cam_odom[..., 2, :3] * x_odom).sum(-1) + T_cam_odom[..., 2, 3]


def ground_cue(problem: OBAProblem, box_bottom_v: torch.Tensor, size_lwh: torch.Tensor,
               cfg: DepthCueConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground-contact depth of every prior box, per frame.

    Args:
        problem: the batch (``prior_T_odom_obj``, ``T_cam_odom``, ``K``, ``frame_mask``).
        box_bottom_v: ``(B, F)`` bottom row of each frame's 2D box, pixels.
        size_lwh: ``(B, 3)`` box sizes, metres.
        cfg: the cue's uncertainties.

    Returns:
        ``(log_ratio, var_indep, var_corr)``, each ``(B, F)``: ``log(z_ground / z_detector)`` of the
        box centre, and the variance of its frame-independent (box-bottom pixel) and persistent
        (road model, corner offset, and the correlated share of the pixel error) parts; NaN / inf
        where the frame has no ground cue (padding, truncated box, ray above the horizon).
    """
    dt = torch.float64
    T_co = problem.T_cam_odom.to(dt)
    T_oc = torch.linalg.inv(T_co)
    K = problem.K.to(dt)
    prior = _prior_pose(problem)
    R, t = prior[..., :3, :3].to(dt), prior[..., :3, 3].to(dt)
    signs = torch.tensor(_BOTTOM_SIGNS, dtype=dt, device=t.device)
    local = 0.5 * signs * size_lwh.to(dt)[:, None, :]  # (B, 4, 3)
    off = torch.einsum("bfij,bkj->bfki", R, local)  # (B, F, 4, 3) bottom corners - centre, odom
    corners = t[..., None, :] + off
    c_cam = torch.einsum("bfij,bfkj->bfki", T_co[..., :3, :3], corners) + T_co[..., None, :3, 3]
    uvw = torch.einsum("bij,bfkj->bfki", K, c_cam)
    v = uvw[..., 1] / uvw[..., 2].clamp(min=1e-6)
    v = torch.where(c_cam[..., 2] > 0.1, v, torch.full_like(v, -torch.inf))
    near = v.argmax(-1)  # (B, F): the bottom corner lowest in the image touches the road there
    take = lambda x: torch.gather(x, 2, near[..., None, None].expand(*near.shape, 1, x.shape[-1]))[:, :, 0]  # noqa: E731
    u_near = take(uvw[..., :1] / uvw[..., 2:].clamp(min=1e-6))[..., 0]
    off_near = take(off)
    vb = box_bottom_v.to(dt)
    pix = torch.stack([u_near, vb, torch.ones_like(vb)], -1)
    ray = torch.einsum("bfij,bjk,bfk->bfi", T_oc[..., :3, :3], torch.linalg.inv(K), pix)  # odom direction
    C = T_oc[..., :3, 3]
    H = C[..., 2]  # camera height above the road (odom z = 0)
    lam = -H / torch.where(ray[..., 2] < -1e-9, ray[..., 2], torch.full_like(H, -1e-9))
    centre = C + lam[..., None] * ray - off_near
    z_g = _camera_depth(T_co, centre)
    z_d = _camera_depth(T_co, t)
    f = K[:, 1, 1, None]
    ok = (problem.frame_mask & (ray[..., 2] < -1e-9) & (H > 0.1) & (z_g > 0.5) & (z_d > 0.1)
          & (vb < 2 * K[:, 1, 2, None] - cfg.image_margin_px) & torch.isfinite(vb))
    z = z_g.clamp(min=0.5)
    var_pix = (z * cfg.ground_bottom_std_px / (f * H.clamp(min=0.1))) ** 2
    var_model = ((z * cfg.road_pitch_std_rad / H.clamp(min=0.1)) ** 2 + (cfg.camera_height_std_m / H.clamp(min=0.1)) ** 2
                 + (cfg.ground_offset_std_m / z) ** 2)
    rho = cfg.ground_bottom_correlation
    log_ratio = torch.where(ok, torch.log(z_g.clamp(min=1e-3) / z_d.clamp(min=1e-3)), torch.full_like(z, torch.nan))
    inf = torch.full_like(z, torch.inf)
    return log_ratio, torch.where(ok, (1 - rho) * var_pix, inf), torch.where(ok, rho * var_pix + var_model, inf)


def _scale_onto_box(X: torch.Tensor, C: torch.Tensor, R: torch.Tensor, centre: torch.Tensor,
                    size_lwh: torch.Tensor) -> torch.Tensor:
    """The largest ``s`` at which the point ``X`` lies in the box moved to ``C + s (centre - C)`` (NaN: none).

    In the box frame the point is ``a - s b`` with ``a = R^T (X - C)``, ``b = R^T (centre - C)``;
    it is inside while ``|a_i - s b_i| <= h_i`` for every axis (a slab test in ``s``). The largest
    such ``s`` puts the point on the box's near surface, where a visible tracked point lies.
    """
    a = torch.einsum("...ji,...j->...i", R, X - C)
    b = torch.einsum("...ji,...j->...i", R, centre - C)
    b = torch.where(b.abs() < 1e-9, torch.full_like(b, 1e-9), b)
    h = 0.5 * size_lwh
    s1, s2 = (a - h) / b, (a + h) / b
    lo, hi = torch.minimum(s1, s2).amax(-1), torch.maximum(s1, s2).amin(-1)
    return torch.where((lo <= hi) & (hi > 0), hi, torch.full_like(hi, torch.nan))


def triangulation_cue(problem: OBAProblem, size_lwh: torch.Tensor, noise_px: float, cfg: DepthCueConfig,
                      min_observations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Log depth scale of each prior box that its point tracks give as static points.

    Each track triangulates to the odom point minimising its squared ray distances weighted by
    ``(f / z)^2`` (about its squared pixel errors; closed form), as in
    :func:`~ba_perception.core.oba.motion_state.static_evidence`. Per track, the scale of the prior
    box's distance (newest observation's frame, box size fixed) that puts the point on the box's
    near surface is the box's depth scale; the median over tracks is the cue.

    Args:
        problem: the batch with its point tracks and (already corrected) priors.
        size_lwh: ``(B, 3)`` box sizes, metres.
        noise_px: point-track noise, pixels.
        cfg: the cue's settings.
        min_observations: observations a track needs.

    Returns:
        ``(log_scale, log_std)`` ``(B,)`` relative to the problem's priors (NaN / inf: no cue).
    """
    dt = torch.float64
    B, F, K = problem.shape
    T_co = problem.T_cam_odom.to(dt)
    T_oc = torch.linalg.inv(T_co)
    Km = problem.K.to(dt)
    mask = problem.obs_mask & problem.frame_mask[..., None] & torch.isfinite(problem.obs_uv).all(-1)
    uv = torch.where(mask[..., None], problem.obs_uv.to(dt), torch.zeros((), dtype=dt, device=mask.device))
    C = T_oc[..., :3, 3]
    origin = C[:, :1]  # keeps the normal equations well scaled
    rays = torch.einsum("bfij,bjk,bfnk->bfni", T_oc[..., :3, :3], torch.linalg.inv(Km),
                        torch.cat([uv, torch.ones_like(uv[..., :1])], -1))
    rays = rays / rays.norm(dim=-1, keepdim=True)
    prior = _prior_pose(problem)
    t = prior[..., :3, 3].to(dt)
    z = _camera_depth(T_co, t).clamp(min=1.0)
    w = (Km[:, 0, 0, None] / z)[..., None] ** 2 * mask.to(dt)  # (B, F, K)
    eye = torch.eye(3, dtype=dt, device=mask.device)
    proj = eye - rays[..., :, None] * rays[..., None, :]
    A = (w[..., None, None] * proj).sum(1)  # (B, K, 3, 3)
    b = (w[..., None, None] * proj @ (C - origin)[:, :, None, :, None]).sum(1)[..., 0]
    trace = A.diagonal(dim1=-2, dim2=-1).sum(-1) + 1e-12
    A_inv = torch.linalg.inv(A + 1e-9 * trace[..., None, None] * eye)
    X = (A_inv @ b[..., None])[..., 0] + origin  # (B, K, 3) odom
    last = (mask.to(dt) * torch.arange(F, dtype=dt, device=mask.device)[:, None]).argmax(1)  # (B, K)
    take = lambda x: torch.gather(x, 1, last.view(B, 1, K, *([1] * (x.dim() - 3))).expand(B, 1, K, *x.shape[3:]))[:, 0]  # noqa: E731
    C_l = take(C[:, :, None, :].expand(B, F, K, 3))
    R_l = take(prior[..., :3, :3].to(dt)[:, :, None].expand(B, F, K, 3, 3))
    t_l = take(t[:, :, None, :].expand(B, F, K, 3))
    dvec = X - C_l
    dist = dvec.norm(dim=-1).clamp(min=1e-6)
    u = dvec / dist[..., None]
    scale = _scale_onto_box(X, C_l, R_l, t_l, size_lwh.to(dt)[:, None, :].expand(B, K, 3))
    var_dist = torch.einsum("bki,bkij,bkj->bk", u, A_inv, u) * noise_px**2  # along the ray, m^2
    ok = (mask.sum(1) >= min_observations) & torch.isfinite(scale) & (_camera_depth(take(T_co[:, :, None].expand(B, F, K, 4, 4)), X) > 0)
    nan = torch.full_like(dist, torch.nan)
    q = torch.where(ok, torch.log(scale.clamp(min=1e-3)), nan)
    s = torch.where(ok, var_dist.sqrt() / dist, nan)
    n = ok.sum(1)
    med = lambda x: torch.nanmedian(x, dim=1).values  # noqa: E731
    enough = n >= cfg.min_tracks
    log_scale = torch.where(enough, med(q), torch.full_like(n, torch.nan, dtype=dt))
    log_std = torch.where(enough, torch.sqrt(med(s) ** 2 + cfg.triangulation_model_log_std**2),
                          torch.full_like(n, torch.inf, dtype=dt))
    return log_scale, log_std


def scale_priors(problem: OBAProblem, log_scale: torch.Tensor) -> OBAProblem:
    """The problem with every prior box moved along its viewing ray to ``s`` times its distance.

    The along-ray std scales by ``s`` too: with ``A = I + (s - 1) r r^T`` the prior's covariance
    becomes ``A Sigma A^T``, i.e. its square-root information ``L A^{-1}``.
    """
    prior = _prior_pose(problem)
    if problem.prior_sqrt_info is None:
        raise DepthCueError("depth cues need the problem's prior square-root information (prior_sqrt_info)")
    dt = prior.dtype
    s = torch.exp(log_scale).to(dt)[:, None]  # (B, 1)
    T_oc = torch.linalg.inv(problem.T_cam_odom)
    C = T_oc[..., :3, 3]
    T = prior.clone()
    d = T[..., :3, 3] - C
    T[..., :3, 3] = C + s[..., None] * d
    r = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    A_inv = torch.eye(3, dtype=dt, device=r.device) + (1 / s - 1)[..., None, None] * (r[..., :, None] * r[..., None, :])
    L = problem.prior_sqrt_info.clone()
    L[..., :, :3] = L[..., :, :3] @ A_inv
    return replace(problem, prior_T_odom_obj=T, prior_sqrt_info=L)


def _box_bottoms(batch: RefineBatch, F: int, device: torch.device) -> torch.Tensor:
    """``(B, F)`` bottom rows of the packed frames' 2D boxes (NaN padding)."""
    rows = [[float(t.frames[i].observation.box_2d[3]) for i in ii] + [float("nan")] * (F - len(ii))
            for t, ii in zip(batch.tracks, batch.frame_index)]
    return torch.tensor(rows, dtype=torch.float64, device=device).reshape(len(rows), F)


def apply_depth_cues(batch: RefineBatch, config: RefineConfig) -> tuple[RefineBatch, CueResult | None]:
    """The batch with its detector priors corrected by the fused depth cues (``config.depth_cues``).

    ``detector``: unchanged (None). ``ground``: detector + ground contact. ``triangulation``:
    detector + triangulation of the tracklets whose tracks are static against the detector's depth.
    ``all``: detector + ground, then triangulation of those static against that fused depth.

    Args:
        batch: the packed problems over every kept frame (:func:`~ba_perception.core.oba.refine.build_batch`).
        config: the refinement settings (``depth_cues``, ``cues``, the point-track noise).

    Returns:
        The corrected batch (priors, and the initial poses and points where they were the priors)
        and the per-tracklet :class:`CueResult`.
    """
    mode, cfg, p = config.depth_cues, config.cues, batch.problem
    if mode == "detector" or p is None:
        return batch, None
    dt = torch.float64
    B, F, _ = p.shape
    sizes = torch.as_tensor(batch.sizes, dtype=dt, device=p.obs_uv.device)
    w_d = torch.full((B,), cfg.detector_bias_log_std ** -2, dtype=dt, device=sizes.device)
    nan, inf = torch.full_like(w_d, torch.nan), torch.full_like(w_d, torch.inf)
    m_g, s_g = nan, inf
    if mode in ("ground", "all"):
        r, v_i, v_c = ground_cue(p, _box_bottoms(batch, F, sizes.device), sizes, cfg)
        ok = torch.isfinite(r)
        n = ok.sum(1)
        wf = torch.where(ok, 1 / (v_i + v_c), torch.zeros_like(r))
        m_g = torch.where(n > 0, (wf * torch.nan_to_num(r)).sum(1) / wf.sum(1).clamp(min=1e-30), nan)
        mean = lambda x: torch.where(ok, x, torch.zeros_like(x)).sum(1) / n.clamp(min=1)  # noqa: E731
        s_g = torch.where(n > 0, torch.sqrt(mean(v_i) / n.clamp(min=1) + mean(v_c)), inf)
    w_g = torch.nan_to_num(s_g ** -2, nan=0.0)
    log_s = (w_g * torch.nan_to_num(m_g)) / (w_d + w_g)
    m_t, s_t = nan, inf
    if mode in ("triangulation", "all"):
        pg = scale_priors(p, log_s)
        noise = config.track_noise_px()
        decided, static = static_evidence(pg).static(noise, config.static_depth_log_std, config.min_points_for_selection)
        q, s = triangulation_cue(pg, sizes, noise, cfg)
        use = decided & static & torch.isfinite(q)
        m_t, s_t = torch.where(use, log_s + q, nan), torch.where(use, s, inf)
    w_t = torch.nan_to_num(s_t ** -2, nan=0.0)
    info = w_d + w_g + w_t
    log_s = (w_g * torch.nan_to_num(m_g) + w_t * torch.nan_to_num(m_t)) / info
    res = CueResult(m_g, s_g, m_t, s_t, log_s, info.rsqrt(), torch.stack([w_d, w_g, w_t], -1).argmax(-1))
    q_all = scale_priors(p, log_s)
    init = batch.init
    if init is not None:  # initial poses that were the detector's boxes move with them (warm starts stay)
        same = (init.t_odom_obj - _prior_pose(p)[..., :3, 3]).abs().amax(-1) < 1e-6
        t0 = torch.where(same[..., None], _prior_pose(q_all)[..., :3, 3], init.t_odom_obj)
        k = torch.exp(log_s).to(init.points_obj.dtype)[:, None, None]
        pts = torch.where(same.all(1)[:, None, None], init.points_obj * k, init.points_obj)
        init = replace(init, t_odom_obj=t0, points_obj=pts)
    return replace(batch, problem=q_all, init=init), res
