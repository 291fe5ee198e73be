"""Inference backends for the detector network behind one interface: TensorRT, ONNX Runtime, torch.

Every backend is called with a preprocessed ``(B, 3, H, W)`` float32 tensor in [0, 1] at the
model's input size and returns the four output maps of :class:`MonoDetector` as torch tensors
(on the backend's device). ``create_backend("auto", ...)`` picks, in order: TensorRT (importable
and a CUDA GPU), ONNX Runtime with a GPU execution provider, torch on CUDA (the checkpoint given,
or the ``.pt`` shipped beside the ONNX file), ONNX Runtime on CPU, torch on CPU, and logs which.

Model sources: ONNX Runtime and TensorRT run the exported ONNX file; the torch backend runs a
training checkpoint (``.pt``) of the same network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ba_perception.core.detection.model import ModelError, MonoDetector, load_checkpoint

LOG = logging.getLogger(__name__)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
OUTPUT_NAMES = MonoDetector.OUTPUT_NAMES
DEFAULT_ENGINE_CACHE = Path(os.environ.get("BA_PERCEPTION_ENGINE_CACHE", Path.home() / ".cache" / "ba_perception" / "engines"))


class BackendError(RuntimeError):
    """Raised with a one-line, actionable reason when a backend cannot load or run the model."""


class Backend(Protocol):
    """What every inference backend provides."""

    name: str
    device: torch.device
    input_hw: tuple[int, int]
    metadata: dict
    fixed_batch: int | None  # the only batch size the model takes; None: any

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network on a ``(B, 3, H, W)`` float32 batch in [0, 1].

        Returns:
            The network outputs, as float32 CPU or device tensors.
        """
        ...


def _check_input(image: torch.Tensor, input_hw: tuple[int, int], name: str) -> None:
    if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != tuple(input_hw):
        raise BackendError(
            f"{name}: input of shape {tuple(image.shape)} does not match the model input (B, 3, {input_hw[0]}, "
            f"{input_hw[1]}); letterbox it with core.detection.preprocess first"
        )


def read_onnx_metadata(path: str | Path) -> dict:
    """Return the ``ba_perception`` metadata JSON stored in an exported ONNX file (``{}`` if absent).

    Raises:
        BackendError: the file is missing or not a valid ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"ONNX model {path} not found; export one with `ba-perception export`")
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError / ValueError subclasses
        raise BackendError(f"ONNX model {path} is corrupt or not ONNX ({type(err).__name__}); re-export it") from err
    props = {p.key: p.value for p in m.metadata_props}
    return json.loads(props.get("ba_perception", "{}"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------
class OnnxRuntimeBackend:
    """ONNX Runtime session; TensorRT / CUDA execution providers when present, CPU otherwise."""

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "auto",
        threads: int = 0,
        trt_fp16: bool = True,
        engine_cache_dir: str | Path = DEFAULT_ENGINE_CACHE,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendError("onnxruntime backend: the onnxruntime package is not installed (pip install -r requirements.txt)") from err
        self.metadata = read_onnx_metadata(onnx_path)
        available = ort.get_available_providers()
        providers: list = []
        if device in ("auto", "cuda"):
            if "TensorrtExecutionProvider" in available:
                Path(engine_cache_dir).mkdir(parents=True, exist_ok=True)
                providers.append(
                    ("TensorrtExecutionProvider", {"trt_fp16_enable": trt_fp16, "trt_engine_cache_enable": True,
                                                   "trt_engine_cache_path": str(engine_cache_dir)})
                )
            if "CUDAExecutionProvider" in available:
                providers.append("CUDAExecutionProvider")
            if device == "cuda" and not providers:
                raise BackendError("onnxruntime backend: device cuda requested but onnxruntime has no CUDA provider "
                                   "(install onnxruntime-gpu)")
        providers.append("CPUExecutionProvider")
        so = ort.SessionOptions()
        if threads > 0:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        except Exception as err:
            msg = str(err).splitlines()[0][:200]
            raise BackendError(f"onnxruntime backend: cannot load {onnx_path}: {msg}") from err
        used = self.session.get_providers()
        gpu = used[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.name = f"onnxruntime[{used[0]}]"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if not (isinstance(shape[2], int) and isinstance(shape[3], int)):
            raise BackendError(f"onnxruntime backend: {onnx_path} has a dynamic spatial input size; export with a fixed one")
        self.input_hw = (int(shape[2]), int(shape[3]))
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        if set(OUTPUT_NAMES) - set(self.output_names):
            raise BackendError(f"onnxruntime backend: {onnx_path} lacks outputs {sorted(set(OUTPUT_NAMES) - set(self.output_names))}")

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs of a ``(B, 3, H, W)`` batch in [0, 1], as float32 CPU or device tensors."""
        _check_input(image, self.input_hw, self.name)
        if self.fixed_batch is not None and image.shape[0] != self.fixed_batch:
            raise BackendError(f"{self.name}: model takes batch {self.fixed_batch}, got {image.shape[0]}; export with --dynamic-batch")
        x = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
        outs = self.session.run(self.output_names, {self.input_name: x})
        return {n: torch.from_numpy(o).to(self.device) for n, o in zip(self.output_names, outs) if n in OUTPUT_NAMES}


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------
class TorchBackend:
    """The torch network from a checkpoint: CPU fp32, or CUDA (optionally fp16 and a CUDA graph)."""

    def __init__(
        self,
        checkpoint: str | Path | MonoDetector,
        device: str = "auto",
        fp16: bool = True,
        cuda_graph: bool = True,
        threads: int = 0,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch backend: device cuda requested but torch sees no CUDA GPU")
        self.device = torch.device(device)
        if isinstance(checkpoint, MonoDetector):
            model, self.metadata = checkpoint, {"config": checkpoint.cfg.to_dict()}
        else:
            try:
                model, ck = load_checkpoint(checkpoint)
            except ModelError as err:
                raise BackendError(f"torch backend: {err}") from err
            self.metadata = {"config": ck["config"], **ck.get("meta", {})}
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        if self.fp16:
            self.model.half()
        self.input_hw: tuple[int, int] = (int(model.cfg.input_hw[0]), int(model.cfg.input_hw[1]))
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.fixed_batch: int | None = None  # a CUDA graph is captured per input shape
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: dict[str, torch.Tensor] | None = None
        prec = "fp16" if self.fp16 else "fp32"
        self.name = f"torch[{self.device.type},{prec}{',cudagraph' if self.use_graph else ''}]"

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def _capture(self, x: torch.Tensor) -> None:
        self._static_in = x.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up (cuDNN autotune, allocator) outside the graph
                self._run(self._static_in)
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._run(self._static_in)

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs of a ``(B, 3, H, W)`` batch in [0, 1], as float32 CPU or device tensors."""
        _check_input(image, self.input_hw, self.name)
        x = image.to(self.device, torch.float16 if self.fp16 else torch.float32, non_blocking=True)
        if not self.use_graph:
            return {k: v.float() for k, v in self._run(x).items()}
        if self._graph is None or self._static_in is None or self._static_in.shape != x.shape:
            self._capture(x)
        assert self._graph is not None and self._static_in is not None and self._static_out is not None  # captured
        self._static_in.copy_(x)
        self._graph.replay()
        return {k: v.float() for k, v in self._static_out.items()}  # .float() copies out of the graph pool


# --------------------------------------------------------------------------------------------
# TensorRT
# --------------------------------------------------------------------------------------------
def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as err:
        raise BackendError("tensorrt backend: the tensorrt Python package is not installed "
                           "(pip install tensorrt; needs an NVIDIA GPU)") from err
    if not torch.cuda.is_available():
        raise BackendError("tensorrt backend: torch sees no CUDA GPU (TensorRT needs one)")
    return trt


@dataclass(frozen=True)
class EngineKey:
    """What a serialized TensorRT engine depends on; any change means a rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str

    def filename(self) -> str:
        """Cache file stem unique to the key."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-")
        return f"{self.onnx_sha256[:16]}_trt{self.tensorrt_version}_{gpu}_{self.precision}"


def engine_key(onnx_path: str | Path, precision: str) -> EngineKey:
    """Key of the engine for this ONNX file on this machine's TensorRT and GPU."""
    trt = _import_tensorrt()
    return EngineKey(file_sha256(onnx_path), trt.__version__, torch.cuda.get_device_name(), precision)


def build_engine(
    onnx_path: str | Path,
    precision: str = "fp16",
    workspace_mb: int = 1024,
    cache_dir: str | Path = DEFAULT_ENGINE_CACHE,
    force: bool = False,
) -> Path:
    """Build (or reuse) the serialized TensorRT engine for an ONNX file with the TensorRT 10 API.

    The engine is cached as ``<cache_dir>/<key>.engine`` with a ``.json`` key file beside it; it is
    reused only when the key (ONNX sha256, TensorRT version, GPU name, precision) matches and the
    file deserializes, and rebuilt otherwise. A timing cache ``timing.cache`` in ``cache_dir``
    speeds up rebuilds.

    Args:
        onnx_path: exported detector.
        precision: ``fp16`` or ``fp32``.
        workspace_mb: builder workspace memory-pool limit, MiB.
        cache_dir: engine cache folder.
        force: rebuild even when a valid cached engine exists.

    Returns:
        Path of the engine file.

    Raises:
        BackendError: TensorRT missing, no GPU, the ONNX does not parse, or the build fails.
    """
    if precision not in ("fp16", "fp32"):
        raise BackendError(f"tensorrt backend: precision must be fp16 or fp32, got {precision!r}")
    read_onnx_metadata(onnx_path)  # clear error for a missing/corrupt file
    trt = _import_tensorrt()
    key = engine_key(onnx_path, precision)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path = cache_dir / f"{key.filename()}.engine"
    key_path = engine_path.with_suffix(".json")
    logger = trt.Logger(trt.Logger.WARNING)
    if not force and engine_path.is_file() and key_path.is_file():
        try:
            same = json.loads(key_path.read_text()) == key.__dict__
        except (OSError, json.JSONDecodeError):
            same = False
        if same and _deserialize(trt, logger, engine_path.read_bytes()) is not None:
            return engine_path
        LOG.warning("cached TensorRT engine %s is stale or corrupt; rebuilding", engine_path)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"tensorrt backend: cannot parse {onnx_path}: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            LOG.warning("GPU has no fast fp16; building fp16 engine anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    timing_path = cache_dir / "timing.cache"
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=True)
    inp = network.get_input(0)
    if inp.shape[0] == -1:  # dynamic batch: optimise for 1, allow up to 8
        profile = builder.create_optimization_profile()
        c, h, w = inp.shape[1:]
        profile.set_shape(inp.name, (1, c, h, w), (1, c, h, w), (8, c, h, w))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"tensorrt backend: engine build failed for {onnx_path} (see TensorRT log above)")
    tmp = engine_path.with_suffix(".engine.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    key_path.write_text(json.dumps(key.__dict__, indent=1))
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    LOG.info("built TensorRT engine %s", engine_path)
    return engine_path


def _deserialize(trt, logger, data: bytes):
    try:
        return trt.Runtime(logger).deserialize_cuda_engine(data)
    except Exception:  # corrupt bytes may raise instead of returning None
        return None


class TensorRTBackend:
    """A TensorRT 10 engine built from the ONNX (cached), run on torch-allocated device buffers."""

    def __init__(
        self,
        onnx_path: str | Path,
        precision: str = "fp16",
        workspace_mb: int = 1024,
        cache_dir: str | Path = DEFAULT_ENGINE_CACHE,
    ) -> None:
        trt = _import_tensorrt()
        self.metadata = read_onnx_metadata(onnx_path)
        engine_path = build_engine(onnx_path, precision, workspace_mb, cache_dir)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = _deserialize(trt, self._logger, engine_path.read_bytes())
        if self.engine is None:
            engine_path = build_engine(onnx_path, precision, workspace_mb, cache_dir, force=True)
            self.engine = _deserialize(trt, self._logger, engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"tensorrt backend: cannot deserialize engine {engine_path}")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda")
        self.name = f"tensorrt[{precision}]"
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            n = self.engine.get_tensor_name(i)
            (self.inputs if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT else self.outputs).append(n)
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.input_hw = (int(shape[2]), int(shape[3]))
        self.fixed_batch = int(shape[0]) if shape[0] > 0 else None  # dynamic: the build profile allows 1-8
        self._trt = trt
        self._buffers: dict[str, torch.Tensor] = {}
        self._batch = -1

    def _torch_dtype(self, name: str) -> torch.dtype:
        return {self._trt.float32: torch.float32, self._trt.float16: torch.float16}[self.engine.get_tensor_dtype(name)]

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs of a ``(B, 3, H, W)`` batch in [0, 1], as float32 CPU or device tensors."""
        _check_input(image, self.input_hw, self.name)
        name = self.inputs[0]
        x = image.to(self.device, self._torch_dtype(name), non_blocking=True).contiguous()
        if x.shape[0] != self._batch:
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise BackendError(f"{self.name}: engine does not accept batch {x.shape[0]}")
            self._buffers = {
                o: torch.empty(tuple(self.context.get_tensor_shape(o)), dtype=self._torch_dtype(o), device=self.device)
                for o in self.outputs
            }
            self._batch = x.shape[0]
        self.context.set_tensor_address(name, x.data_ptr())
        for o, buf in self._buffers.items():
            self.context.set_tensor_address(o, buf.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"{self.name}: execute_async_v3 failed")
        return {o: b.float() for o, b in self._buffers.items() if o in OUTPUT_NAMES}


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------
def tensorrt_available() -> bool:
    """True when ``tensorrt`` imports and torch sees a CUDA GPU."""
    try:
        _import_tensorrt()
    except BackendError:
        return False
    return True


def _ort_gpu() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def _sibling_checkpoint(onnx_path: str | Path | None) -> Path | None:
    """The training checkpoint exported to ``onnx_path`` (same name, ``.pt``), when it is shipped beside it."""
    if not onnx_path:
        return None
    ck = Path(onnx_path).with_suffix(".pt")
    return ck if ck.is_file() else None


def create_backend(
    kind: str = "auto",
    onnx_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp16",
    cuda_graph: bool = True,
    threads: int = 0,
    workspace_mb: int = 1024,
    engine_cache_dir: str | Path = DEFAULT_ENGINE_CACHE,
) -> Backend:
    """Create an inference backend by name (``auto|tensorrt|onnxruntime|torch``).

    Args:
        kind: backend name; ``auto`` chooses the best available and logs the choice.
        onnx_path: exported model (tensorrt, onnxruntime).
        checkpoint: training checkpoint (torch).
        device: ``auto``, ``cpu`` or ``cuda`` (onnxruntime, torch).
        precision: ``fp16`` or ``fp32`` on GPU (ignored on CPU, which always runs fp32).
        cuda_graph: torch backend on CUDA replays a captured CUDA graph.
        threads: CPU threads (0: library default).
        workspace_mb: TensorRT builder workspace limit.
        engine_cache_dir: where TensorRT engines and the timing cache are kept.

    Raises:
        BackendError: unknown kind, missing model file, or the backend is not installed / usable.
    """
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    fp16 = precision == "fp16"
    checkpoint = checkpoint or _sibling_checkpoint(onnx_path)  # the .pt exported beside the ONNX serves torch
    if kind == "auto":
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda and onnx_path and tensorrt_available():
            kind = "tensorrt"
        elif cuda and onnx_path and _ort_gpu():
            kind = "onnxruntime"
        elif cuda and checkpoint:
            # No TensorRT or CUDA ONNX Runtime here: the torch network (fp16 + CUDA graph) beats ONNX Runtime on the CPU.
            kind = "torch"
        elif onnx_path:
            kind = "onnxruntime"
        elif checkpoint:
            kind = "torch"
        else:
            raise BackendError("backend auto: give an ONNX model (onnx_path) or a checkpoint")
    if kind == "tensorrt":
        if not onnx_path:
            raise BackendError("tensorrt backend needs an ONNX model path")
        be: Backend = TensorRTBackend(onnx_path, precision, workspace_mb, engine_cache_dir)
    elif kind == "onnxruntime":
        if not onnx_path:
            raise BackendError("onnxruntime backend needs an ONNX model path")
        be = OnnxRuntimeBackend(onnx_path, device, threads, fp16, engine_cache_dir)
    else:
        if not checkpoint:
            raise BackendError("torch backend needs a checkpoint (.pt) path")
        be = TorchBackend(checkpoint, device, fp16, cuda_graph, threads)
    LOG.info("detector backend: %s (input %dx%d)", be.name, be.input_hw[1], be.input_hw[0])
    return be
