"""`ba-perception synth`: render named, versioned splits of the synthetic world to rosbag2 (and KITTI).

Layout: ``<out>/world-<version>/<split>/seq_NNNN/`` (a rosbag2 folder holding ``seq_NNNN.mcap``),
optionally ``<out>/world-<version>/<split>/kitti/{image_02,label_02,calib,oxts}``, and
``manifest.json`` recording every sequence's configuration. Each sequence is written to
``seq_NNNN.partial`` and renamed when complete, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

from ba_perception.data.world.config import VERSION_PRESETS, WORLD_VERSION, WORLD_VERSIONS, WorldConfig

# WORLD_VERSION (data.world.config) is bumped when the generator's output for a given config (or
# the bag format) changes; v2: box_2d_full; v3: stops per minute, residential preset, a camera rig
# and appearance per sequence, TORCS cars, model-disjoint test_cross split.
# split -> (sequences, frames per sequence, seed base); presets cycle over the chosen list.
SPLITS: dict[str, tuple[int, int, int]] = {
    "train": (32, 100, 0),
    "val": (4, 100, 100_000),
    "test": (8, 100, 200_000),
    "test_cross": (6, 100, 300_000),
}
# World v3: rig domain and car pool of each split (other names: in-distribution, like test).
SPLIT_DOMAIN: dict[str, str] = {"test_cross": "cross"}


class SynthError(RuntimeError):
    """Raised when a split cannot be rendered (bad arguments, unwritable output)."""


def split_seed_base(split: str) -> int:
    """Seed base of a split; named splits get a stable base from their name (disjoint ranges)."""
    if split in SPLITS:
        return SPLITS[split][2]
    return 1_000_000 + (zlib.crc32(split.encode()) % 1000) * 10_000


def plan(split: str, presets: list[str], sequences: int | None, frames: int | None, base: WorldConfig,
         rigs: bool = False) -> list[WorldConfig]:
    """World configs of every sequence of a split (deterministic).

    In world v3 (``base.world_version``) each sequence also gets a camera rig and appearance
    (:func:`rigs.draw_rig`; families cycle over the split's domain, ``cross`` for test_cross,
    else ``train``) when ``rigs`` (as `synth` and `eval-det` do; else ``base``'s camera is kept) and
    the split's car pool.
    v2 splits cycle the 4 v2 presets as before.
    """
    from ba_perception.data.world.rigs import RIG_FAMILIES, draw_rig

    n_seq, n_frames, _ = SPLITS.get(split, (4, 100, 0))
    n_seq = sequences if sequences is not None else n_seq
    n_frames = frames if frames is not None else n_frames
    seed0 = split_seed_base(split)
    out = []
    for i in range(n_seq):
        cfg = replace(base, preset=presets[i % len(presets)], seed=seed0 + i, n_frames=n_frames)
        if base.world_version != "v2":
            domain = SPLIT_DOMAIN.get(split, "train")
            cfg = replace(cfg, car_pool=domain)
            if rigs:
                fams = list(RIG_FAMILIES[domain])
                cfg = draw_rig(cfg, fams[i % len(fams)], cfg.seed)
        out.append(cfg)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``ba-perception synth``."""
    parser.add_argument("--split", default="train", help="train | val | test | any NAME (own seed range)")
    parser.add_argument("--preset", default="all",
                        help=f"comma-separated presets cycled over the sequences, or 'all' ({', '.join(VERSION_PRESETS[WORLD_VERSION])})")
    parser.add_argument("--out", default="data", help="output root (default: data/)")
    parser.add_argument("--version", default=WORLD_VERSION, choices=WORLD_VERSIONS,
                        help="world generator version, also the folder suffix (world-VERSION); v2 = the previous world")
    parser.add_argument("--sequences", type=int, default=None, help="number of sequences (default per split)")
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default 100)")
    parser.add_argument("--width", type=int, default=None,
                        help="image width (default 1242); with --width or --height every sequence keeps that one camera")
    parser.add_argument("--height", type=int, default=None, help="image height (default 375)")
    parser.add_argument("--no-rigs", action="store_true", help="v3: keep one camera (KITTI's, or --width/--height) "
                                                               "instead of drawing a rig per sequence")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate, Hz")
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise std, 8-bit levels")
    parser.add_argument("--blur", type=int, default=0, help="box-blur radius, pixels")
    parser.add_argument("--kitti", action="store_true", help="also export KITTI tracking files")
    parser.add_argument("--no-bag", action="store_true", help="do not write rosbag2 files (KITTI only)")
    parser.add_argument("--overwrite", action="store_true", help="re-render sequences that already exist")
    parser.add_argument("--stats", action="store_true",
                        help="render nothing; print the split's ego travel per 8-frame window, object ranges and "
                             "moving/standing shares (and write them as JSON to --stats-out)")
    parser.add_argument("--stats-out", default=None, help="JSON file for --stats (default: print only)")


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SynthError(f"cannot write to {root} ({err.strerror or err}); choose a writable --out") from err


def render_split(split: str, configs: list[WorldConfig], root: Path, bags: bool = True, kitti: bool = False,
                 overwrite: bool = False, progress: bool = True) -> list[dict]:
    """Render the sequences of ``configs`` under ``root`` (the split folder); skips finished ones.

    Returns:
        The manifest entries of all sequences.

    Raises:
        SynthError: unwritable output.  MeshError / RenderError: missing meshes / no OpenGL.
    """
    from tqdm import tqdm

    from ba_perception.data.bag import BagWriter
    from ba_perception.data.kitti import KittiWriter
    from ba_perception.data.world import World

    _check_writable(root)
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    entries = manifest.get("sequences", {})
    total = sum(c.n_frames for c in configs)
    bar = tqdm(total=total, unit="frame", desc=f"synth {split}", disable=not progress)
    for i, cfg in enumerate(configs):
        name = f"seq_{i:04d}"
        want = {"config": cfg.to_dict(), "bag": bags, "kitti": kitti}
        done = entries.get(name)
        final = root / name
        if done and not overwrite and all(done.get(k) == v for k, v in want.items()) and (final.exists() or not bags):
            bar.update(cfg.n_frames)
            continue
        partial = root / f"{name}.partial"
        for p in (partial, final):
            if p.exists():
                shutil.rmtree(p)
        entries.pop(name, None)
        bar.set_postfix_str(f"{name} {cfg.preset} seed={cfg.seed}")
        with World(cfg) as world:
            bag_cm = BagWriter(partial) if bags else None
            kw_cm = KittiWriter(root / "kitti", seq=i) if kitti else None
            bag = bag_cm.__enter__() if bag_cm else None
            kw = kw_cm.__enter__() if kw_cm else None
            try:
                n_objects = 0
                for k in range(cfg.n_frames):
                    frame = world.render(k)
                    n_objects += len(frame.objects)
                    if bag:
                        bag.write(frame)
                    if kw:
                        kw.write(frame)
                    bar.update(1)
            finally:
                if bag_cm:
                    bag_cm.__exit__(None, None, None)
                if kw_cm:
                    kw_cm.__exit__(None, None, None)
        if bags:
            # rosbags names the file after the folder; rename both to the final name.
            os.replace(partial / f"{partial.name}.mcap", partial / f"{name}.mcap")
            meta = partial / "metadata.yaml"
            meta.write_text(meta.read_text().replace(f"{partial.name}.mcap", f"{name}.mcap"))
            os.replace(partial, final)
        entries[name] = {**want, "frames": cfg.n_frames, "objects": n_objects}
        manifest.update({"split": split, "version": root.parent.name, "sequences": entries})
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, manifest_path)
    bar.close()
    return [entries[f"seq_{i:04d}"] for i in range(len(configs))]


def _print_stats(args: argparse.Namespace, configs: list[WorldConfig]) -> int:
    from ba_perception.data.world.stats import split_stats, stats_rows

    stats = split_stats(configs)
    print(f"world {args.version} split {args.split!r}: {len(configs)} sequences x {configs[0].n_frames} frames (scenes only, no rendering)")
    for line in stats_rows(stats):
        print("  " + line)
    if args.stats_out:
        out = Path(args.stats_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"split": args.split, "version": args.version, "stats": stats}, indent=1))
        print(f"wrote {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Render the requested synthetic-world split."""
    from ba_perception.cli import CommandError
    from ba_perception.data.world import MeshError, RenderError, WorldConfigError, check_meshes

    known = VERSION_PRESETS[args.version]
    presets = list(known) if args.preset == "all" else [p.strip() for p in args.preset.split(",") if p.strip()]
    bad = [p for p in presets if p not in known]
    if bad or not presets:
        raise CommandError(f"unknown preset {', '.join(bad) or repr(args.preset)}; use --preset with any of: all, {', '.join(known)}")
    if args.no_bag and not args.kitti:
        raise CommandError("--no-bag without --kitti would write nothing; add --kitti or drop --no-bag")
    if not args.split or "/" in args.split or args.split.startswith("."):
        raise CommandError(f"invalid split name {args.split!r}; use train, val, test or a plain NAME")
    base = WorldConfig(width=args.width or 1242, height=args.height or 375, rate_hz=args.rate, noise_std=args.noise,
                       blur_px=args.blur, world_version=args.version)
    one_camera = args.no_rigs or args.width is not None or args.height is not None
    try:
        check_meshes()
        configs = plan(args.split, presets, args.sequences, args.frames, base, rigs=not one_camera)
        for c in configs[:1]:
            c.validate()
        if args.stats:
            return _print_stats(args, configs)
        root = Path(args.out) / f"world-{args.version}" / args.split
        entries = render_split(args.split, configs, root, bags=not args.no_bag, kitti=args.kitti, overwrite=args.overwrite)
    except (SynthError, MeshError, RenderError, WorldConfigError) as err:
        raise CommandError(str(err)) from err
    frames = sum(e["frames"] for e in entries)
    objects = sum(e["objects"] for e in entries)
    print(f"{root}: {len(entries)} sequences, {frames} frames, {objects} object labels"
          + (f", KITTI in {root / 'kitti'}" if args.kitti else ""))
    return 0
