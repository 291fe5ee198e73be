"""`ba-perception eval-pseudo`: quality of pseudo labels (``pseudo-label`` output) against the world's ground truth.

Per sequence of the output's manifest the bag's ``/ground_truth/objects`` is read and every car
track is classified:

- state: ``parked`` (ground-truth speed < 0.1 m/s in every frame) or ``moving`` (>= 0.5 m/s in some
  frame); range: the closest camera distance over the frames it has a 2D box in.
- eligible parked car: parked, a 2D box with at most ``--max-occlusion`` (0.5) of it occluded in
  >= ``--min-frames`` (10) frames, closest range <= ``--max-range`` (40 m). Cars deep in a parking
  lot seen only through gaps between nearer rows are not eligible (``--max-occlusion 1`` counts them).

Reported: share of eligible parked cars with an accepted label (coverage); of those, centre error
(odom, m), yaw error with the heading resolved (deg, in [0, 180]) and mod 180 (in [0, 90]),
3D IoU >= 0.5 / 0.7 shares; for movers, the share with a label and the share with a wrong label
(median per-frame 3D IoU with the moving ground truth < 0.3, over the frames it was labelled in),
all split by range bin; and time per 100 frames from the manifest. ``--compare DIR`` evaluates a
second output (e.g. made with ``--odom-noise``) and reports the differences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RANGE_BINS = ((0.0, 15.0), (15.0, 30.0), (30.0, 1e9))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval-pseudo`` options to the subcommand's parser."""
    parser.add_argument("dir", help="pseudo-label output folder (with manifest.json)")
    parser.add_argument("--compare", default=None, help="a second output folder (e.g. --odom-noise) to compare with")
    parser.add_argument("--min-frames", type=int, default=10, help="2D-labelled frames an eligible car needs")
    parser.add_argument("--max-occlusion", type=float, default=0.5,
                        help="a frame counts toward --min-frames when the car's occluded share is at most this (1: any)")
    parser.add_argument("--max-range", type=float, default=40.0, help="closest range of an eligible car, m")
    parser.add_argument("--json", default=None, help="write the result JSON here (default DIR/eval.json)")


def iou_3d_upright(c1: np.ndarray, s1: np.ndarray, y1: float, c2: np.ndarray, s2: np.ndarray, y2: float) -> float:
    """3D IoU of two upright boxes (odom, centre / lwh / yaw about +z)."""
    from ba_perception.eval.detection_ap import convex_intersection_area
    from ba_perception.pseudo.boxfit import box_corners_odom

    if np.linalg.norm(c1[:2] - c2[:2]) > 0.5 * (np.hypot(s1[0], s1[1]) + np.hypot(s2[0], s2[1])):
        return 0.0
    a = box_corners_odom(c1, s1, y1)[:4, :2]
    b = box_corners_odom(c2, s2, y2)[:4, :2]
    inter = convex_intersection_area(a, b)
    hz = max(0.0, min(c1[2] + s1[2] / 2, c2[2] + s2[2] / 2) - max(c1[2] - s1[2] / 2, c2[2] - s2[2] / 2))
    v = inter * hz
    return float(v / (np.prod(s1) + np.prod(s2) - v))


def _yaw(T: np.ndarray) -> float:
    return float(np.arctan2(T[1, 0], T[0, 0]))


def _wrap_deg(a: float) -> float:
    return float(abs((a + 180.0) % 360.0 - 180.0))


def ground_truth_tracks(bag: str | Path, max_frames: int | None = None) -> dict[int, dict]:
    """Per ground-truth track: class, per-frame odom pose, size, speed, 2D-labelled frames, range."""
    from ba_perception.data.bag import read_bag

    tracks: dict[int, dict] = {}
    for k, f in enumerate(read_bag(bag, images=False)):
        if max_frames is not None and k >= max_frames:
            break
        g = f.objects
        cam = f.T_odom_cam[:3, 3]
        for i in range(len(g)):
            t = int(g.track_id[i])
            d = tracks.setdefault(t, {"cls": g.class_label[i], "T": {}, "size": g.size_lwh[i].copy(), "speed": [],
                                      "frames": [], "range": [], "occlusion": []})
            d["T"][k] = g.T_odom_obj[i]
            d["speed"].append(float(np.linalg.norm(g.velocity_odom[i])))
            if np.isfinite(g.box_full[i]).all():
                d["frames"].append(k)
                d["range"].append(float(np.linalg.norm(g.T_odom_obj[i][:3, 3] - cam)))
                d["occlusion"].append(float(g.occlusion[i]))
    return tracks


def evaluate_sequence(out: Path, name: str, entry: dict, min_frames: int, max_range: float,
                      max_occlusion: float = 1.0) -> list[dict]:
    """One row per ground-truth car track with a 2D label: state, range, eligibility and, if labelled, errors."""
    from ba_perception.pseudo.labels import read_label_file

    objs = json.loads((out / "objects" / f"{name}.json").read_text())["objects"]
    boxes = {o["track_id"]: o for o in objs if o["accepted"]}
    rows_by_track: dict[int, list[int]] = {}
    for r in read_label_file(out / "label_02" / f"{name}.txt"):
        if r.type != "DontCare":
            rows_by_track.setdefault(r.track_id, []).append(r.frame)
    rows = []
    for t, g in ground_truth_tracks(entry["bag"], entry["frames"]).items():
        if g["cls"] != "car" or not g["frames"]:
            continue
        vmax = max(g["speed"])
        state = "parked" if vmax < 0.1 else ("moving" if vmax >= 0.5 else "slow")
        rng = min(g["range"])
        n_visible = sum(o <= max_occlusion for o in g["occlusion"])
        row = {"sequence": name, "track_id": t, "state": state, "range_m": rng, "n_frames": len(g["frames"]),
               "n_frames_visible": n_visible,
               "eligible": state == "parked" and n_visible >= min_frames and rng <= max_range,
               "labelled": t in boxes}
        if t in boxes:
            b = boxes[t]
            c, s, y = np.array(b["center_odom_m"]), np.array(b["size_lwh_m"]), float(b["yaw_odom_rad"])
            frames = rows_by_track.get(t, g["frames"])
            ious = [iou_3d_upright(c, s, y, g["T"][k][:3, 3], g["size"], _yaw(g["T"][k])) for k in frames if k in g["T"]]
            k0 = frames[len(frames) // 2]
            T = g["T"][k0]
            dyaw = _wrap_deg(np.degrees(y - _yaw(T)))
            row.update({"iou3d": float(np.median(ious)) if ious else 0.0, "centre_err_m": float(np.linalg.norm(c - T[:3, 3])),
                        "yaw_err_deg": dyaw, "yaw_err_mod180_deg": min(dyaw, 180.0 - dyaw),
                        "heading_source": b["heading_source"]})
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    """The label-quality table from per-track rows (see the module docstring)."""
    def stats(sel: list[dict]) -> dict:
        el = [r for r in sel if r["eligible"]]
        lab = [r for r in el if r["labelled"]]
        mov = [r for r in sel if r["state"] == "moving"]
        mov_lab = [r for r in mov if r["labelled"]]

        def med(k: str) -> float | None:
            return float(np.median([r[k] for r in lab])) if lab else None

        return {
            "eligible_parked": len(el), "labelled": len(lab),
            "coverage": len(lab) / len(el) if el else None,
            "iou50_of_labelled": float(np.mean([r["iou3d"] >= 0.5 for r in lab])) if lab else None,
            "iou70_of_labelled": float(np.mean([r["iou3d"] >= 0.7 for r in lab])) if lab else None,
            "iou50_of_eligible": float(np.sum([r["iou3d"] >= 0.5 for r in lab]) / len(el)) if el else None,
            "centre_err_median_m": med("centre_err_m"),
            "centre_err_p90_m": float(np.percentile([r["centre_err_m"] for r in lab], 90)) if lab else None,
            "yaw_err_median_deg": med("yaw_err_deg"), "yaw_err_mod180_median_deg": med("yaw_err_mod180_deg"),
            "heading_correct": float(np.mean([r["yaw_err_deg"] < 90 for r in lab])) if lab else None,
            "movers": len(mov), "movers_labelled": len(mov_lab),
            "movers_wrong": sum(r["iou3d"] < 0.3 for r in mov_lab),
            "movers_wrong_share": sum(r["iou3d"] < 0.3 for r in mov_lab) / len(mov) if mov else None,
        }

    out = {"all": stats(rows)}
    for lo, hi in RANGE_BINS:
        out[f"range {lo:.0f}-{hi:.0f} m" if hi < 1e8 else f"range > {lo:.0f} m"] = stats([r for r in rows if lo <= r["range_m"] < hi])
    return out


def evaluate_dir(out: Path, min_frames: int = 10, max_range: float = 40.0, max_occlusion: float = 0.5) -> dict:
    """Evaluate a pseudo-label folder; returns ``{"table": ..., "rows": ..., "timing": ...}``."""
    from ba_perception.cli import CommandError

    mpath = out / "manifest.json"
    if not mpath.is_file():
        raise CommandError(f"{out} has no manifest.json; run ba-perception pseudo-label first")
    manifest = json.loads(mpath.read_text())
    rows = []
    for name, entry in sorted(manifest["sequences"].items()):
        rows += evaluate_sequence(out, name, entry, min_frames, max_range, max_occlusion)
    frames = sum(e["frames"] for e in manifest["sequences"].values())
    secs = sum(e["seconds"]["total"] for e in manifest["sequences"].values())
    return {"table": summarise(rows), "rows": rows,
            "eligibility": {"min_frames": min_frames, "max_range_m": max_range, "max_occlusion": max_occlusion},
            "timing": {"frames": frames, "seconds": round(secs, 1), "s_per_100_frames": round(100 * secs / max(frames, 1), 1)},
            "sequences": {n: {"bag": e["bag"], "frames": e["frames"], "odom_noise": e.get("odom_noise")}
                          for n, e in manifest["sequences"].items()}}


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def format_table(table: dict) -> str:
    """Plain-text table: one column per split (all, range bins)."""
    keys = list(next(iter(table.values())).keys())
    cols = list(table)
    w = max(len(k) for k in keys) + 2
    lines = [" " * w + "".join(f"{c:>16s}" for c in cols)]
    lines += [f"{k:<{w}s}" + "".join(f"{_fmt(table[c][k]):>16s}" for c in cols) for k in keys]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``eval-pseudo``: print the quality table (and the ``--compare`` one) and write the result JSON.

    Returns:
        The exit status (0).
    """
    from ba_perception.pseudo.labels import write_json

    out = Path(args.dir)
    res = evaluate_dir(out, args.min_frames, args.max_range, args.max_occlusion)
    print(f"{out}: {res['timing']['frames']} frames, {res['timing']['s_per_100_frames']} s per 100 frames")
    print(format_table(res["table"]))
    if args.compare:
        other = evaluate_dir(Path(args.compare), args.min_frames, args.max_range, args.max_occlusion)
        a, b = res["table"]["all"], other["table"]["all"]
        diff = {k: (b[k] - a[k]) if isinstance(a[k], float) and isinstance(b[k], float) else None for k in a}
        res["compare"] = {"dir": args.compare, "table": other["table"], "difference_all": diff}
        print(f"\n{args.compare} (compare):")
        print(format_table(other["table"]))
        d = diff["iou50_of_eligible"]
        print(f"\nIoU>=0.5 share of eligible parked cars: {_fmt(a['iou50_of_eligible'])} -> {_fmt(b['iou50_of_eligible'])}"
              + (f" ({100 * d:+.1f} points)" if d is not None else ""))
    write_json(Path(args.json) if args.json else out / "eval.json", res)
    return 0
