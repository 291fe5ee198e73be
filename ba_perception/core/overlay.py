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


def draw_boxes(
    rgb: np.ndarray,
    corners_cam: np.ndarray,
    K: np.ndarray,
    ids: list[int],
    labels: list[str] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """Draw boxes given by their 8 camera-frame corners ``(N, 8, 3)`` on a copy of ``rgb``.

    Edges with an endpoint behind the camera (z < 0.1 m) are skipped; order of corners and edges
    as in :data:`geometry.BOX_EDGES`. The front face (corners 0, 3, 4, 7) gets a cross.
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
            pa, pb = uv[i, a], uv[i, b]
            if not (np.all(np.isfinite(pa)) and np.all(np.isfinite(pb))):
                continue
            cv2.line(out, (int(round(pa[0])), int(round(pa[1]))), (int(round(pb[0])), int(round(pb[1]))),
                     color, thickness, cv2.LINE_AA)
        if labels is not None and np.all(z[i] > 0.1):
            top = uv[i].min(axis=0)
            cv2.putText(out, labels[i], (int(top[0]), max(12, int(top[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        color, 1, cv2.LINE_AA)
    return out
