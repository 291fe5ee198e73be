"""sensor_msgs Image / CompressedImage <-> numpy, with the checks cv_bridge leaves to the caller.

Supported raw encodings: rgb8, bgr8, mono8, bgra8, rgba8, 16UC1 (mono16), 32FC1; compressed: JPEG
and PNG via OpenCV. Every malformed message raises :class:`ImageError` whose ``reason`` is a short
key for counters (``encoding``, ``size``, ``empty``, ``decode``).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


class ImageError(ValueError):
    """A message that cannot be turned into an image; ``reason`` is a counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_to_numpy(msg: Image) -> np.ndarray:
    """View a raw ``sensor_msgs/Image`` as ``(H, W)`` or ``(H, W, C)`` numpy (no copy when possible).

    Raises:
        ImageError: unknown encoding, zero size, or ``len(data) != step * height``.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageError("encoding", f"unsupported encoding {msg.encoding!r} (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageError("empty", f"zero-size image {w}x{h}")
    row = w * channels * dtype.itemsize
    if step < row:
        raise ImageError("size", f"step {step} < width*channels*bytes {row}")
    n = len(msg.data)
    if n != step * h:
        raise ImageError("size", f"data has {n} bytes, step*height = {step * h}")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row]
    if step != row:
        buf = np.ascontiguousarray(buf)
    arr = buf.view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    if arr.dtype != dtype:
        arr = arr.astype(dtype)  # foreign byte order: one swap
    return arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """Any supported image message -> ``(H, W, 3)`` uint8 RGB (mono is replicated)."""
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg)
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc == "bgr8":
        return arr[..., ::-1]
    if enc == "rgba8":
        return arr[..., :3]
    if enc == "bgra8":
        return arr[..., 2::-1]
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr[..., None], 3, axis=2)
    if enc in ("16UC1", "mono16"):
        return np.repeat((arr >> 8).astype(np.uint8)[..., None], 3, axis=2)
    raise ImageError("encoding", f"encoding {enc!r} is not a colour or mono image")


def image_to_gray(msg: Image | CompressedImage) -> np.ndarray:
    """Any supported image message -> ``(H, W)`` uint8 grayscale (mono8 is a view, no colour round trip)."""
    if isinstance(msg, CompressedImage):
        if len(msg.data) == 0:
            raise ImageError("empty", "compressed image has no data")
        gray = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r})")
        return gray
    enc = msg.encoding
    if enc in ("mono8", "8UC1"):
        return image_to_numpy(msg)
    if enc in ("rgb8", "bgr8", "rgba8", "bgra8"):
        code = {"rgb8": cv2.COLOR_RGB2GRAY, "bgr8": cv2.COLOR_BGR2GRAY, "rgba8": cv2.COLOR_RGBA2GRAY,
                "bgra8": cv2.COLOR_BGRA2GRAY}[enc]
        return cv2.cvtColor(np.ascontiguousarray(image_to_numpy(msg)), code)
    return cv2.cvtColor(np.ascontiguousarray(image_to_rgb(msg)), cv2.COLOR_RGB2GRAY)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG/PNG ``sensor_msgs/CompressedImage`` to ``(H, W, 3)`` uint8 RGB."""
    if len(msg.data) == 0:
        raise ImageError("empty", "compressed image has no data")
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r})")
    return bgr[..., ::-1]


def numpy_to_image(arr: np.ndarray, encoding: str, header: Any | None = None) -> Image:
    """Build a ``sensor_msgs/Image`` from a numpy array of the given encoding."""
    if encoding not in ENCODINGS:
        raise ImageError("encoding", f"unsupported encoding {encoding!r}")
    dtype, channels = ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim != (3 if channels > 1 else 2) or (channels > 1 and arr.shape[2] != channels):
        raise ImageError("size", f"{encoding} needs shape (H, W{', ' + str(channels) if channels > 1 else ''}), got {arr.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", header: Any | None = None, quality: int = 90) -> CompressedImage:
    """Encode ``(H, W, 3)`` RGB to a JPEG or PNG ``sensor_msgs/CompressedImage``."""
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageError("encoding", f"unsupported compressed format {fmt!r} (jpeg, png)")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ImageError("decode", "OpenCV could not encode the image")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if ext == ".jpg" else "png"
    msg.data = buf.tobytes()
    return msg
