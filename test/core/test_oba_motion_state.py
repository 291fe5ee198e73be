"""Tests of the static/moving test: static triangulation of point tracks against the detector's depth."""

from __future__ import annotations

import math

import pytest
import torch

from ba_perception.core.geometry import invert_pose, make_pose, rot_z
from ba_perception.core.oba.motion_state import static_evidence
from ba_perception.core.oba.solver import OBAProblem
from ba_perception.data.oba_problems import FOCAL_PX, box_surface_points, camera_poses, make_batch

NOISE_PX = 0.5  # make_batch scenes
KLT_NOISE_PX = 0.1  # the default: KLT on the world's images


def _scene(ego_mps: float, start_xy: tuple[float, float], velocity_xy: tuple[float, float], F: int = 8,
           K: int = 32, noise_px: float = 0.0, seed: int = 0) -> OBAProblem:
    """One car seen by a camera driving straight along odom x; detector priors at the true centres."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    T_odom_cam = camera_poses(F, 0.1, ego_mps, 0.0)[None]
    T_cam_odom = invert_pose(T_odom_cam)
    size = torch.tensor([[4.5, 1.8, 1.5]], dtype=dt)
    tt = torch.arange(F, dtype=dt) * 0.1
    centre = torch.tensor([*start_xy, 0.75], dtype=dt) + tt[:, None] * torch.tensor([*velocity_xy, 0.0], dtype=dt)
    X = (box_surface_points(size, K, g)[:, None] + centre[None, :, None])  # (1, F, K, 3), yaw 0
    Xc = torch.einsum("bfij,bfkj->bfki", T_cam_odom[..., :3, :3], X) + T_cam_odom[:, :, None, :3, 3]
    Kmat = torch.tensor([[[FOCAL_PX, 0, 640.0], [0, FOCAL_PX, 360.0], [0, 0, 1]]], dtype=dt)
    uv = Xc[..., :2] / Xc[..., 2:3] * FOCAL_PX + Kmat[0, :2, 2]
    uv = uv + noise_px * torch.randn(uv.shape, generator=g, dtype=dt)
    prior = make_pose(rot_z(torch.zeros(1, F, dtype=dt)), centre[None])
    fm = torch.ones(1, F, dtype=torch.bool)
    return OBAProblem(obs_uv=uv, obs_mask=Xc[..., 2] > 0.5, T_cam_odom=T_cam_odom, K=Kmat, frame_mask=fm,
                      prior_T_odom_obj=prior, prior_mask=fm.clone())


def _static(p: OBAProblem, noise_px: float = KLT_NOISE_PX) -> bool:
    decided, static = static_evidence(p).static(noise_px, 0.15, 4)
    assert bool(decided[0])
    return bool(static[0])


def test_a_static_car_triangulates_exactly_at_its_depth():
    ev = static_evidence(_scene(10.0, (25.0, 4.0), (0.0, 0.0)))
    assert ev.residual_px[0] < 0.02  # exact tracks: only the weak depth prior's pull remains
    # points on every face of a 4.5 m car 18 m from the newest camera: within half a length of its centre
    assert abs(ev.depth_log_ratio[0]) < math.log(1 + 2.25 / 18.0)
    assert ev.depth_log_std[0] < 0.05 and ev.num_tracks[0] == 32  # 7 m of travel: depth well determined
    assert static_evidence(_scene(0.0, (25.0, 4.0), (0.0, 0.0))).depth_log_std[0] > 1.0  # no travel: none


@pytest.mark.parametrize(
    ("ego_mps", "velocity_xy", "static", "why"),
    [
        (10.0, (0.0, 0.0), True, "parked, camera driving past"),
        (0.0, (0.0, 0.0), True, "parked, camera stopped: no parallax, nothing moves"),
        (10.0, (0.0, 3.0), False, "crossing: off the epipolar lines"),
        (0.0, (2.0, 0.0), False, "driving away while the camera stands: image motion without camera motion"),
        (10.0, (8.0, 0.0), False, "same direction: the static explanation is 5x too far"),
        (10.0, (-12.0, 0.0), False, "oncoming: the static explanation is 2.2x too near"),
    ],
)
def test_static_and_moving_cars_are_told_apart(ego_mps, velocity_xy, static, why):
    p = _scene(ego_mps, (25.0, 4.0), velocity_xy, noise_px=KLT_NOISE_PX, seed=1)
    assert _static(p) is static, why


def test_moving_along_the_epipolar_lines_is_caught_by_the_depth_not_the_residual():
    ev = static_evidence(_scene(10.0, (25.0, 4.0), (8.0, 0.0)))
    assert ev.residual_px[0] < 4 * KLT_NOISE_PX  # a static point explains the image motion ...
    assert ev.depth_log_ratio[0] > math.log(3.0)  # ... far behind the detected car


def test_noise_level_sets_the_residual_threshold():
    p = make_batch(12, 10, 32, seed=3, noise_px=NOISE_PX).problem
    truth = (make_batch(12, 10, 32, seed=3).speed_mps == 0).tolist()
    assert static_evidence(p).static(NOISE_PX, 0.15, 4)[1].tolist() == truth
    # tracks noisier than stated: every residual exceeds 4 x 0.1 px and nothing is static
    assert not static_evidence(p).static(0.1, 0.15, 4)[1].any()


def test_bad_tracks_are_isolated_per_problem():
    good = _scene(10.0, (25.0, 4.0), (0.0, 0.0), noise_px=NOISE_PX)
    bad = _scene(10.0, (25.0, 4.0), (0.0, 0.0), noise_px=NOISE_PX)
    bad.obs_uv[0, 3] = float("nan")  # one frame of NaN pixels: those observations drop out
    none = _scene(10.0, (25.0, 4.0), (0.0, 0.0))
    none.obs_mask[:] = False  # no tracks at all: undecided
    batch = OBAProblem(**{k: torch.cat([getattr(x, k) for x in (good, bad, none)]) if getattr(good, k) is not None else None
                          for k in good.__dict__})
    ev = static_evidence(batch)
    decided, static = ev.static(NOISE_PX, 0.15, 4)
    assert decided.tolist() == [True, True, False] and static.tolist() == [True, True, False]
    assert torch.isfinite(ev.residual_px[:2]).all() and math.isnan(float(ev.residual_px[2]))
    assert abs(float(ev.depth_log_ratio[1] - ev.depth_log_ratio[0])) < 0.05


def test_problems_without_detector_priors_are_refused():
    p = make_batch(2, 5, 8, with_prior=False).problem
    with pytest.raises(ValueError, match="priors"):
        static_evidence(p)
