"""Detector training losses: CenterNet focal loss, 3D regression (Laplacian depth NLL), contrastive features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ba_perception.core.detection.decode import boxes_from_ltrb
from ba_perception.core.detection.model import REG_CHANNELS


def focal_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet penalty-reduced focal loss, normalised by the number of peaks.

    Args:
        logits: ``(B, C, h, w)`` heatmap logits.
        target: ``(B, C, h, w)`` Gaussian targets (1 at object centres).
        ignore: ``(B, h, w)`` 1 where the loss is masked (ignored objects).
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = (1 - pos) * (1 - ignore[:, None])
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p**alpha * (1 - target) ** beta * neg
    n = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def regression_losses(reg_pred: torch.Tensor, reg_target: torch.Tensor, weight: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """Per-term losses on ``(M, 13)`` predicted vs target regression vectors at object cells.

    Depth uses a Laplacian negative log-likelihood on log-depth with scale ``b = exp(s / 2) / sqrt(2)``
    (so ``exp(s / 2)`` is the standard deviation the decoder reports): ``sqrt(2) |dz| exp(-s / 2) + s / 2``.
    ``box_iou`` is the GIoU loss of the 2D box the cell decodes to (offset + ltrb), which rewards the
    overlap that AP at IoU 0.7 counts rather than per-side log errors. ``weight`` ``(M,)`` weighs the
    samples (default: all 1); every term is a weighted mean over samples.
    """
    if reg_pred.shape[0] == 0:
        z = reg_pred.sum() * 0.0
        return {k: z for k in ("offset", "ltrb", "box_iou", "depth", "size", "alpha")}
    c = REG_CHANNELS
    w = torch.ones_like(reg_pred[:, 0]) if weight is None else weight.to(reg_pred)
    w = w / w.sum().clamp(min=1e-12)

    def l1(ch: str) -> torch.Tensor:
        return ((reg_pred[:, c[ch]] - reg_target[:, c[ch]]).abs().mean(1) * w).sum()

    def cell_box(reg: torch.Tensor) -> torch.Tensor:  # in cells, relative to the sample's own cell
        return boxes_from_ltrb(reg[:, c["offset"]], reg[:, c["ltrb"]], 1)

    d = (reg_pred[:, c["depth"]] - reg_target[:, c["depth"]]).abs()[:, 0]
    s = reg_pred[:, c["depth_logvar"]][:, 0].clamp(-10, 10)
    depth_nll = math.sqrt(2.0) * d * torch.exp(-0.5 * s) + 0.5 * s
    # plain L1 too, so depth learns before the variance settles
    return {
        "offset": l1("offset"),
        "ltrb": l1("ltrb"),
        "box_iou": ((1.0 - generalized_iou(cell_box(reg_pred), cell_box(reg_target))) * w).sum(),
        "depth": ((depth_nll + d) * w).sum(),
        "size": l1("size"),
        "alpha": l1("alpha"),
    }


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU ``(M,)`` of paired boxes ``(M, 4)`` (x1, y1, x2, y2); 1 for identical boxes."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    union = (area_a + area_b - inter).clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1).clamp(min=1e-9)
    return inter / union - (hull - union) / hull


def info_nce(desc_a: torch.Tensor, desc_b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE over ``(N, D)`` unit descriptors where row i of a matches row i of b.

    With unit-norm descriptors, maximising the cosine of true matches against the other samples is
    the contrastive form of BA-Det's featuremetric objective (cosine distance of the same surface
    point seen in two frames).
    """
    if desc_a.shape[0] < 2:
        return desc_a.sum() * 0.0
    logits = desc_a @ desc_b.t() / temperature
    tgt = torch.arange(desc_a.shape[0], device=desc_a.device)
    return 0.5 * (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.t(), tgt))


def embedding_loss(emb_a: torch.Tensor, track_a: torch.Tensor, emb_b: torch.Tensor, track_b: torch.Tensor,
                   temperature: float = 0.1) -> torch.Tensor:
    """Cross-frame identity loss: each object of frame a should pick its own track in frame b."""
    if emb_a.shape[0] == 0 or emb_b.shape[0] < 2:
        return emb_a.sum() * 0.0
    same = track_a[:, None] == track_b[None, :]
    has = same.any(1)
    if not has.any():
        return emb_a.sum() * 0.0
    logits = emb_a[has] @ emb_b.t() / temperature
    return F.cross_entropy(logits, same[has].float().argmax(1))
