"""`ba-perception bench pipeline`: the graph's stages in one process, no DDS: detector -> track buffer (object BA) -> tracker.

The same core objects the nodes run, configured from the same parameter file (config/stack.yaml):
``Detector`` (preprocess, network, decode), ``TrackBufferStage.step`` (the track_buffer_node's
per-frame step: tracklets, KLT on the frame's image, object BA), and ``Tracker.step`` on the
refined boxes (the tracker_node's work), frame after frame
over a rendered synthetic-world sequence (or a bag). Message (de)serialisation and DDS transport
are *not* included: that is ``bench stack``.

Timing: on CPU wall clock (``time.perf_counter``) at every stage boundary; on CUDA
``torch.cuda.synchronize()`` before every boundary reading (so queued kernels are charged to the
stage that launched them) plus CUDA events around each frame. Warm-up frames are excluded.

What feeds the track buffer (``--observations``):

- ``detector``: the decoded detections. With a trained model that is the real load. With a
  randomly initialised network (no model shipped yet) the score threshold is set to 0 so the
  decoder returns exactly ``--objects`` peaks per frame; their boxes are meaningless, so they do not
  link into tracklets and the BA load is *not* representative (the network's timing is).
- ``world``: observations made from the world's ground truth for the nearest ``--objects``
  visible objects (noisy centre/yaw/box, a fixed per-object embedding, and 5x5 descriptors that
  are a smooth function of the object-frame surface point under each sample, from the rendered
  depth and instance maps). Every object links and is refined: the BA and tracker load of N real
  objects. The detector still runs on every image and is timed; its output is discarded.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.core.oba.refine import tracker_detections
from ba_perception.core.oba.stage import TrackBufferConfig, TrackBufferStage
from ba_perception.core.oba.tracklets import Observation, observations_from_detections
from ba_perception.core.tracking import Tracker, TrackerConfig
from ba_perception.eval.results import machine_info

DEFAULT_MODEL = Path("models/detector.onnx")
STAGES = ("detector.preprocess", "detector.inference", "detector.decode", "detector",
          "track_buffer.associate", "track_buffer.refine", "track_buffer", "tracker", "total")


class PipelineBenchError(RuntimeError):
    """The benchmark cannot run as asked (missing input, unusable device or model)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="detector and object BA device")
    parser.add_argument("--frames", type=int, default=60, help="timed frames (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames first (allocator, caches, CUDA graph)")
    parser.add_argument("--objects", type=int, default=30, help="objects per frame fed to the track buffer (at most)")
    parser.add_argument("--observations", choices=("auto", "detector", "world"), default="auto",
                        help="track buffer input: decoded detections, or ground-truth-made observations "
                             "(auto: detector with a trained model, world with a random one)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX detector (used when it exists)")
    parser.add_argument("--checkpoint", default="", help="torch checkpoint, used when the ONNX model is absent")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime", "torch"),
                        help="engine for the ONNX model")
    parser.add_argument("--bag", default="", help="read frames from this rosbag2 instead of rendering")
    parser.add_argument("--preset", default="parking_lot", help="world preset (parking_lot: 60+ visible objects, so --objects is reached)")
    parser.add_argument("--seed", type=int, default=7, help="world seed of the rendered sequence")
    parser.add_argument("--width", type=int, default=1242)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / ONNX Runtime CPU threads (1: stable numbers on a shared 2-core machine)")
    parser.add_argument("--compile-ba", action="store_true",
                        help="fuse the object-BA LM iteration with torch.compile (compiled during the warm-up frames)")
    parser.add_argument("--params-file", default="", help="parameter file (default: the package's config/stack.yaml)")
    parser.add_argument("--out", default="out/bench/pipeline.json", help="JSON output path")


class WorldObservations:
    """Observations of the nearest visible ground-truth objects, shaped like the detector's output.

    Noise: centre along the ray 3 % of depth + 0.1 m, across 0.1 m; yaw 0.05 rad; box corners 1 px.
    Descriptors: ``normalize(sin(W p_obj + b))`` of the object-frame surface point under each
    sample (random unit vectors where the sample misses the object), so the same surface point
    gives the same descriptor in every frame, like an ideal learned feature.

    Args:
        max_objects: at most this many per frame (nearest first).
        samples_per_side: feature samples per box side (the detector's grid).
        descriptor_dim, embedding_dim: feature sizes (the network's).
        seed: noise seed.
    """

    def __init__(self, max_objects: int, samples_per_side: int = 5, descriptor_dim: int = 32,
                 embedding_dim: int = 64, seed: int = 0) -> None:
        self.max_objects, self.n = max_objects, samples_per_side
        self.rng = np.random.default_rng(seed)
        g = np.random.default_rng(12345)
        self.W = g.normal(0.0, 1.0 / 0.15, (3, descriptor_dim))  # ~15 cm correlation length
        self.b = g.uniform(0.0, 2 * np.pi, descriptor_dim)
        self.embedding_dim = embedding_dim
        self._emb: dict[int, np.ndarray] = {}

    def _embedding(self, track_id: int) -> np.ndarray:
        if track_id not in self._emb:
            e = np.random.default_rng(track_id).normal(size=self.embedding_dim)
            self._emb[track_id] = e / np.linalg.norm(e)
        e = self._emb[track_id] + self.rng.normal(0.0, 0.05, self.embedding_dim)
        return (e / np.linalg.norm(e)).astype(np.float32)

    def __call__(self, frame: Any) -> list[Observation]:
        """Observations of one :class:`~ba_perception.data.world.WorldFrame` (needs depth and instance)."""
        gt = frame.objects
        ok = np.isfinite(gt.box_visible).all(axis=1) & (gt.center_cam[:, 2] > 1.0)
        idx = np.nonzero(ok)[0]
        idx = idx[np.argsort(gt.center_cam[idx, 2])][: self.max_objects]
        if idx.size == 0:
            return []
        H, W = frame.depth.shape
        box = gt.box_visible[idx] + self.rng.normal(0.0, 1.0, (idx.size, 4))
        # n x n grid of cell centres inside each box (the decoder's sampling pattern)
        f = (np.arange(self.n) + 0.5) / self.n
        gx = box[:, None, 0] + f[None] * (box[:, None, 2] - box[:, None, 0])
        gy = box[:, None, 1] + f[None] * (box[:, None, 3] - box[:, None, 1])
        uv = np.stack(np.broadcast_arrays(gx[:, None, :], gy[:, :, None]), -1).reshape(idx.size, -1, 2)
        px = np.clip(np.rint(uv).astype(np.int64), 0, [W - 1, H - 1])
        depth = frame.depth[px[..., 1], px[..., 0]].astype(np.float64)
        on = (frame.instance[px[..., 1], px[..., 0]] == gt.track_id[idx, None]) & np.isfinite(depth)
        Kinv = np.linalg.inv(frame.K)
        rays = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1) @ Kinv.T
        p_cam = rays * np.where(on, depth, 1.0)[..., None]
        T_obj_cam = np.linalg.inv(gt.T_cam_obj[idx])
        p_obj = np.einsum("nij,nsj->nsi", T_obj_cam[:, :3, :3], p_cam) + T_obj_cam[:, None, :3, 3]
        desc = np.sin(p_obj @ self.W + self.b)
        desc[~on] = self.rng.normal(size=(int((~on).sum()), desc.shape[-1]))
        desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
        z = gt.center_cam[idx, 2]
        depth_std, lateral_std = 0.03 * z + 0.1, np.full(idx.size, 0.1)
        ray = gt.center_cam[idx] / np.linalg.norm(gt.center_cam[idx], axis=1, keepdims=True)
        center = (gt.center_cam[idx] + ray * self.rng.normal(0.0, 1.0, (idx.size, 1)) * depth_std[:, None]
                  + self.rng.normal(0.0, 0.1, (idx.size, 3)) * (1 - np.abs(ray)))
        yaw = gt.rotation_y[idx] + self.rng.normal(0.0, 0.05, idx.size)
        R = geometry.rotation_cam_from_yaw(torch.as_tensor(yaw, dtype=torch.float64)).numpy()
        return [Observation(box_2d=box[k], center_cam=center[k], R_cam_obj=R[k], size_lwh=gt.size_lwh[i].copy(),
                            depth_std=float(depth_std[k]), lateral_std=float(lateral_std[k]), yaw_std=0.2, score=0.9,
                            class_label=gt.class_label[i], embedding=self._embedding(int(gt.track_id[i])),
                            sample_uv=uv[k].astype(np.float32), descriptors=desc[k].astype(np.float32))
                for k, i in enumerate(idx)]


# ------------------------------------------------------------------------------------------------
# input frames and model
# ------------------------------------------------------------------------------------------------
def load_frames(args: argparse.Namespace, n: int, need_world: bool) -> tuple[list[Any], dict]:
    """``n`` frames (image, K, T_odom_cam, stamp_ns; depth/instance when rendered) and their source."""
    if args.bag:
        from ba_perception.data.bag import BagError, read_bag

        if need_world:
            raise PipelineBenchError("--observations world needs rendered depth/instance maps; drop --bag "
                                     "or use --observations detector")
        try:
            frames = []
            for f in read_bag(args.bag):
                if f.image is not None:
                    frames.append(f)
                if len(frames) >= n:
                    break
        except BagError as err:
            raise PipelineBenchError(str(err)) from err
        if len(frames) < n:
            raise PipelineBenchError(f"bag {args.bag} has {len(frames)} frames with images; need {n} "
                                     "(lower --frames/--warmup)")
        return frames, {"bag": str(args.bag)}
    from ba_perception.data.world import World, WorldConfig, WorldConfigError

    cfg = WorldConfig(preset=args.preset, seed=args.seed, width=args.width, height=args.height, n_frames=n)
    try:
        cfg.validate()
    except WorldConfigError as err:
        raise PipelineBenchError(str(err)) from err
    t0 = time.perf_counter()
    with World(cfg) as world:
        rendered = [world.render(i) for i in range(n)]
    print(f"rendered {n} frames {args.width}x{args.height} ({args.preset}, seed {args.seed}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return rendered, {"world": {"preset": args.preset, "seed": args.seed, "width": args.width, "height": args.height}}


def make_backend(args: argparse.Namespace) -> tuple[Any, str]:
    """The detector backend and a description of the weights: shipped ONNX, checkpoint, or random."""
    from ba_perception.core.detection.backends import BackendError, TorchBackend, create_backend
    from ba_perception.core.detection.model import MonoDetector

    try:
        if args.model and Path(args.model).is_file():
            be = create_backend(args.backend, onnx_path=args.model, device=args.device, threads=args.threads)
            return be, f"onnx:{args.model}"
        if args.checkpoint:
            if not Path(args.checkpoint).is_file():
                raise PipelineBenchError(f"checkpoint {args.checkpoint} not found")
            return create_backend("torch", checkpoint=args.checkpoint, device=args.device, threads=args.threads), \
                f"checkpoint:{args.checkpoint}"
        torch.manual_seed(0)
        return TorchBackend(MonoDetector().eval(), device=args.device, threads=args.threads), "random"
    except BackendError as err:
        raise PipelineBenchError(str(err)) from err


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of a list of milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def run_pipeline(frames: list[Any], detector: Any, observe: Any, config: TrackBufferConfig,
                 tracker_cfg: TrackerConfig, warmup: int, device: torch.device) -> dict:
    """Run every frame through the three stages; per-stage samples of the frames after ``warmup``.

    Args:
        observe: ``observe(frame_index, DetectionResult) -> list[Observation]``, the track buffer's
            input (timed as part of ``track_buffer.associate``, as the node converts its input there).
    """
    cuda = device.type == "cuda"

    def now() -> tuple[float, float]:
        """(wall, process CPU) seconds; CPU time counts every thread of this process."""
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter(), time.process_time()

    stage = TrackBufferStage(config, clock=lambda: now()[0])  # the track_buffer_node's per-frame step
    tracker = Tracker(tracker_cfg)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    samples["total.cuda_events"] = []
    cpu: dict[str, list[float]] = {s: [] for s in ("detector", "track_buffer", "tracker", "total")}
    counts: dict[str, list[int]] = {"detections": [], "observations": [], "tracklets": [], "refined": [],
                                    "tracker_input": [], "tracks_confirmed": []}
    for i, f in enumerate(frames):
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
        t0 = now()
        if ev:
            ev[0].record()
        res = detector.detect(f.image, f.K)
        t1 = now()
        obs = observe(i, res)  # the track buffer's input records (conversion timed with the association)
        # as the node: the frame's image to gray (image_to_gray on its worker), then the stage's step
        gray = cv2.cvtColor(np.ascontiguousarray(f.image), cv2.COLOR_RGB2GRAY) if stage.needs_images else None
        step = stage.step(f.stamp_ns, obs, f.T_odom_cam, f.K, gray)
        boxes = step.boxes
        t3 = now()
        t2 = (t3[0] - step.seconds["refine"], t3[1])  # the association / refinement boundary, from the stage's clock
        dets = tracker_detections(boxes)
        out = tracker.step(f.stamp_ns, dets)
        if ev:
            ev[1].record()
        t4 = now()
        if i < warmup:
            continue
        for k, v in res.timings_ms.items():
            samples[f"detector.{k}"].append(v)
        for name, a, b in (("detector", t0, t1), ("track_buffer.associate", t1, t2), ("track_buffer.refine", t2, t3),
                           ("track_buffer", t1, t3), ("tracker", t3, t4), ("total", t0, t4)):
            samples[name].append((b[0] - a[0]) * 1e3)
            if name in cpu:
                cpu[name].append((b[1] - a[1]) * 1e3)
        if ev:
            samples["total.cuda_events"].append(ev[0].elapsed_time(ev[1]))
        counts["detections"].append(len(res.detections))
        counts["observations"].append(len(obs))
        counts["tracklets"].append(len(boxes))
        counts["refined"].append(sum(1 for b in boxes if b.refined))
        counts["tracker_input"].append(len(dets))
        counts["tracks_confirmed"].append(sum(1 for t in out if t.status == 1))
    return {"stages": {k: percentiles(v) for k, v in samples.items() if v},
            "stages_cpu": {k: percentiles(v) for k, v in cpu.items() if v},
            "objects_per_frame": {k: {"mean": float(np.mean(v)), "min": int(np.min(v)), "max": int(np.max(v))}
                                  for k, v in counts.items() if v}}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark: print a table, write JSON."""
    from ba_perception.cli import CommandError
    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.core.detection.detector import Detector
    from ba_perception.graph import default_params_file, node_parameters

    if args.frames < 1 or args.warmup < 0 or args.objects < 1:
        raise CommandError("--frames and --objects must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: torch sees no CUDA GPU here; run on a GPU machine or use --device cpu")
    torch.set_num_threads(max(1, args.threads))
    params_file = Path(args.params_file) if args.params_file else default_params_file()
    if not params_file.is_file():
        raise CommandError(f"parameter file {params_file} not found")
    try:
        backend, weights = make_backend(args)
        mode = args.observations
        if mode == "auto":
            mode = "world" if weights == "random" else "detector"
        frames, source = load_frames(args, args.frames + args.warmup, need_world=mode == "world")
    except PipelineBenchError as err:
        raise CommandError(str(err)) from err
    pd = node_parameters(params_file, "detector_node")
    decode_cfg = replace(DecodeConfig.from_params(pd), max_detections=args.objects)  # the node's decode settings
    if weights == "random" and mode == "detector":
        decode_cfg = replace(decode_cfg, score_threshold=0.0)  # a random network scores ~0.1 everywhere: top --objects peaks
    threshold = decode_cfg.score_threshold
    detector = Detector(backend, decode_cfg)
    mcfg = (backend.metadata or {}).get("config", {})
    if mode == "world":  # made before the timed loop: generating them is not part of the pipeline
        world_obs = WorldObservations(args.objects, decode_cfg.samples_per_side,
                                      int(mcfg.get("feature_dim", 32)), int(mcfg.get("embedding_dim", 64)))
        made = [world_obs(f) for f in frames]

        def observe(i, _res):
            return made[i]
    else:
        def observe(_i, res):
            return observations_from_detections(res.detections, res.class_names)

    tb = TrackBufferConfig.from_params(node_parameters(params_file, "track_buffer_node"), args.device)
    if args.compile_ba:
        tb = replace(tb, refine=replace(tb.refine, solver=replace(tb.refine.solver, compiled=True)))
    rf_cfg = tb.refine
    tr_cfg = TrackerConfig.from_params(node_parameters(params_file, "tracker_node"))
    print(f"pipeline: {len(frames)} frames ({args.warmup} warm-up), backend {backend.name}, weights {weights}, "
          f"observations {mode}, BA on {args.device}")
    result = run_pipeline(frames, detector, observe, tb, tr_cfg, args.warmup, torch.device(args.device))
    data = {
        "device": args.device, "backend": backend.name, "weights": weights, "observations": mode,
        "input": source, "image_wh": [int(frames[0].image.shape[1]), int(frames[0].image.shape[0])],
        "network_input_hw": list(backend.input_hw), "frames": args.frames, "warmup": args.warmup,
        "objects_max": args.objects, "score_threshold": threshold, "params_file": str(params_file),
        "refine": {"window": rf_cfg.window, "static_window": tb.tracklets.window, "num_points": rf_cfg.num_points,
                   "correspondences": rf_cfg.correspondences,
                   "max_iterations": rf_cfg.solver.max_iterations, "dtype": str(rf_cfg.dtype),
                   "cuda_graph": rf_cfg.cuda_graph, "compiled": rf_cfg.solver.compiled},
        "tracker": {"method": tr_cfg.method, "solver": tr_cfg.solver},
        "method": ("CUDA: torch.cuda.synchronize() before each stage boundary, wall clock; total also by CUDA events"
                   if args.device == "cuda" else "CPU: wall clock (perf_counter) at each stage boundary")
        + "; in-process, no DDS or message conversion; warm-up frames excluded",
        "note": ("random detector weights: network timing is representative, decode/BA load is not"
                 if weights == "random" and mode == "detector" else
                 "world observations: BA/tracker load of real objects; detector output timed then discarded"
                 if mode == "world" else "trained detector output drives the track buffer"),
        "machine": {**machine_info(), "threads": args.threads},
        **result,
    }
    print(f"{'stage':26s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'n':>5s}")
    for name, s in result["stages"].items():
        print(f"{name:26s} {s['p50_ms']:8.2f} {s['p95_ms']:8.2f} {s['p99_ms']:8.2f} {s['mean_ms']:8.2f} {s['n']:5d}")
    print("process CPU time per frame (all threads; includes thread spin-waits, so also inflated on oversubscribed cores):")
    for name, s_ in result["stages_cpu"].items():
        print(f"{'cpu ' + name:26s} {s_['p50_ms']:8.2f} {s_['p95_ms']:8.2f} {s_['p99_ms']:8.2f} {s_['mean_ms']:8.2f} {s_['n']:5d}")
    print("objects per frame (mean/min/max): " + ", ".join(
        f"{k} {v['mean']:.1f}/{v['min']}/{v['max']}" for k, v in result["objects_per_frame"].items()))
    print(data["note"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"wrote {out} (load average after: {data['machine']['loadavg']})")
    return 0
