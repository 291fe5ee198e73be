"""Evaluate the detector on world splits or a KITTI-rig split (``ba-perception eval-det``).

Evaluate the detector on world splits (`ba-perception eval-det`): per-rig table of the in-distribution
`test` and cross-domain `test_cross` splits (world v3), or AP|R40 on a cached KITTI-rig split; JSON under out/eval/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ba_perception.core import geometry as geo
from ba_perception.core.detection.decode import DecodeConfig, decode, net_to_grid, network_outputs
from ba_perception.core.detection.model import CLASSES, OUTPUT_STRIDE
from ba_perception.core.detection.preprocess import PREPROCESS_MODES, Preprocess, apply_preprocess, to_chw_float
from ba_perception.eval.detection_ap import (
    DIFFICULTIES,
    IOU_THRESHOLDS,
    FrameBoxes,
    evaluate_all,
    evaluate_ap,
    ground_truth_matches,
    localisation_bounds,
    rig_metrics,
    substitute_ground_truth,
    valid_gt,
)
from ba_perception.eval.results import json_safe, machine_info

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def gt_frame(split, i: int) -> FrameBoxes:
    """Ground truth of cached frame ``i`` (objects with no visible silhouette box are dropped)."""
    rows = split.objects_of(i)
    box = split.obj_box[rows]
    ok = np.isfinite(box).all(1)
    rows = rows[ok]
    return FrameBoxes(
        labels=np.array([CLASSES[k] for k in split.obj_label[rows]], dtype=object),
        box_2d=split.obj_box[rows], center_cam=split.obj_center[rows], size_lwh=split.obj_size[rows],
        yaw=split.obj_yaw[rows], occlusion=split.obj_occ[rows], truncation=split.obj_trunc[rows],
    )


def det_frame(det, classes=CLASSES) -> FrameBoxes:
    """Convert decoded :class:`Detections` to :class:`FrameBoxes`."""
    return FrameBoxes(
        labels=np.array([classes[k] for k in det.labels.tolist()], dtype=object),
        box_2d=det.box_2d.double().numpy(), center_cam=det.center_cam.double().numpy(),
        size_lwh=det.size_lwh.double().numpy(), yaw=det.yaw.double().numpy(), scores=det.scores.double().numpy(),
    )


ORACLE_ROWS: tuple[tuple[str, ...], ...] = (
    (), ("size",), ("yaw",), ("depth",), ("depth", "yaw"), ("depth", "size"), ("depth", "size", "yaw"), ("centre", "size", "yaw"),
)


def centre_cells(split, i: int, stride: int = OUTPUT_STRIDE) -> np.ndarray:
    """Output-grid cell of each ground-truth object's projected 3D centre in frame ``i``.

    Output-grid cell ``(N, 2)`` (col, row) of the projected 3D centre of each GT object of frame ``i``
    (same objects and order as :func:`gt_frame`), as the training targets assign them; objects with
    z <= 0.5 m get -1000 (they own no cell).
    """
    rows = split.objects_of(i)
    rows = rows[np.isfinite(split.obj_box[rows]).all(1)]
    pre = split.preprocess
    Kn = pre.K_net(torch.from_numpy(split.K_src[i]).double())
    c = split.obj_center[rows]
    uv = geo.project_points(torch.from_numpy(np.where(c[:, 2:3] > 0.5, c, 1.0))[None], Kn)[0]
    g = net_to_grid(uv, stride).numpy()
    h, w = pre.net_hw[0] // stride, pre.net_hw[1] // stride
    cell = np.stack([np.clip(np.round(g[:, 0]), 0, w - 1), np.clip(np.round(g[:, 1]), 0, h - 1)], 1)
    return np.where(c[:, 2:3] > 0.5, cell, -1000.0)


def crowded_fraction(frames: list[tuple[FrameBoxes, FrameBoxes]], cells: list[np.ndarray], cls: str = "car",
                     difficulty: str = "moderate") -> float:
    """Fraction of ground-truth objects whose centre cell is crowded by another object's.

    Fraction of difficulty-valid ``cls`` GT with another GT object's centre cell within one cell
    (3x3 neighbourhood): there a single-peak heatmap with 3x3 max-pool NMS keeps both only if the two
    peaks are exactly equal.
    """
    n = hit = 0
    for (gt, _), cell in zip(frames, cells):
        valid, _ = valid_gt(gt, cls, DIFFICULTIES[difficulty])
        for j in np.nonzero(valid)[0]:
            d = np.abs(cell - cell[j]).max(1)
            d[j] = np.inf
            n += 1
            hit += bool((d <= 1).any())
    return hit / n if n else float("nan")


def diagnose(frames: list[tuple[FrameBoxes, FrameBoxes]], cells: list[np.ndarray] | None = None, cls: str = "car",
             difficulty: str = "moderate") -> dict:
    """Diagnose what limits AP.

    What limits AP: oracle rows (matched detections take GT depth / yaw / size / centre, see
    :func:`substitute_ground_truth`), 2D localisation bounds and errors on valid GT
    (:func:`localisation_bounds`) and, given the GT centre cells, the crowded fraction.
    """
    strict, loose = IOU_THRESHOLDS[cls]
    thr2d = 0.7 if cls == "car" else 0.5
    oracle = []
    matches = ground_truth_matches(frames, cls)  # once for every oracle row
    for fields in ORACLE_ROWS:
        f = substitute_ground_truth(frames, cls, fields, matches=matches) if fields else frames
        oracle.append({"gt_fields": list(fields), **{f"{m}@{t}": evaluate_ap(f, cls, t, m, difficulty)
                                                     for m in ("3d", "bev") for t in (strict, loose)}})
    res = {"class": cls, "difficulty": difficulty, "oracle": oracle,
           f"ap2d_r40@{thr2d}": evaluate_ap(frames, cls, thr2d, "2d", difficulty),
           "ap2d_r40@0.5": evaluate_ap(frames, cls, 0.5, "2d", difficulty),
           "bounds": localisation_bounds(frames, cls, difficulty)}
    if cells is not None:
        res["crowded_fraction"] = crowded_fraction(frames, cells, cls, difficulty)
    return res


def diagnosis_rows(d: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of :func:`diagnose` for a printed table."""
    rows = []
    for r in d["oracle"]:
        name = "+".join(r["gt_fields"]) or "none (as detected)"
        rows.append((f"{d['class']} oracle GT {name}", "  ".join(f"{k} {v:.1f}" for k, v in r.items() if k != "gt_fields")))
    b = d["bounds"]
    rows.append((f"{d['class']} valid / ignored GT", f"{b['valid_gt']} / {b['ignored_gt']}"))
    rows.append(("valid GT with a detection at 2D IoU >= 0.5 / 0.7 / 0.8",
                 " / ".join(f"{100 * v:.1f} %" for v in b["best_iou_2d_at_least"].values())))
    rows.append(("valid GT matched (2D IoU >= 0.5): depth rel / abs median",
                 f"{100 * b['depth_rel_median']:.1f} % / {b['depth_abs_median_m']:.2f} m (n={b['matched']})"))
    rows.append(("  |dz| < 0.7 m / < 1.3 m", " / ".join(f"{100 * v:.0f} %" for v in b["depth_abs_below_m"].values())))
    rows.append(("  |d yaw| <10 / 10-30 / 30-150 / >150 deg", " / ".join(f"{100 * v:.0f} %" for v in b["yaw_abs_fraction"].values())))
    if "crowded_fraction" in d:
        rows.append(("valid GT with another object's centre within 1 output cell", f"{100 * d['crowded_fraction']:.1f} %"))
    return rows


def evaluate_on_split(forward: Forward, split, decode_cfg: DecodeConfig | None = None, batch_size: int = 8,
                      max_frames: int | None = None, difficulty: str = "moderate", diagnosis: bool = False) -> dict:
    """Run ``forward`` on cached (letterboxed) frames, decode with each frame's intrinsics, compute metrics.

    Args:
        forward: maps ``(B, 3, h, w)`` float images in [0, 1] to the network output dict.
        split: a :class:`ba_perception.train.data.CachedSplit`.
        decode_cfg: decode thresholds (a low score threshold, 0.03, suits AP).
        batch_size: frames per forward call.
        max_frames: evaluate only the first frames.
        difficulty: ``easy``, ``moderate`` or ``hard`` GT filter.
        diagnosis: also run :func:`diagnose` for cars (key ``diagnosis``).
    """
    decode_cfg = decode_cfg or DecodeConfig(score_threshold=0.03, max_detections=50)
    pre = split.preprocess
    n = len(split) if max_frames is None else min(max_frames, len(split))
    frames = []
    t_fwd = 0.0
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        x = torch.from_numpy(split.images[idx]).permute(0, 3, 1, 2).float() / 255.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = network_outputs(forward, x, decode_cfg)
        t_fwd += time.perf_counter() - t0
        dets = decode({k: v.float().cpu() for k, v in out.items()}, torch.from_numpy(split.K_src[idx]), pre, decode_cfg)
        for i, d in zip(idx, dets):
            frames.append((gt_frame(split, i), det_frame(d)))
    res = evaluate_all(frames, difficulty)
    res["forward_ms_per_frame"] = 1e3 * t_fwd / max(n, 1)
    if diagnosis:
        res["diagnosis"] = diagnose(frames, [centre_cells(split, i) for i in range(n)], "car", difficulty)
    return res


def world_gt_frame(objects) -> FrameBoxes:
    """Ground truth of a rendered world frame (objects with no visible silhouette box are dropped)."""
    ok = np.isfinite(objects.box_full).all(1)
    idx = np.nonzero(ok)[0]
    return FrameBoxes(
        labels=np.array([objects.class_label[i] for i in idx], dtype=object), box_2d=objects.box_full[idx],
        center_cam=objects.center_cam[idx], size_lwh=objects.size_lwh[idx], yaw=objects.rotation_y[idx],
        occlusion=objects.occlusion[idx], truncation=objects.truncation[idx],
    )


def evaluate_world(forward: Forward, net_hw: tuple[int, int], splits: dict[str, list], frames_per_sequence: int,
                   frame_every: int, decode_cfg: DecodeConfig, modes: tuple[str, ...] = ("horizon_band",),
                   difficulty: str = "moderate", recall_score_threshold: float | None = None, progress: bool = True) -> dict:
    """Render world sequences and evaluate ``forward`` per split, rig and preprocessing mode.

    Args:
        forward: maps ``(1, 3, *net_hw)`` float images in [0, 1] to the network output dict.
        net_hw: network input size.
        splits: split name -> world configs (``data.synth.plan``); each config's ``rig`` groups the report.
        frames_per_sequence, frame_every: frames ``0, every, 2 every, ...`` of each sequence.
        decode_cfg: decode settings (a low ``score_threshold`` suits AP).
        recall_score_threshold: minimum score counted for recall and depth errors (default: the
            node's, ``DecodeConfig().score_threshold``).
        modes: preprocessing modes run on the same rendered frames (:data:`PREPROCESS_MODES`); the
            horizon band is placed with each rig's intrinsics and mounting.

    Returns:
        ``{mode: {split: {rig: rig_metrics, "all": rig_metrics}}}`` plus ``rigs`` (split -> rig -> the
        camera values of its sequences).
    """
    from tqdm import tqdm

    from ba_perception.data.world import World

    frames: dict[str, dict[str, dict[str, list]]] = {m: {} for m in modes}
    rigs: dict[str, dict[str, list]] = {}
    total = sum(len(c) for c in splits.values()) * frames_per_sequence
    bar = tqdm(total=total, unit="frame", desc="eval-det", disable=not progress)
    for split, configs in splits.items():
        for cfg in configs:
            rigs.setdefault(split, {}).setdefault(cfg.rig, []).append(
                {"size": [cfg.width, cfg.height], "K": cfg.intrinsics().round(2).tolist(), "height_m": round(cfg.camera_height_m, 3),
                 "pitch_deg": round(cfg.pitch_deg, 2), "roll_deg": round(cfg.roll_deg, 2), "preset": cfg.preset, "seed": cfg.seed})
            with World(cfg) as world:
                for k in range(frames_per_sequence):
                    f = world.render(k * frame_every)
                    gt = world_gt_frame(f.objects)
                    x0 = to_chw_float(f.image)
                    K = torch.from_numpy(f.K)
                    for mode in modes:
                        pre = Preprocess.for_camera(mode, f.image.shape[:2], net_hw, f.K, f.T_base_cam[:3, :3])
                        x = apply_preprocess(x0, pre)
                        with torch.inference_mode():
                            out = network_outputs(forward, x, decode_cfg)
                        (det,) = decode({k2: v.float().cpu() for k2, v in out.items()}, K[None], pre, decode_cfg)
                        frames[mode].setdefault(split, {}).setdefault(cfg.rig, []).append((gt, det_frame(det)))
                    bar.update(1)
    bar.close()
    thr = DecodeConfig().score_threshold if recall_score_threshold is None else recall_score_threshold
    res: dict = {"rigs": rigs, "recall_score_threshold": thr}
    for mode in modes:
        res[mode] = {}
        for split, by_rig in frames[mode].items():
            res[mode][split] = {rig: rig_metrics(fr, thr, "car", difficulty) for rig, fr in by_rig.items()}
            res[mode][split]["all"] = rig_metrics([x for fr in by_rig.values() for x in fr], thr, "car", difficulty)
    return res


def rig_table(res: dict, mode: str) -> list[str]:
    """Printable per-rig car table of :func:`evaluate_world` for one preprocessing mode (percent)."""
    def num(v: float, scale: float = 1.0) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.1f}"

    lines = [f"{'split':<11}{'rig':<13}{'frames':>6}{'GT':>6}  {'AP3D@0.5':>8}  {'AP2D@0.7':>8}  {'recall<40m':>10}  "
             f"{'40-60m':>7}  {'dz/z med':>8}  {'|dz|/z med':>10}"]
    for split, by_rig in res[mode].items():
        for rig, m in by_rig.items():
            r = m["recall"]
            lines.append(f"{split:<11}{rig:<13}{m['frames']:>6}{m['num_gt']:>6}  {num(m['ap3d_r40@0.5']):>8}  "
                         f"{num(m['ap2d_r40@0.7']):>8}  {num(r['0-40']['share'], 100):>10}  {num(r['40-60']['share'], 100):>7}  "
                         f"{num(m['depth_rel_signed_median'], 100):>8}  {num(m['depth_rel_abs_median'], 100):>10}")
    return lines


def summary_rows(res: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of the key numbers for a printed table."""
    rows = []
    for cls, m in res["classes"].items():
        for k, v in m.items():
            if k.startswith("ap"):
                rows.append((f"{cls} {k}", "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"))
        e = m["errors"]
        w = e["within_40m"]
        rows.append((f"{cls} depth rel median (<40 m, n={w['count']})", f"{100 * w['depth_rel_median']:.1f} %" if w["count"] else "n/a"))
        rows.append((f"{cls} depth abs median (all, n={e['matched']})", f"{e['depth_abs_median_m']:.2f} m" if e["matched"] else "n/a"))
        rows.append((f"{cls} yaw abs median", f"{e['yaw_abs_median_deg']:.1f} deg" if e["matched"] else "n/a"))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `ba-perception eval-det`."""
    parser.add_argument("--model", default="models/detector.onnx", help="ONNX model (or a .pt checkpoint)")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--splits", default="test,test_cross",
                        help="world splits rendered and reported side by side, per camera rig (default test,test_cross)")
    parser.add_argument("--world-version", default=None, help="world generator version of --splits (default: the current one)")
    parser.add_argument("--frames-per-sequence", type=int, default=10, help="--splits: frames per sequence")
    parser.add_argument("--frame-every", type=int, default=9, help="--splits: frames between evaluated frames")
    parser.add_argument("--preprocess", default="horizon_band",
                        help=f"--splits: comma-separated preprocessing modes evaluated on the same frames ({', '.join(PREPROCESS_MODES)})")
    parser.add_argument("--split", default=None, choices=("train", "val", "test"),
                        help="instead of --splits: AP|R40 on a cached KITTI-rig split as the detector trains on it (train/data.py)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="world sequences per split (default: --splits as data.synth plans them; --split 8)")
    parser.add_argument("--pairs-per-sequence", type=int, default=10, help="--split: frame pairs per sequence (every 9th frame)")
    parser.add_argument("--cache-dir", default="data/detector")
    parser.add_argument("--difficulty", default="moderate", choices=("easy", "moderate", "hard"))
    parser.add_argument("--score-threshold", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-flip-test", action="store_true",
                        help="one forward pass per image (default: mean with the mirrored image's, as detector_node's flip_test)")
    parser.add_argument("--diagnose", action="store_true",
                        help="also print what limits car AP: GT-substitution oracles, 2D localisation bounds, crowding")
    parser.add_argument("--out", default="out/eval/detection.json")


def _run_world(args: argparse.Namespace, be) -> int:
    from ba_perception.cli import CommandError
    from ba_perception.data.synth import plan
    from ba_perception.data.world import MeshError, RenderError, WorldConfig
    from ba_perception.data.world.config import VERSION_PRESETS, WORLD_VERSION

    version = args.world_version or WORLD_VERSION
    modes = tuple(m.strip() for m in args.preprocess.split(",") if m.strip())
    bad = [m for m in modes if m not in PREPROCESS_MODES]
    if bad or not modes:
        raise CommandError(f"unknown --preprocess {', '.join(bad) or repr(args.preprocess)}; choose from {', '.join(PREPROCESS_MODES)}")
    names = [n.strip() for n in args.splits.split(",") if n.strip()]
    n_frames = (args.frames_per_sequence - 1) * args.frame_every + 1
    try:
        base = WorldConfig(world_version=version, noise_std=2.0)
        splits = {n: plan(n, list(VERSION_PRESETS[version]), args.sequences, n_frames, base, rigs=True) for n in names}
        res = evaluate_world(lambda x: be(x), be.input_hw, splits, args.frames_per_sequence, args.frame_every,
                             DecodeConfig(score_threshold=args.score_threshold, flip_test=not args.no_flip_test),
                             modes, args.difficulty)
    except (MeshError, RenderError) as err:
        raise CommandError(str(err)) from err
    res.update({"model": str(args.model), "backend": be.name, "world_version": version, "splits": names,
                "sequences": {n: len(c) for n, c in splits.items()}, "frames_per_sequence": args.frames_per_sequence,
                "frame_every": args.frame_every, "difficulty": args.difficulty, "machine": machine_info()})
    print(f"detector {args.model} [{be.name}] on world {version} splits {', '.join(names)} "
          f"({', '.join(f'{n}: {len(c)} seq x {args.frames_per_sequence} frames' for n, c in splits.items())}; car, {args.difficulty}; "
          f"recall and depth at score >= {res['recall_score_threshold']:g}, 2D IoU >= 0.5)")
    for mode in modes:
        print(f"preprocess {mode}:")
        for line in rig_table(res, mode):
            print("  " + line)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(res), indent=1))
    print(f"wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Evaluate a model on world splits; print a table and write JSON."""
    from ba_perception.cli import CommandError
    from ba_perception.core.detection.backends import BackendError, create_backend
    from ba_perception.train.data import DataError, SplitSpec, build_split

    torch.set_num_threads(max(1, args.threads))
    model = Path(args.model)
    is_checkpoint = model.suffix == ".pt"
    try:
        be = create_backend(args.backend, onnx_path=None if is_checkpoint else model,
                            checkpoint=model if is_checkpoint else None, threads=args.threads)
    except BackendError as err:
        raise CommandError(str(err)) from err
    if args.split is None:
        return _run_world(args, be)
    from ba_perception.data.world.config import VERSION_PRESETS

    presets = VERSION_PRESETS["v2"] if args.split == "test" else SplitSpec().presets  # test: as data.synth plans v2
    spec = SplitSpec(name=args.split, sequences=args.sequences or 8, pairs_per_sequence=args.pairs_per_sequence,
                     pair_every=9, presets=presets)
    try:
        split = build_split(spec, be.input_hw, args.cache_dir)
    except DataError as err:
        raise CommandError(str(err)) from err
    res = evaluate_on_split(lambda x: be(x), split, DecodeConfig(score_threshold=args.score_threshold, flip_test=not args.no_flip_test),
                            batch_size=1, difficulty=args.difficulty, diagnosis=args.diagnose)
    res.update({"model": str(model), "backend": be.name, "split": spec.__dict__ | {"presets": list(spec.presets)},
                "frames": len(split), "machine": machine_info()})
    print(f"detector {model} [{be.name}] on world split {args.split!r} ({len(split)} frames, {args.difficulty})")
    rows = summary_rows(res) + (diagnosis_rows(res["diagnosis"]) if args.diagnose else [])
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(res), indent=1))
    print(f"wrote {out}")
    return 0
