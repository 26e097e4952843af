"""Ray Data's execution settings for an indexing run (the driver's ``DataContext``)."""

from __future__ import annotations

import logging

__all__ = ["configure", "quiet_logs"]


def configure(context, *, max_block_mb: int, stall_timeout_s: float, verbose: bool) -> None:
    """Set ``context`` (a ``ray.data.DataContext``) for an indexing run."""
    # Blocks are bounded in bytes (Ray's default is 128 MiB): a file's rows and the encoder's vectors
    # then stream through in pieces of this size instead of one block per file.
    context.target_max_block_size = max_block_mb * 2**20
    context.execution_no_progress_timeout_s = stall_timeout_s  # see pipelines.run.stream._stream
    context.enable_progress_bars = verbose  # else the run's own lines (pipelines.run.progress)
    quiet_logs(context)
    # A task runs to its end instead of pausing, CPU held, when Ray Data stops taking its blocks
    # (its downstream's object-store budget is full): a paused read task on a head whose other
    # CPUs the encoders hold left no CPU for tokenize, so nothing drained and the run stalled
    # (bench/read_starvation.py; seen at 10M rows). A task's output is then bounded by its input
    # (a read task: the files it reads), and what does not fit in the object store spills.
    # Ray Data does the same for its own file listing and download operators.
    context._max_num_blocks_in_streaming_gen_buffer = None
    # Operators hand their blocks on in input order, so files complete in the order they are read
    # and checkpoints come through the run. Unordered, reads ran ahead of the encoder (the object
    # store had room for the whole input), every file's blocks were interleaved, and no file was
    # complete until the end: 1M documents in 20 files made their first checkpoint at 350 s of a
    # 414 s stream, so a crash before it lost the run's work. Measured (bench/scale.py's corpus,
    # 2-CPU head): 300k documents in 6 files, first checkpoint at 107 s of 120 s unordered, at 23 s
    # of 70 s ordered (bench/checkpoint_cadence.py compares both; tests/integration/test_multinode.py
    # checks the cadence).
    context.execution_options.preserve_order = True


def quiet_logs(context) -> None:
    """Without progress bars (not verbose), also no Ray Data start-of-execution notes nor its hint that
    progress bars are off, in this process (the driver, or the task an execution runs in)."""
    if not context.enable_progress_bars:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
