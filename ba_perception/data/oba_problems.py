"""Synthetic object-BA batches: box-shaped point clouds seen from a moving camera, with known truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ba_perception.core.geometry import R_BODY_OPTICAL, invert_pose, make_pose, rot_z, so3_exp
from ba_perception.core.oba.solver import OBAProblem, OBAState

if TYPE_CHECKING:
    from ba_perception.core.oba.tracklets import ObjectTrack

CAMERA_HEIGHT_M = 1.6
IMAGE_WH = (1280, 720)
FOCAL_PX = 720.0


@dataclass
class SyntheticBatch:
    """A batch with its ground truth.

    Attributes:
        problem: the padded problem (observations, cameras, optional priors).
        truth: true object poses per frame and points.
        init: a perturbed initial state (poses from the noisy prior when there is one).
        speed_mps: ``(B,)`` true object speeds (0 for static objects).
        size_lwh: ``(B, 3)`` true box sizes, metres.
    """

    problem: OBAProblem
    truth: OBAState
    init: OBAState
    speed_mps: torch.Tensor
    size_lwh: torch.Tensor


def camera_poses(F: int, dt_s: float, speed_mps: float, yaw_rate: float, dtype=torch.float64) -> torch.Tensor:
    """``(F, 4, 4)`` ``T_odom_cam`` of a forward camera on a car driving an arc from the odom origin."""
    tt = torch.arange(F, dtype=dtype) * dt_s
    yaw = yaw_rate * tt
    if abs(yaw_rate) > 1e-9:
        x = speed_mps / yaw_rate * torch.sin(yaw)
        y = speed_mps / yaw_rate * (1 - torch.cos(yaw))
    else:
        x, y = speed_mps * tt, torch.zeros_like(tt)
    pos = torch.stack([x, y, torch.full_like(x, CAMERA_HEIGHT_M)], -1)
    R = rot_z(yaw) @ R_BODY_OPTICAL.to(dtype)
    return make_pose(R, pos)


def box_surface_points(size_lwh: torch.Tensor, K: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, K, 3)`` points uniformly on the faces of boxes ``(B, 3)`` (object frame, metres)."""
    B = size_lwh.shape[0]
    u = torch.rand(B, K, 3, generator=generator, dtype=size_lwh.dtype) - 0.5
    face_axis = torch.randint(0, 3, (B, K), generator=generator)
    sign = torch.randint(0, 2, (B, K), generator=generator).to(size_lwh.dtype) - 0.5
    u.scatter_(2, face_axis[..., None], sign[..., None])
    return u * size_lwh[:, None, :]


def make_batch(
    B: int,
    F: int,
    K: int,
    seed: int = 0,
    noise_px: float = 0.0,
    moving_fraction: float = 0.5,
    with_prior: bool = True,
    fixed_frames: tuple[int, ...] = (),
    init_pose_noise: tuple[float, float] = (0.3, 0.05),
    init_point_noise_m: float = 0.1,
    outlier_fraction: float = 0.0,
    dt_s: float = 0.1,
    dtype=torch.float64,
) -> SyntheticBatch:
    """Random object-BA problems with known solution.

    Each problem: an ego camera driving forward (8-12 m/s, small yaw rate), one car-sized box
    8-25 m ahead and up to 5 m to the side, static or moving at 2-10 m/s along its heading with
    constant velocity, ``K`` points on its surface, pixel noise ``noise_px``. With ``with_prior``
    the detector prior is the truth plus noise (10% depth along the ray, 0.15 m across, 0.1 rad
    yaw) with matching square-root information; the initial poses are the noisy prior.

    Returns:
        A :class:`SyntheticBatch` in ``dtype`` on the CPU.
    """
    g = torch.Generator().manual_seed(seed)

    def U(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    fx = FOCAL_PX
    Kmat = torch.tensor([[fx, 0, IMAGE_WH[0] / 2], [0, fx, IMAGE_WH[1] / 2], [0, 0, 1]], dtype=dtype).expand(B, 3, 3).clone()
    ego_speed, ego_yaw_rate = U(8, 12, B), U(-0.15, 0.15, B)
    T_odom_cam = torch.stack([camera_poses(F, dt_s, float(v), float(w), dtype) for v, w in zip(ego_speed, ego_yaw_rate)])
    T_cam_odom = invert_pose(T_odom_cam)
    size = torch.stack([U(3.5, 4.8, B), U(1.6, 2.0, B), U(1.4, 1.7, B)], -1)
    x0, y0, yaw0 = U(8, 25, B), U(-5, 5, B), U(-math.pi, math.pi, B)
    moving = torch.rand(B, generator=g) < moving_fraction
    speed = torch.where(moving, U(2, 10, B), torch.zeros(B, dtype=dtype))
    tt = torch.arange(F, dtype=dtype) * dt_s
    heading = torch.stack([torch.cos(yaw0), torch.sin(yaw0), torch.zeros_like(yaw0)], -1)
    centre0 = torch.stack([x0, y0, 0.5 * size[:, 2]], -1)
    t_true = centre0[:, None, :] + (speed[:, None, None] * tt[None, :, None]) * heading[:, None, :]
    R_true = rot_z(yaw0)[:, None].expand(B, F, 3, 3).clone()
    pts = box_surface_points(size, K, g)
    truth = OBAState(R_true, t_true, pts)

    X_odom = torch.einsum("bfij,bkj->bfki", R_true, pts) + t_true[:, :, None]
    X_cam = torch.einsum("bfij,bfkj->bfki", T_cam_odom[..., :3, :3], X_odom) + T_cam_odom[:, :, None, :3, 3]
    uv = X_cam[..., :2] / X_cam[..., 2:3] * fx + Kmat[:, None, None, :2, 2]
    uv = uv + noise_px * torch.randn(uv.shape, generator=g, dtype=dtype)
    if outlier_fraction > 0:
        out = torch.rand(uv.shape[:-1], generator=g) < outlier_fraction
        uv = torch.where(out[..., None], uv + U(-40, 40, *uv.shape), uv)
    in_img = (X_cam[..., 2] > 0.5) & (uv[..., 0] > 0) & (uv[..., 0] < IMAGE_WH[0]) & (uv[..., 1] > 0) & (uv[..., 1] < IMAGE_WH[1])
    frame_mask = torch.ones(B, F, dtype=torch.bool)
    stamps = tt[None].expand(B, F).clone()
    ff = torch.zeros(B, F, dtype=torch.bool)
    for f in fixed_frames:
        ff[:, f] = True

    prior_T = prior_L = None
    if with_prior:
        cam_centre = T_odom_cam[..., :3, 3]
        ray = t_true - cam_centre
        depth = ray.norm(dim=-1)
        ray = ray / depth[..., None]
        sd, sl, sy, srp = 0.1 * depth, torch.full_like(depth, 0.15), 0.1, 0.02
        # noise: along the ray with std sd, across with sl
        n = torch.randn(B, F, 3, generator=g, dtype=dtype)
        across = n - (n * ray).sum(-1, keepdim=True) * ray
        t_prior = t_true + ray * (sd * torch.randn(B, F, generator=g, dtype=dtype))[..., None] + sl[..., None] * across
        dyaw = sy * torch.randn(B, F, generator=g, dtype=dtype)
        R_prior = R_true @ rot_z(dyaw)
        prior_T = make_pose(R_prior, t_prior)
        prior_L = torch.zeros(B, F, 6, 6, dtype=dtype)
        eye = torch.eye(3, dtype=dtype)
        uu = ray[..., :, None] * ray[..., None, :]
        # sqrt of info = uu/sd + (I - uu)/sl (commuting projectors)
        prior_L[..., :3, :3] = uu / sd[..., None, None] + (eye - uu) / sl[..., None, None]
        prior_L[..., 3:, 3:] = torch.diag(torch.tensor([1 / srp, 1 / srp, 1 / sy], dtype=dtype))
        R_init, t_init = R_prior.clone(), t_prior.clone()
    else:
        sp, sr = init_pose_noise
        t_init = t_true + sp * torch.randn(B, F, 3, generator=g, dtype=dtype)
        R_init = R_true @ so3_exp(sr * torch.randn(B, F, 3, generator=g, dtype=dtype))
    if ff.any():
        R_init = torch.where(ff[..., None, None], R_true, R_init)
        t_init = torch.where(ff[..., None], t_true, t_init)
    p_init = pts + init_point_noise_m * torch.randn(B, K, 3, generator=g, dtype=dtype)
    problem = OBAProblem(
        obs_uv=uv, obs_mask=in_img, T_cam_odom=T_cam_odom, K=Kmat, frame_mask=frame_mask, stamps_s=stamps,
        prior_T_odom_obj=prior_T, prior_sqrt_info=prior_L, prior_mask=frame_mask.clone() if with_prior else None,
        fixed_frames=ff if ff.any() else None,
    )
    return SyntheticBatch(problem=problem, truth=truth, init=OBAState(R_init, t_init, p_init), speed_mps=speed, size_lwh=size)


def make_tracklets(batch: SyntheticBatch, descriptor_dim: int = 32, descriptor_noise: float = 0.05, seed: int = 0,
                   start_id: int = 1) -> list[ObjectTrack]:
    """One :class:`~ba_perception.core.oba.tracklets.ObjectTrack` per problem of a batch made with ``with_prior=True``.

    Each has detector boxes from the (noisy) prior, feature samples at the observed pixels with
    per-point descriptors (a fixed random unit vector per surface point plus noise), shuffled per
    frame, and the true point ids for the oracle path.
    """
    from collections import deque

    import numpy as np

    from ba_perception.core.geometry import box_corners, project_points
    from ba_perception.core.oba.tracklets import ObjectTrack, Observation, TrackletFrame

    p = batch.problem
    if p.prior_T_odom_obj is None:
        raise ValueError("make_tracklets needs a batch made with with_prior=True")
    stamps_s = p.stamps_s
    assert stamps_s is not None  # make_batch always sets the stamps
    B, F, K = p.shape
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(B, K, descriptor_dim, generator=g, dtype=torch.float64), dim=-1)
    T_odom_cam = invert_pose(p.T_cam_odom)
    T_cam_obj = p.T_cam_odom @ p.prior_T_odom_obj
    ray_depth = T_cam_obj[..., :3, 3].norm(dim=-1)
    tracks = []
    for b in range(B):
        frames: deque[TrackletFrame] = deque(maxlen=F)
        emb = torch.nn.functional.normalize(torch.randn(16, generator=g, dtype=torch.float64), dim=0).numpy()
        for f in range(F):
            m = p.obs_mask[b, f]
            ks = torch.nonzero(m)[:, 0]
            ks = ks[torch.randperm(len(ks), generator=g)]
            noise = descriptor_noise * torch.randn(len(ks), descriptor_dim, generator=g, dtype=torch.float64)
            d = torch.nn.functional.normalize(base[b, ks] + noise, dim=-1)
            Rc, c = T_cam_obj[b, f, :3, :3], T_cam_obj[b, f, :3, 3]
            uv_c = project_points(box_corners(Rc, c, batch.size_lwh[b]), p.K[b])
            box = torch.cat([uv_c.amin(0), uv_c.amax(0)]).numpy()
            obs = Observation(
                box_2d=box, center_cam=c.numpy(), R_cam_obj=Rc.numpy(), size_lwh=batch.size_lwh[b].numpy(),
                depth_std=0.1 * float(ray_depth[b, f]), lateral_std=0.15, yaw_std=0.1, score=0.9, class_label="car",
                embedding=emb, sample_uv=p.obs_uv[b, f, ks].numpy(), descriptors=d.numpy().astype(np.float32),
                sample_point_ids=ks.numpy(),
            )
            stamp_ns = int(round(float(stamps_s[b, f]) * 1e9))
            frames.append(TrackletFrame(stamp_ns, obs, T_odom_cam[b, f].numpy(), p.K[b].numpy()))
        tracks.append(ObjectTrack(start_id + b, "car", frames, emb))
    return tracks
