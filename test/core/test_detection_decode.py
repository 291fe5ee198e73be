"""Detector preprocessing and decode geometry on synthetic heads with known answers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ba_perception.core import geometry as geo
from ba_perception.core.detection.decode import (
    DecodeConfig,
    DecodeError,
    box_agreement,
    box_nms,
    box_vote,
    decode,
    encode_objects,
    forward_flip_averaged,
    unflip_outputs,
)
from ba_perception.core.detection.model import NUM_REG, REG_CHANNELS
from ba_perception.core.detection.preprocess import (
    HORIZON_ROW_FRACTION,
    Preprocess,
    PreprocessError,
    apply_preprocess,
    horizon_row,
)

K_SRC = torch.tensor([[721.5, 0.0, 609.6], [0.0, 707.0, 172.9], [0.0, 0.0, 1.0]], dtype=torch.float64)
SRC_HW = (375, 1242)
NET_HW = (192, 640)


def _objects():
    labels = torch.tensor([0, 1, 2])
    centers = torch.tensor([[3.0, 1.2, 20.0], [-4.0, 0.9, 11.0], [6.5, 0.8, 30.0]], dtype=torch.float64)
    sizes = torch.tensor([[4.1, 1.7, 1.5], [0.7, 0.6, 1.8], [1.7, 0.5, 1.6]], dtype=torch.float64)
    yaw = torch.tensor([0.7, -2.5, 3.0], dtype=torch.float64)
    return labels, centers, sizes, yaw, _box_2d(centers, sizes, yaw)


def _box_2d(centers, sizes, yaw):
    """Projected 3D boxes in the source image, pixels."""
    return geo.box2d_from_points(geo.project_points(geo.box_corners_cam(centers, sizes, yaw), K_SRC))


def _encoded(pre, labels, centers, sizes, yaw, box, K=K_SRC):
    """Training targets of the objects and empty heat / regression maps at the output stride."""
    h, w = NET_HW[0] // 8, NET_HW[1] // 8
    enc = encode_objects(labels, centers, sizes, yaw, box, K, pre, (h, w))
    return enc, torch.zeros(1, 3, h, w), torch.zeros(1, NUM_REG, h, w)


def _heads(pre, labels, centers, sizes, yaw, box, depth_logvar=0.0, K=K_SRC):
    h, w = NET_HW[0] // 8, NET_HW[1] // 8
    enc, heat, reg = _encoded(pre, labels, centers, sizes, yaw, box, K)
    for i in range(len(labels)):
        x, y = enc.cell_xy[i].tolist()
        heat[0, labels[i], y, x] = 0.9 - 0.1 * i
        reg[0, :, y, x] = enc.regression[i].float()
        if depth_logvar is not None:
            reg[0, REG_CHANNELS["depth_logvar"], y, x] = depth_logvar
    emb = torch.nn.functional.normalize(torch.randn(1, 16, h, w), dim=1)
    feats = torch.nn.functional.normalize(torch.randn(1, 8, NET_HW[0] // 4, NET_HW[1] // 4), dim=1)
    return enc, {"heatmap": heat, "regression": reg, "embedding": emb, "features": feats}


def test_preprocess_maps_intrinsics_and_pixels_consistently():
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    assert pre.resized_hw[0] <= NET_HW[0] and pre.resized_hw[1] <= NET_HW[1]
    pts = torch.tensor([[[2.0, -1.0, 15.0], [-7.0, 1.5, 40.0]]], dtype=torch.float64)
    uv_src = geo.project_points(pts, K_SRC)
    uv_net = geo.project_points(pts, pre.K_net(K_SRC))
    assert torch.allclose(pre.to_net(uv_src), uv_net, atol=1e-9)
    assert torch.allclose(pre.to_src(uv_net), uv_src, atol=1e-9)


def test_preprocess_resize_follows_the_pixel_map():
    # A horizontal ramp I(u, v) = u keeps its value under resampling centred where the pixel map says,
    # so the resized value at a network pixel is the original coordinate it maps back to (the
    # antialias filter's discrete weights shift the centroid by < 0.1 original pixel).
    pre = Preprocess.letterbox((300, 1000), (192, 640))
    img = torch.arange(1000, dtype=torch.float64).expand(1, 3, 300, 1000).clone()
    out = apply_preprocess(img, pre)
    assert out.shape == (1, 3, 192, 640)
    u_net = torch.arange(pre.pad_x + 10, pre.pad_x + pre.resized_hw[1] - 10, dtype=torch.float64)
    row = pre.pad_y + pre.resized_hw[0] // 2
    expect = pre.to_src(torch.stack([u_net, torch.full_like(u_net, row)], -1))[:, 0]
    assert (out[0, 0, row, u_net.long()] - expect).abs().max() < 0.1
    with pytest.raises(PreprocessError):
        apply_preprocess(torch.zeros(1, 3, 10, 10), pre)


def test_horizon_band_keeps_the_training_rig_and_fills_the_input_for_tall_images():
    # KITTI-sized frames: letterbox exactly as before (the shipped pixel map).
    assert Preprocess.horizon_band(SRC_HW, NET_HW, 172.9) == Preprocess.letterbox(SRC_HW, NET_HW)
    # 16:9 1080p: a full-width band of the network's aspect ratio, no padding, horizon at the training share.
    K = torch.tensor([[960.0, 0, 955.0], [0, 960.0, 530.0], [0, 0, 1]], dtype=torch.float64)
    pre = Preprocess.horizon_band((1080, 1920), NET_HW, 530.0)
    assert pre.crop_hw == (576, 1920) and pre.crop_x == 0 and pre.resized_hw == NET_HW and pre.pad_x == pre.pad_y == 0
    assert abs((530.0 + 0.5 - pre.crop_y) / 576 - HORIZON_ROW_FRACTION) <= 1 / 576
    # Exact map: points project to the same network pixel through K_net and through to_net, and back.
    pts = torch.tensor([[[2.0, 1.4, 15.0], [-7.0, 1.5, 40.0], [0.3, -0.5, 80.0]]], dtype=torch.float64)
    uv_src = geo.project_points(pts, K)
    uv_net = geo.project_points(pts, pre.K_net(K))
    assert torch.allclose(pre.to_net(uv_src), uv_net, atol=1e-9)
    assert torch.allclose(pre.to_src(pre.to_net(uv_src)), uv_src, atol=1e-9)
    # The resampled image follows the map: a vertical ramp I(u, v) = v reads back the source row.
    img = torch.arange(1080, dtype=torch.float64)[:, None].expand(1, 3, 1080, 1920).clone()
    out = apply_preprocess(img, pre)
    v_net = torch.arange(10, 182, dtype=torch.float64)
    expect = pre.to_src(torch.stack([torch.full_like(v_net, 320.0), v_net], -1))[:, 1]
    assert (out[0, 0, v_net.long(), 320] - expect).abs().max() < 0.1


def test_horizon_row_follows_the_mounting_pitch():
    K = torch.tensor([[800.0, 0, 640.0], [0, 800.0, 360.0], [0, 0, 1]], dtype=torch.float64).numpy()
    R_body_opt = geo.R_BODY_OPTICAL.numpy()
    p = math.radians(3.0)  # looking 3 deg down: the horizon moves up by f tan(3 deg)
    Ry = torch.tensor([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]], dtype=torch.float64).numpy()
    assert horizon_row(K, R_body_opt) == pytest.approx(360.0)
    assert horizon_row(K, Ry @ R_body_opt) == pytest.approx(360.0 - 800.0 * math.tan(p))
    with pytest.raises(PreprocessError):
        Preprocess.for_camera("stretch", (720, 1280), NET_HW, K)


def test_decode_through_a_horizon_band_recovers_boxes_in_original_pixels():
    src_hw = (1080, 1920)
    K = torch.tensor([[960.0, 0, 955.0], [0, 960.0, 530.0], [0, 0, 1]], dtype=torch.float64)
    pre = Preprocess.horizon_band(src_hw, NET_HW, 530.0)
    labels, centers, sizes, yaw, _ = _objects()
    box = geo.box2d_from_points(geo.project_points(geo.box_corners_cam(centers, sizes, yaw), K))
    enc, outs = _heads(pre, labels, centers, sizes, yaw, box, K=K)
    (det,) = decode(outs, K, pre, DecodeConfig(score_threshold=0.5, depth_confidence_scale=0.0))
    assert len(det) == 3
    assert torch.allclose(det.center_cam.double(), centers, atol=2e-3)
    assert torch.allclose(det.box_2d.double(), box, atol=5e-2)


def test_decode_recovers_encoded_boxes_exactly():
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, box = _objects()
    enc, outs = _heads(pre, labels, centers, sizes, yaw, box)
    assert enc.inside.all()
    (det,) = decode(outs, K_SRC, pre, DecodeConfig(score_threshold=0.5, depth_confidence_scale=0.0))
    assert len(det) == 3
    assert det.labels.tolist() == [0, 1, 2]
    assert torch.allclose(det.center_cam.double(), centers, atol=2e-3)
    assert torch.allclose(det.size_lwh.double(), sizes, atol=1e-4)
    assert geo.wrap_angle(det.yaw.double() - yaw).abs().max() < 1e-4
    assert torch.allclose(det.box_2d.double(), box, atol=2e-2)
    proj = geo.project_points(centers[:, None], K_SRC)[:, 0]
    assert torch.allclose(det.center_uv.double(), proj, atol=2e-3)
    # log-variance 0 -> sigma of log-depth 1 -> depth_std = z.
    assert torch.allclose(det.depth_std.double(), centers[:, 2], rtol=1e-4)
    assert torch.allclose(det.embedding.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_decode_uses_the_message_intrinsics_not_fixed_ones():
    # Same image content, but a camera with twice the focal length: the pinhole model says depth doubles.
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, box = _objects()
    _, outs = _heads(pre, labels, centers, sizes, yaw, box)
    K2 = K_SRC.clone()
    K2[0, 0] *= 2
    K2[1, 1] *= 2
    cfg = DecodeConfig(score_threshold=0.5, depth_confidence_scale=0.0)
    (d1,) = decode(outs, K_SRC, pre, cfg)
    (d2,) = decode(outs, K2, pre, cfg)
    assert len(d1) == len(d2) == 3
    assert torch.allclose(d2.center_cam[:, 2], 2 * d1.center_cam[:, 2], rtol=1e-5)
    assert torch.allclose(d2.box_2d, d1.box_2d)


def test_decode_other_resolution_and_samples_inside_boxes():
    src_hw, net_hw = (720, 1280), (192, 640)
    K = torch.tensor([[900.0, 0, 640.0], [0, 905.0, 355.0], [0, 0, 1]], dtype=torch.float64)
    pre = Preprocess.letterbox(src_hw, net_hw)
    # a 16:9 frame letterboxed into 10:3 is scaled by its height and padded left and right
    assert pre.pad_y == 0 and pre.pad_x > 0
    center = torch.tensor([[1.0, 1.0, 15.0]], dtype=torch.float64)
    size = torch.tensor([[4.0, 1.8, 1.5]], dtype=torch.float64)
    yaw = torch.tensor([-1.2], dtype=torch.float64)
    box = geo.box2d_from_points(geo.project_points(geo.box_corners_cam(center, size, yaw), K))
    h, w = 24, 80
    enc = encode_objects(torch.tensor([0]), center, size, yaw, box, K, pre, (h, w))
    heat = torch.zeros(1, 3, h, w)
    reg = torch.zeros(1, NUM_REG, h, w)
    x, y = enc.cell_xy[0].tolist()
    heat[0, 0, y, x] = 1.0
    reg[0, :, y, x] = enc.regression[0].float()
    feats = torch.nn.functional.normalize(torch.randn(1, 8, 48, 160), dim=1)
    outs = {"heatmap": heat, "regression": reg, "embedding": torch.ones(1, 4, h, w), "features": feats}
    (det,) = decode(outs, K, pre, DecodeConfig(score_threshold=0.5, samples_per_side=3, depth_confidence_scale=0.0))
    assert torch.allclose(det.center_cam.double(), center, atol=2e-3)
    assert geo.wrap_angle(det.yaw.double() - yaw).abs().max() < 1e-4
    uv = det.sample_uv[0]
    assert uv.shape == (9, 2) and det.descriptors.shape == (1, 9, 8)
    b = det.box_2d[0]
    assert ((uv[:, 0] >= b[0]) & (uv[:, 0] <= b[2]) & (uv[:, 1] >= b[1]) & (uv[:, 1] <= b[3])).all()
    assert torch.allclose(det.descriptors.norm(dim=-1), torch.ones(1, 9), atol=1e-5)


def test_decode_rejects_bad_intrinsics_and_shapes():
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    outs = {
        "heatmap": torch.zeros(1, 3, 24, 80),
        "regression": torch.zeros(1, NUM_REG, 24, 80),
        "embedding": torch.ones(1, 4, 24, 80),
        "features": torch.ones(1, 8, 48, 160),
    }
    bad = K_SRC.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DecodeError):
        decode(outs, bad, pre)
    with pytest.raises(DecodeError):
        decode({**outs, "regression": torch.zeros(1, NUM_REG, 12, 40)}, K_SRC, pre)
    with pytest.raises(DecodeError):
        decode({"heatmap": outs["heatmap"]}, K_SRC, pre)


def _blob_heads(pre, labels, centers, sizes, yaw, peaks, rel_depth_std):
    """Heads of a trained-looking network: each object is a 3x3 blob of heat around its centre cell
    (peak ``peaks[i]``, neighbours x0.6) and every blob cell regresses the same 2D/3D box (offsets
    relative to that cell); where blobs overlap, the cell belongs to the hotter one."""
    box = _box_2d(centers, sizes, yaw)
    h, w = NET_HW[0] // 8, NET_HW[1] // 8
    enc, heat, reg = _encoded(pre, labels, centers, sizes, yaw, box)
    for i in range(len(labels)):
        x0, y0 = enc.cell_xy[i].tolist()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                x, y = x0 + dx, y0 + dy
                v = peaks[i] * (1.0 if dx == dy == 0 else 0.6)
                if v <= heat[0, :, y, x].max():
                    continue
                heat[0, :, y, x] = 0.0
                heat[0, labels[i], y, x] = v
                r = enc.regression[i].float().clone()
                r[REG_CHANNELS["offset"]] -= torch.tensor([dx, dy], dtype=torch.float32)
                reg[0, :, y, x] = r
                reg[0, REG_CHANNELS["depth_logvar"], y, x] = 2.0 * math.log(rel_depth_std[i])
    emb = torch.nn.functional.normalize(torch.ones(1, 4, h, w), dim=1)
    feats = torch.nn.functional.normalize(torch.ones(1, 8, NET_HW[0] // 4, NET_HW[1] // 4), dim=1)
    return enc, box, {"heatmap": heat, "regression": reg, "embedding": emb, "features": feats}


def test_box_nms_decodes_objects_in_adjacent_cells():
    # A near car and a farther car behind it, ~15 px apart in the image: centres in adjacent output cells,
    # 2D boxes of very different size (IoU < 0.5).
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels = torch.tensor([0, 0])
    centers = torch.tensor([[0.0, 1.0, 12.0], [0.4, 1.6, 20.0]], dtype=torch.float64)
    sizes = torch.tensor([[4.0, 1.7, 1.5], [4.2, 1.8, 1.5]], dtype=torch.float64)
    yaw = torch.tensor([1.5, 1.6], dtype=torch.float64)
    enc, box, outs = _blob_heads(pre, labels, centers, sizes, yaw, peaks=[0.9, 0.8], rel_depth_std=[0.01, 0.01])
    assert (enc.cell_xy[0] - enc.cell_xy[1]).abs().max() == 1  # neighbours within one 3x3 window
    assert geo.iou_2d(box[:1], box[1:]).item() < 0.5
    (bx,) = decode(outs, K_SRC, pre, DecodeConfig(score_threshold=0.3, box_nms_iou=0.5))
    assert len(bx) == 2  # the 16 other blob cells were duplicates (IoU 1) and are suppressed
    order = bx.center_cam[:, 2].argsort()
    assert torch.allclose(bx.center_cam[order].double(), centers, atol=2e-3)
    assert torch.allclose(bx.box_2d[order].double(), box, atol=2e-2)


def test_depth_confidence_scales_and_reorders_scores():
    # Object 0: hotter heatmap but an uncertain depth (relative std 0.2); object 1: cooler but sure (0.01).
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, _ = _objects()
    labels, centers, sizes, yaw = labels[:2] * 0, centers[:2], sizes[:2], yaw[:2]
    _, _, outs = _blob_heads(pre, labels, centers, sizes, yaw, peaks=[0.9, 0.6], rel_depth_std=[0.2, 0.01])
    (off,) = decode(outs, K_SRC, pre, DecodeConfig(score_threshold=0.01, depth_confidence_scale=0.0))
    (on,) = decode(outs, K_SRC, pre, DecodeConfig(score_threshold=0.01, depth_confidence_scale=0.05))
    assert len(off) == len(on) == 2
    assert off.center_cam[0, 2].item() == pytest.approx(centers[0, 2].item(), abs=2e-3)  # raw score: object 0 first
    assert on.center_cam[0, 2].item() == pytest.approx(centers[1, 2].item(), abs=2e-3)  # with confidence: object 1 first
    assert torch.allclose(on.scores, torch.tensor([0.6 * math.exp(-0.01 / 0.05), 0.9 * math.exp(-0.2 / 0.05)]), rtol=1e-5)
    assert torch.allclose(on.depth_std / on.center_cam[:, 2], torch.tensor([0.01, 0.2]), rtol=1e-4)
    # the threshold applies to the final score: object 0 (0.0165) drops out at 0.1
    (hi,) = decode(outs, K_SRC, pre, DecodeConfig(score_threshold=0.1, depth_confidence_scale=0.05))
    assert len(hi) == 1 and hi.center_cam[0, 2].item() == pytest.approx(centers[1, 2].item(), abs=2e-3)


def test_box_nms_removes_duplicates_above_the_iou_and_keeps_the_rest():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 3], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    groups = torch.tensor([0, 0, 0, 1])  # the last one is another class / image: never suppresses group 0
    assert geo.iou_2d(boxes[:1], boxes[1:3]).tolist() == [[pytest.approx(0.8), pytest.approx(0.3)]]
    assert box_nms(boxes, scores, groups, 0.5).tolist() == [True, False, True, True]
    # greedy, not "any overlap": B is suppressed by A, so C (which only B overlaps) survives
    chain = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    assert box_nms(chain, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.5).tolist() == [True, False, True]
    assert box_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


def test_box_nms_matches_sequential_greedy_nms_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        xy = torch.rand(60, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 40], -1)
        scores = torch.rand(60, generator=g)
        groups = torch.randint(0, 3, (60,), generator=g)
        keep = []
        for i in scores.argsort(descending=True).tolist():  # reference: the textbook loop
            if all(groups[j] != groups[i] or geo.iou_2d(boxes[j:j + 1], boxes[i:i + 1]).item() <= 0.5 for j in keep):
                keep.append(i)
        expect = torch.zeros(60, dtype=torch.bool)
        expect[keep] = True
        assert torch.equal(box_nms(boxes, scores, groups, 0.5), expect)


def test_encoded_ground_truth_decodes_with_full_confidence_by_default():
    # The encoder marks ground-truth depth as certain, so perfect outputs keep their heatmap score
    # under the default depth-confidence scoring (eval-det's "perfect forward" relies on it).
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, box = _objects()
    _, outs = _heads(pre, labels, centers, sizes, yaw, box, depth_logvar=None)
    (det,) = decode(outs, K_SRC, pre, DecodeConfig())
    assert len(det) == 3 and DecodeConfig().depth_confidence_scale > 0
    assert torch.allclose(det.scores, torch.tensor([0.9, 0.8, 0.7]), rtol=2e-3)
    assert torch.allclose(det.center_cam.double(), centers, atol=2e-3)
    assert (det.depth_std / det.center_cam[:, 2] < 1e-3).all()


def test_decode_config_from_node_parameters_takes_known_fields_only():
    from ba_perception.core.detection.decode import DecodeConfig

    cfg = DecodeConfig.from_params({"score_threshold": 0.25, "box_nms_iou": 0.4, "model": "x.onnx", "threads": 1})
    assert cfg.score_threshold == 0.25 and cfg.box_nms_iou == 0.4
    assert cfg.max_detections == DecodeConfig().max_detections


def test_bad_decode_settings_fail_when_the_config_is_made():
    with pytest.raises(DecodeError, match="box_nms_iou"):
        DecodeConfig.from_params({"box_nms_iou": 0.0, "unrelated_param": 1})
    with pytest.raises(DecodeError, match="box_vote_iou"):
        DecodeConfig(box_vote_iou=1.0)
    with pytest.raises(DecodeError, match="box_quality_power"):
        DecodeConfig(box_quality_power=-1.0)


def test_box_vote_averages_overlapping_candidates_of_the_same_group_by_score():
    stride = 8
    cells = torch.tensor([[10.0, 5.0], [11.0, 5.0], [30.0, 5.0], [10.0, 5.0]])
    reg = torch.zeros(4, NUM_REG)
    reg[:, REG_CHANNELS["offset"]] = torch.tensor([[0.2, 0.1], [-0.6, 0.1], [0.0, 0.0], [0.0, 0.0]])
    reg[:, REG_CHANNELS["ltrb"]] = math.log(2.0)  # 16 px to every side
    reg[:, REG_CHANNELS["depth"]] = torch.tensor([[1.0], [2.0], [5.0], [7.0]])
    reg[:, REG_CHANNELS["alpha"]] = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    centre = (cells + reg[:, :2] + 0.5) * stride - 0.5
    boxes = torch.cat([centre - 16.0, centre + 16.0], -1)
    scores = torch.tensor([0.6, 0.2, 0.5, 0.9])
    groups = torch.tensor([0, 0, 0, 1])  # candidate 3: same place, other class -> never votes for 0
    keep = torch.tensor([True, False, True, True])
    assert geo.iou_2d(boxes[:1], boxes[1:3]).tolist()[0][0] > 0.8 > 0.0 == geo.iou_2d(boxes[:1], boxes[2:3]).item()
    voted = box_vote(boxes, cells, reg, scores, groups, keep, stride, 0.6)
    assert voted.shape == (3, NUM_REG)
    # kept candidate 0: 3/4 of itself + 1/4 of candidate 1, expressed relative to cell 0
    w = torch.tensor([0.75, 0.25])
    assert voted[0, REG_CHANNELS["depth"]].item() == pytest.approx(1.25)
    assert voted[0, REG_CHANNELS["offset"]].tolist() == pytest.approx((w @ (cells[:2] + reg[:2, :2]) - cells[0]).tolist())
    assert voted[0, REG_CHANNELS["ltrb"]].tolist() == pytest.approx([math.log(2.0)] * 4, abs=1e-6)
    assert voted[0, REG_CHANNELS["alpha"]].tolist() == pytest.approx([0.25, 0.75])
    # lone candidates keep their own regression
    assert torch.allclose(voted[1:], reg[2:], atol=1e-6)


def test_box_vote_weights_log_depth_by_score_over_variance():
    stride = 8
    cells = torch.tensor([[10.0, 5.0], [11.0, 5.0]])
    reg = torch.zeros(2, NUM_REG)
    reg[:, REG_CHANNELS["ltrb"]] = math.log(2.0)
    reg[:, REG_CHANNELS["offset"]] = torch.tensor([[0.0, 0.0], [-1.0, 0.0]])  # both cells regress the same box
    reg[:, REG_CHANNELS["depth"]] = torch.tensor([[3.0], [3.2]])
    reg[:, REG_CHANNELS["depth_logvar"]] = torch.tensor([[math.log(0.01)], [math.log(0.04)]])  # cell 1: twice the std
    centre = (cells + reg[:, :2] + 0.5) * stride - 0.5
    boxes = torch.cat([centre - 16.0, centre + 16.0], -1)
    scores = torch.tensor([0.5, 0.5])
    voted = box_vote(boxes, cells, reg, scores, torch.zeros(2, dtype=torch.long), torch.tensor([True, False]), stride, 0.6)
    # precision weights 100 : 25 -> 0.8 x 3.0 + 0.2 x 3.2; the log-variance itself is the score-weighted mean
    assert voted[0, REG_CHANNELS["depth"]].item() == pytest.approx(3.04, rel=1e-6)
    assert voted[0, REG_CHANNELS["depth_logvar"]].item() == pytest.approx(0.5 * (math.log(0.01) + math.log(0.04)), rel=1e-6)


def test_decode_box_voting_averages_the_blob_cells_regressions():
    # One car; the neighbour cells regress the true box but the peak cell's depth is 10 % too far.
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, _ = _objects()
    enc, _, outs = _blob_heads(pre, labels[:1], centers[:1], sizes[:1], yaw[:1], peaks=[0.9], rel_depth_std=[0.01])
    x0, y0 = enc.cell_xy[0].tolist()
    outs["regression"][0, REG_CHANNELS["depth"], y0, x0] += math.log(1.1)
    cfg = DecodeConfig(score_threshold=0.3, depth_confidence_scale=0.0)
    (peak,) = decode(outs, K_SRC, pre, replace(cfg, box_vote_iou=0.0))
    (voted,) = decode(outs, K_SRC, pre, replace(cfg, box_vote_iou=0.6))
    assert len(peak) == len(voted) == 1
    z = centers[0, 2].item()
    assert peak.center_cam[0, 2].item() == pytest.approx(1.1 * z, rel=1e-4)
    # 9 cells vote (peak 0.9, eight at 0.54): log-depth error log(1.1) x 0.9 / (0.9 + 8 x 0.54)
    assert voted.center_cam[0, 2].item() == pytest.approx(z * 1.1 ** (0.9 / (0.9 + 8 * 0.54)), rel=1e-4)
    assert torch.allclose(voted.box_2d.double(), peak.box_2d.double(), atol=1e-3)  # every cell had the same box


def test_flip_test_maps_the_mirrored_images_outputs_back_exactly():
    # A perfect network's outputs on the image and on its mirror: the mirror is the world seen by a
    # camera with cx' = W - 1 - cx, objects at x -> -x with rotation_y -> pi - rotation_y.
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, box = _objects()
    enc, outs = _heads(pre, labels, centers, sizes, yaw, box, depth_logvar=-6.0)
    K_m = K_SRC.clone()
    K_m[0, 2] = SRC_HW[1] - 1 - K_SRC[0, 2]
    c_m, yaw_m = centers * centers.new_tensor([-1.0, 1.0, 1.0]), math.pi - yaw
    box_m = geo.box2d_from_points(geo.project_points(geo.box_corners_cam(c_m, sizes, yaw_m), K_m))
    h, w = NET_HW[0] // 8, NET_HW[1] // 8
    enc_m = encode_objects(labels, c_m, sizes, yaw_m, box_m, K_m, pre, (h, w))
    heat_m, reg_m = torch.zeros(1, 3, h, w), torch.zeros(1, NUM_REG, h, w)
    for i in range(len(labels)):
        x, y = enc_m.cell_xy[i].tolist()
        assert (x, y) == (w - 1 - enc.cell_xy[i, 0].item(), enc.cell_xy[i, 1].item())
        heat_m[0, labels[i], y, x] = 0.9 - 0.1 * i
        reg_m[0, :, y, x] = enc_m.regression[i].float()
        reg_m[0, REG_CHANNELS["depth_logvar"], y, x] = -6.0
    heat_b, reg_b = unflip_outputs({"heatmap": heat_m, "regression": reg_m})
    assert torch.equal(heat_b, outs["heatmap"])
    assert torch.allclose(reg_b, outs["regression"], atol=1e-5)

    image = torch.rand(1, 3, *NET_HW)
    seen = []

    def network(x):
        seen.append("mirror" if torch.equal(x, image.flip(-1)) else "image" if torch.equal(x, image) else "?")
        return {"heatmap": heat_m, "regression": reg_m} if seen[-1] == "mirror" else outs

    fused = forward_flip_averaged(network, image)
    assert seen == ["mirror", "image"]
    assert fused["embedding"] is outs["embedding"] and fused["features"] is outs["features"]
    (det,) = decode(fused, K_SRC, pre, DecodeConfig(score_threshold=0.5, depth_confidence_scale=0.0))
    assert det.labels.tolist() == [0, 1, 2]
    assert torch.allclose(det.center_cam.double(), centers, atol=2e-3)
    assert geo.wrap_angle(det.yaw.double() - yaw).abs().max() < 1e-4
    assert torch.allclose(det.box_2d.double(), box, atol=2e-2)


def test_box_agreement_is_the_score_weighted_iou_of_the_same_groups_overlapping_candidates():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 2], [0, 0, 10, 9]])
    scores = torch.tensor([0.6, 0.3, 0.9, 0.9])
    groups = torch.tensor([0, 0, 0, 1])  # candidate 2 (IoU 0.2) is another object's, 3 another class
    q = box_agreement(kept, torch.tensor([0]), boxes, scores, groups)
    assert q.tolist() == [pytest.approx((0.6 * 1.0 + 0.3 * 0.8) / 0.9)]
    assert box_agreement(kept, torch.tensor([1]), boxes[:3], scores[:3], groups[:3]).tolist() == [0.0]  # no candidate: 0


def test_box_quality_ranks_a_peak_whose_cells_disagree_on_the_box_lower():
    # Two cars with the same heat; every blob cell of car 1 regresses its box 30 % too wide.
    pre = Preprocess.letterbox(SRC_HW, NET_HW)
    labels, centers, sizes, yaw, _ = _objects()
    labels, centers, sizes, yaw = labels[:2] * 0, centers[:2], sizes[:2], yaw[:2]
    enc, box, outs = _blob_heads(pre, labels, centers, sizes, yaw, peaks=[0.8, 0.8], rel_depth_std=[0.01, 0.01])
    x1, y1 = enc.cell_xy[1].tolist()
    ltrb = outs["regression"][0, REG_CHANNELS["ltrb"], y1 - 1:y1 + 2, x1 - 1:x1 + 2].clone()
    outs["regression"][0, REG_CHANNELS["ltrb"], y1 - 1:y1 + 2, x1 - 1:x1 + 2] = ltrb + math.log(1.3)
    outs["regression"][0, REG_CHANNELS["ltrb"], y1, x1] = ltrb[:, 1, 1]  # ... except the peak
    outs["heatmap"][0, 0, y1 - 1:y1 + 2, x1 - 1:x1 + 2] = 0.7  # car 1's cells stay candidates at the high threshold below
    outs["heatmap"][0, 0, y1, x1] = 0.81  # car 1 wins without the quality term
    cfg = DecodeConfig(score_threshold=0.05, depth_confidence_scale=0.0, box_vote_iou=0.0)
    (off,) = decode(outs, K_SRC, pre, replace(cfg, box_quality_power=0.0))
    (on,) = decode(outs, K_SRC, pre, replace(cfg, box_quality_power=1.0))
    assert len(off) == len(on) == 2
    assert off.center_cam[0, 2].item() == pytest.approx(centers[1, 2].item(), abs=2e-3)
    assert on.center_cam[0, 2].item() == pytest.approx(centers[0, 2].item(), abs=2e-3)
    assert on.scores[0].item() == pytest.approx(0.8, rel=1e-5)  # every cell agrees on car 0's box
    assert on.scores[1].item() < 0.81 * 0.9
    assert torch.allclose(on.box_2d[1].double(), box[1], atol=2e-2)  # the peak's own box is kept (no voting)
    # the threshold applies to the final score: above car 1's agreement-scaled score only car 0 stays
    assert on.scores[1].item() + 0.01 < 0.7
    (hi,) = decode(outs, K_SRC, pre, replace(cfg, box_quality_power=1.0, score_threshold=on.scores[1].item() + 0.01))
    assert len(hi) == 1 and hi.center_cam[0, 2].item() == pytest.approx(centers[0, 2].item(), abs=2e-3)
