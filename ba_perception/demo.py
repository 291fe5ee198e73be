"""`ba-perception demo` (README command 1): the whole stack on the embedded synthetic world, then one screen.

Renders (or reuses) the default synthetic sequence as a rosbag2, runs the full node graph over it
in lockstep with the project launcher (bag player, detector, track buffer with object BA, tracker,
latency monitor, recorder), scores the recorded outputs against the ground truth and writes
``out/demo-<time>/report.md`` with plots, next to the recorded MCAP. No hardware, no downloads.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from ba_perception.graph import package_root

DEMO_SPLIT = "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of the demo."""
    parser.add_argument("--preset", default="urban", help="world preset of the demo sequence")
    parser.add_argument("--frames", type=int, default=100, help="frames of the demo sequence (10 Hz)")
    parser.add_argument("--data", default="data", help="where synthetic sequences are kept (reused across runs)")
    parser.add_argument("--out", default=None, help="output folder (default out/demo-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override a node parameter, e.g. detector_node.backend:=torch")
    parser.add_argument("--no-plots", action="store_true")


def demo_bag(preset: str, frames: int, data: Path) -> Path:
    """The demo sequence's bag folder, rendered on first use (resumable, versioned)."""
    from ba_perception.data.synth import WORLD_VERSION, plan, render_split
    from ba_perception.data.world.config import WorldConfig

    root = data / f"world-{WORLD_VERSION}" / f"{DEMO_SPLIT}-{preset}-{frames}"
    configs = plan(DEMO_SPLIT, [preset], 1, frames, replace(WorldConfig(), preset=preset))
    render_split(DEMO_SPLIT, configs, root)
    return root / "seq_0000"


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from ba_perception.cli import CommandError
    from ba_perception.data.world.config import PRESETS
    from ba_perception.eval.replay import ReplayError, RunConfig, replay_and_report

    if args.preset not in PRESETS:
        raise CommandError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    model = package_root() / "models" / "detector.onnx"
    if not model.exists() and not any(s.startswith(("detector_node.checkpoint", "detector_node.model")) for s in args.set):
        raise CommandError(f"the detector model {model} is missing; it ships with the repository "
                           "(git checkout models/), or train one with `ba-perception train` + `ba-perception export`")
    t0 = time.monotonic()
    print(f"[demo] synthetic sequence: preset {args.preset}, {args.frames} frames")
    try:
        bag = demo_bag(args.preset, args.frames, Path(args.data))
    except Exception as err:  # MeshError / RenderError / SynthError say which setup step fixes them
        raise CommandError(str(err)) from err
    out = Path(args.out or f"out/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"[demo] running the node graph over {bag} (lockstep: every frame processed)")
    try:
        replay_and_report(RunConfig(bag=bag, out=out, lockstep=True, sets=args.set), plots=not args.no_plots)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    print(f"[demo] done in {time.monotonic() - t0:.0f} s")
    return 0
