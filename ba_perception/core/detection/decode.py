"""Decode detector output maps into 3D boxes with the message's intrinsics (and the exact inverse, encode).

Cell convention at output stride ``s``: a network pixel coordinate ``c`` (pixel centres at integers)
maps to the continuous output-grid coordinate ``g = (c + 0.5) / s - 0.5``; an object's projected 3D
centre is assigned to cell ``round(g)`` (clamped into the grid) and the ``offset`` channel holds
``g - cell``. Everything geometric goes through :mod:`ba_perception.core.geometry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ba_perception.core import geometry as geo
from ba_perception.core.config import config_from_params
from ba_perception.core.detection.model import (
    CLASS_MEAN_SIZE_LWH,
    OUTPUT_STRIDE,
    REF_FOCAL_PX,
    REG_CHANNELS,
)
from ba_perception.core.detection.preprocess import Preprocess


class DecodeError(ValueError):
    """Raised when output maps or intrinsics have inconsistent shapes or invalid values."""


# Log-variance of log-depth that encodes an exactly known depth: the decoder's smallest relative
# depth std, exp(-20 / 2) = 4.5e-5 (depth confidence ~0.999). Training ignores this target.
EXACT_DEPTH_LOGVAR = -20.0
# Candidates overlapping a kept box above this 2D IoU count as cells that fired for the same object
# (box_agreement); chosen on the val split (docs/experiments.md).
QUALITY_CLUSTER_IOU = 0.3


@dataclass
class DecodeConfig:
    """Decoding parameters.

    Attributes:
        score_threshold: minimum final score kept (heatmap score x depth confidence x box agreement, in [0, 1]).
        max_detections: detections kept per image (highest final scores).
        samples_per_side: feature samples per box are a ``n x n`` grid (``n*n`` per object).
        sample_margin: fraction of the 2D box width/height left out at each side of the grid.
        yaw_std_rad: prior yaw standard deviation reported per object (the net has no yaw variance head).
        box_nms_iou: duplicates are removed by class-wise greedy NMS on the decoded 2D boxes of the
            candidate cells (keeps objects whose centres fall in adjacent cells): a lower-scored box
            of the same class overlapping a kept one above this 2D IoU is suppressed.
        candidate_top_k: highest heatmap scores per image taken as candidates before scoring and NMS
            (bounds decode time; cells below ``score_threshold`` are never candidates since the
            depth confidence is <= 1).
        depth_confidence_scale: the final score is ``heatmap x exp(-rel_depth_std / scale)`` with
            ``rel_depth_std = depth_std / z`` from the log-variance head (uncertainty-aware scoring as
            in GUPNet / MonoFlex); 0 disables it (score = heatmap score).
        box_vote_iou: ``box`` only; each kept detection's regression becomes the score-weighted mean
            over the candidates of its class whose 2D box overlaps it with IoU > this (box voting);
            0 disables it (the kept cell's own regression).
        box_quality_power: ``box`` only; the final score is multiplied by the kept detection's box
            agreement to this power: the score-weighted mean 2D IoU between its (voted) box and the
            same-class candidates overlapping it above ``QUALITY_CLUSTER_IOU`` (:func:`box_agreement`).
            A peak whose neighbouring cells disagree on the box is poorly localised, so it ranks
            lower (a localisation-quality score without an IoU head); 0 disables it.
        flip_test: run the network on the image and on its horizontal mirror and decode the mean
            of the two heatmaps and regressions (test-time flip, :func:`forward_flip_averaged`;
            the network sees each image twice). Read by the callers of the network, not by :func:`decode`.
    """

    score_threshold: float = 0.08
    max_detections: int = 50
    samples_per_side: int = 5
    sample_margin: float = 0.15
    yaw_std_rad: float = 0.2
    box_nms_iou: float = 0.5
    candidate_top_k: int = 200
    depth_confidence_scale: float = 0.03
    box_vote_iou: float = 0.6
    box_quality_power: float = 1.0
    flip_test: bool = True

    def __post_init__(self) -> None:
        if (self.depth_confidence_scale < 0 or self.box_quality_power < 0 or not 0 < self.box_nms_iou <= 1
                or not 0 <= self.box_vote_iou < 1):
            raise DecodeError("depth_confidence_scale and box_quality_power must be >= 0, box_nms_iou in (0, 1] "
                              "and box_vote_iou in [0, 1)")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DecodeConfig:
        """The fields present in ``params`` (e.g. detector_node's parameters), defaults for the rest.

        Raises:
            DecodeError: a negative scale or an IoU outside (0, 1].
        """
        return config_from_params(cls, params)


@dataclass
class Detections:
    """Decoded detections of one image; all tensors share the first dimension N.

    Attributes:
        scores: ``(N,)`` final scores in [0, 1] (heatmap score x depth confidence x box agreement, see :class:`DecodeConfig`).
        labels: ``(N,)`` int64 class indices into ``CLASSES``.
        box_2d: ``(N, 4)`` (x1, y1, x2, y2), original image pixels.
        center_uv: ``(N, 2)`` projected 3D centre, original pixels.
        center_cam: ``(N, 3)`` box centre in the camera optical frame, metres.
        size_lwh: ``(N, 3)`` (length, width, height), metres.
        yaw: ``(N,)`` KITTI rotation_y, radians.
        alpha: ``(N,)`` observation angle, radians.
        depth_std: ``(N,)`` standard deviation of z, metres (from the log-variance head).
        lateral_std: ``(N,)`` standard deviation across the ray, metres (half an output cell projected).
        yaw_std: ``(N,)`` radians (configured prior).
        embedding: ``(N, E)`` unit-norm appearance embeddings.
        sample_uv: ``(N, S, 2)`` feature sample positions, original pixels.
        descriptors: ``(N, S, D)`` unit-norm descriptors at ``sample_uv``.
    """

    scores: torch.Tensor
    labels: torch.Tensor
    box_2d: torch.Tensor
    center_uv: torch.Tensor
    center_cam: torch.Tensor
    size_lwh: torch.Tensor
    yaw: torch.Tensor
    alpha: torch.Tensor
    depth_std: torch.Tensor
    lateral_std: torch.Tensor
    yaw_std: torch.Tensor
    embedding: torch.Tensor
    sample_uv: torch.Tensor
    descriptors: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep: torch.Tensor) -> Detections:
        """Subset by boolean mask or index tensor."""
        return Detections(**{k: v[keep] for k, v in self.__dict__.items()})


def unflip_outputs(flipped: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap and regression of a horizontally mirrored network input, mapped back to the unmirrored image.

    Mirroring the ``nw``-wide network image maps pixel ``c`` to ``nw - 1 - c`` and output cell ``x``
    to ``w - 1 - x`` (``nw = stride * w``), whatever the letterbox padding. In the mirrored view the
    horizontal centre offset changes sign, the left and right box sides swap, and the observation
    angle becomes ``pi - alpha`` (sin kept, cos negated); depth, its variance and size are unchanged.
    """
    ch = REG_CHANNELS
    heat = flipped["heatmap"].flip(-1)
    reg = flipped["regression"].flip(-1).clone()
    reg[:, ch["offset"].start] = -reg[:, ch["offset"].start]
    left, right = ch["ltrb"].start, ch["ltrb"].start + 2
    reg[:, [left, right]] = reg[:, [right, left]]
    reg[:, ch["alpha"].start + 1] = -reg[:, ch["alpha"].start + 1]
    return heat, reg


def forward_flip_averaged(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Network outputs averaged over the image and its horizontal mirror.

    Network outputs for ``(B, 3, h, w)`` inputs ``x`` with test-time flip: the heatmap and the
    regression are the means over ``x`` and its horizontal mirror (:func:`unflip_outputs`); the
    appearance embedding and dense features are those of ``x``.

    A ``forward`` whose ``fixed_batch`` attribute is None (a backend that takes any batch size)
    runs once on the ``2B`` images; any other runs twice, mirror first, and its outputs are
    copied before the second call, since graph-replaying backends reuse their output buffers.
    """
    if getattr(forward, "fixed_batch", 1) is None:
        both = forward(torch.cat([x, x.flip(-1)]))
        B = x.shape[0]
        heat_f, reg_f = unflip_outputs({k: both[k][B:].float() for k in ("heatmap", "regression")})
        out = {k: v[:B] for k, v in both.items()}
    else:
        heat_f, reg_f = unflip_outputs({k: v.float().clone() for k, v in forward(x.flip(-1)).items() if k in ("heatmap", "regression")})
        out = dict(forward(x))
    out["heatmap"] = 0.5 * (out["heatmap"].float() + heat_f.to(out["heatmap"].device))
    out["regression"] = 0.5 * (out["regression"].float() + reg_f.to(out["regression"].device))
    return out


def network_outputs(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], x: torch.Tensor,
                    cfg: DecodeConfig) -> dict[str, torch.Tensor]:
    """Network outputs for decoding, flip-averaged when the config asks for it.

    The outputs :func:`decode` takes for ``(B, 3, h, w)`` inputs ``x``: flip-averaged
    (:func:`forward_flip_averaged`) when ``cfg.flip_test``, one forward pass otherwise.
    """
    return forward_flip_averaged(forward, x) if cfg.flip_test else forward(x)


def focal_net(K_net: torch.Tensor) -> torch.Tensor:
    """Geometric-mean focal length ``sqrt(fx * fy)`` of ``(*, 3, 3)`` network intrinsics, pixels."""
    return torch.sqrt(K_net[..., 0, 0] * K_net[..., 1, 1])


def net_to_grid(c_net: torch.Tensor, stride: int) -> torch.Tensor:
    """Network pixels -> continuous output-grid coordinates (same shape)."""
    return (c_net + 0.5) / stride - 0.5


def grid_to_net(g: torch.Tensor, stride: int) -> torch.Tensor:
    """Continuous output-grid coordinates -> network pixels (inverse of :func:`net_to_grid`)."""
    return (g + 0.5) * stride - 0.5


@dataclass
class EncodedObjects:
    """Regression targets of N objects for one image (inverse of decoding).

    Attributes:
        cell_xy: ``(N, 2)`` int64 heatmap cell (column, row).
        regression: ``(N, 13)`` targets in the ``REG_CHANNELS`` layout (``depth_logvar`` =
            ``EXACT_DEPTH_LOGVAR``: the ground truth depth is certain).
        center_grid: ``(N, 2)`` exact projected centre in grid coordinates (for heatmap rendering).
        box_grid_wh: ``(N, 2)`` 2D box size in grid cells.
        inside: ``(N,)`` bool, projected centre inside the network image and depth > 0.
    """

    cell_xy: torch.Tensor
    regression: torch.Tensor
    center_grid: torch.Tensor
    box_grid_wh: torch.Tensor
    inside: torch.Tensor


def encode_objects(
    labels: torch.Tensor,
    center_cam: torch.Tensor,
    size_lwh: torch.Tensor,
    yaw: torch.Tensor,
    box_2d: torch.Tensor,
    K: torch.Tensor,
    pre: Preprocess,
    grid_hw: tuple[int, int],
    stride: int = OUTPUT_STRIDE,
) -> EncodedObjects:
    """Encode ground-truth objects of one image into heatmap cells and regression targets.

    Args:
        labels: ``(N,)`` class indices.
        center_cam: ``(N, 3)`` box centres, camera optical frame, metres.
        size_lwh: ``(N, 3)`` metres.
        yaw: ``(N,)`` KITTI rotation_y, radians.
        box_2d: ``(N, 4)`` 2D boxes, original pixels.
        K: ``(3, 3)`` original intrinsics.
        pre: the preprocessing applied to the image.
        grid_hw: heatmap (rows, cols).
        stride: output stride in network pixels.
    """
    dt = center_cam.dtype
    K = K.to(dt)
    Kn = pre.K_net(K)
    c_net = geo.project_points(center_cam[:, None, :], Kn)[:, 0]
    g = net_to_grid(c_net, stride)
    h, w = grid_hw
    cell = torch.stack([g[:, 0].round().clamp(0, w - 1), g[:, 1].round().clamp(0, h - 1)], dim=-1)
    off = g - cell
    b_net = torch.cat([pre.to_net(box_2d[:, :2].to(dt)), pre.to_net(box_2d[:, 2:].to(dt))], dim=-1)
    ltrb = torch.stack(
        [c_net[:, 0] - b_net[:, 0], c_net[:, 1] - b_net[:, 1], b_net[:, 2] - c_net[:, 0], b_net[:, 3] - c_net[:, 1]], -1
    )
    ltrb_log = torch.log(ltrb.clamp(min=0.25) / stride)
    z = center_cam[:, 2]
    depth_code = torch.log(z.clamp(min=1e-3) * REF_FOCAL_PX / focal_net(Kn))
    mean = torch.tensor(CLASS_MEAN_SIZE_LWH, dtype=dt, device=center_cam.device)[labels]
    size_code = torch.log(size_lwh / mean)
    alpha = geo.observation_angle(center_cam, yaw)
    reg = torch.cat(
        [off, ltrb_log, depth_code[:, None], torch.full_like(z, EXACT_DEPTH_LOGVAR)[:, None], size_code,
         torch.stack([alpha.sin(), alpha.cos()], -1)],
        dim=-1,
    )
    nh, nw = pre.net_hw
    inside = (z > 0) & (c_net[:, 0] >= -0.5) & (c_net[:, 0] < nw - 0.5) & (c_net[:, 1] >= -0.5) & (c_net[:, 1] < nh - 0.5)
    wh = (b_net[:, 2:] - b_net[:, :2]) / stride
    return EncodedObjects(cell.long(), reg, g, wh, inside)


def _gather(maps: torch.Tensor, b: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Values ``(K, C)`` of ``(B, C, H, W)`` maps at (batch, row, col) index tensors ``(K,)``."""
    return maps[b, :, ys, xs]


def boxes_from_ltrb(c_net: torch.Tensor, ltrb_log: torch.Tensor, stride: int) -> torch.Tensor:
    """Decode ``ltrb`` side distances around centres into 2D boxes.

    2D boxes ``(*, 4)`` (x1, y1, x2, y2), network pixels, from centres ``(*, 2)`` and the ``ltrb``
    channels (log side distances in cells, ``(*, 4)``); with ``stride`` 1, boxes in cells.
    """
    ltrb = ltrb_log.clamp(max=10.0).exp() * stride
    return torch.cat([c_net - ltrb[..., :2], c_net + ltrb[..., 2:]], dim=-1)


def _relative_depth_std(depth_logvar: torch.Tensor) -> torch.Tensor:
    """``depth_std / z`` (same shape) from the log-variance of log-depth: ``exp(logvar / 2)``."""
    return (0.5 * depth_logvar).clamp(-10.0, 5.0).exp()


def box_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy non-maximum suppression of axis-aligned boxes within groups, without a Python loop per box.

    A box is kept unless a kept box of the same group with a higher score (ties: lower index) overlaps
    it with IoU > ``iou_threshold``. The greedy result is the unique fixed point of
    ``keep[j] = not any(keep[i] and suppresses[i, j] for i before j)`` in score order; iterating that
    map from ``keep = all`` fixes one more leading box per pass at least, and in practice converges
    in a few passes (the length of the longest suppression chain).

    Args:
        boxes: ``(N, 4)`` (x1, y1, x2, y2), any pixel units.
        scores: ``(N,)``.
        groups: ``(N,)`` integer ids; boxes only suppress boxes of the same id (e.g. image * C + class).
        iou_threshold: suppress above this IoU.

    Returns:
        ``(N,)`` bool mask of kept boxes, in the input order.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    bx, g = boxes[order], groups[order]
    sup = (geo.iou_2d(bx, bx) > iou_threshold) & (g[:, None] == g[None, :])
    sup = torch.triu(sup, diagonal=1)  # sup[i, j]: earlier (higher-scored) i suppresses j if i is kept
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n):
        new = ~(sup & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    out = torch.empty_like(keep)
    out[order] = keep
    return out


def box_vote(boxes: torch.Tensor, cells: torch.Tensor, reg: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
             keep: torch.Tensor, stride: int, iou_threshold: float) -> torch.Tensor:
    """Regression of the kept candidates averaged over their overlapping candidates (box voting).

    Each kept box's centre, box sides, log-depth variance, log-size and (sin, cos) of the
    observation angle become the score-weighted mean over the candidates of its group whose box
    overlaps it with IoU > ``iou_threshold`` (itself included), then are re-expressed relative to the
    kept cell. Log-depth is the mean weighted by score / variance (the precision-weighted mean
    under the depth head's own log-variance). Neighbouring cells see the object from shifted
    receptive fields, so their mean is a less noisy estimate than the single peak cell (as in box
    voting / weighted box fusion).

    Args:
        boxes: ``(N, 4)`` candidate boxes, network pixels.
        cells: ``(N, 2)`` (column, row) output cells, float.
        reg: ``(N, 13)`` regression values (``REG_CHANNELS`` layout).
        scores: ``(N,)`` vote weights.
        groups: ``(N,)`` ids; only candidates of the same id vote.
        keep: ``(N,)`` bool, the detections kept by NMS.
        stride: output stride, network pixels per cell.
        iou_threshold: votes come from boxes with IoU above this.

    Returns:
        ``(K, 13)`` voted regression of the ``K`` kept candidates, in the order of ``keep.nonzero()``.
    """
    kb, kc, kg = boxes[keep], cells[keep], groups[keep]
    voters = ((geo.iou_2d(kb, boxes) > iou_threshold) & (kg[:, None] == groups[None, :])).to(scores.dtype) * scores[None, :]
    w = voters / voters.sum(1, keepdim=True).clamp(min=1e-12)  # (K, N); the kept box always votes for itself
    rest = REG_CHANNELS["depth"].start  # depth, its log-variance, size and alpha do not depend on the cell
    centre = grid_to_net(cells + reg[:, REG_CHANNELS["offset"]], stride)
    mean = w @ torch.cat([centre, boxes, reg[:, rest:]], dim=-1)
    # log-depth: precision-weighted (score / variance of log-depth), so uncertain cells count less
    wz = voters / _relative_depth_std(reg[:, REG_CHANNELS["depth_logvar"]][:, 0])[None, :] ** 2
    depth = (wz / wz.sum(1, keepdim=True).clamp(min=1e-30)) @ reg[:, REG_CHANNELS["depth"]]
    c, b = mean[:, :2], mean[:, 2:6]
    ltrb = torch.cat([c - b[:, :2], b[:, 2:] - c], dim=-1).clamp(min=0.25) / stride
    return torch.cat([net_to_grid(c, stride) - kc, ltrb.log(), depth, mean[:, 7:]], dim=-1)


def box_agreement(kept: torch.Tensor, kept_groups: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                  groups: torch.Tensor) -> torch.Tensor:
    """How well the candidates around each kept detection agree on its box, in [0, 1].

    The score-weighted mean 2D IoU between each kept box and the candidates of its group that
    overlap it with IoU > ``QUALITY_CLUSTER_IOU`` (the cells that fired for the same object).

    Args:
        kept: ``(K, 4)`` kept (voted) boxes; kept_groups: ``(K,)`` their group ids.
        boxes: ``(N, 4)`` all candidate boxes; scores: ``(N,)`` their scores; groups: ``(N,)`` ids.

    Returns:
        ``(K,)`` agreement; 1 for a detection no other candidate overlaps and whose own cell is its box.
    """
    iou = geo.iou_2d(kept, boxes)
    w = ((iou > QUALITY_CLUSTER_IOU) & (kept_groups[:, None] == groups[None, :])).to(scores.dtype) * scores[None, :]
    return (w * iou).sum(1) / w.sum(1).clamp(min=1e-12)


def select_candidates(
    heat: torch.Tensor, reg: torch.Tensor, stride: int, cfg: DecodeConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick the detections of a batch: candidate cells, depth-confidence scoring, duplicate removal.

    Args:
        heat: ``(B, C, h, w)`` heatmap scores in [0, 1].
        reg: ``(B, 13, h, w)`` regression maps (``REG_CHANNELS`` layout).
        stride: output stride, network pixels per cell.
        cfg: ``box_nms_iou``, ``box_vote_iou``, ``box_quality_power``, ``candidate_top_k``,
            ``depth_confidence_scale``, ``score_threshold``, ``max_detections``.

    Returns:
        ``(M,)`` tensors: image index, row, column, class, final score; and ``(M, 13)`` the
        regression values at those cells (gathered once for all candidates). Per image sorted by
        descending score, at most ``max_detections`` each.
    """
    B, C, h, w = heat.shape
    dev = heat.device
    k = max(1, min(max(cfg.candidate_top_k, cfg.max_detections), C * h * w))
    raw, idx = heat.reshape(B, -1).topk(k, dim=1)  # (B, k)
    cls, pix = idx // (h * w), idx % (h * w)
    ys, xs = pix // w, pix % w
    n_reg = reg.shape[1]
    r = reg.reshape(B, n_reg, -1).gather(2, pix[:, None, :].expand(-1, n_reg, -1)).transpose(1, 2)  # (B, k, 13)
    # depth confidence <= 1, so a cell below the threshold can never reach it
    valid = raw >= cfg.score_threshold
    score = raw
    if cfg.depth_confidence_scale > 0:
        logvar = r[..., REG_CHANNELS["depth_logvar"]][..., 0]
        score = raw * torch.exp(-_relative_depth_std(logvar) / cfg.depth_confidence_scale)
        valid = valid & (score >= cfg.score_threshold)
    # class-wise box NMS of the candidate cells, box voting, box agreement
    cell = torch.stack([xs, ys], -1).to(r.dtype)
    boxes = boxes_from_ltrb(grid_to_net(cell + r[..., REG_CHANNELS["offset"]], stride), r[..., REG_CHANNELS["ltrb"]], stride)
    bidx = torch.arange(B, device=dev)[:, None].expand(B, k)
    vi = valid.nonzero(as_tuple=True)
    groups = (bidx * C + cls)[vi]
    keep = box_nms(boxes[vi], score[vi], groups, cfg.box_nms_iou)
    kept_at = (vi[0][keep], vi[1][keep])
    if cfg.box_vote_iou > 0:  # r is this call's own gather, so it can be written in place
        r[kept_at] = box_vote(boxes[vi], cell[vi], r[vi], score[vi], groups, keep, stride, cfg.box_vote_iou)
    if cfg.box_quality_power > 0:
        rk = r[kept_at]
        voted = boxes_from_ltrb(grid_to_net(cell[kept_at] + rk[:, REG_CHANNELS["offset"]], stride),
                                rk[:, REG_CHANNELS["ltrb"]], stride)
        quality = box_agreement(voted, groups[keep], boxes[vi], score[vi], groups)
        score = score.clone()
        score[kept_at] = score[kept_at] * quality ** cfg.box_quality_power
        keep = keep & (score[vi] >= cfg.score_threshold)  # the threshold applies to the final score
    valid[vi] = keep
    masked = torch.where(valid, score, torch.full_like(score, -1.0))
    top, order = masked.topk(min(cfg.max_detections, k), dim=1)
    sel = top >= 0
    bsel = torch.arange(B, device=dev)[:, None].expand_as(order)[sel]
    o = order[sel]
    return bsel, ys[bsel, o], xs[bsel, o], cls[bsel, o], score[bsel, o], r[bsel, o]


def decode(
    outputs: dict[str, torch.Tensor],
    K: torch.Tensor,
    pre: Preprocess,
    cfg: DecodeConfig | None = None,
) -> list[Detections]:
    """Decode network outputs of a batch into per-image detections in original pixels / camera frame.

    Args:
        outputs: ``heatmap`` (B, C, h, w), ``regression`` (B, 13, h, w), ``embedding`` (B, E, h, w) and
            ``features`` (B, D, h', w') as produced by the network (any backend; torch tensors).
        K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics of the ORIGINAL images (from the CameraInfo message).
        pre: the preprocessing that produced the network input from the original images.
        cfg: thresholds and sampling options.

    Returns:
        One :class:`Detections` per image, sorted by descending score.

    Raises:
        DecodeError: missing outputs, inconsistent shapes, or non-finite / non-positive intrinsics.
    """
    cfg = cfg or DecodeConfig()
    try:
        heat, reg, emb, feats = (outputs[k] for k in ("heatmap", "regression", "embedding", "features"))
    except KeyError as err:
        raise DecodeError(f"network outputs lack {err}") from err
    if heat.ndim != 4 or reg.shape[0] != heat.shape[0] or reg.shape[-2:] != heat.shape[-2:] or reg.shape[1] < 13:
        raise DecodeError(f"inconsistent output shapes heatmap {tuple(heat.shape)} regression {tuple(reg.shape)}")
    B, C, h, w = heat.shape
    nh, nw = pre.net_hw
    stride = nw // w
    if stride * w != nw or stride * h != nh:
        raise DecodeError(f"heatmap {h}x{w} does not divide network input {nh}x{nw}")
    dt, dev = torch.float32, heat.device
    K = K.to(dev, dt)
    if K.ndim == 2:
        K = K.expand(B, 3, 3)
    if K.shape != (B, 3, 3) or not torch.isfinite(K).all() or (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any():
        raise DecodeError(f"intrinsics must be finite (B, 3, 3) with positive focal lengths, got shape {tuple(K.shape)}")
    heat, reg, emb, feats = heat.to(dt), reg.to(dt), emb.to(dt), feats.to(dt)

    b, ys, xs, labels, scores, r = select_candidates(heat, reg, stride, cfg)
    Kn = pre.K_net(K)[b]  # (M, 3, 3)
    cell = torch.stack([xs, ys], -1).to(dt)
    c_net = grid_to_net(cell + r[:, REG_CHANNELS["offset"]], stride)
    b_net = boxes_from_ltrb(c_net, r[:, REG_CHANNELS["ltrb"]], stride)
    box_2d = torch.cat([pre.to_src(b_net[:, :2]), pre.to_src(b_net[:, 2:])], dim=-1)
    f = focal_net(Kn)
    z = r[:, REG_CHANNELS["depth"]][:, 0].clamp(-10.0, 10.0).exp() * f / REF_FOCAL_PX
    center_cam = geo.unproject_pixels(c_net[:, None, :], z[:, None], Kn)[:, 0]
    depth_std = z * _relative_depth_std(r[:, REG_CHANNELS["depth_logvar"]][:, 0])
    lateral_std = z * (0.5 * stride) / f
    mean = torch.tensor(CLASS_MEAN_SIZE_LWH, dtype=dt, device=dev)[labels.clamp(max=len(CLASS_MEAN_SIZE_LWH) - 1)]
    size = mean * r[:, REG_CHANNELS["size"]].clamp(-3.0, 3.0).exp()
    sc = r[:, REG_CHANNELS["alpha"]]
    alpha = torch.atan2(sc[:, 0], sc[:, 1])
    yaw = geo.yaw_from_observation_angle(alpha, center_cam)
    e = F.normalize(_gather(emb, b, ys, xs), dim=-1, eps=1e-6)
    uv_net, desc = sample_box_features(feats, b, b_net, cfg.samples_per_side, cfg.sample_margin, pre.net_hw)
    sample_uv = pre.to_src(uv_net)
    full = Detections(
        scores, labels, box_2d, pre.to_src(c_net), center_cam, size, yaw, geo.wrap_angle(alpha),
        depth_std, lateral_std, torch.full_like(z, cfg.yaw_std_rad), e, sample_uv, desc,
    )
    return [full.select(b == i) for i in range(B)]


def sample_box_features(
    feats: torch.Tensor,
    batch_index: torch.Tensor,
    boxes_net: torch.Tensor,
    n: int,
    margin: float,
    net_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample an ``n x n`` grid of descriptors inside each box.

    Args:
        feats: ``(B, D, H/s, W/s)`` unit-norm dense features.
        batch_index: ``(M,)`` image index of each box.
        boxes_net: ``(M, 4)`` boxes in network pixels.
        n: grid points per side; margin: fraction of the box left out at each side.
        net_hw: network input size (the features cover it exactly).

    Returns:
        ``(M, n*n, 2)`` sample positions in network pixels (clamped into the image) and
        ``(M, n*n, D)`` unit-norm descriptors.
    """
    M = boxes_net.shape[0]
    D = feats.shape[1]
    if M == 0:
        return boxes_net.new_zeros(0, n * n, 2), boxes_net.new_zeros(0, n * n, D)
    t = torch.linspace(margin, 1.0 - margin, n, device=boxes_net.device, dtype=boxes_net.dtype) if n > 1 else (
        torch.full((1,), 0.5, device=boxes_net.device, dtype=boxes_net.dtype))
    ty, tx = torch.meshgrid(t, t, indexing="ij")
    x1, y1, x2, y2 = boxes_net.unbind(-1)
    u = x1[:, None] + (x2 - x1)[:, None] * tx.reshape(1, -1)
    v = y1[:, None] + (y2 - y1)[:, None] * ty.reshape(1, -1)
    nh, nw = net_hw
    uv = torch.stack([u.clamp(0, nw - 1), v.clamp(0, nh - 1)], dim=-1)
    desc = sample_descriptors(feats, batch_index, uv, net_hw)
    return uv, desc


def sample_descriptors(
    feats: torch.Tensor, batch_index: torch.Tensor, uv_net: torch.Tensor, net_hw: tuple[int, int]
) -> torch.Tensor:
    """Bilinear descriptors ``(M, S, D)`` at ``(M, S, 2)`` network pixels of image ``batch_index`` ``(M,)``.

    The feature map covers the network image exactly (``align_corners=False`` geometry), so a
    network pixel ``u`` sits at normalised coordinate ``(u + 0.5) / W * 2 - 1``.
    """
    nh, nw = net_hw
    grid = torch.stack([(uv_net[..., 0] + 0.5) / nw * 2 - 1, (uv_net[..., 1] + 0.5) / nh * 2 - 1], dim=-1)
    M, S = grid.shape[:2]
    out = feats.new_zeros(M, S, feats.shape[1])
    # one grid_sample per image over all of its points (no copy of the feature map per object)
    for b in range(feats.shape[0]):
        sel = batch_index == b
        if not bool(sel.any()):
            continue
        g = grid[sel].reshape(1, -1, 1, 2).to(feats.dtype)
        d = F.grid_sample(feats[b : b + 1], g, mode="bilinear", align_corners=False, padding_mode="border")
        out[sel] = d[0, :, :, 0].transpose(0, 1).reshape(-1, S, feats.shape[1])
    return F.normalize(out, dim=-1, eps=1e-6)


def gaussian_radius(wh: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet heatmap Gaussian radius ``(N,)`` in cells for boxes ``(N, 2)`` of (w, h) cells."""
    w, h = wh[:, 0].clamp(min=0), wh[:, 1].clamp(min=0)
    a1, b1, c1 = 1.0, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).clamp(min=0)

