"""Cuboid fitting of an object's points: L-shape yaw, class-prior completion, 2D-box agreement, heading, filters.

Boxes are upright in odom: centre ``(x, y, z)`` (geometric centre, metres), size ``(l, w, h)``
(metres), yaw about odom +z (radians, object x forward / y left / z up as in
``ba_perception.core.geometry``).

1. L-shape yaw: a search-based L-shape criterion (:func:`lshape_yaw`) over the BEV points of the
   lower body (0.25-0.9 m above ground: the vertical body sides, not hood or roof) gives the box
   axes mod 90 deg; both assignments of the length axis are tried.
2. Class-prior completion: along each axis the face nearest the cameras that saw the object is the
   visible one; where the points span less than the class prior, the box grows from that face
   away from the cameras to the prior size. The bottom is the ground plane.
3. 2D agreement: centre, yaw and size are refined so that the projected cuboid's 2D box matches the
   2D labels in every frame (edges touching the image border are not used), with priors on the
   size and on the point-based centre; the length-axis hypothesis with the lower cost wins.
4. Heading (the kept boxes are static, so not from motion; a static car's per-frame clusters
   drift as the ego passes it): a car whose length axis is within ``parallel_deg`` of the ego's
   path (parked along the road) takes the traffic side (right-hand traffic: on the ego's right
   facing its travel direction, on its left against it). Any other car (e.g. perpendicular
   parking) takes the end the cameras saw (:func:`heading_from_shape`: seen from the front, the
   roof-level points start a hood and windshield behind the end face; from the rear, close to
   it), else the side rule.
5. Filters: the box is kept when its projections agree with the 2D labels (mean IoU >= 0.5; a
   moving car's points triangulate at a depth scaled by the relative speed, so a static cuboid at
   that depth disagrees with its 2D boxes) and its per-frame main-cluster centroids stay within
   a few metres (points of movers not along the epipolar lines wander: static filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ba_perception.pseudo.clustering import ObjectCluster

# (l, w, h) mean and std per class, metres (the synthetic world's car meshes; KITTI cars are similar)
CLASS_PRIORS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "car": ((4.25, 1.75, 1.60), (0.40, 0.10, 0.20)),
}


@dataclass
class FitOptions:
    """Tuning of :func:`fit_box`.

    Attributes:
        min_mean_iou: projection / label agreement a box needs.  max_centroid_spread_m: static
            filter on the per-frame main-cluster centroids (BEV, median distance to their median).
        centre_sigma_m / yaw_sigma_deg: priors on the point-based centre and L-shape yaw.  top_edge_weight: weight of the 2D top edge
            (the cuboid's top corners rise above a car's silhouette).  moving_min_m: track motion
            side_prior / parallel_deg: heading of cars parked along the ego's path from the traffic side.
        max_fit_views: evenly spaced labelled frames used in the optimisation.
        silhouette_shrink: label box / projected cuboid box, width and height (cars in the world:
            medians 0.94 and 0.92 over unoccluded, untruncated cars; without it the fit pushes
            boxes ~6 % too far).
    """

    min_mean_iou: float = 0.5
    max_centroid_spread_m: float = 2.5
    centre_sigma_m: float = 0.5
    top_edge_weight: float = 0.3
    max_fit_views: int = 20
    shape_min_m: float = 0.05
    yaw_sigma_deg: float = 4.0
    max_nfev: int = 80
    side_prior: bool = True
    parallel_deg: float = 25.0
    silhouette_shrink: tuple[float, float] = (0.94, 0.92)
    body_low_m: tuple[float, float] = (0.25, 0.9)


@dataclass
class FittedBox:
    """A fitted cuboid in odom plus its quality.

    Attributes:
        track_id, cls: label identity.  center: ``(3,)`` m.  size_lwh: ``(3,)`` m.  yaw: rad.
        mean_iou: mean 2D IoU of the projection with the labels.  centroid_spread_m: static test.
        n_points: points used.  heading_source: ``motion`` | ``shape`` | ``side``.
        accepted: passed both filters.  reason: why not.  confidence: in [0, 1].
    """

    track_id: int
    cls: str
    center: np.ndarray
    size_lwh: np.ndarray
    yaw: float
    mean_iou: float
    centroid_spread_m: float
    n_points: int
    heading_source: str
    accepted: bool
    reason: str = ""
    confidence: float = 0.0
    frame_iou: dict = field(default_factory=dict)


@dataclass
class TrackViews:
    """The 2D labels of one track and the cameras that saw it.

    Attributes:
        frames: ``(F,)`` frame indices.  boxes: ``(F, 4)`` label boxes, pixels.
        K: ``(F, 3, 3)``.  T_cam_odom: ``(F, 4, 4)`` odom -> camera optical.  image_wh: ``(W, H)``.
    """

    frames: np.ndarray
    boxes: np.ndarray
    K: np.ndarray
    T_cam_odom: np.ndarray
    image_wh: tuple[int, int]


def lshape_yaw(xy: np.ndarray, step_deg: float = 1.0, trim: float = 3.0, cap_m: float = 0.5) -> float:
    """Box axis angle in ``[0, pi/2)`` of BEV points by a robust L-shape edge criterion.

    For each candidate angle the points are expressed along the two box axes; each point's distance
    to the nearest of the four edges (edges at the ``trim`` / ``100 - trim`` percentiles, so a few
    stray points do not move them) is capped at ``cap_m``; the angle with the smallest mean
    distance wins (the variance-style relative of the closeness criterion of Zhang et al. 2017,
    "Efficient L-shape fitting for vehicle detection using laser scanners", more robust to
    points inside the outline such as a hood or roof).

    Args:
        xy: ``(P, 2)`` BEV points, metres.  step_deg: search step.  trim: edge percentile.  cap_m: metres.
    """
    th = np.radians(np.arange(0.0, 90.0, step_deg))
    e1 = np.stack([np.cos(th), np.sin(th)], 1)
    e2 = np.stack([-np.sin(th), np.cos(th)], 1)
    c1, c2 = e1 @ xy.T, e2 @ xy.T  # (A, P)
    lo1, hi1 = np.percentile(c1, trim, 1)[:, None], np.percentile(c1, 100 - trim, 1)[:, None]
    lo2, hi2 = np.percentile(c2, trim, 1)[:, None], np.percentile(c2, 100 - trim, 1)[:, None]
    d = np.minimum(np.minimum(np.abs(hi1 - c1), np.abs(c1 - lo1)), np.minimum(np.abs(hi2 - c2), np.abs(c2 - lo2)))
    return float(th[int(np.argmin(np.minimum(d, cap_m).mean(1)))])


def box_corners_odom(center: np.ndarray, size_lwh: np.ndarray, yaw: float) -> np.ndarray:
    """``(8, 3)`` corners of an upright box in odom (bottom four first, counter-clockwise from front-left)."""
    l, w, h = size_lwh
    x = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * l / 2
    y = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * w / 2
    z = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([center[0] + c * x - s * y, center[1] + s * x + c * y, center[2] + z], 1)


def project_box(corners: np.ndarray, views: TrackViews, shrink: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """2D boxes of the corners in every view, shrunk about their centre, clipped to the image.

    Args:
        corners: ``(8, 3)`` odom.  views: the cameras.
        shrink: ``(width, height)`` factors: a 2D label is the object's silhouette box, smaller than
            the projected cuboid's box (rounded corners, narrower roof).

    Returns:
        ``(boxes (F, 4), valid (F,))``: valid where every corner is in front of the camera.
    """
    pc = np.einsum("fij,kj->fki", views.T_cam_odom[:, :3, :3], corners) + views.T_cam_odom[:, None, :3, 3]
    z = pc[..., 2]
    valid = (z > 0.2).all(1)
    zc = np.maximum(z, 0.2)
    u = views.K[:, None, 0, 0] * pc[..., 0] / zc + views.K[:, None, 0, 2]
    v = views.K[:, None, 1, 1] * pc[..., 1] / zc + views.K[:, None, 1, 2]
    W, H = views.image_wh
    cu, cv = (u.min(1) + u.max(1)) / 2, (v.min(1) + v.max(1)) / 2
    hw, hh = shrink[0] * (u.max(1) - u.min(1)) / 2, shrink[1] * (v.max(1) - v.min(1)) / 2
    b = np.stack([cu - hw, cv - hh, cu + hw, cv + hh], 1)
    b = np.stack([np.clip(b[:, 0], 0, W - 1), np.clip(b[:, 1], 0, H - 1), np.clip(b[:, 2], 0, W - 1),
                  np.clip(b[:, 3], 0, H - 1)], 1)
    return b, valid


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``(N, 4)`` boxes ``(x1, y1, x2, y2)``."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    return inter / np.maximum(_box_area(a) + _box_area(b) - inter, 1e-9)


def _box_area(x: np.ndarray) -> np.ndarray:
    """Area (pixels^2) of ``(N, 4)`` boxes ``(x1, y1, x2, y2)``; 0 for inverted ones."""
    return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)


def complete_box(xy: np.ndarray, axis_yaw: float, cams_xy: np.ndarray, prior_lw: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """BEV centre and ``(l, w)`` of a box with length along ``axis_yaw``, completed to the prior size.

    Along each axis the points' extent is kept when it reaches the prior; otherwise the box grows
    from the face the cameras saw (the one nearer their mean position) away from them.

    Args:
        xy: ``(P, 2)`` points.  axis_yaw: length axis angle, rad.  cams_xy: ``(F, 2)`` camera centres.
        prior_lw: class prior length and width, metres.

    Returns:
        ``(centre_xy (2,), lw (2,))``.
    """
    e = np.array([[np.cos(axis_yaw), np.sin(axis_yaw)], [-np.sin(axis_yaw), np.cos(axis_yaw)]])
    c = xy @ e.T
    cam = (cams_xy @ e.T).mean(0)
    lo, hi = np.percentile(c, 2, 0), np.percentile(c, 98, 0)
    mid, ext = np.empty(2), np.empty(2)
    for k in range(2):
        s = prior_lw[k]
        if hi[k] - lo[k] >= s:
            mid[k], ext[k] = (lo[k] + hi[k]) / 2, hi[k] - lo[k]
        elif cam[k] <= lo[k]:
            mid[k], ext[k] = lo[k] + s / 2, s
        elif cam[k] >= hi[k]:
            mid[k], ext[k] = hi[k] - s / 2, s
        else:
            mid[k], ext[k] = (lo[k] + hi[k]) / 2, s
    return mid @ e, ext


def _residuals(x: np.ndarray, views: TrackViews, ground_z: float, prior: tuple, centre0: np.ndarray, yaw0: float,
               opts: FitOptions, edge_w: np.ndarray) -> np.ndarray:
    cx, cy, yaw, l, w, h = x
    corners = box_corners_odom(np.array([cx, cy, ground_z + h / 2]), np.array([l, w, h]), yaw)
    b, valid = project_box(corners, views, opts.silhouette_shrink)
    scale = np.maximum(views.boxes[:, 3] - views.boxes[:, 1], 10.0)[:, None]
    r = (b - views.boxes) / scale * edge_w * valid[:, None]
    (m, s) = prior
    pri = np.array([(l - m[0]) / s[0], (w - m[1]) / s[1], (h - m[2]) / s[2],
                    (cx - centre0[0]) / opts.centre_sigma_m, (cy - centre0[1]) / opts.centre_sigma_m,
                    (yaw - yaw0) / np.radians(opts.yaw_sigma_deg)])
    return np.concatenate([r.ravel() / np.sqrt(max(len(views.frames), 1)) * 3.0, pri])


def _subsample(views: TrackViews, n: int) -> TrackViews:
    if len(views.frames) <= n:
        return views
    k = np.unique(np.linspace(0, len(views.frames) - 1, n).round().astype(int))
    return TrackViews(views.frames[k], views.boxes[k], views.K[k], views.T_cam_odom[k], views.image_wh)


def _edge_weights(views: TrackViews, opts: FitOptions) -> np.ndarray:
    W, H = views.image_wh
    b = views.boxes
    w = np.ones_like(b)
    w[:, 0] = b[:, 0] > 2
    w[:, 1] = (b[:, 1] > 2) * opts.top_edge_weight
    w[:, 2] = b[:, 2] < W - 3
    w[:, 3] = b[:, 3] < H - 3
    return w


def heading_from_shape(points: np.ndarray, height: np.ndarray, center: np.ndarray, yaw: float, size_lwh: np.ndarray,
                       end_m: float = 0.5, hood_m: float = 0.55) -> float:
    """Front/rear evidence along the box's length axis from the end of the car the cameras saw.

    The visible end is the one with more points within ``end_m`` of it. Seen from its front, a
    car's roof-level points (above 85 % of its height) start well behind the end face (hood and
    windshield, > ``hood_m``); seen from its rear they start close to it (short trunk, steep rear
    window). Returns a score (metres): positive when ``yaw`` points to the front, negative when it
    points to the rear, 0 without evidence.

    Args:
        points: ``(P, 3)`` odom.  height: ``(P,)`` above ground, m.  center, yaw, size_lwh: the box.
        end_m: end-region depth, m.  hood_m: threshold on the end-to-roof distance, m.
    """
    x = (points[:, 0] - center[0]) * np.cos(yaw) + (points[:, 1] - center[1]) * np.sin(yaw)
    if len(x) < 10:
        return 0.0
    high = height > 0.85 * np.percentile(height, 98)
    if not high.any():
        return 0.0
    half = size_lwh[0] / 2
    n_pos, n_neg = int((x > half - end_m).sum()), int((x < -half + end_m).sum())
    if max(n_pos, n_neg) < 5:
        return 0.0
    if n_pos >= n_neg:  # the +x end is the visible one
        d = float(x.max() - x[high].max())
        return d - hood_m
    d = float(x[high].min() - x.min())
    return hood_m - d


def fit_box(cluster: ObjectCluster, views: TrackViews, cls: str = "car", opts: FitOptions | None = None) -> FittedBox | None:
    """Fit, orient and check the cuboid of one object (see the module docstring).

    Args:
        cluster: the track's merged points.  views: its 2D labels and cameras.  cls: class name
            (needs a :data:`CLASS_PRIORS` entry).  opts: tuning.

    Returns:
        The :class:`FittedBox` (``accepted`` False when a filter rejected it), or None when the
        class has no prior or the object has no labelled view.
    """
    from scipy.optimize import least_squares

    opts = opts or FitOptions()
    if cls not in CLASS_PRIORS or len(views.frames) == 0:
        return None
    prior = CLASS_PRIORS[cls]
    (l0, w0, h0), _ = prior
    xy = cluster.points[:, :2]
    cams_xy = np.linalg.inv(views.T_cam_odom)[:, :2, 3]
    low = (cluster.height > opts.body_low_m[0]) & (cluster.height < opts.body_low_m[1])
    th = lshape_yaw(xy[low] if low.sum() >= 10 else xy)
    hp = float(np.percentile(cluster.height, 98))
    h_init = hp if hp > 0.85 * h0 else h0
    sub = _subsample(views, opts.max_fit_views)
    edge_w = _edge_weights(sub, opts)
    best = None
    for axis in (th, th + np.pi / 2):
        c_xy, lw = complete_box(xy, axis, cams_xy, (l0, w0))
        x0 = np.array([c_xy[0], c_xy[1], axis, lw[0], lw[1], h_init])
        lb = [-np.inf, -np.inf, axis - 0.35, 0.6 * l0, 0.6 * w0, 0.6 * h0]
        ub = [np.inf, np.inf, axis + 0.35, 1.6 * l0, 1.6 * w0, 1.6 * h0]
        x0 = np.clip(x0, np.array(lb) + 1e-6, np.array(ub) - 1e-6)
        res = least_squares(_residuals, x0, bounds=(lb, ub), loss="soft_l1", f_scale=0.2, max_nfev=opts.max_nfev,
                            args=(sub, cluster.ground_z, prior, c_xy, axis, opts, edge_w))
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None  # the loop ran for both axes
    cx, cy, yaw, l, w, h = best.x
    center = np.array([cx, cy, cluster.ground_z + h / 2])
    size = np.array([l, w, h])
    b, valid = project_box(box_corners_odom(center, size, yaw), views, opts.silhouette_shrink)
    ious = np.where(valid, iou_rows(b, views.boxes), 0.0)
    mean_iou = float(ious.mean())
    cent = cluster.frame_centroids[:, :2]
    spread = float(np.median(np.linalg.norm(cent - np.median(cent, 0), axis=1))) if len(cent) else 0.0
    # heading (the kept boxes are static, so not from motion): a car parked along the ego's path
    # takes the traffic side; otherwise the end of the car the cameras saw (shape), else the side
    fwd = np.array([np.cos(yaw), np.sin(yaw)])
    cam_dir = cams_xy[-1] - cams_xy[0] if len(cams_xy) >= 2 else fwd
    along = abs(float(cam_dir @ fwd)) > np.cos(np.radians(opts.parallel_deg)) * np.linalg.norm(cam_dir)
    score = heading_from_shape(cluster.points, cluster.height, center, yaw, size)
    if (along and np.linalg.norm(cam_dir) > 1.0 and opts.side_prior) or abs(score) <= opts.shape_min_m:
        # on the right of the ego's travel facing along it, on its left against it (right-hand traffic)
        rel = center[:2] - cams_xy[0]
        left = cam_dir[0] * rel[1] - cam_dir[1] * rel[0] > 0
        source, flip = "side", (float(cam_dir @ fwd) < 0) != left
    else:
        source, flip = "shape", score < 0
    if flip:
        yaw = yaw + np.pi
    yaw = float(np.arctan2(np.sin(yaw), np.cos(yaw)))
    reason = ""
    if mean_iou < opts.min_mean_iou:
        reason = f"2D agreement {mean_iou:.2f} < {opts.min_mean_iou}"
    elif spread > opts.max_centroid_spread_m:
        reason = f"centroid spread {spread:.2f} m > {opts.max_centroid_spread_m} (moving?)"
    conf = float(np.clip(mean_iou, 0, 1) * (1 - np.exp(-len(cluster.points) / 50.0)))
    return FittedBox(cluster.track_id, cls, center, size, yaw, mean_iou, spread, len(cluster.points), source,
                     accepted=not reason, reason=reason, confidence=conf,
                     frame_iou={int(f): float(i) for f, i in zip(views.frames, ious)})
