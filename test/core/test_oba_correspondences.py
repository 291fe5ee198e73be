"""Tests of point-track construction inside tracklet boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ba_perception.core.oba.correspondences import (
    KltTracker,
    chain_ids,
    descriptor_tracks,
    mutual_nn_matches,
    oracle_tracks,
    orb_tracks,
    tracks_from_ids,
)
from ba_perception.data.oba_problems import make_batch, make_tracklets


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_mutual_nn_recovers_a_permutation_and_rejects_ambiguity():
    g = torch.Generator().manual_seed(0)
    a = _unit(torch.randn(2, 20, 16, generator=g))
    perm = torch.randperm(20, generator=g)
    b = _unit(a[:, perm] + 0.05 * torch.randn(2, 20, 16, generator=g))
    ok = torch.ones(2, 20, dtype=torch.bool)
    m = mutual_nn_matches(a, b, ok, ok)
    inv = torch.argsort(perm)
    assert torch.equal(m, inv.expand(2, 20))
    # duplicate a target: ratio check must refuse both near-identical candidates
    b2 = b.clone()
    b2[:, 0] = b2[:, 1]
    m2 = mutual_nn_matches(a, b2, ok, ok)
    assert (m2 == 0).sum() == 0 and (m2 == 1).sum() == 0
    # invalid samples never match
    vb = ok.clone()
    vb[:, 5] = False
    assert (mutual_nn_matches(a, b, ok, vb) == 5).sum() == 0


def test_chain_ids_follow_matches_across_frames():
    nxt = torch.tensor([[[1, -1, 0], [2, 0, -1]]])  # frame0 n -> frame1, frame1 n -> frame2
    valid = torch.ones(1, 3, 3, dtype=torch.bool)
    ids = chain_ids(nxt, valid)
    # track of frame0 sample 0: f0 n0 -> f1 n1 -> f2 n0
    assert ids[0, 0, 0] == ids[0, 1, 1] == ids[0, 2, 0] == 0
    assert ids[0, 0, 2] == ids[0, 1, 0] == ids[0, 2, 2] == 2
    assert ids[0, 0, 1] == 1 and ids[0, 2, 1] == 2 * 3 + 1  # new track in frame 2


def test_tracks_from_ids_keeps_longest_tracks():
    uv = torch.arange(2 * 3 * 4 * 2, dtype=torch.float64).reshape(2, 3, 4, 2)
    ids = torch.tensor([[[7, 8, 9, -1], [7, 8, -1, -1], [7, 5, 5, -1]], [[1, 2, 3, 4], [-1, -1, -1, -1], [-1, -1, -1, 1]]])
    tr = tracks_from_ids(uv, ids, num_points=2)
    assert tr.mask[0].sum(0).tolist() == [3, 2]  # id 7 (3 frames), id 8 (2 frames); 5 twice in one frame = 1
    assert torch.equal(tr.uv[0, 2, 0], uv[0, 2, 0])
    assert tr.mask[1].sum(0).tolist() == [2, 0]  # only id 1 is seen twice


def test_descriptor_tracks_match_the_oracle_on_synthetic_tracklets():
    sb = make_batch(4, 6, 24, seed=1, noise_px=0.5, with_prior=True)
    tracks = make_tracklets(sb)
    B, F = 4, 6
    N = max(len(fr.observation.sample_uv) for t in tracks for fr in t.frames)
    suv = torch.full((B, F, N, 2), float("nan"), dtype=torch.float64)
    desc = torch.zeros(B, F, N, 32, dtype=torch.float64)
    sid = torch.full((B, F, N), -1)
    for b, t in enumerate(tracks):
        for f, fr in enumerate(t.frames):
            n = len(fr.observation.sample_uv)
            suv[b, f, :n] = torch.as_tensor(fr.observation.sample_uv)
            desc[b, f, :n] = torch.as_tensor(fr.observation.descriptors, dtype=torch.float64)
            sid[b, f, :n] = torch.as_tensor(fr.observation.sample_point_ids)
    valid = torch.isfinite(suv).all(-1)
    d = descriptor_tracks(suv, desc, valid, 24)
    o = oracle_tracks(suv, sid, 24)
    assert d.mask.sum() > 0.9 * o.mask.sum()
    # every descriptor track is a true track: its pixels are one surface point's projections
    for b in range(B):
        for k in range(24):
            fs = torch.nonzero(d.mask[b, :, k])[:, 0]
            if len(fs) < 2:
                continue
            pts = {int(sid[b, f][(suv[b, f] == d.uv[b, f, k]).all(-1)][0]) for f in fs}
            assert len(pts) == 1


def _texture(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    import cv2

    img = (rng.random((h // 8, w // 8)) * 255).astype(np.uint8)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


def test_orb_follows_a_translating_texture():
    base = _texture()
    shifts = [0, 3, 6, 9]
    images = [np.roll(base, (0, s), axis=(0, 1)) for s in shifts]
    boxes = np.array([[80 + s, 60, 240 + s, 180] for s in shifts], float)
    uv, mask = orb_tracks(images, boxes, 16)
    full = mask.all(0)
    assert full.sum() >= 4
    dx = uv[:, full, 0] - uv[0, full, 0] - np.array(shifts, float)[:, None]
    dy = uv[:, full, 1] - uv[0, full, 1]
    tol = 1.5  # ORB keypoints on pyramid levels are coarser than KLT's (test below: 0.3 px)
    good = (np.abs(dx) < tol).all(0) & (np.abs(dy) < tol).all(0)
    assert good.mean() >= 0.8, (dx, dy)


def _tracklet(tid, stamps, boxes):
    from types import SimpleNamespace as NS

    return NS(tracklet_id=tid, frames=[NS(stamp_ns=s, observation=NS(box_2d=b)) for s, b in zip(stamps, boxes)])


def test_incremental_klt_follows_a_translating_texture_and_restarts_after_a_gap():
    base = _texture()
    shifts = [0, 3, 6, 9, 12]
    klt = KltTracker(16)
    stamps, boxes = [], []
    for f, s in enumerate(shifts):
        stamps.append(100 * f)
        boxes.append(np.array([80 + s, 60, 240 + s, 180], float))
        out = klt.step(stamps[-1], np.roll(base, (0, s), axis=(0, 1)), [_tracklet(7, stamps[-4:], boxes[-4:])])
    uv, mask = out[7]
    assert uv.shape == (4, 16, 2) and mask.shape == (4, 16)
    full = mask.all(0)
    assert full.sum() >= 8  # the same corners followed through the whole window
    dx = uv[:, full, 0] - uv[0, full, 0] - np.array(shifts[-4:], float)[:, None] + shifts[-4]
    assert np.abs(dx).max() < 0.3 and np.abs(uv[:, full, 1] - uv[0, full, 1]).max() < 0.3
    # a frame in which the tracklet was not updated breaks its tracks: none spans the gap
    assert klt.step(500, np.roll(base, (0, 15), axis=(0, 1)), [_tracklet(7, stamps[-4:], boxes[-4:])]) == {}
    out = klt.step(600, np.roll(base, (0, 18), axis=(0, 1)),
                   [_tracklet(7, stamps[-3:] + [600], boxes[-3:] + [np.array([98, 60, 258, 180], float)])])
    uv, mask = out[7]
    assert not (mask[:-1].any(0) & mask[-1]).any()
    assert klt._state[7].history[600][0].min() >= 32  # fresh ids in the new frame
    assert klt.step(800, base, []) == {} and not klt._state  # a tracklet that disappeared is forgotten


def test_klt_restarts_when_the_image_size_changes():
    base = _texture()
    klt = KltTracker(16)
    box = np.array([80, 60, 240, 180], float)
    klt.step(0, base, [_tracklet(7, [0], [box])])
    small = np.ascontiguousarray(base[:48, :64])  # another camera mode: LK between the two would fail
    out = klt.step(100, small, [_tracklet(7, [0, 100], [box, np.array([2, 2, 60, 40], float)])])
    uv, mask = out[7]
    assert not mask[0].any()  # nothing followed across the size change
    assert klt._prev[1].shape == small.shape


def test_shape_mismatch_is_reported():
    from ba_perception.core.oba.correspondences import CorrespondenceError

    with pytest.raises(CorrespondenceError):
        descriptor_tracks(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 4, 8), torch.ones(1, 2, 3, dtype=torch.bool), 4)


def _zooming_klt(realign: bool, rate: float = 0.03, frames: int = 12, max_anchor_images: int = 24):
    """KLT over a texture that grows ``rate`` per frame about (160, 120) (an object the camera approaches)."""
    import cv2

    base, c = _texture(seed=1), np.array([160.0, 120.0])
    klt = KltTracker(16, realign=realign, max_anchor_images=max_anchor_images)
    stamps, boxes = [], []
    for f in range(frames):
        s = (1 + rate) ** f
        img = cv2.warpAffine(base, np.array([[s, 0, c[0] * (1 - s)], [0, s, c[1] * (1 - s)]]), (320, 240), flags=cv2.INTER_CUBIC)
        stamps.append(100 * f)
        boxes.append(np.r_[c - 40 * s, c + 40 * s])
        out = klt.step(stamps[-1], img, [_tracklet(3, stamps[-8:], boxes[-8:])])
    uv, mask = out[3]
    full = mask.all(0)
    exact = c + (uv[0, full] - c)[None] * ((1 + rate) ** np.arange(len(uv)))[:, None, None]  # zoom from the first frame
    return np.linalg.norm(uv[:, full] - exact, axis=-1), klt


def test_klt_realignment_removes_the_drift_of_chained_tracks_on_a_growing_object():
    chained, _ = _zooming_klt(realign=False)
    realigned, klt = _zooming_klt(realign=True)
    assert realigned.shape[1] >= 8
    assert np.median(chained[-1]) > 0.3  # chained LK slides as the texture grows
    assert np.median(realigned[-1]) < 0.05 and realigned.max() < 0.2
    # anchors are kept only while points seeded in them live, and never more than the cap
    assert len(klt._images) <= 2
    capped, klt1 = _zooming_klt(realign=True, max_anchor_images=1)  # re-anchored every frame: chained LK again
    assert len(klt1._images) == 1 and capped.shape == chained.shape and np.median(capped[-1]) < 1.0
