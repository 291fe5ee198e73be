"""Camera rigs of world v3: named families of image size, field of view, mounting and appearance.

Each sequence draws one rig (:func:`draw_rig`) from the families of its domain: ``train`` rigs
(used by the train, val and in-distribution test splits; KITTI's rig is one of them) or
``cross`` rigs (test_cross only), whose image sizes, horizontal fields of view and camera heights
lie outside the training rigs' values. Within a family the focal length, principal point,
height, forward offset, pitch, roll and the appearance (exposure, white balance, noise, blur,
vignetting) are drawn per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ba_perception.data.world.config import KITTI_FX, KITTI_HEIGHT, KITTI_WIDTH, WorldConfig


@dataclass(frozen=True)
class RigFamily:
    """Ranges one rig family draws from (``(lo, hi)`` uniform; sets = one of).

    Attributes:
        size: (width, height) pixels.  hfov_deg: horizontal field of view ranges (one is
            picked, then a value in it).  height_m: camera height ranges.  forward_m: camera ahead
            of base_link.  pitch_deg, roll_deg: mounting angle ranges (symmetric).
        pp_offset: principal point offset as a fraction of (width, height), drawn in +-range.
        exact: KITTI: no geometric jitter at all (K, height and forward offset as KITTI's).
    """

    size: tuple[int, int]
    hfov_deg: tuple[tuple[float, float], ...]
    height_m: tuple[tuple[float, float], ...]
    forward_m: tuple[float, float] = (0.5, 2.0)
    pitch_deg: float = 2.5
    roll_deg: float = 1.5
    pp_offset: tuple[float, float] = (0.03, 0.05)
    exact: bool = False


KITTI_HFOV_DEG = math.degrees(2 * math.atan((KITTI_WIDTH / 2) / KITTI_FX))
RIG_FAMILIES: dict[str, dict[str, RigFamily]] = {
    "train": {
        "kitti": RigFamily((KITTI_WIDTH, KITTI_HEIGHT), ((KITTI_HFOV_DEG, KITTI_HFOV_DEG),), ((1.65, 1.65),), (1.2, 1.2),
                           0.0, 0.0, (0.0, 0.0), exact=True),
        "dash_720p": RigFamily((1280, 720), ((55.0, 90.0),), ((1.3, 1.6),)),
        "cam_4x3": RigFamily((1024, 768), ((50.0, 75.0),), ((1.4, 1.8),)),
        "wide_2p4": RigFamily((1440, 600), ((65.0, 90.0),), ((1.35, 1.8),)),
    },
    "cross": {
        "x_1080p": RigFamily((1920, 1080), ((92.0, 100.0),), ((1.2, 1.3),)),
        "x_vga": RigFamily((640, 480), ((45.0, 49.0),), ((1.85, 2.0),)),
        "x_ultrawide": RigFamily((1600, 485), ((92.0, 100.0),), ((1.85, 2.0), (1.2, 1.3))),
    },
}


def family(name: str) -> RigFamily:
    """The rig family called ``name`` (any domain); KeyError names the choices."""
    for fams in RIG_FAMILIES.values():
        if name in fams:
            return fams[name]
    raise KeyError(f"unknown rig {name!r}; known: {', '.join(n for f in RIG_FAMILIES.values() for n in f)}")


def draw_rig(base: WorldConfig, rig: str, seed: int) -> WorldConfig:
    """``base`` with the camera and appearance of one draw of family ``rig`` (deterministic in ``seed``)."""
    fam = family(rig)
    rng = np.random.default_rng([seed, 0x716])
    W, H = fam.size

    def pick(ranges: tuple[tuple[float, float], ...]) -> float:
        lo, hi = ranges[int(rng.integers(len(ranges)))]
        return float(rng.uniform(lo, hi))

    hfov = pick(fam.hfov_deg)
    height = pick(fam.height_m)
    fwd = float(rng.uniform(*fam.forward_m))
    pitch = float(rng.uniform(-fam.pitch_deg, fam.pitch_deg))
    roll = float(rng.uniform(-fam.roll_deg, fam.roll_deg))
    du, dv = (float(rng.uniform(-o, o)) for o in fam.pp_offset)
    exposure = float(rng.uniform(0.75, 1.25))
    r, g, b = (float(v) for v in rng.uniform(0.9, 1.1, 3))
    wb = (r, g, b)
    noise = float(rng.uniform(1.0, 4.0))
    blur = int(rng.choice([0, 0, 0, 1]))
    vignetting = float(rng.uniform(0.0, 0.35))
    if fam.exact:
        return replace(base, rig=rig, width=W, height=H, fx=None, fy=None, cx=None, cy=None, camera_height_m=1.65,
                       camera_forward_m=1.2, pitch_deg=0.0, roll_deg=0.0, exposure=exposure, white_balance=wb,
                       noise_std=noise, blur_px=blur, vignetting=vignetting)
    f = (W / 2) / math.tan(math.radians(hfov) / 2)
    return replace(base, rig=rig, width=W, height=H, fx=f, fy=f, cx=(W - 1) / 2 + du * W, cy=(H - 1) / 2 + dv * H,
                   camera_height_m=height, camera_forward_m=fwd, pitch_deg=pitch, roll_deg=roll, exposure=exposure,
                   white_balance=wb, noise_std=noise, blur_px=blur, vignetting=vignetting)
