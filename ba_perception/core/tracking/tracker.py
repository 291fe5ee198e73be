"""The 3D multi-object tracker: prediction, gated association (graph matching or Hungarian), management.

One public entry: ``Tracker(config).step(stamp_ns, detections) -> list[TrackOutput]``. Tracks
live in ``odom`` and are stored as arrays over tracks (struct of arrays) so prediction, gating,
affinities and updates run batched. Bad input (empty frames, NaN boxes, duplicates, missing
embeddings, time going backwards) is repaired or dropped and counted in ``Tracker.counters``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ba_perception.core.config import config_from_params
from ba_perception.core.tracking import kalman
from ba_perception.core.tracking.affinity import (
    centre_dist2,
    cosine_matrix,
    edge_affinity_batch,
    gate_3d,
    image_edge_sq,
    iou_2d_np,
    node_affinity,
    pair_iou_2d,
)
from ba_perception.core.tracking.matching import QAP_SOLVERS, hungarian, solve_qap
from ba_perception.core.tracking.types import (
    STATUS_COASTING,
    STATUS_CONFIRMED,
    STATUS_TENTATIVE,
    Detections,
    TrackOutput,
)

METHODS = ("graph", "hungarian_3d", "hungarian_iou")
MAX_COORD_M = 1e6  # detections with a centre coordinate beyond this (metres) are invalid
MAX_SPEED_MPS = 1e3  # velocity measurements faster than this are ignored
EMB_DIM_SWITCH_FRAMES = 3  # consecutive frames of another embedding length before the tracker adopts it


class TrackerConfigError(ValueError):
    """Raised for an invalid tracker configuration."""


@dataclass(frozen=True)
class ClassParams:
    """Per-class motion and measurement noise.

    Attributes:
        accel_std_xy, accel_std_z: white-acceleration process noise, m/s^2.
        meas_std_xy, meas_std_z: centre measurement noise used when a detection has no covariance, m.
        init_vel_std: prior velocity standard deviation of a new track, m/s.
    """

    accel_std_xy: float
    accel_std_z: float
    meas_std_xy: float
    meas_std_z: float
    init_vel_std: float


DEFAULT_CLASS_PARAMS: dict[str, ClassParams] = {
    "car": ClassParams(3.0, 0.3, 0.5, 0.2, 6.0),
    "pedestrian": ClassParams(1.5, 0.2, 0.3, 0.15, 1.5),
    "cyclist": ClassParams(2.0, 0.2, 0.4, 0.15, 4.0),
    "default": ClassParams(2.5, 0.3, 0.5, 0.2, 4.0),
}


@dataclass
class TrackerConfig:
    """Tracker parameters (defaults suit 10 Hz driving scenes).

    Attributes:
        method: ``graph`` (3D + appearance + IoU nodes, relative-position edges, QAP),
            ``hungarian_3d`` (Mahalanobis only), ``hungarian_iou`` (2D IoU only, no motion gate).
        solver: graph-matching solver, one of ``matching.QAP_SOLVERS``.
        chi2_gate: gate on squared Mahalanobis distance (3 dof, 16.27 = 99.9 %).
        max_gate_m: hard cap on centre distance for any match, metres.
        iou_gate: minimum 2D IoU for ``hungarian_iou``.
        w_3d, w_app, w_iou: node affinity weights.
        w_edge, edge_sigma_m: edge affinity weight and relative-position tolerance, metres.
        edge_mahalanobis: measure relative-position disagreement under the four centres'
            covariances (plus ``edge_sigma_m^2 I``) instead of the isotropic ``edge_sigma_m``.
        edge_image_sigma: the edges use the image layout where both tracks were seen last frame
            (the 3D term elsewhere), with this tolerance as a fraction of the box height.
        max_qap_size: components with more tracks or detections than this use linear assignment.
        rrwm_iters, rrwm_sk_iters: outer and Sinkhorn iteration caps of the ``rrwm`` solver.
        min_affinity: minimum node affinity of an accepted match.
        rescue_iou, rescue_cos, rescue_max_m: appearance rescue of the ``graph``
            gate (``rescue_iou`` 0 disables it). A track matched last frame with no candidate inside
            the 3D gate gets a detection as a candidate (3D term 0) when its last 2D box overlaps the
            detection's by IoU >= ``rescue_iou``, their embeddings agree with cosine >= ``rescue_cos``
            and the centres are within ``rescue_max_m``: monocular depth jumps by metres from frame
            to frame while the image box and the appearance stay put.
        n_init: hits to confirm a track. max_age: misses before a confirmed track is deleted.
        tentative_max_age: misses before a tentative track is deleted.
        reid: re-identify lost / far-coasting tracks on appearance + 3D after the main stage.
        reid_window_s: how long deleted confirmed tracks stay re-identifiable, seconds.
        reid_min_cos: minimum embedding cosine for re-identification.
        reid_radius_m, reid_speed_tol_mps: re-id gate radius around the constant-velocity
            extrapolation: ``radius_m + speed_tol * time_since_seen``.
        dup_dist_m: same-class detections closer than this are duplicates (lower score dropped).
        time_reset_gap_s: a forward stamp jump larger than this resets like a backward jump.
        yaw_gain: blend factor of a new yaw measurement. size_window, emb_window: running-mean
            lengths of size and appearance embedding.
        min_score_new: minimum detection score to start a track (lower-scored detections only
            extend existing tracks).
        velocity_std_mps: a detection with a velocity (``Detections.velocities``, the object BA's,
            not judged static) also measures the track's velocity, with its covariance plus this
            std squared (m/s; a floor: the object BA's covariance is overconfident), and a new
            track starts from it; 0 = off.
        class_params: per-class noise; unknown classes use ``"default"``.
        max_detections: detections used per frame; beyond it the lowest-scored are dropped and counted
            (bounds the per-frame O(N^2) work and memory).
        max_tracks: live tracks; beyond it no new track is started (counted).
        first_track_id: the first id handed out; ids then only increase (also across resets); 0 = the wall
            clock in microseconds when the tracker is made, so a restarted tracker never reuses an id.
    """

    method: str = "graph"
    solver: str = "rrwm"
    chi2_gate: float = 16.27
    max_gate_m: float = 8.0
    iou_gate: float = 0.1
    w_3d: float = 1.0
    w_app: float = 2.0
    w_iou: float = 0.5
    w_edge: float = 0.25
    edge_sigma_m: float = 1.0
    edge_mahalanobis: bool = True
    edge_image_sigma: float = 0.5
    max_qap_size: int = 10
    rrwm_iters: int = 15
    rrwm_sk_iters: int = 5
    min_affinity: float = 0.05
    rescue_iou: float = 0.3
    rescue_cos: float = 0.5
    rescue_max_m: float = 25.0
    n_init: int = 3
    max_age: int = 20
    tentative_max_age: int = 1
    reid: bool = True
    reid_window_s: float = 5.0
    reid_min_cos: float = 0.7
    reid_radius_m: float = 2.0
    reid_speed_tol_mps: float = 2.0
    dup_dist_m: float = 0.25
    time_reset_gap_s: float = 10.0
    yaw_gain: float = 0.5
    size_window: int = 20
    emb_window: int = 3
    min_score_new: float = 0.2
    velocity_std_mps: float = 2.0
    max_detections: int = 256
    max_tracks: int = 512
    first_track_id: int = 0
    class_params: dict[str, ClassParams] = field(default_factory=lambda: dict(DEFAULT_CLASS_PARAMS))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrackerConfig:
        """The fields present in ``params`` (e.g. tracker_node's parameters), defaults for the rest."""
        return config_from_params(cls, params)

    def validate(self) -> None:
        """Raise ``TrackerConfigError`` naming the first invalid field."""
        if self.method not in METHODS:
            raise TrackerConfigError(f"method {self.method!r} unknown; choose one of {METHODS}")
        if self.solver not in QAP_SOLVERS:
            raise TrackerConfigError(f"solver {self.solver!r} unknown; choose one of {QAP_SOLVERS}")
        if self.n_init < 1 or self.max_age < 0 or self.tentative_max_age < 0:
            raise TrackerConfigError("n_init must be >= 1 and max ages >= 0")
        if self.chi2_gate <= 0 or self.max_gate_m <= 0 or self.edge_sigma_m <= 0:
            raise TrackerConfigError("chi2_gate, max_gate_m and edge_sigma_m must be > 0")
        if self.edge_image_sigma <= 0:
            raise TrackerConfigError("edge_image_sigma must be > 0")
        if not self.velocity_std_mps >= 0:
            raise TrackerConfigError(f"velocity_std_mps must be >= 0, got {self.velocity_std_mps}")
        if self.max_detections < 1 or self.max_tracks < 1 or not 0 <= self.first_track_id < 2**62:
            raise TrackerConfigError("max_detections and max_tracks must be >= 1 and first_track_id in [0, 2^62)")
        if "default" not in self.class_params:
            raise TrackerConfigError("class_params needs a 'default' entry")


COUNTER_NAMES = (
    "frames",
    "detections_in",
    "empty_frames",
    "invalid_detections",  # non-finite or non-positive centre / size / yaw: dropped
    "detections_over_limit",  # beyond max_detections in one frame: the lowest-scored dropped
    "duplicate_detections",
    "missing_embedding",  # detections without a usable embedding (still tracked on geometry)
    "embedding_dim_mismatch",
    "missing_box_2d",
    "bad_covariance",  # replaced by the class default
    "time_backwards_resets",
    "time_gap_resets",
    "matched",
    "velocity_measurements",  # matched / new tracks updated with a detection's velocity, or zero for static ones
    "reidentified",
    "tracks_created",
    "tracks_confirmed",
    "tracks_deleted",
    "births_over_limit",  # new tracks not started: max_tracks live tracks already
    "nonfinite_tracks",  # tracks whose state overflowed to NaN/inf: deleted
    "rescued_pairs",  # candidates outside the 3D gate kept on 2D overlap + appearance
    "qap_problems",
    "qap_too_large",
    "qap_solver_failures",
)


@dataclass
class _Tracks:
    """Struct of arrays over T tracks (internal)."""

    ids: np.ndarray  # (T,) int64
    cls: np.ndarray  # (T,) int64 class code
    x: np.ndarray  # (T, 6) centre and velocity, odom
    P: np.ndarray  # (T, 6, 6)
    yaw: np.ndarray  # (T,)
    size: np.ndarray  # (T, 3)
    emb: np.ndarray  # (T, D)
    has_emb: np.ndarray  # (T,) bool
    n_emb: np.ndarray  # (T,) int
    box: np.ndarray  # (T, 4)
    has_box: np.ndarray  # (T,) bool
    score: np.ndarray  # (T,)
    hits: np.ndarray  # (T,) int
    age: np.ndarray  # (T,) int
    misses: np.ndarray  # (T,) int, frames since update
    confirmed: np.ndarray  # (T,) bool
    last_seen_ns: np.ndarray  # (T,) int64
    last_pos: np.ndarray  # (T, 3) centre at the last update
    det_idx: np.ndarray  # (T,) int, matched input index this frame or -1

    @classmethod
    def empty(cls, dim: int) -> _Tracks:
        z = np.zeros
        return cls(
            z(0, np.int64), z(0, np.int64), z((0, 6)), z((0, 6, 6)), z(0), z((0, 3)), z((0, dim)),
            z(0, bool), z(0, np.int64), z((0, 4)), z(0, bool), z(0), z(0, np.int64), z(0, np.int64),
            z(0, np.int64), z(0, bool), z(0, np.int64), z((0, 3)), z(0, np.int64),
        )

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take(self, idx: np.ndarray) -> _Tracks:
        return _Tracks(*(getattr(self, f.name)[idx] for f in fields(self)))

    def concat(self, other: _Tracks) -> _Tracks:
        return _Tracks(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)))


@dataclass
class _Frame:
    """Sanitised detections of one frame (internal)."""

    pos: np.ndarray
    yaw: np.ndarray
    size: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    box: np.ndarray
    has_box: np.ndarray
    emb: np.ndarray
    has_emb: np.ndarray
    R: np.ndarray  # measurement covariance incl. the frame-shared ego term
    R_own: np.ndarray  # the detection's own covariance (frame-shared errors excluded)
    orig: np.ndarray  # index into the caller's detections

    def __len__(self) -> int:
        return self.pos.shape[0]


def _wrap(a: np.ndarray) -> np.ndarray:
    return np.remainder(a + math.pi, 2 * math.pi) - math.pi


class Tracker:
    """3D multi-object tracker in ``odom`` with graph-matching or Hungarian association.

    Args:
        config: parameters; validated here.

    Raises:
        TrackerConfigError: invalid configuration.
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = replace(config) if config is not None else TrackerConfig()
        self.config.validate()
        self.counters: dict[str, int] = {name: 0 for name in COUNTER_NAMES}
        self._class_names: list[str] = []
        self._class_codes: dict[str, int] = {}
        self._cp = np.zeros((0, 5))  # per class code: accel_xy, accel_z, meas_xy, meas_z, init_vel
        self._emb_dim = 0
        self._pending_dim = (0, 0)  # (another embedding length seen, consecutive frames with it)
        self._next_id = self.config.first_track_id or time.time_ns() // 1000
        self._last_ns: int | None = None
        self.tracks = _Tracks.empty(0)
        self.lost = _Tracks.empty(0)

    # ------------------------------------------------------------------ public
    def reset(self) -> None:
        """Drop all tracks, the re-identification pool and the embedding length; ids keep increasing."""
        self._emb_dim = 0
        self._pending_dim = (0, 0)
        self.tracks = _Tracks.empty(self._emb_dim)
        self.lost = _Tracks.empty(self._emb_dim)
        self._last_ns = None

    def step(self, stamp_ns: int, detections: Detections) -> list[TrackOutput]:
        """Advance to ``stamp_ns`` and associate this frame's detections.

        Args:
            stamp_ns: capture stamp, nanoseconds. Going backwards (a looped bag) resets the tracker.
            detections: this frame's detections in odom (may be empty).

        Returns:
            All live tracks (tentative, confirmed, coasting) after the update.
        """
        self._step(int(stamp_ns), detections)
        return self.outputs()

    def outputs(self) -> list[TrackOutput]:
        """The live tracks as records (what :meth:`step` returned last)."""
        t = self.tracks
        status = np.where(~t.confirmed, STATUS_TENTATIVE, np.where(t.misses == 0, STATUS_CONFIRMED, STATUS_COASTING))
        names = self._class_names
        return [
            TrackOutput(
                track_id=int(t.ids[k]),
                class_label=names[t.cls[k]],
                status=int(status[k]),
                score=float(t.score[k]),
                center=t.x[k, :3],
                velocity=t.x[k, 3:],
                yaw=float(t.yaw[k]),
                size=t.size[k],
                position_cov=t.P[k, :3, :3],
                velocity_cov=t.P[k, 3:, 3:],
                age=int(t.age[k]),
                hits=int(t.hits[k]),
                frames_since_update=int(t.misses[k]),
                box_2d=t.box[k] if t.has_box[k] else np.full(4, np.nan),
                detection_index=int(t.det_idx[k]),
            )
            for k in range(len(t))
        ]

    # ------------------------------------------------------------------ internals
    def _class_code(self, labels: np.ndarray) -> np.ndarray:
        out = np.empty(labels.shape[0], dtype=np.int64)
        for i, lab in enumerate(labels):
            code = self._class_codes.get(lab)
            if code is None:
                lab = str(lab)
                code = len(self._class_names)
                self._class_codes[lab] = code
                self._class_names.append(lab)
                p = self.config.class_params.get(lab, self.config.class_params["default"])
                row = [p.accel_std_xy, p.accel_std_z, p.meas_std_xy, p.meas_std_z, p.init_vel_std]
                self._cp = np.vstack([self._cp, np.asarray(row)[None]])
            out[i] = code
        return out

    def _set_emb_dim(self, dim: int) -> None:
        self._emb_dim = dim
        for name in ("tracks", "lost"):
            t = getattr(self, name)
            t.emb = np.zeros((len(t), dim))
            t.has_emb = np.zeros(len(t), dtype=bool)
            t.n_emb = np.zeros(len(t), dtype=np.int64)

    def _sanitise(self, d: Detections) -> _Frame:
        c = self.counters
        n = len(d)
        c["detections_in"] += n
        scores, labels = d.scores, np.asarray(d.labels)
        assert scores is not None  # Detections.__post_init__ fills in the default scores
        valid = (
            np.isfinite(d.centers).all(1)
            & np.isfinite(d.sizes).all(1)
            & (d.sizes > 0).all(1)
            & np.isfinite(d.yaws)
        )
        valid &= (np.abs(np.nan_to_num(d.centers)) <= MAX_COORD_M).all(1) & (np.nan_to_num(d.sizes) <= MAX_COORD_M).all(1)
        c["invalid_detections"] += int(n - valid.sum())
        idx = np.nonzero(valid)[0]
        if idx.size > self.config.max_detections:
            c["detections_over_limit"] += int(idx.size - self.config.max_detections)
            best = np.argsort(-np.nan_to_num(scores[idx], nan=0.0), kind="stable")[: self.config.max_detections]
            idx = np.sort(idx[best])
        pos, yaw, size = d.centers[idx], _wrap(d.yaws[idx]), d.sizes[idx]
        score = np.nan_to_num(scores[idx], nan=0.0)
        cls = self._class_code(labels[idx])
        m = idx.shape[0]
        # 2D boxes: optional, NaN / degenerate rows are "unknown".
        if d.boxes_2d is not None:
            box = d.boxes_2d[idx]
            has_box = np.isfinite(box).all(1) & (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        else:
            box, has_box = np.full((m, 4), np.nan), np.zeros(m, dtype=bool)
        c["missing_box_2d"] += int(m - has_box.sum())
        # Embeddings: optional, L2-normalised here; NaN / zero rows are "unknown".
        if d.embeddings is not None and d.embeddings.shape[1] > 0:
            if self._emb_dim == 0:
                self._set_emb_dim(d.embeddings.shape[1])
            if d.embeddings.shape[1] != self._emb_dim:
                # Another length: ignored per object (counted); adopted only when it persists (a new detector).
                c["embedding_dim_mismatch"] += m
                other, frames = self._pending_dim
                self._pending_dim = (d.embeddings.shape[1], frames + 1 if other == d.embeddings.shape[1] else 1)
                if self._pending_dim[1] >= EMB_DIM_SWITCH_FRAMES:
                    self._set_emb_dim(d.embeddings.shape[1])
                    self._pending_dim = (0, 0)
            if d.embeddings.shape[1] != self._emb_dim:
                emb, has_emb = np.zeros((m, self._emb_dim)), np.zeros(m, dtype=bool)
            else:
                self._pending_dim = (0, 0)
                emb = d.embeddings[idx]
                norm = np.linalg.norm(emb, axis=1)
                has_emb = np.isfinite(norm) & (norm > 1e-6)
                emb = np.where(has_emb[:, None], emb / np.where(has_emb, norm, 1.0)[:, None], 0.0)
        else:
            emb, has_emb = np.zeros((m, self._emb_dim)), np.zeros(m, dtype=bool)
        c["missing_embedding"] += int(m - has_emb.sum())
        # Measurement covariance: the detection's when finite with a positive diagonal, else the class default.
        cp = self._cp[cls]
        R = np.zeros((m, 3, 3))
        R[:, 0, 0] = R[:, 1, 1] = cp[:, 2] ** 2
        R[:, 2, 2] = cp[:, 3] ** 2
        if d.covariances is not None and m:
            Rd = d.covariances[idx]
            Rd = 0.5 * (Rd + Rd.transpose(0, 2, 1))
            good = (np.isfinite(Rd).all((1, 2)) & (np.diagonal(Rd, axis1=1, axis2=2) > 0).all(1)
                    & (np.abs(np.nan_to_num(Rd)) <= MAX_COORD_M).all((1, 2)))
            c["bad_covariance"] += int(m - good.sum())
            R = np.where(good[:, None, None], Rd, R)
        R_own = R
        # Duplicates: a detection with a higher-scored same-class neighbour closer than dup_dist_m.
        if m > 1:
            diff = pos[:, None, :] - pos[None, :, :]
            close = (np.einsum("ijk,ijk->ij", diff, diff) < self.config.dup_dist_m**2) & (cls[:, None] == cls[None, :])
            order = np.arange(m)
            better = (score[None, :] > score[:, None]) | ((score[None, :] == score[:, None]) & (order[None, :] < order[:, None]))
            dup = (close & better).any(1)
            if dup.any():
                c["duplicate_detections"] += int(dup.sum())
                k = ~dup
                return _Frame(pos[k], yaw[k], size[k], cls[k], score[k], box[k], has_box[k], emb[k], has_emb[k], R[k], R_own[k], idx[k])
        return _Frame(pos, yaw, size, cls, score, box, has_box, emb, has_emb, R, R_own, idx)

    def _advance_time(self, stamp_ns: int) -> float:
        c = self.counters
        if self._last_ns is None:
            self._last_ns = stamp_ns
            return 0.0
        dt = (stamp_ns - self._last_ns) * 1e-9
        if dt < 0:
            c["time_backwards_resets"] += 1
            self.reset()
            dt = 0.0
        elif dt > self.config.time_reset_gap_s:
            c["time_gap_resets"] += 1
            self.reset()
            dt = 0.0
        self._last_ns = stamp_ns
        return dt

    def _step(self, stamp_ns: int, detections: Detections) -> None:
        c = self.counters
        c["frames"] += 1
        dt = self._advance_time(stamp_ns)
        if len(detections) == 0:
            c["empty_frames"] += 1
        f = self._sanitise(detections)
        t = self.tracks
        t.det_idx = np.full(len(t), -1, dtype=np.int64)
        if len(t):
            cp = self._cp[t.cls]
            t.x, t.P = kalman.predict(t.x, t.P, dt, cp[:, 0], cp[:, 1])
            t.age = t.age + 1
        rows, cols = self._associate(t, f)
        c["matched"] += int(rows.size)
        matched_t = np.zeros(len(t), dtype=bool)
        matched_t[rows] = True
        if rows.size:
            xs, Ps = kalman.update(t.x[rows], t.P[rows], f.pos[cols], f.R[cols])
            xs, Ps = self._measure_velocity(xs, Ps, detections, f.orig[cols])
            t.x[rows], t.P[rows] = xs, Ps
            self._absorb(t, rows, f, cols, stamp_ns)
        t.misses = np.where(matched_t, 0, t.misses + 1)
        free = np.ones(len(f), dtype=bool)
        free[cols] = False
        if self.config.reid and free.any():
            free = self._reidentify(f, free, matched_t, stamp_ns)
        self._birth(f, free, stamp_ns, detections)
        self._prune(stamp_ns)

    def _associate(self, t: _Tracks, f: _Frame) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        T, N = len(t), len(f)
        none = (np.zeros(0, dtype=int), np.zeros(0, dtype=int))
        if T == 0 or N == 0:
            return none
        same = t.cls[:, None] == f.cls[None, :]
        if cfg.method == "hungarian_iou":
            iou = iou_2d_np(t.box, f.box)
            valid = same & t.has_box[:, None] & f.has_box[None, :] & (iou >= cfg.iou_gate)
            return hungarian(iou, valid)
        use_app = cfg.method == "graph" and self._emb_dim > 0
        if use_app:
            cos, has_cos = cosine_matrix(t.emb, t.has_emb, f.emb, f.has_emb)
        dist2 = centre_dist2(t.x[:, :3], f.pos)
        ti, di, d2 = gate_3d(t.x[:, :3], t.P[:, :3, :3], f.pos, f.R, same, cfg.chi2_gate, cfg.max_gate_m, dist2)
        if use_app and cfg.rescue_iou > 0:
            ti, di, d2 = self._rescue(t, f, same, cos, has_cos, dist2, ti, di, d2)
        if ti.size == 0:
            return none
        if cfg.method == "hungarian_3d":
            score = np.zeros((T, N))
            valid = np.zeros((T, N), dtype=bool)
            score[ti, di] = 1.0 - d2 / cfg.chi2_gate
            valid[ti, di] = True
            return hungarian(score, valid)
        # Node affinity on candidates: 3D + appearance + IoU (IoU only for tracks seen last frame).
        iou_c = has_iou_c = cos_c = has_cos_c = None
        if cfg.w_iou > 0:
            fresh = t.has_box & (t.misses == 0)
            iou_c = pair_iou_2d(t.box[ti], f.box[di])
            has_iou_c = fresh[ti] & f.has_box[di]
        if use_app:
            cos_c, has_cos_c = cos[ti, di], has_cos[ti, di]
        aff = node_affinity(d2, cfg.chi2_gate, cos_c, has_cos_c, iou_c, has_iou_c, cfg.w_3d, cfg.w_app, cfg.w_iou)
        keep = aff >= cfg.min_affinity
        ti, di, aff = ti[keep], di[keep], aff[keep]
        node = np.zeros((T, N))
        gate = np.zeros((T, N), dtype=bool)
        node[ti, di] = aff
        gate[ti, di] = True
        if ti.size == 0:
            return hungarian(node, gate)
        score = self._graph_scores(t, f, ti, di, node, gate)
        return hungarian(score, gate)

    def _rescue(
        self, t: _Tracks, f: _Frame, same: np.ndarray, cos: np.ndarray, has_cos: np.ndarray, dist2: np.ndarray,
        ti: np.ndarray, di: np.ndarray, d2: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add appearance-rescued track/detection pairs to the 3D candidates.

        Add the appearance-rescued pairs (see ``TrackerConfig.rescue_iou``) to the 3D candidates,
        with ``d2 = chi2_gate`` (a 3D node term of 0). Only tracks without a 3D candidate are
        rescued: it keeps the gated graph (and the QAPs) as small as before where 3D works.
        """
        cfg = self.config
        fresh = t.has_box & (t.misses == 0)
        fresh[ti] = False  # a track with a candidate inside the 3D gate is not rescued
        if not fresh.any():
            return ti, di, d2
        rows = np.nonzero(fresh)[0]  # the 2D overlap only of the tracks that may be rescued
        iou = iou_2d_np(t.box[rows], f.box)
        ok = (same[rows] & f.has_box[None, :] & has_cos[rows] & (iou >= cfg.rescue_iou) & (cos[rows] >= cfg.rescue_cos)
              & (dist2[rows] <= cfg.rescue_max_m**2))
        ri, rd = np.nonzero(ok)
        ri = rows[ri]
        if ri.size == 0:
            return ti, di, d2
        self.counters["rescued_pairs"] += int(ri.size)
        return np.concatenate([ti, ri]), np.concatenate([di, rd]), np.concatenate([d2, np.full(ri.size, cfg.chi2_gate)])

    def _graph_scores(
        self, t: _Tracks, f: _Frame, ti: np.ndarray, di: np.ndarray, node: np.ndarray, gate: np.ndarray
    ) -> np.ndarray:
        """Assignment scores: node affinity, or the QAP's soft assignment per component.

        Scores for the final projection: node affinity, replaced by the QAP's soft assignment
        inside every connected component of the gated graph with >= 2 tracks and >= 2 detections.
        """
        cfg = self.config
        T, N = node.shape
        lt, ld = _bipartite_components(ti, di, T, N)
        ncomp = int(max(lt.max(initial=-1), ld.max(initial=-1))) + 1
        n1 = np.bincount(lt, minlength=ncomp)
        n2 = np.bincount(ld, minlength=ncomp)
        hard = (n1 >= 2) & (n2 >= 2)
        big = hard & ((n1 > cfg.max_qap_size) | (n2 > cfg.max_qap_size))
        self.counters["qap_too_large"] += int(big.sum())
        hard &= ~big
        B = int(hard.sum())
        if B == 0:
            return node
        self.counters["qap_problems"] += B
        # Solve in a few batches of similar size (padding every problem to the largest one would
        # make one big component cost as much as all of them together): sizes 2-4, 5-8, 9+.
        bucket = np.digitize(np.maximum(n1, n2), [5, 9])
        score = node.copy()
        for bk in np.unique(bucket[hard]):
            if not self._solve_components(t, f, node, gate, lt, ld, hard & (bucket == bk), score):
                return node
        return score

    def _solve_components(
        self, t: _Tracks, f: _Frame, node: np.ndarray, gate: np.ndarray,
        lt: np.ndarray, ld: np.ndarray, chosen: np.ndarray, score: np.ndarray,
    ) -> bool:
        """Solve the QAPs of the ``chosen`` components as one padded batch; write soft assignments into ``score``.

        Returns False (and counts it) when the solver fails.
        """
        cfg = self.config
        B = int(chosen.sum())
        # Batch slot of every component (-1: not in this batch); padded index tables.
        slot = np.full(chosen.size, -1)
        slot[chosen] = np.arange(B)
        rows_pad, s1 = _pad_members(slot[lt], B)
        cols_pad, s2 = _pad_members(slot[ld], B)
        vr, vc = rows_pad >= 0, cols_pad >= 0
        rp, cpd = np.where(vr, rows_pad, 0), np.where(vc, cols_pad, 0)
        valid = vr[:, :, None] & vc[:, None, :]
        pt = np.where(vr[:, :, None], t.x[rp, :3], 0.0)
        pd = np.where(vc[:, :, None], f.pos[cpd], 0.0)
        nb = np.where(valid, node[rp[:, :, None], cpd[:, None, :]], 0.0)
        gb = valid & gate[rp[:, :, None], cpd[:, None, :]]
        rel_t = pt[:, :, None, :] - pt[:, None, :, :]
        rel_d = pd[:, :, None, :] - pd[:, None, :, :]
        ct = cd = None
        if cfg.edge_mahalanobis:
            eye = np.eye(3)
            ct = np.where(vr[:, :, None, None], t.P[rp, :3, :3], eye)
            cd = np.where(vc[:, :, None, None], f.R_own[cpd], eye)
        ok_t = vr & t.has_box[rp] & (t.misses[rp] == 0)
        ok_d = vc & f.has_box[cpd]
        isq = image_edge_sq(np.where(ok_t[..., None], t.box[rp], 0.0), ok_t,
                            np.where(ok_d[..., None], f.box[cpd], 0.0), ok_d, cfg.edge_image_sigma)
        K = edge_affinity_batch(rel_t, rel_d, nb, gb, cfg.edge_sigma_m, cfg.w_edge, ct, cd, isq)
        try:
            X = solve_qap(K, s1, s2, cfg.solver, cfg.rrwm_iters, cfg.rrwm_sk_iters)
            if not np.isfinite(X).all():
                raise FloatingPointError("non-finite soft assignment")
        except (FloatingPointError, ValueError, np.linalg.LinAlgError):
            self.counters["qap_solver_failures"] += 1
            return False
        b, i, a = np.nonzero(valid)
        score[rows_pad[b, i], cols_pad[b, a]] = X[b, i, a]
        return True

    def _absorb(self, t: _Tracks, rows: np.ndarray, f: _Frame, cols: np.ndarray, stamp_ns: int) -> None:
        """Fold matched detections into yaw, size, appearance, box and bookkeeping (batched)."""
        cfg = self.config
        dyaw = _wrap(f.yaw[cols] - t.yaw[rows])
        dyaw = np.where(np.abs(dyaw) > math.pi / 2, _wrap(dyaw + math.pi), dyaw)  # front/back flip
        t.yaw[rows] = _wrap(t.yaw[rows] + cfg.yaw_gain * dyaw)
        n = np.minimum(t.hits[rows], cfg.size_window)[:, None]
        t.size[rows] = t.size[rows] + (f.size[cols] - t.size[rows]) / (n + 1)
        if self._emb_dim:
            he = f.has_emb[cols]
            r, cc = rows[he], cols[he]
            old = t.has_emb[r][:, None]
            k = np.minimum(t.n_emb[r], cfg.emb_window)[:, None]
            e = np.where(old, t.emb[r] + (f.emb[cc] - t.emb[r]) / (k + 1), f.emb[cc])
            t.emb[r] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            t.has_emb[r] = True
            t.n_emb[r] += 1
        t.box[rows] = f.box[cols]
        t.has_box[rows] = f.has_box[cols]
        t.score[rows] = f.score[cols]
        t.hits[rows] += 1
        t.misses[rows] = 0
        t.last_seen_ns[rows] = stamp_ns
        t.last_pos[rows] = f.pos[cols]
        t.det_idx[rows] = f.orig[cols]
        newly = ~t.confirmed[rows] & (t.hits[rows] >= cfg.n_init)
        self.counters["tracks_confirmed"] += int(newly.sum())
        t.confirmed[rows] |= newly

    def _reidentify(self, f: _Frame, free: np.ndarray, matched_t: np.ndarray, stamp_ns: int) -> np.ndarray:
        """Match leftover detections to coasting or recently deleted tracks on appearance + 3D."""
        cfg = self.config
        if self._emb_dim == 0:
            return free
        dets = np.nonzero(free & f.has_emb)[0]
        t = self.tracks
        act = np.nonzero(t.confirmed & ~matched_t & t.has_emb)[0]
        lost_ok = np.nonzero(self.lost.has_emb)[0]
        if dets.size == 0 or act.size + lost_ok.size == 0:
            return free
        cand = t.take(act).concat(self.lost.take(lost_ok))
        dt_seen = (stamp_ns - cand.last_seen_ns) * 1e-9
        pred = cand.last_pos + cand.x[:, 3:] * dt_seen[:, None]
        dist = np.linalg.norm(f.pos[dets][None, :, :] - pred[:, None, :], axis=2)
        cos = cand.emb @ f.emb[dets].T
        radius = cfg.reid_radius_m + cfg.reid_speed_tol_mps * dt_seen
        valid = (cand.cls[:, None] == f.cls[dets][None, :]) & (cos >= cfg.reid_min_cos) & (dist <= radius[:, None])
        r, cidx = hungarian(cos, valid)
        if r.size == 0:
            return free
        self.counters["reidentified"] += int(r.size)
        cols = dets[cidx]
        # Restart the filter at the detection, keeping the track's velocity estimate.
        init = kalman.initial_covariance(f.R[cols], self._cp[cand.cls[r], 4])
        is_act = r < act.size
        ra = act[r[is_act]]
        t.x[ra, :3] = f.pos[cols[is_act]]
        t.P[ra] = init[is_act]
        matched_t[ra] = True
        self._absorb(t, ra, f, cols[is_act], stamp_ns)
        if (~is_act).any():
            li = lost_ok[r[~is_act] - act.size]
            back = self.lost.take(li)
            back.x[:, :3] = f.pos[cols[~is_act]]
            back.P = init[~is_act]
            back.det_idx = np.full(li.size, -1, dtype=np.int64)
            back.age = back.age + 1
            self._absorb(back, np.arange(li.size), f, cols[~is_act], stamp_ns)
            keep = np.ones(len(self.lost), dtype=bool)
            keep[li] = False
            self.lost = self.lost.take(keep)
            self.tracks = t.concat(back)
        free = free.copy()
        free[cols] = False
        return free

    def _measure_velocity(self, x: np.ndarray, P: np.ndarray, d: Detections, orig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kalman update of states ``x`` / ``P`` with the object BA's velocity evidence of detections ``orig``.

        Detections it judged static measure nothing here; the others their own velocity where known
        (its covariance plus ``velocity_std_mps`` squared); a zero std turns it off.
        """
        cfg = self.config
        n = orig.size
        static = d.static[orig] if d.static is not None else np.zeros(n, dtype=bool)
        z, var = np.full((n, 3), np.nan), np.zeros(n)
        if cfg.velocity_std_mps > 0 and d.velocities is not None:
            z[~static], var[~static] = d.velocities[orig][~static], cfg.velocity_std_mps**2
        ok = np.isfinite(z).all(1) & (np.abs(np.nan_to_num(z)) <= MAX_SPEED_MPS).all(1)
        if not ok.any():
            return x, P
        R = np.eye(3) * var[ok, None, None]
        if d.velocity_covariances is not None:
            C = d.velocity_covariances[orig][ok]
            good = (~static[ok] & np.isfinite(C).all((1, 2)) & (np.diagonal(C, axis1=1, axis2=2) > 0).all(1)
                    & (np.abs(np.nan_to_num(C)) <= MAX_SPEED_MPS**2).all((1, 2)))
            R[good] += 0.5 * (C[good] + C[good].transpose(0, 2, 1))
        self.counters["velocity_measurements"] += int(ok.sum())
        x, P = x.copy(), P.copy()
        x[ok], P[ok] = kalman.update(x[ok], P[ok], z[ok], R, block=3)
        return x, P

    def _birth(self, f: _Frame, free: np.ndarray, stamp_ns: int, detections: Detections) -> None:
        cfg = self.config
        new = np.nonzero(free & (f.score >= cfg.min_score_new))[0]
        room = max(cfg.max_tracks - len(self.tracks), 0)
        if new.size > room:
            self.counters["births_over_limit"] += int(new.size - room)
            new = np.sort(new[np.argsort(-f.score[new], kind="stable")[:room]])
        if new.size == 0:
            return
        k = new.size
        cls = f.cls[new]
        x = np.zeros((k, 6))
        x[:, :3] = f.pos[new]
        ids = np.arange(self._next_id, self._next_id + k, dtype=np.int64)
        self._next_id += k
        hits = np.ones(k, dtype=np.int64)
        x, P = self._measure_velocity(x, kalman.initial_covariance(f.R[new], self._cp[cls, 4]), detections, f.orig[new])
        born = _Tracks(
            ids=ids, cls=cls, x=x, P=P,
            yaw=f.yaw[new].copy(), size=f.size[new].copy(), emb=f.emb[new].copy(), has_emb=f.has_emb[new].copy(),
            n_emb=f.has_emb[new].astype(np.int64), box=f.box[new].copy(), has_box=f.has_box[new].copy(),
            score=f.score[new].copy(), hits=hits, age=np.zeros(k, dtype=np.int64), misses=np.zeros(k, dtype=np.int64),
            confirmed=hits >= cfg.n_init, last_seen_ns=np.full(k, stamp_ns, dtype=np.int64),
            last_pos=f.pos[new].copy(), det_idx=f.orig[new].copy(),
        )
        self.counters["tracks_created"] += k
        self.counters["tracks_confirmed"] += int(born.confirmed.sum())
        self.tracks = self.tracks.concat(born)

    def _prune(self, stamp_ns: int) -> None:
        cfg = self.config
        t = self.tracks
        broken = ~(np.isfinite(t.x).all(1) & np.isfinite(t.P).all((1, 2)))
        if broken.any():  # an overflow must not poison the filter for the rest of the run
            self.counters["nonfinite_tracks"] += int(broken.sum())
            t = self.tracks = t.take(np.nonzero(~broken)[0])
        dead_tent = ~t.confirmed & (t.misses > cfg.tentative_max_age)
        dead_conf = t.confirmed & (t.misses > cfg.max_age)
        dead = dead_tent | dead_conf
        if dead.any():
            self.counters["tracks_deleted"] += int(dead.sum())
            if cfg.reid and dead_conf.any():
                self.lost = self.lost.concat(t.take(np.nonzero(dead_conf)[0]))
            self.tracks = t.take(np.nonzero(~dead)[0])
        if len(self.lost):
            fresh = (stamp_ns - self.lost.last_seen_ns) * 1e-9 <= cfg.reid_window_s
            if not fresh.all():
                self.lost = self.lost.take(np.nonzero(fresh)[0])



def _bipartite_components(ti: np.ndarray, di: np.ndarray, T: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a bipartite track/detection graph.

    Connected-component labels ``(T,)``, ``(N,)`` (contiguous from 0) of the bipartite graph
    with edges ``(ti[k], di[k])``, by min-label propagation (a few vectorised sweeps: tracking
    graphs after gating have a small diameter; cheaper here than building a scipy sparse graph).
    """
    lt = np.arange(T)
    ld = np.arange(T, T + N)
    while True:
        nd = ld.copy()
        np.minimum.at(nd, di, lt[ti])
        nt = lt.copy()
        np.minimum.at(nt, ti, nd[di])
        if np.array_equal(nt, lt) and np.array_equal(nd, ld):
            break
        lt, ld = nt, nd
    _, inv = np.unique(np.concatenate([lt, ld]), return_inverse=True)
    return inv[:T], inv[T:]


def _pad_members(slot_of: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Members of each of ``B`` slots as a padded ``(B, max_size)`` index table (-1 = padding).

    Args:
        slot_of: ``(M,)`` slot of every element, -1 for none.

    Returns:
        ``(table, sizes)``.
    """
    idx = np.nonzero(slot_of >= 0)[0]
    idx = idx[np.argsort(slot_of[idx], kind="stable")]
    sl = slot_of[idx]
    sizes = np.bincount(sl, minlength=B)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(idx.size) - starts[sl]
    table = np.full((B, int(sizes.max())), -1)
    table[sl, pos] = idx
    return table, sizes
