"""rosbag2 (MCAP) writer and reader for synthetic-world sequences, via ``rosbags``.

Topics written per frame (all stamped with the capture stamp):

- ``/camera/image_raw``      sensor_msgs/msg/Image, rgb8, frame_id ``camera_optical``
- ``/camera/camera_info``    sensor_msgs/msg/CameraInfo (plumb_bob, zero distortion)
- ``/odom``                  nav_msgs/msg/Odometry, ``base_link`` in ``odom`` (twist in base_link)
- ``/ground_truth/objects``  ba_perception_msgs/msg/GroundTruthObjectArray, frame_id ``camera_optical``
- ``/tf_static`` (once)      tf2_msgs/msg/TFMessage, base_link -> camera_optical (transient local)

Message definitions and RIHS01 type hashes are embedded, so any rosbag2 tool can read the bag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ba_perception.core.geometry import matrix_from_quaternion, quaternion_from_matrix, yaw_from_rotation_cam

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

    from ba_perception.data.world.sequence import GroundTruth, WorldFrame

TOPIC_IMAGE = "/camera/image_raw"
TOPIC_INFO = "/camera/camera_info"
TOPIC_ODOM = "/odom"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_GT = "/ground_truth/objects"
FRAME_CAMERA = "camera_optical"
FRAME_BASE = "base_link"
FRAME_ODOM = "odom"
MSGS_DIR = Path(__file__).resolve().parents[2] / "ba_perception_msgs" / "msg"

_TYPES = {
    TOPIC_IMAGE: "sensor_msgs/msg/Image",
    TOPIC_INFO: "sensor_msgs/msg/CameraInfo",
    TOPIC_ODOM: "nav_msgs/msg/Odometry",
    TOPIC_TF_STATIC: "tf2_msgs/msg/TFMessage",
    TOPIC_GT: "ba_perception_msgs/msg/GroundTruthObjectArray",
}


class BagError(RuntimeError):
    """Raised when a bag cannot be written or read (existing path, missing topics, bad data)."""


class GroundTruthFrame(Protocol):
    """What :func:`gt_message` reads of a frame (a world, bag or KITTI label frame)."""

    @property
    def stamp_ns(self) -> int:
        """Image stamp, ns."""

    @property
    def T_odom_cam(self) -> np.ndarray:
        """``(4, 4)`` camera optical frame in odom."""

    @property
    def objects(self) -> GroundTruth:
        """Ground truth of the objects in view."""


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """Rosbags typestore: ROS 2 Jazzy standard types + ``ba_perception_msgs`` from its .msg files.

    The ``.msg`` files come from the source tree (``ba_perception_msgs/msg``) or, when this module
    is installed elsewhere (``colcon build``), from the package's share folder in the ament index.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    folder = MSGS_DIR if any(MSGS_DIR.glob("*.msg")) else installed_msg_dir()
    files = sorted(folder.glob("*.msg"))
    if not files:
        raise BagError(f"no ba_perception_msgs .msg files in {folder}; run from the repository or build the package")
    types = {}
    for path in files:
        types.update(get_types_from_msg(path.read_text(), f"ba_perception_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def installed_msg_dir() -> Path:
    """Directory of the installed ``ba_perception_msgs`` message definitions.

    ``share/ba_perception_msgs/msg`` of the installed package: found through the ament index
    (``AMENT_PREFIX_PATH``, set by ``source install/setup.bash``), else under ``sys.prefix`` (the venv).
    """
    import sys

    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("ba_perception_msgs"), "msg")
    except (ImportError, LookupError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return Path(sys.prefix, "share", "ba_perception_msgs", "msg")


def _time(store, stamp_ns: int):
    return store.types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def _header(store, stamp_ns: int, frame_id: str):
    return store.types["std_msgs/msg/Header"](stamp=_time(store, stamp_ns), frame_id=frame_id)


def _pose(store, T: np.ndarray):
    q = quaternion_from_matrix(torch.from_numpy(np.ascontiguousarray(T[:3, :3], np.float64))).numpy()
    P = store.types
    return P["geometry_msgs/msg/Pose"](
        position=P["geometry_msgs/msg/Point"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=P["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def _vec(store, v) -> Any:
    return store.types["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _matrix(pose) -> np.ndarray:
    """4x4 float64 from a geometry_msgs Pose (or Transform with translation/rotation)."""
    p = getattr(pose, "position", None) or pose.translation
    o = getattr(pose, "orientation", None) or pose.rotation
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion(torch.tensor([o.x, o.y, o.z, o.w], dtype=torch.float64)).numpy()
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def gt_message(frame: GroundTruthFrame, store: Typestore | None = None):
    """The ``GroundTruthObjectArray`` of a frame (header frame_id ``camera_optical``).

    Boxes that do not exist (nothing visible) are written as NaN.
    """
    store = store or typestore()
    P = store.types
    g = frame.objects
    objs = []
    for i in range(len(g)):
        objs.append(P["ba_perception_msgs/msg/GroundTruthObject"](
            track_id=int(g.track_id[i]),
            class_label=g.class_label[i],
            pose_camera=_pose(store, g.T_cam_obj[i]),
            pose_odom=_pose(store, g.T_odom_obj[i]),
            size=_vec(store, g.size_lwh[i]),
            velocity_odom=_vec(store, g.velocity_odom[i]),
            box_2d_amodal=np.asarray(g.box_amodal[i], np.float32),
            box_2d_visible=np.asarray(g.box_visible[i], np.float32),
            box_2d_full=np.asarray(g.box_full[i], np.float32),
            truncation=float(g.truncation[i]),
            occlusion=float(g.occlusion[i]),
        ))
    return P["ba_perception_msgs/msg/GroundTruthObjectArray"](
        header=_header(store, frame.stamp_ns, FRAME_CAMERA),
        camera_pose_odom=_pose(store, frame.T_odom_cam),
        objects=objs,
    )


class BagWriter:
    """Writes world frames to a new rosbag2 MCAP folder (``version=9``).

    Usage::

        with BagWriter("data/world-v2/test/seq_0000") as bag:
            for frame in render_sequence(cfg):
                bag.write(frame)

    Args:
        path: bag folder to create (must not exist); the MCAP file is ``<path>/<name>.mcap``.
        write_images: also write ``/camera/image_raw`` (False gives a small GT-only bag).

    Raises:
        BagError: the path exists or cannot be created.
    """

    def __init__(self, path: str | Path, write_images: bool = True) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; delete it or choose another output")
        self.store = typestore()
        self.write_images = write_images
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._conns: dict = {}
        self._tf_done = False

    def __enter__(self) -> BagWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer.open()
        except OSError as err:
            raise BagError(f"cannot create bag {self.path}: {err}") from err
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        zero = QosTime(0, 0)
        latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                      zero, zero, QosLiveliness.AUTOMATIC, zero, False)
        for topic, msgtype in _TYPES.items():
            if topic == TOPIC_IMAGE and not self.write_images:
                continue
            qos = (latched,) if topic == TOPIC_TF_STATIC else ()
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store,
                                                             offered_qos_profiles=qos)
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def _put(self, topic: str, msg, stamp_ns: int) -> None:
        self._writer.write(self._conns[topic], stamp_ns, self.store.serialize_cdr(msg, _TYPES[topic]))

    def write(self, frame: WorldFrame | BagFrame) -> None:
        """Write one frame's image, camera info, odometry and ground truth (tf_static once).

        Raises:
            BagError: a frame without an image (a bag read with ``images=False``).
        """
        if frame.image is None:
            raise BagError(f"frame {frame.index} has no image to write (read the source with images=True)")
        image = frame.image
        st, P, stamp = self.store, self.store.types, frame.stamp_ns
        if not self._tf_done:
            tf = P["geometry_msgs/msg/TransformStamped"](
                header=_header(st, stamp, FRAME_BASE), child_frame_id=FRAME_CAMERA,
                transform=P["geometry_msgs/msg/Transform"](
                    translation=_vec(st, frame.T_base_cam[:3, 3]), rotation=_pose(st, frame.T_base_cam).orientation),
            )
            self._put(TOPIC_TF_STATIC, P["tf2_msgs/msg/TFMessage"](transforms=[tf]), stamp)
            self._tf_done = True
        H, W = image.shape[:2]
        if self.write_images:
            img = P["sensor_msgs/msg/Image"](
                header=_header(st, stamp, FRAME_CAMERA), height=H, width=W, encoding="rgb8", is_bigendian=0,
                step=W * 3, data=np.ascontiguousarray(image).reshape(-1),
            )
            self._put(TOPIC_IMAGE, img, stamp)
        K = frame.K
        Pm = np.zeros((3, 4))
        Pm[:, :3] = K
        info = P["sensor_msgs/msg/CameraInfo"](
            header=_header(st, stamp, FRAME_CAMERA), height=H, width=W, distortion_model="plumb_bob",
            d=np.zeros(5), k=K.reshape(-1).astype(np.float64), r=np.eye(3).reshape(-1), p=Pm.reshape(-1),
            binning_x=0, binning_y=0,
            roi=P["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        self._put(TOPIC_INFO, info, stamp)
        cov = np.zeros(36)
        odom = P["nav_msgs/msg/Odometry"](
            header=_header(st, stamp, FRAME_ODOM), child_frame_id=FRAME_BASE,
            pose=P["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(st, frame.T_odom_base), covariance=cov),
            twist=P["geometry_msgs/msg/TwistWithCovariance"](
                twist=P["geometry_msgs/msg/Twist"](linear=_vec(st, frame.velocity_base), angular=_vec(st, (0.0, 0.0, frame.yaw_rate))),
                covariance=cov),
        )
        self._put(TOPIC_ODOM, odom, stamp)
        self._put(TOPIC_GT, gt_message(frame, st), stamp)


@dataclass
class BagFrame:
    """One frame read back from a bag: the WorldFrame fields a bag carries.

    Attributes:
        index: position in the bag (0-based).  stamp_ns: capture stamp.
        image: ``(H, W, 3)`` uint8 RGB, or None when images were not read / not in the bag.
        K: 3x3.  T_odom_base, T_odom_cam, T_base_cam: 4x4 (camera optical frame).
        velocity_base: ego velocity in base_link, m/s.  yaw_rate: rad/s.
        objects: :class:`~ba_perception.data.world.GroundTruth`; the pixel counts are -1 (the
            message does not carry them).
    """

    index: int
    stamp_ns: int
    image: np.ndarray | None
    K: np.ndarray
    T_odom_base: np.ndarray
    T_odom_cam: np.ndarray
    T_base_cam: np.ndarray
    velocity_base: np.ndarray
    yaw_rate: float
    objects: GroundTruth


def ground_truth_from_message(msg) -> tuple[np.ndarray, GroundTruth]:
    """``(T_odom_cam, GroundTruth)`` from a ``GroundTruthObjectArray`` (rosbags or rclpy object)."""
    from ba_perception.data.world.sequence import GroundTruth

    objs = list(msg.objects)
    n = len(objs)
    if n == 0:
        return _matrix(msg.camera_pose_odom), GroundTruth.empty()
    T_cam = np.stack([_matrix(o.pose_camera) for o in objs])
    T_odom = np.stack([_matrix(o.pose_odom) for o in objs])
    ry = yaw_from_rotation_cam(torch.from_numpy(T_cam[:, :3, :3])).numpy()
    return _matrix(msg.camera_pose_odom), GroundTruth(
        track_id=np.array([o.track_id for o in objs], np.int64),
        class_label=[o.class_label for o in objs],
        size_lwh=np.array([[o.size.x, o.size.y, o.size.z] for o in objs]),
        T_cam_obj=T_cam, center_cam=T_cam[:, :3, 3].copy(), rotation_y=ry,
        T_odom_obj=T_odom, center_odom=T_odom[:, :3, 3].copy(),
        yaw_odom=np.arctan2(T_odom[:, 1, 0], T_odom[:, 0, 0]),
        velocity_odom=np.array([[o.velocity_odom.x, o.velocity_odom.y, o.velocity_odom.z] for o in objs]),
        box_amodal=np.array([np.asarray(o.box_2d_amodal, np.float64) for o in objs]),
        box_full=np.array([np.asarray(o.box_2d_full, np.float64) for o in objs]),
        box_visible=np.array([np.asarray(o.box_2d_visible, np.float64) for o in objs]),
        truncation=np.array([o.truncation for o in objs], np.float64),
        occlusion=np.array([o.occlusion for o in objs], np.float64),
        visible_pixels=np.full(n, -1, np.int64), full_pixels=np.full(n, -1, np.int64),
    )


def camera_mount(path: str | Path, image_topic: str = TOPIC_IMAGE) -> np.ndarray | None:
    """Camera mounting transform from a bag's ``/tf_static``.

    ``T_base_camera`` (4x4) from a bag's ``/tf_static``: the ``base_link`` -> transform whose child is the
    frame the images on ``image_topic`` are stamped in (a lidar or IMU mount is never taken for the
    camera's). None when the bag has no such transform.

    Raises:
        BagError: unreadable bag.
    """
    reader = open_reader(path)
    try:
        images = [c for c in reader.connections if c.topic == image_topic]
        tfs = [c for c in reader.connections if c.topic == TOPIC_TF_STATIC]
        if not images or not tfs:
            return None
        first = next(reader.messages(connections=images), None)
        if first is None:
            return None
        store = typestore()
        image: Any = store.deserialize_cdr(first[2], images[0].msgtype)  # rosbags messages are untyped dataclasses
        camera = image.header.frame_id
        for conn, _, raw in reader.messages(connections=tfs):
            tf_msg: Any = store.deserialize_cdr(raw, conn.msgtype)
            for tf in tf_msg.transforms:
                if tf.header.frame_id == FRAME_BASE and tf.child_frame_id == camera:
                    return _matrix(tf.transform)
        return None
    finally:
        reader.close()


def open_reader(path: str | Path):
    """An opened ``rosbags`` Reader of a rosbag2 folder (MCAP or sqlite3); close it when done.

    Raises:
        BagError: missing, truncated or otherwise unreadable bag (one line naming it).
    """
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(Path(path))
        reader.open()
    except Exception as err:  # noqa: BLE001 - rosbags raises several error types for bad bags
        raise BagError(f"cannot open bag {path}: {err}") from err
    return reader


def read_bag(path: str | Path, images: bool = True) -> Iterator[BagFrame]:
    """Frames of a bag written by :class:`BagWriter` (or any bag with the same topics), in order.

    A frame is emitted for every ground-truth message; the image, camera info and odometry with the
    same header stamp are attached (image None when ``images`` is False or absent).

    Raises:
        BagError: the bag cannot be opened or has no ``/ground_truth/objects`` topic.
    """
    store = typestore()
    path = Path(path)
    reader = open_reader(path)
    try:
        topics = {TOPIC_INFO, TOPIC_ODOM, TOPIC_GT, TOPIC_TF_STATIC} | ({TOPIC_IMAGE} if images else set())
        conns = [c for c in reader.connections if c.topic in topics]
        present = {c.topic for c in conns}
        if TOPIC_GT not in present:
            raise BagError(f"{path} has no {TOPIC_GT} topic (not a ground-truth bag)")
        needed = present - {TOPIC_TF_STATIC}
        T_base_cam = np.eye(4)
        pending: dict[int, dict] = {}
        index = 0
        for conn, _, raw in reader.messages(connections=conns):
            msg: Any = store.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == TOPIC_TF_STATIC:
                for tf in msg.transforms:
                    if tf.header.frame_id == FRAME_BASE and tf.child_frame_id == FRAME_CAMERA:
                        T_base_cam = _matrix(tf.transform)
                continue
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            parts = pending.setdefault(stamp, {})
            parts[conn.topic] = msg
            if needed <= parts.keys():
                del pending[stamp]
                yield _assemble(index, stamp, parts, T_base_cam)
                index += 1
        for stamp in sorted(pending):  # frames missing some topic: still give their GT
            if TOPIC_GT in pending[stamp]:
                yield _assemble(index, stamp, pending[stamp], T_base_cam)
                index += 1
    finally:
        reader.close()


def _assemble(index: int, stamp: int, parts: dict, T_base_cam: np.ndarray) -> BagFrame:
    T_odom_cam, gt = ground_truth_from_message(parts[TOPIC_GT])
    image = None
    if TOPIC_IMAGE in parts:
        m = parts[TOPIC_IMAGE]
        if m.encoding != "rgb8":
            raise BagError(f"image encoding {m.encoding!r} at stamp {stamp}; only rgb8 is supported")
        image = np.asarray(m.data, np.uint8).reshape(m.height, m.step)[:, : m.width * 3].reshape(m.height, m.width, 3)
    K = np.asarray(parts[TOPIC_INFO].k, np.float64).reshape(3, 3) if TOPIC_INFO in parts else np.full((3, 3), np.nan)
    if TOPIC_ODOM in parts:
        o = parts[TOPIC_ODOM]
        T_odom_base = _matrix(o.pose.pose)
        vel = np.array([o.twist.twist.linear.x, o.twist.twist.linear.y, o.twist.twist.linear.z])
        yaw_rate = float(o.twist.twist.angular.z)
    else:
        T_odom_base = T_odom_cam @ np.linalg.inv(T_base_cam)
        vel, yaw_rate = np.zeros(3), 0.0
    return BagFrame(index, stamp, image, K, T_odom_base, T_odom_cam, T_base_cam, vel, yaw_rate, gt)
