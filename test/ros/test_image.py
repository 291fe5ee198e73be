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


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2"])
def test_every_encoding_converts_to_a_contiguous_rgb_array(enc):
    import torch

    arr = {"rgb8": RGB, "bgr8": RGB[..., ::-1], "rgba8": np.dstack([RGB, np.full((6, 7), 9, np.uint8)]),
           "bgra8": np.dstack([RGB[..., ::-1], np.full((6, 7), 9, np.uint8)]), "mono8": RGB[..., 0],
           "mono16": RGB[..., 0].astype(np.uint16) * 257}.get(enc)
    if arr is None:  # packed 4:2:2 needs an even width
        arr = RNG.integers(0, 255, (6, 8, 2), dtype=np.uint8)
    rgb = image_to_rgb(numpy_to_image(arr, enc))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    torch.as_tensor(rgb)  # what the detector's preprocessing does (it rejected negative strides)
    if enc in ("bgr8", "rgba8", "bgra8"):
        assert np.array_equal(rgb, RGB)


def test_yuv422_grey_decodes_to_grey():
    packed = np.full((4, 8, 2), 128, np.uint8)  # U = V = 128 (no colour), Y = 128
    for enc in ("yuv422", "yuv422_yuy2"):
        rgb = image_to_rgb(numpy_to_image(packed, enc))
        assert np.abs(rgb.astype(int) - rgb[..., :1]).max() <= 1  # R = G = B
    odd = numpy_to_image(np.zeros((4, 7, 2), np.uint8), "yuv422")
    with pytest.raises(ImageError, match="even"):
        image_to_rgb(odd)


def test_too_large_images_are_rejected_before_conversion():
    with pytest.raises(ImageError) as err:
        image_to_rgb(numpy_to_image(RGB, "rgb8"), max_pixels=41)
    assert err.value.reason == "too_large"
    png = rgb_to_compressed(RGB, "png")
    with pytest.raises(ImageError) as err:
        compressed_to_rgb(png, max_pixels=41)
    assert err.value.reason == "too_large"
    assert compressed_to_rgb(png, max_pixels=42).shape == (6, 7, 3)
