"""Kalman filter, affinities and assignment solvers of the 3D tracker."""

from __future__ import annotations

import numpy as np
import pytest

from ba_perception.core.geometry import iou_2d
from ba_perception.core.tracking import kalman
from ba_perception.core.tracking.affinity import edge_affinity_batch, gate_3d, image_edge_sq, iou_2d_np, pair_iou_2d
from ba_perception.core.tracking.matching import MatchingError, hungarian, rrwm, solve_qap


def test_predict_moves_at_constant_velocity_and_grows_covariance():
    x = np.array([[1.0, 2.0, 0.5, 3.0, -1.0, 0.0]])
    P = kalman.initial_covariance(np.eye(3)[None] * 0.04, np.array([2.0]))
    x2, P2 = kalman.predict(x, P, 0.5, np.array([1.0]), np.array([0.1]))
    np.testing.assert_allclose(x2[0], [2.5, 1.5, 0.5, 3.0, -1.0, 0.0])
    # var(px) = 0.04 + dt^2 * var(vx) + sigma_a^2 dt^4 / 4 = 0.04 + 0.25 * 4 + 0.015625
    assert P2[0, 0, 0] == pytest.approx(0.04 + 1.0 + 0.0625 / 4)
    assert np.all(np.linalg.eigvalsh(P2[0]) > 0)


def test_filter_recovers_velocity_of_linear_motion():
    x = np.zeros((1, 6))
    P = kalman.initial_covariance(np.eye(3)[None] * 0.01, np.array([5.0]))
    for k in range(1, 30):
        x, P = kalman.predict(x, P, 0.1, np.array([0.5]), np.array([0.1]))
        z = np.array([[0.1 * k * 2.0, -0.1 * k * 1.0, 0.0]])
        x, P = kalman.update(x, P, z, np.eye(3)[None] * 0.01)
    np.testing.assert_allclose(x[0, 3:], [2.0, -1.0, 0.0], atol=0.05)


def test_numpy_iou_matches_geometry_iou():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 100, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 100, (7, 2, 2)), axis=1).transpose(0, 2, 1).reshape(7, 4)[:, [0, 2, 1, 3]]
    import torch

    np.testing.assert_allclose(iou_2d_np(a, b), iou_2d(torch.from_numpy(a), torch.from_numpy(b)).numpy(), atol=1e-12)
    np.testing.assert_allclose(pair_iou_2d(a[:5], b[:5]), np.diag(iou_2d_np(a[:5], b[:5])), atol=1e-12)


def test_gate_uses_the_predicted_covariance():
    pred = np.zeros((2, 3))
    cov = np.stack([np.diag([0.01, 0.01, 0.01]), np.diag([4.0, 0.01, 0.01])])  # track 1 uncertain along x
    dets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    R = np.zeros((2, 3, 3)) + np.eye(3) * 1e-4
    ti, di, d2 = gate_3d(pred, cov, dets, R, np.ones((2, 2), bool), chi2_gate=16.0, max_dist_m=10.0)
    # Only track 1 reaches the detection 1 m along x (d2 = 1/4); nobody reaches 1 m along y.
    assert list(zip(ti.tolist(), di.tolist())) == [(1, 0)]
    assert d2[0] == pytest.approx(1.0 / (4.0 + 1e-4))


def _shifted_line(n: int = 4, shift: float = 0.6):
    """Tracks on a line 1 m apart; detections = tracks shifted 0.6 m (a common offset).

    Node affinity exp(-d^2 / 0.5) prefers each detection's *other* neighbour (0.4 m away), the
    wrong answer; relative positions are identical under the true assignment.
    """
    p = np.stack([np.arange(n, dtype=float), np.zeros(n), np.zeros(n)], axis=1)
    q = p + np.array([shift, 0.0, 0.0])
    d = np.linalg.norm(p[:, None] - q[None], axis=-1)
    node = np.exp(-(d**2) / 0.5)
    gate = d < 1.5
    rel_t = (p[:, None] - p[None])[None]
    rel_d = (q[:, None] - q[None])[None]
    K = edge_affinity_batch(rel_t, rel_d, node[None], gate[None], sigma_m=0.3, w_edge=1.0)
    return node, gate, K


def test_edges_fix_a_common_offset_that_fools_node_affinity():
    node, gate, K = _shifted_line()
    r, c = hungarian(node, gate)
    assert not np.array_equal(c[np.argsort(r)], np.arange(4)), "precondition: node-only must be wrong"
    n = np.array([4])
    for solver in ("rrwm", "pygm_rrwm", "pygm_sm", "pygm_ipfp"):
        X = solve_qap(K, n, n, solver)[0]
        r, c = hungarian(X, gate)
        assert np.array_equal(c[np.argsort(r)], np.arange(4)), solver


def test_our_rrwm_agrees_with_pygmtools_on_random_planted_problems():
    pygm = pytest.importorskip("pygmtools")
    rng = np.random.default_rng(1)
    for _ in range(5):
        n1, n2 = 5, 6
        pts = rng.uniform(0, 10, (n2, 3))
        perm = rng.permutation(n2)[:n1]
        trk = pts[perm] + rng.normal(0, 0.2, (n1, 3))
        d = np.linalg.norm(trk[:, None] - pts[None], axis=-1)
        node = np.exp(-d / 3.0)
        K = edge_affinity_batch((trk[:, None] - trk[None])[None], (pts[:, None] - pts[None])[None],
                                node[None], np.ones((1, n1, n2), bool), sigma_m=1.0, w_edge=1.0)
        ours = rrwm(K, np.array([n1]), np.array([n2]))[0]
        theirs = pygm.rrwm(K[0], n1, n2, backend="numpy")
        assert np.array_equal(ours.argmax(1), theirs.argmax(1))
        assert np.array_equal(ours.argmax(1), perm)


def test_padded_batch_gives_the_same_answer_as_single_problems():
    node, gate, K = _shifted_line(3)
    node4, gate4, K4 = _shifted_line(4)
    # Pad the 3x3 problem into a 4x4 batch slot (column-major index a * 4 + i).
    Kp = np.zeros((2, 16, 16))
    Kp[1] = K4[0]
    idx3 = [a * 3 + i for a in range(3) for i in range(3)]
    idx4 = [a * 4 + i for a in range(3) for i in range(3)]
    Kp[0][np.ix_(idx4, idx4)] = K[0][np.ix_(idx3, idx3)]
    X = rrwm(Kp, np.array([3, 4]), np.array([3, 4]))
    single = rrwm(K, np.array([3]), np.array([3]))[0]
    np.testing.assert_allclose(X[0, :3, :3], single, atol=1e-9)
    assert np.all(X[0, 3, :] == 0) and np.all(X[0, :, 3] == 0)


def test_hungarian_respects_validity_and_unknown_solver_fails():
    score = np.array([[0.9, 0.8], [0.85, 0.1]])
    valid = np.array([[True, True], [False, True]])
    r, c = hungarian(score, valid)
    assert sorted(zip(r.tolist(), c.tolist())) == [(0, 0), (1, 1)]
    assert hungarian(np.zeros((0, 3)), np.zeros((0, 3), bool))[0].size == 0
    with pytest.raises(MatchingError):
        solve_qap(np.zeros((1, 4, 4)), np.array([2]), np.array([2]), "magic")


def test_component_labelling_matches_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from ba_perception.core.tracking.tracker import _bipartite_components

    rng = np.random.default_rng(2)
    for _ in range(20):
        T, N, E = rng.integers(1, 30), rng.integers(1, 30), rng.integers(0, 40)
        ti, di = rng.integers(0, T, E), rng.integers(0, N, E)
        lt, ld = _bipartite_components(ti, di, T, N)
        _, ref = connected_components(coo_matrix((np.ones(E), (ti, T + di)), shape=(T + N, T + N)), directed=False)
        ours = np.concatenate([lt, ld])
        # Same partition: labels correspond one-to-one.
        pairs = set(zip(ours.tolist(), ref.tolist()))
        assert len(pairs) == len(set(ours.tolist())) == len(set(ref.tolist()))


def _row_of_boxes(n: int, shift_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``n`` 40x30 px boxes in a row 50 px apart, all shifted by ``shift_px``."""
    x = 100.0 + 50.0 * np.arange(n) + shift_px[0]
    y = 200.0 + shift_px[1]
    return np.stack([x, np.full(n, y), x + 40.0, np.full(n, y + 30.0)], axis=1)


def test_image_edges_cancel_a_shift_shared_by_all_boxes_and_mark_unknown_tracks():
    bt = _row_of_boxes(3)[None]
    bd = _row_of_boxes(3, (70.0, -12.0))[None]  # ego rotation: every box moves alike
    ok = np.ones((1, 3), bool)
    sq = image_edge_sq(bt, ok, bd, ok, sigma_rel=0.5)  # [b, a, i, c, j]
    # True correspondences (a == i, c == j) agree exactly; a swapped pair disagrees by 2 spacings.
    assert sq[0, 0, 0, 1, 1] == pytest.approx(0.0) and sq[0, 2, 2, 0, 0] == pytest.approx(0.0)
    # |(u0 - u1) - (u1 - u0)| = 100 px over sigma_rel * mean height 15 px.
    assert sq[0, 1, 0, 0, 1] == pytest.approx((100.0 / 15.0) ** 2)
    ok_t = np.array([[True, False, True]])
    sq = image_edge_sq(bt, ok_t, bd, ok, sigma_rel=0.5)
    assert np.isnan(sq[0, :, 1]).all() and np.isnan(sq[0, :, :, :, 1]).all()
    assert np.isfinite(sq[0, :, 0, :, 2]).all()


def test_image_edges_replace_misleading_3d_edges_where_boxes_are_known():
    # Three cars in a row; every detection box is shifted by more than the spacing (IoU would pair
    # each track with its neighbour) and node affinities are flat. Bad depths make the 3D layout
    # of the detections fit a cyclic shift of the tracks; the image layout fits the truth.
    n = 3
    bt = _row_of_boxes(n)[None]
    bd = _row_of_boxes(n, (60.0, 0.0))[None]
    ok = np.ones((1, n), bool)
    node = np.full((1, n, n), 0.5)
    gate = np.ones((1, n, n), bool)
    p = np.stack([np.arange(n, dtype=float) * 3.0, np.zeros(n), np.zeros(n)], axis=1)
    wrong = np.roll(np.arange(n), 1)  # detection a sits where track wrong[a] is
    q = p[wrong]
    rel_t, rel_d = (p[:, None] - p[None])[None], (q[:, None] - q[None])[None]
    n_ = np.array([n])

    def assignment(K):
        r, c = hungarian(solve_qap(K, n_, n_)[0], gate[0])
        return c[np.argsort(r)]

    K3 = edge_affinity_batch(rel_t, rel_d, node, gate, sigma_m=0.5, w_edge=1.0)
    assert np.array_equal(wrong[assignment(K3)], np.arange(n)), "precondition: 3D edges pick the shift"
    isq = image_edge_sq(bt, ok, bd, ok, sigma_rel=0.5)
    K = edge_affinity_batch(rel_t, rel_d, node, gate, sigma_m=0.5, w_edge=1.0, image_sq=isq)
    assert np.array_equal(assignment(K), np.arange(n))
    # Tracks without a last-frame box keep their 3D edges.
    ok_t = np.zeros((1, n), bool)
    isq_none = image_edge_sq(bt, ok_t, bd, ok, sigma_rel=0.5)
    K_none = edge_affinity_batch(rel_t, rel_d, node, gate, sigma_m=0.5, w_edge=1.0, image_sq=isq_none)
    np.testing.assert_allclose(K_none, K3)
