"""What every evaluation writes with its numbers: JSON-safe values and the machine they were measured on."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from pathlib import Path
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
    """Host facts stored with every result and benchmark.

    Platform, CPU model and count, memory (GiB), Python, numpy, torch, the CUDA GPU if torch sees
    one, load average and date.
    """
    import torch

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {"platform": platform.platform(), "node": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "mem_total_gb": mem, "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
