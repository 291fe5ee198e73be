"""camera_node: publish Image + CameraInfo from a video file, an image folder or a live V4L2 device.

Images are stamped with the node clock at capture (wall clock unless use_sim_time), so the
capture stamp is the start of the latency budget. Intrinsics come from a calibration YAML in the
ROS camera_info format (what camera_calibration writes); without one the node refuses to start
unless ``allow_uncalibrated`` is set (then fx = fy = width, centre at the image centre).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from ba_perception.ros.convert import k_to_camera_info
from ba_perception.ros.image import numpy_to_image
from ba_perception.ros.node import PerceptionNode, StartupError, run_node
from ba_perception.ros.params import ParamSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")


def load_calibration(path: str | Path) -> tuple[np.ndarray, int, int, list[float], str]:
    """Read a ROS camera_info YAML -> ``(K, width, height, distortion, model)``."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        K = np.asarray(data["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
        dist = [float(v) for v in (data.get("distortion_coefficients") or {}).get("data", [])]
        return K, int(data["image_width"]), int(data["image_height"]), dist, data.get("distortion_model", "plumb_bob")
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as err:
        raise StartupError(f"calibration {str(path)!r} is not a ROS camera_info YAML: {err}") from err


class FrameSource:
    """Frames from a video file, an image folder or a device, as RGB uint8 arrays."""

    def __init__(self, source: str, loop: bool) -> None:
        self.loop = loop
        self.files: list[Path] = []
        self.cap = None
        self.index = 0
        path = Path(source)
        if source.startswith("v4l2:") or source.isdigit():
            dev = source.split(":", 1)[1] if source.startswith("v4l2:") else int(source)
            self.cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
            if not self.cap.isOpened():
                raise StartupError(f"cannot open camera device {dev!r}")
        elif path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise StartupError(f"image folder {source!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        elif path.is_file():
            self.cap = cv2.VideoCapture(str(path))
            if not self.cap.isOpened():
                raise StartupError(f"cannot open video {source!r} (format not supported by OpenCV?)")
            self.video = path
        else:
            raise StartupError(f"source {source!r} is neither a video file, an image folder nor v4l2:DEVICE")

    def read(self) -> np.ndarray | None:
        """Next RGB frame, or None at the end (after looping if enabled)."""
        if self.files:
            if self.index >= len(self.files):
                if not self.loop:
                    return None
                self.index = 0
            bgr = cv2.imread(str(self.files[self.index]), cv2.IMREAD_COLOR)
            self.index += 1
            return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])
        cap = self.cap
        assert cap is not None  # __init__ opened a capture for every source that is not an image folder
        ok, bgr = cap.read()
        if not ok and self.loop and hasattr(self, "video"):
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = cap.read()
        return np.ascontiguousarray(bgr[..., ::-1]) if ok else None


class CameraNode(PerceptionNode):
    """Publishes ``image`` and ``camera_info`` at ``rate_hz``; see the module docstring."""

    PARAMS = (
        ParamSpec("source", "", "video file, image folder, or v4l2:/dev/videoN (or a device index)"),
        ParamSpec("calibration", "", "ROS camera_info YAML with the intrinsics of the source"),
        ParamSpec("allow_uncalibrated", False, "start without calibration, guessing fx = fy = width"),
        ParamSpec("rate_hz", 10.0, "publish rate", min=0.1, max=1000.0),
        ParamSpec("loop", False, "restart files/folders at the end"),
        ParamSpec("frame_id", "camera_optical", "frame_id of the published headers"),
        ParamSpec("qos", "reliable", "QoS of image and camera_info", choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 2, "queue depth", min=1),
        ParamSpec("wait_for_subscribers", 0, "hold the first frame until the image topic has this many subscribers",
                  min=0),
        ParamSpec("wait_timeout_s", 30.0, "stop waiting for subscribers after this long", min=0.0),
        ParamSpec("exit_when_done", True, "shut down after the last frame of a file or folder"),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_node", **kwargs)
        from sensor_msgs.msg import CameraInfo, Image

        if not self.p["source"]:
            raise StartupError("set the 'source' parameter (video file, image folder or v4l2:DEVICE)")
        self.source = FrameSource(self.p["source"], self.p["loop"])
        self.calib = load_calibration(self.p["calibration"]) if self.p["calibration"] else None
        if self.calib is None and not self.p["allow_uncalibrated"]:
            raise StartupError("no 'calibration' YAML given; set one or allow_uncalibrated:=true")
        qos = self.qos()
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", qos)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", qos)
        self._waiting_until = time.monotonic() + self.p["wait_timeout_s"]
        self.create_timer(1.0 / self.p["rate_hz"], self.tick)

    def tick(self) -> None:
        """Publish the next frame (after waiting for subscribers), or stop at the end of a file."""
        if (self.counters["published"] == 0 and time.monotonic() < self._waiting_until
                and self.image_pub.get_subscription_count() < self.p["wait_for_subscribers"]):
            return
        rgb = self.source.read()
        if rgb is None:
            self.get_logger().info(f"end of source after {self.counters['published']} frames")
            if self.p["exit_when_done"]:
                import rclpy

                rclpy.try_shutdown()
            return
        h, w = rgb.shape[:2]
        if self.calib is not None:
            K, cw, ch, dist, model = self.calib
            if (cw, ch) != (w, h):
                self.reject("calibration_size", f"frame is {w}x{h} but the calibration is for {cw}x{ch}")
                return
        else:
            K, dist, model = np.array([[w, 0, (w - 1) / 2], [0, w, (h - 1) / 2], [0, 0, 1.0]]), [0.0] * 5, "plumb_bob"
        img = numpy_to_image(rgb, "rgb8")
        img.header.stamp = self.get_clock().now().to_msg()
        img.header.frame_id = self.p["frame_id"]
        info = k_to_camera_info(K, w, h, img.header)
        info.distortion_model, info.d = model, dist
        self.image_pub.publish(img)
        self.info_pub.publish(info)
        self.count("published")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(CameraNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
