"""Drawing 3D boxes, ids and labels onto images (overlay topic, reports, world previews)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch

from ba_perception.core import geometry


def id_color(track_id: int) -> tuple[float, float, float]:
    """A stable, well-spread RGB colour in [0, 1] for an integer id (golden-ratio hue walk)."""
    h = (int(track_id) * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(h, 0.85, 1.0)


def clip_segment(pa: np.ndarray, pb: np.ndarray, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Clip an image segment to a margin around the image.

    The part of the image segment ``pa``-``pb`` (float pixels) inside a margin of one image size around
    ``[0, width) x [0, height)``, as int pixel tuples; None when none of it is (or it is not finite).

    Clipping in floating point first keeps OpenCV's int32 pixel coordinates valid for any projection
    (a box near the camera plane projects to 1e12 px).
    """
    if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
        return None
    lo = np.array([-float(width), -float(height)])
    hi = np.array([2.0 * width, 2.0 * height])
    d = pb - pa
    t0, t1 = 0.0, 1.0
    for k in range(2):  # Liang-Barsky against the two slabs
        if d[k] == 0.0:
            if not lo[k] <= pa[k] <= hi[k]:
                return None
            continue
        ta, tb = (lo[k] - pa[k]) / d[k], (hi[k] - pa[k]) / d[k]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
        if t0 > t1:
            return None
    a, b = pa + t0 * d, pa + t1 * d
    return (int(round(a[0])), int(round(a[1]))), (int(round(b[0])), int(round(b[1])))


def draw_boxes(
    rgb: np.ndarray,
    corners_cam: np.ndarray,
    K: np.ndarray,
    ids: list[int],
    labels: list[str] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """Draw boxes given by their 8 camera-frame corners ``(N, 8, 3)`` on a copy of ``rgb``.

    Edges with an endpoint behind the camera (z < 0.1 m) or with non-finite coordinates are skipped,
    edges far outside the image are clipped (:func:`clip_segment`); order of corners and edges as in
    :data:`geometry.BOX_EDGES`. The front face (corners 0, 3, 4, 7) gets a cross.
    """
    out = np.ascontiguousarray(rgb.copy())
    if len(corners_cam) == 0:
        return out
    c = torch.from_numpy(np.array(corners_cam, dtype=np.float64))
    uv = geometry.project_points(c, torch.from_numpy(np.array(K, dtype=np.float64))).numpy()
    z = c[..., 2].numpy()
    edges = list(geometry.BOX_EDGES) + [(0, 7), (3, 4)]
    for i in range(len(c)):
        color = tuple(int(255 * v) for v in id_color(ids[i]))
        for a, b in edges:
            if z[i, a] < 0.1 or z[i, b] < 0.1:
                continue
            seg = clip_segment(uv[i, a], uv[i, b], out.shape[1], out.shape[0])
            if seg is not None:
                cv2.line(out, seg[0], seg[1], color, thickness, cv2.LINE_AA)
        if labels is not None and np.all(z[i] > 0.1) and np.isfinite(uv[i]).all():
            top = np.clip(uv[i].min(axis=0), -1e4, 1e4)  # a label far off the image is simply not visible
            cv2.putText(out, labels[i], (int(top[0]), max(12, int(top[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        color, 1, cv2.LINE_AA)
    return out
