"""Several Ray nodes on 127.0.0.1: the README's `ray job submit` runs the index job across them.

The cluster is a head with no CPUs (like a production head: the job's driver runs there, no work is
placed there) and two worker nodes (tests/ray_head.py: `ray start --address=... --block`, each in a
session of its own). The summary says which nodes the encoder actors and the writes ran on (the
encoder stage tags each row with its node and actor; the sink counts them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray_head import LocalRayHead, LocalRayNode
from test_ray_job_submit import _replace_set, _replace_value, readme_submit_command

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def cluster():
    head = LocalRayHead(num_cpus=0)
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
    root = tmp_path_factory.mktemp("multinode-corpus")
    docs = sample_table.slice(0, 600).select(["id", "title", "text", "length_chars"])
    for k in range(3):
        pq.write_table(docs.slice(200 * k, 200), root / f"part-{k}.parquet")
    return root


def submit(head: LocalRayHead, corpus: Path, db: Path, summary_file: Path, *sets: str) -> subprocess.CompletedProcess:
    """The README's `ray job submit` command, pointed at ``head``, ``corpus`` and ``db``."""
    argv = _replace_value(readme_submit_command(), "--address", head.address)
    argv = _replace_set(argv, "source.path", str(corpus))
    argv = _replace_set(argv, "sink.uri", str(db))
    argv = [RAY, *argv[1:], "--summary-json", str(summary_file)]
    for item in sets:
        argv += ["--set", item]
    return subprocess.run(argv, cwd=ROOT, env=head.client_env(), capture_output=True, text=True, timeout=900)


def test_encoder_actors_and_writes_run_on_the_worker_nodes(cluster, corpus, tmp_path):
    head, nodes = cluster
    db, summary_file = tmp_path / "lancedb", tmp_path / "summary.json"
    done = submit(head, corpus, db, summary_file, "compute.actors=2", "compute.block_rows=64",
                  "index.target_recall=null")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    summary = json.loads(summary_file.read_text())
    workers = {n.node_id for n in nodes}
    placement = summary["placement"]
    assert placement["encoder_actors"] == 2 and placement["encoder_nodes"] == 2, placement
    assert set(placement["rows_per_node"]) == workers, (placement, workers)
    assert sum(placement["rows_per_node"].values()) == 600
    assert set(summary["writer_nodes"]) <= workers  # the head has no CPU: nothing ran there
    assert "placement    2 encoder actor(s) on 2 node(s)" in output

    import lancedb

    ids = lancedb.connect(str(db)).open_table("wiki").to_arrow().column("id").to_pylist()
    expected = pq.read_table(corpus).column("id").to_pylist()
    assert Counter(ids) == Counter(expected)  # every id exactly once
