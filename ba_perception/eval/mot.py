"""Multi-object tracking metrics (HOTA, DetA, AssA, MOTA, IDF1, ID switches) via ``trackeval``.

Ground truth and predictions are given in memory, frame by frame; similarity is either 3D centre
distance (``sim = max(0, 1 - d / max_dist_m)``; with the default 2 m, CLEAR/Identity's 0.5
threshold means a match within 1 m) or 2D box IoU. Each class is evaluated on its own; ``"all"``
evaluates every object together with zero similarity across classes, and ``"cls_avg"`` is
trackeval's class average.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIMILARITIES = ("3d", "2d")
ALL = "all"
CLS_AVG = "cls_avg"


class MotEvalError(ValueError):
    """Raised for inconsistent ground truth / prediction frames or an unknown similarity."""


@dataclass
class MotFrame:
    """Ground truth and predictions of one frame.

    Attributes:
        gt_ids, pred_ids: ``(M,)`` / ``(K,)`` integer object / track ids (any values, per sequence).
        gt_labels, pred_labels: class label per object / track.
        gt_centers, pred_centers: ``(M, 3)`` / ``(K, 3)`` centres in one frame (odom), metres;
            needed for 3D similarity.
        gt_boxes_2d, pred_boxes_2d: ``(M, 4)`` / ``(K, 4)`` pixel boxes ``(x1, y1, x2, y2)``;
            needed for 2D similarity.
    """

    gt_ids: np.ndarray
    gt_labels: Sequence[str]
    pred_ids: np.ndarray
    pred_labels: Sequence[str]
    gt_centers: np.ndarray | None = None
    pred_centers: np.ndarray | None = None
    gt_boxes_2d: np.ndarray | None = None
    pred_boxes_2d: np.ndarray | None = None


def similarity_3d(gt: np.ndarray, pred: np.ndarray, max_dist_m: float = 2.0) -> np.ndarray:
    """``(M, K)`` similarity ``max(0, 1 - |g - p| / max_dist_m)`` of centres ``(M, 3)``, ``(K, 3)``."""
    d = np.linalg.norm(gt[:, None, :] - pred[None, :, :], axis=-1)
    return np.clip(1.0 - d / max_dist_m, 0.0, 1.0)


def similarity_2d(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``(M, K)`` IoU of pixel boxes ``(M, 4)`` and ``(K, 4)``."""
    from ba_perception.core.tracking.affinity import iou_2d_np

    return iou_2d_np(gt, pred)


def _metrics():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from trackeval.metrics import CLEAR, HOTA, Identity  # prints a harmless BURST warning

        cfg = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
        return HOTA(), CLEAR(cfg), Identity(cfg)


def _sequence_data(frames: Sequence[MotFrame], cls: str, similarity: str, max_dist_m: float) -> dict:
    """Trackeval's per-sequence dict for one class (``cls == ALL``: all classes, class-aware sim)."""
    gt_ids_l, tr_ids_l, sims = [], [], []
    gt_map: dict[int, int] = {}
    tr_map: dict[int, int] = {}
    n_gt = n_tr = 0
    for t, fr in enumerate(frames):
        gl = np.asarray(fr.gt_labels, dtype=object).reshape(-1)
        pl = np.asarray(fr.pred_labels, dtype=object).reshape(-1)
        gids = np.asarray(fr.gt_ids, dtype=np.int64).reshape(-1)
        pids = np.asarray(fr.pred_ids, dtype=np.int64).reshape(-1)
        if gl.size != gids.size or pl.size != pids.size:
            raise MotEvalError(f"frame {t}: ids and labels differ in length")
        gsel = np.ones(gids.size, bool) if cls == ALL else gl == cls
        psel = np.ones(pids.size, bool) if cls == ALL else pl == cls
        if np.unique(gids[gsel]).size != gsel.sum() or np.unique(pids[psel]).size != psel.sum():
            raise MotEvalError(f"frame {t}: an id appears twice in one frame")
        if similarity == "3d":
            if fr.gt_centers is None or fr.pred_centers is None:
                raise MotEvalError(f"frame {t}: 3D similarity needs gt_centers and pred_centers")
            g = np.asarray(fr.gt_centers, float).reshape(-1, 3)[gsel]
            p = np.asarray(fr.pred_centers, float).reshape(-1, 3)[psel]
            sim = similarity_3d(g, p, max_dist_m)
        elif similarity == "2d":
            if fr.gt_boxes_2d is None or fr.pred_boxes_2d is None:
                raise MotEvalError(f"frame {t}: 2D similarity needs gt_boxes_2d and pred_boxes_2d")
            g = np.asarray(fr.gt_boxes_2d, float).reshape(-1, 4)[gsel]
            p = np.asarray(fr.pred_boxes_2d, float).reshape(-1, 4)[psel]
            sim = similarity_2d(g, p)
        else:
            raise MotEvalError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}")
        if cls == ALL:
            sim = sim * (gl[gsel][:, None] == pl[psel][None, :])
        sim = np.nan_to_num(sim, nan=0.0)
        # trackeval wants ids relabelled 0..n-1 per sequence.
        gi = np.array([gt_map.setdefault(int(i), len(gt_map)) for i in gids[gsel]], dtype=int)
        ti = np.array([tr_map.setdefault(int(i), len(tr_map)) for i in pids[psel]], dtype=int)
        n_gt += gi.size
        n_tr += ti.size
        gt_ids_l.append(gi)
        tr_ids_l.append(ti)
        sims.append(sim)
    return {
        "num_timesteps": len(frames),
        "num_gt_ids": len(gt_map),
        "num_tracker_ids": len(tr_map),
        "num_gt_dets": n_gt,
        "num_tracker_dets": n_tr,
        "gt_ids": gt_ids_l,
        "tracker_ids": tr_ids_l,
        "similarity_scores": sims,
    }


def _summary(hota: dict, clear: dict, ident: dict) -> dict[str, float]:
    m = lambda v: float(np.mean(v))  # noqa: E731  HOTA fields are arrays over the 19 alphas
    return {
        "HOTA": m(hota["HOTA"]), "DetA": m(hota["DetA"]), "AssA": m(hota["AssA"]),
        "DetRe": m(hota["DetRe"]), "DetPr": m(hota["DetPr"]), "AssRe": m(hota["AssRe"]),
        "AssPr": m(hota["AssPr"]), "LocA": m(hota["LocA"]),
        "MOTA": float(clear["MOTA"]), "MOTP": float(clear["MOTP"]), "IDSW": int(clear["IDSW"]),
        "TP": int(clear["CLR_TP"]), "FN": int(clear["CLR_FN"]), "FP": int(clear["CLR_FP"]),
        "Frag": int(clear["Frag"]), "MT": int(clear["MT"]), "ML": int(clear["ML"]),
        "IDF1": float(ident["IDF1"]), "IDR": float(ident["IDR"]), "IDP": float(ident["IDP"]),
        "IDTP": int(ident["IDTP"]),
    }


def evaluate_mot(
    sequences: Mapping[str, Sequence[MotFrame]] | Sequence[MotFrame],
    similarity: str = "3d",
    max_dist_m: float = 2.0,
    classes: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """HOTA / CLEAR / Identity metrics per class over one or more sequences.

    Args:
        sequences: ``{name: frames}`` or a single list of frames.
        similarity: ``"3d"`` (centre distance, ``max_dist_m``) or ``"2d"`` (IoU).
        max_dist_m: distance at which 3D similarity reaches 0, metres.
        classes: classes to report; default every label seen in ground truth or predictions.

    Returns:
        ``{class: {metric: value}}`` plus ``"all"`` (all objects, class-aware similarity) and
        ``"cls_avg"`` (mean over the classes). Metrics: HOTA, DetA, AssA, DetRe, DetPr, AssRe,
        AssPr, LocA, MOTA, MOTP, IDSW, TP, FN, FP, Frag, MT, ML, IDF1, IDR, IDP, IDTP; HOTA-family
        values are means over trackeval's 19 alpha thresholds, in ``[0, 1]``.

    Raises:
        MotEvalError: missing fields for the chosen similarity, or duplicate ids in a frame.
    """
    if similarity not in SIMILARITIES:
        raise MotEvalError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES}")
    seqs = dict(sequences) if isinstance(sequences, Mapping) else {"seq": list(sequences)}
    if classes is None:
        seen: set[str] = set()
        for frames in seqs.values():
            for fr in frames:
                seen.update(str(x) for x in fr.gt_labels)
                seen.update(str(x) for x in fr.pred_labels)
        classes = sorted(seen)
    hota_m, clear_m, id_m = _metrics()
    out: dict[str, dict[str, float]] = {}
    per_class: dict[str, dict[str, Any]] = {"hota": {}, "clear": {}, "id": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        for cls in [*classes, ALL]:
            res: dict[str, dict[str, Any]] = {"hota": {}, "clear": {}, "id": {}}
            for name, frames in seqs.items():
                data = _sequence_data(frames, cls, similarity, max_dist_m)
                res["hota"][name] = hota_m.eval_sequence(data)
                res["clear"][name] = clear_m.eval_sequence(data)
                res["id"][name] = id_m.eval_sequence(data)
            h = hota_m.combine_sequences(res["hota"])
            c = clear_m.combine_sequences(res["clear"])
            i = id_m.combine_sequences(res["id"])
            out[cls] = _summary(h, c, i)
            if cls != ALL:
                per_class["hota"][cls], per_class["clear"][cls], per_class["id"][cls] = h, c, i
        if classes:
            out[CLS_AVG] = _summary(
                hota_m.combine_classes_class_averaged(per_class["hota"]),
                clear_m.combine_classes_class_averaged(per_class["clear"]),
                id_m.combine_classes_class_averaged(per_class["id"]),
            )
    return out


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")) -> str:
    """A plain-text table: one row per key (e.g. class or method), percentages for ratio metrics."""
    w = max([16, *(len(str(k)) + 2 for k in rows)])
    head = f"{'':{w}s}" + "".join(f"{c:>8s}" for c in columns)
    lines = [head]
    for name, r in rows.items():
        cells = []
        for c in columns:
            v = r[c]
            cells.append(f"{v:8d}" if isinstance(v, int) else f"{100 * v:8.1f}")
        lines.append(f"{name:{w}s}" + "".join(cells))
    return "\n".join(lines)
