"""What a user sees while a run goes: a line per checkpoint (rows done / total, docs/s, ETA), a bar on a terminal.

Lines go to the ``pipelines`` logger (the jobs print it to stderr as ``[embedpipe] ...``); the bar is
drawn on stderr only when it is a terminal, redrawn at most twice a second and cleared before a line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "duration"]

log = logging.getLogger(__name__)


def duration(seconds: Optional[float]) -> str:
    """``95`` -> ``1m 35s``; ``None`` (no rate yet) -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Rows of this run seen and checkpointed, against ``total`` (the rows of the files it reads)."""

    def __init__(
        self,
        total: int,
        stream: Optional[TextIO] = None,
        tty: Optional[bool] = None,
        clock: Callable[[], float] = time.monotonic,
        redraw_s: float = 0.5,
    ):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.redraw_s = redraw_s
        self.started = clock()
        self.seen = 0
        self._drawn_at: Optional[float] = None

    def _rate_eta(self, rows: int) -> tuple[float, Optional[float]]:
        elapsed = self.clock() - self.started
        rate = rows / elapsed if elapsed > 0 else 0.0
        return rate, ((self.total - rows) / rate if rate > 0 else None)

    def checkpoint_line(self, number: int, rows_done: int) -> str:
        rate, eta = self._rate_eta(rows_done)
        share = f" ({rows_done / self.total:.0%})" if self.total else ""
        return (
            f"checkpoint {number}: {rows_done:,} / {self.total:,} rows{share}, {rate:,.0f} docs/s, ETA {duration(eta)}"
        )

    def rows_seen(self, rows: int) -> None:
        """Rows the sink has written so far (committed or not): moves the bar."""
        self.seen = rows
        now = self.clock()
        if self.tty and (self._drawn_at is None or now - self._drawn_at >= self.redraw_s):
            self._drawn_at = now
            rate, eta = self._rate_eta(rows)
            share = rows / self.total if self.total else 0.0
            bar = "#" * int(30 * min(share, 1.0))
            self.stream.write(
                f"\r[{bar:<30}] {share:4.0%} {rows:,}/{self.total:,} rows, {rate:,.0f} docs/s, ETA {duration(eta)} "
            )
            self.stream.flush()

    def checkpoint(self, number: int, rows_done: int) -> None:
        self.clear()
        log.info(self.checkpoint_line(number, rows_done))

    def clear(self) -> None:
        """Remove the bar (before a log line, and at the end)."""
        if self.tty and self._drawn_at is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn_at = None
