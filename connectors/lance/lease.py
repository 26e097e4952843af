"""One writer per table: a lease object beside the table that every writing job holds while it runs.

The reasoning behind it: docs/design.md, section connectors/lance/lease.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterator, Optional

from connectors.errors import RunError, UserError

__all__ = ["LeaseLostError", "TableBusyError", "TableLease", "lease_path"]

# A lease is stale only when its holder missed at least this many of its own heartbeats, whatever the
# timeouts say: a holder that records a heartbeat interval close to its timeout is not taken at one late beat.
MISSED_BEATS = 3
# A recorded timeout above this is not believed (a corrupt lease must not hold a table for ever); it
# is sink.lease_timeout_s's own upper bound (pipelines/config.py).
MAX_RECORDED_TIMEOUT_S = 86_400
# Local leases: how long to wait for the lock file that serialises changes of the lease (each holds
# it for one read and one write), before giving up on this attempt.
LOCK_WAIT_S = 30.0


class TableBusyError(UserError):
    """Another job holds the table's lease."""


class LeaseLostError(RunError):
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


def _seconds(value) -> Optional[float]:
    """A positive, finite number of seconds from a lease body, else None (absent in an old lease, or garbage)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _time(lease: dict, key: str) -> float:
    """A time from a lease body; 0 (long ago) when absent or not a number."""
    try:
        value = float(lease.get(key, 0))
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def _s3_code(exc: BaseException) -> Optional[str]:
    """The S3 error code behind an exception s3fs raised (it keeps botocore's ClientError as the cause)."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
    return None


_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404"}
_UNSUPPORTED = {"NotImplemented", "501"}


class _Lease(dict):
    """A lease body as read, with the version it was read at: the object's ETag on S3, the file's bytes locally."""

    version: object = None


class TableLease:
    """The lease of one table; use as ``with TableLease(...).acquire():`` or call acquire/release.

    ``timeout_s`` and ``heartbeat_s`` (default: a sixth of the timeout) are written into the lease; they,
    not another job's own setting, decide when the lease counts as abandoned (:meth:`holder_timeout_s`).
    """

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
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
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
        self._etag: Optional[str] = None  # S3: the ETag of this holder's last write of the lease
        self._mutex = threading.Lock()  # this object's changes of the lease, one at a time
        self._started = _now()
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
                # The holder's own schedule: what an observer judges this lease by (holder_timeout_s).
                "timeout_s": self.timeout_s,
                "heartbeat_s": self.heartbeat_s,
            }
        ).encode()

    @staticmethod
    def _parse(raw: bytes, version: object) -> _Lease:
        try:
            lease = _Lease(json.loads(raw))
        except ValueError:  # not a lease any job of this project wrote whole: nobody can own it
            lease = _Lease({"run_id": "?", "token": "?", "heartbeat": 0, "started": 0})
        lease.version = version
        return lease

    # Local filesystem: every change of the lease (create, take over, heartbeat, release) happens under an
    # exclusive flock of <table>.lease.lock, after reading the lease again; the lease itself is replaced
    # whole (a temporary file renamed over it), so a reader never sees half of one.

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._filesystem()
        os.makedirs(os.path.dirname(os.path.abspath(self._key)), exist_ok=True)
        try:
            fd = os.open(f"{self._key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's lock file: flock needs no write access (but NFS's does)
            fd = os.open(f"{self._key}.lock", os.O_RDONLY)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: threads exclude each other too
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self._key}.lock stayed locked for {LOCK_WAIT_S:g}s") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def _read_local(self) -> Optional[_Lease]:
        try:
            with open(self._key, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        return self._parse(raw, raw)

    def _write_local(self, body: bytes) -> None:
        tmp = f"{self._key}.{self.token}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(body)
        os.replace(tmp, self._key)

    # S3: a conditional PUT does the same. Create: If-None-Match: * (one creator wins); take over a stale
    # lease: If-Match its ETag as read (one taker wins); heartbeat: If-Match the ETag of this holder's last
    # write (it fails once anybody else wrote the lease); release: a DELETE If-Match that ETag.

    def _split(self) -> tuple[str, str]:
        bucket, key, _ = self._filesystem().split_path(self._key)
        return bucket, key

    def _read_s3(self) -> Optional[_Lease]:
        from fsspec.asyn import sync

        fs = self._filesystem()
        bucket, key = self._split()

        async def get():  # body and ETag from one GET: the version judged is the version replaced
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                return await body.read(), response["ETag"]
            finally:
                body.close()

        try:
            raw, etag = sync(fs.loop, get)
        except FileNotFoundError:
            return None
        return self._parse(raw, etag)

    def _put_s3(self, body: bytes, **condition) -> Optional[str]:
        """PUT the lease under ``condition``; its new ETag, or None when the condition failed."""
        bucket, key = self._split()
        try:
            return self._filesystem().call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
        except (FileExistsError, FileNotFoundError, OSError) as exc:
            code = _s3_code(exc)
            if isinstance(exc, (FileExistsError, FileNotFoundError)) or code in _CONFLICT | _MISSING:
                return None
            raise

    def _mine_after_conflict(self) -> bool:
        """A conditional write failed: was it because an earlier attempt of the same write (a retry after a
        lost answer) succeeded? Then the lease holds this holder's token; adopt its ETag."""
        lease = self._read_s3()
        if lease is not None and lease.get("token") == self.token:
            self._etag = str(lease.version)
            return True
        return False

    # -- operations ---------------------------------------------------------------------------

    def _create(self) -> bool:
        """Create the lease object if there is none; False when one exists."""
        with self._mutex:
            if self._is_local():
                with self._locked():
                    if os.path.lexists(self._key):
                        return False
                    self._write_local(self._body())
                    return True
            etag = self._put_s3(self._body(), IfNoneMatch="*")
            if etag is None:
                return self._mine_after_conflict()
            self._etag = etag
            return True

    def _take_over(self, stale: _Lease) -> bool:
        """Replace ``stale`` with this holder's lease, unless the lease changed since it was read (another
        taker was first, or the holder was alive after all); True when this holder now has it."""
        with self._mutex:
            if self._is_local():
                with self._locked():
                    current = self._read_local()
                    if current is None or current.version != stale.version:
                        return False
                    self._write_local(self._body())
                    return True
            etag = self._put_s3(self._body(), IfMatch=str(stale.version))
            if etag is None:
                return self._mine_after_conflict()
            self._etag = etag
            # A store that ignored If-Match would let the last writer win silently: read it back.
            return self._mine_after_conflict()

    def _heartbeat(self) -> bool:
        """Write a fresh heartbeat; False when the lease is no longer this holder's."""
        with self._mutex:
            if self._is_local():
                with self._locked():
                    current = self._read_local()
                    if current is None or current.get("token") != self.token:
                        return False
                    self._write_local(self._body(self._started))
                    return True
            try:
                etag = self._put_s3(self._body(self._started), IfMatch=str(self._etag))
            except OSError as exc:
                if _s3_code(exc) not in _UNSUPPORTED:
                    raise
                # A store without conditional PUTs: look, then write (the old, racy way) rather than
                # let a live lease go stale.
                current = self._read_s3()
                if current is None or current.get("token") != self.token:
                    return False
                etag = self._put_s3(self._body(self._started))
            if etag is None:
                return self._mine_after_conflict()  # it is ours still: the next beat uses the adopted ETag
            self._etag = etag
            return True

    def _remove(self) -> None:
        """Delete the lease if it is still this holder's."""
        with self._mutex:
            if self._is_local():
                with self._locked():
                    current = self._read_local()
                    if current is not None and current.get("token") == self.token:
                        os.unlink(self._key)
                return
            bucket, key = self._split()
            for _ in range(3):
                try:
                    self._filesystem().call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=str(self._etag))
                    return
                except (FileNotFoundError, OSError) as exc:
                    code = _s3_code(exc)
                    if isinstance(exc, FileNotFoundError) or code in _MISSING:
                        return
                    if code not in _CONFLICT:  # a store without conditional deletes: look, then delete
                        lease = self._read_s3()
                        if lease is not None and lease.get("token") == self.token:
                            self._filesystem().call_s3("delete_object", Bucket=bucket, Key=key)
                        return
                if not self._mine_after_conflict():
                    return  # another job's lease now: not ours to delete

    def read(self) -> Optional[dict]:
        """The current lease, or None when there is none."""
        self._filesystem()
        return self._read_local() if self._is_local() else self._read_s3()

    # -- protocol -----------------------------------------------------------------------------

    def holder_timeout_s(self, lease: dict) -> float:
        """How long ``lease`` may go without a heartbeat before its holder counts as dead.

        The longer of the holder's recorded timeout (and :data:`MISSED_BEATS` of its recorded heartbeat
        interval) and this job's own ``timeout_s``: the holder heartbeats on its own schedule, so an observer
        configured with a shorter timeout must not take a live lease; a longer one only makes it wait longer.
        A lease of an older version without those fields is judged by ``timeout_s`` alone.
        """
        limits = [self.timeout_s]
        recorded_timeout, recorded_beat = _seconds(lease.get("timeout_s")), _seconds(lease.get("heartbeat_s"))
        if recorded_timeout is not None:
            limits.append(min(recorded_timeout, MAX_RECORDED_TIMEOUT_S))
        if recorded_beat is not None:
            limits.append(min(MISSED_BEATS * recorded_beat, MAX_RECORDED_TIMEOUT_S))
        return max(limits)

    def is_stale(self, lease: dict) -> bool:
        if _now() - _time(lease, "heartbeat") > self.holder_timeout_s(lease):
            return True
        same_host = lease.get("host") == socket.gethostname()
        return bool(same_host and lease.get("pid") and not _pid_alive(int(lease["pid"])))

    def describe(self, lease: dict) -> str:
        return (
            f"run {lease.get('run_id')} (host {lease.get('host')}, pid {lease.get('pid')}, started "
            f"{_iso(_time(lease, 'started'))}, last heartbeat {_iso(_time(lease, 'heartbeat'))})"
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
            if lease.get("token") == self.token:  # ours already (a create whose answer was lost)
                if not self._is_local():
                    self._etag = str(lease.version)
                break
            if self.is_stale(lease):
                if self._take_over(lease):
                    self.took_over = dict(lease)
                    self.log(f"took over the stale lease of {self.describe(lease)}")
                    break
                continue  # another taker was first, or the holder beat again: look again
            if self.on_busy != "wait":
                raise TableBusyError(
                    f"table {self.table!r} in {self.db_uri} is being written by {self.describe(lease)}; "
                    f"wait for it, set sink.on_busy=wait, or if that run died, resume it with "
                    f"--set run.id={lease.get('run_id')} (its lease counts as dead after "
                    f"{self.holder_timeout_s(lease):g}s without a heartbeat: the longer of its holder's "
                    f"timeout and sink.lease_timeout_s={self.timeout_s:g}s)"
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
                if not self._heartbeat():
                    self.lost = True  # another job holds it now (or it is gone): check() stops the run
                    return
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
                f"(it found this job's heartbeat too old, or the lease was deleted); "
                f"run {self.holder} stopped before committing more"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._remove()

    def __enter__(self) -> "TableLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
