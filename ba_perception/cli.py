"""The ``ba-perception`` command: one entry point with a subcommand for every job a user runs.

Each subcommand lives in its own module, imported only when chosen so ``--help`` stays fast.
A command module provides ``add_arguments(parser)`` and ``run(args) -> int``; a
``CommandError`` raised from it ends the process with a one-line reason and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep sorted; benches are under `bench NAME`.
COMMANDS: dict[str, tuple[str, str]] = {
    "build-engine": ("ba_perception.train.build_engine", "build and cache the TensorRT engine of the detector"),
    "demo": ("ba_perception.demo", "run the whole stack on the synthetic world and print the results (README command 1)"),
    "eval-det": ("ba_perception.eval.detection_eval", "detector AP|R40 (3D/BEV/2D), depth and yaw errors on a world split"),
    "eval-oba": ("ba_perception.eval.oba_eval", "object BA vs single-frame on a world split: depth, motion state, velocity, AP, ablations"),
    "eval-pseudo": ("ba_perception.pseudo.evaluate", "pseudo-label quality on world data: coverage, centre/yaw error, 3D IoU, movers"),
    "eval-track": ("ba_perception.eval.track_eval", "tracker HOTA/MOTA/IDF1/IDSW (trackeval) on a world split or KITTI tracking files"),
    "export": ("ba_perception.train.export", "export a detector checkpoint to ONNX (opset 17) with parity check"),
    "launch": ("ba_perception.launcher", "start the whole node graph from config/stack.yaml"),
    "params-doc": ("ba_perception.params_doc", "print or update docs/parameters.md, the node parameter reference"),
    "pseudo-label": ("ba_perception.pseudo.command", "BA2-Det pseudo 3D labels from bags with 2D boxes (track ids) and odometry"),
    "replay-eval": ("ba_perception.eval.replay", "play a bag through the node graph, record, score against ground truth"),
    "results-doc": ("ba_perception.results_doc", "print or update the README's results table from docs/results/*.json"),
    "synth": ("ba_perception.data.synth", "render versioned synthetic-world splits to rosbag2 MCAP (and KITTI)"),
    "train": ("ba_perception.train.trainer", "train the monocular 3D detector on the synthetic world"),
    "world-preview": ("ba_perception.data.preview", "contact sheet PNG / GIF of a world sequence with GT boxes"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "detector": ("ba_perception.bench.detector", "detector latency per backend (ONNX Runtime / torch / TensorRT) + full pipeline"),
    "oba": ("ba_perception.bench.oba", "batched object BA: 64x16x32 solve time (CUDA/CPU), speed-up vs pycolmap, Ceres agreement"),
    "pipeline": ("ba_perception.bench.pipeline",
                 "detector + object BA + tracker in one process (no DDS), per-stage p50/p95/p99, CPU or CUDA"),
    "soak": ("ba_perception.bench.soak", "the node graph at a fixed rate for minutes: RSS per node, drop rate over time, kill -9 recovery"),
    "stack": ("ba_perception.bench.stack", "the node graph over DDS at fixed input rates + peak-throughput search (ros2_benchmark style)"),
    "tracker": ("ba_perception.bench.tracker", "Tracker.step latency, 50 tracks x 50 detections, CPU"),
    "transport": ("ba_perception.bench.transport", "1280x720 images between two processes over DDS"),
    "world": ("ba_perception.bench.world", "synthetic world: render fps (640x384, 8 cars) and 200-frame sequence + bag"),
}


class CommandError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


def _load(module: str):
    return importlib.import_module(module)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ba-perception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON", add_help=False)
    bench.set_defaults(_benches=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "bench":
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in BENCHES:
            print("usage: ba-perception bench {" + ",".join(BENCHES) + "} [options]")
            for bname, (_, help_) in BENCHES.items():
                print(f"  {bname:12s} {help_}")
            if rest and rest[0] not in ("-h", "--help"):
                print(f"ba-perception: error: unknown benchmark {rest[0]!r}", file=sys.stderr)
                return 2
            return 0 if rest else 2
        module, help_ = BENCHES[rest[0]]
        prog, rest = f"ba-perception bench {rest[0]}", rest[1:]
    elif name in COMMANDS:
        module, help_ = COMMANDS[name]
        prog = f"ba-perception {name}"
    else:
        top.print_usage(sys.stderr)
        print(f"ba-perception: error: unknown command {name!r}", file=sys.stderr)
        return 2
    mod = _load(module)
    parser = argparse.ArgumentParser(prog=prog, description=help_)
    mod.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(mod.run(args) or 0)
    except CommandError as err:
        print(f"ba-perception: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
