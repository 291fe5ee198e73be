"""Image message <-> numpy conversions and their rejections."""

from __future__ import annotations

import numpy as np
import pytest

from ba_perception.ros.image import (ImageError, compressed_to_rgb, image_to_gray, image_to_numpy, image_to_rgb, numpy_to_image,
                                     rgb_to_compressed)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, (6, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc,arr,rgb", [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[..., ::-1], RGB),
    ("bgra8", np.dstack([RGB[..., ::-1], np.full((6, 7), 9, np.uint8)]), RGB),
    ("mono8", RGB[..., 0], np.repeat(RGB[..., :1], 3, axis=2)),
])
def test_colour_round_trip(enc, arr, rgb):
    msg = numpy_to_image(arr, enc)
    assert np.array_equal(image_to_numpy(msg), arr)
    assert np.array_equal(image_to_rgb(msg), rgb)


def test_16uc1_little_and_big_endian():
    depth = RNG.integers(0, 65535, (5, 4), dtype=np.uint16)
    msg = numpy_to_image(depth, "16UC1")
    assert np.array_equal(image_to_numpy(msg), depth)
    msg.is_bigendian = 1
    msg.data = depth.astype(">u2").tobytes()
    assert np.array_equal(image_to_numpy(msg), depth)


def test_row_padding_is_stripped():
    msg = numpy_to_image(RGB, "rgb8")
    padded = np.zeros((6, 7 * 3 + 5), np.uint8)
    padded[:, :21] = RGB.reshape(6, 21)
    msg.step, msg.data = 26, padded.tobytes()
    assert np.array_equal(image_to_numpy(msg), RGB)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed(fmt):
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 1, 3))
    out = compressed_to_rgb(rgb_to_compressed(smooth, fmt))
    tol = 0 if fmt == "png" else 8
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).max() <= tol


def _broken(**changes):
    msg = numpy_to_image(RGB, "rgb8")
    for k, v in changes.items():
        setattr(msg, k, v)
    return msg


@pytest.mark.parametrize("msg,reason", [
    (_broken(encoding="bayer_rggb8"), "encoding"),
    (_broken(data=RGB.tobytes()[:-1]), "size"),
    (_broken(height=0, data=b""), "empty"),
    (_broken(step=5), "size"),
])
def test_rejections_carry_a_reason(msg, reason):
    with pytest.raises(ImageError) as err:
        image_to_numpy(msg)
    assert err.value.reason == reason


def test_undecodable_compressed():
    msg = rgb_to_compressed(RGB, "png")
    msg.data = b"not an image"
    with pytest.raises(ImageError, match="decode"):
        compressed_to_rgb(msg)


def test_gray_from_every_encoding_agrees():
    rgb = np.random.default_rng(2).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    ref = image_to_gray(numpy_to_image(rgb, "rgb8"))
    assert ref.shape == (6, 8) and ref.dtype == np.uint8
    assert np.array_equal(image_to_gray(numpy_to_image(rgb[..., ::-1], "bgr8")), ref)
    assert np.array_equal(image_to_gray(numpy_to_image(ref, "mono8")), ref)
    png = rgb_to_compressed(rgb, "png")
    assert np.abs(image_to_gray(png).astype(int) - ref).max() <= 1
    bad = numpy_to_image(rgb, "rgb8")
    bad.encoding = "bayer_rggb8"
    with pytest.raises(ImageError):
        image_to_gray(bad)
