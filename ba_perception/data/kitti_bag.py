"""Convert one KITTI tracking sequence (image_02, calib, oxts, label_02) into a rosbag2 MCAP for replay-eval.

The bag has the topics of :mod:`ba_perception.data.bag` (``/camera/image_raw`` rgb8,
``/camera/camera_info`` with ``K = P2[:, :3]`` and the PNG size, ``/odom`` = the IMU pose from
the oxts by the devkit's Mercator recipe relative to frame 0, ``/tf_static`` base_link ->
camera_optical from the calibration, and ``/ground_truth/objects`` from ``label_02``), stamped
at ``rate_hz`` from ``start_stamp_ns``, so the normal replay scoring path applies unchanged.

Label levels become fractions for the difficulty filters of the scoring (which expect
fractions, as the world's ground truth carries): truncated 0/1/2 -> 0 / 0.325 / 0.75 and
occluded 0/1/2/3 -> 0 / 0.3 / 0.75 / 1.0 (the middle of each level's range in the exporter's
thresholds; level 3 "unknown" counts as fully occluded). So "moderate" keeps occluded <= 1 and
truncated 0, as KITTI's moderate does. A sequence without ``label_02/SEQ.txt`` gets empty
ground truth (replay then reports tracking output without scores against objects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ba_perception.data.kitti import KittiError, _seq_name, read_kitti

DEFAULT_START_STAMP_NS = 1_700_000_000_000_000_000  # the synthetic world's frame-0 stamp (never 0)
TRUNCATION_OF_LEVEL = {0: 0.0, 1: 0.325, 2: 0.75}
OCCLUSION_OF_LEVEL = {0: 0.0, 1: 0.3, 2: 0.75, 3: 1.0}


class KittiBagError(RuntimeError):
    """Raised when a KITTI sequence cannot be converted (missing folder or file, frame counts disagree)."""


@dataclass
class KittiBagInfo:
    """What a conversion wrote.

    Attributes:
        bag: the rosbag2 folder.  frames: frames written.  objects: ground-truth objects in all frames.
        width, height: image size, pixels.
    """

    bag: Path
    frames: int
    objects: int
    width: int
    height: int


def check_sequence(root: str | Path, seq: int | str) -> int:
    """Validate a KITTI tracking sequence's files; returns its number of frames.

    Raises:
        KittiBagError: missing ``image_02/SEQ`` (or no PNG in it), ``calib/SEQ.txt`` or
            ``oxts/SEQ.txt``, PNG names not ``000000.png`` ... consecutive, or image, oxts and
            label frame counts that disagree. Messages name the path and the fix.
    """
    root, name = Path(root), _seq_name(seq)
    if not root.is_dir():
        raise KittiBagError(f"KITTI root {str(root)!r} does not exist (expected image_02/, calib/, oxts/, label_02/ in it)")
    img_dir = root / "image_02" / name
    if not img_dir.is_dir():
        have = sorted(p.name for p in (root / "image_02").iterdir()) if (root / "image_02").is_dir() else []
        raise KittiBagError(f"missing image folder {img_dir}"
                            + (f" (sequences there: {', '.join(have[:10])})" if have else "; is this a KITTI tracking root?"))
    pngs = sorted(p.name for p in img_dir.glob("*.png"))
    if not pngs:
        raise KittiBagError(f"no PNG images in {img_dir}")
    want = [f"{k:06d}.png" for k in range(len(pngs))]
    if pngs != want:
        bad = next(p for p, w in zip(pngs, want) if p != w)
        raise KittiBagError(f"{img_dir}: images must be 000000.png .. {want[-1]} without gaps; found {bad}")
    for sub in ("calib", "oxts"):
        if not (root / sub / f"{name}.txt").is_file():
            raise KittiBagError(f"missing {root / sub / f'{name}.txt'} (needed for "
                                + ("the intrinsics P2)" if sub == "calib" else "the ego poses)"))
    oxts = [ln for ln in (root / "oxts" / f"{name}.txt").read_text().splitlines() if ln.strip()]
    if len(oxts) != len(pngs):
        raise KittiBagError(f"frame counts disagree: {len(pngs)} images in {img_dir} but {len(oxts)} oxts lines "
                            f"in {root / 'oxts' / f'{name}.txt'}")
    label = root / "label_02" / f"{name}.txt"
    if label.is_file():
        frames = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s", label.read_text(), re.M)]
        if frames and max(frames) >= len(pngs):
            raise KittiBagError(f"frame counts disagree: {label} labels frame {max(frames)} but there are "
                                f"only {len(pngs)} images")
    return len(pngs)


def kitti_to_bag(root: str | Path, seq: int | str, bag: str | Path, rate_hz: float = 10.0,
                 start_stamp_ns: int = DEFAULT_START_STAMP_NS) -> KittiBagInfo:
    """Write KITTI tracking sequence ``seq`` under ``root`` as a new rosbag2 MCAP folder ``bag``.

    Args:
        root: KITTI tracking root (``training/`` style: image_02/, calib/, oxts/, label_02/).
        seq: sequence number or 4-digit name.
        bag: bag folder to create (must not exist).
        rate_hz: frame rate of the stamps (KITTI: 10 Hz).
        start_stamp_ns: stamp of frame 0, nanoseconds.

    Returns:
        A :class:`KittiBagInfo`.

    Raises:
        KittiBagError: invalid sequence (see :func:`check_sequence`), unreadable files, or ``bag`` exists.
    """
    from ba_perception.data.bag import BagError, BagWriter

    if rate_hz <= 0:
        raise KittiBagError(f"rate must be > 0 Hz, got {rate_hz}")
    n = check_sequence(root, seq)
    frames = objects = 0
    size = (0, 0)
    try:
        with BagWriter(bag) as writer:
            for frame in read_kitti(root, seq, images=True, rate_hz=rate_hz, start_stamp_ns=start_stamp_ns):
                g = frame.objects
                g = replace(g, truncation=np.array([TRUNCATION_OF_LEVEL.get(int(t), 1.0) for t in g.truncation]),
                            occlusion=np.array([OCCLUSION_OF_LEVEL.get(int(o), 1.0) for o in g.occlusion]))
                writer.write(replace(frame, objects=g))
                frames += 1
                objects += len(g)
                size = (frame.image.shape[1], frame.image.shape[0])
    except (KittiError, BagError) as err:
        raise KittiBagError(str(err)) from err
    if frames != n:
        raise KittiBagError(f"wrote {frames} frames of {n}")
    return KittiBagInfo(Path(bag), frames, objects, *size)
