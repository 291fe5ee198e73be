"""Configuration of a synthetic world sequence: camera, rate, length and scenario preset."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PRESETS: tuple[str, ...] = ("highway", "urban", "parking_lot", "occlusion_stress", "residential")
# World generator versions still renderable: v2 (stops per sequence, KITTI rig, 9 trigger-rally cars)
# and v3 (stops per minute, residential preset, camera rigs, TORCS cars, appearance per sequence).
WORLD_VERSIONS: tuple[str, ...] = ("v2", "v3")
WORLD_VERSION = "v3"
VERSION_PRESETS: dict[str, tuple[str, ...]] = {"v2": PRESETS[:4], "v3": PRESETS}

# KITTI tracking camera 02 (sequence 0000), rectified.
KITTI_WIDTH, KITTI_HEIGHT = 1242, 375
KITTI_FX = KITTI_FY = 721.5377
KITTI_CX, KITTI_CY = 609.5593, 172.854


class WorldConfigError(ValueError):
    """Raised for an invalid world configuration (unknown preset, bad size, bad rate)."""


@dataclass
class WorldConfig:
    """Everything that determines a rendered sequence; same config -> bit-identical frames.

    Attributes:
        preset: scenario, one of :data:`PRESETS`.
        seed: random seed of the scenario (layout, traffic, colours, lighting, noise).
        width, height: image size, pixels.
        fx, fy, cx, cy: pinhole intrinsics, pixels (pixel centres at integer coordinates).
            ``None`` = KITTI values scaled to ``width``/``height``.
        rate_hz: frame rate; stamps are ``start_stamp_ns + index * 1e9 / rate_hz``.
        n_frames: number of frames.
        camera_height_m: camera optical centre above the road, metres.
        camera_forward_m: camera ahead of base_link (ego centre on the road), metres.
        noise_std: Gaussian sensor noise, 8-bit levels (0 = off).
        blur_px: box-blur radius in pixels (0 = off).
        gt_max_range_m: objects farther than this from the camera get no GT entry.
        start_stamp_ns: stamp of frame 0.
        surface_points: GT surface points kept per object for correspondences.
        world_version: generator version (:data:`WORLD_VERSIONS`); old versions stay renderable
            so that old numbers can be reproduced.
        rig: name of the camera rig family (reporting only; the values are the fields here).
        pitch_deg, roll_deg: camera mounting pitch (positive = looking down) and roll (positive =
            right side down), degrees: the REP-103 pitch / roll of the camera body in base_link.
        exposure: image gain (1 = none).  white_balance: per-channel RGB gains.
        vignetting: brightness loss at the image corners, [0, 1) (0 = none).
        car_pool: which car meshes the scene draws from (``meshes.CAR_POOLS``; v3 only).
    """

    preset: str = "urban"
    seed: int = 0
    width: int = KITTI_WIDTH
    height: int = KITTI_HEIGHT
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    rate_hz: float = 10.0
    n_frames: int = 100
    camera_height_m: float = 1.65
    camera_forward_m: float = 1.2
    noise_std: float = 0.0
    blur_px: int = 0
    gt_max_range_m: float = 100.0
    start_stamp_ns: int = 1_700_000_000_000_000_000
    surface_points: int = 2000
    world_version: str = WORLD_VERSION
    rig: str = "kitti"
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    exposure: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: float = 0.0
    car_pool: str = "train"

    def validate(self) -> None:
        """Raise :class:`WorldConfigError` with a fix for invalid values."""
        if self.world_version not in WORLD_VERSIONS:
            raise WorldConfigError(f"unknown world_version {self.world_version!r}; choose one of {', '.join(WORLD_VERSIONS)}")
        presets = VERSION_PRESETS[self.world_version]
        if self.preset not in presets:
            raise WorldConfigError(f"unknown preset {self.preset!r} for world {self.world_version}; choose one of {', '.join(presets)}")
        if not (0 <= self.vignetting < 1) or self.exposure <= 0 or min(self.white_balance) <= 0:
            raise WorldConfigError("exposure and white_balance must be > 0 and vignetting in [0, 1)")
        if self.width < 16 or self.height < 16 or self.width > 8192 or self.height > 8192:
            raise WorldConfigError(f"image size {self.width}x{self.height} out of range 16..8192")
        if not (0 < self.rate_hz <= 1000):
            raise WorldConfigError(f"rate_hz must be in (0, 1000], got {self.rate_hz}")
        if self.n_frames < 1:
            raise WorldConfigError(f"n_frames must be >= 1, got {self.n_frames}")

    def intrinsics(self) -> np.ndarray:
        """3x3 K (float64); unspecified values are KITTI's, scaled to this image size."""
        sx, sy = self.width / KITTI_WIDTH, self.height / KITTI_HEIGHT
        s = min(sx, sy)  # keep square pixels when the aspect ratio differs
        fx = self.fx if self.fx is not None else KITTI_FX * s
        fy = self.fy if self.fy is not None else KITTI_FY * s
        cx = self.cx if self.cx is not None else (KITTI_CX + 0.5) * sx - 0.5
        cy = self.cy if self.cy is not None else (KITTI_CY + 0.5) * sy - 0.5
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def stamp_ns(self, index: int) -> int:
        """Capture stamp of frame ``index``, nanoseconds."""
        return int(self.start_stamp_ns + round(index * 1e9 / self.rate_hz))

    def to_dict(self) -> dict:
        """The config as a JSON-serialisable dict (manifest entries)."""
        d = asdict(self)
        d["white_balance"] = list(d["white_balance"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        """Inverse of :meth:`to_dict` (manifest entries); unknown keys are an error."""
        d = dict(d)
        if "white_balance" in d:
            d["white_balance"] = tuple(float(v) for v in d["white_balance"])
        return cls(**d)
