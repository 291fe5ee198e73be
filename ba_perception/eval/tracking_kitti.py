"""KITTI-tracking-format result files for the tracker: write tracks, read label files into metric frames.

Line format (KITTI tracking devkit, also written by ``data/kitti.py`` for ground truth):
``frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]`` with
``(x, y, z)`` the *bottom* centre of the box in the camera frame (y down), ``rotation_y`` KITTI's
yaw. Tracker results use ``truncated = occluded = -1``. ``DontCare`` lines are skipped (no ignore
regions: the metrics here count every remaining object).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ba_perception.core.tracking.types import STATUS_CONFIRMED, TrackOutput
from ba_perception.eval.mot import MotFrame

TYPE_OF_CLASS = {"car": "Car", "pedestrian": "Pedestrian", "cyclist": "Cyclist"}


class TrackingKittiError(ValueError):
    """Raised for a malformed KITTI tracking line or inconsistent inputs."""


@dataclass
class KittiRows:
    """Objects of one frame read from a KITTI tracking file.

    Attributes:
        ids: ``(M,)`` track ids. labels: lower-case class names. boxes_2d: ``(M, 4)`` pixels.
        centers_cam: ``(M, 3)`` geometric box centres in the camera optical frame, metres.
        sizes_lwh: ``(M, 3)``. rotation_y: ``(M,)``. scores: ``(M,)`` (1 when absent).
    """

    ids: np.ndarray
    labels: list[str]
    boxes_2d: np.ndarray
    centers_cam: np.ndarray
    sizes_lwh: np.ndarray
    rotation_y: np.ndarray
    scores: np.ndarray


def _empty_rows() -> KittiRows:
    return KittiRows(np.zeros(0, np.int64), [], np.zeros((0, 4)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))


def read_tracking_file(path: str | Path) -> dict[int, KittiRows]:
    """Parse one sequence's KITTI tracking file into ``{frame: rows}`` (frames without lines absent).

    Raises:
        TrackingKittiError: a line with fewer than 17 fields or non-numeric values (names the line).
    """
    per: dict[int, list[list[str]]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 17:
            raise TrackingKittiError(f"{path}:{n}: expected >= 17 fields, got {len(f)}")
        if f[2] == "DontCare":
            continue
        per.setdefault(int(f[0]), []).append(f)
    out: dict[int, KittiRows] = {}
    for frame, rows in per.items():
        try:
            num = np.array([[float(x) for x in r[6:17]] for r in rows])
            scores = np.array([float(r[17]) if len(r) > 17 else 1.0 for r in rows])
            ids = np.array([int(r[1]) for r in rows], dtype=np.int64)
        except ValueError as err:
            raise TrackingKittiError(f"{path}: frame {frame}: non-numeric field") from err
        h, w, l = num[:, 4], num[:, 5], num[:, 6]
        bottom = num[:, 7:10]
        center = bottom - np.stack([np.zeros_like(h), h / 2, np.zeros_like(h)], axis=1)  # up = camera -y
        out[frame] = KittiRows(ids, [r[2].lower() for r in rows], num[:, 0:4], center,
                               np.stack([l, w, h], axis=1), num[:, 10], scores)
    return out


def mot_frames_from_kitti(gt_path: str | Path, pred_path: str | Path, n_frames: int | None = None) -> list[MotFrame]:
    """Metric frames of one sequence from a ground-truth and a result file (KITTI tracking format).

    Args:
        gt_path, pred_path: label files. n_frames: number of frames (default: last frame seen + 1).

    Returns:
        One :class:`MotFrame` per frame with camera-frame centres and 2D boxes, for
        :func:`ba_perception.eval.mot.evaluate_mot` with ``similarity="3d"`` or ``"2d"``.
    """
    gt, pr = read_tracking_file(gt_path), read_tracking_file(pred_path)
    last = max([*gt, *pr], default=-1)
    n = last + 1 if n_frames is None else n_frames
    frames = []
    for k in range(n):
        g, p = gt.get(k, _empty_rows()), pr.get(k, _empty_rows())
        frames.append(MotFrame(
            gt_ids=g.ids, gt_labels=g.labels, pred_ids=p.ids, pred_labels=p.labels,
            gt_centers=g.centers_cam, pred_centers=p.centers_cam, gt_boxes_2d=g.boxes_2d, pred_boxes_2d=p.boxes_2d,
        ))
    return frames


def track_lines(frame_index: int, tracks: Sequence[TrackOutput], T_cam_odom: np.ndarray, confirmed_only: bool = True) -> str:
    """KITTI tracking result lines of one frame's tracks.

    Args:
        frame_index: frame number written in column 1.
        tracks: the tracker's output (odom frame).
        T_cam_odom: ``(4, 4)`` pose mapping odom points into the camera optical frame at capture.
        confirmed_only: write only tracks with ``STATUS_CONFIRMED`` (matched this frame).

    Returns:
        Lines ``frame id Type -1 -1 alpha x1 y1 x2 y2 h w l x y z ry score`` (bottom centre in
        camera coordinates; 2D box ``-1`` when the track has none).
    """
    R, t = T_cam_odom[:3, :3], T_cam_odom[:3, 3]
    out = []
    for tr in tracks:
        if confirmed_only and tr.status != STATUS_CONFIRMED:
            continue
        c = R @ np.asarray(tr.center, float) + t
        fwd = R @ np.array([math.cos(tr.yaw), math.sin(tr.yaw), 0.0])
        ry = math.atan2(-fwd[2], fwd[0])  # KITTI rotation_y of the forward axis (geometry.yaw_from_rotation_cam)
        alpha = (ry - math.atan2(c[0], c[2]) + math.pi) % (2 * math.pi) - math.pi
        l, w, h = (float(v) for v in tr.size)
        x1, y1, x2, y2 = (float(v) if np.isfinite(v) else -1.0 for v in tr.box_2d)
        typ = TYPE_OF_CLASS.get(tr.class_label, tr.class_label.capitalize())
        out.append(
            f"{frame_index} {tr.track_id} {typ} -1 -1 {alpha:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} "
            f"{h:.6f} {w:.6f} {l:.6f} {c[0]:.6f} {c[1] + h / 2:.6f} {c[2]:.6f} {ry:.6f} {tr.score:.6f}\n"
        )
    return "".join(out)


def write_tracking_file(path: str | Path, frames: Iterable[tuple[int, Sequence[TrackOutput], np.ndarray]]) -> int:
    """Write ``(frame_index, tracks, T_cam_odom)`` items as one KITTI result file; returns lines written."""
    text = "".join(track_lines(i, trs, T) for i, trs, T in frames)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text.count("\n")
