"""RViz markers for 3D boxes: edges as LINE_LIST, id/class/speed text, velocity arrow, DELETEALL first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from ba_perception.core import geometry
from ba_perception.core.overlay import id_color


def marker_id(object_id: int) -> int:
    """Marker id of a track / tracklet id.

    The int32 ``Marker.id`` of a uint64 track / tracklet id (its low 31 bits: ids alive at the same time
    are consecutive in practice, so they stay distinct; the text label shows the full id).
    """
    return int(object_id) & 0x7FFFFFFF


def box_marker_array(
    header: Any,
    poses: np.ndarray,
    sizes: np.ndarray,
    ids: Sequence[int],
    labels: Sequence[str],
    velocities: np.ndarray | None = None,
    line_width: float = 0.08,
    lifetime_s: float = 0.0,
) -> MarkerArray:
    """Markers for N boxes with poses ``(N, 4, 4)`` (box centre, in ``header.frame_id``) and sizes ``(N, 3)``.

    The first marker is DELETEALL so boxes of tracks that vanished do not linger in RViz.
    """
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    n = len(ids)
    if n == 0:
        return out
    P = torch.as_tensor(np.asarray(poses, dtype=np.float64))
    corners = geometry.box_corners(P[:, :3, :3], P[:, :3, 3], torch.as_tensor(np.asarray(sizes, dtype=np.float64))).numpy()
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    for i in range(n):
        r, g, b = id_color(ids[i])
        color = ColorRGBA(r=float(r), g=float(g), b=float(b), a=1.0)
        box = Marker(header=header, ns="boxes", id=marker_id(ids[i]), type=Marker.LINE_LIST, action=Marker.ADD,
                     color=color, lifetime=life)
        box.pose.orientation.w = 1.0
        box.scale.x = line_width
        box.points = [Point(x=float(corners[i, k, 0]), y=float(corners[i, k, 1]), z=float(corners[i, k, 2]))
                      for e in geometry.BOX_EDGES for k in e]
        out.markers.append(box)
        speed = float(np.linalg.norm(velocities[i])) if velocities is not None else 0.0
        text = Marker(header=header, ns="labels", id=marker_id(ids[i]), type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                      color=color, lifetime=life, text=f"{ids[i]} {labels[i]} {speed:.1f} m/s")
        text.pose.position = Point(x=float(P[i, 0, 3]), y=float(P[i, 1, 3]),
                                   z=float(corners[i, :, 2].max()) + 0.5)
        text.pose.orientation.w = 1.0
        text.scale.z = 0.6
        out.markers.append(text)
        if velocities is not None and speed > 0.1:
            arrow = Marker(header=header, ns="velocity", id=marker_id(ids[i]), type=Marker.ARROW, action=Marker.ADD,
                           color=color, lifetime=life)
            start = P[i, :3, 3].numpy()
            end = start + np.asarray(velocities[i], dtype=np.float64)
            arrow.points = [Point(x=float(start[0]), y=float(start[1]), z=float(start[2])),
                            Point(x=float(end[0]), y=float(end[1]), z=float(end[2]))]
            arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.15, 0.3, 0.3
            arrow.pose.orientation.w = 1.0
            out.markers.append(arrow)
    return out
