"""visualizer_node: tracks or refined detections -> RViz MarkerArray, plus an overlay image.

Boxes are drawn as LINE_LIST edges coloured by id, with id/class/speed text and a velocity arrow;
every MarkerArray starts with DELETEALL so vanished tracks disappear. When ``image_topic`` is set,
the image with the same capture stamp gets the boxes projected with the message's intrinsics and
camera pose and is republished on ``overlay_topic``.

Objects are validated one by one: one with an unusable pose or size is left out (counted as
``rejected.bad_box``), a non-finite or absurd velocity is drawn as none (``rejected.bad_velocity``),
and at most ``max_objects`` are drawn per message (``rejected.too_many_objects``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ba_perception.core import geometry
from ba_perception.core.overlay import draw_boxes
from ba_perception.ros.convert import box_problem, k_problem, pose_problem, pose_to_matrix
from ba_perception.ros.image import MAX_DECODED_PIXELS, ImageError, image_to_rgb, numpy_to_image
from ba_perception.ros.markers import box_marker_array
from ba_perception.ros.node import PerceptionNode, run_node
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import subscribe_synchronized

MAX_SPEED_MPS = 1e3  # a faster velocity is not drawn


def boxes_of(msg: Any, items: list | None = None) -> tuple[np.ndarray, np.ndarray, list[int], list[str], np.ndarray]:
    """Boxes of a Track3DArray / Detection3DArray as arrays.

    ``(poses (N,4,4), sizes (N,3), ids, labels, velocities (N,3))`` of a Track3DArray/Detection3DArray
    (or of ``items``, its objects after validation).
    """
    if items is None:
        items = msg.tracks if hasattr(msg, "tracks") else msg.detections
    ids = [int(getattr(o, "track_id", getattr(o, "tracklet_id", 0))) for o in items]
    poses = np.stack([pose_to_matrix(o.pose) for o in items]) if items else np.zeros((0, 4, 4))
    sizes = np.array([[o.size.x, o.size.y, o.size.z] for o in items], dtype=np.float64).reshape(-1, 3)
    vel = np.array([[o.velocity.x, o.velocity.y, o.velocity.z] for o in items], dtype=np.float64).reshape(-1, 3)
    return poses, sizes, ids, [o.class_label for o in items], vel


class VisualizerNode(PerceptionNode):
    """See the module docstring."""

    PARAMS = (
        ParamSpec("input_type", "tracks", "what to draw", choices=("tracks", "detections")),
        ParamSpec("input_topic", "/ba_perception/tracks", "Track3DArray or Detection3DArray topic"),
        ParamSpec("marker_topic", "/ba_perception/markers", "MarkerArray output"),
        ParamSpec("image_topic", "/camera/image_raw", "camera image for the overlay; '' = no overlay"),
        ParamSpec("overlay_topic", "/ba_perception/overlay", "overlay Image output"),
        ParamSpec("line_width", 0.08, "box edge width in RViz, metres", min=0.001),
        ParamSpec("max_objects", 256, "objects drawn per message; the excess is rejected and counted", min=1),
        ParamSpec("max_decoded_pixels", MAX_DECODED_PIXELS, "largest overlay image (width x height) converted", min=1),
        ParamSpec("qos", "reliable", "input QoS", choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 10, "input queue depth", min=1),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("visualizer_node", **kwargs)
        from sensor_msgs.msg import Image
        from visualization_msgs.msg import MarkerArray

        from ba_perception_msgs.msg import Detection3DArray, Track3DArray

        cls = Track3DArray if self.p["input_type"] == "tracks" else Detection3DArray
        self.marker_pub = self.create_publisher(MarkerArray, self.p["marker_topic"], qos_profile("reliable", 10))
        if self.p["image_topic"]:
            self.overlay_pub = self.create_publisher(Image, self.p["overlay_topic"], qos_profile("reliable", 2))
            self.sync = subscribe_synchronized(
                self, [(cls, self.p["input_topic"], self.qos()), (Image, self.p["image_topic"], qos_profile("sensor_data", 10))],
                self.on_pair, queue_size=30, slop_s=0.0)
        self.create_subscription(cls, self.p["input_topic"], self.on_boxes, self.qos())

    def valid_boxes(self, msg: Any, count: bool = True) -> tuple[np.ndarray, np.ndarray, list[int], list[str], np.ndarray]:
        """:func:`boxes_of` over the drawable objects of ``msg``; the others rejected one by one (when ``count``)."""
        reject = self.reject if count else (lambda *a: None)
        items = list(msg.tracks if hasattr(msg, "tracks") else msg.detections)
        if len(items) > self.p["max_objects"]:
            reject("too_many_objects", f"{len(items)} objects in one message, max_objects is {self.p['max_objects']}; "
                   "the rest are not drawn", len(items) - self.p["max_objects"])
            items = items[: self.p["max_objects"]]
        good = []
        for o in items:
            why = box_problem(o)
            if why is None:
                good.append(o)
            else:
                reject("bad_box", f"object not drawn: {why}")
        poses, sizes, ids, labels, vel = boxes_of(msg, good)
        bad_v = ~(np.isfinite(vel).all(1) & (np.abs(np.nan_to_num(vel)) <= MAX_SPEED_MPS).all(1))
        if bad_v.any():
            reject("bad_velocity", f"{int(bad_v.sum())} velocity(ies) NaN/inf or above {MAX_SPEED_MPS:g} m/s drawn as none",
                   int(bad_v.sum()))
            vel[bad_v] = 0.0
        return poses, sizes, ids, labels, vel

    def on_boxes(self, msg: Any) -> None:
        """Publish the box markers of one message."""
        poses, sizes, ids, labels, vel = self.valid_boxes(msg)
        self.marker_pub.publish(box_marker_array(msg.header, poses, sizes, ids, labels, vel, self.p["line_width"]))
        self.count("marker_frames")

    def on_pair(self, msg: Any, image: Any) -> None:
        """Publish the overlay image of one message and its image."""
        try:
            rgb = image_to_rgb(image, self.p["max_decoded_pixels"])
        except ImageError as err:
            self.reject(err.reason, str(err))
            return
        poses, sizes, ids, labels, _ = self.valid_boxes(msg, count=False)  # on_boxes counts the same message
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        if len(ids) and k_problem(K) is None and pose_problem(msg.camera_pose) is None:
            T_cam_frame = np.linalg.inv(pose_to_matrix(msg.camera_pose))
            P = torch.as_tensor(T_cam_frame @ poses)
            corners = geometry.box_corners(P[:, :3, :3], P[:, :3, 3], torch.as_tensor(sizes)).numpy()
            rgb = draw_boxes(rgb, corners, K, ids, [f"{i} {c}" for i, c in zip(ids, labels)])
        elif len(ids):
            self.reject("overlay_camera", "k or camera_pose unusable: overlay published without boxes")
        self.overlay_pub.publish(numpy_to_image(rgb, "rgb8", image.header))
        self.count("overlay_frames")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(VisualizerNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
