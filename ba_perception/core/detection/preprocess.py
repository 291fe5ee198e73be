"""Image preprocessing for the detector: letterbox resize and the exact original <-> network pixel map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class PreprocessError(ValueError):
    """Raised for an image the preprocessing cannot take (wrong shape, dtype or size)."""


@dataclass(frozen=True)
class Preprocess:
    """Letterbox transform from an original image to the network input.

    Pixel coordinates follow ``core.geometry`` (integer = pixel centre). A bilinear resize by
    ``(sx, sy)`` with ``align_corners=False`` followed by padding maps continuous coordinates as

        u_net = sx * (u + 0.5) - 0.5 + pad_x,   v_net = sy * (v + 0.5) - 0.5 + pad_y

    Attributes:
        src_hw: original (height, width), pixels.
        net_hw: network input (height, width), pixels.
        resized_hw: size of the resized image inside the letterbox, pixels.
        sx, sy: exact scale factors ``resized / src`` per axis.
        pad_x, pad_y: left / top padding in network pixels (integers).
    """

    src_hw: tuple[int, int]
    net_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    sx: float
    sy: float
    pad_x: int
    pad_y: int

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

    def to_net(self, uv: torch.Tensor) -> torch.Tensor:
        """Map ``(*, 2)`` original pixels to network pixels."""
        s = uv.new_tensor([self.sx, self.sy])
        p = uv.new_tensor([self.pad_x, self.pad_y])
        return s * (uv + 0.5) - 0.5 + p

    def to_src(self, uv_net: torch.Tensor) -> torch.Tensor:
        """Map ``(*, 2)`` network pixels back to original pixels (inverse of :meth:`to_net`)."""
        s = uv_net.new_tensor([self.sx, self.sy])
        p = uv_net.new_tensor([self.pad_x, self.pad_y])
        return (uv_net + 0.5 - p) / s - 0.5

    def K_net(self, K: torch.Tensor) -> torch.Tensor:
        """Intrinsics ``(*, 3, 3)`` of the network image given the original ones ``(*, 3, 3)``."""
        Kn = K.clone()
        Kn[..., 0, 0] = K[..., 0, 0] * self.sx
        Kn[..., 0, 1] = K[..., 0, 1] * self.sx
        Kn[..., 1, 1] = K[..., 1, 1] * self.sy
        Kn[..., 0, 2] = self.sx * (K[..., 0, 2] + 0.5) - 0.5 + self.pad_x
        Kn[..., 1, 2] = self.sy * (K[..., 1, 2] + 0.5) - 0.5 + self.pad_y
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
    """Letterbox ``(B, 3, H, W)`` float images in [0, 1] to ``(B, 3, *net_hw)`` (runs on the images' device).

    Raises:
        PreprocessError: the image size differs from ``pre.src_hw``.
    """
    if tuple(image.shape[-2:]) != tuple(pre.src_hw) or image.ndim != 4 or image.shape[1] != 3:
        raise PreprocessError(f"image of shape {tuple(image.shape)} does not match preprocess source size {pre.src_hw}")
    x = image
    if tuple(pre.resized_hw) != tuple(pre.src_hw):
        down = pre.sx < 1.0 or pre.sy < 1.0
        x = F.interpolate(x, size=pre.resized_hw, mode="bilinear", align_corners=False, antialias=down)
    if pre.resized_hw != pre.net_hw:
        nh, nw = pre.net_hw
        rh, rw = pre.resized_hw
        x = F.pad(x, (pre.pad_x, nw - rw - pre.pad_x, pre.pad_y, nh - rh - pre.pad_y))
    return x.contiguous()
