"""Validated camera input for nodes: synchronized image + camera_info, keep-latest hand-off to a worker.

:class:`CameraInput` subscribes to an image topic (raw ``sensor_msgs/Image`` or
``CompressedImage``) and its ``camera_info``, pairs them by capture stamp with
:class:`TimeSynchronizer`, rejects bad messages with a counted reason (wrong encoding, size/step
mismatch, zero-size, NaN/zero intrinsics, image/calibration size mismatch, stamps going
backwards) and hands valid :class:`CameraFrame` records to a worker thread through a one-slot
"keep latest" buffer: when the worker is busy, an older waiting frame is dropped and counted,
so latency never grows with a queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ba_perception.ros.convert import InputError, camera_info_to_k
from ba_perception.ros.image import MAX_DECODED_PIXELS, ImageError, image_to_rgb
from ba_perception.ros.node import wall_ns
from ba_perception.ros.params import ParamSpec, qos_profile
from ba_perception.ros.sync import stamp_ns, subscribe_synchronized

if TYPE_CHECKING:
    from ba_perception.ros.node import PerceptionNode

CAMERA_INPUT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topic", "/camera/image_raw", "camera image topic"),
    ParamSpec("camera_info_topic", "/camera/camera_info", "camera_info topic with the same stamps"),
    ParamSpec("image_transport", "raw", "raw sensor_msgs/Image or compressed (JPEG/PNG)", choices=("raw", "compressed")),
    ParamSpec("input_qos", "sensor_data", "QoS of image and camera_info", choices=("sensor_data", "reliable", "best_effort")),
    ParamSpec("input_qos_depth", 5, "queue depth of image and camera_info", min=1),
    ParamSpec("sync_slop_s", 0.0, "largest stamp difference between image and camera_info, seconds", min=0.0),
    ParamSpec("sync_queue_size", 10, "messages buffered per input while pairing", min=1),
    ParamSpec("max_decoded_pixels", MAX_DECODED_PIXELS, "largest image (width x height) converted or decoded; a larger "
              "one (e.g. a compressed decompression bomb, checked on its header) is rejected as too_large", min=1),
)


@dataclass
class CameraFrame:
    """One validated camera frame.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB.
        K: ``(3, 3)`` intrinsics, pixels.
        header: the image's std_msgs/Header (capture stamp, optical frame id).
        stamp_ns: capture stamp, nanoseconds (node clock domain).
        received_ns: wall-clock arrival of the image, nanoseconds (stage trace).
    """

    rgb: np.ndarray
    K: np.ndarray
    header: Any
    stamp_ns: int
    received_ns: int


class LatestSlot:
    """A one-element mailbox: ``put`` replaces (and reports) an unconsumed item; ``get`` blocks."""

    def __init__(self) -> None:
        self._item: Any = None
        self._cv = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; returns True if an older unconsumed item was dropped."""
        with self._cv:
            dropped = self._item is not None
            self._item = item
            self._cv.notify()
            return dropped

    def get(self, timeout: float | None = None) -> Any:
        """Take the item, waiting up to ``timeout``; None on timeout or close."""
        with self._cv:
            if self._item is None and not self._closed:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake up waiting readers; ``get`` returns None from now on."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class FrameWorker:
    """Runs ``process(item)`` on its own thread for the latest item put; older waiting items are dropped.

    Processing off the executor thread keeps subscriptions (odometry, acknowledgements) flowing
    while a frame is being worked on. Exceptions are counted as ``rejected.processing_error``.
    """

    def __init__(self, node: PerceptionNode, process: Callable[[Any], None], drop_counter: str) -> None:
        self.node = node
        self.process = process
        self.drop_counter = drop_counter
        self.slot = LatestSlot()
        self._running = True
        self._thread = threading.Thread(target=self._work, name=f"{node.get_name()}_worker", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        """Hand ``item`` to the worker, counting a dropped older one."""
        if self.slot.put(item):
            self.node.count(self.drop_counter)

    def _work(self) -> None:
        while self._running:
            item = self.slot.get(timeout=0.2)
            if item is None:
                continue
            try:
                self.process(item)
            except Exception as err:  # never let one frame kill the worker
                self.node.reject("processing_error", f"{type(err).__name__}: {err}")

    def close(self) -> None:
        """Stop the worker thread."""
        self._running = False
        self.slot.close()
        self._thread.join(timeout=2.0)


class CameraInput:
    """Wire the camera subscriptions of ``node`` and call ``process(frame)`` on a worker thread.

    Args:
        node: the owning node; its parameters must include :data:`CAMERA_INPUT_PARAMS`.
        process: called with each :class:`CameraFrame` (on the worker thread).
        on_reset: called when capture stamps jump backwards (a looped bag), before the frame.
    """

    def __init__(self, node: PerceptionNode, process: Callable[[CameraFrame], None],
                 on_reset: Callable[[], None] | None = None) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        self.node = node
        self.process = process
        self.on_reset = on_reset
        self.worker = FrameWorker(node, process, "frames_dropped_stale")
        self._arrival: dict[int, int] = {}
        self._last_stamp: int | None = None
        p = node.p
        qos = qos_profile(p["input_qos"], p["input_qos_depth"])
        image_cls = CompressedImage if p["image_transport"] == "compressed" else Image
        image_topic = p["image_topic"] + ("/compressed" if p["image_transport"] == "compressed" else "")
        self.sync = subscribe_synchronized(
            node, [(image_cls, image_topic, qos), (CameraInfo, p["camera_info_topic"], qos)],
            self._on_pair, queue_size=p["sync_queue_size"], slop_s=p["sync_slop_s"], on_receive=self._on_receive)

    def _on_receive(self, index: int, msg: Any) -> bool:
        if index == 0:
            self.node.count("images_in")
            t = stamp_ns(msg)
            self._arrival[t] = wall_ns()
            if len(self._arrival) > 64:
                for k in sorted(self._arrival)[:-32]:
                    del self._arrival[k]
            if self._last_stamp is not None and t < self._last_stamp:
                self.node.reject("stamp_backwards", f"capture stamp went back by {(self._last_stamp - t) / 1e9:.3f} s; "
                                 "state reset (bag looped?)")
                for i, q in enumerate(self.sync.queues):
                    if q:
                        self.node.reject("unpaired", f"{len(q)} message(s) of input {i} dropped unpaired by the reset",
                                         len(q))
                    q.clear()
                self.sync.latest_ns = None
                if self.on_reset is not None:
                    self.on_reset()
            elif self._last_stamp is not None and t == self._last_stamp:
                self.node.reject("duplicate_stamp", "two images with the same capture stamp; second ignored")
                return False
            self._last_stamp = t
        return True

    def _on_pair(self, image: Any, info: Any) -> None:
        try:
            rgb = image_to_rgb(image, self.node.p["max_decoded_pixels"])
            K = camera_info_to_k(info)
        except (ImageError, InputError) as err:
            self.node.reject(err.reason, str(err))
            return
        h, w = rgb.shape[:2]
        if (int(info.width), int(info.height)) != (w, h):
            self.node.reject("calibration_size", f"image is {w}x{h} but camera_info says {info.width}x{info.height}")
            return
        t = stamp_ns(image)
        self.worker.put(CameraFrame(rgb, K, image.header, t, self._arrival.pop(t, wall_ns())))

    def close(self) -> None:
        """Stop the worker thread."""
        self.worker.close()
