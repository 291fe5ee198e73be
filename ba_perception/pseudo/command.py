"""`ba-perception pseudo-label`: BA2-Det pseudo 3D labels from bags with 2D boxes (track ids) and odometry.

Output under ``--out``::

    label_02/SEQ.txt      KITTI tracking labels + confidence column, DontCare rows for 2D-only objects
    objects/SEQ.json      every fitted object (odom frame, accepted or not, with the reason)
    points/SEQ.npz        the reconstruction: xyz (odom, m), track_id, reproj_px, angle_deg
    bev/SEQ.png           bird's-eye view of points, boxes and camera path
    manifest.json         per sequence: bag, frames, counts, seconds per stage
    report.md             the summary table
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``pseudo-label`` options to the subcommand's parser."""
    parser.add_argument("bags", nargs="+", help="rosbag2 folders with camera, camera_info, /odom and /tf_static")
    parser.add_argument("--labels2d", default="gt",
                        help="'gt' (the bag's /ground_truth/objects 2D boxes), a KITTI tracking label file (one bag) "
                             "or a folder with one BAGNAME.txt per bag (default: gt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames of each bag")
    parser.add_argument("--odom-noise", type=float, nargs=2, metavar=("M", "DEG"), default=None,
                        help="add a random walk of M metres / DEG degrees per frame to the odometry (robustness test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --odom-noise")
    parser.add_argument("--refine-poses", action="store_true",
                        help="refine odometry's frame-to-frame rotation / direction from the tracked points (noisy odometry)")
    parser.add_argument("--no-pictures", action="store_true", help="skip the BEV PNGs")


def _labels_for(bag: Path, spec: str, n_bags: int) -> Path | None:
    from ba_perception.cli import CommandError

    if spec == "gt":
        return None
    p = Path(spec)
    if p.is_dir():
        f = p / f"{bag.name}.txt"
        if not f.is_file():
            raise CommandError(f"no 2D label file {f} for bag {bag}")
        return f
    if not p.is_file():
        raise CommandError(f"--labels2d {spec}: no such file or folder (use 'gt', a KITTI label file or a folder)")
    if n_bags > 1:
        raise CommandError("--labels2d FILE with several bags; give a folder with one BAGNAME.txt per bag")
    return p


def label_bag(bag: Path, labels2d: Path | None, out: Path, max_frames: int | None = None,
              odom_noise: tuple[float, float] | None = None, seed: int = 0, pictures: bool = True,
              name: str | None = None, refine_poses: bool = False) -> dict:
    """Pseudo-label one bag into ``out`` (see the module docstring); returns its manifest entry."""
    from tqdm import tqdm

    from ba_perception.pseudo.bag_input import read_labelled_bag
    from ba_perception.pseudo.labels import bev_picture, label_lines, object_record, write_json
    from ba_perception.pseudo.pipeline import label_sequence, track_views
    from ba_perception.pseudo.reconstruct import ReconstructOptions

    name = name or bag.name
    t0 = time.perf_counter()
    frames, truth = read_labelled_bag(bag, labels2d, max_frames, odom_noise, seed)
    t_read = time.perf_counter() - t0
    with tqdm(total=len(frames), unit="frame", desc=f"pseudo-label {name}") as bar:
        res = label_sequence(frames, ReconstructOptions(refine_rotation=refine_poses), progress=bar.update)
    views = track_views(frames)
    for sub in ("label_02", "objects", "points", "bev"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    accepted = {t: b for t, b in res.boxes.items() if b.accepted}
    lines = []
    for f, fr in enumerate(frames):
        T_cam_odom = np.linalg.inv(fr.T_odom_cam)
        lines.append(label_lines(f, fr.boxes, fr.track_ids, fr.classes or ["car"] * len(fr.track_ids), accepted, T_cam_odom))
    (out / "label_02" / f"{name}.txt").write_text("".join(lines))
    write_json(out / "objects" / f"{name}.json",
               {"sequence": name, "bag": str(bag), "frame": "odom",
                "objects": [object_record(b, len(views[t].frames)) for t, b in sorted(res.boxes.items())]})
    pc = res.points
    np.savez_compressed(out / "points" / f"{name}.npz", xyz=pc.xyz.astype(np.float32), track_id=pc.track_id,
                        reproj_px=pc.reproj_px.astype(np.float32), angle_deg=pc.angle_deg.astype(np.float32))
    if pictures:
        cams = np.stack([fr.T_odom_cam[:3, 3] for fr in frames])[:, :2]
        gt_boxes = None
        if truth and truth[-1] is not None:
            last: dict[int, tuple] = {}
            for g in truth:
                for i in range(len(g or [])):
                    T = g.T_odom_obj[i]
                    last[int(g.track_id[i])] = (T[:3, 3], g.size_lwh[i], float(np.arctan2(T[1, 0], T[0, 0])))
            gt_boxes = [last[t] for t in res.boxes if t in last]
        bev_picture(out / "bev" / f"{name}.png", pc.xyz, pc.track_id, res.boxes, cams, name, gt_boxes)
    return {
        "bag": str(bag), "labels2d": str(labels2d) if labels2d else "gt", "frames": len(frames),
        "image_wh": list(frames[0].image.shape[1::-1]) if frames else None,
        "points": len(pc), "tracks_2d": len(views), "clusters": len(res.clusters), "fitted": len(res.boxes),
        "accepted": len(accepted), "odom_noise": list(odom_noise) if odom_noise else None, "seed": seed,
        "refine_poses": refine_poses,
        "seconds": {"read": round(t_read, 2), **{k: round(v, 2) for k, v in res.seconds.items()}},
    }


def report_markdown(manifest: dict) -> str:
    """The run's summary table (markdown)."""
    rows = ["| sequence | frames | 2D tracks | points | fitted | accepted | s / 100 frames (no read) |", "|---|---|---|---|---|---|---|"]
    tot_f = tot_s = 0.0
    for name, e in sorted(manifest["sequences"].items()):
        s = e["seconds"]["total"]
        tot_f += e["frames"]
        tot_s += s
        rows.append(f"| {name} | {e['frames']} | {e['tracks_2d']} | {e['points']} | {e['fitted']} | {e['accepted']} | "
                    f"{100 * s / max(e['frames'], 1):.1f} |")
    rows.append(f"\nTotal: {int(tot_f)} frames, {100 * tot_s / max(tot_f, 1):.1f} s per 100 frames "
                f"(reconstruction + clustering + fitting; bag reading excluded). BEV pictures in bev/.")
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``pseudo-label``: label every bag into ``--out``, update its manifest and write the report.

    Returns:
        The exit status (0).

    Raises:
        CommandError: a bag lacks what labelling needs, or the 2D labels are not found.
    """
    import json

    from ba_perception.cli import CommandError
    from ba_perception.data.bag import BagError
    from ba_perception.pseudo.bag_input import BagInputError
    from ba_perception.pseudo.labels import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bags = [Path(b) for b in args.bags]
    names = [b.name for b in bags]
    if len(set(names)) < len(names):  # same folder name in different splits: prefix the parent
        names = [f"{b.parent.name}_{b.name}" for b in bags]
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {"sequences": {}}
    for bag, name in zip(bags, names):
        labels = _labels_for(bag, args.labels2d, len(bags))
        try:
            entry = label_bag(bag, labels, out, args.max_frames, tuple(args.odom_noise) if args.odom_noise else None,
                              args.seed, not args.no_pictures, name, args.refine_poses)
        except (BagInputError, BagError) as err:
            raise CommandError(str(err)) from err
        manifest["sequences"][name] = entry
        write_json(mpath, manifest)
    text = report_markdown(manifest)
    (out / "report.md").write_text("# Pseudo labels\n\n" + text)
    print(text, end="")
    return 0
