"""``model.dtype: auto``: the compute dtype the encoder's hardware runs fastest without losing the space.

bfloat16 halves the bytes a forward pass moves and, where the hardware multiplies it natively, runs
faster than float32 with vectors at cosine >= 0.999 to float32's (tests/unit/test_precision.py
measures it). Without native support PyTorch emulates it: on a 2-core AMD EPYC without AVX-512,
MiniLM in bfloat16 ran several times slower than in float32. So ``auto`` is:

- **CUDA** (``model.device`` cuda, or ``auto`` with ``compute.gpus_per_actor`` > 0): bfloat16. GPUs
  before Ampere (T4, V100) have no native bf16: set ``model.dtype: float16`` there.
- **CPU**: bfloat16 where the CPU has AVX512-BF16 or AMX-BF16 (``/proc/cpuinfo`` flags ``avx512_bf16``,
  ``amx_bf16``), float32 otherwise. The driver's CPU is read (it plans the run before any worker
  starts); a cluster whose CPU workers differ from the driver sets ``model.dtype`` itself, and an
  encoder that finds bf16 emulated on its own CPU says so in its log.

The resolved dtype is what the table's lineage records (it keys every row's content hash).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

__all__ = ["BF16_FLAGS", "cpu_has_native_bf16", "planned_device", "query_dtype", "resolve_dtype", "warn_if_emulated"]

log = logging.getLogger(__name__)

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no flags to read, so no native bf16 is assumed
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags=None) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = _cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def planned_device(device: str, gpus_per_actor: float) -> str:
    """``cuda`` or ``cpu``: where the encoder actors will run, as the driver can tell before they start
    (``model.device: auto`` takes CUDA exactly when the actor reserves a GPU)."""
    if device.startswith("cuda") or (device == "auto" and gpus_per_actor > 0):
        return "cuda"
    return "cpu"


def resolve_dtype(dtype: str, device: str, flags=None) -> tuple[str, str]:
    """``(dtype, why)`` for ``model.dtype`` on ``device`` (``cpu`` or ``cuda``); ``flags``: the CPU's
    feature flags (default: this machine's)."""
    if dtype != "auto":
        return dtype, "model.dtype set"
    if device == "cuda":
        return "bfloat16", "auto: CUDA device"
    flags = _cpu_flags() if flags is None else flags
    have = [f for f in BF16_FLAGS if f in flags]
    if have:
        return "bfloat16", f"auto: native bf16 on this CPU, {' and '.join(have)}"
    return "float32", f"auto: no native bf16 on this CPU, {' and '.join(BF16_FLAGS)} absent"


def query_dtype(table_dtype: str, device: str, flags=None) -> str:
    """The dtype to embed queries in: the table's recorded one, except bfloat16 on a CPU that would
    emulate it (a table built on GPUs, queried on a CPU box), where float32 gives the same space
    (dtype is numerics, not identity: pipelines/lineage.py) several times faster."""
    if table_dtype != "bfloat16" or device.startswith("cuda"):
        return table_dtype
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return table_dtype
    return table_dtype if cpu_has_native_bf16(flags) else "float32"


def warn_if_emulated(dtype: str, device: str) -> None:
    """Log once per encoder when bfloat16 runs on a CPU that emulates it (several times slower)."""
    if dtype == "bfloat16" and not device.startswith("cuda") and not cpu_has_native_bf16():
        log.warning(
            "model.dtype=bfloat16 on a CPU without native bf16 (%s absent): emulated, several times slower "
            "than float32; set model.dtype=float32 (or auto) for CPU workers",
            " and ".join(BF16_FLAGS),
        )
