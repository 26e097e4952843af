"""The run's numbers on Ray's metrics endpoint (Prometheus), tagged with the run id and the table.

Ray exports metrics made with :mod:`ray.util.metrics` from every process through its node's metrics
agent: each node serves them at ``http://<node>:<metrics_export_port>/metrics`` with the prefix
``ray_`` (a counter also gets ``_total``), and Ray's Prometheus service discovery file lists the
nodes (docs/metrics.md; ``infra/grafana/embedpipe.json`` is a dashboard over them).

Counts are those of committed work, recorded in the driver when a checkpoint commits a file's rows
(the same numbers as the run summary, never a batch twice when a worker is lost and its file read
again); the encode histogram is recorded by the encoder actors, per call.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["ENCODE_BATCH_BOUNDARIES", "EncodeMetrics", "RunMetrics"]

TAGS = ("run_id", "table")
ENCODE_BATCH_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
COMMIT_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30]


def _ray_up() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        return False


class RunMetrics:
    """The driver's metrics of one run; every method is a no-op outside Ray."""

    def __init__(self, run_id: str, table: str, total_rows: int):
        self.tags = {"run_id": run_id, "table": table}
        self.on = _ray_up()
        if not self.on:
            return
        from ray.util.metrics import Counter, Histogram

        def counter(name: str, description: str, keys=TAGS):
            return Counter(f"embedpipe_{name}", description=description, tag_keys=keys)

        self.read = counter("documents_read", "Source rows of committed files (embedded, rejected or unchanged)")
        self.embedded = counter("rows_embedded", "Table rows written (chunks when chunking)")
        self.rejected = counter(
            "documents_rejected", "Rows kept aside in <table>_rejects, by reason", (*TAGS, "reason")
        )
        self.skipped = counter("documents_skipped_unchanged", "Unchanged documents an upsert did not embed again")
        self.tokens = counter("tokens", "Tokens the encoders processed")
        self.truncated = counter("documents_truncated", "Texts cut at the model's token limit")
        self.bytes = counter("bytes_written", "Bytes of the table's data files committed by the run")
        self.checkpoints = counter("checkpoints", "Checkpoints committed (or staged)")
        self.expected = counter("rows_expected", "Source rows this run set out to read (progress: read / expected)")
        self.commit = Histogram(
            "embedpipe_commit_seconds",
            description="Seconds of a checkpoint's table commits",
            boundaries=COMMIT_BOUNDARIES,
            tag_keys=TAGS,
        )
        # Counters and histograms only: Ray drops a process's gauges when it exits, so a finished
        # run's last values would be gone from the endpoint (counters and histograms stay).
        if total_rows:
            self.expected.inc(total_rows, tags=self.tags)

    def batch(self, rows: int, written: int, rejected: dict, tokens: int, truncated: int, skipped: int) -> None:
        """One committed sink batch's counts (as :meth:`~pipelines.run.summary.EmbedCounts.add_batch` takes them)."""
        if not self.on:
            return
        for metric, value in (
            (self.read, rows),
            (self.embedded, written),
            (self.tokens, tokens),
            (self.truncated, truncated),
            (self.skipped, skipped),
        ):
            if value:
                metric.inc(value, tags=self.tags)
        for reason, n in rejected.items():
            self.rejected.inc(n, tags={**self.tags, "reason": reason})

    def checkpoint(self, commit_s: float, bytes_written: int) -> None:
        if not self.on:
            return
        self.checkpoints.inc(1, tags=self.tags)
        self.commit.observe(commit_s, tags=self.tags)
        if bytes_written:
            self.bytes.inc(bytes_written, tags=self.tags)


class EncodeMetrics:
    """An encoder actor's metrics: it counts itself once, and the seconds of each block it embeds."""

    def __init__(self, run_id: Optional[str], table: Optional[str]):
        self.on = bool(run_id) and _ray_up()
        if not self.on:
            return
        from ray.util.metrics import Counter, Histogram

        self.tags = {"run_id": run_id, "table": table or ""}
        Counter(
            "embedpipe_encoder_actors_started",
            description="Encoder actors started for the run (a replaced actor counts again)",
            tag_keys=TAGS,
        ).inc(1, tags=self.tags)
        self.seconds = Histogram(
            "embedpipe_encode_batch_seconds",
            description="Seconds an encoder actor took for one block (forward passes and post-processing)",
            boundaries=ENCODE_BATCH_BOUNDARIES,
            tag_keys=TAGS,
        )

    def observe(self, seconds: float) -> None:
        if self.on:
            self.seconds.observe(seconds, tags=self.tags)
