"""Global reconstruction with known camera poses: KLT tracks inside the 2D label boxes, batched triangulation.

BA2-Det's first stage (global BA) with the camera poses fixed from odometry x camera mounting
(``T_odom_cam = T_odom_base @ T_base_cam``), so the points are metric and no scale or drift has
to be estimated. Corners are detected inside every 2D label box, tracked frame to frame with
pyramidal Lucas-Kanade (forward-backward checked, epipolar-checked with the known relative pose),
and a track ends when it leaves the box of its object (same track id). Every feature track is
triangulated by a batched multi-view DLT refined by Gauss-Newton on the reprojection error;
points with a large reprojection error, a small triangulation angle or behind a camera are
dropped. Each point carries the track id of the 2D label box it was observed in.

Why not pycolmap: see docs in :mod:`ba_perception.pseudo` (measured speed / accuracy).
Frames: odom (metres), camera optical (x right, y down, z forward), pixels with integer centres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ReconstructError(ValueError):
    """Raised for inconsistent inputs (shapes, missing poses)."""


@dataclass
class LabelFrame:
    """One frame of a labelled sequence.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` gray).
        K: ``(3, 3)`` intrinsics, pixels.
        T_odom_cam: ``(4, 4)`` camera optical frame in odom (from odometry x mounting), metres.
        boxes: ``(N, 4)`` 2D label boxes ``(x1, y1, x2, y2)``, pixels.
        track_ids: ``(N,)`` int64 track id of each box.
        classes: N class names (``car``, ``pedestrian``, ...).
        T_odom_base: ``(4, 4)`` ego base_link in odom (ground plane for ground removal); None: unknown.
    """

    image: np.ndarray
    K: np.ndarray
    T_odom_cam: np.ndarray
    boxes: np.ndarray
    track_ids: np.ndarray
    classes: list[str] = field(default_factory=list)
    T_odom_base: np.ndarray | None = None


@dataclass
class ReconstructOptions:
    """Tuning of :func:`reconstruct`.

    Attributes:
        max_corners: corners detected per frame (inside boxes).  min_distance_px: between corners.
        quality: ``goodFeaturesToTrack`` quality level.  fb_max_px: forward-backward LK error bound.
        epipolar_max_px: distance of a tracked point to its epipolar line (known relative pose).
        min_views: observations a point needs.  max_reproj_px: mean reprojection error bound.
        min_angle_deg: largest ray angle a point needs.  box_margin_px: boxes grown by this.
        refine_rotation: replace odometry's frame-to-frame rotation by the essential-matrix rotation
            of the tracked points when at least ``refine_min_points`` matches, ``refine_min_inliers``
            of them RANSAC inliers (``refine_ransac_px``), agree within ``refine_max_deg``; the
            displacement keeps odometry's length and takes the images' direction when within
            ``refine_max_dir_deg`` of odometry's. Off by default: on clean odometry it costs accuracy
            (movers and slow ego motion mislead the essential matrix); for drifting odometry. Removes
            most of a drifting odometry's rotation error.
        exclusive_corners: new corners only where exactly one box covers the pixel (ownership
            of pixels in overlapping boxes is ambiguous; tracked points may enter such regions).
    """

    max_corners: int = 2500
    min_distance_px: float = 3.0
    quality: float = 0.005
    fb_max_px: float = 0.7
    epipolar_max_px: float = 1.5
    min_views: int = 3
    max_reproj_px: float = 1.5
    min_angle_deg: float = 1.0
    box_margin_px: float = 0.0
    lk_window: int = 15
    exclusive_corners: bool = False
    refine_rotation: bool = False
    refine_min_points: int = 30
    refine_min_inliers: float = 0.6
    refine_max_deg: float = 2.0
    refine_ransac_px: float = 1.0
    refine_max_dir_deg: float = 30.0


@dataclass
class PointCloud:
    """Triangulated points with their observations.

    Attributes:
        xyz: ``(P, 3)`` float64 points in odom, metres.
        track_id: ``(P,)`` int64 track id of the label box the point was observed in.
        reproj_px: ``(P,)`` mean reprojection error, pixels.  angle_deg: ``(P,)`` largest ray angle.
        obs_point: ``(M,)`` point index of each observation.  obs_frame: ``(M,)`` frame index.
        obs_uv: ``(M, 2)`` pixel of each observation.
        T_odom_cam: ``(F, 4, 4)`` the camera poses the points were triangulated with (odometry,
            rotations refined when ``refine_rotation``); None: the frames' own.
    """

    xyz: np.ndarray
    track_id: np.ndarray
    reproj_px: np.ndarray
    angle_deg: np.ndarray
    obs_point: np.ndarray
    obs_frame: np.ndarray
    obs_uv: np.ndarray
    T_odom_cam: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xyz)


def box_of_pixels(uv: np.ndarray, boxes: np.ndarray, margin_px: float = 0.0, exclusive: bool = False) -> np.ndarray:
    """Index of the label box each pixel lies in, ``-1`` for none.

    Where boxes overlap the box with the lowest bottom edge (largest ``y2``) wins: on a flat road it
    belongs to the nearer object, the occluder; with ``exclusive`` such pixels get ``-1`` instead.

    Args:
        uv: ``(M, 2)`` pixels.  boxes: ``(N, 4)`` ``(x1, y1, x2, y2)``.  margin_px: grow boxes by this.
        exclusive: ``-1`` for pixels inside more than one box.

    Returns:
        ``(M,)`` int64 box index.
    """
    if len(boxes) == 0 or len(uv) == 0:
        return np.full(len(uv), -1, np.int64)
    inside = _inside(uv, boxes, margin_px)
    score = np.where(inside, boxes[None, :, 3], -np.inf)
    best = np.argmax(score, 1)
    n = inside.sum(1)
    return np.where((n == 1) if exclusive else (n >= 1), best, -1).astype(np.int64)


def _inside(uv: np.ndarray, boxes: np.ndarray, margin_px: float) -> np.ndarray:
    b = boxes[None]
    return ((uv[:, None, 0] >= b[..., 0] - margin_px) & (uv[:, None, 0] <= b[..., 2] + margin_px)
            & (uv[:, None, 1] >= b[..., 1] - margin_px) & (uv[:, None, 1] <= b[..., 3] + margin_px))


def inside_own_box(uv: np.ndarray, track_id: np.ndarray, boxes: np.ndarray, box_track_id: np.ndarray,
                   margin_px: float = 0.0) -> np.ndarray:
    """``(M,)`` bool: pixel ``uv[m]`` lies in a box whose track id is ``track_id[m]`` (other boxes ignored)."""
    if len(boxes) == 0 or len(uv) == 0:
        return np.zeros(len(uv), bool)
    return (_inside(uv, boxes, margin_px) & (box_track_id[None, :] == track_id[:, None])).any(1)


def fundamental_from_poses(K_a: np.ndarray, T_odom_a: np.ndarray, K_b: np.ndarray, T_odom_b: np.ndarray) -> np.ndarray:
    """Fundamental matrix ``F`` with ``x_b^T F x_a = 0`` for two calibrated cameras with known poses.

    Args:
        K_a, K_b: ``(3, 3)``.  T_odom_a, T_odom_b: ``(4, 4)`` camera optical frames in odom.
    """
    T_b_a = np.linalg.inv(T_odom_b) @ T_odom_a
    R, t = T_b_a[:3, :3], T_b_a[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(K_b).T @ tx @ R @ np.linalg.inv(K_a)


def epipolar_distance(F: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    """Distance (pixels) of ``uv_b`` ``(M, 2)`` to the epipolar lines of ``uv_a`` ``(M, 2)`` in image b."""
    xa = np.concatenate([uv_a, np.ones((len(uv_a), 1))], 1)
    xb = np.concatenate([uv_b, np.ones((len(uv_b), 1))], 1)
    lines = xa @ F.T  # (M, 3) lines in b
    return np.abs((lines * xb).sum(1)) / np.maximum(np.hypot(lines[:, 0], lines[:, 1]), 1e-12)


def track_features(frames: list[LabelFrame], opts: ReconstructOptions | None = None,
                   progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KLT feature tracks inside the label boxes of a sequence.

    Returns:
        ``(feat, frame, uv, track_id, poses)``: per observation the feature index ``(M,)``, frame index
        ``(M,)``, pixel ``(M, 2)``; per feature, the label track id ``(Nf,)``; per frame the camera
        pose ``T_odom_cam`` ``(F, 4, 4)`` (odometry's, its rotation refined when ``opts.refine_rotation``).
    """
    import cv2

    opts = opts or ReconstructOptions()
    feats, frs, uvs, tids = [], [], [], []
    n_feat = 0
    prev_gray = None
    cur_uv = np.zeros((0, 2), np.float32)
    cur_feat = np.zeros(0, np.int64)
    cur_tid = np.zeros(0, np.int64)
    win = (opts.lk_window, opts.lk_window)
    poses = np.stack([fr.T_odom_cam for fr in frames])
    for f, fr in enumerate(frames):
        img = fr.image
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        H, W = gray.shape
        boxes = np.asarray(fr.boxes, np.float64).reshape(-1, 4)
        tid_of_box = np.asarray(fr.track_ids, np.int64)
        if prev_gray is not None and len(cur_uv):
            p0 = cur_uv.reshape(-1, 1, 2)
            p1, st, _ = cv2.calcOpticalFlowPyrLK(  # type: ignore[call-overload]  # nextPts=None is valid (OpenCV allocates it); the stubs lack it
                prev_gray, gray, p0, None, winSize=win, maxLevel=3)
            p0b, st_b, _ = cv2.calcOpticalFlowPyrLK(  # type: ignore[call-overload]  # as above
                gray, prev_gray, p1, None, winSize=win, maxLevel=3)
            p1 = p1.reshape(-1, 2)
            fb = np.linalg.norm(p0b.reshape(-1, 2) - cur_uv, axis=1)
            ok = (st.ravel() == 1) & (st_b.ravel() == 1) & (fb < opts.fb_max_px)
            ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= W - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= H - 1)
            # odometry's relative pose, its rotation corrected from the tracked points when they agree
            T_prev_cur = np.linalg.inv(frames[f - 1].T_odom_cam) @ fr.T_odom_cam
            if opts.refine_rotation and ok.sum() >= opts.refine_min_points:
                T_prev_cur = _refine_rotation(cur_uv[ok], p1[ok], frames[f - 1].K, fr.K, T_prev_cur, opts)
            poses[f] = poses[f - 1] @ T_prev_cur
            Fm = fundamental_from_poses(frames[f - 1].K, poses[f - 1], fr.K, poses[f])
            ok &= epipolar_distance(Fm, cur_uv.astype(np.float64), p1.astype(np.float64)) < opts.epipolar_max_px
            ok &= inside_own_box(p1.astype(np.float64), cur_tid, boxes, tid_of_box, opts.box_margin_px)
            cur_uv, cur_feat, cur_tid = p1[ok], cur_feat[ok], cur_tid[ok]
        # new corners in the boxes, away from tracked ones
        if len(boxes):
            mask = np.zeros((H, W), np.uint8)
            bi = np.round(boxes).astype(int)
            for x1, y1, x2, y2 in bi:
                mask[max(y1, 0):min(y2, H - 1) + 1, max(x1, 0):min(x2, W - 1) + 1] = 255
            for u, v in np.round(cur_uv).astype(int):
                cv2.circle(mask, (int(u), int(v)), int(opts.min_distance_px), 0, -1)
            corners = cv2.goodFeaturesToTrack(gray, opts.max_corners, opts.quality, opts.min_distance_px, mask=mask,
                                              blockSize=3)
            if corners is not None:
                c = corners.reshape(-1, 2).astype(np.float32)
                b = box_of_pixels(c.astype(np.float64), boxes, opts.box_margin_px, exclusive=opts.exclusive_corners)
                c, b = c[b >= 0], b[b >= 0]
                cur_uv = np.concatenate([cur_uv, c])
                cur_feat = np.concatenate([cur_feat, n_feat + np.arange(len(c))])
                cur_tid = np.concatenate([cur_tid, tid_of_box[b]])
                tids.append(tid_of_box[b])
                n_feat += len(c)
        feats.append(cur_feat.copy())
        frs.append(np.full(len(cur_feat), f, np.int64))
        uvs.append(cur_uv.astype(np.float64))
        prev_gray = gray
        if progress is not None:
            progress(1)
    return (_concat(feats, 0).astype(np.int64), _concat(frs, 0).astype(np.int64), _concat(uvs, (0, 2)),
            _concat(tids, 0).astype(np.int64), poses)


def _concat(xs: list[np.ndarray], empty_shape: int | tuple[int, ...]) -> np.ndarray:
    """``np.concatenate(xs)``, or zeros of ``empty_shape`` when ``xs`` is empty."""
    return np.concatenate(xs) if xs else np.zeros(empty_shape)


def _refine_rotation(uv_a: np.ndarray, uv_b: np.ndarray, K_a: np.ndarray, K_b: np.ndarray, T_a_b: np.ndarray,
                     opts: ReconstructOptions) -> np.ndarray:
    """``T_a_b`` with its rotation replaced by the essential-matrix (RANSAC) rotation of the matches.

    The rotation is replaced only when it is within ``opts.refine_max_deg`` of odometry's and most
    matches are inliers; the camera displacement stays odometry's (metric).
    """
    import cv2

    Kinv_a, Kinv_b = np.linalg.inv(K_a), np.linalg.inv(K_b)
    na = (np.c_[uv_a, np.ones(len(uv_a))] @ Kinv_a.T)[:, :2]
    nb = (np.c_[uv_b, np.ones(len(uv_b))] @ Kinv_b.T)[:, :2]
    thr = opts.refine_ransac_px / K_a[0, 0]
    E, mask = cv2.findEssentialMat(na, nb, np.eye(3), method=cv2.RANSAC, prob=0.999, threshold=thr)
    if E is None or E.shape != (3, 3) or mask is None or mask.mean() < opts.refine_min_inliers:
        return T_a_b
    _, R_b_a, t_b_a, _ = cv2.recoverPose(E, na, nb, np.eye(3), mask=mask)
    R_a_b = R_b_a.T
    dR = R_a_b @ T_a_b[:3, :3].T
    ang = np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))
    if ang > opts.refine_max_deg:
        return T_a_b
    out = T_a_b.copy()
    out[:3, :3] = R_a_b
    step = np.linalg.norm(T_a_b[:3, 3])
    c = -(R_a_b @ t_b_a.ravel())  # camera b's centre in a, up to scale
    c /= max(float(np.linalg.norm(c)), 1e-12)
    if step > 0 and float(c @ T_a_b[:3, 3]) / step > np.cos(np.radians(opts.refine_max_dir_deg)):
        out[:3, 3] = step * c  # direction from the images, length from odometry
    return out


def triangulate_tracks(obs_feat: np.ndarray, obs_uv: np.ndarray, P: np.ndarray, n_feat: int,
                       iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Batched multi-view triangulation: DLT then Gauss-Newton on the reprojection error.

    Args:
        obs_feat: ``(M,)`` feature index of each observation in ``[0, n_feat)``.
        obs_uv: ``(M, 2)`` pixels.  P: ``(M, 3, 4)`` projection matrix ``K [R | t]`` (odom -> image)
            of each observation's camera.  n_feat: number of features.  iterations: Gauss-Newton steps.

    Returns:
        ``(X, err)``: ``(n_feat, 3)`` points in odom (NaN where under-determined) and ``(M,)``
        reprojection error of each observation, pixels.
    """
    # DLT rows: u * P3 - P1, v * P3 - P2, each normalised; A^T A summed per feature.
    r1 = obs_uv[:, 0:1] * P[:, 2] - P[:, 0]
    r2 = obs_uv[:, 1:2] * P[:, 2] - P[:, 1]
    r1 /= np.linalg.norm(r1, axis=1, keepdims=True)
    r2 /= np.linalg.norm(r2, axis=1, keepdims=True)
    AtA = np.zeros((n_feat, 4, 4))
    np.add.at(AtA, obs_feat, r1[:, :, None] * r1[:, None, :] + r2[:, :, None] * r2[:, None, :])
    _, vec = np.linalg.eigh(AtA)
    Xh = vec[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
    for _ in range(iterations):
        Xo = X[obs_feat]
        q = np.einsum("mij,mj->mi", P[:, :, :3], Xo) + P[:, :, 3]  # (M, 3)
        z = q[:, 2:3]
        res = q[:, :2] / z - obs_uv  # (M, 2)
        # d(uv)/dX = (P[:2,:3] * z - q[:2] P[2,:3]) / z^2
        J = (P[:, :2, :3] * z[:, :, None] - q[:, :2, None] * P[:, 2:3, :3]) / (z[:, :, None] ** 2)
        JtJ = np.zeros((n_feat, 3, 3))
        Jtr = np.zeros((n_feat, 3))
        np.add.at(JtJ, obs_feat, np.einsum("mki,mkj->mij", J, J))
        np.add.at(Jtr, obs_feat, np.einsum("mki,mk->mi", J, res))
        JtJ += 1e-9 * np.eye(3)
        ok = np.isfinite(JtJ).all((1, 2)) & np.isfinite(Jtr).all(1)
        step = np.zeros_like(X)
        step[ok] = np.linalg.solve(JtJ[ok], Jtr[ok][:, :, None])[:, :, 0]
        X = X - step
    q = np.einsum("mij,mj->mi", P[:, :, :3], X[obs_feat]) + P[:, :, 3]
    err = np.linalg.norm(q[:, :2] / q[:, 2:3] - obs_uv, axis=1)
    err = np.where(q[:, 2] > 0, err, np.inf)
    return X, err


def projection_matrices(frames: list[LabelFrame]) -> np.ndarray:
    """``(F, 3, 4)`` projection matrices ``K [R | t]`` mapping odom points to pixels."""
    out = np.empty((len(frames), 3, 4))
    for i, fr in enumerate(frames):
        out[i] = fr.K @ np.linalg.inv(fr.T_odom_cam)[:3]
    return out


def reconstruct(frames: list[LabelFrame], opts: ReconstructOptions | None = None, progress=None) -> PointCloud:
    """Points of the labelled objects of a sequence, triangulated with the camera poses fixed.

    Args:
        frames: the sequence, in time order.  opts: tuning.  progress: called with 1 per frame tracked.

    Returns:
        The :class:`PointCloud` (odom frame) of points seen in ``>= opts.min_views`` frames.

    Raises:
        ReconstructError: a frame with a non-finite pose or intrinsics.
    """
    opts = opts or ReconstructOptions()
    for i, fr in enumerate(frames):
        if not (np.isfinite(fr.K).all() and np.isfinite(fr.T_odom_cam).all()):
            raise ReconstructError(f"frame {i}: non-finite intrinsics or camera pose")
    feat, frame, uv, tids, poses = track_features(frames, opts, progress)
    n_feat = len(tids)
    counts = np.bincount(feat, minlength=n_feat)
    keep = counts[feat] >= opts.min_views
    feat, frame, uv = feat[keep], frame[keep], uv[keep]
    Pall = np.stack([fr.K for fr in frames]) @ np.linalg.inv(poses)[:, :3]
    # two rounds: drop observations with a large error, then re-solve
    X, err = triangulate_tracks(feat, uv, Pall[frame], n_feat)
    good = err < 3 * opts.max_reproj_px
    feat, frame, uv = feat[good], frame[good], uv[good]
    X, err = triangulate_tracks(feat, uv, Pall[frame], n_feat)
    counts = np.bincount(feat, minlength=n_feat)
    mean_err = np.bincount(feat, weights=err, minlength=n_feat) / np.maximum(counts, 1)
    # largest ray angle: between the first and the last observation's camera centres
    centres = poses[:, :3, 3]
    first = np.full(n_feat, len(frames), np.int64)
    last = np.full(n_feat, -1, np.int64)
    np.minimum.at(first, feat, frame)
    np.maximum.at(last, feat, frame)
    seen = counts > 0
    angle = np.zeros(n_feat)
    fi, la = np.clip(first, 0, len(frames) - 1), np.clip(last, 0, len(frames) - 1)
    a, b = centres[fi] - X, centres[la] - X
    with np.errstate(invalid="ignore", divide="ignore"):
        cosang = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    angle[seen] = np.degrees(np.arccos(np.clip(cosang[seen], -1, 1)))
    ok = (seen & (counts >= opts.min_views) & np.isfinite(X).all(1) & (mean_err < opts.max_reproj_px)
          & (angle >= opts.min_angle_deg))
    index = np.full(n_feat, -1, np.int64)
    index[ok] = np.arange(int(ok.sum()))
    o = ok[feat]
    return PointCloud(xyz=X[ok], track_id=tids[ok], reproj_px=mean_err[ok], angle_deg=angle[ok],
                      obs_point=index[feat[o]], obs_frame=frame[o], obs_uv=uv[o], T_odom_cam=poses)
