"""`ba-perception replay-eval BAG | --kitti ROOT`: play a bag through the real node graph, record, and evaluate.

The unmodified graph (detector_node, track_buffer_node, tracker_node, latency_monitor,
bag_recorder) runs as processes over DDS with ``bag_player`` as the camera, in lockstep (every
frame processed, deterministic) or at the recorded rate times ``--rate`` (real time: frames the
pipeline could not keep up with are dropped and reported). The recorded outputs are scored
against the ground truth in the bag (``/ground_truth/objects``): detection AP, depth error before
and after object BA, HOTA / MOTA / IDF1 / ID switches, and per-stage latency. ``--kitti ROOT
--sequence SEQ`` first converts a KITTI tracking sequence (image_02, calib, oxts, label_02) into
``<out>/kitti_SEQ`` (a bag with the same topics, :mod:`ba_perception.data.kitti_bag`); ``BAG --labels
FILE`` scores a bag against a KITTI tracking label file (copied with it as ground truth to
``<out>/labelled``).

In real-time mode the player rewrites header stamps to the wall clock (for end-to-end latency)
and writes which stamp it gave each frame (``<out>/stamp_map.json``), which maps each output back
to its frame. Every camera frame of the bag is then either
*processed* (a track message came out for it) or *dropped*; ``summary.json`` reports both under
``frame_accounting`` (``dropped_frames`` = its ``dropped``; ``dropped_at_end`` = those after the last
processed one). Outputs arriving up to ``RunConfig.drain_s`` (3 s) after the player's last frame
still count, later ones do not. Results go to ``<out>/summary.json``, ``<out>/report.md``
with plots, and ``<out>/outputs`` (the recorded MCAP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ba_perception.graph import NODES, default_params_file

OUTPUT_TOPICS = {
    "/ba_perception/observations": "ba_perception_msgs/msg/ObjectObservationArray",
    "/ba_perception/detections": "ba_perception_msgs/msg/Detection3DArray",
    "/ba_perception/tracks": "ba_perception_msgs/msg/Track3DArray",
}
PIPELINE_NODES = ("bag_player", "detector_node", "track_buffer_node", "tracker_node", "latency_monitor", "bag_recorder")
# Records the camera_info of every played frame (restamped in real-time mode): the stamp map.


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
    drain_s: float = 3.0  # real time: after the last frame is played, outputs still arriving this long are kept


STAMP_MAP = "stamp_map.json"  # real time: the player's {restamped: original} frame stamps
EXTRINSICS_NODES = ("track_buffer_node", "tracker_node")  # nodes with the camera_extrinsics parameter


def extrinsics_from_bag(bag: Path, image_topic: str = "/camera/image_raw") -> list[float] | None:
    """``[x, y, z, roll, pitch, yaw]`` (camera body frame in base_link) from the bag's ``/tf_static``.

    The player replays ``/tf_static`` latched, but a node reads it only where ``tf2_msgs`` is
    installed (not on these machines), so the mounting also reaches the nodes as their
    ``camera_extrinsics`` parameter (``/tf_static`` overrides it where it arrives). None when the
    bag has no base_link -> camera transform
    (:func:`~ba_perception.data.bag.camera_mount`: the camera is the images' frame).
    """
    from ba_perception.core.geometry import R_BODY_OPTICAL
    from ba_perception.data.bag import BagError, camera_mount

    try:
        T = camera_mount(bag, image_topic)
    except BagError as err:
        raise ReplayError(str(err)) from err
    if T is None:
        return None
    R = T[:3, :3] @ R_BODY_OPTICAL.numpy().T  # body = optical rotated back (REP-103)
    yaw, pitch = math.atan2(R[1, 0], R[0, 0]), math.asin(-max(-1.0, min(1.0, R[2, 0])))
    roll = math.atan2(R[2, 1], R[2, 2])
    return [float(v) for v in (*T[:3, 3], roll, pitch, yaw)]


def run_graph(cfg: RunConfig, log=print) -> tuple[Path, Path]:
    """Run the graph over the bag; returns ``(recorded bag folder, latency summary JSON)``."""
    from ba_perception.launcher import Launcher, LaunchError

    record = cfg.out / "outputs"
    latency = cfg.out / "latency.json"
    for path in (record, cfg.out / STAMP_MAP):
        if path.exists():
            raise ReplayError(f"{path} exists; choose a new --out folder")
    ext = extrinsics_from_bag(cfg.bag, cfg.image_topic)
    extrinsics_sets = [] if ext is None else [f"{n}.camera_extrinsics:=[{','.join(repr(v) for v in ext)}]"
                                              for n in EXTRINSICS_NODES]
    args = {"source": "bag", "bag": str(cfg.bag), "lockstep": "true" if cfg.lockstep else "false",
            "record": str(record), "backend": "auto", "rviz": "false", "params_file": ""}
    sets = [
        *extrinsics_sets,
        f"bag_player.rate:={cfg.rate}",
        f"bag_player.topics:=[{cfg.image_topic},{cfg.info_topic},{cfg.odom_topic}]",
        f"bag_player.lockstep_trigger_topic:={cfg.image_topic}",
        "bag_player.lockstep_timeout_s:=15.0",  # lockstep waits for every frame, however slow
        # Endpoint counts can be seen before every pair of endpoints has matched: let matching settle.
        "bag_player.start_delay_s:=2.0",
        "bag_player.wait_for_subscribers:=1",
        # tracks: monitor + recorder (+ the player's lockstep acknowledgements)
        "bag_player.ready_topics:=[/ba_perception/observations=2,/ba_perception/detections=2,"
        + f"/ba_perception/tracks={3 if cfg.lockstep else 2}]",
        f"bag_player.restamp:={'false' if cfg.lockstep else 'true'}",
        f"latency_monitor.summary_path:={latency}",
        f"latency_monitor.capture_clock:={'sim' if cfg.lockstep else 'wall'}",
        f"latency_monitor.input_topic:={cfg.image_topic}",
        "bag_recorder.qos:=reliable_history",
        "bag_recorder.topics:=[" + ",".join(OUTPUT_TOPICS) + "]",
        "bag_recorder.types:=[" + ",".join(OUTPUT_TOPICS.values()) + "]",
        *([] if cfg.lockstep else [f"bag_player.stamp_map_path:={cfg.out / STAMP_MAP}"]),
        # one replay is one run with no restart: ids from 1 keep replays comparable (deterministic in lockstep)
        "tracker_node.first_track_id:=1",
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
    try:  # real time: the frames still in the pipeline when the player finishes may drain
        launcher = Launcher(specs, args, default_params_file(), sets, remaps, log=log, drain_s=0.0 if cfg.lockstep else cfg.drain_s)
    except LaunchError as err:
        raise ReplayError(str(err)) from err
    # The player must not start before the recorder and the pipeline listen: it waits for subscribers.
    code = launcher.run()
    if code != 0:
        log(f"[replay] a node exited with an error (exit {code}); evaluating what was recorded")
    if not (record / "metadata.yaml").exists() and not any(record.glob("*.mcap")):
        raise ReplayError("the recorder wrote nothing; see the node logs above")
    return record, latency


def bag_frame_stamps(bag: Path, topic: str) -> list[int]:
    """Header stamps (ns) of every message on ``topic`` in a bag, in bag order."""
    from rosbags.rosbag2 import Reader

    from ba_perception.ros.sync import header_stamp_ns

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [s for _, _, raw in reader.messages(connections=conns) if (s := header_stamp_ns(bytes(raw))) is not None]


def read_stamp_map(path: Path) -> dict[int, int]:
    """The player's ``{restamped: original}`` header stamps (ns); ReplayError if it wrote none."""
    try:
        return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError) as err:
        raise ReplayError(f"the bag player left no readable stamp map ({path}: {err}); see its log above") from err


def remap_outputs(outputs: dict[str, dict[int, Any]], stamp_map: dict[int, int]) -> tuple[dict[str, dict[int, Any]], int]:
    """Outputs keyed by the bag's frame stamps; returns them and the number of messages with no frame."""
    out: dict[str, dict[int, Any]] = {}
    unknown = 0
    for topic, msgs in outputs.items():
        out[topic] = {}
        for stamp, msg in msgs.items():
            if stamp in stamp_map:
                out[topic][stamp_map[stamp]] = msg
            else:
                unknown += 1
    return out, unknown


def frame_accounting(frame_stamps: list[int], tracks: dict[int, Any]) -> dict:
    """Every camera frame of the bag is processed (a track message exists for its stamp) or dropped."""
    done = [s in tracks for s in frame_stamps]
    last = max((i for i, d in enumerate(done) if d), default=-1)
    return {"camera": len(frame_stamps), "processed": int(sum(done)), "dropped": len(done) - int(sum(done)),
            "dropped_at_end": len(done) - 1 - last}


def read_outputs(record: Path) -> dict[str, dict[int, Any]]:
    """Recorded output messages, ``{topic: {capture stamp ns: rclpy message}}``."""
    from ba_perception.ros.probe import read_stamped_messages

    return read_stamped_messages(record, OUTPUT_TOPICS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``ba-perception replay-eval``."""
    parser.add_argument("bag", nargs="?", default=None,
                        help="rosbag2 folder or .mcap/.db3 file with camera topics (+ odometry, ground truth); "
                             "omit it with --kitti")
    parser.add_argument("--kitti", metavar="ROOT", default=None,
                        help="evaluate a KITTI tracking sequence instead of a bag: ROOT holds image_02/SEQ/NNNNNN.png, "
                             "calib/SEQ.txt, oxts/SEQ.txt and label_02/SEQ.txt (the real dataset's training/ folder, or "
                             "what `ba-perception synth --kitti` writes); it is converted to <out>/kitti_SEQ first")
    parser.add_argument("--sequence", default="0000", help="KITTI sequence with --kitti (default 0000)")
    parser.add_argument("--labels", metavar="LABEL_TXT", default=None,
                        help="score a BAG against a KITTI tracking label file (frame k = the k-th image; boxes in "
                             "this camera's optical frame): the bag's camera, camera_info, odometry and /tf_static "
                             "are copied with the labels as ground truth into <out>/labelled first")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lockstep", action="store_true", default=True,
                      help="process every frame, deterministic (default)")
    mode.add_argument("--rate", type=float, default=None,
                      help="real time: play at the recorded timing x RATE; every frame is reported as processed "
                           "or dropped")
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
    frames = bag_frame_stamps(cfg.bag, cfg.info_topic)
    method, unknown = "identity", 0
    if not cfg.lockstep:  # outputs carry the player's wall-clock stamps: map them back to the bag's frames
        outputs, unknown = remap_outputs(outputs, read_stamp_map(cfg.out / STAMP_MAP))
        method = "player"
    summary = evaluate_run(cfg.bag, outputs, latency)
    acc = frame_accounting(frames, outputs["/ba_perception/tracks"])
    summary["frame_accounting"] = acc
    summary["dropped_frames"] = acc["dropped"]  # over every camera frame of the bag (with or without ground truth)
    summary["run"] = {"bag": str(cfg.bag), "mode": "lockstep" if cfg.lockstep else f"rate x{cfg.rate}",
                      "wall_s": round(wall, 1), "outputs": str(record), "sets": cfg.sets,
                      "stamp_mapping": method, "unmapped_outputs": unknown}
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    write_report(cfg.out, summary, cfg.bag, outputs, plots=plots)
    print_summary(summary, cfg.out)
    return summary


def kitti_input(root: Path, sequence: str, out: Path, log=print) -> Path:
    """Convert KITTI tracking ``sequence`` under ``root`` to the new bag ``<out>/kitti_<seq>``; returns it."""
    from ba_perception.data.kitti import _seq_name
    from ba_perception.data.kitti_bag import KittiBagError, check_sequence, kitti_to_bag

    bag = out / f"kitti_{_seq_name(sequence)}"
    try:
        n = check_sequence(root, sequence)
        if bag.exists():
            raise ReplayError(f"{bag} exists; choose a new --out folder")
        t0 = time.monotonic()
        info = kitti_to_bag(root, sequence, bag)
    except KittiBagError as err:
        raise ReplayError(str(err)) from err
    log(f"[replay] KITTI {root} sequence {_seq_name(sequence)}: {n} frames {info.width}x{info.height}, "
        f"{info.objects} labelled objects -> {bag} ({time.monotonic() - t0:.1f} s)")
    return bag


def labelled_input(bag: Path, labels: Path, out: Path, log=print, **topics: str) -> Path:
    """Copy ``bag`` with ``labels`` (KITTI tracking) as ground truth to the new bag ``<out>/labelled``."""
    from ba_perception.data.kitti_bag import KittiBagError, bag_with_labels

    check_bag(bag, topics["image_topic"], topics["info_topic"])
    try:
        info = bag_with_labels(bag, labels, out / "labelled", **topics)
    except KittiBagError as err:
        raise ReplayError(str(err)) from err
    log(f"[replay] {bag} + labels {labels}: {info.frames} frames, {info.objects} labelled objects -> {info.bag}")
    return info.bag


def run(args: argparse.Namespace) -> int:
    """Play a bag (or KITTI sequence) through the node graph, record and score it."""
    from ba_perception.cli import CommandError

    out = Path(args.out or f"out/replay-{time.strftime('%Y%m%d-%H%M%S')}")
    if (args.bag is None) == (args.kitti is None):
        raise CommandError("give either a BAG or --kitti ROOT [--sequence SEQ], not both or neither")
    if args.labels is not None and args.kitti is not None:
        raise CommandError("--labels scores a BAG; a --kitti sequence has its labels in label_02/")
    if args.rate is not None and not 0 < args.rate <= 100:
        raise CommandError(f"--rate must be in (0, 100] (the player's limit), got {args.rate}")
    try:
        if args.kitti is not None:
            bag = kitti_input(Path(args.kitti), args.sequence, out)
        else:
            bag = Path(args.bag)
            if (bag / "image_02").is_dir() and (bag / "calib").is_dir():
                raise ReplayError(f"{bag} is a KITTI tracking folder, not a bag; use --kitti {bag} --sequence SEQ")
        topics = {"image_topic": args.image_topic, "info_topic": args.camera_info_topic, "odom_topic": args.odom_topic}
        if args.labels is not None:
            bag = labelled_input(bag, Path(args.labels), out, **topics)
            topics = {}  # the labelled copy uses the standard topic names
        cfg = RunConfig(bag=bag, out=out, lockstep=args.rate is None, rate=args.rate or 1.0, sets=args.set, **topics)
        replay_and_report(cfg, plots=not args.no_plots)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    return 0
