"""`ba-perception bench detector`: detector latency per backend at the shipped input size.

CPU numbers are wall-clock (``time.perf_counter``) around one call; CUDA numbers use CUDA events.
Rows: network only per backend (ONNX Runtime CPU, torch CPU; on a GPU also torch CUDA fp16 with
and without a CUDA graph, ONNX Runtime GPU providers and TensorRT when importable), plus the full
single-image pipeline (letterbox of a 1242x375 image + network (twice with the node's test-time flip)
+ decode) on the default backend.
With ``--memory-frames N`` it first runs the full :class:`Detector` (as the detector node holds it) on
N frames cycling through a few rendered world images and samples the process RSS (psutil) every
``--memory-every`` frames: start / peak / end and the least-squares slope. With ``--node-frames N`` it
runs the real ``detector_node`` process (launcher command line, shipped parameter file, private DDS
domain on localhost) fed frame by frame by ``bag_player`` in lockstep (looping a short bag, restamped)
and samples that process tree's RSS the same way. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ba_perception.eval.results import machine_info

if TYPE_CHECKING:
    from ba_perception.core.detection.backends import OnnxRuntimeBackend
    from ba_perception.core.detection.detector import Detector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options."""
    parser.add_argument("--onnx", default="models/detector.onnx", help="exported detector (random weights if missing)")
    parser.add_argument("--checkpoint", default="models/detector.pt", help="checkpoint for the torch backend")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for ONNX Runtime and torch")
    parser.add_argument("--memory-frames", type=int, default=0,
                        help="memory run: full detector on N frames (cycling through rendered world images), RSS sampled; 0 = skip")
    parser.add_argument("--memory-every", type=int, default=50, help="frames between RSS samples of the memory run")
    parser.add_argument("--memory-images", type=int, default=4,
                        help="distinct rendered 1242x375 world images the memory run cycles through")
    parser.add_argument("--node-frames", type=int, default=0,
                        help="node memory run: detector_node process on N frames from bag_player (lockstep, looped bag); 0 = skip")
    parser.add_argument("--node-bag", default="", help="bag for the node run (default: render a 40-frame 1242x375 world bag)")
    parser.add_argument("--node-cache", default="out/bench/stack_cache", help="where the node run's rendered bag is cached")
    parser.add_argument("--memory-only", action="store_true", help="only the memory runs (no latency rows)")
    parser.add_argument("--out", default="out/bench/detector.json")


MEMORY_LIMIT_MB = 1536.0  # the bar: resident memory under 1.5 GB
GROWTH_TOLERANCE_MB = 10.0  # "no growth": end - first post-warm-up sample and slope x 1000 frames within this


def rss_summary(samples: list[tuple[int, float]], warmup_frames: int) -> dict:
    """Summarise ``(frames_done, rss_mb)`` samples of a memory run.

    ``start`` is the first sample at or after ``warmup_frames`` (allocator pools and the engine's
    arenas settle during the first calls); ``slope_mb_per_1000_frames`` is the least-squares slope of
    the samples from there on; ``growth_mb`` = end - start; ``peak`` covers every sample.
    """
    if not samples:
        raise ValueError("no RSS samples")
    steady = [s for s in samples if s[0] >= warmup_frames] or samples[-1:]
    f = np.array([s[0] for s in steady], dtype=np.float64)
    r = np.array([s[1] for s in steady], dtype=np.float64)
    slope = float(np.polyfit(f, r, 1)[0] * 1000.0) if len(f) >= 2 and np.ptp(f) > 0 else 0.0
    peak = max(s[1] for s in samples)
    growth = float(r[-1] - r[0])
    return {
        "first_mb": float(samples[0][1]), "start_mb": float(r[0]), "start_frame": int(f[0]), "peak_mb": float(peak),
        "end_mb": float(r[-1]), "end_frame": int(f[-1]), "growth_mb": growth, "slope_mb_per_1000_frames": slope,
        "under_limit": bool(peak < MEMORY_LIMIT_MB), "limit_mb": MEMORY_LIMIT_MB,
        "no_growth": bool(growth <= GROWTH_TOLERANCE_MB and slope <= GROWTH_TOLERANCE_MB),
        "growth_tolerance_mb": GROWTH_TOLERANCE_MB,
    }


def render_images(n: int, width: int = 1242, height: int = 375) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` RGB frames (and the intrinsics) of a world test sequence, 9 frames apart."""
    from ba_perception.data.world import World, WorldConfig

    with World(WorldConfig(preset="urban", seed=200_001, width=width, height=height, n_frames=9 * n + 1)) as world:
        frames = [world.render(9 * i) for i in range(n)]
    return [np.ascontiguousarray(f.image) for f in frames], frames[0].K.copy()


def process_rss_mb() -> float:
    """Resident memory of this process, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def memory_run(detector, images: list[np.ndarray], K: np.ndarray, frames: int, every: int) -> dict:
    """Run ``detector.detect`` on ``frames`` frames cycling through ``images``; sample RSS every ``every`` frames.

    Returns:
        ``samples`` ``[(frames_done, rss_mb)]`` (after frame 1, every ``every`` frames, after the last),
        ``rss_before_mb`` (before the first frame), the summary of :func:`rss_summary` with
        ``every`` frames as warm-up, detections per frame and the mean wall time per frame.
    """
    rss = process_rss_mb
    before = rss()
    samples: list[tuple[int, float]] = []
    n_det = 0
    t0 = time.perf_counter()
    for i in range(frames):
        n_det += len(detector.detect(images[i % len(images)], K).detections)
        done = i + 1
        if done == 1 or done % every == 0 or done == frames:
            samples.append((done, rss()))
    wall = time.perf_counter() - t0
    return {"frames": frames, "every": every, "images": len(images), "rss_before_mb": before, "samples": samples,
            "summary": rss_summary(samples, warmup_frames=min(every, frames)), "detections_per_frame": n_det / max(frames, 1),
            "wall_ms_per_frame": 1e3 * wall / max(frames, 1)}


def node_memory_run(bag: Path, onnx_path: Path, frames: int, every: int, threads: int, timeout_s: float = 1800.0) -> dict:
    """Run ``detector_node`` on ``frames`` frames played by ``bag_player`` in lockstep; sample its RSS.

    The player loops ``bag`` (restamping, so every frame is new to the node) and publishes frame
    N+1 only after the node's ObjectObservationArray for frame N arrived. RSS is that of the node's
    process tree, sampled after the first output, every ``every`` outputs and after the last.

    Raises:
        RuntimeError: the node exits early or no output arrives within ``timeout_s``.
    """
    from ba_perception.bench.stack import NodeProcess, _spec, ros_environment
    from ba_perception.graph import default_params_file

    tmp = Path(tempfile.mkdtemp(prefix="bench_det_node_"))
    domain = 150 + os.getpid() % 80
    params = default_params_file()
    with ros_environment(domain, tmp) as env:
        from ba_perception.ros.probe import OutputCounter
        from ba_perception_msgs.msg import ObjectObservationArray

        node_proc = NodeProcess(_spec("detector_node"), params, [f"detector_node.model:={onnx_path.resolve()}",
                                                                  f"detector_node.threads:={threads}"], env, tmp / "detector_node.log")
        probe = OutputCounter(domain, ObjectObservationArray, "/ba_perception/observations", "bench_detector_probe")
        player = NodeProcess(_spec("bag_player"), params, [
            f"bag_player.bag:={bag.resolve()}", "bag_player.restamp:=true", "bag_player.loop:=true",
            "bag_player.lockstep:=true", "bag_player.lockstep_topic:=/ba_perception/observations",
            "bag_player.lockstep_type:=ba_perception_msgs/msg/ObjectObservationArray",
            "bag_player.topics:=[/camera/image_raw,/camera/camera_info]", "bag_player.wait_for_subscribers:=1",
            "bag_player.lockstep_timeout_s:=30.0", "bag_player.exit_when_done:=false"], env, tmp / "bag_player.log")

        rss = node_proc.tree_rss_mb
        samples: list[tuple[int, float]] = []
        t0 = time.monotonic()
        next_sample = 1
        err = None
        try:
            while probe.count < frames:
                probe.spin_once(0.05)
                if probe.count >= next_sample:
                    samples.append((probe.count, rss()))
                    next_sample = every if next_sample == 1 else next_sample + every
                if not node_proc.alive():
                    err = f"detector_node exited (code {node_proc.proc.returncode}): {node_proc.tail(600)}"
                    break
                if time.monotonic() - t0 > timeout_s:
                    err = f"only {probe.count} of {frames} frames after {timeout_s:.0f} s"
                    break
            wall = time.monotonic() - t0
            if err is None and (not samples or samples[-1][0] != probe.count):
                samples.append((probe.count, rss()))
        finally:
            player.stop()
            node_proc.stop()
            probe.close()
    if err is not None:
        raise RuntimeError(err)
    return {"frames": probe.count, "every": every, "bag": str(bag), "threads": threads, "samples": samples,
            "summary": rss_summary(samples, warmup_frames=min(every, frames)), "wall_ms_per_frame": 1e3 * wall / max(frames, 1),
            "method": "detector_node process tree RSS (psutil); bag_player lockstep on the node's output, looped bag, restamped"}


def _node_bag(args: argparse.Namespace) -> Path:
    """``--node-bag``, or a 40-frame 1242x375 world bag rendered once into ``--node-cache``."""
    from ba_perception.bench.stack import StackBenchError, ensure_bag

    ns = argparse.Namespace(bag=args.node_bag, preset="urban", seed=11, width=1242, height=375, frames=40,
                            cache=args.node_cache)
    try:
        return ensure_bag(ns)[0]
    except StackBenchError as err:
        from ba_perception.cli import CommandError

        raise CommandError(str(err)) from err


def print_memory(mem: dict, backend_name: str) -> None:
    """Print the memory run's RSS table and verdicts."""
    s = mem["summary"]
    if "images" in mem:
        print(f"memory run: full detector ({backend_name}) on {mem['frames']} frames cycling {mem['images']} rendered "
              f"1242x375 images, {mem['wall_ms_per_frame']:.1f} ms/frame, {mem['detections_per_frame']:.1f} detections/frame")
        print(f"  RSS before first frame {mem['rss_before_mb']:.0f} MB; samples (frames: MB): "
              + ", ".join(f"{f}: {r:.0f}" for f, r in mem["samples"]))
    else:
        print(f"node memory run: detector_node ({mem['threads']} thread(s)) on {mem['frames']} frames from bag_player "
              f"lockstep ({mem['bag']}), {mem['wall_ms_per_frame']:.1f} ms/frame")
        print("  RSS samples (frames: MB): " + ", ".join(f"{f}: {r:.0f}" for f, r in mem["samples"]))
    print(f"  start {s['start_mb']:.1f} MB (frame {s['start_frame']})  peak {s['peak_mb']:.1f} MB  end {s['end_mb']:.1f} MB "
          f"(frame {s['end_frame']})  growth {s['growth_mb']:+.1f} MB  slope {s['slope_mb_per_1000_frames']:+.2f} MB/1000 frames")
    print(f"  peak < {s['limit_mb']:.0f} MB: {'yes' if s['under_limit'] else 'NO'};  no growth (within "
          f"{s['growth_tolerance_mb']:.0f} MB): {'yes' if s['no_growth'] else 'NO'}")


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "n": int(len(a))}


def _time_cpu(fn, x, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _time_cuda(fn, x, iters: int, warmup: int) -> list[float]:
    x = x.cuda()
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(x)
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def _network_rows(args: argparse.Namespace, ort_cpu: OnnxRuntimeBackend, ck_path: Path, onnx_path: Path, tmp: Path,
                  x: torch.Tensor) -> list[dict]:
    """Latency rows of the network alone on ``x``: ONNX Runtime and torch on CPU, every GPU backend there is."""
    from ba_perception.core.detection.backends import (
        Backend,
        BackendError,
        OnnxRuntimeBackend,
        TorchBackend,
        create_backend,
        tensorrt_available,
    )

    rows: list[dict] = []

    def add(name, device, ms):
        rows.append({"backend": name, "device": device, **_stats(ms)})

    add(ort_cpu.name, "cpu", _time_cpu(ort_cpu, x, args.iters, args.warmup))
    tb = TorchBackend(ck_path, device="cpu", threads=args.threads)
    add(tb.name, "cpu", _time_cpu(tb, x, max(10, args.iters // 2), args.warmup))
    if not torch.cuda.is_available():
        return rows
    gpu = torch.cuda.get_device_name()
    be: Backend
    for fp16, graph in ((True, True), (True, False), (False, False)):
        be = TorchBackend(ck_path, device="cuda", fp16=fp16, cuda_graph=graph)
        add(be.name, gpu, _time_cuda(be, x, args.iters * 4, args.warmup * 4))
    try:
        be = OnnxRuntimeBackend(onnx_path, device="cuda")
        add(be.name, gpu, _time_cuda(be, x, args.iters, args.warmup))
    except BackendError as err:
        print(f"skip onnxruntime GPU: {err}")
    if tensorrt_available():
        for prec in ("fp16", "fp32"):
            try:
                be = create_backend("tensorrt", onnx_path=onnx_path, precision=prec, engine_cache_dir=tmp / "engines")
                add(be.name, gpu, _time_cuda(be, x, args.iters * 4, args.warmup * 4))
            except BackendError as err:
                print(f"skip tensorrt {prec}: {err}")
    return rows


def _pipeline_timings(det: Detector, iters: int, warmup: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per-stage times (ms) of ``det`` on a random 1242x375 image, and the process RSS (MB) after warm-up and at the end."""
    img = np.random.default_rng(0).integers(0, 255, (375, 1242, 3), dtype=np.uint8)
    K = np.array([[721.5, 0, 609.6], [0, 721.5, 172.9], [0, 0, 1.0]])
    stages: dict[str, list[float]] = {"preprocess": [], "inference": [], "decode": [], "total": []}
    rss = []
    for i in range(iters + warmup):
        if i == warmup:
            rss.append(process_rss_mb())
        t0 = time.perf_counter()
        r = det.detect(img, K)
        tot = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            for k, v in r.timings_ms.items():
                stages[k].append(v)
            stages["total"].append(tot)
    rss.append(process_rss_mb())
    return stages, rss


def run(args: argparse.Namespace) -> int:
    """Run the benchmark."""
    from ba_perception.cli import CommandError
    from ba_perception.core.detection.backends import OnnxRuntimeBackend, create_backend
    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.core.detection.detector import Detector
    from ba_perception.core.detection.model import MonoDetector, save_checkpoint
    from ba_perception.graph import default_params_file, node_parameters
    from ba_perception.train.export import export_onnx

    if args.memory_frames < 0 or args.node_frames < 0 or args.memory_every < 1 or args.memory_images < 1:
        raise CommandError("--memory-frames and --node-frames must be >= 0, --memory-every and --memory-images >= 1")
    if args.memory_only and args.memory_frames == 0 and args.node_frames == 0:
        raise CommandError("--memory-only needs --memory-frames N or --node-frames N (N > 0)")
    torch.set_num_threads(max(1, args.threads))
    node_decode = DecodeConfig.from_params(node_parameters(default_params_file(), "detector_node"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_det_"))
    onnx_path, ck_path = Path(args.onnx), Path(args.checkpoint)
    weights = "shipped"
    if not onnx_path.is_file() or not ck_path.is_file():
        weights = "random (no shipped model found; latency does not depend on weight values)"
        model = MonoDetector().eval()
        ck_path = tmp / "det.pt"
        save_checkpoint(ck_path, model)
        onnx_path = export_onnx(model, tmp / "det.onnx")
    memory = node_memory = None
    if args.memory_frames > 0:
        # First, in a process that holds nothing else yet: one Detector, as the detector node holds it.
        images, K_img = render_images(args.memory_images)
        be_m = create_backend("auto", onnx_path=onnx_path, checkpoint=ck_path, threads=args.threads)
        memory = memory_run(Detector(be_m, node_decode), images, K_img, args.memory_frames,
                            args.memory_every)
        memory["backend"] = be_m.name
        print_memory(memory, be_m.name)
        del be_m
    if args.node_frames > 0:
        bag = _node_bag(args)
        try:
            node_memory = node_memory_run(bag, onnx_path, args.node_frames, args.memory_every, args.threads)
        except RuntimeError as err:
            raise CommandError(f"node memory run failed: {err}") from err
        print_memory(node_memory, "detector_node")
    if args.memory_only:
        res = {"weights": weights, "threads": args.threads, "memory": memory, "node_memory": node_memory,
               "machine": machine_info()}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out} (load average after: {res['machine']['loadavg']})")
        return 0
    ort_cpu = OnnxRuntimeBackend(onnx_path, device="cpu", threads=args.threads)
    h, w = ort_cpu.input_hw
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    rows = _network_rows(args, ort_cpu, ck_path, onnx_path, tmp, x)
    # full pipeline on a KITTI-size image with the default backend
    be = create_backend("auto", onnx_path=onnx_path, checkpoint=ck_path, threads=args.threads)
    det = Detector(be, node_decode)  # the node's settings (config/stack.yaml)
    stages, rss = _pipeline_timings(det, args.iters, args.warmup)
    pipeline = {k: _stats(v) for k, v in stages.items()}
    res = {
        "input_hw": [h, w], "weights": weights, "threads": args.threads, "machine": machine_info(),
        "network": rows, "pipeline_1242x375": {"backend": be.name, "flip_test": node_decode.flip_test, **pipeline},
        "process_rss_mb": {"after_warmup": rss[0], "after_all": rss[-1], "frames": args.iters},
        "method": "CPU: wall clock per call; CUDA: CUDA events per call; batch 1",
        "memory": memory,
        "node_memory": node_memory,
    }
    print(f"detector latency, input 1x3x{h}x{w}, {args.threads} CPU threads, weights: {weights}")
    print(f"{'backend':42s} {'device':22s} {'p50 ms':>8s} {'p95 ms':>8s} {'mean ms':>8s} {'n':>5s}")
    for r_ in rows:
        print(f"{r_['backend']:42s} {str(r_['device'])[:22]:22s} {r_['p50_ms']:8.2f} {r_['p95_ms']:8.2f} {r_['mean_ms']:8.2f} {r_['n']:5d}")
    image = "1242x375, flip test" if node_decode.flip_test else "1242x375 image"
    for k, v in pipeline.items():
        print(f"{'pipeline ' + k + ' (' + be.name + ')':42s} {image:22s} "
              f"{v['p50_ms']:8.2f} {v['p95_ms']:8.2f} {v['mean_ms']:8.2f} {v['n']:5d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"process RSS {rss[0]:.0f} MB after warm-up, {rss[-1]:.0f} MB after {args.iters} more frames")
    print(f"wrote {out} (load average after: {res['machine']['loadavg']})")
    if not rows:
        raise CommandError("no backend could be benchmarked")
    return 0
