"""Detector training data from the synthetic world: split definitions, cached letterboxed frames, targets.

A split is a list of world sequences (preset, seed); from each we render frame pairs
``(k * pair_every, k * pair_every + pair_gap)`` so every frame has a partner for the
correspondence / embedding losses. Frames are letterboxed to the network size once and cached
as one ``.npz`` per split under ``data/detector/`` (keyed by a hash of the split definition and
the network size), so training reads them without rendering again.

Seeds: the detector trains on its own sequences (train 10000+i, val 20000+i); ``test`` is the
world's official test split (``ba_perception.data.synth.SPLITS``: seeds 200000+i, presets cycling
over all world presets), disjoint from both, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ba_perception.core.detection.decode import EncodedObjects, encode_objects, gaussian_radius
from ba_perception.core.detection.model import CLASSES, NUM_REG, OUTPUT_STRIDE, REG_CHANNELS
from ba_perception.core.detection.preprocess import Preprocess, apply_preprocess, to_chw_float

PRESET_CYCLE = ("urban", "highway", "parking_lot", "urban", "occlusion_stress")
SPLIT_SEED_BASE = {"train": 10000, "val": 20000, "test": 200_000}  # test == data.synth.SPLITS["test"]


class DataError(RuntimeError):
    """Raised when a split cannot be built or a cache file is unusable."""


@dataclass
class SplitSpec:
    """Which world frames make a split.

    Attributes:
        name: ``train``, ``val`` or ``test`` (selects the disjoint seed range).
        sequences: number of world sequences (presets cycle through ``PRESET_CYCLE``).
        pairs_per_sequence: frame pairs rendered per sequence.
        pair_every: frames between consecutive pairs.
        pair_gap: frames between the two frames of a pair (10 Hz world).
        width, height: rendered image size (KITTI 1242x375 by default).
        max_corr: ground-truth correspondences kept per frame pair.
    """

    name: str = "train"
    sequences: int = 40
    pairs_per_sequence: int = 20
    pair_every: int = 5
    pair_gap: int = 2
    width: int = 1242
    height: int = 375
    max_corr: int = 256
    presets: tuple[str, ...] = field(default_factory=lambda: PRESET_CYCLE)

    def key(self, net_hw: tuple[int, int]) -> str:
        """Short hash of the spec and network size (cache file name)."""
        d = asdict(self)
        d["net_hw"] = list(net_hw)
        d["presets"] = list(self.presets)
        from ba_perception.data.world.config import WORLD_VERSION

        d["world_version"] = WORLD_VERSION  # a cache rendered by another world version is not reused
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def seeds(self) -> list[tuple[str, int]]:
        """(preset, seed) of each sequence."""
        if self.name not in SPLIT_SEED_BASE:
            raise DataError(f"unknown split {self.name!r}; choose train, val or test")
        base = SPLIT_SEED_BASE[self.name]
        return [(self.presets[i % len(self.presets)], base + i) for i in range(self.sequences)]


@dataclass
class CachedSplit:
    """Letterboxed frames and ground truth of a split (numpy arrays, see :func:`build_split`)."""

    images: np.ndarray  # (N, h, w, 3) uint8 at network size
    K_src: np.ndarray  # (N, 3, 3) original intrinsics
    partner: np.ndarray  # (N,) index of the pair partner
    frame_meta: np.ndarray  # (N, 3) int64: sequence, frame index, seed
    obj_frame: np.ndarray  # (M,) frame of each object
    obj_label: np.ndarray  # (M,) class index
    obj_track: np.ndarray  # (M,) track id
    obj_center: np.ndarray  # (M, 3) camera frame, m
    obj_size: np.ndarray  # (M, 3) l, w, h
    obj_yaw: np.ndarray  # (M,) rotation_y
    obj_box: np.ndarray  # (M, 4) full-silhouette 2D box, original pixels (NaN: none)
    obj_occ: np.ndarray  # (M,)
    obj_trunc: np.ndarray  # (M,)
    corr_frame: np.ndarray  # (C,) frame a of each correspondence (partner = frame b)
    corr_uv_a: np.ndarray  # (C, 2) network pixels in frame a
    corr_uv_b: np.ndarray  # (C, 2) network pixels in frame b
    src_hw: tuple[int, int] = (375, 1242)
    net_hw: tuple[int, int] = (192, 640)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def preprocess(self) -> Preprocess:
        """The letterbox from the source to the network size."""
        return Preprocess.letterbox(self.src_hw, self.net_hw)

    def objects_of(self, i: int) -> np.ndarray:
        """Row indices of frame ``i``'s objects (obj arrays are sorted by frame)."""
        lo, hi = np.searchsorted(self.obj_frame, [i, i + 1])
        return np.arange(lo, hi)

    def corr_of(self, i: int) -> np.ndarray:
        """Indices of the surface correspondences of frame pair ``i``."""
        lo, hi = np.searchsorted(self.corr_frame, [i, i + 1])
        return np.arange(lo, hi)

    def save(self, path: Path) -> None:
        """Write the split to ``path`` (npz, atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays: dict[str, Any] = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        np.savez(tmp, **arrays, src_hw=np.array(self.src_hw), net_hw=np.array(self.net_hw))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CachedSplit:
        """Read a split written by :meth:`save`."""
        try:
            z = np.load(path, allow_pickle=False)
            d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read cache {path}: {err}; delete it to rebuild") from err
        d["src_hw"] = tuple(int(v) for v in d["src_hw"])
        d["net_hw"] = tuple(int(v) for v in d["net_hw"])
        return cls(**d)


def build_split(spec: SplitSpec, net_hw: tuple[int, int], cache_dir: str | Path = "data/detector",
                progress: bool = True) -> CachedSplit:
    """Render (or load from cache) a split letterboxed to ``net_hw``.

    Raises:
        DataError: unknown split or unreadable cache.
    """
    path = Path(cache_dir) / f"{spec.name}_{spec.key(net_hw)}.npz"
    if path.is_file():
        return CachedSplit.load(path)
    from ba_perception.data.world import World, WorldConfig, correspondences

    pre = Preprocess.letterbox((spec.height, spec.width), net_hw)
    images: list[np.ndarray] = []
    Ks: list[np.ndarray] = []
    partner: list[int] = []
    meta: list[Any] = []
    objs: dict[str, list] = {k: [] for k in ("frame", "label", "track", "center", "size", "yaw", "box", "occ", "trunc")}
    corr_f, corr_a, corr_b = [], [], []
    seeds = spec.seeds()
    n_frames = (spec.pairs_per_sequence - 1) * spec.pair_every + spec.pair_gap + 1
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds) * spec.pairs_per_sequence * 2, desc=f"render {spec.name}", disable=not progress,
                   unit="frame")
    except ImportError:  # pragma: no cover
        bar = None
    rng = np.random.default_rng(SPLIT_SEED_BASE.get(spec.name, 0))
    for si, (preset, seed) in enumerate(seeds):
        cfg = WorldConfig(preset=preset, seed=seed, width=spec.width, height=spec.height, n_frames=n_frames)
        with World(cfg) as world:
            for p in range(spec.pairs_per_sequence):
                ia, ib = p * spec.pair_every, p * spec.pair_every + spec.pair_gap
                fa, fb = world.render(ia), world.render(ib)
                base = len(images)
                for j, f in enumerate((fa, fb)):
                    x = apply_preprocess(to_chw_float(f.image), pre)
                    images.append((x[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy())
                    Ks.append(f.K)
                    partner.append(base + 1 - j)
                    meta.append((si, f.index, seed))
                    g = f.objects
                    n = len(g)
                    objs["frame"].append(np.full(n, base + j))
                    objs["label"].append(np.array([CLASSES.index(c) for c in g.class_label], np.int64))
                    objs["track"].append(g.track_id)
                    objs["center"].append(g.center_cam)
                    objs["size"].append(g.size_lwh)
                    objs["yaw"].append(g.rotation_y)
                    objs["box"].append(g.box_full)
                    objs["occ"].append(g.occlusion)
                    objs["trunc"].append(g.truncation)
                # GT correspondences a<->b, both directions stored as (frame, partner).
                common = np.intersect1d(fa.objects.track_id, fb.objects.track_id)
                ua, ub = [], []
                for tid in common:
                    _, a_uv, b_uv = correspondences(fa, fb, int(tid))
                    ua.append(a_uv)
                    ub.append(b_uv)
                if ua:
                    ua_all, ub_all = np.concatenate(ua), np.concatenate(ub)
                    if len(ua_all) > spec.max_corr:
                        sel = rng.choice(len(ua_all), spec.max_corr, replace=False)
                        ua_all, ub_all = ua_all[sel], ub_all[sel]
                    na = pre.to_net(torch.from_numpy(ua_all)).numpy()
                    nb = pre.to_net(torch.from_numpy(ub_all)).numpy()
                    corr_f += [np.full(len(na), base), np.full(len(na), base + 1)]
                    corr_a += [na, nb]
                    corr_b += [nb, na]
                if bar is not None:
                    bar.update(2)
    if bar is not None:
        bar.close()
    cat = np.concatenate
    order_c = np.argsort(cat(corr_f), kind="stable") if corr_f else np.zeros(0, np.int64)
    split = CachedSplit(
        images=np.stack(images), K_src=np.stack(Ks), partner=np.array(partner, np.int64), frame_meta=np.array(meta, np.int64),
        obj_frame=cat(objs["frame"]).astype(np.int64), obj_label=cat(objs["label"]), obj_track=cat(objs["track"]).astype(np.int64),
        obj_center=cat(objs["center"]), obj_size=cat(objs["size"]), obj_yaw=cat(objs["yaw"]),
        obj_box=cat(objs["box"]), obj_occ=cat(objs["occ"]), obj_trunc=cat(objs["trunc"]),
        corr_frame=cat(corr_f)[order_c].astype(np.int64) if corr_f else np.zeros(0, np.int64),
        corr_uv_a=cat(corr_a)[order_c] if corr_a else np.zeros((0, 2)),
        corr_uv_b=cat(corr_b)[order_c] if corr_b else np.zeros((0, 2)),
        src_hw=(spec.height, spec.width), net_hw=(int(net_hw[0]), int(net_hw[1])),
    )
    split.save(path)
    return split


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainObjectFilter:
    """Which ground-truth objects get heatmap peaks; the rest are ignored (no loss near them).

    Attributes:
        max_occlusion: objects more hidden than this are ignored.
        min_box_height_px: minimum full-silhouette box height, original pixels.
        max_depth_m: farther objects are ignored.
        area_radius: regression samples reach this many cells around an object's centre cell
            (at most its heatmap radius; 0 = the centre cell only).
    """

    max_occlusion: float = 0.8
    min_box_height_px: float = 10.0
    max_depth_m: float = 80.0
    area_radius: int = 1


def frame_targets(split: CachedSplit, i: int, flip: bool, filt: TrainObjectFilter) -> dict[str, torch.Tensor]:
    """Dense targets of frame ``i`` at output stride 8 (optionally horizontally flipped).

    Returns:
        ``heatmap`` (C, h, w) Gaussian peaks, ``ignore`` (h, w) 1 where loss is masked,
        ``ind`` (M,) flat cell index, ``cls`` (M,), ``reg`` (M, 13), ``track`` (M,) for the
        M trained objects.
    """
    nh, nw = split.net_hw
    h, w = nh // OUTPUT_STRIDE, nw // OUTPUT_STRIDE
    pre = split.preprocess
    rows = split.objects_of(i)
    K = torch.from_numpy(split.K_src[i])
    center = torch.from_numpy(split.obj_center[rows]).double()
    size = torch.from_numpy(split.obj_size[rows]).double()
    yaw = torch.from_numpy(split.obj_yaw[rows]).double()
    box = torch.from_numpy(split.obj_box[rows]).double()
    labels = torch.from_numpy(split.obj_label[rows])
    W_src = split.src_hw[1]
    if flip:
        # Mirror about the principal point column: x -> -x, rotation_y -> pi - ry, boxes mirrored in pixels
        # around cx, and the image is mirrored in network space (done by the caller), which equals a
        # source image mirrored about u = cx when the letterbox is symmetric; we mirror the intrinsics so
        # that cx' = W - 1 - cx keeps projections exact.
        K = K.clone()
        K[0, 2] = W_src - 1 - K[0, 2]
        center = center * center.new_tensor([-1.0, 1.0, 1.0])
        yaw = math.pi - yaw
        box = torch.stack([W_src - 1 - box[:, 2], box[:, 1], W_src - 1 - box[:, 0], box[:, 3]], -1)
    valid_box = torch.isfinite(box).all(-1)
    box_safe = torch.where(valid_box[:, None], box, torch.zeros_like(box))
    enc = encode_objects(labels, center, size, yaw, box_safe, K, pre, (h, w))
    occ = torch.from_numpy(split.obj_occ[rows])
    bh = box_safe[:, 3] - box_safe[:, 1]
    z = center[:, 2]
    train = valid_box & enc.inside & (occ <= filt.max_occlusion) & (bh >= filt.min_box_height_px) & (z < filt.max_depth_m) & (z > 0.5)
    ignore_obj = ~train & enc.inside & (z > 0.5)
    heat = torch.zeros(len(CLASSES), h, w)
    ignore = torch.zeros(h, w)
    radius = gaussian_radius(enc.box_grid_wh.float()).clamp(min=0).floor().long().clamp(min=0, max=12)
    ys, xs = torch.arange(h)[:, None].float(), torch.arange(w)[None, :].float()
    order = torch.argsort(z, descending=True)  # nearer objects drawn last win the cell
    taken: dict[int, int] = {}
    for k in order.tolist():
        cx, cy = enc.cell_xy[k].tolist()
        r = int(radius[k])
        sigma = (2 * r + 1) / 6.0
        g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma * sigma))
        g = torch.where(((xs - cx).abs() <= r) & ((ys - cy).abs() <= r), g, torch.zeros_like(g))
        if train[k]:
            heat[labels[k]] = torch.maximum(heat[labels[k]], g)
            taken[cy * w + cx] = k
        elif ignore_obj[k]:
            ignore = torch.maximum(ignore, (g > 0.05).float())
    keep = sorted(taken.values())
    ind = torch.tensor([int(enc.cell_xy[k, 1] * w + enc.cell_xy[k, 0]) for k in keep], dtype=torch.long)
    ignore = ignore * (heat.amax(0) < 0.5).float()  # never ignore where a trained object peaks
    kk = torch.tensor(keep, dtype=torch.long)
    area = _area_samples(enc, [k for k in order.tolist() if train[k]], radius, (h, w), filt.area_radius)
    return {
        "heatmap": heat,
        "ignore": ignore,
        "ind": ind,
        "cls": labels[kk] if keep else torch.zeros(0, dtype=torch.long),
        "reg": enc.regression[kk].float() if keep else torch.zeros(0, NUM_REG),
        "track": torch.from_numpy(split.obj_track[rows])[kk] if keep else torch.zeros(0, dtype=torch.long),
        **area,
    }


def _area_samples(enc: EncodedObjects, objects: list[int], radius: torch.Tensor, grid_hw: tuple[int, int], area_radius: int
                  ) -> dict[str, torch.Tensor]:
    """Regression samples in each trained object's centre area (TTF-style), Gaussian-weighted.

    Every cell within ``min(area_radius, peak radius)`` cells of an object's centre cell regresses
    that object, with the sub-cell offset taken from that cell; a cell shared by two objects belongs
    to the one whose heatmap Gaussian is larger there (nearer on ties, ``objects`` is far to near).
    More supervised cells per object means more regression signal per image, and the cells next to
    a peak, which box voting averages at decode time, learn the object's box instead of guessing it.

    Returns:
        ``area_ind`` (S,) flat cell index, ``area_reg`` (S, 13) targets, ``area_weight`` (S,), summing to 1 per object.
    """
    h, w = grid_hw
    objs = torch.tensor(objects, dtype=torch.long)
    d = torch.arange(-area_radius, area_radius + 1)
    dy, dx = (v.flatten() for v in torch.meshgrid(d, d, indexing="ij"))  # (P,) window offsets
    x, y = enc.cell_xy[objs, :1] + dx, enc.cell_xy[objs, 1:] + dy  # (M, P)
    r = radius[objs, None].clamp(max=area_radius)
    ok = (dx.abs() <= r) & (dy.abs() <= r) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    sigma = (2 * radius[objs, None] + 1).double() / 6.0
    g = torch.exp(-(dx**2 + dy**2).double() / (2 * sigma * sigma))[ok]
    rank = torch.arange(len(objs))[:, None].expand_as(ok)[ok]  # position in far-to-near order
    cand = (y * w + x)[ok]
    best = torch.zeros(h * w, dtype=torch.float64).scatter_reduce(0, cand, g, "amax")
    top = g == best[cand]
    nearest = torch.full((h * w,), -1).scatter_reduce(0, cand[top], rank[top], "amax")
    win = top & (rank == nearest[cand])
    order = torch.argsort(cand[win])
    cells, k = cand[win][order], objs[rank[win][order]]
    reg = enc.regression[k].clone()
    xy = torch.stack([cells % w, cells // w], -1).to(reg.dtype)
    reg[:, REG_CHANNELS["offset"]] = (enc.center_grid[k] - xy).to(reg.dtype)  # projected centre relative to this cell
    g = best[cells]
    per_object = torch.zeros(len(enc.regression), dtype=g.dtype).index_add_(0, k, g)
    # each object weighs as much as its single centre cell did, so near (large) objects do not dominate
    return {"area_ind": cells, "area_reg": reg.float(), "area_weight": (g / per_object[k]).float()}
