"""Image preprocessing for the detector: horizon-band crop or letterbox resize, and the exact original <-> network pixel map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class PreprocessError(ValueError):
    """Raised for an image the preprocessing cannot take (wrong shape, dtype or size)."""


# Where the horizon sits in the training frames (KITTI camera 02: cy = 172.9 of 375 rows), as a
# fraction of the image height from the top; a horizon band keeps the same share above it.
HORIZON_ROW_FRACTION = (172.854 + 0.5) / 375
# A band is cropped only when letterboxing would leave more than this share of the input as padding.
MAX_PADDING_SHARE = 0.1
PREPROCESS_MODES: tuple[str, ...] = ("horizon_band", "letterbox")


def horizon_row(K: np.ndarray, R_base_cam: np.ndarray | None = None) -> float:
    """Image row ``v`` where the horizon (the vanishing point of base_link's forward axis) lies.

    Args:
        K: ``(3, 3)`` intrinsics.  R_base_cam: ``(3, 3)`` rotation of the camera optical frame in
            base_link (the mounting, e.g. from ``/tf_static``); None = optical axis level and
            forward, so the horizon is the row ``cy``.
    """
    K = np.asarray(K, np.float64)
    if R_base_cam is None:
        return float(K[1, 2])
    d = np.asarray(R_base_cam, np.float64).T @ np.array([1.0, 0.0, 0.0])  # forward in the camera frame
    if d[2] <= 1e-6:
        return float(K[1, 2])
    return float(K[1, 1] * d[1] / d[2] + K[1, 2])


@dataclass(frozen=True)
class Preprocess:
    """Crop + letterbox transform from an original image to the network input.

    Pixel coordinates follow ``core.geometry`` (integer = pixel centre). An integer crop starting at
    ``(crop_x, crop_y)``, a bilinear resize by ``(sx, sy)`` with ``align_corners=False`` and padding
    map continuous coordinates as

        u_net = sx * (u - crop_x + 0.5) - 0.5 + pad_x,   v_net = sy * (v - crop_y + 0.5) - 0.5 + pad_y

    Attributes:
        src_hw: original (height, width), pixels.
        net_hw: network input (height, width), pixels.
        resized_hw: size of the resized image inside the letterbox, pixels.
        sx, sy: exact scale factors ``resized / src`` per axis.
        pad_x, pad_y: left / top padding in network pixels (integers).
        crop_x, crop_y: first original column / row kept (integers; 0 = no crop).
        crop_hw: size of the kept window, original pixels (None = the whole image).
    """

    src_hw: tuple[int, int]
    net_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    sx: float
    sy: float
    pad_x: int
    pad_y: int
    crop_x: int = 0
    crop_y: int = 0
    crop_hw: tuple[int, int] | None = None

    @property
    def window_hw(self) -> tuple[int, int]:
        """Size of the original window that is resized (the crop, else the whole image)."""
        h, w = self.crop_hw if self.crop_hw is not None else self.src_hw
        return int(h), int(w)

    @classmethod
    def letterbox(cls, src_hw: tuple[int, int], net_hw: tuple[int, int]) -> Preprocess:
        """Scale uniformly (up to rounding) to fit ``net_hw`` and centre with zero padding.

        Raises:
            PreprocessError: a size is not positive.
        """
        (h, w), (nh, nw) = (int(src_hw[0]), int(src_hw[1])), (int(net_hw[0]), int(net_hw[1]))
        if min(h, w, nh, nw) <= 0:
            raise PreprocessError(f"image and network sizes must be positive, got {src_hw} -> {net_hw}")
        s = min(nh / h, nw / w)
        rh, rw = min(nh, max(1, round(h * s))), min(nw, max(1, round(w * s)))
        return cls((h, w), (nh, nw), (rh, rw), rw / w, rh / h, (nw - rw) // 2, (nh - rh) // 2)

    @classmethod
    def horizon_band(cls, src_hw: tuple[int, int], net_hw: tuple[int, int], horizon_v: float,
                     max_padding: float = MAX_PADDING_SHARE) -> Preprocess:
        """Crop an image taller than the network's aspect ratio to a full-width band around the horizon.

        The band has the network's aspect ratio and puts the horizon row ``horizon_v`` at
        :data:`HORIZON_ROW_FRACTION` of its height (as in the training frames), shifted to stay inside
        the image; it is then resized to fill the input. Images whose letterbox would pad at most
        ``max_padding`` of the input (the training rig) or that are wider than the input get the
        plain :meth:`letterbox`, so their pixel map is unchanged.

        Raises:
            PreprocessError: a size is not positive.
        """
        box = cls.letterbox(src_hw, net_hw)
        (h, w), (nh, nw) = box.src_hw, box.net_hw
        fill = box.resized_hw[0] * box.resized_hw[1] / (nh * nw)
        if fill >= 1.0 - max_padding or w / h >= nw / nh:
            return box
        ch = min(h, max(1, round(w * nh / nw)))
        y0 = int(np.clip(round(horizon_v + 0.5 - HORIZON_ROW_FRACTION * ch), 0, h - ch))
        band = cls.letterbox((ch, w), net_hw)
        return cls((h, w), (nh, nw), band.resized_hw, band.sx, band.sy, band.pad_x, band.pad_y, 0, y0, (ch, w))

    @classmethod
    def for_camera(cls, mode: str, src_hw: tuple[int, int], net_hw: tuple[int, int], K: np.ndarray,
                   R_base_cam: np.ndarray | None = None) -> Preprocess:
        """The preprocessing ``mode`` (:data:`PREPROCESS_MODES`) for a camera's image size, intrinsics and mounting.

        Raises:
            PreprocessError: unknown mode or a non-positive size.
        """
        if mode == "letterbox":
            return cls.letterbox(src_hw, net_hw)
        if mode == "horizon_band":
            return cls.horizon_band(src_hw, net_hw, horizon_row(K, R_base_cam))
        raise PreprocessError(f"unknown preprocess mode {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}")

    def _offset(self, uv: torch.Tensor) -> torch.Tensor:
        """``(2,)`` shift ``pad - scale * crop`` of the map's affine part."""
        return uv.new_tensor([self.pad_x - self.sx * self.crop_x, self.pad_y - self.sy * self.crop_y])

    def to_net(self, uv: torch.Tensor) -> torch.Tensor:
        """Map ``(*, 2)`` original pixels to network pixels."""
        s = uv.new_tensor([self.sx, self.sy])
        return s * (uv + 0.5) - 0.5 + self._offset(uv)

    def to_src(self, uv_net: torch.Tensor) -> torch.Tensor:
        """Map ``(*, 2)`` network pixels back to original pixels (inverse of :meth:`to_net`)."""
        s = uv_net.new_tensor([self.sx, self.sy])
        return (uv_net + 0.5 - self._offset(uv_net)) / s - 0.5

    def K_net(self, K: torch.Tensor) -> torch.Tensor:
        """Intrinsics ``(*, 3, 3)`` of the network image given the original ones ``(*, 3, 3)``."""
        Kn = K.clone()
        Kn[..., 0, 0] = K[..., 0, 0] * self.sx
        Kn[..., 0, 1] = K[..., 0, 1] * self.sx
        Kn[..., 1, 1] = K[..., 1, 1] * self.sy
        Kn[..., 0, 2] = self.sx * (K[..., 0, 2] - self.crop_x + 0.5) - 0.5 + self.pad_x
        Kn[..., 1, 2] = self.sy * (K[..., 1, 2] - self.crop_y + 0.5) - 0.5 + self.pad_y
        return Kn


def to_chw_float(image: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Convert an ``(H, W, 3)`` uint8 RGB image to a ``(1, 3, H, W)`` float tensor in [0, 1].

    Raises:
        PreprocessError: not an (H, W, 3) uint8 array.
    """
    t = torch.as_tensor(image)
    if t.ndim != 3 or t.shape[2] != 3 or t.dtype != torch.uint8:
        raise PreprocessError(f"expected an (H, W, 3) uint8 RGB image, got {tuple(t.shape)} {t.dtype}")
    return t.to(device, non_blocking=True).permute(2, 0, 1)[None].float().div_(255.0)


def apply_preprocess(image: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Crop and letterbox ``(B, 3, H, W)`` float images in [0, 1] to ``(B, 3, *net_hw)`` (runs on the images' device).

    Raises:
        PreprocessError: the image size differs from ``pre.src_hw``.
    """
    if tuple(image.shape[-2:]) != tuple(pre.src_hw) or image.ndim != 4 or image.shape[1] != 3:
        raise PreprocessError(f"image of shape {tuple(image.shape)} does not match preprocess source size {pre.src_hw}")
    x = image
    if pre.crop_hw is not None:
        ch, cw = pre.crop_hw
        x = x[..., pre.crop_y:pre.crop_y + ch, pre.crop_x:pre.crop_x + cw]
    if tuple(pre.resized_hw) != tuple(pre.window_hw):
        down = pre.sx < 1.0 or pre.sy < 1.0
        x = F.interpolate(x, size=pre.resized_hw, mode="bilinear", align_corners=False, antialias=down)
    if pre.resized_hw != pre.net_hw:
        nh, nw = pre.net_hw
        rh, rw = pre.resized_hw
        x = F.pad(x, (pre.pad_x, nw - rw - pre.pad_x, pre.pad_y, nh - rh - pre.pad_y))
    return x.contiguous()
