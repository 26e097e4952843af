"""What a benchmark's figures were measured on: every figure is printed with the CPU."""

from __future__ import annotations

import os
import platform


def cpu() -> str:
    """The CPU model and the number of cores, e.g. ``Intel(R) Xeon(R) Processor x2``."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name} x{os.cpu_count()}"
