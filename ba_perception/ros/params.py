"""Declared, validated node parameters and QoS profiles chosen by string parameters.

Every node lists its parameters once as :class:`ParamSpec` records; :func:`declare_parameters`
declares them with descriptors (so ``ros2 param describe`` shows the text and ranges), validates
values at start-up, and returns them as a plain dict. The README's parameter reference is
generated from the same records, so it cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

if TYPE_CHECKING:
    from rclpy.node import Node

QOS_KINDS = ("sensor_data", "reliable", "best_effort", "latched", "reliable_history")


class ParameterError(ValueError):
    """A parameter value outside its declared type, range or choices."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, default (its type is the parameter's type) and what it means."""

    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    read_only: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, value: Any) -> Any:
        """Return ``value`` if it satisfies the spec, else raise :class:`ParameterError`."""
        if self.choices and value not in self.choices:
            raise ParameterError(f"parameter {self.name!r} = {value!r}; choose one of {list(self.choices)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ParameterError(f"parameter {self.name!r} is NaN")
            if self.min is not None and value < self.min:
                raise ParameterError(f"parameter {self.name!r} = {value} is below its minimum {self.min}")
            if self.max is not None and value > self.max:
                raise ParameterError(f"parameter {self.name!r} = {value} is above its maximum {self.max}")
        return value


def declare_parameters(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` with descriptors, validate, and return ``{name: value}``.

    Raises:
        ParameterError: a value (from a params file or the command line) is invalid.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values: dict[str, Any] = {}
    for spec in specs:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int) and (spec.min is not None or spec.max is not None):
            desc.integer_range = [IntegerRange(
                from_value=int(spec.min if spec.min is not None else -(2**62)),
                to_value=int(spec.max if spec.max is not None else 2**62), step=0)]
        elif isinstance(spec.default, float) and (spec.min is not None or spec.max is not None):
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min if spec.min is not None else -1e300),
                to_value=float(spec.max if spec.max is not None else 1e300), step=0.0)]
        try:
            param = node.declare_parameter(spec.name, spec.default, desc)
        except Exception as err:  # rclpy raises several types for out-of-range / wrong type
            raise ParameterError(f"parameter {spec.name!r}: {err}") from err
        value = param.value
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        values[spec.name] = spec.validate(value)
    return values


def qos_profile(kind: str, depth: int = 5) -> QoSProfile:
    """QoS from a string parameter.

    ``sensor_data``: best effort, keep last ``depth`` (what camera drivers publish);
    ``reliable``: reliable, keep last ``depth`` (pipeline outputs, evaluation);
    ``best_effort``: same as sensor_data; ``latched``: reliable + transient local, depth 1
    (static data such as ``/tf_static``); ``reliable_history``: reliable + transient local, keep last
    ``depth`` (pipeline outputs: a recorder that matches late still gets the first frames).
    """
    if kind not in QOS_KINDS:
        raise ParameterError(f"QoS {kind!r} unknown; choose one of {list(QOS_KINDS)}")
    if depth < 1:
        raise ParameterError(f"QoS depth must be >= 1, got {depth}")
    if kind == "latched":
        return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
    if kind == "reliable_history":
        return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
    reliability = ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=reliability, durability=DurabilityPolicy.VOLATILE,
                      history=HistoryPolicy.KEEP_LAST)


def params_markdown(node_name: str, specs: Sequence[ParamSpec]) -> str:
    """A Markdown table of ``specs`` for the README's parameter reference."""
    lines = [f"### `{node_name}`", "", "| parameter | default | meaning |", "|---|---|---|"]
    for s in specs:
        extra = f" (one of {', '.join(map(str, s.choices))})" if s.choices else ""
        rng = ""
        if s.min is not None or s.max is not None:
            rng = f" [{'' if s.min is None else s.min} .. {'' if s.max is None else s.max}]"
        lines.append(f"| `{s.name}` | `{s.default!r}` | {s.description}{extra}{rng} |")
    return "\n".join(lines) + "\n"
