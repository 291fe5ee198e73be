"""`ba-perception eval-track`: HOTA / DetA / AssA / MOTA / IDF1 / ID switches of the 3D tracker (trackeval).

Two sources:

- a world split (default ``test``; ``--presets occlusion_stress`` for the occlusion case): the
  real upstream stages run in process over cached detector output (``eval.world_pipeline``),
  with and without the object BA, and each association method tracks both inputs:
  ``hungarian_iou`` (Hungarian on 2D IoU), ``hungarian_3d`` (Hungarian on 3D Mahalanobis
  distance), ``graph`` (BA2-Track graph matching on 3D + appearance, with re-identification).
  Ground truth per frame: objects with visible pixels within ``--max-range`` (camera z); tracks:
  confirmed tracks matched in the frame, within the same range. 3D similarity is centre distance
  in odom (a match within 1 m at CLEAR's 0.5 threshold), 2D similarity is box IoU against the
  complete-silhouette box.
- KITTI tracking files: ``--kitti-gt DIR --kitti-results DIR`` score result files
  (``<seq>.txt``, KITTI tracking format) against label files, in 3D (camera-frame centres) and 2D.

``--write-kitti DIR`` also writes the world runs' tracks as KITTI tracking result files.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ba_perception.core.oba.refine import tracker_detections
from ba_perception.core.oba.stage import TrackBufferConfig
from ba_perception.core.tracking import STATUS_CONFIRMED, TrackerConfig
from ba_perception.eval.mot import MotFrame, evaluate_mot, format_table
from ba_perception.eval.oba_eval import add_world_arguments, load_world, stage_params
from ba_perception.eval.results import json_safe, machine_info
from ba_perception.eval.tracking_compare import VARIANTS as TRACKER_VARIANTS
from ba_perception.eval.world_pipeline import (
    ObaVariant,
    SequenceData,
    bias_depth,
    observations_to_detections,
    run_track_buffer,
    run_tracker,
)

METHODS = ("hungarian_iou", "hungarian_3d", "graph")
UPSTREAMS = ("ba", "none")
CLASSES = ("car", "pedestrian", "cyclist")
COLUMNS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")


def mot_frames(seq: SequenceData, tracks_per_frame: list[list[Any]], max_range_m: float) -> tuple[list[MotFrame], list[MotFrame]]:
    """3D (odom centres) and 2D (complete-silhouette boxes) metric frames of one tracked sequence."""
    f3, f2 = [], []
    for i, tracks in enumerate(tracks_per_frame):
        gt = seq.gt[i]
        z = gt.center_cam[:, 2] if len(gt) else np.zeros(0)
        g = np.isfinite(np.asarray(gt.box_visible, np.float64).reshape(-1, 4)).all(1) & (z > 0) & (z <= max_range_m)
        T_cam_odom = np.linalg.inv(seq.T_odom_cam[i])
        shown = [t for t in tracks if t.status == STATUS_CONFIRMED]
        c = np.array([t.center for t in shown]).reshape(-1, 3)
        zc = c @ T_cam_odom[2, :3] + T_cam_odom[2, 3]
        shown = [t for t, zz in zip(shown, zc) if 0 < zz <= max_range_m]
        ids = np.array([t.track_id for t in shown], np.int64)
        labels = [t.class_label for t in shown]
        gl = [gt.class_label[k] for k in np.nonzero(g)[0]]
        f3.append(MotFrame(gt_ids=gt.track_id[g], gt_labels=gl, pred_ids=ids, pred_labels=labels,
                           gt_centers=gt.center_odom[g], pred_centers=np.array([t.center for t in shown]).reshape(-1, 3)))
        pb = np.array([t.box_2d for t in shown], np.float64).reshape(-1, 4)
        pok = np.all(np.isfinite(pb), axis=1)
        gb = np.asarray(gt.box_full, np.float64).reshape(-1, 4)
        g2 = g & np.isfinite(gb).all(1)
        f2.append(MotFrame(gt_ids=gt.track_id[g2], gt_labels=[gt.class_label[k] for k in np.nonzero(g2)[0]],
                           pred_ids=ids[pok], pred_labels=[lab for lab, ok in zip(labels, pok) if ok],
                           gt_boxes_2d=gb[g2], pred_boxes_2d=pb[pok]))
    return f3, f2


def tracker_inputs(seq: SequenceData, config: TrackBufferConfig, upstreams=("ba", "none")) -> dict[str, list]:
    """The tracker's input per frame from each requested upstream.

    Object BA (with the track buffer's configured correspondences) or single-frame detections.
    """
    out = {}
    if "ba" in upstreams:
        ba = run_track_buffer(seq, ObaVariant(config.refine.correspondences), config)
        out["ba"] = [tracker_detections(f.boxes) for f in ba]
    if "none" in upstreams:
        out["none"] = [observations_to_detections(o, T) for o, T in zip(seq.observations, seq.T_odom_cam)]
    return out


def evaluate_world(seqs: list[SequenceData], base: TrackerConfig, config: TrackBufferConfig, methods, upstreams,
                   max_range_m: float, write_kitti: Path | None = None, log=print) -> dict[str, dict]:
    """Metrics per ``<method>+<upstream>`` row (3D and 2D, per class and ``all``) and tracker step time."""
    from ba_perception.eval.tracking_kitti import write_tracking_file

    inputs = {}
    for s in seqs:
        t0 = time.perf_counter()
        inputs[s.name] = tracker_inputs(s, config, upstreams)
        log(f"  {s.name}: upstream stages {time.perf_counter() - t0:.1f} s")
    rows: dict[str, dict] = {}
    for up in upstreams:
        for m in methods:
            cfg = replace(base, **TRACKER_VARIANTS[m])
            s3, s2, times = {}, {}, []
            for s in seqs:
                tracks, t = run_tracker(s, inputs[s.name][up], cfg)
                times += t
                s3[s.name], s2[s.name] = mot_frames(s, tracks, max_range_m)
                if write_kitti is not None:
                    write_tracking_file(write_kitti / f"{m}+{up}" / f"{s.name}.txt",
                                        ((i, tr, np.linalg.inv(s.T_odom_cam[i])) for i, tr in enumerate(tracks)))
            rows[f"{m}+{up}"] = {"3d": evaluate_mot(s3, "3d", classes=CLASSES), "2d": evaluate_mot(s2, "2d", classes=CLASSES),
                                 "step_ms_p50": float(np.percentile(times, 50) * 1e3),
                                 "step_ms_p99": float(np.percentile(times, 99) * 1e3)}
    return rows


def evaluate_kitti(gt_dir: Path, res_dir: Path) -> dict[str, dict]:
    """Metrics of KITTI tracking result files against label files (every ``<seq>.txt`` in ``gt_dir``)."""
    from ba_perception.cli import CommandError
    from ba_perception.eval.tracking_kitti import TrackingKittiError, mot_frames_from_kitti

    if not gt_dir.is_dir():
        raise CommandError(f"--kitti-gt {gt_dir} is not a directory of <sequence>.txt label files")
    names = sorted(p.stem for p in gt_dir.glob("*.txt"))
    if not names:
        raise CommandError(f"--kitti-gt {gt_dir} has no <sequence>.txt label files")
    missing = [n for n in names if not (res_dir / f"{n}.txt").is_file()]
    if missing:
        raise CommandError(f"--kitti-results {res_dir} lacks {missing[0]}.txt (and {len(missing) - 1} more)")
    try:
        frames = {n: mot_frames_from_kitti(gt_dir / f"{n}.txt", res_dir / f"{n}.txt") for n in names}
    except TrackingKittiError as err:
        raise CommandError(str(err)) from err
    return {"kitti": {"3d": evaluate_mot(frames, "3d", classes=CLASSES), "2d": evaluate_mot(frames, "2d", classes=CLASSES)}}


def print_tables(rows: dict[str, dict]) -> None:
    """One table per similarity: the ``all`` row and the car row of every method."""
    for sim in ("3d", "2d"):
        print(f"\n{sim.upper()} similarity ({'centre distance, match within 1 m' if sim == '3d' else 'box IoU'}), all classes:")
        print(format_table({k: v[sim]["all"] for k, v in rows.items()}, COLUMNS))
        print(f"{sim.upper()}, cars:")
        print(format_table({k: v[sim]["car"] for k, v in rows.items()}, COLUMNS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `ba-perception eval-track`."""
    add_world_arguments(parser)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--upstream", nargs="+", choices=UPSTREAMS, default=list(UPSTREAMS),
                        help="tracker input: object BA output (ba) or single-frame detections (none)")
    parser.add_argument("--depth-bias", type=float, default=1.0, help="factor on the detector's depth before the track "
                        "buffer and the single-frame upstream (as eval-oba --depth-bias)")
    parser.add_argument("--max-range", type=float, default=60.0, help="ground truth and tracks within this camera z, m")
    parser.add_argument("--kitti-gt", type=Path, default=None, help="score KITTI tracking files: folder of label <seq>.txt")
    parser.add_argument("--kitti-results", type=Path, default=None, help="folder of result <seq>.txt (with --kitti-gt)")
    parser.add_argument("--write-kitti", type=Path, default=None, help="also write world runs as KITTI result files here")
    parser.add_argument("--out", default="out/eval/tracking.json")


def run(args: argparse.Namespace) -> int:
    """Evaluate; print tables and write JSON."""
    from ba_perception.cli import CommandError

    if (args.kitti_gt is None) != (args.kitti_results is None):
        raise CommandError("--kitti-gt and --kitti-results go together")
    meta: dict[str, Any] = {"machine": machine_info()}
    if args.kitti_gt is not None:
        rows = evaluate_kitti(args.kitti_gt, args.kitti_results)
        meta |= {"kitti_gt": str(args.kitti_gt), "kitti_results": str(args.kitti_results)}
        print(f"KITTI tracking files {args.kitti_results} vs {args.kitti_gt}")
    else:
        seqs, params_file = load_world(args)
        if not args.depth_bias > 0:
            raise CommandError(f"--depth-bias must be > 0, got {args.depth_bias}")
        seqs = [bias_depth(s, args.depth_bias) for s in seqs]
        cfg = TrackBufferConfig.from_params(stage_params(args, params_file, "track_buffer_node"), args.device)
        base = TrackerConfig.from_params(stage_params(args, params_file, "tracker_node"))
        rows = evaluate_world(seqs, base, cfg, args.methods, args.upstream, args.max_range, args.write_kitti)
        meta |= {"split": args.split, "presets": args.presets, "sequences": [s.name for s in seqs],
                 "frames": sum(len(s) for s in seqs), "max_range_m": args.max_range, "params_file": str(params_file),
                 "model": args.model, "depth_bias": args.depth_bias}
        print(f"tracking on world split {args.split!r} ({len(seqs)} sequences, {meta['frames']} frames, "
              f"GT within {args.max_range:.0f} m)")
    print_tables(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(meta | {"results": rows}), indent=1))
    print(f"wrote {out}")
    return 0
