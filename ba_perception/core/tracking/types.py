"""Plain records the tracker takes and returns: per-frame detections and per-track outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

STATUS_TENTATIVE = 0  # fewer than n_init hits (Track3D.STATUS_TENTATIVE)
STATUS_CONFIRMED = 1  # confirmed and matched this frame
STATUS_COASTING = 2  # confirmed, unmatched, predicted by the motion model


class TrackingInputError(ValueError):
    """Raised when a detection batch has inconsistent array shapes (a caller bug, not bad data)."""


def _as_float(a, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    ok = arr.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise TrackingInputError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


@dataclass
class Detections:
    """One frame of 3D detections in ``odom``, as arrays over ``N`` objects.

    Attributes:
        centers: ``(N, 3)`` box centres in odom, metres.
        yaws: ``(N,)`` yaw about odom +z of the object's forward axis, radians.
        sizes: ``(N, 3)`` ``(l, w, h)`` metres.
        labels: ``N`` class labels (``"car"``, ``"pedestrian"``, ...).
        scores: ``(N,)`` confidences in ``[0, 1]``.
        boxes_2d: ``(N, 4)`` image boxes ``(x1, y1, x2, y2)`` pixels, or None (NaN rows = unknown).
        embeddings: ``(N, D)`` appearance embeddings, or None (NaN / zero rows = unknown).
        covariances: ``(N, 3, 3)`` centre covariance in odom, m^2, or None (class default).
        static: ``(N,)`` bool, the object BA judged the object not moving, or None (unknown).
        velocities: ``(N, 3)`` velocity in odom, m/s (the object BA's over its window), or None
            (NaN rows = unknown).
        velocity_covariances: ``(N, 3, 3)`` their covariance, (m/s)^2, or None (NaN rows = unknown).

    Raises:
        TrackingInputError: when array lengths or shapes disagree. Non-finite *values* are not an
        error here: the tracker drops or repairs them and counts them.
    """

    centers: np.ndarray
    yaws: np.ndarray
    sizes: np.ndarray
    labels: list[str] | np.ndarray
    scores: np.ndarray | None = None
    boxes_2d: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    covariances: np.ndarray | None = None
    static: np.ndarray | None = None
    velocities: np.ndarray | None = None
    velocity_covariances: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.centers = _as_float(self.centers, "centers", (None, 3))
        n = self.centers.shape[0]
        self.yaws = _as_float(self.yaws, "yaws", (n,))
        self.sizes = _as_float(self.sizes, "sizes", (n, 3))
        self.labels = np.asarray(self.labels, dtype=object).reshape(-1) if n else np.zeros(0, dtype=object)
        if self.labels.shape != (n,):
            raise TrackingInputError(f"labels must have {n} entries, got {self.labels.shape[0]}")
        self.scores = np.ones(n) if self.scores is None else _as_float(self.scores, "scores", (n,))
        if self.boxes_2d is not None:
            self.boxes_2d = _as_float(self.boxes_2d, "boxes_2d", (n, 4))
        if self.embeddings is not None:
            self.embeddings = _as_float(self.embeddings, "embeddings", (n, None))
        if self.covariances is not None:
            self.covariances = _as_float(self.covariances, "covariances", (n, 3, 3))
        if self.static is not None:
            self.static = np.asarray(self.static, dtype=bool).reshape(-1)
            if self.static.shape != (n,):
                raise TrackingInputError(f"static must have {n} entries, got {self.static.shape[0]}")
        if self.velocities is not None:
            self.velocities = _as_float(self.velocities, "velocities", (n, 3))
        if self.velocity_covariances is not None:
            self.velocity_covariances = _as_float(self.velocity_covariances, "velocity_covariances", (n, 3, 3))

    def __len__(self) -> int:
        return self.centers.shape[0]

    @classmethod
    def empty(cls) -> Detections:
        """A frame with no detections."""
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), [])

    @classmethod
    def from_boxes(cls, centers: ArrayLike, yaws: ArrayLike, sizes: ArrayLike, labels: Sequence[str],
                   scores: ArrayLike, boxes_2d: ArrayLike, embeddings: Sequence[ArrayLike], covariances: ArrayLike,
                   refined: ArrayLike | None = None, is_static: ArrayLike | None = None,
                   velocities: ArrayLike | None = None, velocity_covariances: ArrayLike | None = None) -> Detections:
        """The tracker's input from boxes in odom: the one place the input's conventions are applied.

        Every producer (track_buffer_node's Detection3DArray in tracker_node, the object BA's
        boxes in evaluation and benchmarks, single-frame observations) comes through here.

        Args:
            centers: ``(N, 3)`` odom, m. yaws: ``(N,)`` rad about odom +z. sizes, labels, scores,
                boxes_2d: as the constructor.
            embeddings: one vector per box; passed on only when all have the same non-zero length.
            covariances: ``(N, 3, 3)`` centre covariance, m^2; one without a positive diagonal
                becomes NaN (unknown: the tracker uses its class default).
            refined, is_static: ``(N,)`` bool from the object BA, or None (single-frame boxes):
                ``static`` is ``refined & is_static``.
            velocities, velocity_covariances: ``(N, 3)`` m/s and ``(N, 3, 3)``; rows of boxes that
                are not refined become NaN (unknown).
        """
        n = len(labels)
        if n == 0:
            return cls.empty()
        try:
            return cls._from_boxes(n, centers, yaws, sizes, labels, scores, boxes_2d, embeddings, covariances, refined,
                                   is_static, velocities, velocity_covariances)
        except ValueError as err:  # ragged or mis-sized per-box values
            if isinstance(err, TrackingInputError):
                raise
            raise TrackingInputError(f"inconsistent detection arrays: {err}") from err

    @classmethod
    def _from_boxes(cls, n, centers, yaws, sizes, labels, scores, boxes_2d, embeddings, covariances, refined, is_static,
                    velocities, velocity_covariances) -> Detections:
        cov = np.array(covariances, np.float64).reshape(n, 3, 3)
        cov[~(np.diagonal(cov, axis1=1, axis2=2) > 0).all(axis=1)] = np.nan
        emb = [np.asarray(e, np.float64).ravel() for e in embeddings]
        dims = {e.size for e in emb}
        static = vel = vcov = None
        if refined is not None:
            ref = np.asarray(refined, bool).reshape(n)
            static = ref & np.asarray(is_static, bool).reshape(n)
            vel = np.where(ref[:, None], np.asarray(velocities, np.float64).reshape(n, 3), np.nan)
            vcov = np.asarray(velocity_covariances, np.float64).reshape(n, 3, 3)
        return cls(centers=np.asarray(centers, np.float64).reshape(n, 3), yaws=np.asarray(yaws, np.float64).reshape(n),
                   sizes=np.asarray(sizes, np.float64).reshape(n, 3), labels=list(labels),
                   scores=np.asarray(scores, np.float64).reshape(n), boxes_2d=np.asarray(boxes_2d, np.float64).reshape(n, 4),
                   embeddings=np.stack(emb) if len(dims) == 1 and 0 not in dims else None, covariances=cov,
                   static=static, velocities=vel, velocity_covariances=vcov)

    @classmethod
    def from_camera(cls, T_odom_cam: np.ndarray, centers_cam: np.ndarray, rotation_y: np.ndarray, depth_std: np.ndarray,
                    lateral_std: np.ndarray, sizes: np.ndarray, labels: Sequence[str], scores: np.ndarray,
                    boxes_2d: np.ndarray, embeddings: Sequence[np.ndarray]) -> Detections:
        """Single-frame camera detections moved to odom, with the ray-shaped centre covariance.

        Args:
            T_odom_cam: ``(4, 4)`` camera optical frame in odom at capture.
            centers_cam: ``(N, 3)`` box centres, camera frame, metres. rotation_y: ``(N,)`` KITTI yaw.
            depth_std, lateral_std: ``(N,)`` metres along / across the viewing ray.
            sizes, labels, scores, boxes_2d, embeddings: as :meth:`from_boxes`.
        """
        if len(centers_cam) == 0:
            return cls.empty()
        import torch

        from ba_perception.core import geometry

        Tt = torch.as_tensor(np.asarray(T_odom_cam, np.float64))
        ct = torch.as_tensor(np.asarray(centers_cam, np.float64))
        c, yaw = geometry.boxes_cam_to_frame(Tt, ct, torch.as_tensor(np.asarray(rotation_y, np.float64)))
        cov_cam = geometry.ray_covariance(ct, torch.as_tensor(np.asarray(depth_std, np.float64)),
                                          torch.as_tensor(np.asarray(lateral_std, np.float64)))
        R = Tt[:3, :3]
        return cls.from_boxes(c.numpy(), yaw.numpy(), sizes, labels, scores, boxes_2d, embeddings, (R @ cov_cam @ R.T).numpy())


@dataclass
class TrackOutput:
    """One live track after a frame, in ``odom``.

    Attributes:
        track_id: persistent id, never reused within a tracker's life (also across resets).
        class_label: class of the track.
        status: ``STATUS_TENTATIVE``, ``STATUS_CONFIRMED`` or ``STATUS_COASTING``.
        score: score of the last matched detection.
        center: ``(3,)`` filtered centre, metres. velocity: ``(3,)`` m/s.
        yaw: radians about +z. size: ``(3,)`` ``(l, w, h)`` metres.
        position_cov: ``(3, 3)`` centre covariance, m^2. velocity_cov: ``(3, 3)`` (m/s)^2.
        age: frames since birth. hits: frames with a matched detection.
        frames_since_update: 0 when matched this frame.
        box_2d: ``(4,)`` last matched image box, pixels (NaN when unknown).
        detection_index: index into this frame's input detections, -1 when unmatched.
    """

    track_id: int
    class_label: str
    status: int
    score: float
    center: np.ndarray
    velocity: np.ndarray
    yaw: float
    size: np.ndarray
    position_cov: np.ndarray
    velocity_cov: np.ndarray
    age: int
    hits: int
    frames_since_update: int
    box_2d: np.ndarray
    detection_index: int = -1
