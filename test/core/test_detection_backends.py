"""Detector backends: ONNX Runtime vs torch parity, selection, and one-line errors on bad input."""

from __future__ import annotations

import pytest
import torch

from ba_perception.core.detection.backends import (
    BackendError,
    OnnxRuntimeBackend,
    TorchBackend,
    create_backend,
    read_onnx_metadata,
    tensorrt_available,
)
from ba_perception.core.detection.model import DetectorConfig, MonoDetector, save_checkpoint
from ba_perception.train.export import export_onnx

CFG = DetectorConfig(input_hw=(64, 192))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MonoDetector(CFG).eval()
    # Non-trivial BN statistics so the parity test exercises them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("det")
    ck = d / "det.pt"
    save_checkpoint(ck, model)
    onnx_path = export_onnx(model, d / "det.onnx", dynamic_batch=True)
    return model, ck, onnx_path


def test_onnxruntime_matches_torch_cpu_fp32(exported):
    model, ck, onnx_path = exported
    x = torch.rand(2, 3, *CFG.input_hw, generator=torch.Generator().manual_seed(1))
    ort_out = OnnxRuntimeBackend(onnx_path, device="cpu", threads=1)(x)
    torch_out = TorchBackend(ck, device="cpu")(x)
    for k in MonoDetector.OUTPUT_NAMES:
        assert ort_out[k].shape == torch_out[k].shape
        assert (ort_out[k] - torch_out[k]).abs().max() < 1e-4, k


def test_metadata_describes_input_and_decode(exported):
    _, _, onnx_path = exported
    meta = read_onnx_metadata(onnx_path)
    assert meta["config"]["input_hw"] == list(CFG.input_hw)
    assert meta["output_stride"] == 8 and "decode" in meta


def test_auto_picks_an_available_backend_on_cpu(exported):
    _, ck, onnx_path = exported
    be = create_backend("auto", onnx_path=onnx_path, checkpoint=ck, device="cpu")
    assert be.name.startswith("onnxruntime")
    assert create_backend("auto", checkpoint=ck, device="cpu").name.startswith("torch")


def test_bad_inputs_give_one_line_errors(exported, tmp_path):
    _, ck, onnx_path = exported
    with pytest.raises(BackendError, match="not found"):
        create_backend("onnxruntime", onnx_path=tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(BackendError, match="corrupt"):
        create_backend("onnxruntime", onnx_path=corrupt)
    with pytest.raises(BackendError, match="checkpoint"):
        create_backend("torch", checkpoint=tmp_path / "missing.pt")
    be = create_backend("onnxruntime", onnx_path=onnx_path)
    with pytest.raises(BackendError, match="does not match the model input") as ei:
        be(torch.zeros(1, 3, 100, 100))
    assert "\n" not in str(ei.value)
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("openvino", onnx_path=onnx_path)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is importable here; the missing-package error cannot be shown")
def test_tensorrt_absent_is_a_clear_error(exported):
    _, _, onnx_path = exported
    with pytest.raises(BackendError, match="tensorrt") as ei:
        create_backend("tensorrt", onnx_path=onnx_path)
    assert "\n" not in str(ei.value)


@pytest.mark.skipif(not tensorrt_available(), reason="tensorrt not importable or no CUDA GPU")
def test_tensorrt_matches_torch_fp16(exported, tmp_path):
    model, ck, onnx_path = exported
    x = torch.rand(1, 3, *CFG.input_hw, generator=torch.Generator().manual_seed(2))
    trt_out = create_backend("tensorrt", onnx_path=onnx_path, precision="fp16", engine_cache_dir=tmp_path)(x)
    ref = TorchBackend(ck, device="cpu")(x)
    for k in ("heatmap", "regression"):
        # fp16 tolerance: relative to the output range
        assert (trt_out[k].cpu() - ref[k]).abs().max() < 2e-2 * max(1.0, ref[k].abs().max().item()), k
    # A corrupt cached engine is rebuilt, not fatal.
    for f in tmp_path.glob("*.engine"):
        f.write_bytes(b"corrupt")
    create_backend("tensorrt", onnx_path=onnx_path, precision="fp16", engine_cache_dir=tmp_path)(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_torch_cuda_graph_matches_eager(exported):
    _, ck, _ = exported
    x = torch.rand(1, 3, *CFG.input_hw)
    a = TorchBackend(ck, device="cuda", fp16=False, cuda_graph=True)(x)
    b = TorchBackend(ck, device="cuda", fp16=False, cuda_graph=False)(x)
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-4


def test_detector_runs_full_size_images_and_rejects_bad_ones(exported):
    import numpy as np

    from ba_perception.core.detection.decode import DecodeConfig
    from ba_perception.core.detection.detector import Detector, DetectorError

    _, _, onnx_path = exported
    det = Detector(create_backend("onnxruntime", onnx_path=onnx_path), DecodeConfig(score_threshold=0.0, max_detections=5))
    img = np.random.default_rng(0).integers(0, 255, (120, 370, 3), dtype=np.uint8)
    K = np.array([[300.0, 0, 185], [0, 300, 60], [0, 0, 1]])
    res = det.detect(img, K)
    assert len(res.detections) == 5 and len(res.class_names) == 5
    assert set(res.timings_ms) == {"preprocess", "inference", "decode"}
    assert res.detections.sample_uv.shape[1:] == (25, 2)
    with pytest.raises(DetectorError):
        det.detect(img[..., :2], K)
    with pytest.raises(DetectorError):
        det.detect(img, np.full((3, 3), np.nan))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_torch_cuda_fp16_graph_matches_cpu_fp32(exported):
    """Stated fp16 tolerance: 2 % of each output map's range (fp32 paths agree within 1e-4)."""
    _, ck, _ = exported
    x = torch.rand(1, 3, *CFG.input_hw, generator=torch.Generator().manual_seed(3))
    ref = TorchBackend(ck, device="cpu")(x)
    out = TorchBackend(ck, device="cuda", fp16=True, cuda_graph=True)(x)
    for k in MonoDetector.OUTPUT_NAMES:
        assert (out[k].cpu() - ref[k]).abs().max() < 2e-2 * max(1.0, ref[k].abs().max().item()), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_auto_on_cuda_without_tensorrt_runs_the_checkpoint_beside_the_onnx(exported, tmp_path):
    from ba_perception.core.detection.backends import _ort_gpu, tensorrt_available

    if tensorrt_available() or _ort_gpu():
        pytest.skip("a GPU ONNX runtime is installed: auto picks it")
    _, ck, onnx_path = exported
    (tmp_path / "m.onnx").write_bytes(onnx_path.read_bytes())
    assert create_backend("auto", onnx_path=tmp_path / "m.onnx").name.startswith("onnxruntime")  # no .pt beside it
    (tmp_path / "m.pt").write_bytes(ck.read_bytes())
    assert create_backend("auto", onnx_path=tmp_path / "m.onnx").name == "torch[cuda,fp16,cudagraph]"


def test_torch_backend_finds_the_checkpoint_beside_the_onnx(exported, tmp_path):
    _, ck, onnx_path = exported
    (tmp_path / "m.onnx").write_bytes(onnx_path.read_bytes())
    with pytest.raises(BackendError, match="checkpoint"):
        create_backend("torch", onnx_path=tmp_path / "m.onnx", device="cpu")
    (tmp_path / "m.pt").write_bytes(ck.read_bytes())
    assert create_backend("torch", onnx_path=tmp_path / "m.onnx", device="cpu").name.startswith("torch[cpu")


def test_flip_test_batches_image_and_mirror_when_the_backend_takes_any_batch(exported):
    from ba_perception.core.detection.decode import forward_flip_averaged

    model, ck, onnx_path = exported
    x = torch.rand(1, 3, *CFG.input_hw, generator=torch.Generator().manual_seed(2))
    torch_be = TorchBackend(ck, device="cpu")
    static_be = OnnxRuntimeBackend(export_onnx(model, onnx_path.with_name("static.onnx")), device="cpu", threads=1)
    assert torch_be.fixed_batch is None and static_be.fixed_batch == 1
    calls = []

    def counted(be):
        def forward(images):
            calls.append(images.shape[0])
            return be(images)
        forward.fixed_batch = be.fixed_batch
        return forward

    one = forward_flip_averaged(counted(torch_be), x)
    two = forward_flip_averaged(counted(static_be), x)
    assert calls == [2, 1, 1]  # one 2-image pass; the static-batch model runs mirror and image separately
    for k in MonoDetector.OUTPUT_NAMES:
        assert one[k].shape == two[k].shape == torch_be(x)[k].shape
        assert (one[k] - two[k]).abs().max() < 1e-4, k
