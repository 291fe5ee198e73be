"""Score a recorded replay against the bag's ground truth: detection AP, depth before/after BA, MOT, latency."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.eval.detection_ap import DEPTH_BINS_M, FrameBoxes, evaluate_all, iou_2d
from ba_perception.eval.mot import MotFrame, evaluate_mot
from ba_perception.ros.convert import pose_to_matrix


def gt_boxes(objects: Any) -> FrameBoxes:
    """Ground-truth FrameBoxes of one frame (2D box = complete-silhouette box, as ``eval-det`` and training use)."""
    box = np.asarray(objects.box_full, np.float64).reshape(-1, 4)
    ok = np.isfinite(box).all(1) & (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    idx = np.nonzero(ok)[0]
    return FrameBoxes(labels=np.array([objects.class_label[i] for i in idx], dtype=object), box_2d=box[idx],
                      center_cam=np.asarray(objects.center_cam)[idx], size_lwh=np.asarray(objects.size_lwh)[idx],
                      yaw=np.asarray(objects.rotation_y)[idx], occlusion=np.asarray(objects.occlusion)[idx],
                      truncation=np.asarray(objects.truncation)[idx])


def observation_boxes(msg: Any) -> FrameBoxes:
    """FrameBoxes of an ObjectObservationArray (camera frame)."""
    obs = list(msg.observations)
    T = np.stack([pose_to_matrix(o.pose) for o in obs]) if obs else np.zeros((0, 4, 4))
    yaw = geometry.yaw_from_rotation_cam(torch.as_tensor(T[:, :3, :3])).numpy() if obs else np.zeros(0)
    return FrameBoxes(labels=np.array([o.class_label for o in obs], dtype=object),
                      box_2d=np.array([list(o.box_2d) for o in obs]).reshape(-1, 4), center_cam=T[:, :3, 3],
                      size_lwh=np.array([[o.size.x, o.size.y, o.size.z] for o in obs]).reshape(-1, 3), yaw=yaw,
                      scores=np.array([o.score for o in obs]))


def depth_before_after(pairs: list[tuple[Any, Any, Any]], min_frames: int = 5, cls: str = "car") -> dict:
    """Longitudinal (camera z) error of single-frame observations vs BA-refined detections of the same objects.

    ``pairs``: ``(gt FrameBoxes, observation msg, detection msg)`` per frame. A refined detection is
    tied to its frame's observation by its 2D box (the track buffer carries it through) and to
    ground truth by 2D IoU >= 0.5; only refined objects seen in >= ``min_frames`` frames count.
    """
    rows = []  # (z_gt, z_single, z_refined)
    for gt, obs, det in pairs:
        if det is None or obs is None:
            continue
        ob = observation_boxes(obs)
        g_idx = np.nonzero(gt.labels == cls)[0]
        for d in det.detections:
            if d.class_label != cls or not d.refined or d.num_frames < min_frames or not len(g_idx) or not len(ob):
                continue
            box = np.array(list(d.box_2d))[None]
            k = int(np.argmin(np.abs(ob.box_2d - box).sum(1)))
            if np.abs(ob.box_2d[k] - box[0]).max() > 1e-3:
                continue
            iou = iou_2d(box, gt.box_2d[g_idx])[0]
            j = int(np.argmax(iou))
            if iou[j] < 0.5:
                continue
            rows.append((gt.center_cam[g_idx[j], 2], ob.center_cam[k, 2], d.center_camera.z))
    a = np.array(rows).reshape(-1, 3)
    out: dict[str, Any] = {"objects": int(len(a)), "min_frames": min_frames}
    if not len(a):
        return out | {"single_abs_median_m": math.nan, "refined_abs_median_m": math.nan, "reduction": math.nan, "bins": []}
    e1, e2 = np.abs(a[:, 1] - a[:, 0]), np.abs(a[:, 2] - a[:, 0])
    out |= {"single_abs_median_m": float(np.median(e1)), "refined_abs_median_m": float(np.median(e2)),
            "reduction": float(1 - np.median(e2) / max(np.median(e1), 1e-9)), "bins": []}
    for lo, hi in DEPTH_BINS_M:
        m = (a[:, 0] >= lo) & (a[:, 0] < hi)
        out["bins"].append({"range_m": [lo, hi if math.isfinite(hi) else None], "count": int(m.sum()),
                            "single_abs_median_m": float(np.median(e1[m])) if m.any() else math.nan,
                            "refined_abs_median_m": float(np.median(e2[m])) if m.any() else math.nan})
    out["samples"] = a.tolist()
    return out


def mot_frames(gt_frames: list[Any], tracks: dict[int, Any]) -> tuple[list[MotFrame], list[MotFrame]]:
    """3D (odom centres) and 2D MotFrames of the tracker output against ground truth, every GT frame."""
    f3, f2 = [], []
    for fr in gt_frames:
        g = fr.objects
        msg = tracks.get(fr.stamp_ns)
        tr = list(msg.tracks) if msg is not None else []
        pred_ids = np.array([t.track_id for t in tr], dtype=np.int64)
        labels = [t.class_label for t in tr]
        centers = np.array([[t.pose.position.x, t.pose.position.y, t.pose.position.z] for t in tr]).reshape(-1, 3)
        f3.append(MotFrame(gt_ids=np.asarray(g.track_id), gt_labels=list(g.class_label), pred_ids=pred_ids,
                           pred_labels=labels, gt_centers=np.asarray(g.center_odom).reshape(-1, 3), pred_centers=centers))
        gb = np.asarray(g.box_full, np.float64).reshape(-1, 4)
        ok = np.all(np.isfinite(gb), axis=1)
        pb = np.array([list(t.box_2d) for t in tr]).reshape(-1, 4)
        pok = np.all(pb >= 0, axis=1)  # (0,) for a frame without tracks
        f2.append(MotFrame(gt_ids=np.asarray(g.track_id)[ok], gt_labels=[c for c, k in zip(g.class_label, ok) if k],
                           pred_ids=pred_ids[pok], pred_labels=[c for c, k in zip(labels, pok) if k],
                           gt_boxes_2d=gb[ok], pred_boxes_2d=pb[pok]))
    return f3, f2


def evaluate_run(bag: Path, outputs: dict[str, dict[int, Any]], latency_json: Path) -> dict:
    """All metrics of one replay (see the module docstring); NaN where ground truth is absent."""
    from ba_perception.data.bag import BagError, read_bag

    res: dict[str, Any] = {}
    if latency_json.exists():
        res["latency"] = json.loads(latency_json.read_text())
    obs, dets, tracks = (outputs[t] for t in ("/ba_perception/observations", "/ba_perception/detections",
                                              "/ba_perception/tracks"))
    try:
        gt_frames = list(read_bag(bag, images=False))
    except BagError as err:
        res["ground_truth"] = f"not evaluated: {err}"
        gt_frames = []
    res["frames"] = {"input": len(gt_frames), "observations": len(obs), "detections": len(dets), "tracks": len(tracks)}
    if not gt_frames:
        return res
    det_pairs = [(gt_boxes(f.objects), observation_boxes(obs[f.stamp_ns])) for f in gt_frames if f.stamp_ns in obs]
    res["detection"] = evaluate_all(det_pairs, "moderate") if det_pairs else {}
    res["depth_ba"] = depth_before_after([(gt_boxes(f.objects), obs.get(f.stamp_ns), dets.get(f.stamp_ns))
                                          for f in gt_frames])
    f3, f2 = mot_frames(gt_frames, tracks)
    res["mot_3d"] = evaluate_mot(f3, "3d", classes=["car", "pedestrian", "cyclist"])
    res["mot_2d"] = evaluate_mot(f2, "2d", classes=["car", "pedestrian", "cyclist"])
    res["dropped_frames"] = len(gt_frames) - len([f for f in gt_frames if f.stamp_ns in tracks])
    return res
