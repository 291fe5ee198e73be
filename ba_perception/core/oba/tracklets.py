"""Short-term association of per-frame detections into tracklets with a bounded sliding window."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ba_perception.core.geometry import iou_2d, rotation_cam_from_yaw


class TrackletError(ValueError):
    """Raised on invalid tracklet configuration or inputs with the wrong shape."""


@dataclass
class Observation:
    """One single-frame detection (mirrors ``ObjectObservation.msg``), camera optical frame.

    Attributes:
        box_2d: ``(4,)`` pixels ``(x1, y1, x2, y2)``.
        center_cam: ``(3,)`` box centre in the camera frame, metres.
        R_cam_obj: ``(3, 3)`` object orientation in the camera frame.
        size_lwh: ``(3,)`` metres.
        depth_std: std along the viewing ray, metres.
        lateral_std: std across the viewing ray, metres.
        yaw_std: std of yaw about the object's up axis, radians.
        score: detector confidence.
        class_label: class name.
        embedding: ``(E,)`` L2-normalised appearance embedding (may be empty).
        sample_uv: ``(N, 2)`` pixel positions of feature samples (may be empty).
        descriptors: ``(N, D)`` L2-normalised descriptors of the samples.
        sample_point_ids: ``(N,)`` ground-truth surface point ids (oracle evaluation only), -1 unknown.
    """

    box_2d: np.ndarray
    center_cam: np.ndarray
    R_cam_obj: np.ndarray
    size_lwh: np.ndarray
    depth_std: float = 1.0
    lateral_std: float = 0.2
    yaw_std: float = 0.2
    score: float = 1.0
    class_label: str = "car"
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sample_point_ids: np.ndarray | None = None


@dataclass
class TrackletFrame:
    """One frame of a tracklet: the observation and that frame's camera.

    Attributes:
        stamp_ns: capture time, nanoseconds.
        observation: the detection.
        T_odom_cam: ``(4, 4)`` camera pose in odom, or None when ego-motion was missing.
        K: ``(3, 3)`` intrinsics.
    """

    stamp_ns: int
    observation: Observation
    T_odom_cam: np.ndarray | None
    K: np.ndarray


@dataclass
class ObjectTrack:
    """A short-term tracklet: the last ``window`` frames of one object.

    Attributes:
        tracklet_id: id unique within the buffer's lifetime.
        class_label: class of the first detection.
        frames: the sliding window, oldest first.
        embedding: running mean appearance embedding (L2-normalised).
        misses: consecutive frames without a match.
        hits: frames matched in total.
        warm: solver warm start kept by :mod:`refine` (stamp -> pose, damping).
    """

    tracklet_id: int
    class_label: str
    frames: deque
    embedding: np.ndarray
    misses: int = 0
    hits: int = 1
    warm: dict = field(default_factory=dict)

    @property
    def last(self) -> TrackletFrame:
        """The newest frame."""
        return self.frames[-1]


@dataclass
class TrackletConfig:
    """Association and window settings.

    Attributes:
        window: frames kept per tracklet (capped at ``MAX_WINDOW``): the object BA takes the newest
            ``RefineConfig.window`` of them, the static test all of them.
        iou_min: minimum IoU between the motion-compensated predicted box and a detection.
        appearance_min: minimum embedding cosine (when both have embeddings).
        ambiguity_margin: a link is refused when another candidate scores within this margin
            (conservative: a wrong link is worse than a missing one).
        iou_weight: weight of IoU vs appearance in the link score.
        max_misses: frames a tracklet survives without a match before it expires.
        max_tracklets: hard bound; the stalest tracklets are dropped beyond it.
        embedding_momentum: running-mean factor for the tracklet embedding.
    """

    window: int = 16
    iou_min: float = 0.3
    appearance_min: float = 0.5
    ambiguity_margin: float = 0.05
    iou_weight: float = 0.5
    max_misses: int = 2
    max_tracklets: int = 256
    embedding_momentum: float = 0.8


MAX_WINDOW = 32


def predict_box(track: ObjectTrack, T_odom_cam: np.ndarray | None, K: np.ndarray, dt_s: float) -> np.ndarray:
    """The tracklet's last 2D box moved to the current frame (motion compensation), pixels.

    The last 3D centre is carried to odom with the last ego pose, advanced by the tracklet's
    constant velocity (from its last two frames with ego-motion), put into the current camera and
    projected; the box is shifted to that projection and scaled by the depth ratio. Without
    ego-motion (either frame) the last box is returned unchanged.
    """
    last = track.last
    box = np.asarray(last.observation.box_2d, np.float64)
    if T_odom_cam is None or last.T_odom_cam is None or not np.isfinite(T_odom_cam).all():
        return box
    c_odom = last.T_odom_cam[:3, :3] @ last.observation.center_cam + last.T_odom_cam[:3, 3]
    if len(track.frames) >= 2 and track.frames[-2].T_odom_cam is not None:
        prev = track.frames[-2]
        p_odom = prev.T_odom_cam[:3, :3] @ prev.observation.center_cam + prev.T_odom_cam[:3, 3]
        dt_prev = (last.stamp_ns - prev.stamp_ns) * 1e-9
        if dt_prev > 0:
            c_odom = c_odom + (c_odom - p_odom) / dt_prev * dt_s
    T_cam_odom = np.linalg.inv(T_odom_cam)
    c_new = T_cam_odom[:3, :3] @ c_odom + T_cam_odom[:3, 3]
    z_old = float(last.observation.center_cam[2])
    if not (c_new[2] > 0.1 and z_old > 0.1 and np.isfinite(c_new).all()):
        return box
    uv_old = K[:2, :2] @ (last.observation.center_cam[:2] / z_old) + K[:2, 2]
    uv_new = K[:2, :2] @ (c_new[:2] / c_new[2]) + K[:2, 2]
    s = z_old / c_new[2]
    ctr = 0.5 * (box[:2] + box[2:])
    half = 0.5 * (box[2:] - box[:2]) * s
    ctr = ctr + (uv_new - uv_old)
    return np.concatenate([ctr - half, ctr + half])


def _appearance(app: np.ndarray, track_emb: list[np.ndarray], det_emb: list[np.ndarray]) -> np.ndarray:
    """Cosine similarities ``(T, N)``; pairs where either side lacks an embedding keep ``app``'s value."""
    dims = {e.shape for e in track_emb + det_emb if e.size}
    if len(dims) != 1:
        return app
    (d,) = dims.pop()
    te = np.stack([_unit(np.asarray(e, np.float64)) if e.size else np.zeros(d) for e in track_emb])
    de = np.stack([_unit(np.asarray(e, np.float64)) if e.size else np.zeros(d) for e in det_emb])
    have = (np.abs(te).sum(1) > 0)[:, None] & (np.abs(de).sum(1) > 0)[None, :]
    return np.where(have, te @ de.T, app)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 and np.isfinite(n) else v


def observation_problem(o: Observation) -> str:
    """Why an observation cannot be used, or ``""`` when it can.

    The reasons are ``nonfinite_box``, ``nonfinite_pose``, ``nonfinite_size``, ``nonfinite_std``,
    ``nonfinite_score``, ``nonfinite_features``.
    """
    checks = (("box", (o.box_2d,)), ("pose", (o.center_cam, o.R_cam_obj)), ("size", (o.size_lwh,)),
              ("std", ([o.depth_std, o.lateral_std, o.yaw_std],)), ("score", ([o.score],)),
              ("features", (o.embedding, o.sample_uv, o.descriptors)))
    for name, arrays in checks:
        if not all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays):
            return f"nonfinite_{name}"
    return ""


class TrackletBuffer:
    """Keeps tracklets, associates each frame's detections to them and expires stale ones.

    Memory is bounded: at most ``max_tracklets`` tracklets of at most ``min(window, MAX_WINDOW)``
    frames each.
    """

    def __init__(self, config: TrackletConfig | None = None) -> None:
        self.config = config or TrackletConfig()
        if self.config.window < 1:
            raise TrackletError(f"window must be >= 1, got {self.config.window}")
        self.window = min(int(self.config.window), MAX_WINDOW)
        self.tracks: dict[int, ObjectTrack] = {}
        self._next_id = 1
        self._last_stamp_ns: int | None = None
        self.last_dropped: dict[str, int] = {}

    def update(
        self, stamp_ns: int, observations: list[Observation], T_odom_cam: np.ndarray | None, K: np.ndarray
    ) -> tuple[list[ObjectTrack], list[int]]:
        """Associate one frame's detections and advance the windows.

        Args:
            stamp_ns: capture time of the frame, nanoseconds.
            observations: the frame's detections.
            T_odom_cam: ``(4, 4)`` ego camera pose, or None when ego-motion is missing.
            K: ``(3, 3)`` intrinsics.

        Returns:
            ``(tracks, assignment)``: the tracklets seen in this frame, and for each observation
            the tracklet id it was appended to (new tracklets for unmatched detections), -1 for an
            observation with a non-finite value, which is left out and counted by reason in
            ``last_dropped`` (:func:`observation_problem`).
        """
        cfg = self.config
        if T_odom_cam is not None and not np.isfinite(np.asarray(T_odom_cam)).all():
            T_odom_cam = None
        dt_s = 0.0 if self._last_stamp_ns is None else max(0.0, (stamp_ns - self._last_stamp_ns) * 1e-9)
        self._last_stamp_ns = stamp_ns
        tracks = list(self.tracks.values())
        problems = [observation_problem(o) for o in observations]
        ok_obs = [i for i, why in enumerate(problems) if not why]
        self.last_dropped = dict(Counter(why for why in problems if why))
        assignment = [-1] * len(observations)
        matched_tracks: set[int] = set()
        if tracks and ok_obs:
            pred = torch.as_tensor(np.stack([predict_box(t, T_odom_cam, K, dt_s) for t in tracks]))
            dets = torch.as_tensor(np.stack([np.asarray(observations[i].box_2d, np.float64) for i in ok_obs]))
            iou = iou_2d(pred, dets).numpy()
            app = _appearance(np.ones_like(iou), [t.embedding for t in tracks], [observations[i].embedding for i in ok_obs])
            same = np.array([[t.class_label == observations[i].class_label for i in ok_obs] for t in tracks])
            gate = (iou >= cfg.iou_min) & (app >= cfg.appearance_min) & same
            score = np.where(gate, cfg.iou_weight * iou + (1 - cfg.iou_weight) * app, -np.inf)
            # greedy best-first with an ambiguity check in both directions
            for a, j in sorted(zip(*np.nonzero(gate)), key=lambda aj: -score[aj]):
                if a in matched_tracks or assignment[ok_obs[j]] != -1:
                    continue
                row = np.delete(score[a], j)
                col = np.delete(score[:, j], a)
                rival = max(row.max(initial=-np.inf), col.max(initial=-np.inf))
                if rival > score[a, j] - cfg.ambiguity_margin:
                    continue
                assignment[ok_obs[j]] = tracks[a].tracklet_id
                matched_tracks.add(int(a))
        seen = []
        for i, o in enumerate(observations):
            if i not in ok_obs:
                continue
            frame = TrackletFrame(int(stamp_ns), o, None if T_odom_cam is None else np.asarray(T_odom_cam, np.float64),
                                  np.asarray(K, np.float64))
            if assignment[i] != -1:
                t = self.tracks[assignment[i]]
                t.frames.append(frame)
                t.misses, t.hits = 0, t.hits + 1
                if o.embedding.size and t.embedding.shape == o.embedding.shape:
                    m = cfg.embedding_momentum
                    t.embedding = _unit(m * t.embedding + (1 - m) * _unit(np.asarray(o.embedding, np.float64)))
            else:
                t = ObjectTrack(self._next_id, o.class_label, deque([frame], maxlen=self.window),
                                _unit(np.asarray(o.embedding, np.float64)))
                self.tracks[t.tracklet_id] = t
                assignment[i] = t.tracklet_id
                self._next_id += 1
            seen.append(t)
        seen_ids = {t.tracklet_id for t in seen}
        for tid in list(self.tracks):
            if tid not in seen_ids:
                self.tracks[tid].misses += 1
                if self.tracks[tid].misses > cfg.max_misses:
                    del self.tracks[tid]
        if len(self.tracks) > cfg.max_tracklets:
            stale = sorted(self.tracks.values(), key=lambda t: (-t.misses, t.last.stamp_ns))
            for t in stale[: len(self.tracks) - cfg.max_tracklets]:
                del self.tracks[t.tracklet_id]
        return [t for t in seen if t.tracklet_id in self.tracks], assignment

    def __len__(self) -> int:
        return len(self.tracks)


def observations_from_arrays(labels: list[str], scores: np.ndarray, box_2d: np.ndarray, center_cam: np.ndarray,
                             yaw: np.ndarray, size_lwh: np.ndarray, depth_std: np.ndarray, lateral_std: np.ndarray,
                             yaw_std: np.ndarray, embedding: np.ndarray, sample_uv: np.ndarray,
                             descriptors: np.ndarray) -> list[Observation]:
    """One frame's detections as arrays over ``N`` objects -> the buffer's records, camera frame.

    Args:
        labels: class names; scores ``(N,)``; box_2d ``(N, 4)`` px; center_cam ``(N, 3)`` m;
            yaw ``(N,)`` KITTI rotation_y; size_lwh ``(N, 3)`` m; depth_std, lateral_std (m),
            yaw_std (rad) ``(N,)``; embedding ``(N, E)``; sample_uv ``(N, S, 2)`` px;
            descriptors ``(N, S, D)``.
    """
    n = len(labels)
    if n == 0:
        return []
    R = rotation_cam_from_yaw(torch.as_tensor(np.asarray(yaw, np.float64))).numpy()
    box = np.asarray(box_2d, np.float64)
    return [Observation(box_2d=box[i], center_cam=center_cam[i], R_cam_obj=R[i], size_lwh=size_lwh[i],
                        depth_std=float(depth_std[i]), lateral_std=float(lateral_std[i]), yaw_std=float(yaw_std[i]),
                        score=float(scores[i]), class_label=labels[i], embedding=embedding[i], sample_uv=sample_uv[i],
                        descriptors=descriptors[i]) for i in range(n)]


def observations_from_detections(det: Any, names: list[str]) -> list[Observation]:
    """Decoded detector output (``core.detection.decode.Detections``) -> the buffer's records, camera frame.

    Args:
        det: the decoded detections of one image.
        names: class name of each detection (``DetectionResult.class_names``).
    """
    n = len(det)
    if n == 0:
        return []
    if len(names) != n:
        raise TrackletError(f"need one class name per detection ({n}), got {len(names)}")
    f64, f32 = (lambda t: t.double().numpy()), (lambda t: t.float().numpy())  # noqa: E731
    return observations_from_arrays(names, f32(det.scores), f64(det.box_2d), f64(det.center_cam), f64(det.yaw),
                                    f64(det.size_lwh), f32(det.depth_std), f32(det.lateral_std), f32(det.yaw_std),
                                    f32(det.embedding), f32(det.sample_uv), f32(det.descriptors))


def observation_from_box(
    center_cam: np.ndarray, R_cam_obj: np.ndarray, size_lwh: np.ndarray, K: np.ndarray, **kwargs
) -> Observation:
    """An :class:`Observation` whose 2D box is the projection of the 3D box (tests, synthetic data)."""
    from ba_perception.core.geometry import box_corners, project_points

    corners = box_corners(torch.as_tensor(R_cam_obj, dtype=torch.float64), torch.as_tensor(center_cam, dtype=torch.float64),
                          torch.as_tensor(size_lwh, dtype=torch.float64))
    uv = project_points(corners, torch.as_tensor(K, dtype=torch.float64))
    box = torch.cat([uv.amin(0), uv.amax(0)]).numpy()
    if not math.isfinite(float(box.sum())):
        raise TrackletError("box is not in front of the camera")
    return Observation(box_2d=box, center_cam=np.asarray(center_cam, np.float64), R_cam_obj=np.asarray(R_cam_obj, np.float64),
                       size_lwh=np.asarray(size_lwh, np.float64), **kwargs)
