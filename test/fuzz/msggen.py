"""A seeded generator of random and adversarial ROS messages, built from the messages' own definitions.

Field types come from rosidl's introspection (``SLOT_TYPES`` / ``get_fields_and_field_types()`` of
the real generated classes), so every ``.msg`` change is followed without editing this file. Two
kinds of message:

- :meth:`Fuzzer.random`: every field random, drawn from an adversarial mix (NaN, +-inf, huge, tiny,
  negative, zero, type limits, empty / huge strings, empty / long sequences);
- :meth:`Fuzzer.mutate`: a copy of a *valid* message (built by the test) with a few leaves (or
  sequence lengths) replaced by adversarial values: the interesting bugs sit one bad field away
  from a good message.

No hypothesis dependency: ``random.Random(seed)`` makes every failure reproducible from its seed.
"""

from __future__ import annotations

import copy
import importlib
import math
import random
from typing import Any

import numpy as np
from rosidl_parser import definition as idl

F32_MAX = 3.4028234663852886e38
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "uint8": (0, 2**8 - 1), "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
    "octet": (0, 255), "char": (0, 255),
}
ADVERSARIAL_FLOATS = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, -1e-300, 1e12, -1e12, 1e-12,
                      F32_MAX, -F32_MAX, 2.0**63, 1.0, -1.0, 0.5)
ADVERSARIAL_STRINGS = ("", " ", "odom", "map", "camera_optical", "car", "pedestrian", "\u00fc\u00df\u2603", "x" * 5000,
                       "rgb8", "bgr8", "mono16", "yuv422", "bayer_rggb8", "32FC1", "jpeg", "png", "../../etc", "%s%n")
SEQ_LENGTHS = (0, 0, 1, 2, 3, 7, 64, 500)


def message_class(t: idl.NamespacedType) -> type:
    """The generated Python class of a namespaced rosidl type (e.g. geometry_msgs/msg/Pose)."""
    return getattr(importlib.import_module(".".join(t.namespaces)), t.name)


def _is_float(t: Any) -> bool:
    return isinstance(t, idl.BasicType) and t.typename in ("float", "double")


class Fuzzer:
    """Seeded random / adversarial message generator (see the module docstring)."""

    def __init__(self, seed: int, max_seq: int = 500, max_bytes: int = 1 << 20) -> None:
        self.rng = random.Random(seed)
        self.max_seq = max_seq
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ values
    def basic(self, typename: str, adversarial: bool = True) -> Any:
        r = self.rng
        if typename in ("float", "double"):
            if adversarial and r.random() < 0.6:
                v = r.choice(ADVERSARIAL_FLOATS)
            else:
                v = r.gauss(0.0, 10.0 ** r.randint(-3, 6))
            if typename == "float" and math.isfinite(v) and abs(v) > F32_MAX:
                v = math.copysign(F32_MAX, v)
            return v
        if typename == "boolean":
            return r.random() < 0.5
        lo, hi = INT_RANGES[typename]
        if adversarial and r.random() < 0.5:
            v = r.choice((lo, hi, 0, 1, hi // 2 + 1, max(lo, -1)))
        else:
            v = r.randint(lo, min(hi, 10_000))
        return bytes([v]) if typename == "octet" else v

    def string(self) -> str:
        r = self.rng
        if r.random() < 0.6:
            return r.choice(ADVERSARIAL_STRINGS)
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz_./0123456789") for _ in range(r.randint(0, 40)))

    def seq_len(self, t: Any) -> int:
        r = self.rng
        n = r.choice(SEQ_LENGTHS)
        if isinstance(t, idl.BasicType) and t.typename in ("uint8", "octet", "char"):
            n = r.choice((0, 1, 3, 100, 4096, r.randint(0, self.max_bytes)))
        if isinstance(t, idl.NamespacedType):
            n = min(n, 64) if r.random() < 0.9 else self.max_seq
        if isinstance(t, idl.BoundedSequence):
            n = min(n, t.maximum_size)
        return n

    def value(self, t: Any, depth: int = 0) -> Any:
        """A random value of rosidl type ``t`` (nested messages recursively)."""
        if isinstance(t, idl.BasicType):
            return self.basic(t.typename)
        if isinstance(t, idl.AbstractString):
            return self.string()
        if isinstance(t, idl.NamespacedType):
            return self.random(message_class(t), depth + 1)
        if isinstance(t, idl.Array):
            return self.sequence(t.value_type, t.size, depth)
        if isinstance(t, idl.AbstractSequence):
            n = self.seq_len(t.value_type)
            if isinstance(t, idl.BoundedSequence):
                n = min(n, t.maximum_size)
            return self.sequence(t.value_type, n, depth)
        raise TypeError(f"unhandled rosidl type {t!r}")

    def sequence(self, vt: Any, n: int, depth: int) -> Any:
        r = self.rng
        if isinstance(vt, idl.BasicType) and vt.typename in ("uint8", "octet", "char"):
            return bytes(r.getrandbits(8) for _ in range(min(n, 64))) + bytes(max(n - 64, 0))
        if _is_float(vt):
            if n > 16:  # long float arrays: a fast mix of plain and adversarial values
                a = np.random.default_rng(r.getrandbits(32)).normal(0, 10, n)
                a[np.random.default_rng(r.getrandbits(32)).random(n) < 0.05] = r.choice(ADVERSARIAL_FLOATS)
                if vt.typename == "float":
                    a = np.clip(a, -F32_MAX, F32_MAX)
                return a.tolist()
            return [self.basic(vt.typename) for _ in range(n)]
        if isinstance(vt, idl.NamespacedType) and depth > 3:
            n = min(n, 2)
        if isinstance(vt, idl.NamespacedType) and n > 8:  # long message sequences: copies of a few random ones
            pool = [self.value(vt, depth) for _ in range(4)]
            return [copy.deepcopy(r.choice(pool)) for _ in range(n)]
        return [self.value(vt, depth) for _ in range(n)]

    # ------------------------------------------------------------------ messages
    def random(self, cls: type, depth: int = 0) -> Any:
        """A message of ``cls`` with every field random (adversarial mix)."""
        msg = cls()
        for name, t in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
            if name == "structure_needs_at_least_one_member":
                continue
            setattr(msg, name, self.value(t, depth))
        return msg

    def leaves(self, msg: Any, path: tuple = ()) -> list[tuple[Any, str, Any, tuple]]:
        """Every field of ``msg`` and its nested messages as ``(owner, field, rosidl type, path)``."""
        out = []
        cls = type(msg)
        for name, t in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
            out.append((msg, name, t, path + (name,)))
            if isinstance(t, idl.NamespacedType):
                out += self.leaves(getattr(msg, name), path + (name,))
            elif isinstance(t, (idl.Array, idl.AbstractSequence)) and isinstance(t.value_type, idl.NamespacedType):
                items = getattr(msg, name)
                for i, item in enumerate(items[:8]):
                    out += self.leaves(item, path + (name, i))
        return out

    def mutate(self, msg: Any, n_fields: int | None = None) -> tuple[Any, list[str]]:
        """A deep copy of ``msg`` with ``n_fields`` (1-3) leaves made adversarial; returns it and what changed."""
        r = self.rng
        msg = copy.deepcopy(msg)
        leaves = self.leaves(msg)
        changed = []
        for _ in range(n_fields or r.choice((1, 1, 1, 2, 3))):
            owner, name, t, path = r.choice(leaves)
            if isinstance(t, idl.AbstractSequence) and isinstance(t.value_type, idl.NamespacedType) and r.random() < 0.5:
                items = list(getattr(owner, name))
                k = r.choice((0, 1, 64, self.max_seq))
                value = [copy.deepcopy(items[i % len(items)]) for i in range(k)] if items else self.value(t)
            elif isinstance(t, idl.NamespacedType) and r.random() < 0.7:
                continue  # the nested message's own leaves are in the list too
            else:
                value = self.value(t)
            try:
                setattr(owner, name, value)
            except (AssertionError, TypeError, ValueError):
                continue
            changed.append("/".join(map(str, path)))
        return msg, changed


def floats_of(msg: Any, path: str = "") -> list[tuple[str, float]]:
    """Every float / double value in ``msg`` (nested, arrays included) as ``(path, value)`` pairs."""
    out: list[tuple[str, float]] = []
    cls = type(msg)
    for name, t in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
        v = getattr(msg, name)
        p = f"{path}/{name}"
        if _is_float(t):
            out.append((p, float(v)))
        elif isinstance(t, idl.NamespacedType):
            out += floats_of(v, p)
        elif isinstance(t, (idl.Array, idl.AbstractSequence)):
            if _is_float(t.value_type):
                a = np.asarray(v, dtype=np.float64)
                if a.size and not np.isfinite(a).all():
                    out.append((p, float(a[~np.isfinite(a)][0])))
            elif isinstance(t.value_type, idl.NamespacedType):
                for i, item in enumerate(v):
                    out += floats_of(item, f"{p}[{i}]")
    return out


def nonfinite(msg: Any) -> list[str]:
    """Paths of the non-finite float values of ``msg`` (empty when all are finite)."""
    return [f"{p} = {v}" for p, v in floats_of(msg) if not math.isfinite(v)]
