"""KITTI tracking data as replay-eval bags: a whole sequence, or a bag of your own plus a label file.

The bag has the topics of :mod:`ba_perception.data.bag` (``/camera/image_raw`` rgb8,
``/camera/camera_info`` with ``K = P2[:, :3]`` and the PNG size, ``/odom`` = the IMU pose from
the oxts by the devkit's Mercator recipe relative to frame 0, ``/tf_static`` base_link ->
camera_optical from the calibration, and ``/ground_truth/objects`` from ``label_02``), stamped
at ``rate_hz`` from ``start_stamp_ns``, so the normal replay scoring path applies unchanged.

Label levels become fractions for the difficulty filters of the scoring (which expect
fractions, as the world's ground truth carries): truncated 0/1/2 -> 0 / 0.325 / 0.75 and
occluded 0/1/2/3 -> 0 / 0.3 / 0.75 / 1.0 (the middle of each level's range in the exporter's
thresholds; level 3 "unknown" counts as fully occluded). So "moderate" keeps occluded <= 1 and
truncated 0 (KITTI's moderate: occluded <= 1, truncated <= 30 %; level 1 spans 15-50 %). A sequence without ``label_02/SEQ.txt`` gets empty
ground truth (replay then reports tracking output without scores against objects).
:func:`bag_with_labels` instead copies an existing bag and adds a label file as its ground truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ba_perception.data.kitti import KittiError, _seq_name, read_kitti

if TYPE_CHECKING:
    from ba_perception.data.world.sequence import GroundTruth

DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000  # the synthetic world's frame-0 stamp (never 0)
TRUNCATION_OF_LEVEL = {0: 0.0, 1: 0.325, 2: 0.75}
OCCLUSION_OF_LEVEL = {0: 0.0, 1: 0.3, 2: 0.75, 3: 1.0}


class KittiBagError(RuntimeError):
    """Raised when a KITTI sequence cannot be converted (missing folder or file, frame counts disagree)."""


@dataclass
class KittiBagInfo:
    """What a conversion wrote.

    Attributes:
        bag: the rosbag2 folder.  frames: frames written.  objects: ground-truth objects in all frames.
        width, height: image size, pixels.
    """

    bag: Path
    frames: int
    objects: int
    width: int
    height: int


def check_sequence(root: str | Path, seq: int | str) -> int:
    """Validate a KITTI tracking sequence's files; returns its number of frames.

    Raises:
        KittiBagError: missing ``image_02/SEQ`` (or no PNG in it), ``calib/SEQ.txt`` or
            ``oxts/SEQ.txt``, PNG names not ``000000.png`` ... consecutive, or image, oxts and
            label frame counts that disagree. Messages name the path and the fix.
    """
    root, name = Path(root), _seq_name(seq)
    if not root.is_dir():
        raise KittiBagError(f"KITTI root {str(root)!r} does not exist (expected image_02/, calib/, oxts/, label_02/ in it)")
    img_dir = root / "image_02" / name
    if not img_dir.is_dir():
        have = sorted(p.name for p in (root / "image_02").iterdir()) if (root / "image_02").is_dir() else []
        raise KittiBagError(f"missing image folder {img_dir}"
                            + (f" (sequences there: {', '.join(have[:10])})" if have else "; is this a KITTI tracking root?"))
    pngs = sorted(p.name for p in img_dir.glob("*.png"))
    if not pngs:
        raise KittiBagError(f"no PNG images in {img_dir}")
    want = [f"{k:06d}.png" for k in range(len(pngs))]
    if pngs != want:
        bad = next(p for p, w in zip(pngs, want) if p != w)
        raise KittiBagError(f"{img_dir}: images must be 000000.png .. {want[-1]} without gaps; found {bad}")
    for sub in ("calib", "oxts"):
        if not (root / sub / f"{name}.txt").is_file():
            raise KittiBagError(f"missing {root / sub / f'{name}.txt'} (needed for "
                                + ("the intrinsics P2)" if sub == "calib" else "the ego poses)"))
    oxts = [ln for ln in (root / "oxts" / f"{name}.txt").read_text().splitlines() if ln.strip()]
    if len(oxts) != len(pngs):
        raise KittiBagError(f"frame counts disagree: {len(pngs)} images in {img_dir} but {len(oxts)} oxts lines "
                            f"in {root / 'oxts' / f'{name}.txt'}")
    label = root / "label_02" / f"{name}.txt"
    if label.is_file():
        frames = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s", label.read_text(), re.M)]
        if frames and max(frames) >= len(pngs):
            raise KittiBagError(f"frame counts disagree: {label} labels frame {max(frames)} but there are "
                                f"only {len(pngs)} images")
    return len(pngs)


def kitti_to_bag(root: str | Path, seq: int | str, bag: str | Path, rate_hz: float = 10.0,
                 start_stamp_ns: int = DEFAULT_START_STAMP_NS) -> KittiBagInfo:
    """Write KITTI tracking sequence ``seq`` under ``root`` as a new rosbag2 MCAP folder ``bag``.

    Args:
        root: KITTI tracking root (``training/`` style: image_02/, calib/, oxts/, label_02/).
        seq: sequence number or 4-digit name.
        bag: bag folder to create (must not exist).
        rate_hz: frame rate of the stamps (KITTI: 10 Hz).
        start_stamp_ns: stamp of frame 0, nanoseconds.

    Returns:
        A :class:`KittiBagInfo`.

    Raises:
        KittiBagError: invalid sequence (see :func:`check_sequence`), unreadable files, or ``bag`` exists.
    """
    from ba_perception.data.bag import BagError, BagWriter

    if rate_hz <= 0:
        raise KittiBagError(f"rate must be > 0 Hz, got {rate_hz}")
    n = check_sequence(root, seq)
    frames = objects = 0
    size = (0, 0)
    try:
        with BagWriter(bag) as writer:
            for frame in read_kitti(root, seq, images=True, rate_hz=rate_hz, start_stamp_ns=start_stamp_ns):
                g = _levels_to_fractions(frame.objects)
                writer.write(replace(frame, objects=g))
                frames += 1
                objects += len(g)
                size = (frame.image.shape[1], frame.image.shape[0]) if frame.image is not None else size
    except (KittiError, BagError) as err:
        raise KittiBagError(str(err)) from err
    if frames != n:
        raise KittiBagError(f"wrote {frames} frames of {n}")
    return KittiBagInfo(Path(bag), frames, objects, *size)


def _levels_to_fractions(g):
    return replace(g, truncation=np.array([TRUNCATION_OF_LEVEL.get(int(t), 1.0) for t in g.truncation]),
                   occlusion=np.array([OCCLUSION_OF_LEVEL.get(int(o), 1.0) for o in g.occlusion]))


def bag_with_labels(src: str | Path, labels: str | Path, dst: str | Path, image_topic: str = "/camera/image_raw",
                    info_topic: str = "/camera/camera_info", odom_topic: str = "/odom") -> KittiBagInfo:
    """Copy a bag's camera, camera_info, odometry and ``/tf_static`` and add ground truth from a KITTI label file.

    Label frame ``k`` is the ``k``-th message on ``image_topic``; label boxes are in that camera's
    optical frame (the image camera is the reference camera). The objects' odom poses use the
    odometry message with the nearest header stamp and the camera mounting from ``/tf_static``
    (base_link -> camera), else the stack's default (1.2 m forward, 1.65 m up, level). The new bag
    uses the standard topic names of :mod:`ba_perception.data.bag`; an existing
    ``/ground_truth/objects`` is not copied.

    Args:
        src: source bag (folder or file).  labels: KITTI tracking label file.  dst: bag folder to create.
        image_topic, info_topic, odom_topic: the source's topics.

    Returns:
        A :class:`KittiBagInfo` of the new bag.

    Raises:
        KittiBagError: unreadable bag or labels, a missing topic, more labelled frames than images, ``dst`` exists.
    """
    from ba_perception.core.ego_motion import EgoMotionBuffer
    from ba_perception.data.bag import (
        TOPIC_IMAGE,
        TOPIC_INFO,
        TOPIC_ODOM,
        TOPIC_TF_STATIC,
        BagError,
        camera_mount,
        open_reader,
        typestore,
    )
    from ba_perception.data.kitti import fill_track_velocities, label_ground_truth, read_label_rows
    from ba_perception.ros.convert import extrinsics_to_matrix
    from ba_perception.ros.ego_motion import DEFAULT_CAMERA_EXTRINSICS

    src, labels, dst = Path(src), Path(labels), Path(dst)
    if not labels.is_file():
        raise KittiBagError(f"label file {str(labels)!r} does not exist")
    if dst.exists():
        raise KittiBagError(f"{dst} exists already; choose a new output folder")
    try:
        rows = read_label_rows(labels)
    except (ValueError, OSError) as err:
        raise KittiBagError(f"cannot read labels {labels}: {err}") from err
    store = typestore()
    rename = {image_topic: TOPIC_IMAGE, info_topic: TOPIC_INFO, odom_topic: TOPIC_ODOM, TOPIC_TF_STATIC: TOPIC_TF_STATIC}
    try:
        reader = open_reader(src)
    except BagError as err:
        raise KittiBagError(str(err)) from err
    try:
        conns = [c for c in reader.connections if c.topic in rename]
        present = {c.topic for c in conns}
        for topic in (image_topic, info_topic, odom_topic):
            if topic not in present:
                raise KittiBagError(f"bag {src} has no {topic} (needed to place the labels); remap with "
                                    "--image-topic/--camera-info-topic/--odom-topic")
        # First pass: frame stamps, intrinsics, odometry, mounting (small messages only).
        T_base_cam = camera_mount(src, image_topic)
        if T_base_cam is None:  # no mounting in the bag: the nodes' default camera_extrinsics
            T_base_cam = extrinsics_to_matrix(DEFAULT_CAMERA_EXTRINSICS)
        image_stamps, odom, K, size_wh = _scan(reader, conns, store, src, image_topic, info_topic, odom_topic)
        if not image_stamps or not odom or K is None or size_wh is None:
            raise KittiBagError(f"bag {src} has no messages on {image_topic}, {info_topic} or {odom_topic}")
        if rows and max(rows) >= len(image_stamps):
            raise KittiBagError(f"frame counts disagree: {labels} labels frame {max(rows)} but {src} has only "
                                f"{len(image_stamps)} images on {image_topic}")
        ego = EgoMotionBuffer(capacity=len(odom), max_extrapolation_s=1e6)  # the nodes' interpolation; nearest pose beyond the span
        for t in sorted(odom):
            ego.add(t, odom[t])
        gts, poses = [], []
        for k, stamp in enumerate(image_stamps):
            T_odom_cam = ego.lookup(stamp) @ T_base_cam
            poses.append(T_odom_cam)
            gts.append(_levels_to_fractions(label_ground_truth(rows.get(k, []), K, np.zeros(3), T_odom_cam, size_wh)))
        periods = np.diff(image_stamps)
        fill_track_velocities(gts, float(np.median(periods)) / 1e9 if len(periods) else 0.1)
        # Second pass: copy under the standard names, ground truth right after each image.
        frames = [_LabelFrame(stamp, T, gt) for stamp, T, gt in zip(image_stamps, poses, gts)]
        _copy_with_ground_truth(reader, conns, store, rename, dst, image_topic, frames)
    finally:
        reader.close()
    return KittiBagInfo(dst, len(image_stamps), sum(len(g) for g in gts), *size_wh)


def _scan(reader: Any, conns: list, store: Any, src: Path, image_topic: str, info_topic: str,
          odom_topic: str) -> tuple[list[int], dict[int, np.ndarray], np.ndarray | None, tuple[int, int] | None]:
    """First pass over a bag: image header stamps (ns), odometry poses by stamp (ns), the first intrinsics and image size.

    Raises:
        KittiBagError: an image message without a readable CDR header.
    """
    from ba_perception.data.bag import _matrix
    from ba_perception.ros.sync import header_stamp_ns

    image_stamps: list[int] = []
    odom: dict[int, np.ndarray] = {}
    K: np.ndarray | None = None
    size_wh: tuple[int, int] | None = None
    for conn, _, raw in reader.messages(connections=conns):
        if conn.topic == image_topic:
            stamp = header_stamp_ns(bytes(raw[:16]))
            if stamp is None:
                raise KittiBagError(f"{image_topic} in {src}: not a little-endian CDR message with a header")
            image_stamps.append(stamp)
            continue
        msg: Any = store.deserialize_cdr(raw, conn.msgtype)  # rosbags messages are untyped dataclasses
        if conn.topic == info_topic and K is None:
            K, size_wh = np.reshape(np.asarray(msg.k, np.float64), (3, 3)), (int(msg.width), int(msg.height))
        elif conn.topic == odom_topic:
            odom[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = _matrix(msg.pose.pose)
    return image_stamps, odom, K, size_wh


def _copy_with_ground_truth(reader: Any, conns: list, store: Any, rename: dict[str, str], dst: Path, image_topic: str,
                            frames: list[_LabelFrame]) -> None:
    """Copy ``conns`` of ``reader`` to a new MCAP bag ``dst`` under the names of ``rename``, ground truth after each image."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ba_perception.data.bag import TOPIC_GT, gt_message

    writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        out = {c.topic: writer.add_connection(rename[c.topic], c.msgtype, typestore=store,
                                              offered_qos_profiles=c.ext.offered_qos_profiles)
               for c in conns}
        gt_conn = writer.add_connection(TOPIC_GT, "ba_perception_msgs/msg/GroundTruthObjectArray", typestore=store)
        k = 0
        for conn, t, raw in reader.messages(connections=conns):
            writer.write(out[conn.topic], t, raw)
            if conn.topic == image_topic:
                writer.write(gt_conn, t, store.serialize_cdr(gt_message(frames[k], store), gt_conn.msgtype))
                k += 1
    finally:
        writer.close()


@dataclass
class _LabelFrame:
    """What :func:`ba_perception.data.bag.gt_message` reads of a frame."""

    stamp_ns: int
    T_odom_cam: np.ndarray
    objects: GroundTruth
