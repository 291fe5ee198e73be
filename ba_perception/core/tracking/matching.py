"""Assignment solvers: linear (Hungarian) and graph matching (quadratic assignment) with projection.

Graph matching solves ``max_x x^T K x`` over (relaxed) assignment matrices. ``rrwm`` here is a
batched numpy re-implementation of Reweighted Random Walk Matching (Cho et al., ECCV 2010) that
follows pygmtools' ``rrwm`` step for step but with a plain-exp Sinkhorn: pygmtools 0.6's numpy
backend spends ~45 ms per call in scipy's ``logsumexp`` dispatch, far over a real-time budget.
pygmtools' own RRWM, IPFP and spectral matching stay selectable (``pygm_rrwm``, ``pygm_ipfp``,
``pygm_sm``) and the tests check our RRWM against theirs.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

QAP_SOLVERS = ("rrwm", "pygm_rrwm", "pygm_ipfp", "pygm_sm")


class MatchingError(ValueError):
    """Raised for an unknown solver or inconsistent problem shapes."""


def _sinkhorn(s: np.ndarray, mask: np.ndarray, iters: int) -> np.ndarray:
    """Alternate row/column normalisation of positive ``(B, n2, n1)`` matrices; padding stays 0."""
    s = s * mask
    for _ in range(iters):
        s /= s.sum(axis=2, keepdims=True) + 1e-30
        s /= s.sum(axis=1, keepdims=True) + 1e-30
    return s


def rrwm(
    K: np.ndarray,
    n1: np.ndarray,
    n2: np.ndarray,
    max_iter: int = 50,
    sk_iter: int = 20,
    alpha: float = 0.2,
    beta: float = 30.0,
    tol: float = 1e-5,
) -> np.ndarray:
    """Reweighted random walk graph matching on a batch of padded problems.

    Args:
        K: ``(B, n1max*n2max, n1max*n2max)`` affinity, column-major pair index ``a * n1max + i``.
        n1, n2: ``(B,)`` real sizes of graph 1 (tracks) and graph 2 (detections).
        max_iter, sk_iter, alpha, beta, tol: as in pygmtools (``beta`` sharpens the Sinkhorn jump).

    Returns:
        Soft assignment ``(B, n1max, n2max)``, zero on padding.
    """
    B, N, _ = K.shape
    n1max, n2max = int(max(n1.max(), 1)), int(max(n2.max(), 1))
    if N != n1max * n2max:
        raise MatchingError(f"K is {K.shape} but n1max*n2max = {n1max * n2max}")
    mask = (np.arange(n2max)[None, :, None] < n2[:, None, None]) & (np.arange(n1max)[None, None, :] < n1[:, None, None])
    maskf = mask.astype(float)
    d = K.sum(axis=2)
    K = K / (d.max(axis=1) + d.min(axis=1) * 1e-5 + 1e-30)[:, None, None]
    v = (maskf / np.maximum(maskf.sum(axis=(1, 2), keepdims=True), 1.0)).reshape(B, N)
    for _ in range(max_iter):
        last = v
        v = np.einsum("bij,bj->bi", K, v)
        v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-30)
        s = v.reshape(B, n2max, n1max)
        s = beta * s / np.maximum(s.max(axis=(1, 2), keepdims=True), 1e-30)
        s = np.exp(s - s.max(axis=(1, 2), keepdims=True))
        s = _sinkhorn(s, maskf, sk_iter)
        v = alpha * s.reshape(B, N) + (1.0 - alpha) * v
        v = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-30)
        if np.abs(v - last).max() < tol:
            break
    return v.reshape(B, n2max, n1max).transpose(0, 2, 1)


def solve_qap(
    K: np.ndarray, n1: np.ndarray, n2: np.ndarray, solver: str = "rrwm", max_iter: int = 50, sk_iter: int = 20
) -> np.ndarray:
    """Soft (or discrete, for IPFP) assignment ``(B, n1max, n2max)`` of a batch of QAPs.

    Args:
        K: ``(B, n1max*n2max, n1max*n2max)`` affinities (see :func:`rrwm` for the index order).
        n1, n2: ``(B,)`` real problem sizes.
        solver: one of ``QAP_SOLVERS``.
        max_iter, sk_iter: outer and Sinkhorn iterations of ``rrwm`` (pygmtools solvers use their defaults).

    Raises:
        MatchingError: unknown solver.
    """
    if solver == "rrwm":
        return rrwm(K, n1, n2, max_iter=max_iter, sk_iter=sk_iter)
    if solver not in QAP_SOLVERS:
        raise MatchingError(f"unknown graph-matching solver {solver!r}; choose one of {QAP_SOLVERS}")
    import pygmtools as pygm  # imported lazily: it prints a warning and costs ~1 s at import

    n1max, n2max = int(n1.max()), int(n2.max())
    fn = {"pygm_rrwm": pygm.rrwm, "pygm_ipfp": pygm.ipfp, "pygm_sm": pygm.sm}[solver]
    with np.errstate(invalid="ignore", divide="ignore"):  # IPFP divides 0/0 on exact optima
        X = fn(K, n1.astype(int), n2.astype(int), n1max, n2max, backend="numpy")
    return np.asarray(X, dtype=float).reshape(K.shape[0], n1max, n2max)


def hungarian(score: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-score one-to-one assignment restricted to ``valid`` pairs.

    Args:
        score: ``(T, N)`` scores, larger is better (non-negative where valid).
        valid: ``(T, N)`` bool; invalid pairs are never returned.

    Returns:
        ``(rows, cols)`` of accepted pairs.
    """
    if score.size == 0 or not valid.any():
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    # Maximum total score; invalid pairs score 0 and are dropped afterwards. A tiny positive
    # floor lets a valid pair with score 0 still be taken when nothing better competes.
    s = np.where(valid, np.maximum(score, 0.0) + 1e-9, 0.0)
    r, c = linear_sum_assignment(s, maximize=True)
    ok = valid[r, c]
    return r[ok], c[ok]
