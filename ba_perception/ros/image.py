"""sensor_msgs Image / CompressedImage <-> numpy, with the checks cv_bridge leaves to the caller.

Supported raw encodings: rgb8, bgr8, mono8, bgra8, rgba8, 16UC1 (mono16), 32FC1, and the packed 4:2:2
YUV of USB cameras (yuv422 = uyvy, yuv422_yuy2 = yuyv); compressed: JPEG and PNG via OpenCV. Every
malformed message raises :class:`ImageError` whose ``reason`` is a short key for counters
(``encoding``, ``size``, ``empty``, ``decode``, ``too_large``). Colour conversions return contiguous
arrays (never negative-stride views), so every encoding feeds the detector like rgb8. A compressed
image's size is read from its header before it is decoded: more than ``max_pixels`` pixels (a
decompression bomb: a few hundred kB of PNG can decode to gigabytes) is rejected without decoding.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

MAX_DECODED_PIXELS = 4096 * 4096  # default bound on width * height of an image that is converted or decoded

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
    "yuv422": (np.dtype(np.uint8), 2),  # UYVY (ROS sensor_msgs/image_encodings.h name)
    "uyvy": (np.dtype(np.uint8), 2),
    "yuv422_yuy2": (np.dtype(np.uint8), 2),  # YUYV
    "yuyv": (np.dtype(np.uint8), 2),
}

# encoding -> OpenCV conversion of the (H, W, C) array to contiguous RGB
_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
    "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}


class ImageError(ValueError):
    """A message that cannot be turned into an image; ``reason`` is a counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError("too_large", f"image is {w}x{h} = {w * h} pixels, more than max_decoded_pixels {max_pixels}")


def image_to_numpy(msg: Image, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """View a raw ``sensor_msgs/Image`` as ``(H, W)`` or ``(H, W, C)`` numpy (no copy when possible).

    Raises:
        ImageError: unknown encoding, zero size, more than ``max_pixels``, or ``len(data) != step * height``.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageError("encoding", f"unsupported encoding {msg.encoding!r} (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageError("empty", f"zero-size image {w}x{h}")
    _check_pixels(w, h, max_pixels)
    if channels == 2 and w % 2:
        raise ImageError("size", f"{msg.encoding} packs two pixels in 4 bytes: width must be even, got {w}")
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


def image_to_rgb(msg: Image | CompressedImage, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Any supported image message -> contiguous ``(H, W, 3)`` uint8 RGB (mono is replicated).

    Raises:
        ImageError: see :func:`image_to_numpy` and :func:`compressed_to_rgb`.
    """
    if isinstance(msg, CompressedImage):
        return compressed_to_rgb(msg, max_pixels)
    arr = image_to_numpy(msg, max_pixels)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc in _TO_RGB:
        return cv2.cvtColor(np.ascontiguousarray(arr), _TO_RGB[enc])
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr[..., None], 3, axis=2)
    if enc in ("16UC1", "mono16"):
        return np.repeat((arr >> 8).astype(np.uint8)[..., None], 3, axis=2)
    raise ImageError("encoding", f"encoding {enc!r} is not a colour or mono image")


def image_to_gray(msg: Image | CompressedImage, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Any supported image message -> ``(H, W)`` uint8 grayscale (mono8 is a view, no colour round trip)."""
    if isinstance(msg, CompressedImage):
        gray = cv2.imdecode(_checked_compressed(msg, max_pixels), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r})")
        return gray
    enc = msg.encoding
    if enc in ("mono8", "8UC1"):
        return image_to_numpy(msg, max_pixels)
    if enc in ("rgb8", "bgr8", "rgba8", "bgra8"):
        code = {"rgb8": cv2.COLOR_RGB2GRAY, "bgr8": cv2.COLOR_BGR2GRAY, "rgba8": cv2.COLOR_RGBA2GRAY,
                "bgra8": cv2.COLOR_BGRA2GRAY}[enc]
        return cv2.cvtColor(np.ascontiguousarray(image_to_numpy(msg, max_pixels)), code)
    return cv2.cvtColor(image_to_rgb(msg, max_pixels), cv2.COLOR_RGB2GRAY)


def compressed_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """``(width, height)`` of a compressed image from its header alone (Pillow reads no pixel data).

    Raises:
        ImageError: ``decode`` when the header is not a readable image header.
    """
    try:
        with PILImage.open(io.BytesIO(bytes(data))) as im:
            return int(im.size[0]), int(im.size[1])
    except PILImage.DecompressionBombError as err:  # Pillow's own bound (> 2 * 89 MP) hit first
        raise ImageError("too_large", f"compressed image header: {err}") from err
    except Exception as err:  # noqa: BLE001 - Pillow raises several types for a bad header
        raise ImageError("decode", f"cannot decode compressed image: unreadable header ({type(err).__name__}: {err})") from err


def _checked_compressed(msg: CompressedImage, max_pixels: int) -> np.ndarray:
    if len(msg.data) == 0:
        raise ImageError("empty", "compressed image has no data")
    w, h = compressed_size(msg.data)
    if w == 0 or h == 0:
        raise ImageError("empty", f"compressed image header says {w}x{h}")
    _check_pixels(w, h, max_pixels)
    return np.frombuffer(msg.data, np.uint8)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = MAX_DECODED_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG ``sensor_msgs/CompressedImage`` to contiguous ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageError: empty data, an unreadable header or body (``decode``), or more than ``max_pixels``
            pixels in the header (``too_large``, checked before decoding).
    """
    bgr = cv2.imdecode(_checked_compressed(msg, max_pixels), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError("decode", f"cannot decode compressed image (format {msg.format!r})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


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
