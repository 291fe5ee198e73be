"""3D multi-object tracking in odom: Kalman prediction, graph-matching association, track management."""

from __future__ import annotations

from ba_perception.core.tracking.matching import QAP_SOLVERS
from ba_perception.core.tracking.tracker import (
    COUNTER_NAMES,
    DEFAULT_CLASS_PARAMS,
    METHODS,
    ClassParams,
    Tracker,
    TrackerConfig,
    TrackerConfigError,
)
from ba_perception.core.tracking.types import (
    STATUS_COASTING,
    STATUS_CONFIRMED,
    STATUS_TENTATIVE,
    Detections,
    TrackingInputError,
    TrackOutput,
)

__all__ = [
    "COUNTER_NAMES",
    "DEFAULT_CLASS_PARAMS",
    "METHODS",
    "QAP_SOLVERS",
    "STATUS_COASTING",
    "STATUS_CONFIRMED",
    "STATUS_TENTATIVE",
    "ClassParams",
    "Detections",
    "TrackOutput",
    "Tracker",
    "TrackerConfig",
    "TrackerConfigError",
    "TrackingInputError",
]
