"""Training data targets (round trip through decode, flip), losses, and a tiny resumable training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ba_perception.core import geometry as geo
from ba_perception.core.detection.decode import DecodeConfig, decode
from ba_perception.core.detection.model import NUM_REG
from ba_perception.train.data import CachedSplit, TrainObjectFilter, frame_targets
from ba_perception.train.losses import focal_loss, generalized_iou, info_nce, regression_losses

K = np.array([[721.5, 0, 609.6], [0, 721.5, 172.9], [0, 0, 1.0]])


def _split() -> CachedSplit:
    centers = np.array([[3.0, 1.0, 18.0], [-6.0, 1.2, 25.0], [1.0, 1.0, 60.0]])
    sizes = np.array([[4.2, 1.8, 1.5], [0.7, 0.6, 1.8], [4.0, 1.7, 1.5]])
    yaw = np.array([0.4, -1.0, 2.0])
    corners = geo.box_corners_cam(torch.from_numpy(centers), torch.from_numpy(sizes), torch.from_numpy(yaw))
    box = geo.box2d_from_points(geo.project_points(corners, torch.from_numpy(K))).numpy()
    z = np.zeros
    return CachedSplit(
        images=z((1, 192, 640, 3), np.uint8), K_src=K[None], partner=np.array([0]), frame_meta=z((1, 3), np.int64),
        obj_frame=z(3, np.int64), obj_label=np.array([0, 1, 0]), obj_track=np.array([1, 2, 3]),
        obj_center=centers, obj_size=sizes, obj_yaw=yaw, obj_box=box,
        obj_occ=np.array([0.0, 0.1, 0.95]), obj_trunc=z(3),
        corr_frame=z(0, np.int64), corr_uv_a=z((0, 2)), corr_uv_b=z((0, 2)),
    )


@pytest.mark.parametrize("flip", [False, True])
def test_targets_decode_back_to_ground_truth(flip):
    split = _split()
    t = frame_targets(split, 0, flip, TrainObjectFilter())
    assert len(t["ind"]) == 2  # the 95 %-occluded car is ignored, not trained
    assert t["ignore"].sum() > 0
    h, w = t["heatmap"].shape[1:]
    reg = torch.zeros(1, NUM_REG, h * w)
    reg[0, :, t["ind"]] = t["reg"].t()
    out = {"heatmap": t["heatmap"][None], "regression": reg.view(1, NUM_REG, h, w),
           "embedding": torch.ones(1, 4, h, w), "features": torch.ones(1, 4, 2 * h, 2 * w)}
    Kf = torch.from_numpy(K).clone()
    if flip:
        Kf[0, 2] = 1242 - 1 - Kf[0, 2]
    (d,) = decode(out, Kf, split.preprocess, DecodeConfig(score_threshold=0.99))
    assert len(d) == 2
    order = torch.argsort(d.center_cam[:, 2])
    c = d.center_cam[order].double()
    if flip:
        c[:, 0] = -c[:, 0]
    assert torch.allclose(c, torch.from_numpy(split.obj_center[:2]), atol=1e-3)
    yaw = d.yaw[order].double()
    if flip:
        yaw = math.pi - yaw
    assert geo.wrap_angle(yaw - torch.from_numpy(split.obj_yaw[:2])).abs().max() < 1e-4


@pytest.mark.parametrize("flip", [False, True])
def test_centre_area_samples_each_decode_to_their_object(flip):
    split = _split()
    t = frame_targets(split, 0, flip, TrainObjectFilter())
    h, w = t["heatmap"].shape[1:]
    assert len(t["area_ind"]) > len(t["ind"])  # the near car's neighbours regress it too
    Kf = torch.from_numpy(K).clone()
    if flip:
        Kf[0, 2] = 1242 - 1 - Kf[0, 2]
    centres = []
    for j in range(len(t["area_ind"])):  # every sample alone in the map must decode to its object
        reg = torch.zeros(1, NUM_REG, h * w)
        heat = torch.zeros(1, *t["heatmap"].shape)
        cell = t["area_ind"][j]
        reg[0, :, cell] = t["area_reg"][j]
        heat.view(1, -1, h * w)[0, :, cell] = 1.0
        out = {"heatmap": heat, "regression": reg.view(1, NUM_REG, h, w),
               "embedding": torch.ones(1, 4, h, w), "features": torch.ones(1, 4, 2 * h, 2 * w)}
        (d,) = decode(out, Kf, split.preprocess, DecodeConfig(score_threshold=0.5))
        centres.append(d.center_cam[0].double())
    c = torch.stack(centres)
    if flip:
        c[:, 0] = -c[:, 0]
    gt = torch.from_numpy(split.obj_center[:2])
    err = (c[:, None] - gt[None]).norm(dim=-1).min(1).values
    assert err.max() < 1e-3
    # weights: each object sums to one (as its single centre cell did); the centre cells weigh most
    wsum = torch.zeros(2)
    owner = (c[:, None] - gt[None]).norm(dim=-1).argmin(1)
    wsum.index_add_(0, owner, t["area_weight"])
    assert torch.allclose(wsum, torch.ones(2))
    for i in t["ind"]:
        j = (t["area_ind"] == i).nonzero()[0, 0]
        assert t["area_weight"][j] == t["area_weight"][owner == owner[j]].max()
    # area_radius 0: the centre cells only, identical to the centre targets
    t0 = frame_targets(split, 0, flip, TrainObjectFilter(area_radius=0))
    order = torch.argsort(t0["area_ind"])
    assert torch.equal(t0["area_ind"][order], t["ind"].sort().values)
    assert torch.allclose(t0["area_reg"][order], t["reg"][torch.argsort(t["ind"])])


def test_generalized_iou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 1, 1]])
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0])
    assert torch.allclose(generalized_iou(a, b), expected)


def test_regression_loss_weights_select_samples():
    target = torch.zeros(2, NUM_REG)
    pred = target.clone()
    pred[1] += 1.0  # only the second sample is wrong
    both = regression_losses(pred, target)
    first = regression_losses(pred, target, torch.tensor([1.0, 0.0]))
    assert both["ltrb"] > 0 and both["box_iou"] > 0
    assert first["ltrb"] == 0 and first["offset"] == 0 and abs(first["box_iou"]) < 1e-6


def test_losses_are_small_for_perfect_predictions_and_large_otherwise():
    tgt = torch.zeros(1, 3, 8, 8)
    tgt[0, 0, 4, 4] = 1.0
    good = torch.full_like(tgt, -9.0)
    good[0, 0, 4, 4] = 9.0
    ign = torch.zeros(1, 8, 8)
    assert focal_loss(good, tgt, ign) < 1e-3 < focal_loss(torch.zeros_like(tgt), tgt, ign)
    r = torch.randn(5, NUM_REG)
    assert sum(v for k, v in regression_losses(r, r).items() if k != "depth") == 0
    d = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    assert info_nce(d, d) < info_nce(d, d.roll(1, 0))


@pytest.mark.slow
def test_tiny_training_run_checkpoints_and_resumes(tmp_path):
    from dataclasses import asdict

    from ba_perception.train.data import SplitSpec
    from ba_perception.train.trainer import TrainConfig, train

    cfg = TrainConfig(input_hw=(64, 192), batch_size=2, iterations=2, val_every=2, val_frames=2, pretrained=False,
                      train_split=asdict(SplitSpec("train", sequences=1, pairs_per_sequence=1)),
                      val_split=asdict(SplitSpec("val", sequences=1, pairs_per_sequence=1)))
    logs = []
    best = train(cfg, tmp_path / "run", cache_dir=tmp_path / "cache", log=logs.append)
    assert best.is_file() and (tmp_path / "run" / "last.pt").is_file()
    cfg.iterations = 3
    train(cfg, tmp_path / "run", resume=True, cache_dir=tmp_path / "cache", log=logs.append)
    assert any("resumed from" in s and "iteration 2" in s for s in logs)
    assert (tmp_path / "run" / "history.jsonl").read_text().count("\n") == 2
