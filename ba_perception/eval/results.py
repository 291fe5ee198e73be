"""What every evaluation writes with its numbers: JSON-safe values and the machine they were measured on."""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

import numpy as np


def json_safe(o: Any) -> Any:
    """``o`` with NaN/inf as ``None`` and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(o, (np.floating, np.integer)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def machine_info() -> dict[str, Any]:
    """Host facts stored with every result (platform, CPUs, torch, load average, date)."""
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
