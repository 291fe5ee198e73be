"""One sequence through the BA2-Det label pipeline: reconstruct -> DoubleClustering -> box fit and filters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from ba_perception.pseudo.boxfit import CLASS_PRIORS, FitOptions, FittedBox, TrackViews, fit_box
from ba_perception.pseudo.clustering import ClusterOptions, ObjectCluster, double_clustering, refine_with_boxes
from ba_perception.pseudo.reconstruct import LabelFrame, PointCloud, ReconstructOptions, reconstruct


@dataclass
class SequenceResult:
    """What :func:`label_sequence` produced for one sequence.

    Attributes:
        points: the reconstruction.  clusters: ``{track_id: ObjectCluster}``.
        boxes: ``{track_id: FittedBox}`` (accepted or not).  track_class: ``{track_id: class}``.
        seconds: wall time per stage.
    """

    points: PointCloud
    clusters: dict[int, ObjectCluster]
    boxes: dict[int, FittedBox]
    track_class: dict[int, str]
    seconds: dict[str, float] = field(default_factory=dict)


def track_views(frames: list[LabelFrame]) -> dict[int, TrackViews]:
    """Per track id, its labelled frames, boxes and cameras."""
    per: dict[int, list[tuple[int, np.ndarray]]] = {}
    for f, fr in enumerate(frames):
        for b, t in zip(np.asarray(fr.boxes).reshape(-1, 4), np.asarray(fr.track_ids)):
            per.setdefault(int(t), []).append((f, b))
    T_cam_odom = np.linalg.inv(np.stack([fr.T_odom_cam for fr in frames]))
    K = np.stack([fr.K for fr in frames])
    H, W = frames[0].image.shape[:2]
    out = {}
    for t, items in per.items():
        idx = np.array([i for i, _ in items], np.int64)
        out[t] = TrackViews(idx, np.stack([b for _, b in items]).astype(np.float64), K[idx], T_cam_odom[idx], (W, H))
    return out


def track_classes(frames: list[LabelFrame]) -> dict[int, str]:
    """Majority class name per track id."""
    votes: dict[int, Counter] = {}
    for fr in frames:
        for t, c in zip(np.asarray(fr.track_ids), fr.classes or ["car"] * len(fr.track_ids)):
            votes.setdefault(int(t), Counter())[c] += 1
    return {t: v.most_common(1)[0][0] for t, v in votes.items()}


def label_sequence(frames: list[LabelFrame], rec: ReconstructOptions | None = None, clu: ClusterOptions | None = None,
                   fit: FitOptions | None = None, progress=None) -> SequenceResult:
    """Pseudo 3D boxes of the labelled tracks of one sequence.

    Args:
        frames: the sequence (images, intrinsics, camera and ego poses, 2D boxes with track ids).
        rec, clu, fit: tuning of the three stages.  progress: called with 1 per frame tracked.

    Returns:
        The :class:`SequenceResult`; boxes in odom.
    """
    import time

    t0 = time.perf_counter()
    pc = reconstruct(frames, rec, progress)
    t1 = time.perf_counter()
    given = np.stack([fr.T_odom_cam for fr in frames])
    T_odom_cam = pc.T_odom_cam if pc.T_odom_cam is not None else given
    T_odom_base = np.stack([fr.T_odom_base if fr.T_odom_base is not None else np.eye(4) for fr in frames])
    T_odom_base = T_odom_cam @ np.linalg.inv(given) @ T_odom_base  # the base moves with the refined camera
    frames = [replace(fr, T_odom_cam=T_odom_cam[i], T_odom_base=T_odom_base[i]) for i, fr in enumerate(frames)]
    clusters = double_clustering(pc, T_odom_cam, T_odom_base, clu)
    t2 = time.perf_counter()
    views = track_views(frames)
    classes = track_classes(frames)
    boxes = {}
    clu = clu or ClusterOptions()
    for t, c in list(clusters.items()):
        cls = classes.get(t, "car")
        if cls not in CLASS_PRIORS or t not in views:
            continue
        v = views[t]
        refined = refine_with_boxes(c, v.boxes, v.K, v.T_cam_odom, v.image_wh, clu.box_share, clu.min_points)
        if refined is None:
            continue
        clusters[t] = refined
        b = fit_box(refined, views[t], cls, fit)
        if b is not None:
            boxes[t] = b
    t3 = time.perf_counter()
    return SequenceResult(pc, clusters, boxes, classes,
                          {"reconstruct": t1 - t0, "cluster": t2 - t1, "fit": t3 - t2, "total": t3 - t0})
