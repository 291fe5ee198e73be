"""Point tracks inside a tracklet's boxes: descriptor mutual-NN, ORB/KLT (OpenCV), or oracle ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class CorrespondenceError(ValueError):
    """Raised on inputs with inconsistent shapes or an unknown method."""


@dataclass
class PointTracks:
    """Observations of ``K`` tracked points over ``F`` frames for ``B`` tracklets.

    Attributes:
        uv: ``(B, F, K, 2)`` pixels (zeros where absent).
        mask: ``(B, F, K)`` bool, point k observed in frame f.
    """

    uv: torch.Tensor
    mask: torch.Tensor


def mutual_nn_matches(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    valid_a: torch.Tensor,
    valid_b: torch.Tensor,
    ratio: float = 0.9,
    min_similarity: float = 0.5,
) -> torch.Tensor:
    """Batched mutual nearest neighbours on cosine similarity with a ratio check.

    Args:
        desc_a: ``(*, N, D)`` L2-normalised descriptors of frame a.
        desc_b: ``(*, M, D)`` of frame b.
        valid_a: ``(*, N)`` bool; valid_b: ``(*, M)`` bool.
        ratio: Lowe's ratio on cosine *distance* ``1 - s``: best < ratio * second best.
        min_similarity: cosine similarity floor.

    Returns:
        ``(*, N)`` long: index in b matched to each a, -1 when none.
    """
    sim = desc_a @ desc_b.transpose(-1, -2)
    neg = torch.finfo(sim.dtype).min / 4
    sim = torch.where(valid_a[..., :, None] & valid_b[..., None, :], sim, torch.full_like(sim, neg))
    M = sim.shape[-1]
    k = min(2, M)
    top, idx = sim.topk(k, dim=-1)
    best, j = top[..., 0], idx[..., 0]
    second = top[..., 1] if k == 2 else torch.full_like(best, neg)
    ratio_ok = (1 - best) < ratio * (1 - second)
    back = sim.argmax(dim=-2)  # (*, M): best a for each b
    mutual = torch.gather(back, -1, j) == torch.arange(sim.shape[-2], device=sim.device)
    ok = mutual & ratio_ok & (best >= min_similarity) & valid_a
    return torch.where(ok, j, torch.full_like(j, -1))


def chain_ids(next_idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Turn frame-to-frame matches into track ids.

    Args:
        next_idx: ``(B, F-1, N)`` long, sample in frame f+1 matched to sample n of frame f, -1 none.
        valid: ``(B, F, N)`` bool.

    Returns:
        ``(B, F, N)`` long track ids (``f * N + n`` of the sample that started the track), -1 invalid.
    """
    B, F, N = valid.shape
    dev = valid.device
    ids = torch.full((B, F, N), -1, dtype=torch.long, device=dev)
    ar = torch.arange(N, device=dev)
    ids[:, 0] = torch.where(valid[:, 0], ar, -1)
    for f in range(1, F):  # over frames (fixed, small), batched over tracklets and samples
        src = next_idx[:, f - 1]
        ok = (src >= 0) & (ids[:, f - 1] >= 0)
        inherited = torch.full((B, N + 1), -1, dtype=torch.long, device=dev)
        inherited.scatter_(1, torch.where(ok, src, N), torch.where(ok, ids[:, f - 1], -1))
        inh = inherited[:, :N]
        ids[:, f] = torch.where(valid[:, f], torch.where(inh >= 0, inh, f * N + ar), -1)
    return ids


def tracks_from_ids(sample_uv: torch.Tensor, ids: torch.Tensor, num_points: int, min_length: int = 2) -> PointTracks:
    """Keep the ``num_points`` longest tracks per tracklet (ties: earliest id) as padded tensors.

    Args:
        sample_uv: ``(B, F, N, 2)`` sample pixels.
        ids: ``(B, F, N)`` long track ids (any non-negative integers), -1 for none. A track with
            two samples in one frame keeps the first.
        num_points: K.
        min_length: tracks seen in fewer frames are dropped.
    """
    B, F, N = ids.shape
    dev = ids.device
    valid = ids >= 0
    b, f, _ = torch.nonzero(valid, as_tuple=True)
    chosen = torch.full((B, num_points), -1, dtype=torch.long, device=dev)
    if b.numel():
        tid = ids[valid]
        # one vote per (problem, track, frame), then track lengths per (problem, track); the triple
        # is packed into one integer key because 1-D unique is far faster than unique over rows
        M = ids.max() + 1
        bt = torch.unique((b * M + tid) * F + f) // F  # sorted by (problem, track)
        bt, length = torch.unique_consecutive(bt, return_counts=True)
        bi = torch.stack([bt // M, bt % M], 1)
        keep = length >= min_length
        bi, length = bi[keep], length[keep]
        # order: problem asc, length desc, id asc (stable sorts, least significant key first)
        o = torch.argsort(bi[:, 1], stable=True)
        o = o[torch.argsort(-length[o], stable=True)]
        o = o[torch.argsort(bi[o, 0], stable=True)]
        bi = bi[o]
        start = torch.searchsorted(bi[:, 0].contiguous(), bi[:, 0].contiguous(), right=False)
        rank = torch.arange(len(bi), device=dev) - start
        sel = rank < num_points
        chosen[bi[sel, 0], rank[sel]] = bi[sel, 1]
    hit = (ids[..., None] == chosen[:, None, None, :]) & valid[..., None] & (chosen[:, None, None, :] >= 0)  # (B,F,N,K)
    first = hit & (hit.long().cumsum(2) == 1)
    mask = first.any(2)  # (B,F,K)
    uv = torch.einsum("bfnk,bfnc->bfkc", first.to(sample_uv.dtype), torch.nan_to_num(sample_uv))
    return PointTracks(uv=uv, mask=mask)


def descriptor_tracks(
    sample_uv: torch.Tensor,
    descriptors: torch.Tensor,
    valid: torch.Tensor,
    num_points: int,
    ratio: float = 0.9,
    min_similarity: float = 0.5,
) -> PointTracks:
    """Point tracks from consecutive-frame mutual-NN matches of learned descriptors (batched).

    Args:
        sample_uv: ``(B, F, N, 2)`` sample pixels per frame.
        descriptors: ``(B, F, N, D)`` L2-normalised descriptors.
        valid: ``(B, F, N)`` bool.
        num_points: K tracks kept per tracklet (longest first).
    """
    if descriptors.shape[:3] != valid.shape or sample_uv.shape[:3] != valid.shape:
        raise CorrespondenceError("sample_uv, descriptors and valid must share (B, F, N)")
    valid = valid & torch.isfinite(sample_uv).all(-1) & torch.isfinite(descriptors).all(-1)
    d = torch.nan_to_num(descriptors)
    nxt = mutual_nn_matches(d[:, :-1], d[:, 1:], valid[:, :-1], valid[:, 1:], ratio, min_similarity)
    return tracks_from_ids(sample_uv, chain_ids(nxt, valid), num_points)


def oracle_tracks(sample_uv: torch.Tensor, point_ids: torch.Tensor, num_points: int) -> PointTracks:
    """Point tracks from ground-truth surface point ids (evaluation only); -1 ids are ignored."""
    ids = torch.where(torch.isfinite(sample_uv).all(-1), point_ids.long(), -1)
    return tracks_from_ids(sample_uv, ids, num_points)


def orb_features(image: np.ndarray, box: np.ndarray, max_features: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints ``(N, 2)`` and binary descriptors ``(N, 32)`` inside a box (OpenCV)."""
    import cv2

    x1, y1, x2, y2 = (int(round(v)) for v in box)
    roi = np.zeros_like(image, np.uint8)
    roi[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 255
    orb = cv2.ORB.create(nfeatures=max_features, edgeThreshold=8, patchSize=15)
    kps, desc = orb.detectAndCompute(image, roi)
    if desc is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.array([k.pt for k in kps], np.float32), desc


def orb_tracks(images: list[np.ndarray], boxes: np.ndarray, num_points: int, max_hamming: int = 64,
               features: list[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ORB features in each box matched frame to frame (Hamming, cross-check), chained to tracks.

    Args:
        features: per frame ``orb_features(image, box, max(2 * num_points, 32))`` when already
            computed (a sliding window sees each frame many times); ``images`` is then unused.

    Returns:
        ``(uv (F, K, 2), mask (F, K))`` numpy arrays for one tracklet.
    """
    import cv2

    F = len(boxes)
    feats = features if features is not None else [orb_features(im, b, max(2 * num_points, 32)) for im, b in zip(images, boxes)]
    N = max([len(k) for k, _ in feats] + [1])
    suv = np.zeros((1, F, N, 2), np.float32)
    valid = np.zeros((1, F, N), bool)
    for f, (k, _) in enumerate(feats):
        suv[0, f, : len(k)], valid[0, f, : len(k)] = k, True
    nxt = np.full((1, max(F - 1, 0), N), -1, np.int64)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
    for f in range(F - 1):
        da, db = feats[f][1], feats[f + 1][1]
        if len(da) and len(db):
            for m in bf.match(da, db):
                if m.distance <= max_hamming:
                    nxt[0, f, m.queryIdx] = m.trainIdx
    ids = chain_ids(torch.from_numpy(nxt), torch.from_numpy(valid))
    tr = tracks_from_ids(torch.from_numpy(suv), ids, num_points)
    return tr.uv[0].numpy(), tr.mask[0].numpy()


@dataclass
class _KltState:
    pts: np.ndarray  # (n, 2) float32 pixels in the tracklet's newest frame
    ids: np.ndarray  # (n,) int64 point ids (unique within the tracklet)
    next_id: int
    last_stamp: int
    history: dict  # stamp_ns -> (ids, uv) of that frame
    seed_stamp: np.ndarray  # (n,) int64 stamp of the frame each point was seeded in (its anchor)
    seed_pts: np.ndarray  # (n, 2) float32 its pixel position there


class KltTracker:
    """Incremental KLT point tracks per tracklet (OpenCV pyramidal Lucas-Kanade), frame to frame.

    Each frame, every tracklet updated in that frame has its points tracked from the previous image
    into the new one (forward-backward check, points must stay inside the new box); when fewer than
    ``num_points`` survive, Shi-Tomasi corners inside the box (away from the survivors) are added as
    new tracks. The point tracks of a tracklet's window are read off its history, longest first.
    Following incrementally costs one forward-backward LK per frame for all tracklets together;
    re-tracking each window from its first frame costs one per tracklet and window frame (slower,
    and worse depth: docs/experiments.md).

    Args:
        num_points: K tracks returned per tracklet (up to 2K are followed).
        fb_max_px: forward-backward consistency threshold, pixels.
        min_distance_px: minimum spacing of seeded corners, pixels.
        realign: after each frame-to-frame step, re-align every point against its patch in the frame
            it was seeded in (the anchor), warped by the affine image motion fitted to the points
            seeded with it; corrections of ``realign_max_px`` or more are refused. Chained LK drifts
            as the object's image grows or shrinks; the warped anchor does not (docs/experiments.md).
            At most ``max_anchor_images`` anchor images are kept (grayscale, shared by
            all tracklets); points of the oldest are re-anchored in the newest frame.
    """

    def __init__(self, num_points: int, fb_max_px: float = 1.0, min_distance_px: int = 4, realign: bool = False,
                 realign_max_px: float = 1.0, max_anchor_images: int = 24) -> None:
        self.num_points, self.fb_max_px, self.min_distance_px = num_points, fb_max_px, min_distance_px
        if max_anchor_images < 1:
            raise CorrespondenceError(f"max_anchor_images must be >= 1, got {max_anchor_images}")
        self.realign, self.realign_max_px, self.max_anchor_images = realign, realign_max_px, max_anchor_images
        self._prev: tuple[int, np.ndarray] | None = None
        self._state: dict[int, _KltState] = {}
        self._images: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        """Forget every tracklet and the previous image (stream restarted)."""
        self._prev, self._state, self._images = None, {}, {}

    def _seed(self, gray: np.ndarray, box: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` Shi-Tomasi corners inside ``box``, away from the points in ``keep``."""
        import cv2

        H, W = gray.shape
        x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x2, y2 = min(int(np.ceil(box[2])), W), min(int(np.ceil(box[3])), H)
        if x2 - x1 < 3 or y2 - y1 < 3:
            return np.zeros((0, 2), np.float32)
        roi = np.full((y2 - y1, x2 - x1), 255, np.uint8)  # corners of the crop only: far cheaper than masking the image
        for x, y in keep:
            cv2.circle(roi, (int(round(x)) - x1, int(round(y)) - y1), self.min_distance_px, 0, -1)
        pts = cv2.goodFeaturesToTrack(gray[y1:y2, x1:x2], n, 0.01, self.min_distance_px, mask=roi)
        if pts is None:
            return np.zeros((0, 2), np.float32)
        return (pts[:, 0] + np.array([x1, y1], np.float32)).astype(np.float32)

    def _follow(self, prev: np.ndarray, gray: np.ndarray, follow: list[tuple[_KltState, np.ndarray]]) -> None:
        """Track every listed tracklet's points into ``gray`` in one forward and one backward LK call."""
        import cv2

        follow = [(st, box) for st, box in follow if len(st.pts)]
        if not follow:
            return
        cur = np.concatenate([st.pts for st, _ in follow])[:, None].astype(np.float32)
        nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, gray, cur, None)  # type: ignore[call-overload]  # cv2 stubs omit nextPts=None (output only)
        back, ok2, _ = cv2.calcOpticalFlowPyrLK(gray, prev, nxt, None)  # type: ignore[call-overload]  # as above
        alive = (ok[:, 0] == 1) & (ok2[:, 0] == 1) & (np.linalg.norm(back - cur, axis=-1)[:, 0] < self.fb_max_px)
        start = 0
        for st, box in follow:
            n = len(st.pts)
            p, a = nxt[start: start + n, 0], alive[start: start + n]
            a = a & (p[:, 0] >= box[0]) & (p[:, 0] <= box[2]) & (p[:, 1] >= box[1]) & (p[:, 1] <= box[3])
            st.pts, st.ids, st.seed_stamp, st.seed_pts = p[a], st.ids[a], st.seed_stamp[a], st.seed_pts[a]
            start += n
            if self.realign:
                self._realign(st, gray, box)

    def _realign(self, st: _KltState, gray: np.ndarray, box: np.ndarray) -> None:
        """Correct chained positions against each point's seed patch, warped by the tracklet's affine image motion.

        Chaining frame-to-frame LK accumulates drift, most of all when the object's image grows or
        shrinks; aligning the seed frame's crop, warped by the affine map fitted to the points
        seeded with it, removes the accumulation while the warp absorbs the scale change.
        """
        import cv2

        H, W = gray.shape
        m = 8  # px of context around the box
        x1, y1 = max(int(np.floor(box[0])) - m, 0), max(int(np.floor(box[1])) - m, 0)
        x2, y2 = min(int(np.ceil(box[2])) + m, W), min(int(np.ceil(box[3])) + m, H)
        if x2 - x1 < 8 or y2 - y1 < 8:
            return
        cur = gray[y1:y2, x1:x2]
        off = np.array([x1, y1], np.float32)
        for s in np.unique(st.seed_stamp):
            img = self._images.get(int(s))
            g = np.nonzero(st.seed_stamp == s)[0]
            if img is None or len(g) < 4 or int(s) == st.last_stamp:
                continue
            A, _ = cv2.estimateAffine2D(st.seed_pts[g], st.pts[g], method=cv2.LMEDS)
            if A is None:
                continue
            A_roi = np.asarray(A, np.float64).copy()  # estimateAffine2D's 2x3 CV_64F matrix (the stubs allow integers)
            A_roi[:, 2] -= off
            warped = cv2.warpAffine(img, A_roi, (x2 - x1, y2 - y1), flags=cv2.INTER_LINEAR)
            src = (st.seed_pts[g] @ A[:, :2].T + A[:, 2] - off).astype(np.float32)[:, None]
            guess = (st.pts[g] - off).astype(np.float32)[:, None]
            ref, ok, _ = cv2.calcOpticalFlowPyrLK(warped, cur, src, guess.copy(), winSize=(15, 15), maxLevel=1,
                                                  flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
            corr = np.linalg.norm(ref[:, 0] - guess[:, 0], axis=1)
            use = (ok[:, 0] == 1) & (corr < self.realign_max_px)
            st.pts[g[use]] = ref[use, 0] + off

    def step(self, stamp_ns: int, gray: np.ndarray, tracks: list) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Advance every tracklet whose newest frame is ``stamp_ns``; return their window point tracks.

        Args:
            stamp_ns: capture time of ``gray``.
            gray: ``(H, W)`` uint8 image of that frame.
            tracks: the live tracklets (``ObjectTrack``); state of tracklets not listed is dropped.

        Returns:
            ``{tracklet_id: (uv (F, K, 2), mask (F, K))}`` over each updated tracklet's window frames
            (the format :func:`~ba_perception.core.oba.refine.refine_tracklets` takes).
        """
        if self._prev is not None and self._prev[1].shape != gray.shape:  # another image size: nothing to follow
            self.reset()
        prev = self._prev
        live = {t.tracklet_id for t in tracks}
        self._state = {k: v for k, v in self._state.items() if k in live}
        updated, follow = [], []
        for t in tracks:
            if not t.frames or t.frames[-1].stamp_ns != stamp_ns:
                continue
            box = np.asarray(t.frames[-1].observation.box_2d, np.float64)
            st = self._state.get(t.tracklet_id)
            if st is None:
                st = self._state[t.tracklet_id] = _KltState(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), 0, stamp_ns, {},
                                                            np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
            elif prev is not None and st.last_stamp == prev[0]:
                follow.append((st, box))
            else:  # the tracklet skipped a frame: its points cannot be followed
                st.pts, st.ids = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
                st.seed_stamp, st.seed_pts = np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
            updated.append((t, st, box))
        if prev is not None:
            self._follow(prev[1], gray, follow)
        for t, st, box in updated:
            want = 2 * self.num_points - len(st.pts)
            if len(st.pts) < self.num_points and want > 0:
                new = self._seed(gray, box, st.pts, want)
                st.seed_stamp = np.concatenate([st.seed_stamp, np.full(len(new), stamp_ns, np.int64)])
                st.seed_pts = np.concatenate([st.seed_pts, new])
                st.pts = np.concatenate([st.pts, new])
                st.ids = np.concatenate([st.ids, np.arange(st.next_id, st.next_id + len(new))])
                st.next_id += len(new)
            st.last_stamp = stamp_ns
            st.history[stamp_ns] = (st.ids.copy(), st.pts.copy())
            window = [f.stamp_ns for f in t.frames]
            st.history = {s_: st.history[s_] for s_ in window if s_ in st.history}
        self._prev = (stamp_ns, gray)
        if self.realign:
            self._keep_anchor(stamp_ns, gray)
        return self._window_tracks(updated)

    def _keep_anchor(self, stamp_ns: int, gray: np.ndarray) -> None:
        """Store ``gray`` as an anchor; drop anchors no live point uses, re-anchor the oldest beyond the cap."""
        self._images[stamp_ns] = gray
        used = {int(x) for st in self._state.values() for x in np.unique(st.seed_stamp)}
        self._images = {k: v for k, v in self._images.items() if k in used or k == stamp_ns}
        while len(self._images) > self.max_anchor_images:
            old = next(iter(self._images))  # insertion order = capture order
            del self._images[old]
            for st in self._state.values():
                moved = st.seed_stamp == old
                if st.last_stamp == stamp_ns:  # tracklets updated now: their points are in this frame
                    st.seed_stamp[moved], st.seed_pts[moved] = stamp_ns, st.pts[moved]
                else:  # not followed this frame: their points are lost at their next update anyway
                    st.seed_stamp[moved] = -1

    def _window_tracks(self, updated: list) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each updated tracklet's window as padded id/pixel arrays, K longest tracks kept (one batched call)."""
        if not updated:
            return {}
        windows = [[f.stamp_ns for f in t.frames] for t, _, _ in updated]
        F = max(len(w) for w in windows)
        N = max([len(st.history[s][0]) for (_, st, _), w in zip(updated, windows) for s in w if s in st.history] + [1])
        ids = np.full((len(updated), F, N), -1, np.int64)
        uv = np.zeros((len(updated), F, N, 2), np.float32)
        for b, ((_, st, _), w) in enumerate(zip(updated, windows)):
            for f, s in enumerate(w):
                if s in st.history:
                    i, p = st.history[s]
                    ids[b, f, : len(i)], uv[b, f, : len(i)] = i, p
        tr = tracks_from_ids(torch.from_numpy(uv), torch.from_numpy(ids), self.num_points)
        tuv, tmask = tr.uv.numpy(), tr.mask.numpy()
        return {t.tracklet_id: (tuv[b, : len(w)], tmask[b, : len(w)]) for b, ((t, _, _), w) in enumerate(zip(updated, windows))}
