"""The table lease on S3 (connectors/lance/lease.py) against a real S3-compatible server on 127.0.0.1.

moto's server over HTTP, IAM checking on (tests/helpers/s3_server.py): the lease is created with
``If-None-Match: *``, taken over with ``If-Match: <ETag of the stale lease as read>``, refreshed with
``If-Match: <ETag of the holder's last write>`` and deleted with ``If-Match`` as well.

What these tests can and cannot show: moto checks a condition and then stores the object in two steps
that its threaded server does not make atomic, so two conditional PUTs that arrive together can both
pass their check there. The simultaneous race below (:func:`test_takers_racing_for_a_stale_lease_on_s3`)
is therefore evidence, not proof: it exercises the protocol end to end and would catch a taker that
writes without a condition, but only S3's own atomic conditional writes make "exactly one wins" hold
in every interleaving. The tests with one taker delayed between its read and its write
(:func:`test_a_slow_taker_on_s3_does_not_overwrite_the_first_takers_lease`, the heartbeat and release
ones) do not depend on that: their requests do not overlap, and the server refuses the late write
because the object's ETag has changed, which moto does check.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from connectors.lance.lease import LeaseLostError, TableBusyError, TableLease
from connectors.storage import Storage
from helpers.leases import SlowReads

BUCKET = "leases"
ELSEWHERE = "another-host.example"


@pytest.fixture(scope="module")
def s3(s3_server):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        s3_server.client().create_bucket(Bucket=BUCKET)
        yield s3_server


@pytest.fixture
def db(s3, request):
    """A database prefix of its own for each test; returns (uri, storage, boto3 client)."""
    uri = f"s3://{BUCKET}/{request.node.name}"
    return uri, Storage.resolve(paths=[uri]), s3.client()


def _key(uri: str) -> str:
    return uri.split(f"s3://{BUCKET}/", 1)[1] + "/docs.lease"


def _put(client, uri: str, **fields) -> dict:
    body = {"run_id": "dead-run", "token": "dead", "host": ELSEWHERE, "pid": 1, "started": 0.0, "heartbeat": 0.0}
    body.update(fields)
    client.put_object(Bucket=BUCKET, Key=_key(uri), Body=json.dumps(body).encode())
    return body


def _get(client, uri: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=_key(uri))["Body"].read())


def _exists(client, uri: str) -> bool:
    return client.list_objects_v2(Bucket=BUCKET, Prefix=_key(uri))["KeyCount"] > 0


def test_create_hold_and_release_on_s3(db):
    uri, storage, client = db
    with TableLease(uri, "docs", "run-1", storage=storage, timeout_s=90) as lease:
        body = _get(client, uri)
        assert body["token"] == lease.token and (body["timeout_s"], body["heartbeat_s"]) == (90, 15)
        with pytest.raises(TableBusyError, match="being written by run run-1"):
            TableLease(uri, "docs", "other", storage=storage, timeout_s=90).acquire()
        lease.check()
    assert not _exists(client, uri)


def test_a_live_holder_with_a_long_timeout_keeps_its_lease_on_s3(db):
    uri, storage, client = db
    holder = TableLease(uri, "docs", "holder", storage=storage, timeout_s=24, heartbeat_s=4).acquire()
    try:
        time.sleep(1.3)
        with pytest.raises(TableBusyError, match="after 24s without a heartbeat"):
            TableLease(uri, "docs", "observer", storage=storage, timeout_s=1).acquire()
        holder.check()
        assert _get(client, uri)["token"] == holder.token
    finally:
        holder.release()


def test_an_old_lease_without_the_new_fields_is_taken_over_on_s3(db):
    uri, storage, client = db
    _put(client, uri, heartbeat=time.time() - 5)
    with pytest.raises(TableBusyError, match="dead-run"):
        TableLease(uri, "docs", "observer", storage=storage, timeout_s=10).acquire()
    _put(client, uri, heartbeat=time.time() - 30)
    with TableLease(uri, "docs", "observer", storage=storage, timeout_s=10) as lease:
        assert lease.took_over["run_id"] == "dead-run" and _get(client, uri)["token"] == lease.token


def test_a_slow_taker_on_s3_does_not_overwrite_the_first_takers_lease(db):
    """Both read the stale lease (same ETag); the first replaces it; the slow one's If-Match then fails."""
    uri, storage, client = db
    _put(client, uri)
    slow = SlowReads(uri, "docs", "slow", storage=storage, timeout_s=10, read_delay_s=1.5)
    slow.slow = True
    outcome = []

    def take():
        try:
            outcome.append(slow.acquire())
        except TableBusyError:
            outcome.append("busy")

    thread = threading.Thread(target=take)
    thread.start()
    time.sleep(0.5)  # the slow one has read the stale lease
    fast = TableLease(uri, "docs", "fast", storage=storage, timeout_s=10).acquire()
    thread.join(timeout=60)
    try:
        assert outcome == ["busy"] and _get(client, uri)["token"] == fast.token
        fast.check()
    finally:
        fast.release()
        if outcome and isinstance(outcome[0], TableLease):
            outcome[0].release()


def test_takers_racing_for_a_stale_lease_on_s3(db):
    """Six threads take one stale lease at once, five times: one must hold it in the end, and every thread
    that came out of acquire() holding it must be that one. See the module docstring for what moto's
    non-atomic conditional writes leave unproven."""
    uri, storage, client = db
    for _ in range(5):
        _put(client, uri)
        barrier = threading.Barrier(6)
        results: list = [None] * 6

        def take(i):
            lease = TableLease(uri, "docs", f"taker-{i}", storage=storage, timeout_s=10)
            lease._filesystem()  # connect before the start line, so that the requests overlap
            barrier.wait()
            try:
                results[i] = lease.acquire()
            except TableBusyError:
                results[i] = "busy"

        threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        winners = [r for r in results if isinstance(r, TableLease)]
        assert len(winners) == 1 and results.count("busy") == 5, results
        assert _get(client, uri)["token"] == winners[0].token
        winners[0].release()


def test_the_heartbeat_on_s3_marks_the_lease_lost_and_leaves_the_takers_lease_alone(db):
    uri, storage, client = db
    holder = TableLease(uri, "docs", "holder", storage=storage, timeout_s=10, heartbeat_s=0.5).acquire()
    taker = {**_get(client, uri), "run_id": "taker", "token": "takers-token", "heartbeat": time.time()}
    client.put_object(Bucket=BUCKET, Key=_key(uri), Body=json.dumps(taker).encode())
    deadline = time.time() + 15
    while not holder.lost and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert holder.lost and _get(client, uri)["token"] == "takers-token"
        with pytest.raises(LeaseLostError):
            holder.check()
    finally:
        holder.release()
    assert _get(client, uri)["token"] == "takers-token"  # the lost holder's release deletes nothing
