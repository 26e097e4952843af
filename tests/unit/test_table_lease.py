"""The table lease on the local filesystem (connectors/lance/lease.py): real files, real threads and processes.

Who may take a lease over is decided by the holder's own heartbeat schedule, written into the lease;
two takers of one stale lease never both hold it; a holder never writes over, or deletes, a lease
another job took. The same protocol against an S3 server: tests/integration/test_lease_s3.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest

from connectors.lance.lease import LeaseLostError, TableBusyError, TableLease
from helpers.leases import SlowReads

ELSEWHERE = "another-host.example"  # a holder on another host: only its heartbeat tells whether it lives


def _stale_lease(path, **fields) -> dict:
    """A lease written by a job on another host whose last heartbeat was long ago (an old-format body
    unless ``fields`` add the new ones)."""
    body = {"run_id": "dead-run", "token": "dead", "host": ELSEWHERE, "pid": 1, "started": 0.0, "heartbeat": 0.0}
    body.update(fields)
    path.write_text(json.dumps(body))
    return body


def _token(path) -> str:
    return json.loads(path.read_text())["token"]


def test_the_lease_records_the_holders_heartbeat_schedule(tmp_path):
    lease = TableLease(str(tmp_path), "docs", "run-1", timeout_s=90).acquire()
    try:
        body = json.loads((tmp_path / "docs.lease").read_text())
        assert (body["timeout_s"], body["heartbeat_s"]) == (90, 15)
        assert body["run_id"] == "run-1" and body["token"] == lease.token
    finally:
        lease.release()
    assert not (tmp_path / "docs.lease").exists()


def test_a_live_holder_with_a_long_timeout_keeps_its_lease_against_a_short_observer(tmp_path):
    """The issue's case at a smaller scale: the holder heartbeats every 4 s (timeout 24 s); 1.3 s after
    its last heartbeat a job configured with a 1 s timeout must find the table busy, not take it."""
    holder = TableLease(str(tmp_path), "docs", "holder", timeout_s=24, heartbeat_s=4).acquire()
    try:
        time.sleep(1.3)
        observer = TableLease(str(tmp_path), "docs", "observer", timeout_s=1)
        with pytest.raises(TableBusyError, match="being written by run holder.*after 24s without a heartbeat"):
            observer.acquire()
        holder.check()
        assert _token(tmp_path / "docs.lease") == holder.token and not holder.lost
    finally:
        holder.release()


def test_the_holders_recorded_timeout_governs_takeover(tmp_path):
    path = tmp_path / "docs.lease"
    now = time.time()
    _stale_lease(path, heartbeat=now - 30, timeout_s=600, heartbeat_s=100)
    with pytest.raises(TableBusyError, match="dead-run"):
        TableLease(str(tmp_path), "docs", "observer", timeout_s=10).acquire()
    # A longer timeout of the observer's own counts too: the larger of the two wins.
    _stale_lease(path, heartbeat=now - 30, timeout_s=10, heartbeat_s=1)
    with pytest.raises(TableBusyError, match="dead-run"):
        TableLease(str(tmp_path), "docs", "observer", timeout_s=60).acquire()
    # A heartbeat older than both: the holder is dead.
    _stale_lease(path, heartbeat=now - 30, timeout_s=20, heartbeat_s=2)
    with TableLease(str(tmp_path), "docs", "observer", timeout_s=10) as lease:
        assert lease.took_over["run_id"] == "dead-run" and _token(path) == lease.token


def test_a_holder_whose_heartbeats_are_rare_is_not_judged_by_its_timeout_alone(tmp_path):
    """A lease that records a heartbeat interval close to its timeout is stale only after several of them."""
    path = tmp_path / "docs.lease"
    _stale_lease(path, heartbeat=time.time() - 50, timeout_s=20, heartbeat_s=20)
    with pytest.raises(TableBusyError, match="dead-run"):
        TableLease(str(tmp_path), "docs", "observer", timeout_s=10).acquire()


def test_an_old_lease_without_the_new_fields_still_works(tmp_path):
    path = tmp_path / "docs.lease"
    _stale_lease(path, heartbeat=time.time() - 5)  # old body: the observer's own timeout applies
    with pytest.raises(TableBusyError, match="dead-run"):
        TableLease(str(tmp_path), "docs", "observer", timeout_s=10).acquire()
    _stale_lease(path, heartbeat=time.time() - 30)
    with TableLease(str(tmp_path), "docs", "observer", timeout_s=10) as lease:
        assert lease.took_over["token"] == "dead"
    assert not path.exists()


def test_a_lease_that_is_not_json_is_taken_over(tmp_path):
    (tmp_path / "docs.lease").write_text('{"run_id": "torn')
    with TableLease(str(tmp_path), "docs", "next", timeout_s=10) as lease:
        assert lease.took_over["run_id"] == "?"


def _race_threads(tmp_path, takers: int) -> list:
    barrier = threading.Barrier(takers)
    results: list = [None] * takers

    def take(i):
        lease = TableLease(str(tmp_path), "docs", f"taker-{i}", timeout_s=10)
        barrier.wait()
        try:
            lease.acquire()
            results[i] = lease
        except TableBusyError:
            results[i] = "busy"

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_threads_racing_for_a_stale_lease_one_wins(tmp_path):
    path = tmp_path / "docs.lease"
    for _ in range(25):
        _stale_lease(path)
        results = _race_threads(tmp_path, 6)
        winners = [r for r in results if isinstance(r, TableLease)]
        assert len(winners) == 1 and results.count("busy") == 5, results
        assert _token(path) == winners[0].token
        winners[0].check()
        winners[0].release()


def _take_in_a_process(db: str, i: int, start, done, out) -> None:
    lease = TableLease(db, "docs", f"proc-{i}", timeout_s=10)
    start.wait()
    try:
        lease.acquire()
        out.put((i, lease.token))
    except TableBusyError:
        out.put((i, "busy"))
    done.wait()  # hold the lease until every taker has tried


def test_processes_racing_for_a_stale_lease_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "docs.lease"
    takers = 5
    for _ in range(12):
        _stale_lease(path)
        start, done, out = ctx.Barrier(takers), ctx.Barrier(takers + 1), ctx.Queue()
        args = [(str(tmp_path), i, start, done, out) for i in range(takers)]
        procs = [ctx.Process(target=_take_in_a_process, args=a) for a in args]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=60) for _ in range(takers))
        tokens = [t for t in results.values() if t != "busy"]
        assert len(tokens) == 1, results
        assert _token(path) == tokens[0]
        done.wait(timeout=60)
        for p in procs:
            p.join(timeout=60)


def test_a_slow_taker_does_not_overwrite_a_lease_another_taker_took(tmp_path):
    """Two jobs find the same stale lease; the first takes it; the second, whose read came back late
    (slow storage, a paused process), must then find the table busy, not replace the first one's lease."""
    path = tmp_path / "docs.lease"
    _stale_lease(path)
    slow = SlowReads(str(tmp_path), "docs", "slow", timeout_s=10, read_delay_s=1.0)
    slow.slow = True
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_try(slow)))
    thread.start()
    time.sleep(0.3)  # the slow one has read the stale lease and is waiting for its answer
    fast = TableLease(str(tmp_path), "docs", "fast", timeout_s=10).acquire()
    thread.join(timeout=30)
    try:
        assert outcome == ["busy"]
        assert _token(path) == fast.token
        fast.check()
    finally:
        fast.release()
        if isinstance(outcome[0], TableLease):
            outcome[0].release()


def _try(lease: TableLease):
    try:
        return lease.acquire()
    except TableBusyError:
        return "busy"


def test_the_heartbeat_marks_the_lease_lost_and_leaves_the_takers_lease_alone(tmp_path):
    """A heartbeat whose read came back late must not write over the lease another job took meanwhile."""
    path = tmp_path / "docs.lease"
    holder = SlowReads(str(tmp_path), "docs", "holder", timeout_s=10, heartbeat_s=0.3, read_delay_s=0.6).acquire()
    holder.slow = True
    time.sleep(0.5)  # the first heartbeat has read the lease (its own) and waits for the answer
    taker = {**json.loads(path.read_text()), "run_id": "taker", "token": "takers-token", "heartbeat": time.time()}
    path.write_text(json.dumps(taker))
    deadline = time.time() + 10
    while not holder.lost and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a late heartbeat write would land here
    try:
        assert holder.lost and _token(path) == "takers-token"
        with pytest.raises(LeaseLostError, match="taken over"):
            holder.check()
    finally:
        holder.release()
    assert _token(path) == "takers-token"  # releasing a lost lease leaves the new holder's alone


def test_releasing_leaves_a_lease_another_job_took_alone(tmp_path):
    path = tmp_path / "docs.lease"
    holder = SlowReads(str(tmp_path), "docs", "holder", timeout_s=10, read_delay_s=0.6).acquire()
    taker = {**json.loads(path.read_text()), "run_id": "taker", "token": "takers-token", "heartbeat": time.time()}
    holder.slow = True
    thread = threading.Thread(target=holder.release)
    thread.start()
    time.sleep(0.3)  # release has read the lease (its own) and waits for the answer
    path.write_text(json.dumps(taker))
    thread.join(timeout=30)
    assert path.exists() and _token(path) == "takers-token"


def test_a_dead_local_holder_is_taken_over_whatever_its_timeout(tmp_path):
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    path = tmp_path / "docs.lease"
    _stale_lease(path, host=os.uname().nodename, pid=dead.pid, heartbeat=time.time(), timeout_s=3600, heartbeat_s=600)
    with TableLease(str(tmp_path), "docs", "next", timeout_s=10) as lease:
        assert lease.took_over["pid"] == dead.pid
