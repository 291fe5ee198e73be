"""Depth cues: ground contact and triangulation correct a biased detector depth (core.oba.depth_cues)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import numpy as np
import torch

from ba_perception.core.geometry import box_corners, invert_pose, project_points
from ba_perception.core.oba.depth_cues import DepthCueConfig, ground_cue, scale_priors, triangulation_cue
from ba_perception.core.oba.refine import RefineConfig, refine_tracklets
from ba_perception.core.oba.tracklets import ObjectTrack, Observation, TrackletFrame
from ba_perception.data.oba_problems import make_batch


def _exact(B=12, F=10, K=24, seed=0, moving_fraction=0.0):
    """Synthetic problems whose priors are the true boxes, with the true 2D box bottoms."""
    sb = make_batch(B, F, K, seed=seed, moving_fraction=moving_fraction)
    p = replace(sb.problem, prior_T_odom_obj=torch.cat([torch.cat([sb.truth.R_odom_obj, sb.truth.t_odom_obj[..., None]], -1),
                                                          sb.problem.prior_T_odom_obj[..., 3:, :]], -2))
    T_cam_obj = p.T_cam_odom @ p.prior_T_odom_obj
    uv = project_points(box_corners(T_cam_obj[..., :3, :3], T_cam_obj[..., :3, 3], sb.size_lwh[:, None].expand(B, F, 3)),
                        p.K[:, None])
    # the world has no occlusion model: keep each point's observations where its face looks at the camera
    h = 0.5 * sb.size_lwh[:, None, :]
    on = (sb.truth.points_obj.abs() - h).abs() < 1e-9  # (B, K, 3) the face the point lies on
    normal = torch.where(on, torch.sign(sb.truth.points_obj), torch.zeros_like(h))
    C_obj = torch.einsum("bfji,bfj->bfi", sb.truth.R_odom_obj, invert_pose(p.T_cam_odom)[..., :3, 3] - sb.truth.t_odom_obj)
    facing = torch.einsum("bkj,bfkj->bfk", normal, C_obj[:, :, None, :] - sb.truth.points_obj[:, None]) > 0
    return sb, replace(p, obs_mask=p.obs_mask & facing), uv[..., 1].amax(-1), T_cam_obj


def test_ground_cue_recovers_the_depth_of_a_box_on_a_flat_road_and_its_std_grows_with_range():
    sb, p, bottom, _ = _exact()
    cfg = DepthCueConfig()
    for bias in (1.0, 0.85, 1.15):
        r, v_i, v_c = ground_cue(scale_priors(p, torch.full((p.shape[0],), math.log(bias), dtype=torch.float64)),
                                 bottom, sb.size_lwh, cfg)
        ok = torch.isfinite(r)
        assert ok.float().mean() > 0.75  # the rest: boxes cut by the image bottom
        assert torch.allclose(r[ok], torch.full_like(r[ok], -math.log(bias)), atol=0.01)  # ground depth = true depth
    z = (p.T_cam_odom @ p.prior_T_odom_obj)[..., 2, 3]
    sd = (v_i + v_c).sqrt() * z  # metres
    ok = torch.isfinite(sd)
    order = torch.argsort(z[ok])
    s = sd[ok][order]
    assert s[-len(s) // 4:].median() > 2 * s[: len(s) // 4].median()  # far boxes: a larger std
    assert bool(torch.all(s[1:] >= s[:-1] - 1e-6 * s[1:]))  # it grows monotonically with range here


def test_triangulation_cue_on_static_tracks_with_known_ego_motion():
    sb, p, _, _ = _exact(moving_fraction=0.0)
    for bias in (0.85, 1.15):
        q, s = triangulation_cue(scale_priors(p, torch.full((p.shape[0],), math.log(bias), dtype=torch.float64)),
                                 sb.size_lwh, 0.1, DepthCueConfig())
        assert torch.isfinite(q).all()
        assert torch.allclose(q, torch.full_like(q, -math.log(bias)), atol=0.03)  # the scale that undoes the bias
        assert (s < 0.1).all()


def _tracks(bias: float, seed: int, moving_fraction: float, B: int = 8):
    """Tracklets whose detector depth is the truth times ``bias`` and whose 2D boxes are the true ones."""
    sb, p, _, T_cam_obj = _exact(B=B, seed=seed, moving_fraction=moving_fraction)
    T_odom_cam = invert_pose(p.T_cam_odom)
    tracks = []
    for b in range(B):
        frames = deque()
        for f in range(p.shape[1]):
            Rc, c = T_cam_obj[b, f, :3, :3], T_cam_obj[b, f, :3, 3]
            uv_c = project_points(box_corners(Rc, c, sb.size_lwh[b]), p.K[b])
            ks = torch.nonzero(p.obs_mask[b, f])[:, 0]
            obs = Observation(box_2d=torch.cat([uv_c.amin(0), uv_c.amax(0)]).numpy(), center_cam=(bias * c).numpy(),
                              R_cam_obj=Rc.numpy(), size_lwh=sb.size_lwh[b].numpy(), depth_std=0.1 * bias * float(c.norm()),
                              lateral_std=0.15, yaw_std=0.1, sample_uv=p.obs_uv[b, f, ks].numpy(), sample_point_ids=ks.numpy(),
                              descriptors=np.zeros((len(ks), 0), np.float32))
            frames.append(TrackletFrame(int(round(float(p.stamps_s[b, f]) * 1e9)), obs, T_odom_cam[b, f].numpy(), p.K[b].numpy()))
        tracks.append(ObjectTrack(b + 1, "car", frames, np.ones(4) / 2))
    z_true = T_cam_obj[:, -1, 2, 3].numpy()
    return tracks, z_true, sb.speed_mps.numpy()


def test_fusion_removes_a_15_percent_bias_of_a_static_object_and_moving_ones_follow_the_ground():
    cfg = RefineConfig(correspondences="oracle", window=10, depth_cues="all")
    for bias in (0.85, 1.15):
        tracks, z, speed = _tracks(bias, seed=1, moving_fraction=0.5)
        boxes = refine_tracklets(tracks, cfg)
        zo = np.array([b.center_cam[2] for b in boxes])
        err = zo / z - 1
        parked, moving = speed == 0, speed > 0
        assert parked.any() and moving.any()
        assert np.abs(err[parked]).max() < 0.03, err[parked]  # from 15 %
        assert {b.depth_cue for b, m in zip(boxes, parked) if m} == {"triangulation"}
        assert {b.depth_cue for b, m in zip(boxes, moving) if m} == {"ground"}
        assert np.abs(err[moving]).max() < 0.06, err[moving]
        only_detector = refine_tracklets(_tracks(bias, seed=1, moving_fraction=0.5)[0], replace(cfg, depth_cues="detector"))
        e0 = np.array([b.center_cam[2] for b in only_detector]) / z - 1
        assert np.median(np.abs(e0)) > 0.1  # without the cues the bias stays


def test_static_test_calls_a_static_object_static_under_a_15_percent_depth_bias():
    for bias in (0.85, 1.15):
        tracks, _, speed = _tracks(bias, seed=2, moving_fraction=0.0)
        boxes = refine_tracklets(tracks, RefineConfig(correspondences="oracle", window=10, depth_cues="all"))
        assert all(b.refined and b.is_static for b in boxes), [(b.reason, b.is_static) for b in boxes]
