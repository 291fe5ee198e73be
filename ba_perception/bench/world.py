"""Benchmark of the synthetic world: render fps and a full sequence with GT and bag writing.

1. ``render``: 640x384 (``--width/--height``), 8 textured trigger-rally cars moving on a ground
   plane in front of the camera; the clock covers ``Renderer.render`` (colour + depth + instance
   ids drawn and read back). ``render+gt`` times ``World.render`` of the same scene (adds
   silhouettes for occlusion, boxes, post-processing).
2. ``sequence``: a ``--frames`` long ``urban`` sequence (the busiest preset with parked cars,
   pedestrians and cyclists) rendered with all ground truth and written to a rosbag2 MCAP in a
   temp folder, wall time from scene generation to the closed bag, at each size in ``--sizes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_RENDER_FPS = 50.0
GOAL_SEQUENCE_S = 15.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ba-perception bench world``."""
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--cars", type=int, default=8)
    parser.add_argument("--render-frames", type=int, default=200, help="timed frames of the render test")
    parser.add_argument("--frames", type=int, default=200, help="frames of the sequence test")
    parser.add_argument("--sizes", nargs="+", default=["640x384", "1242x375"], help="WxH of the sequence test")
    parser.add_argument("--preset", default="urban")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="out/bench/world.json", help="JSON output path")


def _car_scene(width: int, height: int, n_cars: int, n_frames: int):
    from ba_perception.data.world import WorldConfig
    from ba_perception.data.world.meshes import CAR_MODELS
    from ba_perception.data.world.scene import constructed_scene

    cfg = WorldConfig(preset="urban", seed=0, width=width, height=height, n_frames=n_frames)
    rng = np.random.default_rng(0)
    placements = []
    for i in range(n_cars):
        placements.append(dict(model=CAR_MODELS[i % len(CAR_MODELS)], x=10.0 + 5.0 * i, y=float(rng.uniform(-4, 4)),
                               yaw=float(rng.uniform(-np.pi, np.pi)), speed=float(rng.uniform(-1, 1)),
                               color=tuple(rng.uniform(0.1, 0.9, 3))))
    return cfg, constructed_scene(cfg, placements)


def _bench_render(args) -> dict:
    from ba_perception.data.world import World

    cfg, scene = _car_scene(args.width, args.height, args.cars, args.render_frames)
    out = {}
    with World(cfg, scene) as world:
        # Warm up (shader compilation, texture upload), then time the renderer alone.
        world.render(0)
        times, visible = [], []
        for k in range(args.render_frames):
            t = k / cfg.rate_hz
            _, T_odom_cam = world.pose_at(t)
            T_cam_odom = np.linalg.inv(T_odom_cam)
            draws = [d for a in scene.agents for d in world._draws(a, T_cam_odom @ scene.agent_pose_odom(a, t), t)]
            from ba_perception.data.world.render import Draw

            draws.insert(0, Draw("scenery", T_cam_odom))
            t0 = time.perf_counter()
            img, depth, inst = world.renderer.render(draws, T_cam_odom[:3, :3] @ scene.light_dir, scene.ambient,
                                                     scene.sky_top, scene.sky_horizon)
            times.append(time.perf_counter() - t0)
            visible.append(len(np.unique(inst)) - 1)
        a = np.asarray(times) * 1e3
        out["render"] = {"frames": len(a), "p50_ms": float(np.median(a)), "mean_ms": float(a.mean()),
                         "fps": float(1e3 / a.mean()), "cars_visible_min": int(min(visible)),
                         "cars_visible_mean": float(np.mean(visible))}
        times = []
        for k in range(args.render_frames):
            t0 = time.perf_counter()
            f = world.render(k)
            times.append(time.perf_counter() - t0)
        a = np.asarray(times) * 1e3
        out["render+gt"] = {"frames": len(a), "p50_ms": float(np.median(a)), "mean_ms": float(a.mean()),
                            "fps": float(1e3 / a.mean()), "gt_objects_last": len(f.objects)}
    return out


def _bench_sequence(args, width: int, height: int) -> dict:
    from ba_perception.data.bag import BagWriter
    from ba_perception.data.world import World, WorldConfig

    cfg = WorldConfig(preset=args.preset, seed=1, width=width, height=height, n_frames=args.frames, noise_std=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        c0 = time.process_time()
        t_render = t_bag = 0.0
        n_obj = 0
        with World(cfg) as world, BagWriter(Path(tmp) / "bag") as bag:
            t_init = time.perf_counter() - t0
            for k in range(cfg.n_frames):
                a = time.perf_counter()
                f = world.render(k)
                b = time.perf_counter()
                bag.write(f)
                c = time.perf_counter()
                t_render += b - a
                t_bag += c - b
                n_obj += len(f.objects)
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
        size = sum(p.stat().st_size for p in (Path(tmp) / "bag").iterdir())
    return {"size": f"{width}x{height}", "frames": cfg.n_frames, "total_s": total, "cpu_s": cpu, "init_s": t_init,
            "render_gt_s": t_render, "bag_write_s": t_bag, "objects": n_obj, "bag_mb": size / 2**20,
            "goal_s": GOAL_SEQUENCE_S, "meets_goal": total <= GOAL_SEQUENCE_S}


def run(args: argparse.Namespace) -> int:
    """Run the world benchmark; returns the exit code."""
    import torch

    from ba_perception.cli import CommandError
    from ba_perception.data.world import MeshError, RenderError

    torch.set_num_threads(args.threads)
    try:
        result = _bench_render(args)
        seqs = []
        for s in args.sizes:
            w, h = (int(x) for x in s.lower().split("x"))
            seqs.append(_bench_sequence(args, w, h))
    except (MeshError, RenderError) as err:
        raise CommandError(str(err)) from err
    except ValueError as err:
        raise CommandError(f"bad --sizes ({err}); use WxH like 640x384") from err
    result["render"]["goal_fps"] = GOAL_RENDER_FPS
    result["render"]["meets_goal"] = result["render"]["fps"] >= GOAL_RENDER_FPS
    result["sequence"] = seqs
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_1min_at_end": load,
                         "note": "wall times depend on other jobs sharing the CPUs; cpu_s is this process's CPU time"}
    print(f"{'test':34s} {'value':>12s} {'goal':>10s}  ok")
    r = result["render"]
    ok = "yes" if r["meets_goal"] else "NO"
    print(f"{f'render {args.width}x{args.height}, {args.cars} cars':34s} {r['fps']:9.1f} fps {GOAL_RENDER_FPS:7.0f} fps  {ok}"
          f"   (cars in view: min {r['cars_visible_min']}, mean {r['cars_visible_mean']:.1f})")
    g = result["render+gt"]
    print(f"{'render + all GT (same scene)':34s} {g['fps']:9.1f} fps {'-':>10s}")
    for s in seqs:
        label = f"{s['frames']} frames {args.preset} {s['size']} + bag"
        print(f"{label:34s} {s['total_s']:10.2f} s {GOAL_SEQUENCE_S:8.0f} s  {'yes' if s['meets_goal'] else 'NO'}"
              f"   (render+GT {s['render_gt_s']:.2f} s, bag {s['bag_write_s']:.2f} s, init {s['init_s']:.2f} s,"
              f" process CPU {s['cpu_s']:.2f} s incl. llvmpipe threads)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}  (1-min load average {load}, {os.cpu_count()} CPUs)")
    return 0
