"""One writer per table: a lease object beside the table that every writing job holds while it runs.

The reasoning behind it: docs/design.md, section connectors/table_lease.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from typing import Callable, Optional

from connectors.errors import UserError

__all__ = ["LeaseLostError", "TableBusyError", "TableLease", "lease_path"]


class TableBusyError(UserError):
    """Another job holds the table's lease."""


class LeaseLostError(RuntimeError):
    """This job's lease was taken over (it looked stale): it must not commit any more."""


def lease_path(db_uri: str, table: str) -> str:
    return f"{db_uri.rstrip('/')}/{table}.lease"


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TableLease:
    """The lease of one table; use as ``with TableLease(...).acquire():`` or call acquire/release."""

    def __init__(
        self,
        db_uri: str,
        table: str,
        holder: str,
        *,
        storage=None,
        timeout_s: float = 90,
        heartbeat_s: Optional[float] = None,
        on_busy: str = "fail",
        wait_poll_s: float = 2.0,
        log: Callable[[str], None] = lambda message: None,
    ):
        self.path = lease_path(db_uri, table)
        self.table, self.db_uri, self.holder = table, db_uri, holder
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s or max(1.0, timeout_s / 6)
        self.on_busy = on_busy
        self.wait_poll_s = wait_poll_s
        self.log = log
        self.token = uuid.uuid4().hex
        self.took_over: Optional[dict] = None  # the stale lease this one replaced
        self._storage = storage
        self._fs = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lost = False

    # -- storage ------------------------------------------------------------------------------

    def _filesystem(self):
        if self._fs is None:
            from connectors.storage import Storage

            self._fs, self._key = (self._storage or Storage.resolve()).fsspec(self.path)
        return self._fs

    def _is_local(self) -> bool:
        return not self.path.startswith("s3://")

    def _body(self, started: Optional[float] = None) -> bytes:
        now = _now()
        return json.dumps(
            {
                "run_id": self.holder,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": started or now,
                "heartbeat": now,
            }
        ).encode()

    def _create(self) -> bool:
        """Create the lease object if there is none; False when one exists."""
        fs = self._filesystem()
        body = self._body()
        if self._is_local():
            os.makedirs(os.path.dirname(os.path.abspath(self._key)), exist_ok=True)
            try:
                fd = os.open(self._key, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        try:
            fs.pipe_file(self._key, body, mode="create")  # If-None-Match: *
        except FileExistsError:
            return False
        return True

    def _write(self, started: float) -> None:
        fs = self._filesystem()
        body = self._body(started)
        if self._is_local():
            tmp = f"{self._key}.{self.token}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(body)
            os.replace(tmp, self._key)
        else:
            fs.pipe_file(self._key, body)

    def read(self) -> Optional[dict]:
        """The current lease, or None when there is none."""
        fs = self._filesystem()
        try:
            if self._is_local():
                with open(self._key, "rb") as fh:
                    raw = fh.read()
            else:
                raw = fs.cat_file(self._key)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except ValueError:  # a torn write of a crashed holder: nobody can own it
            return {"run_id": "?", "token": "?", "heartbeat": 0, "started": 0}

    def _remove(self) -> None:
        fs = self._filesystem()
        try:
            if self._is_local():
                os.unlink(self._key)
            else:
                fs.rm_file(self._key)
        except FileNotFoundError:
            pass

    # -- protocol -----------------------------------------------------------------------------

    def is_stale(self, lease: dict) -> bool:
        if _now() - float(lease.get("heartbeat", 0)) > self.timeout_s:
            return True
        same_host = lease.get("host") == socket.gethostname()
        return bool(same_host and lease.get("pid") and not _pid_alive(int(lease["pid"])))

    def describe(self, lease: dict) -> str:
        return (
            f"run {lease.get('run_id')} (host {lease.get('host')}, pid {lease.get('pid')}, started "
            f"{_iso(float(lease.get('started', 0)))}, last heartbeat {_iso(float(lease.get('heartbeat', 0)))})"
        )

    def acquire(self) -> "TableLease":
        """Take the lease, or raise :class:`TableBusyError` (``on_busy=fail``) or wait (``wait``)."""
        announced = False
        while True:
            if self._create():
                break
            lease = self.read()
            if lease is None:
                continue  # released between our create and read
            if self.is_stale(lease):
                self._write(_now())
                time.sleep(0.2)  # another taker of the same stale lease: the last write wins
                mine = self.read()
                if mine and mine.get("token") == self.token:
                    self.took_over = lease
                    self.log(f"took over the stale lease of {self.describe(lease)}")
                    break
                continue
            if self.on_busy != "wait":
                raise TableBusyError(
                    f"table {self.table!r} in {self.db_uri} is being written by {self.describe(lease)}; "
                    f"wait for it, set sink.on_busy=wait, or if that run died, resume it with "
                    f"--set run.id={lease.get('run_id')} (its lease counts as dead after "
                    f"sink.lease_timeout_s={self.timeout_s:g}s without a heartbeat)"
                )
            if not announced:
                self.log(f"waiting for {self.describe(lease)} to finish (sink.on_busy=wait)")
                announced = True
            time.sleep(self.wait_poll_s)
        self._started = _now()
        self._thread = threading.Thread(target=self._beat, name="table-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                lease = self.read()
                if lease is None or lease.get("token") != self.token:
                    self.lost = True
                    return
                self._write(self._started)
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried; staleness has slack
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when another job has taken the lease over."""
        if not self.lost:
            lease = self.read()
            self.lost = lease is None or lease.get("token") != self.token
        if self.lost:
            raise LeaseLostError(
                f"the lease of table {self.table!r} was taken over by another job "
                f"(this job's heartbeat was older than {self.timeout_s:g}s); "
                f"run {self.holder} stopped before committing more"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        lease = self.read()
        if lease is not None and lease.get("token") == self.token:
            self._remove()

    def __enter__(self) -> "TableLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
