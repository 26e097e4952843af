"""The run summary's time line: where a job's wall time went."""

from __future__ import annotations

from pipelines.run.summary import EmbedCounts, RunSummary


def test_the_time_line_splits_the_job_into_the_stream_and_each_fixed_part():
    summary = RunSummary(
        seconds=175.1,
        embed_seconds=112.9,
        preflight_seconds=2.6,
        ray_start_seconds=5.5,
        dedup_seconds=0.1,
        index_seconds=51.2,
        index={"type": "ivf_rq", "metric": "cosine", "num_partitions": 78, "build_seconds": 3.9},
        tuning={"seconds": 45.2},
    )
    assert summary.fixed_seconds == 175.1 - 112.9
    assert summary.time_line() == (
        "job 175.1s: stream 112.9s (read to commit, with the encoders' start); fixed 62.2s = preflight 2.6 "
        "+ ray start 5.5 + duplicate check 0.1 + index step 51.2 (build 3.9, tuning 45.2) + other 2.8"
    )
    assert summary.to_dict()["fixed_seconds"] == round(175.1 - 112.9, 3)


def test_a_job_without_index_or_tuning_says_zero_for_them():
    summary = RunSummary(seconds=30.0, embed_seconds=20.0, preflight_seconds=1.0, index={"type": "none"})
    assert "index step 0.0 (build 0.0, tuning 0.0) + other 9.0" in summary.time_line()
    assert f"\ntime         {summary.time_line()}\n" in summary.format()


def test_the_embedding_passes_counts_reach_the_summary():
    """The passes count into EmbedCounts (pipelines/run/stream.py); the runner adds them to the summary."""
    counts = EmbedCounts(passes=1, checkpoints=2, checkpoint_timings=[{"rows": 5}], seconds=3.5)
    counts.add_batch(3, 2, {"empty_text": 1}, 40, 1, skipped=0, updated=0)
    counts.add_batch(2, 1, {}, 20, 0, skipped=1, updated=1)
    counts.add_placement({"node-a/actor-1": 3}, "node-a")
    counts.add_placement({"node-a/actor-1": 2}, "node-b")
    summary = RunSummary()
    summary.add_embedding(counts)
    assert (summary.rows_read, summary.rows_written, summary.tokens, summary.truncated) == (5, 3, 60, 1)
    assert (summary.skipped, summary.updated, summary.rows_rejected) == (1, 1, 1)
    assert (summary.passes, summary.checkpoints, summary.embed_seconds) == (1, 2, 3.5)
    assert summary.checkpoint_timings == [{"rows": 5}]
    assert summary.placement == {
        "encoder_actors": 1,
        "encoder_nodes": 1,
        "rows_per_node": {"node-a": 5},
        "writer_nodes": 2,
    }
