"""KITTI-style 3D detection metrics: AP|R40 for 3D / BEV / 2D boxes, depth and yaw errors.

Boxes are in the camera optical frame (x right, y down, z forward) with KITTI ``rotation_y``,
box centre = geometric centre, sizes ``(l, w, h)`` (see ``core.geometry``).

Protocol (our own implementation of the KITTI rules, documented so numbers are reproducible):

- Per class and IoU threshold, detections of each frame are matched greedily in descending score
  order to the not-yet-matched ground truth of the same class with the highest IoU >= threshold.
- Ground truth failing the difficulty filter (2D height, occlusion, truncation) is *ignored*: a
  detection matched to it counts neither as TP nor FP, and it is not a miss. Detections whose 2D
  height is below the difficulty's minimum are ignored likewise when unmatched.
- Precision/recall over all frames from the score-sorted TP/FP list; AP|R40 is the mean of the
  interpolated precision (max precision at recall >= r) at the 40 recall points r = 1/40 ... 1,
  in percent.
- BEV IoU: exact rotated-rectangle intersection in the camera x-z plane (convex polygon clipping);
  3D IoU: BEV intersection times the overlap along camera y, over the union of volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CLASSES = ("car", "pedestrian", "cyclist")
# IoU thresholds per class as in KITTI: (strict, loose).
IOU_THRESHOLDS: dict[str, tuple[float, float]] = {"car": (0.7, 0.5), "pedestrian": (0.5, 0.25), "cyclist": (0.5, 0.25)}
DEPTH_BINS_M: tuple[tuple[float, float], ...] = ((0.0, 20.0), (20.0, 40.0), (40.0, 60.0), (60.0, math.inf))


class DetectionEvalError(ValueError):
    """Raised for inconsistent box arrays."""


@dataclass(frozen=True)
class Difficulty:
    """KITTI-like difficulty filter on ground truth (fractions in [0, 1], height in pixels)."""

    name: str
    min_height_px: float
    max_occlusion: float
    max_truncation: float


DIFFICULTIES = {
    "easy": Difficulty("easy", 40.0, 0.15, 0.15),
    "moderate": Difficulty("moderate", 25.0, 0.5, 0.3),
    "hard": Difficulty("hard", 25.0, 0.8, 0.5),
}


@dataclass
class FrameBoxes:
    """Boxes of one frame (ground truth or detections).

    Attributes:
        labels: ``(N,)`` class names.
        box_2d: ``(N, 4)`` (x1, y1, x2, y2) pixels.
        center_cam: ``(N, 3)`` metres, camera optical frame.
        size_lwh: ``(N, 3)`` metres.
        yaw: ``(N,)`` KITTI rotation_y, radians.
        scores: ``(N,)`` detection scores (ground truth: ones).
        occlusion, truncation: ``(N,)`` fractions (ground truth only; zeros for detections).
    """

    labels: np.ndarray
    box_2d: np.ndarray
    center_cam: np.ndarray
    size_lwh: np.ndarray
    yaw: np.ndarray
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    occlusion: np.ndarray = field(default_factory=lambda: np.zeros(0))
    truncation: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=object).reshape(n)
        self.box_2d = np.asarray(self.box_2d, dtype=np.float64).reshape(n, 4)
        self.center_cam = np.asarray(self.center_cam, dtype=np.float64).reshape(n, 3)
        self.size_lwh = np.asarray(self.size_lwh, dtype=np.float64).reshape(n, 3)
        self.yaw = np.asarray(self.yaw, dtype=np.float64).reshape(n)
        for name in ("scores", "occlusion", "truncation"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.size == 0:
                v = np.ones(n) if name == "scores" else np.zeros(n)
            if v.shape != (n,):
                raise DetectionEvalError(f"{name} must have shape ({n},), got {v.shape}")
            setattr(self, name, v)

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------------------------
# IoU
# ----------------------------------------------------------------------------------------------
def bev_corners(center_cam: np.ndarray, size_lwh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Footprint corners ``(N, 4, 2)`` in the camera (x, z) plane, counter-clockwise as seen from above.

    Object forward axis in the camera frame is ``(cos ry, 0, -sin ry)`` and left ``(sin ry, 0, cos ry)``
    (``core.geometry.rotation_cam_from_yaw``).
    """
    c, s = np.cos(yaw), np.sin(yaw)
    fwd = np.stack([c, -s], -1)  # (x, z)
    left = np.stack([s, c], -1)
    hl, hw = size_lwh[:, 0:1] / 2, size_lwh[:, 1:2] / 2
    ctr = center_cam[:, [0, 2]]
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    return ctr[:, None] + signs[None, :, 0:1] * (hl * fwd)[:, None] + signs[None, :, 1:2] * (hw * left)[:, None]


def _poly_area(p: np.ndarray) -> float:
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _ccw(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    signed = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return p if signed >= 0 else p[::-1]


def convex_intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two convex polygons ``(Na, 2)``, ``(Nb, 2)`` (Sutherland-Hodgman)."""
    subject = [tuple(p) for p in _ccw(a)]
    clip = _ccw(b)
    for i in range(len(clip)):
        if not subject:
            return 0.0
        subject = _clip_by_edge(subject, clip[i], clip[(i + 1) % len(clip)])
    return _poly_area(np.asarray(subject)) if len(subject) >= 3 else 0.0


def _clip_by_edge(subject: list, p1: np.ndarray, p2: np.ndarray) -> list:
    """One Sutherland-Hodgman step: the polygon ``subject`` (list of points) clipped to the left of edge ``p1`` -> ``p2``."""
    ex, ey = p2[0] - p1[0], p2[1] - p1[1]

    def inside(q):  # left of (or on) the directed clip edge
        return ex * (q[1] - p1[1]) - ey * (q[0] - p1[0]) >= -1e-12

    def cross(q1, q2):
        dx, dy = q2[0] - q1[0], q2[1] - q1[1]
        den = ex * dy - ey * dx
        t = (ey * (q1[0] - p1[0]) - ex * (q1[1] - p1[1])) / den if den != 0 else 0.0
        return (q1[0] + t * dx, q1[1] + t * dy)

    out = []
    for j in range(len(subject)):
        cur, prev = subject[j], subject[j - 1]
        if inside(cur):
            if not inside(prev):
                out.append(cross(prev, cur))
            out.append(cur)
        elif inside(prev):
            out.append(cross(prev, cur))
    return out


def iou_bev(a: FrameBoxes, b: FrameBoxes) -> np.ndarray:
    """Pairwise rotated BEV IoU ``(Na, Nb)``."""
    return _iou_rotated(a, b, three_d=False)


def iou_3d(a: FrameBoxes, b: FrameBoxes) -> np.ndarray:
    """Pairwise 3D IoU ``(Na, Nb)`` of upright boxes (BEV intersection x height overlap)."""
    return _iou_rotated(a, b, three_d=True)


def _iou_rotated(a: FrameBoxes, b: FrameBoxes, three_d: bool) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    if len(a) == 0 or len(b) == 0:
        return out
    ca, cb = bev_corners(a.center_cam, a.size_lwh, a.yaw), bev_corners(b.center_cam, b.size_lwh, b.yaw)
    ra = 0.5 * np.hypot(a.size_lwh[:, 0], a.size_lwh[:, 1])
    rb = 0.5 * np.hypot(b.size_lwh[:, 0], b.size_lwh[:, 1])
    d = np.linalg.norm(a.center_cam[:, None, [0, 2]] - b.center_cam[None, :, [0, 2]], axis=-1)
    area_a = a.size_lwh[:, 0] * a.size_lwh[:, 1]
    area_b = b.size_lwh[:, 0] * b.size_lwh[:, 1]
    if three_d:
        # camera y points down; the box spans centre_y +- h/2
        top = np.maximum(a.center_cam[:, None, 1] - a.size_lwh[:, None, 2] / 2, b.center_cam[None, :, 1] - b.size_lwh[None, :, 2] / 2)
        bot = np.minimum(a.center_cam[:, None, 1] + a.size_lwh[:, None, 2] / 2, b.center_cam[None, :, 1] + b.size_lwh[None, :, 2] / 2)
        h_ov = np.clip(bot - top, 0, None)
        vol_a, vol_b = area_a * a.size_lwh[:, 2], area_b * b.size_lwh[:, 2]
    for i, j in zip(*np.nonzero(d < (ra[:, None] + rb[None, :]))):
        inter = convex_intersection_area(ca[i], cb[j])
        if three_d:
            inter *= h_ov[i, j]
            union = vol_a[i] + vol_b[j] - inter
        else:
            union = area_a[i] + area_b[j] - inter
        out[i, j] = inter / union if union > 0 else 0.0
    return out


def iou_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise axis-aligned IoU ``(Na, Nb)`` of ``(x1, y1, x2, y2)`` boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


# ----------------------------------------------------------------------------------------------
# AP
# ----------------------------------------------------------------------------------------------
def _match_frame(iou: np.ndarray, det_scores: np.ndarray, thr: float) -> np.ndarray:
    """Greedy matching by descending score; returns ``(Nd,)`` matched GT index or -1."""
    match = np.full(iou.shape[0], -1, dtype=np.int64)
    taken = np.zeros(iou.shape[1], dtype=bool)
    for d in np.argsort(-det_scores, kind="stable"):
        if iou.shape[1] == 0:
            break
        cand = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(cand))
        if cand[g] >= thr:
            match[d] = g
            taken[g] = True
    return match


def average_precision_r40(tp_scores: list[tuple[float, bool]], num_gt: int) -> float:
    """AP|R40 in percent from ``(score, is_tp)`` pairs over all frames and the number of (valid) GT."""
    if num_gt == 0:
        return float("nan")
    if not tp_scores:
        return 0.0
    arr = np.array(sorted(tp_scores, key=lambda t: -t[0]), dtype=np.float64)
    tp = np.cumsum(arr[:, 1])
    fp = np.cumsum(1 - arr[:, 1])
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1e-12)
    # interpolated precision: max precision at any recall >= r
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    ap = 0.0
    for r in np.linspace(1 / 40, 1.0, 40):
        idx = np.searchsorted(recall, r - 1e-12, side="left")
        ap += interp[idx] if idx < len(interp) else 0.0
    return float(100.0 * ap / 40)


def valid_gt(gt: FrameBoxes, cls: str, diff: Difficulty) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``(N,)`` of ``cls`` GT passing the difficulty filter (counted) and failing it (ignored)."""
    same = gt.labels == cls
    h = gt.box_2d[:, 3] - gt.box_2d[:, 1]
    ok = (h >= diff.min_height_px) & (gt.occlusion <= diff.max_occlusion) & (gt.truncation <= diff.max_truncation)
    return same & ok, same & ~ok


def evaluate_ap(
    frames: list[tuple[FrameBoxes, FrameBoxes]],
    cls: str,
    iou_thr: float,
    metric: str,
    difficulty: str = "moderate",
) -> float:
    """AP|R40 (percent) of one class over ``(ground_truth, detections)`` frames.

    Args:
        frames: per-frame ground truth and detections.
        cls: class name.
        iou_thr: IoU threshold for a true positive.
        metric: ``3d``, ``bev`` or ``2d``.
        difficulty: key of ``DIFFICULTIES``.

    Returns:
        AP in percent, NaN when there is no valid ground truth.
    """
    if metric not in ("3d", "bev", "2d"):
        raise DetectionEvalError(f"metric must be 3d, bev or 2d, got {metric!r}")
    diff = DIFFICULTIES[difficulty]
    pairs: list[tuple[float, bool]] = []
    num_gt = 0
    for gt, det in frames:
        valid, ignored = valid_gt(gt, cls, diff)
        gi = np.nonzero(valid | ignored)[0]
        di = np.nonzero(det.labels == cls)[0]
        num_gt += int(valid.sum())
        g = _subset(gt, gi)
        d = _subset(det, di)
        if metric == "2d":
            iou = iou_2d(d.box_2d, g.box_2d)
        elif metric == "bev":
            iou = iou_bev(d, g)
        else:
            iou = iou_3d(d, g)
        match = _match_frame(iou, d.scores, iou_thr)
        small = (d.box_2d[:, 3] - d.box_2d[:, 1]) < diff.min_height_px
        gvalid = valid[gi]
        for k in range(len(d)):
            if match[k] >= 0:
                if gvalid[match[k]]:
                    pairs.append((float(d.scores[k]), True))
            elif not small[k]:
                pairs.append((float(d.scores[k]), False))
    return average_precision_r40(pairs, num_gt)


def _subset(b: FrameBoxes, idx: np.ndarray) -> FrameBoxes:
    return FrameBoxes(b.labels[idx], b.box_2d[idx], b.center_cam[idx], b.size_lwh[idx], b.yaw[idx], b.scores[idx],
                      b.occlusion[idx], b.truncation[idx])


def depth_yaw_errors(frames: list[tuple[FrameBoxes, FrameBoxes]], cls: str, iou_2d_thr: float = 0.5) -> dict:
    """Depth and yaw errors of detections matched to ground truth by 2D IoU (greedy, by score).

    Returns:
        Dict with ``matched``, ``depth_abs_median_m``, ``depth_rel_median``, ``within_40m`` (same two
        medians for GT depth < 40 m), ``bins`` (per ``DEPTH_BINS_M``: count, median abs, median rel)
        and ``yaw_abs_median_deg`` (wrapped to [0, 180]); NaN where nothing matched.
    """
    z_gt, z_det, dyaw = [], [], []
    for gt, det in frames:
        g = _subset(gt, np.nonzero(gt.labels == cls)[0])
        d = _subset(det, np.nonzero(det.labels == cls)[0])
        match = _match_frame(iou_2d(d.box_2d, g.box_2d), d.scores, iou_2d_thr)
        for k in np.nonzero(match >= 0)[0]:
            z_gt.append(g.center_cam[match[k], 2])
            z_det.append(d.center_cam[k, 2])
            dyaw.append(abs((d.yaw[k] - g.yaw[match[k]] + math.pi) % (2 * math.pi) - math.pi))
    zg, zd = np.array(z_gt), np.array(z_det)
    ab = np.abs(zd - zg)
    rel = ab / np.maximum(zg, 1e-6)

    def med(x):
        return float(np.median(x)) if len(x) else float("nan")

    near = zg < 40.0
    bins = []
    for lo, hi in DEPTH_BINS_M:
        m = (zg >= lo) & (zg < hi)
        bins.append({"range_m": [lo, hi if math.isfinite(hi) else None], "count": int(m.sum()),
                     "depth_abs_median_m": med(ab[m]), "depth_rel_median": med(rel[m])})
    return {
        "matched": int(len(zg)),
        "depth_abs_median_m": med(ab),
        "depth_rel_median": med(rel),
        "within_40m": {"count": int(near.sum()), "depth_abs_median_m": med(ab[near]), "depth_rel_median": med(rel[near])},
        "bins": bins,
        "yaw_abs_median_deg": math.degrees(med(np.array(dyaw))) if dyaw else float("nan"),
    }


GT_FIELDS = ("depth", "yaw", "size", "centre")


def ground_truth_matches(frames: list[tuple[FrameBoxes, FrameBoxes]], cls: str,
                         iou_2d_thr: float = 0.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Match ``cls`` detections to ``cls`` ground truth by 2D IoU, per frame.

    Per frame, the ``cls`` detections matched to a ``cls`` GT by 2D IoU (greedy by score, all GT
    regardless of difficulty): ``(detection rows, GT rows)``.
    """
    out = []
    for gt, det in frames:
        gi, di = np.nonzero(gt.labels == cls)[0], np.nonzero(det.labels == cls)[0]
        if len(gi) and len(di):
            m = _match_frame(iou_2d(det.box_2d[di], gt.box_2d[gi]), det.scores[di], iou_2d_thr)
            out.append((di[m >= 0], gi[m[m >= 0]]))
        else:
            out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
    return out


def substitute_ground_truth(frames: list[tuple[FrameBoxes, FrameBoxes]], cls: str, fields: tuple[str, ...],
                            iou_2d_thr: float = 0.5,
                            matches: list[tuple[np.ndarray, np.ndarray]] | None = None) -> list[tuple[FrameBoxes, FrameBoxes]]:
    """Oracle analysis: replace named quantities of matched detections by ground truth.

    Oracle analysis: copy of ``frames`` where each ``cls`` detection matched to a ``cls`` GT by 2D IoU
    (greedy by score, like :func:`depth_yaw_errors`, all GT regardless of difficulty) takes the named
    GT quantities; unmatched detections and the 2D boxes and scores stay as they are.

    Args:
        frames: per-frame ground truth and detections.
        cls: class name.
        fields: subset of ``GT_FIELDS``: ``depth`` moves the centre along its camera ray to the GT
            depth z, ``yaw`` and ``size`` copy rotation_y / (l, w, h), ``centre`` copies the whole centre.
        iou_2d_thr: 2D IoU for a detection to count as a detection of that GT object.
        matches: :func:`ground_truth_matches` of ``frames`` when the caller has them (several oracles).
    """
    bad = set(fields) - set(GT_FIELDS)
    if bad:
        raise DetectionEvalError(f"unknown fields {sorted(bad)}; choose from {GT_FIELDS}")
    out = []
    for (gt, det), (k, j) in zip(frames, matches if matches is not None else ground_truth_matches(frames, cls, iou_2d_thr)):
        d = FrameBoxes(det.labels.copy(), det.box_2d.copy(), det.center_cam.copy(), det.size_lwh.copy(), det.yaw.copy(),
                       det.scores.copy(), det.occlusion.copy(), det.truncation.copy())
        if len(k):
            if "depth" in fields:
                d.center_cam[k] = det.center_cam[k] * (gt.center_cam[j, 2] / det.center_cam[k, 2])[:, None]
            if "centre" in fields:
                d.center_cam[k] = gt.center_cam[j]
            if "yaw" in fields:
                d.yaw[k] = gt.yaw[j]
            if "size" in fields:
                d.size_lwh[k] = gt.size_lwh[j]
        out.append((gt, d))
    return out


def localisation_bounds(frames: list[tuple[FrameBoxes, FrameBoxes]], cls: str, difficulty: str = "moderate") -> dict:
    """How well the difficulty-valid GT of ``cls`` is covered by same-class detections, and their errors.

    Returns:
        Dict with ``valid_gt``, ``ignored_gt`` (same class, failing the difficulty filter),
        ``best_iou_2d_at_least`` (fraction of valid GT whose best-overlapping detection reaches 2D IoU
        0.5 / 0.7 / 0.8: an upper bound of 2D recall at that threshold), ``best_iou_2d_median`` and,
        over valid GT matched at 2D IoU >= 0.5 (greedy by score), ``depth_rel_median``,
        ``depth_abs_median_m``, ``depth_abs_below_m`` (fraction with |dz| < 0.7 m / 1.3 m) and
        ``yaw_abs_fraction`` (|d yaw| < 10 deg, 10-30, 30-150, > 150 = flipped).
    """
    diff = DIFFICULTIES[difficulty]
    best, dz, zg, dyaw = [], [], [], []
    n_ign = 0
    for gt, det in frames:
        valid, ign = valid_gt(gt, cls, diff)
        n_ign += int(ign.sum())
        gi, di = np.nonzero(valid)[0], np.nonzero(det.labels == cls)[0]
        if not len(gi):
            continue
        iou = iou_2d(gt.box_2d[gi], det.box_2d[di])
        best += list(iou.max(1)) if len(di) else [0.0] * len(gi)
        if len(di):
            m = _match_frame(iou.T, det.scores[di], 0.5)
            k, j = di[m >= 0], gi[m[m >= 0]]
            dz += list(det.center_cam[k, 2] - gt.center_cam[j, 2])
            zg += list(gt.center_cam[j, 2])
            dyaw += list(np.abs((det.yaw[k] - gt.yaw[j] + math.pi) % (2 * math.pi) - math.pi))
    b, ab, y = np.array(best), np.abs(np.array(dz)), np.degrees(np.array(dyaw))
    rel = ab / np.maximum(np.array(zg), 1e-6)

    def frac(x):
        return float(np.mean(x)) if len(x) else float("nan")

    return {
        "valid_gt": len(b), "ignored_gt": n_ign,
        "best_iou_2d_at_least": {str(t): frac(b >= t) for t in (0.5, 0.7, 0.8)},
        "best_iou_2d_median": float(np.median(b)) if len(b) else float("nan"),
        "matched": len(ab),
        "depth_rel_median": float(np.median(rel)) if len(rel) else float("nan"),
        "depth_abs_median_m": float(np.median(ab)) if len(ab) else float("nan"),
        "depth_abs_below_m": {"0.7": frac(ab < 0.7), "1.3": frac(ab < 1.3)},
        "yaw_abs_fraction": {"<10": frac(y < 10), "10-30": frac((y >= 10) & (y < 30)),
                             "30-150": frac((y >= 30) & (y < 150)), ">150": frac(y >= 150)},
    }


def evaluate_all(frames: list[tuple[FrameBoxes, FrameBoxes]], difficulty: str = "moderate", classes=CLASSES) -> dict:
    """All metrics per class: AP3D / APBEV at both KITTI thresholds, AP2D at 0.7 (car) / 0.5, errors."""
    res: dict = {"difficulty": difficulty, "num_frames": len(frames), "classes": {}}
    for cls in classes:
        strict, loose = IOU_THRESHOLDS[cls]
        thr2d = 0.7 if cls == "car" else 0.5
        num_gt = sum(int(valid_gt(g, cls, DIFFICULTIES[difficulty])[0].sum()) for g, _ in frames)
        res["classes"][cls] = {
            "num_gt": num_gt,
            f"ap3d_r40@{strict}": evaluate_ap(frames, cls, strict, "3d", difficulty),
            f"ap3d_r40@{loose}": evaluate_ap(frames, cls, loose, "3d", difficulty),
            f"apbev_r40@{strict}": evaluate_ap(frames, cls, strict, "bev", difficulty),
            f"apbev_r40@{loose}": evaluate_ap(frames, cls, loose, "bev", difficulty),
            f"ap2d_r40@{thr2d}": evaluate_ap(frames, cls, thr2d, "2d", difficulty),
            "errors": depth_yaw_errors(frames, cls),
        }
    return res


RECALL_BINS_M: tuple[tuple[float, float], ...] = ((0.0, 40.0), (40.0, 60.0))


def rig_metrics(frames: list[tuple[FrameBoxes, FrameBoxes]], score_threshold: float, cls: str = "car",
                difficulty: str = "moderate", iou_2d_thr: float = 0.5) -> dict:
    """The per-rig summary of `eval-det`: AP3D at the loose threshold, AP2D at 0.7 (car), recall by depth and relative depth errors.

    Recall counts difficulty-valid ``cls`` GT (by GT depth, :data:`RECALL_BINS_M`) matched by a
    detection scoring at least ``score_threshold`` (what the node publishes) at 2D IoU >=
    ``iou_2d_thr`` (greedy by score); depth errors are ``(z_det - z_gt) / z_gt`` over those matches.

    Returns:
        ``frames``, ``num_gt``, ``ap3d_r40@<loose>``, ``ap2d_r40@0.7`` (car; 0.5 otherwise),
        ``recall`` (``"0-40"``, ``"40-60"``: share and count), ``depth_rel_signed_median``,
        ``depth_rel_abs_median``, ``matched``.
    """
    diff = DIFFICULTIES[difficulty]
    loose = IOU_THRESHOLDS[cls][1]
    thr2d = 0.7 if cls == "car" else 0.5
    hits = {b: [0, 0] for b in RECALL_BINS_M}
    rel = []
    for gt, det in frames:
        valid, _ = valid_gt(gt, cls, diff)
        g = _subset(gt, np.nonzero(valid)[0])
        d = _subset(det, np.nonzero((det.labels == cls) & (det.scores >= score_threshold))[0])
        match = _match_frame(iou_2d(d.box_2d, g.box_2d), d.scores, iou_2d_thr)
        found = np.zeros(len(g), bool)
        found[match[match >= 0]] = True
        z = g.center_cam[:, 2]
        for lo, hi in RECALL_BINS_M:
            m = (z >= lo) & (z < hi)
            hits[(lo, hi)][0] += int((found & m).sum())
            hits[(lo, hi)][1] += int(m.sum())
        for k in np.nonzero(match >= 0)[0]:
            zg = g.center_cam[match[k], 2]
            rel.append((d.center_cam[k, 2] - zg) / max(zg, 1e-6))
    rel_a = np.array(rel)
    return {
        "frames": len(frames),
        "num_gt": int(sum(n for _, n in hits.values())),
        f"ap3d_r40@{loose}": evaluate_ap(frames, cls, loose, "3d", difficulty),
        f"ap2d_r40@{thr2d}": evaluate_ap(frames, cls, thr2d, "2d", difficulty),
        "recall": {f"{lo:g}-{hi:g}": {"share": h / n if n else float("nan"), "count": n} for (lo, hi), (h, n) in hits.items()},
        "matched": int(len(rel_a)),
        "depth_rel_signed_median": float(np.median(rel_a)) if len(rel_a) else float("nan"),
        "depth_rel_abs_median": float(np.median(np.abs(rel_a))) if len(rel_a) else float("nan"),
    }
