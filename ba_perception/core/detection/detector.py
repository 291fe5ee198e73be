"""The single-frame detector as one object: preprocess -> backend -> decode, with per-stage timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ba_perception.core.detection.backends import Backend
from ba_perception.core.detection.decode import DecodeConfig, Detections, decode, network_outputs
from ba_perception.core.detection.model import CLASSES
from ba_perception.core.detection.preprocess import Preprocess, apply_preprocess, to_chw_float


class DetectorError(ValueError):
    """Raised for an image or intrinsics the detector cannot process."""


@dataclass
class DetectionResult:
    """Detections of one image plus where the time went.

    Attributes:
        detections: decoded objects (original pixels, camera optical frame).
        class_names: names of ``detections.labels``.
        timings_ms: ``preprocess``, ``inference``, ``decode`` wall times, milliseconds.
        preprocess: the pixel map used for this image.
    """

    detections: Detections
    class_names: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    preprocess: Preprocess | None = None


class Detector:
    """Run the monocular 3D detector on full-size RGB images with their intrinsics.

    Args:
        backend: any backend from :func:`core.detection.backends.create_backend`.
        decode_cfg: thresholds and feature-sampling options.
        classes: class names in heatmap order (default: the model metadata's, else ``CLASSES``).
        preprocess: ``horizon_band`` (images taller than the network input are cropped to a band
            around the horizon; the training rig's images are letterboxed as before) or
            ``letterbox`` (the whole image, padded), see :meth:`Preprocess.for_camera`.
    """

    def __init__(self, backend: Backend, decode_cfg: DecodeConfig | None = None, classes: list[str] | None = None,
                 preprocess: str = "horizon_band") -> None:
        self.backend = backend
        self.decode_cfg = decode_cfg or DecodeConfig()
        meta_classes = (backend.metadata or {}).get("config", {}).get("classes")
        self.classes = list(classes or meta_classes or CLASSES)
        self.preprocess_mode = preprocess
        self._pre: dict[tuple, Preprocess] = {}

    def preprocess_for(self, src_hw: tuple[int, int], K: np.ndarray | None = None,
                       R_base_cam: np.ndarray | None = None) -> Preprocess:
        """Return the cached preprocessing for one image size, intrinsics and mounting.

        The (cached) preprocessing for images of ``src_hw`` from a camera with ``K`` and mounting
        ``R_base_cam`` (None: level; no ``K``: letterbox).
        """
        key = (src_hw, None if K is None else np.asarray(K, np.float64).tobytes(),
               None if R_base_cam is None else np.asarray(R_base_cam, np.float64).tobytes())
        if key not in self._pre:
            if K is None:
                self._pre[key] = Preprocess.letterbox(src_hw, self.backend.input_hw)
            else:
                self._pre[key] = Preprocess.for_camera(self.preprocess_mode, src_hw, self.backend.input_hw, K, R_base_cam)
        return self._pre[key]

    def detect(self, image: np.ndarray | torch.Tensor, K: np.ndarray | torch.Tensor,
               R_base_cam: np.ndarray | None = None) -> DetectionResult:
        """Detect objects in one image.

        Detect objects in one ``(H, W, 3)`` uint8 RGB image with ``(3, 3)`` intrinsics (pixels) and,
        optionally, the camera's ``(3, 3)`` rotation in base_link (places the horizon band).

        Raises:
            DetectorError: wrong image layout/dtype or invalid intrinsics.
            BackendError: the backend fails.
        """
        t0 = time.perf_counter()
        try:
            x = to_chw_float(image, self.backend.device)
        except ValueError as err:
            raise DetectorError(str(err)) from err
        Kt = torch.as_tensor(np.asarray(K, dtype=np.float64).reshape(3, 3))
        if not torch.isfinite(Kt).all() or Kt[0, 0] <= 0 or Kt[1, 1] <= 0:
            raise DetectorError("intrinsics K must be finite with positive focal lengths")
        pre = self.preprocess_for((int(x.shape[-2]), int(x.shape[-1])), Kt.numpy(), R_base_cam)
        x = apply_preprocess(x, pre)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t1 = time.perf_counter()
        out = network_outputs(self.backend, x, self.decode_cfg)
        if self.backend.device.type == "cuda":
            torch.cuda.synchronize(self.backend.device)
        t2 = time.perf_counter()
        (det,) = decode(out, Kt, pre, self.decode_cfg)
        det = Detections(**{k: v.detach().cpu() for k, v in det.__dict__.items()})
        t3 = time.perf_counter()
        names = [self.classes[i] if i < len(self.classes) else str(i) for i in det.labels.tolist()]
        ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3}
        return DetectionResult(det, names, ms, pre)
