"""Run summary: counts merged from every sink batch, printed as one screen at the end of a job."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Optional

__all__ = ["EmbedCounts", "RunSummary"]


@dataclass
class EmbedCounts:
    """What a run's embedding passes counted: the sink's stats rows summed, the passes, the checkpoints."""

    rows_read: int = 0
    rows_written: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens: int = 0
    truncated: int = 0
    skipped: int = 0
    updated: int = 0
    encoders: Counter = field(default_factory=Counter)  # "<node id>/<actor id>" -> rows it embedded
    writer_nodes: Counter = field(default_factory=Counter)  # node id -> sink batches written there
    passes: int = 0  # times the files not finished were read again after losing workers
    checkpoints: int = 0
    checkpoint_timings: list = field(default_factory=list)
    seconds: float = 0.0

    def add_batch(
        self, rows: int, written: int, rejected: dict, tokens: int, truncated: int, skipped: int = 0, updated: int = 0
    ) -> None:
        self.rows_read += rows
        self.skipped += skipped
        self.updated += updated
        self.rows_written += written
        self.rejected.update(rejected)
        self.tokens += tokens
        self.truncated += truncated

    def add_placement(self, encoders: dict, writer_node: str) -> None:
        self.encoders.update(encoders)
        self.writer_nodes[writer_node] += 1


@dataclass
class RunSummary:
    table_uri: str = ""
    table: str = ""
    rows_read: int = 0
    rows_written: int = 0
    rejected: Counter = field(default_factory=Counter)
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    table_rows: int = 0
    version: Optional[int] = None
    index: dict = field(default_factory=dict)
    tuning: dict = field(default_factory=dict)  # pipelines.vector_index.tuning.TuningResult, when the index was tuned
    rejects_table: str = ""
    run_id: str = ""
    skipped: int = 0  # unchanged documents an upsert did not embed again
    updated: int = 0  # documents an upsert rewrote with new metadata and their old vectors (same text)
    skipped_files: dict = field(default_factory=dict)  # unreadable files skipped (source.on_bad_file=skip)
    resumed_files: int = 0  # files an earlier attempt of this run id had finished
    deleted_missing: int = 0
    delete_missing_skipped: str = ""  # why sink.delete_missing deleted nothing this time
    checkpoints: int = 0
    passes: int = 0  # times the run read its unfinished files again after losing workers
    encoders: Counter = field(default_factory=Counter)  # "<node id>/<actor id>" -> rows it embedded
    writer_nodes: Counter = field(default_factory=Counter)  # node id -> sink batches written there
    checkpoint_timings: list = field(default_factory=list)  # pipelines.run.checkpoints.Checkpointer.timings
    dedup_seconds: float = 0.0  # the duplicate-id check after the stream
    index_seconds: float = 0.0  # the index task: vector index, tuning, id index
    preflight_seconds: float = 0.0  # checks and plan before any work (pipelines.run.preflight.preflight)
    ray_start_seconds: float = 0.0  # ray.init() when the job started its own local Ray (0 when connected)
    dtype: str = ""  # the encoder's compute dtype (model.dtype resolved) and why
    dtype_reason: str = ""
    model: list = field(default_factory=list)  # the model's chain and where each setting came from
    warnings: list = field(default_factory=list)  # e.g. a dimension the model was not trained to be cut at

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    def add_embedding(self, counts: EmbedCounts) -> None:
        """What the run's embedding passes counted (:func:`pipelines.run.stream.embed_and_commit`)."""
        self.rows_read += counts.rows_read
        self.skipped += counts.skipped
        self.updated += counts.updated
        self.rows_written += counts.rows_written
        self.rejected.update(counts.rejected)
        self.tokens += counts.tokens
        self.truncated += counts.truncated
        self.encoders.update(counts.encoders)
        self.writer_nodes.update(counts.writer_nodes)
        self.passes += counts.passes
        self.checkpoints = counts.checkpoints
        self.checkpoint_timings = counts.checkpoint_timings
        self.embed_seconds = counts.seconds

    @property
    def placement(self) -> dict:
        """Where the work ran: encoder actors, the nodes they were on, rows per node, writer nodes."""
        per_node = Counter()
        for tag, rows in self.encoders.items():
            per_node[tag.split("/")[0]] += rows
        return {
            "encoder_actors": len(self.encoders),
            "encoder_nodes": len(per_node),
            "rows_per_node": dict(per_node),
            "writer_nodes": len(self.writer_nodes),
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rejected"] = dict(self.rejected)
        out["encoders"] = dict(self.encoders)
        out["writer_nodes"] = dict(self.writer_nodes)
        out["placement"] = self.placement
        out["rows_rejected"] = self.rows_rejected
        out["fixed_seconds"] = round(self.fixed_seconds, 3)
        return out

    def format(self) -> str:
        secs = max(self.embed_seconds, 1e-9)
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        idx = self.index or {}
        if idx.get("type", "none") == "none":
            index_line = f"none ({idx.get('reason', '')}); queries use exact search"
        else:
            index_line = (
                f"{idx['type']} metric={idx['metric']} partitions={idx['num_partitions']} "
                + (f"bits={idx['num_bits']} " if idx.get("num_bits") else "")
                + (f"sub_vectors={idx['num_sub_vectors']} " if idx.get("num_sub_vectors") else "")
                + f"built in {idx.get('build_seconds')}s"
                + (f" by {idx['workers']} tasks" if (idx.get("workers") or 1) > 1 else "")
                + f"; query defaults nprobes={idx.get('nprobes')} refine_factor={idx.get('refine_factor')}"
            )
        fts = idx.get("fts")
        if fts:
            index_line += f"; full-text index on {fts['column']} {fts['how']} in {fts['seconds']}s" + (
                f" by {fts['workers']} tasks" if (fts.get("workers") or 1) > 1 else ""
            )
        lines = [
            "=" * 72,
            f"table        {self.table} @ {self.table_uri} (version {self.version}, {self.table_rows} rows)",
            f"run          {self.run_id} ({self.checkpoints} checkpoints"
            + (f", resumed: {self.resumed_files} files already done" if self.resumed_files else "")
            + (f", {self.passes} restart(s) after lost workers" if self.passes else "")
            + ")",
            f"rows read    {self.rows_read}"
            + (f" ({len(self.skipped_files)} unreadable files skipped)" if self.skipped_files else ""),
            f"embedded     {self.rows_written}",
            f"unchanged    {self.skipped} (skipped, already in the table)",
            *([f"updated      {self.updated} (metadata only, not embedded again)"] if self.updated else []),
            f"rejected     {self.rows_rejected} ({rejected}) -> {self.rejects_table}",
            f"truncated    {self.truncated} texts cut at the model's token limit",
            f"throughput   {self.rows_written / secs:.1f} docs/s, {self.tokens / secs:.0f} tokens/s "
            f"({self.tokens} tokens in {self.embed_seconds:.1f}s; job {self.seconds:.1f}s)",
            *([f"dtype        {self.dtype} ({self.dtype_reason})"] if self.dtype else []),
            *[("model        " if i == 0 else " " * 13) + line for i, line in enumerate(self.model)],
            *[f"warning      {line}" for line in self.warnings],
            f"index        {index_line}",
            *([f"placement    {_placement_line(self.placement)}"] if self.encoders else []),
            *([f"deleted      {self.deleted_missing} rows whose id left the source"] if self.deleted_missing else []),
            *([f"deleted      none: {self.delete_missing_skipped}"] if self.delete_missing_skipped else []),
            *([f"tuning       {_tuning_line(self.tuning)}"] if self.tuning else []),
            f"time         {self.time_line()}",
            "=" * 72,
        ]
        return "\n".join(lines)

    @property
    def fixed_seconds(self) -> float:
        """The job's time outside the stream: preflight, Ray start, duplicate check, index step, lineage."""
        return max(self.seconds - self.embed_seconds, 0.0)

    def time_line(self) -> str:
        """Where the job's wall time went: the stream and each fixed part around it."""
        idx = self.index or {}
        build = idx.get("build_seconds") or 0.0
        tuned = (self.tuning or {}).get("seconds") or 0.0
        named = self.preflight_seconds + self.ray_start_seconds + self.dedup_seconds + self.index_seconds
        return (
            f"job {self.seconds:.1f}s: stream {self.embed_seconds:.1f}s (read to commit, with the encoders' start); "
            f"fixed {self.fixed_seconds:.1f}s = "
            f"preflight {self.preflight_seconds:.1f} + ray start {self.ray_start_seconds:.1f} + duplicate check "
            f"{self.dedup_seconds:.1f} + index step {self.index_seconds:.1f} (build {build:.1f}, tuning {tuned:.1f}) "
            f"+ other {max(self.fixed_seconds - named, 0.0):.1f}"
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _placement_line(p: dict) -> str:
    rows = ", ".join(f"{node[:8]} {n}" for node, n in sorted(p["rows_per_node"].items()))
    return (
        f"{p['encoder_actors']} encoder actor(s) on {p['encoder_nodes']} node(s) (rows per node: {rows}); "
        f"writes on {p['writer_nodes']} node(s)"
    )


def _tuning_line(t: dict) -> str:
    verdict = "reached" if t["reached"] else "NOT reached, highest setting tried"
    what = {
        "pseudo-queries": "pseudo-queries, sampled documents turned along the data's spread, each document "
        "left out (index.tuning_queries_path: real queries are a truer measure)",
        "documents": "sampled documents, each left out of its own results (index.tuning_queries_path: real "
        "queries are a truer measure)",  # lineage written before 2026-12-07
    }.get(t["query_source"], t["query_source"])
    low = f", 95% lower bound {t['recall_low']:.3f}" if t.get("recall_low") is not None else ""
    return (
        f"recall@{t['k']} {t['recall']:.3f}{low} vs exact search (target {t['target_recall']:g}, {verdict}) "
        f"on {t['queries']} {what}; {len(t['tried'])} settings tried in {t['seconds']}s"
    )
