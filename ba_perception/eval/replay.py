"""`ba-perception replay-eval BAG`: play a rosbag2 through the real node graph, record, and evaluate.

The unmodified graph (detector_node, track_buffer_node, tracker_node, latency_monitor,
bag_recorder) runs as processes over DDS with ``bag_player`` as the camera, in lockstep (every
frame processed, deterministic) or at the recorded rate times ``--rate`` (real time: frames the
pipeline could not keep up with are dropped and reported). The recorded outputs are scored
against the ground truth in the bag (``/ground_truth/objects``): detection AP, depth error before
and after object BA, HOTA / MOTA / IDF1 / ID switches, and per-stage latency. Results go to
``<out>/summary.json``, ``<out>/report.md`` with plots, and ``<out>/outputs`` (the recorded MCAP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ba_perception.graph import NODES, default_params_file

OUTPUT_TOPICS = {
    "/ba_perception/observations": "ba_perception_msgs/msg/ObjectObservationArray",
    "/ba_perception/detections": "ba_perception_msgs/msg/Detection3DArray",
    "/ba_perception/tracks": "ba_perception_msgs/msg/Track3DArray",
}
PIPELINE_NODES = ("bag_player", "detector_node", "track_buffer_node", "tracker_node", "latency_monitor", "bag_recorder")


class ReplayError(RuntimeError):
    """The replay or its evaluation cannot run (bad bag, missing topics, the graph failed)."""


def check_bag(bag: Path, image_topic: str, info_topic: str) -> dict[str, str]:
    """Topics -> types of a bag; raises :class:`ReplayError` unless it has the camera topics."""
    from rosbags.rosbag2 import Reader

    if not bag.exists():
        raise ReplayError(f"bag {str(bag)!r} does not exist")
    try:
        with Reader(bag) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            counts = {c.topic: c.msgcount for c in reader.connections}
    except Exception as err:  # noqa: BLE001 - rosbags raises several error types for damaged bags
        raise ReplayError(f"cannot read bag {str(bag)!r}: {err}") from err
    for topic in (image_topic, info_topic):
        if topic not in topics or counts.get(topic, 0) == 0:
            raise ReplayError(f"bag has no messages on {topic} (topics: {', '.join(sorted(topics)) or 'none'}); "
                              "remap with --image-topic/--camera-info-topic")
    return topics


@dataclass
class RunConfig:
    """How the graph is run for one replay."""

    bag: Path
    out: Path
    lockstep: bool = True
    rate: float = 1.0
    image_topic: str = "/camera/image_raw"
    info_topic: str = "/camera/camera_info"
    odom_topic: str = "/odom"
    sets: list[str] = field(default_factory=list)
    timeout_s: float = 1800.0


def run_graph(cfg: RunConfig, log=print) -> tuple[Path, Path]:
    """Run the graph over the bag; returns ``(recorded bag folder, latency summary JSON)``."""
    from ba_perception.launcher import Launcher, LaunchError

    record = cfg.out / "outputs"
    latency = cfg.out / "latency.json"
    if record.exists():
        raise ReplayError(f"{record} exists; choose a new --out folder")
    args = {"source": "bag", "bag": str(cfg.bag), "lockstep": "true" if cfg.lockstep else "false",
            "record": str(record), "backend": "auto", "rviz": "false", "params_file": ""}
    sets = [
        f"bag_player.rate:={cfg.rate}",
        f"bag_player.topics:=[{cfg.image_topic},{cfg.info_topic},{cfg.odom_topic}]",
        f"bag_player.lockstep_trigger_topic:={cfg.image_topic}",
        "bag_player.lockstep_timeout_s:=15.0",  # lockstep waits for every frame, however slow
        # Endpoint counts can be seen before every pair of endpoints has matched: let matching settle.
        "bag_player.start_delay_s:=2.0",
        "bag_player.wait_for_subscribers:=1",
        "bag_player.ready_topics:=[/ba_perception/observations=2,/ba_perception/detections=2,/ba_perception/tracks=3]",
        f"bag_player.restamp:={'false' if cfg.lockstep else 'true'}",
        f"latency_monitor.summary_path:={latency}",
        f"latency_monitor.capture_clock:={'sim' if cfg.lockstep else 'wall'}",
        f"latency_monitor.input_topic:={cfg.image_topic}",
        "bag_recorder.qos:=reliable_history",
        "bag_recorder.topics:=[" + ",".join(OUTPUT_TOPICS) + "]",
        "bag_recorder.types:=[" + ",".join(OUTPUT_TOPICS.values()) + "]",
        *cfg.sets,
    ]
    remaps = []
    if cfg.image_topic != "/camera/image_raw":
        remaps.append(f"/camera/image_raw:={cfg.image_topic}")
    if cfg.info_topic != "/camera/camera_info":
        remaps.append(f"/camera/camera_info:={cfg.info_topic}")
    if cfg.odom_topic != "/odom":
        remaps.append(f"/odom:={cfg.odom_topic}")
    specs = [s for s in NODES if s.name in PIPELINE_NODES]
    try:
        launcher = Launcher(specs, args, default_params_file(), sets, remaps, log=log)
    except LaunchError as err:
        raise ReplayError(str(err)) from err
    # The player must not start before the recorder and the pipeline listen: it waits for subscribers.
    code = launcher.run()
    if code != 0:
        log(f"[replay] a node exited with an error (exit {code}); evaluating what was recorded")
    if not (record / "metadata.yaml").exists() and not any(record.glob("*.mcap")):
        raise ReplayError("the recorder wrote nothing; see the node logs above")
    return record, latency


def read_outputs(record: Path) -> dict[str, dict[int, Any]]:
    """Recorded output messages, ``{topic: {capture stamp ns: rclpy message}}``."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from ba_perception.ros.bag_types import import_message_class

    out: dict[str, dict[int, Any]] = {t: {} for t in OUTPUT_TOPICS}
    with Reader(record) as reader:
        classes = {c.topic: import_message_class(c.msgtype) for c in reader.connections}
        for conn, _, raw in reader.messages():
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            out[conn.topic][msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = msg
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 folder or .mcap/.db3 file with camera topics (+ odometry, ground truth)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lockstep", action="store_true", default=True,
                      help="process every frame, deterministic (default)")
    mode.add_argument("--rate", type=float, default=None,
                      help="real time: play at the recorded timing x RATE; dropped frames are reported")
    parser.add_argument("--out", default=None, help="output folder (default out/replay-<time>)")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--camera-info-topic", default="/camera/camera_info")
    parser.add_argument("--odom-topic", default="/odom")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                        help="override a node parameter, e.g. tracker_node.method:=hungarian_3d")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots of the report")


def replay_and_report(cfg: RunConfig, plots: bool = True, log=print) -> dict:
    """Run the graph over ``cfg.bag``, evaluate, write the report; returns the summary dict."""
    from ba_perception.eval.replay_metrics import evaluate_run
    from ba_perception.eval.report import print_summary, write_report

    check_bag(cfg.bag, cfg.image_topic, cfg.info_topic)
    # An evaluation is a private graph on this host: keep it off the network and other graphs' domains.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    record, latency = run_graph(cfg, log)
    wall = time.monotonic() - t0
    outputs = read_outputs(record)
    summary = evaluate_run(cfg.bag, outputs, latency)
    summary["run"] = {"bag": str(cfg.bag), "mode": "lockstep" if cfg.lockstep else f"rate x{cfg.rate}",
                      "wall_s": round(wall, 1), "outputs": str(record), "sets": cfg.sets}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(cfg.out, summary, cfg.bag, outputs, plots=plots)
    print_summary(summary, cfg.out)
    return summary


def run(args: argparse.Namespace) -> int:
    from ba_perception.cli import CommandError

    out = Path(args.out or f"out/replay-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = RunConfig(bag=Path(args.bag), out=out, lockstep=args.rate is None, rate=args.rate or 1.0,
                    image_topic=args.image_topic, info_topic=args.camera_info_topic, odom_topic=args.odom_topic,
                    sets=args.set)
    try:
        replay_and_report(cfg, plots=not args.no_plots)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    return 0
