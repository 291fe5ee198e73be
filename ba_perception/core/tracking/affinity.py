"""Association affinities between predicted tracks and detections: gating, node and edge terms.

Node affinity (one track, one detection) combines 3D Mahalanobis distance under the predicted
covariance, appearance cosine similarity and 2D IoU. Edge affinity (two tracks, two detections)
scores how well the relative 3D position of two tracks agrees with that of two detections, the
structural term of graph matching (GMTracker / BA2-Track); it can also (or instead) compare the
image layout of the two tracks' last boxes with that of the two detections' boxes, which is
precise where monocular depth is not. Frames: 3D terms in ``odom``, image terms in pixels.
"""

from __future__ import annotations

import numpy as np


class AffinityError(ValueError):
    """Raised when affinity inputs have inconsistent shapes."""


def iou_2d_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` of ``(N, 4)`` and ``(M, 4)`` pixel boxes ``(x1, y1, x2, y2)``.

    Numpy twin of :func:`ba_perception.core.geometry.iou_2d` (same formula, no torch overhead
    in the tracker's hot path). Rows with NaN give IoU 0.
    """
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(-1)
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)
    return np.nan_to_num(iou, nan=0.0)


def pair_iou_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU ``(K,)`` of ``(K, 4)`` box pairs (``a[k]`` with ``b[k]``); NaN rows give 0."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(-1)
    return np.nan_to_num(inter / np.maximum(area_a + area_b - inter, 1e-12), nan=0.0)


def centre_dist2(pred_pos: np.ndarray, det_pos: np.ndarray) -> np.ndarray:
    """``(T, N)`` squared distances (m^2) between ``(T, 3)`` and ``(N, 3)`` centres."""
    diff = det_pos[None, :, :] - pred_pos[:, None, :]
    return np.einsum("tnk,tnk->tn", diff, diff)


def gate_3d(
    pred_pos: np.ndarray,
    pred_cov: np.ndarray,
    det_pos: np.ndarray,
    det_cov: np.ndarray,
    allowed: np.ndarray,
    chi2_gate: float,
    max_dist_m: float,
    dist2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (track, detection) pairs inside the 3D gate and their Mahalanobis distance.

    A cheap Euclidean pre-gate (``|d| <= min(max_dist_m, sqrt(chi2 * trace(S)))``, an upper bound
    of the ellipsoid since ``lambda_max(S) <= trace(S)``) keeps the 3x3 solves to few pairs.

    Args:
        pred_pos: ``(T, 3)`` predicted centres; pred_cov: ``(T, 3, 3)`` their covariance, m^2.
        det_pos: ``(N, 3)`` detected centres; det_cov: ``(N, 3, 3)`` measurement covariance.
        allowed: ``(T, N)`` bool, pairs that may match at all (same class, ...).
        chi2_gate: gate on the squared Mahalanobis distance (3 dof; 11.34 is 99%).
        max_dist_m: hard cap on the Euclidean distance, metres.
        dist2: ``(T, N)`` squared centre distances if the caller has them already (m^2).

    Returns:
        ``(ti, di, d2)``: track and detection indices of candidates and squared distances.
    """
    if dist2 is None:
        dist2 = centre_dist2(pred_pos, det_pos)
    bound2 = chi2_gate * (np.trace(pred_cov, axis1=1, axis2=2)[:, None] + np.trace(det_cov, axis1=1, axis2=2)[None, :])
    pre = allowed & (dist2 <= np.minimum(bound2, max_dist_m**2))
    ti, di = np.nonzero(pre)
    if ti.size == 0:
        return ti, di, np.zeros(0)
    S = pred_cov[ti] + det_cov[di]
    d = det_pos[di] - pred_pos[ti]
    sol = np.linalg.solve(S, d[:, :, None])[:, :, 0]
    d2 = np.einsum("ki,ki->k", d, sol)
    keep = d2 <= chi2_gate
    return ti[keep], di[keep], d2[keep]


def cosine_matrix(
    emb_a: np.ndarray, has_a: np.ndarray, emb_b: np.ndarray, has_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity ``(T, N)`` of L2-normalised embeddings and the mask where both exist."""
    if emb_a.shape[1] != emb_b.shape[1]:
        raise AffinityError(f"embedding sizes differ: {emb_a.shape[1]} vs {emb_b.shape[1]}")
    both = has_a[:, None] & has_b[None, :]
    cos = np.where(both, emb_a @ emb_b.T, 0.0)
    return cos, both


def node_affinity(
    d2: np.ndarray,
    chi2_gate: float,
    cos: np.ndarray | None,
    has_cos: np.ndarray | None,
    iou: np.ndarray | None,
    has_iou: np.ndarray | None,
    w_3d: float,
    w_app: float,
    w_iou: float,
) -> np.ndarray:
    """Node affinity in ``[0, 1]`` per candidate pair: weighted mean of the available terms.

    Terms: ``s_3d = 1 - d2 / chi2_gate``; ``s_app = max(cos, 0)``; ``s_iou = IoU``. A term that
    is missing for a pair (no embedding, no usable 2D box) drops out of the mean rather than
    counting as zero, so detections without embeddings still associate on geometry.
    """
    num = w_3d * np.clip(1.0 - d2 / chi2_gate, 0.0, 1.0)
    den = np.full_like(num, w_3d)
    if cos is not None and has_cos is not None and w_app > 0:
        num = num + np.where(has_cos, w_app * np.clip(cos, 0.0, 1.0), 0.0)
        den = den + np.where(has_cos, w_app, 0.0)
    if iou is not None and has_iou is not None and w_iou > 0:
        num = num + np.where(has_iou, w_iou * iou, 0.0)
        den = den + np.where(has_iou, w_iou, 0.0)
    return num / np.maximum(den, 1e-12)


def edge_affinity_batch(
    rel_tracks: np.ndarray,
    rel_dets: np.ndarray,
    node: np.ndarray,
    gate: np.ndarray,
    sigma_m: float,
    w_edge: float,
    cov_tracks: np.ndarray | None = None,
    cov_dets: np.ndarray | None = None,
    image_sq: np.ndarray | None = None,
) -> np.ndarray:
    """Affinity matrices ``(B, n2*n1, n2*n1)`` of padded graph-matching problems.

    Index convention is pygmtools' column-major vectorisation: pair (track i, detection a) is
    entry ``a * n1max + i``. Diagonal = node affinity; off-diagonal for pairs (i, a), (j, b) with
    ``i != j``, ``a != b`` and both gated:
    ``w_edge * exp(-|(p_i - p_j) - (q_a - q_b)|^2 / (2 sigma^2))``, p predicted track centres,
    q detected centres.

    Args:
        rel_tracks: ``(B, n1, n1, 3)`` ``p_i - p_j``. rel_dets: ``(B, n2, n2, 3)`` ``q_a - q_b``.
        node: ``(B, n1, n2)`` node affinities. gate: ``(B, n1, n2)`` bool candidate mask.
        sigma_m: tolerance of relative-position disagreement, metres.
        w_edge: weight of one edge relative to a node term.
        cov_tracks, cov_dets: optional ``(B, n1, 3, 3)`` / ``(B, n2, 3, 3)`` position covariances.
            When given, the disagreement is measured as a Mahalanobis distance under
            ``sigma^2 I + C_i + C_j + R_a + R_c`` (independent errors of the four centres; an
            error shared by the whole frame cancels in both differences), i.e.
            ``w_edge * exp(-d^2 / 2)``.
        image_sq: optional ``(B, n2, n1, n2, n1)`` normalised squared disagreement of the image
            layout (:func:`image_edge_sq`, NaN where unknown); where known it replaces the 3D
            term's ``d^2 / sigma^2``.
    """
    B, n1, n2 = node.shape
    # diff[b, a, i, c, j] = (p_i - p_j) - (q_a - q_c)
    diff = rel_tracks[:, None, :, None, :, :] - rel_dets[:, :, None, :, None, :]
    if cov_tracks is None or cov_dets is None:
        sq = np.einsum("...k,...k->...", diff, diff) / sigma_m**2
    else:
        ct = cov_tracks[:, :, None, :, :] + cov_tracks[:, None, :, :, :]  # (B, i, j, 3, 3)
        cd = cov_dets[:, :, None, :, :] + cov_dets[:, None, :, :, :]  # (B, a, c, 3, 3)
        S = ct[:, None, :, None, :, :, :] + cd[:, :, None, :, None, :, :] + sigma_m**2 * np.eye(3)
        sol = np.linalg.solve(S, diff[..., None])[..., 0]
        sq = np.einsum("...k,...k->...", diff, sol)
    if image_sq is not None:
        known = np.isfinite(image_sq)
        sq = np.where(known, image_sq, sq)
    e = w_edge * np.exp(-0.5 * sq)
    g = gate.transpose(0, 2, 1)  # (B, n2, n1): [b, a, i]
    e = e * g[:, :, :, None, None] * g[:, None, None, :, :]
    eye1 = np.eye(n1, dtype=bool)
    eye2 = np.eye(n2, dtype=bool)
    same = eye2[:, None, :, None] | eye1[None, :, None, :]  # a == c or i == j
    e = np.where(same[None], 0.0, e)
    K = e.reshape(B, n1 * n2, n1 * n2)
    diag = np.where(gate, node, 0.0).transpose(0, 2, 1).reshape(B, n1 * n2)
    idx = np.arange(n1 * n2)
    K[:, idx, idx] = diag
    return K


def image_edge_sq(
    box_tracks: np.ndarray, ok_tracks: np.ndarray, box_dets: np.ndarray, ok_dets: np.ndarray, sigma_rel: float
) -> np.ndarray:
    """Squared disagreement ``(B, n2, n1, n2, n1)`` of the image layout of padded QAPs, NaN where unknown.

    For tracks ``i, j`` (their last image boxes) and detections ``a, c``:
    ``|(u_i - u_j) - (u_a - u_c)|^2 / (sigma_rel * s)^2`` with ``u`` box centres (pixels) and
    ``s`` the mean height of the four boxes. Image offsets between objects are precise (a few
    pixels) where monocular depth is not, and motion shared by neighbouring objects (ego
    rotation, the flow of similar depths) cancels in the difference. Only meaningful for tracks
    whose box is from the previous frame; ``ok_tracks`` says which.

    Args:
        box_tracks: ``(B, n1, 4)`` and box_dets: ``(B, n2, 4)`` pixel boxes ``(x1, y1, x2, y2)``.
        ok_tracks: ``(B, n1)`` and ok_dets: ``(B, n2)`` bool, box usable.
        sigma_rel: tolerance as a fraction of the box height.
    """
    ut = 0.5 * (box_tracks[..., :2] + box_tracks[..., 2:])
    ud = 0.5 * (box_dets[..., :2] + box_dets[..., 2:])
    ht = np.where(ok_tracks, box_tracks[..., 3] - box_tracks[..., 1], np.nan)
    hd = np.where(ok_dets, box_dets[..., 3] - box_dets[..., 1], np.nan)
    rel_t = ut[:, :, None, :] - ut[:, None, :, :]  # (B, i, j, 2)
    rel_d = ud[:, :, None, :] - ud[:, None, :, :]  # (B, a, c, 2)
    diff = rel_t[:, None, :, None, :, :] - rel_d[:, :, None, :, None, :]  # (B, a, i, c, j, 2)
    hs_t = ht[:, :, None] + ht[:, None, :]  # (B, i, j)
    hs_d = hd[:, :, None] + hd[:, None, :]  # (B, a, c)
    s = 0.25 * (hs_t[:, None, :, None, :] + hs_d[:, :, None, :, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("...k,...k->...", diff, diff) / (sigma_rel * np.maximum(s, 1.0)) ** 2
