"""The track buffer's per-frame step: tracklets -> point tracks -> scheduled batched object BA.

:class:`TrackBufferStage` is the one implementation of what track_buffer_node does with a frame;
the node, ``eval-oba`` / ``eval-track`` (:mod:`ba_perception.eval.world_pipeline`) and
``bench pipeline`` all call it, so every evaluation number is the node's behaviour.
:class:`TrackBufferConfig` holds its settings; its defaults are the shipped ones and the node's
parameter declarations are derived from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ba_perception.core.config import config_from_params
from ba_perception.core.oba.refine import RefineConfig
from ba_perception.core.oba.tracklets import TrackletConfig

SOLVER_PARAMS = ("max_iterations", "loss", "loss_scale_px", "yaw_only")  # track_buffer_node parameters of SolverOptions
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrackBufferConfigError(ValueError):
    """An invalid track buffer setting."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the ``dtype`` parameter's spelling)."""
    return str(dtype).removeprefix("torch.")


@dataclass
class TrackBufferConfig:
    """Everything the per-frame step runs with.

    Attributes:
        tracklets: association and history. Its ``window`` is the history each tracklet keeps:
            the node's ``static_window`` (the static test triangulates over all of it), at least
            the BA window.
        refine: the object BA; its ``window`` is the BA window (the node's ``window``).
        solve_every_n: run the BA every N-th frame; other frames publish each tracklet's last
            refinement (a new tracklet is always solved).
        max_stamp_jump_s: a stamp more than this ahead of the last accepted frame is a jump, like
            a stamp going back: see :meth:`TrackBufferStage.step`.
    """

    tracklets: TrackletConfig = field(default_factory=TrackletConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    solve_every_n: int = 1
    max_stamp_jump_s: float = 10.0

    def __post_init__(self) -> None:
        if self.solve_every_n < 1 or not self.max_stamp_jump_s > 0:
            raise TrackBufferConfigError(f"solve_every_n must be >= 1 and max_stamp_jump_s > 0, got "
                                         f"{self.solve_every_n}, {self.max_stamp_jump_s}")
        if self.tracklets.window < self.refine.window:  # the tracklet keeps at least the BA window
            self.tracklets = replace(self.tracklets, window=self.refine.window)

    @classmethod
    def from_params(cls, p: Mapping[str, Any], device: str | None = None) -> TrackBufferConfig:
        """Settings from track_buffer_node parameters (``ros__parameters``); absent keys keep the defaults.

        Parameter names map to fields: ``window`` -> ``refine.window``, ``static_window`` ->
        ``tracklets.window`` (0 or at most ``window``: the BA window), ``max_iterations`` / ``loss``
        / ``loss_scale_px`` / ``yaw_only`` -> ``refine.solver``, ``dtype`` (``float32`` /
        ``float64``) -> ``refine.dtype``, the other ``TrackletConfig`` / ``RefineConfig`` /
        ``TrackBufferConfig`` field names to those fields.

        Args:
            p: parameter name -> value.
            device: ``cpu`` or ``cuda`` (already resolved from ``auto``); None keeps the default.
        """
        d = cls()
        if "dtype" in p and p["dtype"] not in DTYPES:
            raise TrackBufferConfigError(f"dtype must be one of {list(DTYPES)}, got {p['dtype']!r}")
        flat = {k: v for k, v in p.items() if k not in ("device", "dtype", "solver")}
        rc = config_from_params(RefineConfig, flat)
        rc = replace(rc, solver=replace(d.refine.solver, **{k: p[k] for k in SOLVER_PARAMS if k in p}),
                     dtype=DTYPES[p["dtype"]] if "dtype" in p else d.refine.dtype,
                     device=d.refine.device if device is None else device)
        tp = {k: v for k, v in p.items() if k != "window"}  # the node's `window` is the BA's
        if "static_window" in p:
            tp["window"] = p["static_window"]
        tc = config_from_params(TrackletConfig, tp)
        own = {f.name: p[f.name] for f in fields(cls) if f.name not in ("tracklets", "refine") and f.name in p}
        return cls(tracklets=tc, refine=rc, **own)

    @staticmethod
    def param_names() -> set[str]:
        """Every track_buffer_node parameter :meth:`from_params` reads (the algorithm's settings)."""
        names = {f.name for f in fields(TrackletConfig)} | {f.name for f in fields(RefineConfig)}
        names |= set(SOLVER_PARAMS) | {"static_window", "dtype"}
        names |= {f.name for f in fields(TrackBufferConfig)}
        return names - {"tracklets", "refine", "solver", "device"}
