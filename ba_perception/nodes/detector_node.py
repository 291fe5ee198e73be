"""detector_node: camera image + camera_info -> single-frame 3D observations (BA-Det first stage).

Runs the detector engine (TensorRT | ONNX Runtime | torch, chosen by ``backend``) on a worker
thread fed by a keep-latest slot (stale frames are dropped and counted, never queued), decodes
with the intrinsics of each frame's camera_info, and publishes an ObjectObservationArray with the
capture stamp and this stage's timing appended to the trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ba_perception.core.detection.decode import DecodeConfig
from ba_perception.graph import package_root
from ba_perception.ros.inputs import CAMERA_INPUT_PARAMS, CameraFrame, CameraInput
from ba_perception.ros.node import PerceptionNode, StartupError, make_stage, run_node, wall_ns
from ba_perception.ros.observations import detections_to_msg
from ba_perception.ros.params import ParamSpec

DEFAULT_MODEL = "models/detector.onnx"
_D = DecodeConfig()  # the decode parameters' defaults are the core config's


class DetectorNode(PerceptionNode):
    """See the module docstring."""

    PARAMS = CAMERA_INPUT_PARAMS + (
        ParamSpec("backend", "auto", "inference engine", choices=("auto", "tensorrt", "onnxruntime", "torch")),
        ParamSpec("model", DEFAULT_MODEL, "ONNX model (relative paths are relative to the package)"),
        ParamSpec("checkpoint", "", "torch checkpoint for backend torch (else the ONNX is used via ONNX Runtime)"),
        ParamSpec("device", "auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda")),
        ParamSpec("precision", "fp16", "GPU precision (CPU always runs fp32)", choices=("fp16", "fp32")),
        ParamSpec("threads", 1, "CPU threads for the engine; 0 = library default (more than one per node "
                  "oversubscribes a small CPU running the whole graph)", min=0),
        ParamSpec("engine_cache_dir", "", "TensorRT engine cache; '' = the default cache folder"),
        ParamSpec("score_threshold", _D.score_threshold,
                  "minimum final detection score (heatmap score x depth confidence x box agreement)", min=0.0, max=1.0),
        ParamSpec("max_detections", _D.max_detections, "detections kept per image", min=1),
        ParamSpec("box_nms_iou", _D.box_nms_iou, "2D IoU above which a lower-scored box of the same class is suppressed",
                  min=0.05, max=1.0),
        ParamSpec("box_vote_iou", _D.box_vote_iou, "each kept detection's regression is the score-weighted mean over the same-class "
                  "candidates overlapping it above this 2D IoU (box voting; log-depth weighted by score / its variance); "
                  "0 = off", min=0.0, max=0.99),
        ParamSpec("box_quality_power", _D.box_quality_power, "score x (score-weighted mean 2D IoU of the same-class candidates "
                  "around a detection with its box)^power: peaks whose cells disagree on the box rank lower; 0 = off",
                  min=0.0),
        ParamSpec("flip_test", _D.flip_test, "run the network on the image and its mirror and decode the mean outputs "
                  "(test-time flip; the network sees two images per frame)"),
        ParamSpec("candidate_top_k", _D.candidate_top_k, "highest heatmap cells per image scored and NMS-ed (bounds decode time)", min=1),
        ParamSpec("depth_confidence_scale", _D.depth_confidence_scale, "score x exp(-relative depth std / scale) from the depth "
                  "log-variance head; 0 = heatmap score only", min=0.0),
        ParamSpec("samples_per_side", _D.samples_per_side, "feature samples per object are an n x n grid in the box", min=1),
        ParamSpec("output_topic", "/ba_perception/observations", "ObjectObservationArray output"),
        ParamSpec("output_qos", "reliable", "output QoS", choices=("reliable", "sensor_data", "best_effort")),
        ParamSpec("output_qos_depth", 10, "output queue depth", min=1),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("detector_node", **kwargs)
        from ba_perception.core.detection.backends import BackendError, create_backend
        from ba_perception.core.detection.detector import Detector
        from ba_perception_msgs.msg import ObjectObservationArray

        if self.p["threads"] > 0:
            import torch

            torch.set_num_threads(self.p["threads"])  # preprocessing/decode, beside the engine's own pool
        model = Path(self.p["model"])
        if not model.is_absolute():
            model = package_root() / model
        kw: dict[str, Any] = dict(device=self.p["device"], precision=self.p["precision"], threads=self.p["threads"])
        if self.p["engine_cache_dir"]:
            kw["engine_cache_dir"] = self.p["engine_cache_dir"]
        try:
            if self.p["checkpoint"]:
                backend = create_backend("torch", checkpoint=self.p["checkpoint"], **kw)
            else:
                backend = create_backend(self.p["backend"], onnx_path=model, **kw)
        except BackendError as err:
            raise StartupError(str(err)) from err
        self.get_logger().info(f"detector backend: {type(backend).__name__} on {backend.device}, "
                               f"input {backend.input_hw[1]}x{backend.input_hw[0]}")
        self.detector = Detector(backend, DecodeConfig.from_params(self.p))
        self.pub = self.create_publisher(ObjectObservationArray, self.p["output_topic"], self.output_qos("output"))
        self.input = CameraInput(self, self.on_frame)

    def on_frame(self, frame: CameraFrame) -> None:
        """Detect objects in one camera frame and publish them."""
        start = wall_ns()
        result = self.detector.detect(frame.rgb, frame.K)
        h, w = frame.rgb.shape[:2]
        msg = detections_to_msg(result.detections, result.class_names, frame.header, frame.K, (w, h))
        msg.trace.append(make_stage("detector", frame.received_ns, start))
        self.pub.publish(msg)
        self.count("frames_out")
        self.count("objects_out", len(msg.observations))

    def close(self) -> None:
        """Stop the input worker."""
        self.input.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(DetectorNode, argv)


if __name__ == "__main__":
    raise SystemExit(main())
