"""`ba-perception eval-oba`: what object BA buys over single-frame detection, on a world split, with ablations.

Every variant runs the track buffer (tracklets + batched object BA, settings from the parameter
file) over the same cached detector output (``eval.world_pipeline``):

- ``single``: the detector alone (the baseline; no BA).
- ``priors``: no point correspondences: detector priors + constant-velocity motion prior only.
- ``learned``: BA on mutual-nearest-neighbour matches of the network's learned descriptors (the node's default).
- ``orb`` / ``klt``: BA on OpenCV ORB matches / KLT tracks inside the boxes (``klt`` is the
  track_buffer_node's incremental ``KltTracker``, ``correspondences: klt``).
- ``oracle``: BA on the world's true surface-point correspondences (an upper bound for features).
- ``static``: scene-level BA, one pose per object for the whole window (the static-world
  assumption BA-Det argues against; moving cars smear).

Metrics, cars only, detections matched one-to-one to ground truth (2D IoU >= 0.5 with the
complete-silhouette box): median absolute longitudinal (camera z) error of the published box vs
the single-frame box on the same detections, for detections whose tracklet spans
>= ``--min-frames`` frames; static/moving classification accuracy (parked: GT speed < 0.05 m/s,
moving: > 1 m/s); velocity error for moving cars (odom, horizontal); AP3D|R40 at IoU 0.5 / 0.7
of all published boxes (moderate); track buffer wall time per frame.

The depth error is also broken down by range (ground-truth camera z) and by how far the camera
travelled over the detection's window (its last ``num_frames`` frames): triangulation needs a
baseline, so what BA can gain depends on the scene (a stopped ego car gives none).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.core.oba.depth_cues import CUE_NAMES, DEPTH_CUES
from ba_perception.core.oba.refine import RefinedBox
from ba_perception.core.oba.stage import TrackBufferConfig
from ba_perception.eval.detection_ap import FrameBoxes, evaluate_ap
from ba_perception.eval.replay_metrics import gt_boxes
from ba_perception.eval.results import json_safe, machine_info
from ba_perception.eval.world_pipeline import ObaVariant, SequenceData, WorldEvalError, bias_depth, load_split, run_track_buffer

VARIANTS: dict[str, ObaVariant | None] = {
    "single": None,
    "priors": ObaVariant("none"),
    "learned": ObaVariant("descriptor"),
    "orb": ObaVariant("orb"),
    "klt": ObaVariant("klt"),
    "oracle": ObaVariant("oracle"),
    "static": ObaVariant("descriptor", scene_static=True),
}
PARKED_MPS, MOVING_MPS = 0.05, 1.0
RANGE_BINS_M = (0.0, 20.0, 40.0, math.inf)
TRAVEL_BINS_M = (0.0, 1.0, 3.0, math.inf)
NEAR_M = 40.0  # "all cars within 40 m" of the depth-bias bars
SPEED_BINS_MPS = (MOVING_MPS, 2.0, 4.0, 8.0, math.inf)


def _frame_boxes(labels, boxes, centers, R_cam_obj, sizes, scores) -> FrameBoxes:
    n = len(labels)
    yaw = geometry.yaw_from_rotation_cam(torch.as_tensor(np.asarray(R_cam_obj, np.float64).reshape(n, 3, 3))).numpy()
    return FrameBoxes(labels=np.array(labels, dtype=object), box_2d=np.asarray(boxes, np.float64).reshape(n, 4),
                      center_cam=np.asarray(centers, np.float64).reshape(n, 3), size_lwh=np.asarray(sizes, np.float64).reshape(n, 3),
                      yaw=yaw, scores=np.asarray(scores, np.float64).reshape(n))


def evaluate_sequence(seq: SequenceData, variant: ObaVariant | None, config: TrackBufferConfig, min_frames: int) -> dict:
    """Per-detection rows and AP inputs of one variant on one sequence.

    Returns:
        ``{"rows": (N, 11) array [z_gt, z_single, z_out, num_frames, refined, is_static, gt_speed,
        vel_err, moving_gt, ego_travel_m, depth_cue (index into CUE_NAMES, -1 none)], "ap_frames": [(gt, pred)],
        "seconds": per-frame track buffer times}``; ``ego_travel_m`` is the camera's travel over the row's last ``num_frames`` frames.
    """
    out = None if variant is None else run_track_buffer(seq, variant, config)
    rows, ap_frames, secs = [], [], []
    items: list[tuple[int, RefinedBox | None]]  # (observation index, its refined box; None: the detector's box)
    for i in range(len(seq)):
        obs, gt = seq.observations[i], seq.gt[i]
        T_cam_odom = np.linalg.inv(seq.T_odom_cam[i])
        if out is None:
            labels = [o.class_label for o in obs]
            pred = _frame_boxes(labels, [o.box_2d for o in obs], [o.center_cam for o in obs], [o.R_cam_obj for o in obs],
                                [o.size_lwh for o in obs], [o.score for o in obs])
            items = [(k, None) for k in range(len(obs))]
        else:
            fb = out[i]
            secs.append(fb.seconds)
            bs = fb.boxes
            pred = _frame_boxes([b.class_label for b in bs], [b.box_2d for b in bs], [b.center_cam for b in bs],
                                [T_cam_odom[:3, :3] @ b.R_odom_obj for b in bs], [b.size_lwh for b in bs], [b.score for b in bs])
            items = list(zip(fb.obs_index.tolist(), bs))
        ap_frames.append((gt_boxes(gt), pred))
        cam = seq.T_odom_cam[: i + 1, :3, 3]
        for k, b in items:
            j = int(seq.gt_index[i][k])
            if j < 0 or obs[k].class_label != "car":
                continue
            v_gt = np.asarray(gt.velocity_odom[j], np.float64)
            speed = float(np.linalg.norm(v_gt[:2]))
            if b is None:
                rows.append([gt.center_cam[j, 2], obs[k].center_cam[2], obs[k].center_cam[2], 1, 0, 0, speed, math.nan,
                             speed > MOVING_MPS, math.nan, -1])
                continue
            verr = float(np.linalg.norm((np.asarray(b.velocity_odom) - v_gt)[:2])) if b.refined else math.nan
            travel = float(np.linalg.norm(cam[-1] - cam[max(0, i + 1 - b.num_frames)]))
            rows.append([gt.center_cam[j, 2], obs[k].center_cam[2], b.center_cam[2], b.num_frames, b.refined, b.is_static,
                         speed, verr, speed > MOVING_MPS, travel, CUE_NAMES.index(b.depth_cue) if b.depth_cue else -1])
    return {"rows": np.array(rows, np.float64).reshape(-1, 11), "ap_frames": ap_frames, "seconds": secs}


def detector_depth_persistence(seqs: list[SequenceData], window: int, min_frames: int) -> dict:
    """How much averaging the detector's depths over a window can gain at best (cars).

    Per ground-truth car, the relative depth error ``z_det / z_gt - 1`` of each matched detection;
    ``lag1_correlation`` is the correlation of consecutive frames' errors (0: independent noise
    that a window averages away; near 1: a per-object bias that only geometry can remove);
    ``ideal_average`` is the median absolute depth error (m) when each detection's depth is
    replaced by its car's mean relative error over the last ``window`` frames (perfect relative
    motion, no triangulation) against the detections' own (``single``), for detections with at
    least ``min_frames`` of the car's detections in that window.
    """
    pairs, single, avg = [], [], []
    for s in seqs:
        hist: dict[int, list[tuple[int, float]]] = {}
        for i in range(len(s)):
            gt = s.gt[i]
            for k, j in enumerate(s.gt_index[i]):
                if j < 0 or s.observations[i][k].class_label != "car":
                    continue
                z = float(gt.center_cam[j, 2])
                rel = float(s.observations[i][k].center_cam[2]) / z - 1.0
                h = hist.setdefault(int(gt.track_id[j]), [])
                if h and h[-1][0] == i - 1:
                    pairs.append((h[-1][1], rel))
                h.append((i, rel))
                win = [r for f, r in h if f > i - window]
                if len(win) >= min_frames:
                    single.append(abs(rel) * z)
                    avg.append(abs(float(np.mean(win))) * z)
    p = np.asarray(pairs, np.float64).reshape(-1, 2)
    return {"lag1_correlation": float(np.asarray(np.corrcoef(p.T))[0, 1]) if len(p) > 2 else math.nan, "pairs": len(p),
            "window": window, "count": len(single),
            "single_abs_median_m": float(np.median(single)) if single else math.nan,
            "ideal_average_abs_median_m": float(np.median(avg)) if avg else math.nan}


def descriptor_match_quality(seqs: list[SequenceData], refine_cfg, good_m: float = 0.25) -> dict:
    """How the learned descriptors match between consecutive detections of the same ground-truth car.

    A match (mutual nearest neighbour with the track buffer's ratio and similarity settings) is
    *off the object* when either sample does not lie on that car, and *correct* when both do and
    their object-frame surface points are within ``good_m``.
    """
    from ba_perception.core.oba.correspondences import mutual_nn_matches

    n = off = good = 0
    errs: list[float] = []
    for s in seqs:
        for i in range(1, len(s)):
            prev = {int(s.gt[i - 1].track_id[j]): k for k, j in enumerate(s.gt_index[i - 1]) if j >= 0}
            for k, j in enumerate(s.gt_index[i]):
                if j < 0 or s.observations[i][k].class_label != "car":
                    continue
                kp = prev.get(int(s.gt[i].track_id[j]))
                if kp is None:
                    continue
                a, b = s.observations[i][k], s.observations[i - 1][kp]
                if not (len(a.descriptors) and len(b.descriptors)):
                    continue
                da, db = torch.as_tensor(a.descriptors), torch.as_tensor(b.descriptors)
                m = mutual_nn_matches(da, db, torch.ones(len(da), dtype=torch.bool), torch.ones(len(db), dtype=torch.bool),
                                      refine_cfg.match_ratio, refine_cfg.match_min_similarity).numpy()
                ia = np.nonzero(m >= 0)[0]
                pa, pb = s.sample_points[i][k][ia], s.sample_points[i - 1][kp][m[ia]]
                on = np.isfinite(pa).all(1) & np.isfinite(pb).all(1)
                e = np.linalg.norm(pa[on] - pb[on], axis=1)
                n, off, good = n + len(ia), off + int((~on).sum()), good + int((e < good_m).sum())
                errs += e.tolist()
    return {"matches": n, "off_object_share": off / max(n, 1), "correct_share_on_object": good / max(len(errs), 1),
            "correct_share": good / max(n, 1), "median_error_on_object_m": float(np.median(errs)) if errs else math.nan,
            "good_m": good_m}


def summarize(rows: np.ndarray, ap_frames: list, seconds: list[float], min_frames: int, refined_variant: bool) -> dict:
    """The table's numbers of one variant from :func:`evaluate_sequence` outputs of every sequence."""
    z, z1, zo, nf, ref, sta, speed, verr, moving, travel, cue = rows.T if len(rows) else [np.zeros(0)] * 11
    res: dict[str, Any] = {}
    sel = nf >= min_frames if refined_variant else np.ones(len(z), bool)
    e1, eo = np.abs(z1 - z)[sel], np.abs(zo - z)[sel]
    res["depth"] = {"count": int(sel.sum()), "single_abs_median_m": float(np.median(e1)) if sel.any() else math.nan,
                    "out_abs_median_m": float(np.median(eo)) if sel.any() else math.nan}
    res["depth"]["reduction"] = 1 - res["depth"]["out_abs_median_m"] / res["depth"]["single_abs_median_m"] if sel.any() else math.nan
    res["refined_share"] = float(ref[sel].mean()) if sel.any() else math.nan
    def split(m: np.ndarray) -> dict:
        a, b = np.abs(z1 - z)[m], np.abs(zo - z)[m]
        return {"count": int(m.sum()), "single_abs_median_m": float(np.median(a)) if m.any() else math.nan,
                "out_abs_median_m": float(np.median(b)) if m.any() else math.nan}

    for name, m in (("parked", sel & (speed < PARKED_MPS)), ("moving", sel & (moving > 0))):
        res["depth"][name] = split(m)
    res["depth"]["by_range"] = {_bin_name(lo, hi): split(sel & (z >= lo) & (z < hi)) for lo, hi in zip(RANGE_BINS_M, RANGE_BINS_M[1:])}
    res["signed"] = signed_depth(z, z1, zo, sel, speed, moving, travel)
    res["depth_cue_share"] = {n: float((cue[sel & (ref > 0)] == i).mean()) if (sel & (ref > 0)).any() else math.nan
                              for i, n in enumerate(CUE_NAMES)}
    res["depth"]["parked_by_ego_travel"] = {_bin_name(lo, hi): split(sel & (speed < PARKED_MPS) & (travel >= lo) & (travel < hi))
                                            for lo, hi in zip(TRAVEL_BINS_M, TRAVEL_BINS_M[1:])}
    if refined_variant:
        r = sel & (ref > 0)
        parked, mov = r & (speed < PARKED_MPS), r & (moving > 0)
        both = parked | mov
        correct = np.where(parked, sta > 0, sta == 0)
        res["motion_state"] = {"count": int(both.sum()), "parked": int(parked.sum()), "moving": int(mov.sum()),
                               "accuracy": float(correct[both].mean()) if both.any() else math.nan,
                               "parked_correct": float(correct[parked].mean()) if parked.any() else math.nan,
                               "moving_correct": float(correct[mov].mean()) if mov.any() else math.nan}
        share = lambda m: {"count": int(m.sum()), "correct": float(correct[m].mean()) if m.any() else math.nan}  # noqa: E731
        res["motion_state"]["parked_by_ego_travel"] = {_bin_name(lo, hi): share(parked & (travel >= lo) & (travel < hi))
                                                       for lo, hi in zip(TRAVEL_BINS_M, TRAVEL_BINS_M[1:])}
        res["motion_state"]["moving_by_speed"] = {_bin_name(lo, hi).replace("m", " m/s"): share(mov & (speed >= lo) & (speed < hi))
                                                  for lo, hi in zip(SPEED_BINS_MPS, SPEED_BINS_MPS[1:])}
        res["velocity"] = {"count": int(mov.sum()), "error_median_mps": float(np.nanmedian(verr[mov])) if mov.any() else math.nan}
    if ap_frames:  # the car numbers of the table only (rotated-box IoU is the expensive part)
        res["ap3d_r40@0.5"], res["ap3d_r40@0.7"] = (evaluate_ap(ap_frames, "car", t, "3d", "moderate") for t in (0.5, 0.7))
        res["apbev_r40@0.5"] = evaluate_ap(ap_frames, "car", 0.5, "bev", "moderate")
    else:
        res["ap3d_r40@0.5"] = res["ap3d_r40@0.7"] = res["apbev_r40@0.5"] = math.nan
    res["track_buffer_ms_p50"] = float(np.percentile(seconds, 50) * 1e3) if seconds else 0.0
    return res


def signed_depth(z, z1, zo, sel, speed, moving, travel) -> dict:
    """Median signed and absolute relative depth error (``z / z_gt - 1``) single-frame and published, by group.

    Groups: all cars, cars within ``NEAR_M``, parked / moving, parked and all by camera travel over
    the window, by range.
    """
    def stats(m: np.ndarray) -> dict:
        r1, ro = (z1 / z - 1)[m], (zo / z - 1)[m]
        f = lambda x: float(np.median(x)) if len(x) else math.nan  # noqa: E731
        return {"count": int(m.sum()), "single_signed": f(r1), "out_signed": f(ro), "single_abs": f(np.abs(r1)),
                "out_abs": f(np.abs(ro))}

    parked = sel & (speed < PARKED_MPS)
    out = {"all": stats(sel), f"within_{NEAR_M:g}m": stats(sel & (z < NEAR_M)), "parked": stats(parked),
           "moving": stats(sel & (moving > 0))}
    for lo, hi in zip(TRAVEL_BINS_M, TRAVEL_BINS_M[1:]):
        out[f"parked_ego_{_bin_name(lo, hi)}"] = stats(parked & (travel >= lo) & (travel < hi))
        out[f"moving_ego_{_bin_name(lo, hi)}"] = stats(sel & (moving > 0) & (travel >= lo) & (travel < hi))
        out[f"all_ego_{_bin_name(lo, hi)}"] = stats(sel & (travel >= lo) & (travel < hi))
    out[f"within_{NEAR_M:g}m_ego_>=3m"] = stats(sel & (z < NEAR_M) & (travel >= 3.0))
    for lo, hi in zip(RANGE_BINS_M, RANGE_BINS_M[1:]):
        out[f"z_{_bin_name(lo, hi)}"] = stats(sel & (z >= lo) & (z < hi))
    return out


def format_signed(results: dict[str, dict]) -> str:
    """Median signed relative depth error single -> published (%), by group."""
    groups = ["all", f"within_{NEAR_M:g}m", "parked", "parked_ego_>=3m", "parked_ego_1-3m", "parked_ego_0-1m", "moving",
              f"within_{NEAR_M:g}m_ego_>=3m", "z_0-20m", "z_20-40m", "z_>=40m"]
    head = f"{'variant':28s} " + " ".join(f"{g:>22s}" for g in groups)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = []
        for g in groups:
            d = r["signed"][g]
            cells.append(f"{100 * d['single_signed']:+5.1f}->{100 * d['out_signed']:+5.1f} ({d['count']:5d})" if d["count"] else "n/a")
        lines.append(f"{name:28s} " + " ".join(f"{c:>22s}" for c in cells))
    lines.append("median |relative depth error| (%) single -> published:")
    for name, r in results.items():
        cells = []
        for g in groups:
            d = r["signed"][g]
            cells.append(f"{100 * d['single_abs']:5.1f}->{100 * d['out_abs']:5.1f} ({d['count']:5d})" if d["count"] else "n/a")
        lines.append(f"{name:28s} " + " ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def _bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}m" if math.isfinite(hi) else f">={lo:g}m"


def format_breakdown(results: dict[str, dict]) -> str:
    """Median |dz| single -> out per range bin and, for parked cars, per camera travel over the window."""
    keys = [("by_range", k) for k in results[next(iter(results))]["depth"]["by_range"]]
    keys += [("parked_by_ego_travel", k) for k in results[next(iter(results))]["depth"]["parked_by_ego_travel"]]
    head = f"{'variant':28s} " + " ".join(f"{('z ' if g == 'by_range' else 'parked, ego ') + k:>17s}" for g, k in keys)
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = []
        for g, k in keys:
            d = r["depth"][g][k]
            cells.append(f"{d['single_abs_median_m']:5.2f}->{d['out_abs_median_m']:5.2f} ({d['count']:4d})" if d["count"]
                         else f"{'n/a':>17s}")
        lines.append(f"{name:28s} " + " ".join(f"{c:>17s}" for c in cells))
    return "\n".join(lines)


def format_motion_state(results: dict[str, dict]) -> str:
    """Share of right static/moving calls: parked cars by camera travel over the window, moving cars by speed."""
    lines = []
    for name, r in results.items():
        ms = r.get("motion_state")
        if ms:
            cells = [f"parked, ego {k} {100 * v['correct']:.0f} % ({v['count']})" for k, v in ms["parked_by_ego_travel"].items()]
            cells += [f"moving {k} {100 * v['correct']:.0f} % ({v['count']})" for k, v in ms["moving_by_speed"].items()]
            lines.append(f"{name:28s} " + ", ".join(cells).replace("nan %", "n/a"))
    return "\n".join(lines)


def format_rows(results: dict[str, dict]) -> str:
    """The ablation table."""
    head = (f"{'variant':28s} {'n':>6s} {'|dz| single':>11s} {'|dz| out':>9s} {'reduct.':>8s} {'static/mov':>10s} "
            f"{'vel err':>8s} {'AP3D.5':>7s} {'AP3D.7':>7s} {'ms/frame':>8s}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        d = r["depth"]
        ms = r.get("motion_state", {}).get("accuracy", math.nan)
        ve = r.get("velocity", {}).get("error_median_mps", math.nan)
        lines.append(f"{name:28s} {d['count']:6d} {d['single_abs_median_m']:10.2f}m {d['out_abs_median_m']:8.2f}m "
                     f"{100 * d['reduction']:7.1f}% {100 * ms:9.1f}% {ve:7.2f} {r['ap3d_r40@0.5']:7.1f} "
                     f"{r['ap3d_r40@0.7']:7.1f} {r['track_buffer_ms_p50']:8.1f}".replace("nan%", " n/a").replace(" nan", " n/a"))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `ba-perception eval-oba`."""
    add_world_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--depth-bias", default="1.0", help="comma-separated factors on the detector's depth (e.g. 0.85,1.0,1.15): "
                        "each observation's centre moves along its ray, its depth std scales, before the track buffer")
    parser.add_argument("--cues", default="", help=f"comma-separated depth_cues of the refined variants ({', '.join(DEPTH_CUES)}); "
                        "default: the parameter file's")
    parser.add_argument("--min-frames", type=int, default=5, help="depth error counts detections whose tracklet spans this many frames")
    parser.add_argument("--out", default="out/eval/oba.json")


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the world-split evaluations (eval-oba, eval-track)."""
    parser.add_argument("--split", default="test", help="world split (test: 8 sequences x 100 frames, never trained on)")
    parser.add_argument("--presets", nargs="+", default=None, help="override the split's preset cycle (e.g. occlusion_stress)")
    parser.add_argument("--sequences", type=int, default=None, help="number of sequences (default: the split's)")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default: the split's)")
    parser.add_argument("--model", default="models/detector.onnx")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="detector threshold (default: detector_node's; other decode settings: --set detector_node.NAME:=V)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="object BA device")
    parser.add_argument("--params-file", default="", help="node parameters (default: the package's config/stack.yaml)")
    parser.add_argument("--cache-dir", default="data/eval_cache", help="rendered + detected sequences are kept here")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override a node parameter of the parameter file (e.g. track_buffer_node.window:=12)")


def stage_params(args: argparse.Namespace, params_file: Path, node: str) -> dict[str, Any]:
    """A node's parameters from the file with the command line's ``--set`` overrides applied."""
    from ba_perception.cli import CommandError
    from ba_perception.graph import node_parameters

    try:
        return node_parameters(params_file, node, args.set)
    except ValueError as err:
        raise CommandError(f"--set {err}") from err


def load_world(args: argparse.Namespace) -> tuple[list[SequenceData], Path]:
    """The split's sequences through the detector, and the parameter file (CommandError on bad input)."""
    from ba_perception.cli import CommandError
    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.graph import default_params_file

    params_file = Path(args.params_file) if args.params_file else default_params_file()
    if not params_file.is_file():
        raise CommandError(f"parameter file {params_file} not found")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    dp = stage_params(args, params_file, "detector_node")
    if args.score_threshold is not None:
        dp["score_threshold"] = args.score_threshold
    try:
        seqs = load_split(args.split, args.presets, args.sequences, args.frames, Path(args.model), args.backend,
                          args.threads, DecodeConfig.from_params(dp), Path(args.cache_dir) if args.cache_dir else None)
    except WorldEvalError as err:
        raise CommandError(str(err)) from err
    return seqs, params_file


def run(args: argparse.Namespace) -> int:
    """Evaluate every variant on the split; print the ablation table and write JSON."""
    seqs, params_file = load_world(args)
    cfg = TrackBufferConfig.from_params(stage_params(args, params_file, "track_buffer_node"), args.device)
    tc, rc = cfg.tracklets, cfg.refine
    from ba_perception.cli import CommandError

    try:
        biases = [float(b) for b in args.depth_bias.split(",") if b.strip()]
    except ValueError as err:
        raise CommandError(f"--depth-bias: comma-separated numbers, got {args.depth_bias!r}") from err
    cues = [c.strip() for c in args.cues.split(",") if c.strip()] or [None]
    if not biases or any(not b > 0 for b in biases) or any(c not in DEPTH_CUES for c in cues if c is not None):
        raise CommandError(f"--depth-bias needs factors > 0 and --cues names from {DEPTH_CUES}")
    results: dict[str, dict] = {}
    for bias in biases:
        bseqs = [bias_depth(s, bias) for s in seqs]
        for name in args.variants:
            base = VARIANTS[name]
            for cue in cues if base is not None else [None]:
                variant = None if base is None else ObaVariant(base.correspondences, base.scene_static, cue)
                key = name + (f"|{cue}" if cue else "") + (f"|x{bias:g}" if len(biases) > 1 or bias != 1.0 else "")
                t0 = time.perf_counter()
                parts = [evaluate_sequence(s, variant, cfg, args.min_frames) for s in bseqs]
                results[key] = summarize(np.concatenate([p["rows"] for p in parts]), [f for p in parts for f in p["ap_frames"]],
                                         [t for p in parts for t in p["seconds"]], args.min_frames, variant is not None)
                results[key]["depth_bias"], results[key]["depth_cues"] = bias, cue or rc.depth_cues
                presets = sorted({s.name.rsplit("_", 1)[0] for s in seqs})
                if len(presets) > 1:  # the gain depends on the scene (ego speed = baseline, share of parked cars)
                    by = {pr: summarize(np.concatenate([p["rows"] for s, p in zip(seqs, parts) if s.name.startswith(pr + "_")]),
                                        [], [], args.min_frames, variant is not None) for pr in presets}
                    results[key]["by_preset"] = {pr: r["depth"] for pr, r in by.items()}
                    results[key]["signed_by_preset"] = {pr: r["signed"] for pr, r in by.items()}
                print(f"  {key}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"object BA on world split {args.split!r} ({len(seqs)} sequences, {sum(len(s) for s in seqs)} frames), cars, "
          f"tracklets >= {args.min_frames} frames; window {rc.window} (static test {tc.window}), {rc.num_points} points, "
          f"{rc.solver.max_iterations} iterations, {str(rc.dtype).replace('torch.', '')}, {args.device}")
    print(format_rows(results))
    print("median |dz| (m) single -> refined (count), by range and, for parked cars, by camera travel over the window:")
    print(format_breakdown(results))
    print("median signed relative depth error (%) single -> published (count), by group:")
    print(format_signed(results))
    print("static/moving right, parked cars by camera travel over the window, moving cars by speed:")
    print(format_motion_state(results))
    dp = detector_depth_persistence(seqs, rc.window, args.min_frames)
    print(f"detector depth error, cars: consecutive-frame correlation {dp['lag1_correlation']:.2f}; averaging the "
          f"{dp['window']}-frame window with perfect relative motion would give {dp['single_abs_median_m']:.2f} -> "
          f"{dp['ideal_average_abs_median_m']:.2f} m (what geometry must beat)")
    mq = descriptor_match_quality(seqs, rc)
    print(f"learned descriptor matches between consecutive detections of a car: {mq['matches']}; "
          f"{100 * mq['off_object_share']:.0f} % have a sample off the car; of the rest "
          f"{100 * mq['correct_share_on_object']:.0f} % land within {mq['good_m']} m (median {mq['median_error_on_object_m']:.2f} m)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe({
        "split": args.split, "presets": args.presets, "sequences": [s.name for s in seqs], "model": args.model,
        "min_frames": args.min_frames, "params_file": str(params_file), "overrides": args.set, "device": args.device,
        "refine": {"window": rc.window, "static_window": tc.window, "num_points": rc.num_points, "max_iterations": rc.solver.max_iterations,
                   "dtype": str(rc.dtype)}, "machine": machine_info(),
        "learned_matches": mq, "detector_depth_persistence": dp, "results": results}), indent=1))
    print(f"wrote {out}")
    return 0
