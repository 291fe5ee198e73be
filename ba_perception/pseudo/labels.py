"""Pseudo-label output: KITTI tracking label files with a confidence column, per-object JSON, points, BEV pictures.

Label line (KITTI tracking devkit order plus an 18th column)::

    frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y confidence

``x y z`` is the bottom centre of the box in the frame's camera optical frame (the image camera
is the reference camera, as :mod:`ba_perception.data.kitti` writes it), metres; ``x1..y2`` the 2D
label box, pixels; ``truncated`` / ``occluded`` are 0 (not estimated). Objects that have a 2D box but
no accepted 3D box are ``DontCare`` rows (track id -1, 3D fields -1 / -1000 / -10, confidence 0):
ignore regions for training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ba_perception.pseudo.boxfit import FittedBox

TYPE_OF_CLASS = {"car": "Car", "pedestrian": "Pedestrian", "cyclist": "Cyclist"}


@dataclass
class LabelRow:
    """One parsed pseudo-label line (camera frame of its image; see the module docstring)."""

    frame: int
    track_id: int
    type: str
    box2d: np.ndarray
    size_lwh: np.ndarray
    center_cam: np.ndarray
    rotation_y: float
    confidence: float


def box_in_camera(box: FittedBox, T_cam_odom: np.ndarray) -> tuple[np.ndarray, float]:
    """Geometric centre ``(3,)`` (camera optical frame, metres) and KITTI ``rotation_y`` (rad) of an odom box.

    ``rotation_y`` follows ``core.geometry.rotation_cam_from_yaw``: the object's forward axis in the
    camera frame is ``(cos ry, 0, -sin ry)``.
    """
    c = T_cam_odom[:3, :3] @ box.center + T_cam_odom[:3, 3]
    f = T_cam_odom[:3, :3] @ np.array([math.cos(box.yaw), math.sin(box.yaw), 0.0])
    return c, math.atan2(-f[2], f[0])


def label_lines(frame: int, boxes2d: np.ndarray, track_ids: np.ndarray, classes: list[str],
                fitted: dict[int, FittedBox], T_cam_odom: np.ndarray) -> str:
    """KITTI tracking lines (+ confidence) of one frame.

    Args:
        frame: frame index.  boxes2d: ``(N, 4)`` 2D labels.  track_ids: ``(N,)``.  classes: N names.
        fitted: accepted boxes by track id (others become DontCare).  T_cam_odom: ``(4, 4)``.
    """
    out = []
    for b2, t, cls in zip(np.asarray(boxes2d).reshape(-1, 4), np.asarray(track_ids), classes):
        x1, y1, x2, y2 = (float(v) for v in b2)
        fb = fitted.get(int(t))
        if fb is None or not fb.accepted:
            out.append(f"{frame} -1 DontCare -1 -1 -10 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} -1 -1 -1 -1000 -1000 -1000 -10 0\n")
            continue
        c, ry = box_in_camera(fb, T_cam_odom)
        l, w, h = fb.size_lwh
        bottom = c + np.array([0.0, h / 2, 0.0])
        alpha = math.atan2(math.sin(ry - math.atan2(c[0], c[2])), math.cos(ry - math.atan2(c[0], c[2])))
        out.append(f"{frame} {int(t)} {TYPE_OF_CLASS.get(cls, cls.capitalize())} 0 0 {alpha:.6f} "
                   f"{x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} {h:.6f} {w:.6f} {l:.6f} "
                   f"{bottom[0]:.6f} {bottom[1]:.6f} {bottom[2]:.6f} {ry:.6f} {fb.confidence:.4f}\n")
    return "".join(out)


def read_label_file(path: str | Path) -> list[LabelRow]:
    """Rows of a pseudo-label (or plain KITTI tracking) file; DontCare rows included, confidence 1 if absent.

    Raises:
        ValueError: a line with fewer than 17 fields (names the file and line).
    """
    rows = []
    for n, ln in enumerate(Path(path).read_text().splitlines(), 1):
        f = ln.split()
        if not f:
            continue
        if len(f) < 17:
            raise ValueError(f"{path}:{n}: {len(f)} fields, a KITTI tracking label line has 17 (+ confidence)")
        v = [float(x) for x in f[3:]]
        h, w, l = v[7], v[8], v[9]
        bottom = np.array(v[10:13])
        rows.append(LabelRow(int(f[0]), int(f[1]), f[2], np.array(v[3:7]), np.array([l, w, h]),
                             bottom - np.array([0.0, h / 2, 0.0]), v[13], v[14] if len(v) > 14 else 1.0))
    return rows


def object_record(box: FittedBox, n_frames_labelled: int) -> dict:
    """JSON-ready description of one fitted object (odom frame)."""
    return {
        "track_id": box.track_id, "class": box.cls, "accepted": box.accepted, "reason": box.reason,
        "center_odom_m": [round(float(x), 4) for x in box.center], "size_lwh_m": [round(float(x), 4) for x in box.size_lwh],
        "yaw_odom_rad": round(box.yaw, 5), "heading_source": box.heading_source, "confidence": round(box.confidence, 4),
        "mean_iou_2d": round(box.mean_iou, 4), "centroid_spread_m": round(box.centroid_spread_m, 4),
        "n_points": box.n_points, "n_frames_labelled": n_frames_labelled,
    }


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)


def bev_picture(path: Path, points: np.ndarray, point_track: np.ndarray, boxes: dict[int, FittedBox],
                cams_xy: np.ndarray, title: str, gt_boxes: list[tuple[np.ndarray, np.ndarray, float]] | None = None) -> None:
    """PNG of the bird's-eye view: points (grey: not in an object), accepted boxes (green), rejected (red).

    Args:
        path: output PNG.  points: ``(P, 3)`` odom.  point_track: ``(P,)`` track id per point, -1 none.
        boxes: fitted boxes.  cams_xy: ``(F, 2)`` camera path.  gt_boxes: optional ground truth (dashed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ba_perception.pseudo.boxfit import box_corners_odom

    allxy = np.concatenate([points[:, :2], cams_xy]) if len(points) else cams_xy
    span = np.ptp(allxy, 0) + 10.0
    fig, ax = plt.subplots(figsize=(12, float(np.clip(12 * span[1] / span[0], 3, 12))))
    ax.scatter(points[:, 0], points[:, 1], s=0.5, c=np.where(point_track >= 0, point_track % 20, -1), cmap="tab20", alpha=0.6)
    ax.plot(cams_xy[:, 0], cams_xy[:, 1], "k-", lw=1.5, label="camera path")
    for b in boxes.values():
        c = box_corners_odom(b.center, b.size_lwh, b.yaw)[[0, 1, 2, 3, 0], :2]
        col = "g" if b.accepted else "r"
        ax.plot(c[:, 0], c[:, 1], col + "-", lw=1.2)
        ax.arrow(b.center[0], b.center[1], math.cos(b.yaw) * b.size_lwh[0] / 2, math.sin(b.yaw) * b.size_lwh[0] / 2,
                 color=col, width=0.05, length_includes_head=True)
        ax.text(b.center[0], b.center[1], str(b.track_id), fontsize=7)
    for center, size, yaw in gt_boxes or []:
        c = box_corners_odom(center, size, yaw)[[0, 1, 2, 3, 0], :2]
        ax.plot(c[:, 0], c[:, 1], "b--", lw=0.8)
    ax.set_aspect("equal")
    ax.set_title(title + "  (green: label, red: rejected" + (", blue dashed: ground truth)" if gt_boxes else ")"))
    ax.set_xlabel("odom x, m")
    ax.set_ylabel("odom y, m")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
