"""Tracklets -> one batched object-BA problem -> refined 3D boxes with velocity, covariance and motion state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ba_perception.core.geometry import ray_sqrt_information, unproject_pixels
from ba_perception.core.oba.correspondences import (
    PointTracks,
    descriptor_tracks,
    oracle_tracks,
)
from ba_perception.core.oba.cuda_graph import GraphSolveCache
from ba_perception.core.oba.depth_cues import apply_depth_cues
from ba_perception.core.oba.motion_state import static_evidence
from ba_perception.core.oba.refine_config import RefineConfig
from ba_perception.core.oba.refine_config import RefineError as RefineError  # re-exported: refine callers catch it from here
from ba_perception.core.oba.solver import (
    OBAProblem,
    OBAResult,
    OBAState,
    newest_frames,
    solve,
)
from ba_perception.core.oba.tracklets import ObjectTrack
from ba_perception.core.tracking.types import Detections


@dataclass
class RefinedBox:
    """One tracklet's refined box at its newest usable frame (``stamp_ns``).

    Attributes:
        tracklet_id, class_label, score, box_2d, embedding: carried from the newest detection.
        stamp_ns: capture time of the newest frame.
        refined: False when the tracklet was excluded (then ``reason`` says why and the box is
            the newest single-frame detection).
        reason: empty when refined.
        center_odom: ``(3,)`` box centre in odom, metres (NaN when ego-motion is unknown).
        R_odom_obj: ``(3, 3)`` orientation in odom; yaw_odom its yaw about +z, radians.
        center_cam: ``(3,)`` centre in the newest camera frame, metres.
        size_lwh: ``(3,)`` metres (median of the window's detections).
        velocity_odom: ``(3,)`` m/s (least-squares slope of the refined centres over the window).
        pose_covariance: ``(6, 6)`` of ``(x, y, z, rot_x, rot_y, rot_z)`` in odom (m^2, rad^2; small
            rotation vector in odom, i.e. roll/pitch/yaw perturbations), -1 diagonal if unknown.
        velocity_covariance: ``(3, 3)`` (m/s)^2, -1 diagonal if unknown.
        is_static: speed below ``static_speed_mps``.
        num_frames, num_points: frames in the window and point tracks used.
        cost, iterations: solver's final cost and LM iterations.
        depth_cue: the depth source that dominated the refined box's depth prior (``detector``,
            ``ground``, ``triangulation``); empty when unrefined or with ``depth_cues: detector``.
    """

    tracklet_id: int
    class_label: str
    score: float
    stamp_ns: int
    box_2d: np.ndarray
    embedding: np.ndarray
    refined: bool
    reason: str
    center_odom: np.ndarray
    R_odom_obj: np.ndarray
    yaw_odom: float
    center_cam: np.ndarray
    size_lwh: np.ndarray
    velocity_odom: np.ndarray
    pose_covariance: np.ndarray
    velocity_covariance: np.ndarray
    is_static: bool
    num_frames: int
    num_points: int = 0
    cost: float = float("nan")
    iterations: int = 0
    depth_cue: str = ""


@dataclass
class RefineBatch:
    """The packed problem and what is needed to read results back.

    Attributes:
        tracks: tracklets in batch order (only the included ones).
        problem, init: the solver's inputs.
        frame_index: per problem, the window positions (into ``track.frames``) of the packed frames.
        sizes: ``(B, 3)`` median detector sizes.
        excluded: ``(track, reason)`` for tracklets left out of the batch.
        initial_lambda: ``(B,)`` warm-start damping.
    """

    tracks: list[ObjectTrack]
    problem: OBAProblem | None
    init: OBAState | None
    frame_index: list[list[int]]
    sizes: np.ndarray
    excluded: list[tuple[ObjectTrack, str]]
    initial_lambda: torch.Tensor | None = None

    def inputs(self) -> tuple[OBAProblem, OBAState]:
        """The solver's inputs ``(problem, init)`` of a batch with problems (both set together by :func:`build_batch`)."""
        if self.problem is None or self.init is None:
            raise ValueError("the batch has no problem to solve (every tracklet was excluded)")
        return self.problem, self.init


def _project_so3(R: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(R)
    D = np.ones(R.shape[:-1])
    D[..., -1] = np.sign(np.linalg.det(U @ Vt))
    return (U * D[..., None, :]) @ Vt


def _usable_frames(track: ObjectTrack, config: RefineConfig) -> tuple[list[int], str]:
    """Window positions usable for BA, or ``([], reason)``."""
    frames = list(track.frames)
    if len(frames) < 2:
        return [], "1 frame"
    ego = [i for i, fr in enumerate(frames) if fr.T_odom_cam is not None and np.isfinite(fr.T_odom_cam).all()]
    if len(ego) < 2:
        return [], "missing ego-motion"
    finite = []
    for i in ego:
        o = frames[i].observation
        vals = np.concatenate([np.ravel(o.box_2d), np.ravel(o.center_cam), np.ravel(o.R_cam_obj), np.ravel(o.size_lwh),
                               [o.depth_std, o.lateral_std, o.yaw_std]]).astype(np.float64)
        if np.isfinite(vals).all():
            finite.append(i)
    if len(finite) < 2:
        return [], "NaN observations"
    front = [i for i in finite if frames[i].observation.center_cam[2] > config.min_depth_m]
    if len(front) < 2:
        return [], "points behind camera"
    centres = np.stack([frames[i].T_odom_cam[:3, 3] for i in front])
    if np.linalg.norm(centres - centres[0], axis=1).max() < config.min_baseline_m:
        return [], "zero baseline"
    return front, ""


@dataclass
class _Packed:
    """The included tracklets' windows as padded host arrays (``B`` problems, ``F`` frames, ``N`` samples)."""

    T_odom_cam: np.ndarray  # (B,F,4,4)
    K: np.ndarray  # (B,3,3) intrinsics of the newest frame
    frame_mask: np.ndarray  # (B,F)
    stamps_s: np.ndarray  # (B,F) seconds since each window's first frame
    center_cam: np.ndarray  # (B,F,3) detector box centres
    R_cam_obj: np.ndarray  # (B,F,3,3)
    stds: np.ndarray  # (B,F,3) depth, lateral, yaw std
    sizes: np.ndarray  # (B,3) median detector size
    sample_uv: np.ndarray  # (B,F,N,2), NaN where absent
    sample_valid: np.ndarray  # (B,F,N)
    descriptors: np.ndarray  # (B,F,N,D)
    sample_ids: np.ndarray  # (B,F,N) oracle surface point ids, -1 unknown


def _pack(tracks: list[ObjectTrack], windows: list[list[int]]) -> _Packed:
    """Copy every window's observations into padded arrays (packing only; everything after it is batched)."""
    B, F = len(tracks), max(len(w) for w in windows)
    obs = [[t.frames[i].observation for i in w] for t, w in zip(tracks, windows)]
    N = max([len(o.sample_uv) for row in obs for o in row] + [1])
    D = max([o.descriptors.shape[-1] if o.descriptors.ndim == 2 else 0 for row in obs for o in row] + [1])
    pk = _Packed(np.tile(np.eye(4), (B, F, 1, 1)), np.zeros((B, 3, 3)), np.zeros((B, F), bool), np.zeros((B, F)),
                 np.zeros((B, F, 3)), np.tile(np.eye(3), (B, F, 1, 1)), np.ones((B, F, 3)), np.zeros((B, 3)),
                 np.full((B, F, N, 2), np.nan), np.zeros((B, F, N), bool), np.zeros((B, F, N, D), np.float32),
                 np.full((B, F, N), -1, np.int64))
    pk.center_cam[..., 2] = 10.0
    for b, (t, w) in enumerate(zip(tracks, windows)):
        frames = list(t.frames)
        t0 = frames[w[0]].stamp_ns
        pk.K[b] = frames[w[-1]].K
        pk.sizes[b] = np.median(np.stack([frames[i].observation.size_lwh for i in w]), axis=0)
        for f, i in enumerate(w):
            fr, o = frames[i], frames[i].observation
            pk.T_odom_cam[b, f], pk.frame_mask[b, f] = fr.T_odom_cam, True
            pk.stamps_s[b, f] = (fr.stamp_ns - t0) * 1e-9
            pk.center_cam[b, f], pk.R_cam_obj[b, f] = o.center_cam, o.R_cam_obj
            pk.stds[b, f] = (o.depth_std, o.lateral_std, o.yaw_std)
            n = len(o.sample_uv)
            if n:
                pk.sample_uv[b, f, :n] = o.sample_uv
                pk.sample_valid[b, f, :n] = True
                if o.descriptors.ndim == 2 and o.descriptors.shape[0] == n and o.descriptors.shape[1] == D:
                    pk.descriptors[b, f, :n] = o.descriptors
                if o.sample_point_ids is not None and len(o.sample_point_ids) == n:
                    pk.sample_ids[b, f, :n] = o.sample_point_ids
    return pk


def _detector_prior(pk: _Packed, cfg: RefineConfig, dev: Callable[[Any], torch.Tensor]):
    """The detector's box per frame in odom ``(R, t)`` and the square-root information of that prior.

    Returns:
        ``(T_odom_cam, c_cam, R_prior, t_prior, prior_T (B,F,4,4), L (B,F,6,6))``: weak along the
        viewing ray (first row), strong across it; roll/pitch by ``roll_pitch_std``, yaw by the
        detector's yaw std.
    """
    dtype = cfg.dtype
    T_odom_cam = dev(pk.T_odom_cam).to(dtype)
    R_odom_cam = T_odom_cam[..., :3, :3]
    R_prior = R_odom_cam @ dev(_project_so3(pk.R_cam_obj)).to(dtype)  # T_odom_obj = T_odom_cam @ T_cam_obj
    c_cam = dev(pk.center_cam).to(dtype)
    t_prior = (R_odom_cam @ c_cam[..., None])[..., 0] + T_odom_cam[..., :3, 3]
    ray = (R_odom_cam @ (c_cam / c_cam.norm(dim=-1, keepdim=True))[..., None])[..., 0]
    sd = dev(pk.stds[..., 0]).to(dtype).clamp(min=1e-3)
    sl = dev(pk.stds[..., 1]).to(dtype).clamp(min=1e-3)
    sy = dev(pk.stds[..., 2]).to(dtype).clamp(min=1e-4)
    B, F = pk.frame_mask.shape
    L = torch.zeros(B, F, 6, 6, dtype=dtype, device=cfg.device)
    L[..., :3, :3] = ray_sqrt_information(ray, sd, sl)
    rp = torch.full_like(sy, 1.0 / cfg.roll_pitch_std)
    L[..., 3:, 3:] = torch.diag_embed(torch.stack([rp, rp, 1.0 / sy], -1))
    prior_T = torch.zeros(B, F, 4, 4, dtype=dtype, device=cfg.device)
    prior_T[..., :3, :3], prior_T[..., :3, 3], prior_T[..., 3, 3] = R_prior, t_prior, 1
    return T_odom_cam, c_cam, R_prior, t_prior, prior_T, L


def _point_tracks(tracks: list[ObjectTrack], windows: list[list[int]], pk: _Packed, cfg: RefineConfig,
                  point_tracks: dict[int, tuple[np.ndarray, np.ndarray]] | None,
                  dev: Callable[[Any], torch.Tensor]) -> PointTracks:
    """``(B, F, K)`` point tracks: given ones (KLT / ORB), else from the observations' samples by ``correspondences``."""
    B, F = pk.frame_mask.shape
    K, dtype = cfg.num_points, cfg.dtype
    if point_tracks:
        uv = torch.zeros(B, F, K, 2, dtype=dtype, device=cfg.device)
        om = torch.zeros(B, F, K, dtype=torch.bool, device=cfg.device)
        for b, (t, w) in enumerate(zip(tracks, windows)):
            if t.tracklet_id in point_tracks:
                puv, pm = point_tracks[t.tracklet_id]
                k = min(K, puv.shape[1])
                uv[b, : len(w), :k] = dev(puv[w, :k]).to(dtype)
                om[b, : len(w), :k] = dev(pm[w, :k])
        return PointTracks(uv, om)
    if cfg.correspondences == "descriptor":
        return descriptor_tracks(dev(pk.sample_uv).to(dtype), dev(pk.descriptors).to(dtype), dev(pk.sample_valid), K,
                                 cfg.match_ratio, cfg.match_min_similarity)
    if cfg.correspondences == "oracle":
        return oracle_tracks(dev(pk.sample_uv).to(dtype), dev(pk.sample_ids), K)
    return PointTracks(torch.zeros(B, F, K, 2, dtype=dtype, device=cfg.device),
                       torch.zeros(B, F, K, dtype=torch.bool, device=cfg.device))


def _warm_start(tracks: list[ObjectTrack], windows: list[list[int]], R_prior: torch.Tensor, t_prior: torch.Tensor,
                cfg: RefineConfig, dev: Callable[[Any], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial poses ``(R0, t0)`` and damping ``(B,)`` of the batch.

    The previous solve's where it covered a frame (``track.warm``), the detector's box elsewhere; written in
    one indexed assignment each.
    """
    R0, t0 = R_prior.clone(), t_prior.clone()
    lam = np.full(len(tracks), cfg.solver.initial_lambda)
    bi, fi, Rw, tw = [], [], [], []
    for b, (t, w) in enumerate(zip(tracks, windows)):
        if not t.warm:
            continue
        poses = t.warm.get("poses", {})
        for f, i in enumerate(w):
            pose = poses.get(t.frames[i].stamp_ns)
            if pose is not None:
                bi.append(b)
                fi.append(f)
                Rw.append(pose[0])
                tw.append(pose[1])
        lam[b] = float(t.warm.get("lam", cfg.solver.initial_lambda))
    if bi:
        R0[bi, fi] = dev(np.stack(Rw)).to(cfg.dtype)
        t0[bi, fi] = dev(np.stack(tw)).to(cfg.dtype)
    return R0, t0, dev(lam).to(cfg.dtype)


def _initial_points(pt: PointTracks, c_cam: torch.Tensor, T_odom_cam: torch.Tensor, R0: torch.Tensor, t0: torch.Tensor,
                    K: torch.Tensor) -> torch.Tensor:
    """Object-frame points ``(B, K, 3)``: each track's first observation back-projected at the detector's depth."""
    B, _, Kp = pt.mask.shape
    first = pt.mask.float().argmax(1)  # (B, K) first frame each track is seen in

    def at_first(x: torch.Tensor) -> torch.Tensor:  # (B, F, K, ...) or (B, F, ...) -> (B, K, ...) at `first`
        return torch.gather(x, 1, first.view(B, 1, Kp, *([1] * (x.dim() - 3))).expand(B, 1, Kp, *x.shape[3:]))[:, 0]

    Xc = unproject_pixels(at_first(pt.uv), torch.gather(c_cam[..., 2], 1, first), K)
    Toc_f = torch.gather(T_odom_cam, 1, first[..., None, None].expand(B, Kp, 4, 4))
    Xo = (Toc_f[..., :3, :3] @ Xc[..., None])[..., 0] + Toc_f[..., :3, 3]
    Rf = torch.gather(R0, 1, first[..., None, None].expand(B, Kp, 3, 3))
    tf = torch.gather(t0, 1, first[..., None].expand(B, Kp, 3))
    p0 = (Rf.transpose(-1, -2) @ (Xo - tf)[..., None])[..., 0]
    return torch.where(pt.mask.any(1)[..., None] & torch.isfinite(p0), p0, torch.zeros_like(p0))


def build_batch(tracks: list[ObjectTrack], config: RefineConfig | None = None,
                point_tracks: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> RefineBatch:
    """Pack tracklets into one padded problem (degenerate ones are excluded with a reason).

    Stages: usable frames per tracklet -> host packing (:func:`_pack`) -> detector prior ->
    point tracks -> warm start -> initial points -> :class:`OBAProblem`.

    Args:
        tracks: tracklets to refine.
        config: settings.
        point_tracks: optional externally computed tracks (KLT/ORB) per tracklet id:
            ``(uv (F, K, 2), mask (F, K))`` over the tracklet's current window frames.

    Returns:
        A :class:`RefineBatch` (``problem`` is None when every tracklet was excluded).
    """
    cfg = config or RefineConfig()
    inc, windows, excluded = [], [], []
    for t in tracks:
        use, reason = _usable_frames(t, cfg)
        if reason:
            excluded.append((t, reason))
        else:
            inc.append(t)
            windows.append(use)
    if not inc:
        return RefineBatch([], None, None, [], np.zeros((0, 3)), excluded)

    def dev(x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=cfg.device)

    pk = _pack(inc, windows)
    T_odom_cam, c_cam, R_prior, t_prior, prior_T, L = _detector_prior(pk, cfg, dev)
    pt = _point_tracks(inc, windows, pk, cfg, point_tracks, dev)
    R0, t0, lam = _warm_start(inc, windows, R_prior, t_prior, cfg, dev)
    Kt = dev(pk.K).to(cfg.dtype)
    p0 = _initial_points(pt, c_cam, T_odom_cam, R0, t0, Kt)
    fm = dev(pk.frame_mask)
    B, dtype = len(inc), cfg.dtype
    problem = OBAProblem(
        obs_uv=pt.uv, obs_mask=pt.mask & fm[..., None], T_cam_odom=torch.linalg.inv(T_odom_cam), K=Kt, frame_mask=fm,
        stamps_s=dev(pk.stamps_s).to(dtype),
        obs_sqrt_weight=torch.full(pt.mask.shape, 1.0 / cfg.pixel_std, dtype=dtype, device=cfg.device),
        prior_T_odom_obj=prior_T, prior_sqrt_info=L, prior_mask=fm.clone(),
        motion_sqrt_info=torch.tensor([1 / cfg.accel_std] * 3 + [1 / cfg.angular_accel_std] * 3, dtype=dtype,
                                      device=cfg.device).expand(B, 6).clone(),
    )
    return RefineBatch(inc, problem, OBAState(R0, t0, p0), windows, pk.sizes, excluded, lam)


def _velocity(t: torch.Tensor, stamps: torch.Tensor, fm: torch.Tensor, cov: torch.Tensor | None):
    """Least-squares slope ``(B, 3)`` of positions ``(B, F, 3)`` over time, and its covariance."""
    w = fm.to(t.dtype)
    n = w.sum(1, keepdim=True).clamp(min=1)
    sm = (stamps * w).sum(1, keepdim=True) / n
    d = (stamps - sm) * w
    c = d / (d * d).sum(1, keepdim=True).clamp(min=1e-12)  # v = sum_f c_f t_f
    v = (c[..., None] * t).sum(1)
    vc = None
    if cov is not None:
        Ctt = cov[:, :, :3, :, :3]  # (B,F,3,F,3)
        vc = torch.einsum("bf,bfigj,bg->bij", c, Ctt, c)
    return v, vc


def _box(track: ObjectTrack, reason: str, config: RefineConfig, pos: int = -1) -> RefinedBox:
    """The single-frame detection at window position ``pos`` (default newest) as an unrefined box."""
    fr = track.frames[pos]
    o = fr.observation
    unknown = -np.eye(6)
    if fr.T_odom_cam is not None and np.isfinite(fr.T_odom_cam).all() and np.isfinite(o.center_cam).all():
        R = fr.T_odom_cam[:3, :3] @ _project_so3(np.asarray(o.R_cam_obj, np.float64))
        c = fr.T_odom_cam[:3, :3] @ o.center_cam + fr.T_odom_cam[:3, 3]
        u = fr.T_odom_cam[:3, :3] @ (o.center_cam / np.linalg.norm(o.center_cam))
        uu = np.outer(u, u)
        cov = np.zeros((6, 6))
        cov[:3, :3] = o.depth_std**2 * uu + o.lateral_std**2 * (np.eye(3) - uu)
        cov[3:, 3:] = R @ np.diag([config.roll_pitch_std**2, config.roll_pitch_std**2, o.yaw_std**2]) @ R.T
    else:
        R, c, cov = np.full((3, 3), np.nan), np.full(3, np.nan), unknown
    return RefinedBox(
        tracklet_id=track.tracklet_id, class_label=o.class_label, score=float(o.score), stamp_ns=fr.stamp_ns,
        box_2d=np.asarray(o.box_2d), embedding=np.asarray(o.embedding), refined=False, reason=reason,
        center_odom=c, R_odom_obj=R, yaw_odom=float(np.arctan2(R[1, 0], R[0, 0])), center_cam=np.asarray(o.center_cam, np.float64),
        size_lwh=np.asarray(o.size_lwh, np.float64), velocity_odom=np.full(3, np.nan), pose_covariance=cov,
        velocity_covariance=-np.eye(3), is_static=False, num_frames=len(track.frames),
    )


def refine_tracklets(
    tracks: list[ObjectTrack],
    config: RefineConfig | None = None,
    point_tracks: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[RefinedBox]:
    """Refine every tracklet's window in one batched solve and return one box per tracklet.

    Degenerate tracklets (1 frame, missing ego-motion, NaN observations, detections behind the
    camera, zero baseline) come back unrefined with the reason; they never enter the batch. The
    warm start (refined poses per stamp and damping) is stored in ``track.warm``.

    Args:
        tracks: tracklets (typically those updated in the current frame).
        config: settings.
        point_tracks: optional KLT/ORB tracks per tracklet id (see :func:`build_batch`).

    Returns:
        One :class:`RefinedBox` per input tracklet, in input order.
    """
    cfg = config or RefineConfig()
    batch = build_batch(tracks, cfg, point_tracks)
    out: dict[int, RefinedBox] = {t.tracklet_id: _box(t, r, cfg) for t, r in batch.excluded}
    if batch.problem is not None:
        batch, cues = apply_depth_cues(batch, cfg)  # depth cues: the fused depth replaces the detector's in the priors
        history, _ = batch.inputs()  # every kept frame: what the static test triangulates over
        if 0 < cfg.window < history.shape[1]:
            batch = _newest_frames(batch, cfg.window)
        p, init = batch.inputs()
        assert p.stamps_s is not None, "build_batch sets the stamps"
        if cfg.scene_static:
            ps, init_s = _static_problem(p, init)
            res = _solve(cfg, ps, init_s, batch.initial_lambda)
            v, vcov = _velocity(res.state.t_odom_obj, p.stamps_s, p.frame_mask, res.pose_covariance)
            _write_back(batch, res, torch.zeros_like(v), vcov, res.valid.clone(), replace(cfg, static_resolve=True), out,
                        one_pose=True)
            _note_cues(batch, cues, out)
            return [out[t.tracklet_id] for t in tracks]
        res = _solve(cfg, p, init, batch.initial_lambda)
        v, vcov = _velocity(res.state.t_odom_obj, p.stamps_s, p.frame_mask, res.pose_covariance)
        speed = v.norm(dim=-1)
        static = (speed < cfg.static_speed_mps) & res.valid
        if cfg.static_resolve:
            decided, by_points = static_evidence(history).static(cfg.track_noise_px(), cfg.static_depth_log_std,
                                                           cfg.min_points_for_selection)
            static = res.valid & (speed < cfg.static_candidate_mps) & torch.where(decided, by_points, static)
        _write_back(batch, res, v, vcov, static, cfg, out)
        _note_cues(batch, cues, out)
    return [out[t.tracklet_id] for t in tracks]


def _note_cues(batch: RefineBatch, cues, out: dict) -> None:
    """Depth cues: the dominant cue's name on each refined box."""
    if cues is not None:
        for t, name in zip(batch.tracks, cues.names()):
            if out[t.tracklet_id].refined:
                out[t.tracklet_id].depth_cue = name


_GRAPHS = GraphSolveCache()

def _newest_frames(batch: RefineBatch, n: int) -> RefineBatch:
    """The batch cut to each problem's newest ``n`` packed frames (the BA window of a longer history)."""
    problem, state = newest_frames(*batch.inputs(), n)
    return replace(batch, problem=problem, init=state, frame_index=[ii[-n:] for ii in batch.frame_index])


def _solve(cfg: RefineConfig, problem: OBAProblem, init: OBAState, initial_lambda: torch.Tensor | None) -> OBAResult:
    """The batched LM solve: replayed from a cached CUDA graph on CUDA (``cuda_graph``), eager otherwise."""
    if cfg.cuda_graph and problem.obs_uv.device.type == "cuda":
        return _GRAPHS.solve(problem, init, cfg.solver, initial_lambda)
    return solve(problem, init, cfg.solver, initial_lambda=initial_lambda)


def _static_problem(p: OBAProblem, init: OBAState) -> tuple[OBAProblem, OBAState]:
    """The same problems with one pose for all frames (static-scene BA), started at the window mean."""
    B = p.frame_mask.shape[0]
    assert p.motion_sqrt_info is not None, "build_batch sets the motion prior"
    ps = OBAProblem(**{**p.__dict__, "static": torch.ones(B, dtype=torch.bool, device=p.obs_uv.device),
                       "motion_sqrt_info": torch.zeros_like(p.motion_sqrt_info)})
    nf = p.frame_mask.sum(1).clamp(min=1)[:, None].to(init.t_odom_obj.dtype)
    t_mean = (init.t_odom_obj * p.frame_mask[..., None]).sum(1) / nf  # window mean position
    return ps, OBAState(init.R_odom_obj[:, :1].expand_as(init.R_odom_obj), t_mean[:, None].expand_as(init.t_odom_obj),
                        init.points_obj)


def _box_problem(b: RefinedBox) -> str:
    """Why a box cannot be published (a non-finite value), or ``""``."""
    checks = (("centre", (b.center_odom,)), ("pose", (b.R_odom_obj, b.center_cam)), ("size", (b.size_lwh,)),
              ("box", (b.box_2d,)), ("score", ([b.score],)), ("features", (b.embedding,)))
    for name, arrays in checks:
        if not all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays):
            return f"nonfinite_{name}"
    return ""


def publishable_boxes(boxes: list[RefinedBox]) -> tuple[list[RefinedBox], Counter]:
    """The boxes that may leave the track buffer, and the others counted by reason.

    A box with a non-finite centre (no ego-motion for its frame), pose, size, 2D box, score or
    embedding is left out (``nonfinite_<what>``); an unknown velocity (unrefined boxes) becomes zero
    and an unknown or non-finite covariance the ``-1`` diagonal of "unknown", so no non-finite
    number is ever published.
    """
    out: list[RefinedBox] = []
    dropped: Counter[str] = Counter()
    for b in boxes:
        why = _box_problem(b)
        if why:
            dropped[why] += 1
            continue
        fix: dict[str, Any] = {}  # RefinedBox fields to replace (arrays of different shapes)
        if not np.isfinite(b.velocity_odom).all():
            fix |= {"velocity_odom": np.zeros(3), "velocity_covariance": -np.eye(3)}
        if not np.isfinite(b.pose_covariance).all():
            fix["pose_covariance"] = -np.eye(6)
        if not np.isfinite(fix.get("velocity_covariance", b.velocity_covariance)).all():
            fix["velocity_covariance"] = -np.eye(3)
        out.append(replace(b, **fix) if fix else b)
    return out, dropped


def tracker_detections(boxes: list[RefinedBox]) -> Detections:
    """Refined boxes -> the tracker's input in odom.

    What tracker_node makes of the track buffer's Detection3DArray (the :func:`publishable_boxes`, through
    :meth:`Detections.from_boxes`).
    """
    boxes, _ = publishable_boxes(boxes)
    R = np.stack([b.R_odom_obj for b in boxes]) if boxes else np.zeros((0, 3, 3))
    return Detections.from_boxes(
        [b.center_odom for b in boxes], np.arctan2(R[:, 1, 0], R[:, 0, 0]), [b.size_lwh for b in boxes],
        [b.class_label for b in boxes], [b.score for b in boxes], [np.asarray(b.box_2d, np.float64) for b in boxes],
        [b.embedding for b in boxes], [np.asarray(b.pose_covariance, np.float64).reshape(6, 6)[:3, :3] for b in boxes],
        refined=[b.refined for b in boxes], is_static=[b.is_static for b in boxes],
        velocities=[b.velocity_odom for b in boxes],
        velocity_covariances=[np.asarray(b.velocity_covariance, np.float64).reshape(3, 3) for b in boxes])


def heading_from_velocity(R_odom_obj: np.ndarray, velocity_odom: np.ndarray, moving: np.ndarray, min_speed_mps: float) -> np.ndarray:
    """Orientations ``(B, 3, 3)`` (odom) with the yaw of moving objects taken from their velocity.

    Where ``moving`` and the horizontal speed of ``velocity_odom`` ``(B, 3)`` (m/s, odom) is at least
    ``min_speed_mps``, the orientation becomes a pure yaw about odom +z along the velocity, or
    against it when that is nearer the given yaw (more than 90 deg from the velocity direction);
    the others are returned unchanged.
    """
    R = R_odom_obj.copy()
    vx, vy = velocity_odom[:, 0], velocity_odom[:, 1]
    sel = moving & (np.hypot(vx, vy) >= min_speed_mps)
    if not sel.any():
        return R
    heading = np.arctan2(vy[sel], vx[sel])
    yaw = np.arctan2(R[sel, 1, 0], R[sel, 0, 0])
    heading = np.where(np.cos(heading - yaw) < 0, heading + np.pi, heading)
    c, s = np.cos(heading), np.sin(heading)
    z, o = np.zeros_like(c), np.ones_like(c)
    R[sel] = np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)
    return R


def _write_back(batch: RefineBatch, res: OBAResult, v, vcov, static, cfg: RefineConfig, out: dict,
                one_pose: bool = False) -> None:
    """Refined boxes of the batch into ``out``; ``one_pose``: every problem was solved with one pose (slot 0)."""
    p, _ = batch.inputs()
    nfr = p.frame_mask.sum(1) - 1  # newest packed frame
    B = len(batch.tracks)
    ar = torch.arange(B, device=nfr.device)
    slot = torch.zeros_like(nfr) if one_pose else nfr  # a one-pose solve keeps its pose in slot 0
    # Everything the boxes need, copied to the host once (per-element reads would sync the GPU each time).
    host = {
        "R": res.state.R_odom_obj[ar, nfr], "t": res.state.t_odom_obj[ar, nfr], "T_co": p.T_cam_odom[ar, nfr],
        "v": v, "npts": (p.obs_mask.sum(1) >= 2).sum(-1), "valid": res.valid, "static": static,
        "nframes": p.frame_mask.sum(1), "cost": res.cost, "iterations": res.iterations, "lam": res.lam,
        "R_all": res.state.R_odom_obj, "t_all": res.state.t_odom_obj,
    }
    if res.pose_covariance is not None:
        host["cov"] = res.pose_covariance[ar, slot, :, slot, :]  # (B,6,6) [dt odom, dtheta obj]
    if vcov is not None:
        host["vcov"] = vcov
    h = {k: x.detach().cpu().numpy() for k, x in host.items()}
    R, t, T_co, cov, vc = h["R"], h["t"], h["T_co"], h.get("cov"), h.get("vcov")
    if cfg.heading_from_velocity_mps > 0:
        R = heading_from_velocity(R, h["v"], ~h["static"], cfg.heading_from_velocity_mps)
    for b, track in enumerate(batch.tracks):
        base = _box(track, "", cfg, batch.frame_index[b][-1])  # newest usable frame
        if not h["valid"][b]:
            base.reason = "solver rejected the problem"
            out[track.tracklet_id] = base
            continue
        G = np.eye(6)
        G[3:, 3:] = h["R"][b]  # object-frame rotation increment -> odom frame (the solver's orientation)
        pc = cfg.covariance_scale * (G @ cov[b] @ G.T) if cov is not None else -np.eye(6)
        base.refined = True
        base.center_odom, base.R_odom_obj = t[b], R[b]
        base.yaw_odom = float(np.arctan2(R[b][1, 0], R[b][0, 0]))
        base.center_cam = T_co[b, :3, :3] @ t[b] + T_co[b, :3, 3]
        base.size_lwh = batch.sizes[b]
        base.is_static = bool(h["static"][b])
        base.velocity_odom = np.zeros(3) if base.is_static and cfg.static_resolve else h["v"][b]
        base.pose_covariance = pc
        base.velocity_covariance = cfg.covariance_scale * vc[b] if vc is not None else -np.eye(3)
        base.num_frames = int(h["nframes"][b])
        base.num_points = int(h["npts"][b])
        base.cost = float(h["cost"][b])
        base.iterations = int(h["iterations"][b])
        out[track.tracklet_id] = base
        track.warm = {
            "poses": {track.frames[i].stamp_ns: (h["R_all"][b, f], h["t_all"][b, f]) for f, i in enumerate(batch.frame_index[b])},
            "lam": float(h["lam"][b]),
        }
