"""ONNX export of the detector (`ba-perception export`): raw output maps, decode documented in metadata."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ba_perception.core.detection.backends import file_sha256
from ba_perception.core.detection.decode import DecodeConfig
from ba_perception.core.detection.model import (
    CLASS_MEAN_SIZE_LWH,
    FEATURE_STRIDE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_STRIDE,
    REF_FOCAL_PX,
    REG_CHANNELS,
    ModelError,
    MonoDetector,
    load_checkpoint,
)

_D = DecodeConfig()
DECODE_DOC = (
    "Outputs are raw maps; decode with ba_perception.core.detection.decode.decode(outputs, K, preprocess). "
    "DecodeConfig defaults: test-time flip (the mirrored image's heatmap and regression, mapped back by decode.unflip_outputs, "
    "averaged with the image's); heatmap: sigmoid class scores of projected 3D centres at output_stride; candidates = top-K cells, "
    f"score x exp(-relative depth std / {_D.depth_confidence_scale}), class-wise 2D box NMS at IoU {_D.box_nms_iou}, then box voting "
    f"(score-weighted mean regression of the same-class candidates at 2D IoU > {_D.box_vote_iou}; "
    "log-depth weighted by score / its variance), "
    f"score x box agreement^{_D.box_quality_power} (decode.box_agreement). "
    "regression channels: see reg_channels; z = exp(depth) * sqrt(fx_net*fy_net) / ref_focal_px; "
    "centre = unproject((cell + offset + 0.5) * stride - 0.5, z, K_net); size = class_mean * exp(size); "
    "alpha = atan2(sin, cos); rotation_y = alpha + atan2(x, z). embedding and features are L2-normalised."
)


class ExportError(RuntimeError):
    """Raised when the export or its verification fails."""


def onnx_metadata(model: MonoDetector, extra: dict | None = None) -> dict:
    """The JSON stored under metadata key ``ba_perception`` of an exported model."""
    return {
        "config": model.cfg.to_dict(),
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "range": "RGB in [0, 1]",
                  "normalization": f"in-graph ImageNet mean {IMAGENET_MEAN} std {IMAGENET_STD}",
                  "resize": "letterbox (ba_perception.core.detection.preprocess.Preprocess.letterbox)"},
        "outputs": list(MonoDetector.OUTPUT_NAMES),
        "output_stride": OUTPUT_STRIDE,
        "feature_stride": FEATURE_STRIDE,
        "ref_focal_px": REF_FOCAL_PX,
        "class_mean_size_lwh": [list(s) for s in CLASS_MEAN_SIZE_LWH],
        "reg_channels": {k: [v.start, v.stop] for k, v in REG_CHANNELS.items()},
        "decode": DECODE_DOC,
        **(extra or {}),
    }


def export_onnx(
    model: MonoDetector,
    path: str | Path,
    opset: int = 17,
    dynamic_batch: bool = False,
    extra_metadata: dict | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU, fp32) to ONNX with named outputs and metadata.

    Args:
        model: the network.
        path: output ``.onnx`` file.
        opset: ONNX opset (>= 17).
        dynamic_batch: make the batch dimension dynamic.
        extra_metadata: merged into the ``ba_perception`` metadata JSON.

    Returns:
        The written path.

    Raises:
        ExportError: opset below 17 or the exporter fails.
    """
    import onnx

    if opset < 17:
        raise ExportError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    h, w = model.cfg.input_hw
    x = torch.rand(1, 3, h, w)
    axes = {n: {0: "batch"} for n in ("image", *MonoDetector.OUTPUT_NAMES)} if dynamic_batch else None
    tmp = path.with_suffix(".onnx.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), str(tmp), input_names=["image"], output_names=list(MonoDetector.OUTPUT_NAMES),
                opset_version=opset, dynamic_axes=axes, do_constant_folding=True, dynamo=False,
            )
    except Exception as err:
        raise ExportError(f"torch.onnx.export failed: {err}") from err
    m = onnx.load(str(tmp))
    meta = m.metadata_props.add()
    meta.key = "ba_perception"
    meta.value = json.dumps(onnx_metadata(model, extra_metadata))
    m.producer_name = "ba_perception"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    tmp.replace(path)
    return path


def verify_parity(model: MonoDetector, onnx_path: str | Path, seed: int = 0) -> dict[str, float]:
    """Max abs difference per output between torch CPU and ONNX Runtime CPU on a random input."""
    from ba_perception.core.detection.backends import OnnxRuntimeBackend

    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.input_hw
    x = torch.rand(1, 3, h, w, generator=g)
    with torch.inference_mode():
        ref = model.cpu().float().eval()(x)
    got = OnnxRuntimeBackend(onnx_path, device="cpu")(x)
    return {k: float((ref[k] - got[k]).abs().max()) for k in MonoDetector.OUTPUT_NAMES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `ba-perception export`."""
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt) from `ba-perception train`")
    parser.add_argument("--out", default="models/detector.onnx", help="output ONNX file")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--dynamic-batch", action="store_true", help="dynamic batch dimension")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch parity check")


def run(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX and check parity against torch."""
    from ba_perception.cli import CommandError

    try:
        model, ck = load_checkpoint(args.checkpoint)
    except ModelError as err:
        raise CommandError(f"{err}; train one with `ba-perception train`") from err
    extra = {"checkpoint_sha256": file_sha256(args.checkpoint), "training": ck.get("meta", {})}
    try:
        out = export_onnx(model, args.out, args.opset, args.dynamic_batch, extra)
    except ExportError as err:
        raise CommandError(str(err)) from err
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, opset {args.opset}, input 1x3x{model.cfg.input_hw[0]}x{model.cfg.input_hw[1]})")
    if not args.no_verify:
        diffs = verify_parity(model, out)
        worst = max(diffs.values())
        print("parity torch CPU vs onnxruntime CPU, max abs diff: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        if not np.isfinite(worst) or worst > 1e-3:
            raise CommandError(f"exported model differs from torch by {worst:.3g} (> 1e-3); do not ship it")
    return 0
