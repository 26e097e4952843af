"""The run's progress lines and terminal bar (pipelines/run/progress.py), on a clock the test moves."""

from __future__ import annotations

import io
import logging

from pipelines.run.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (None, 0, 59.6, 95, 3600 + 125)] == ["?", "0s", "1m 00s", "1m 35s", "1h 02m"]


def test_a_checkpoint_line_gives_rows_rate_and_eta(caplog):
    clock = Clock()
    progress = Progress(1_000_000, stream=io.StringIO(), tty=False, clock=clock)
    clock.now += 50  # 250,000 rows in 50 s: 5,000 docs/s, 750,000 to go: 150 s
    with caplog.at_level(logging.INFO, logger="pipelines"):
        progress.checkpoint(3, 250_000)
    assert caplog.messages == ["checkpoint 3: 250,000 / 1,000,000 rows (25%), 5,000 docs/s, ETA 2m 30s"]


def test_the_bar_is_drawn_only_on_a_terminal_at_most_twice_a_second_and_cleared():
    clock = Clock()
    pipe, terminal = io.StringIO(), io.StringIO()
    Progress(1000, stream=pipe, tty=False, clock=clock).rows_seen(500)
    assert pipe.getvalue() == ""  # a log file gets the checkpoint lines only

    progress = Progress(1000, stream=terminal, tty=True, clock=clock)
    clock.now += 10
    progress.rows_seen(500)
    progress.rows_seen(600)  # same instant: not redrawn
    assert terminal.getvalue() == "\r[###############               ]  50% 500/1,000 rows, 50 docs/s, ETA 10s "
    clock.now += 1
    progress.rows_seen(700)
    assert terminal.getvalue().count("\r[") == 2 and "70% 700/1,000" in terminal.getvalue()
    progress.clear()
    assert terminal.getvalue().endswith("\r\033[K")
