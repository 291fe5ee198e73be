"""`ba-perception world-preview`: a contact sheet (PNG) and GIF of a world sequence with GT boxes drawn."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ba_perception.data.world.config import PRESETS

CLASS_COLORS = {"car": (255, 60, 60), "pedestrian": (60, 220, 60), "cyclist": (60, 140, 255)}
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def draw_ground_truth(image: np.ndarray, K: np.ndarray, gt, max_occlusion: float = 0.95) -> np.ndarray:
    """Draw the ground-truth 3D boxes of one frame onto a copy of the image.

    RGB copy of ``image`` with every GT object's projected 3D box (front face crossed), track id
    and class colour; objects hidden more than ``max_occlusion`` are skipped.
    """
    import cv2

    from ba_perception.data.world.sequence import local_box_corners

    out = np.ascontiguousarray(image.copy())
    H, W = out.shape[:2]
    lw = max(1, round(W / 700))
    for i in range(len(gt)):
        if gt.occlusion[i] > max_occlusion:
            continue
        T = gt.T_cam_obj[i]
        c = local_box_corners(gt.size_lwh[i]) @ T[:3, :3].T + T[:3, 3]
        if (c[:, 2] < 0.5).any():
            continue
        uv = (c[:, :2] / c[:, 2:3]) * [K[0, 0], K[1, 1]] + K[:2, 2]
        p = np.round(uv).astype(int)
        color = CLASS_COLORS.get(gt.class_label[i], (255, 255, 0))
        for a, b in EDGES:
            cv2.line(out, tuple(p[a]), tuple(p[b]), color, lw, cv2.LINE_AA)
        # front face (x = +l/2: corners 0, 3, 4, 7) crossed to show the heading
        cv2.line(out, tuple(p[0]), tuple(p[7]), color, lw, cv2.LINE_AA)
        cv2.line(out, tuple(p[3]), tuple(p[4]), color, lw, cv2.LINE_AA)
        x, y = p[:, 0].min(), max(p[:, 1].min() - 3, 10)
        cv2.putText(out, f"{int(gt.track_id[i])}", (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * lw, color, lw, cv2.LINE_AA)
    return out


def _colorize(depth: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    d = np.where(np.isfinite(depth), depth, 0.0)
    inv = np.where(d > 0, np.clip(4.0 / np.maximum(d, 1e-3), 0, 1), 0.0)
    dcol = cv2.applyColorMap((inv * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[:, :, ::-1]
    rng = np.random.default_rng(0)
    lut = rng.integers(40, 255, size=(int(inst.max()) + 1, 3), dtype=np.uint8)
    lut[0] = 0
    return dcol, lut[inst]


def contact_sheet(frames: list, columns: int = 2, with_maps: bool = True) -> np.ndarray:
    """Grid of annotated frames (plus the last frame's depth and instance maps), RGB uint8."""
    import cv2

    tiles = [draw_ground_truth(f.image, f.K, f.objects) for f in frames]
    for t, f in zip(tiles, frames):
        label = f"#{f.index}  t={f.stamp_ns / 1e9:.1f}s  {len(f.objects)} objects"
        cv2.putText(t, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    if with_maps and getattr(frames[-1], "depth", None) is not None:
        d, i = _colorize(frames[-1].depth, frames[-1].instance)
        tiles += [d, i]
    H, W = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.zeros((rows * (H + 4), columns * (W + 4), 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (H + 4): r * (H + 4) + H, c * (W + 4): c * (W + 4) + W] = t
    return sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``ba-perception world-preview``."""
    parser.add_argument("--preset", default="urban", help=f"one of {', '.join(PRESETS)} (residential: world v3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=100, help="frames to render")
    parser.add_argument("--tiles", type=int, default=8, help="frames on the contact sheet (evenly spaced)")
    parser.add_argument("--width", type=int, default=1242)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--rig", default=None,
                        help="draw this camera rig family (data.world.rigs: kitti, dash_720p, ..., x_1080p) with --seed "
                             "instead of --width/--height")
    parser.add_argument("--cars", default="train", choices=("train", "cross", "all"), help="car model pool (world v3)")
    parser.add_argument("--version", default=None, help="world generator version (default: the current one)")
    parser.add_argument("--bag", default=None, help="preview a recorded bag (rosbag2 folder) instead of rendering")
    parser.add_argument("--out", default="out/world_preview.png", help="contact sheet PNG")
    parser.add_argument("--gif", default=None, help="also write an animated GIF of all frames here")


def run(args: argparse.Namespace) -> int:
    """Render a world sequence and write its contact sheet (and GIF)."""
    from PIL import Image

    from ba_perception.cli import CommandError
    from ba_perception.data.world import MeshError, RenderError, WorldConfig, WorldConfigError, render_sequence

    if args.tiles < 1 or args.frames < 1:
        raise CommandError("--tiles and --frames must be >= 1")
    try:
        if args.bag:
            from ba_perception.data.bag import BagError, read_bag

            try:
                frames: list[Any] = list(read_bag(args.bag))  # BagFrames here, WorldFrames below: image, K, objects
            except BagError as err:
                raise CommandError(f"{err}") from err
            if not frames or frames[0].image is None:
                raise CommandError(f"{args.bag} has no images to preview")
        else:
            from ba_perception.data.world.config import WORLD_VERSION
            from ba_perception.data.world.rigs import draw_rig

            cfg = WorldConfig(preset=args.preset, seed=args.seed, width=args.width, height=args.height, n_frames=args.frames,
                              world_version=args.version or WORLD_VERSION, car_pool=args.cars)
            if args.rig:
                try:
                    cfg = draw_rig(cfg, args.rig, args.seed)
                except KeyError as err:
                    raise CommandError(str(err.args[0])) from err
            frames = list(render_sequence(cfg))
    except (MeshError, RenderError, WorldConfigError) as err:
        raise CommandError(str(err)) from err
    pick = np.unique(np.linspace(0, len(frames) - 1, min(args.tiles, len(frames))).round().astype(int))
    sheet = contact_sheet([frames[k] for k in pick])
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(out)
        if args.gif:
            gif = Path(args.gif)
            gif.parent.mkdir(parents=True, exist_ok=True)
            imgs = [Image.fromarray(draw_ground_truth(f.image, f.K, f.objects)) for f in frames]
            imgs[0].save(gif, save_all=True, append_images=imgs[1:], duration=100, loop=0, optimize=False)
    except OSError as err:
        raise CommandError(f"cannot write the preview ({err}); choose a writable --out/--gif") from err
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}, {len(pick)} frames)" + (f" and {args.gif}" if args.gif else ""))
    return 0
