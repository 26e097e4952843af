"""Ray tasks the driver waits on: their result, or their own error (not Ray's wrapper)."""

from __future__ import annotations

__all__ = ["task_result"]


def task_result(ref):
    """``ray.get`` of one task, raising the task's own error (not Ray's wrapper and its traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause if isinstance(exc.cause, Exception) else exc
