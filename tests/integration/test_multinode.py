"""Several Ray nodes on 127.0.0.1: docs/deploy.md's `ray job submit` runs the index job across them.

The cluster is a head with no CPUs (like a production head: the job's driver runs there, no work is
placed there) and two worker nodes (tests/helpers/ray_head.py: `ray start --address=... --block`, each in a
session of its own). The summary says which nodes the encoder actors and the writes ran on (the
encoder stage tags each row with its node and actor; the sink counts them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.job_submit import documented_submit_command, replace_set, replace_value
from helpers.ray_head import LocalRayHead, LocalRayNode

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def test_only_a_lost_worker_makes_a_run_start_over():
    import ray.exceptions as rx

    from pipelines.run.resources import lost_worker

    assert lost_worker(rx.ActorDiedError())
    assert lost_worker(rx.RayTaskError("read", "Traceback ...", rx.ActorDiedError()))
    # What a killed node's footer-reader actor gave Ray Data's file listing (seen in the test below).
    assert lost_worker(
        rx.UnserializableException(
            "Original exception: ray.exceptions.RayTaskError: ray::ListFiles() ... ray.exceptions.ActorDiedError: "
            "The actor died unexpectedly before finishing this task. The actor died because its node has died."
        )
    )
    assert not lost_worker(ValueError("source.path: no Parquet files"))
    init_failed = rx.ActorDiedError()  # an encoder whose constructor raised: raised at once
    init_failed.error_msg = (
        "The actor died because of an error raised in its creation task, "
        "ray::MapWorker.__init__() ... ValueError: bad weights"
    )
    assert not lost_worker(init_failed)
    assert not lost_worker(rx.RayTaskError("encode", "Traceback ...", RuntimeError("CUDA error: out of memory")))


def test_a_stalled_stream_is_stopped_and_counts_as_lost(ray_cluster, tmp_path):
    import ray

    from pipelines.run.resources import lost_worker

    def stalls_once(batch):  # the first call hangs, as Ray Data does when a task it waits on vanished
        import os

        if os.path.exists(batch["marker"][0]):
            os.remove(batch["marker"][0])
            time.sleep(20)
        return batch

    marker = tmp_path / "stall"
    marker.write_text("")
    context = ray.data.DataContext.get_current()
    before = context.execution_no_progress_timeout_s
    context.execution_no_progress_timeout_s = 3  # the job sets compute.stall_timeout_s here
    try:
        ds = ray.data.from_items([{"marker": str(marker)}] * 2).map_batches(stalls_once, batch_size=1)
        started = time.time()
        with pytest.raises(Exception) as stalled:
            ds.take_all()
        assert time.time() - started < 25 and "made no progress" in str(stalled.value)
        assert lost_worker(stalled.value)  # so _stream reads the unfinished files again
    finally:
        context.execution_no_progress_timeout_s = before
    again = ray.data.from_items([{"marker": str(marker)}] * 2).map_batches(stalls_once, batch_size=1)
    assert len(again.take_all()) == 2  # and the next pass goes through


@pytest.fixture(scope="module")
def cluster():
    """Shared by the tests below in file order; the last one kills a node.

    The head's GCS checks each node every second instead of every 3 s: a killed node (its raylet
    refuses the check at once) is declared dead after 5 failed checks, ~5 s instead of ~15 s that the
    job waits doing nothing; a live but slow node still has each check's 10 s timeout, 5 times over."""
    head = LocalRayHead(num_cpus=0, env={"RAY_health_check_period_ms": "1000"})
    nodes = []
    try:
        nodes = [LocalRayNode(head, num_cpus=2) for _ in range(2)]
        yield head, nodes
    finally:
        for node in nodes:
            node.stop()
        head.stop()


@pytest.fixture(scope="module")
def corpus(sample_table, tmp_path_factory) -> Path:
    """300 documents in three files: with the real model and blocks of 32 rows, enough for both
    encoder actors to embed some (the first test) and for the job to run ~35 s past the moment the
    first encoder starts on this machine (the second kills a node 3 s after it)."""
    root = tmp_path_factory.mktemp("multinode-corpus")
    docs = sample_table.slice(0, 300).select(["id", "title", "text", "length_chars"])
    for k in range(3):
        pq.write_table(docs.slice(100 * k, 100), root / f"part-{k}.parquet")
    return root


def submit_argv(head: LocalRayHead, corpus: Path, db: Path, summary_file: Path, *sets: str) -> list[str]:
    """docs/deploy.md's `ray job submit` command, pointed at ``head``, ``corpus`` and ``db``."""
    argv = replace_value(documented_submit_command(), "--address", head.address)
    argv = replace_set(argv, "source.path", str(corpus))
    argv = replace_set(argv, "sink.uri", str(db))
    argv = [RAY, *argv[1:], "--summary-json", str(summary_file)]
    for item in sets:
        argv += ["--set", item]
    return argv


def submit(head: LocalRayHead, corpus: Path, db: Path, summary_file: Path, *sets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        submit_argv(head, corpus, db, summary_file, *sets),
        cwd=ROOT,
        env=head.client_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_encoder_actors_and_writes_run_on_the_worker_nodes(cluster, corpus, tmp_path):
    head, nodes = cluster
    db, summary_file = tmp_path / "lancedb", tmp_path / "summary.json"
    done = submit(
        head, corpus, db, summary_file, "compute.actors=2", "compute.block_rows=32", "index.target_recall=null"
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    summary = json.loads(summary_file.read_text())
    workers = {n.node_id for n in nodes}
    placement = summary["placement"]
    assert placement["encoder_actors"] == 2 and placement["encoder_nodes"] == 2, placement
    assert set(placement["rows_per_node"]) == workers, (placement, workers)
    assert sum(placement["rows_per_node"].values()) == 300
    assert set(summary["writer_nodes"]) <= workers  # the head has no CPU: nothing ran there
    assert "placement    2 encoder actor(s) on 2 node(s)" in output

    import lancedb

    ids = lancedb.connect(str(db)).open_table("wiki").to_arrow().column("id").to_pylist()
    expected = pq.read_table(corpus).column("id").to_pylist()
    assert Counter(ids) == Counter(expected)  # every id exactly once


def _runs_an_encoder(node: LocalRayNode) -> bool:
    import psutil

    for p in node._processes():
        try:
            if "EncodeStage" in " ".join(p.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def test_a_lost_worker_node_shrinks_the_pool_and_the_job_finishes(cluster, corpus, tmp_path):
    """Two encoder actors fill the cluster's two worker nodes; one node is killed (raylet, workers
    and all, SIGKILL) while it embeds. What is left has room for one actor and one CPU for the
    tasks: the run reads its unfinished files again on a pool of one, and every id is written once.
    (Before: the dead actor was restarted on the last free CPU, the read tasks never got one, and
    the job made no progress for as long as it was watched.)"""
    head, nodes = cluster  # runs last: the node it kills stays dead
    db, summary_file = tmp_path / "lancedb", tmp_path / "summary.json"
    argv = submit_argv(
        head, corpus, db, summary_file, "compute.actors=2", "compute.block_rows=32", "index.target_recall=null"
    )
    job = subprocess.Popen(
        argv, cwd=ROOT, env=head.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    victim, deadline = None, time.time() + 600
    while victim is None and job.poll() is None and time.time() < deadline:
        victim = next((n for n in nodes if _runs_an_encoder(n)), None)
        time.sleep(0.5)
    assert victim is not None, "no encoder actor started on a worker node"
    time.sleep(3)  # mid-run: the actors are embedding
    assert job.poll() is None, "the job ended before the node could be lost"
    victim.kill()
    output, _ = job.communicate(timeout=900)
    assert job.returncode == 0, output[-6000:]

    summary = json.loads(summary_file.read_text())
    assert summary["passes"] >= 1, output[-3000:]
    assert "a worker was lost" in output and "with 1 encoder actor(s)" in output
    assert summary["rows_read"] == 300 and summary["rows_written"] == 300  # counted once, not per pass
    import lancedb

    ids = lancedb.connect(str(db)).open_table("wiki").to_arrow().column("id").to_pylist()
    expected = pq.read_table(corpus).column("id").to_pylist()
    assert Counter(ids) == Counter(expected)  # every id exactly once


@pytest.mark.slow
def test_a_two_cpu_head_with_a_small_object_store_does_not_stall(sample_table, tiny_bert_dir, tmp_path):
    """One encoder actor holds one of two CPUs and the object store is small, so Ray Data's budgets
    fill while files are still being read. Two stalls were seen here (bench/read_starvation.py):
    a read task paused with its CPU held left tokenize no CPU (a 10M run of bench/scale.py stopped
    at 3.5M rows read, 2,048 tokenized); and, with reads no longer pausing, the sink got no CPU
    until every file was read (Ray Data reserves each operator a whole CPU, upstream first), so the
    encoder's output filled the object store and the stream stopped. 300k documents in files of
    10k rows stalled on the code before each fix."""
    corpus = _short_docs(sample_table, tmp_path / "corpus", files=30, rows=10_000)
    head = LocalRayHead(num_cpus=2, object_store_mb=80)
    try:
        summary = _index_on(head, corpus, tmp_path, tiny_bert_dir, timeout=420)
        assert summary["rows_written"] == 300_000, summary
    finally:
        head.stop()


@pytest.mark.slow
def test_checkpoints_come_through_the_run_not_at_its_end(sample_table, tiny_bert_dir, tmp_path):
    """Files complete in the order they are read, so a crash loses at most the files in flight.
    Unordered, Ray's Parquet reader packed row groups of several files into one read unit (up to
    128 MiB by default; the session's Ray packs nothing, see conftest), the reads ran ahead into a
    roomy object store, the files' blocks were interleaved and no file was complete until the end:
    here the first checkpoint came at 90% of the stream (1M documents in bench/scale.py: at 350 s
    of 414 s)."""
    files, rows = 5, 30_000
    corpus = _short_docs(sample_table, tmp_path / "corpus", files=files, rows=rows)
    head = LocalRayHead(num_cpus=2, env={"RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(128 * 2**20)})
    try:
        summary = _index_on(head, corpus, tmp_path, tiny_bert_dir, timeout=300, checkpoint_rows=rows)
    finally:
        head.stop()
    assert summary["rows_written"] == files * rows
    timings, stream = summary["checkpoint_timings"], summary["embed_seconds"]
    committed_early = [t["rows"] for t in timings if t["at_s"] <= 0.8 * stream]
    assert committed_early and committed_early[-1] >= 0.4 * files * rows, (timings, stream)


def _short_docs(sample_table, corpus: Path, files: int, rows: int) -> Path:
    """``files`` Parquet files of ``rows`` short documents (4-11 consecutive words of the sample)."""
    import numpy as np
    import pyarrow as pa

    words = " ".join(sample_table.column("text").to_pylist()).split()
    rng = np.random.default_rng(0)
    corpus.mkdir()
    for k in range(files):
        at, n = rng.integers(0, len(words) - 12, rows), rng.integers(4, 12, rows)
        texts = [" ".join(words[a : a + m]) for a, m in zip(at.tolist(), n.tolist())]
        ids = [f"d{k:02d}-{i:05d}" for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts}), corpus / f"part-{k:02d}.parquet")
    return corpus


def _index_on(head, corpus: Path, tmp_path: Path, model: Path, timeout: float, checkpoint_rows: int = 10_000) -> dict:
    """Index ``corpus`` with the tiny model from a driver of its own on ``head`` (not `ray job submit`:
    its runtime env would take longer to install than the run takes); returns the run summary."""
    summary_file = tmp_path / "summary.json"
    argv = [sys.executable, "-m", "jobs.index", "--summary-json", str(summary_file)]
    for item in (
        f"source.path={corpus}",
        f"sink.uri={tmp_path / 'db'}",
        "sink.mode=append",
        f"model.path={model}",
        "index.type=none",
        "embed.dimension=32",
        "compute.actors=1",
        f"sink.checkpoint_rows={checkpoint_rows}",
    ):
        argv += ["--set", item]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=head.client_env(RAY_ADDRESS=f"127.0.0.1:{head.gcs_port}", HF_HUB_OFFLINE="1"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the run stalled:\n{str(exc.stdout)[-3000:]}") from None
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads(summary_file.read_text())
