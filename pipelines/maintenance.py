"""Index upkeep, housekeeping and a health check for a table that scheduled runs keep adding to.

Each append/upsert run already keeps the index in shape (:func:`pipelines.vector_index.step.maintain_index`);
this is the same policy as a step of its own, for a scheduler to run after the indexing job (and for
tables that other writers touch): report the index's indexed/unindexed rows, ``optimize()`` or rebuild
by ``index.reindex_fraction``, report again, and check that no id is in the table twice (the promise
of idempotent, resumable runs). A duplicate id fails the step instead of being repaired silently.

Housekeeping (:func:`housekeep`): the table, ``<table>_rejects`` and ``<table>_runs`` get a small
commit at every checkpoint of every run; their fragments are compacted and their versions older than
``sink.keep_versions`` pruned (:mod:`connectors.lance.housekeeping`, which explains why pruning never
touches a running job's uncommitted files). Compaction changes row addresses, which a concurrent
upsert run deletes superseded rows by: :func:`housekeep` is the one call to run under the table's lease.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Optional

from connectors import columns as C
from connectors.errors import RunError
from connectors.lance.dedup import duplicate_ids
from connectors.lance.housekeeping import Housekeeping, compact_and_prune
from connectors.lance.lineage import Lineage
from connectors.lance.table import LanceTable, SinkError
from connectors.lance.text_index import keep_text_index
from connectors.storage import Storage, is_s3
from pipelines.config import PipelineConfig, parse_duration
from pipelines.vector_index.params import settle_metric
from pipelines.vector_index.step import maintain_index

log = logging.getLogger(__name__)

__all__ = ["DuplicateIdsError", "MaintenanceReport", "duplicate_ids", "housekeep", "index_stats", "run_maintenance"]


class DuplicateIdsError(RunError):
    """The table holds some id more than once."""


@dataclass
class MaintenanceReport:
    table_uri: str = ""
    table: str = ""
    rows: int = 0
    version: Optional[int] = None
    before: dict = field(default_factory=dict)  # index_stats() before upkeep
    after: dict = field(default_factory=dict)
    action: str = ""  # optimized | rebuilt | built | none
    reason: str = ""
    text_index: dict = field(default_factory=dict)  # the full-text index (index.fts): column, how, seconds, rows
    duplicate_ids: Optional[int] = None  # rows beyond the first of each id; None: not checked
    duplicate_examples: list = field(default_factory=list)
    keep_versions: Optional[str] = None  # sink.keep_versions (None: versions are never pruned)
    housekeeping: list[Housekeeping] = field(default_factory=list)  # the table, its _rejects, its _runs
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def raise_for_duplicates(self) -> None:
        if self.duplicate_ids:
            raise DuplicateIdsError(
                f"table {self.table!r} in {self.table_uri} holds {self.duplicate_ids} rows "
                f"whose id is already in the table, e.g. {self.duplicate_examples}"
            )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def format(self) -> str:
        def idx(s: dict) -> str:
            if s.get("type", "none") == "none":
                return "no vector index (exact search)"
            return f"{s['type']} {s['indexed_rows']} indexed, {s['unindexed_rows']} unindexed"

        dups = (
            "not checked"
            if self.duplicate_ids is None
            else "none"
            if not self.duplicate_ids
            else f"{self.duplicate_ids} {self.duplicate_examples}"
        )
        return "\n".join(
            [
                "=" * 72,
                f"table        {self.table} @ {self.table_uri} (version {self.version}, {self.rows} rows)",
                f"index before {idx(self.before)}",
                f"upkeep       {self.action}" + (f" ({self.reason})" if self.reason else ""),
                f"index after  {idx(self.after)}",
                *(
                    [f"full-text    {t['how']} on {t['column']} ({t['rows']} rows indexed, {t['seconds']}s)"]
                    if (t := self.text_index)
                    else []
                ),
                f"duplicate ids {dups}",
                f"housekeeping compacted; versions older than {self.keep_versions} pruned"
                if self.keep_versions is not None
                else "housekeeping compacted; versions never pruned (sink.keep_versions: null)",
                *(f"  {h.format()}" for h in self.housekeeping),
                f"took         {self.seconds:.1f}s",
                "=" * 72,
            ]
        )


def index_stats(table, column: str = C.VECTOR) -> dict:
    """``{"type", "name", "indexed_rows", "unindexed_rows"}`` of the vector index, ``{"type": "none"}``."""
    existing = [i for i in table.list_indices() if i.columns == [column]]
    if not existing:
        return {"type": "none", "unindexed_rows": table.count_rows()}
    stats = table.index_stats(existing[0].name)
    return {
        "type": str(getattr(stats, "index_type", existing[0].index_type)),
        "name": existing[0].name,
        "indexed_rows": int(getattr(stats, "num_indexed_rows", 0) or 0),
        "unindexed_rows": int(getattr(stats, "num_unindexed_rows", 0) or 0),
    }


def housekeep(config: PipelineConfig, table: LanceTable) -> list[Housekeeping]:
    """Compact ``table``, its rejects and its run log; prune versions by ``sink.keep_versions``.

    Compaction gives rows new addresses: run it only while no indexing run commits to the table
    (the lease); pruning leaves uncommitted files alone either way.
    """
    sink = config.sink
    keep = None if sink.keep_versions is None else parse_duration(sink.keep_versions)
    uris = [table.path, table.rejects.path, table.runs.uri]
    return [compact_and_prune(uri, keep, table.storage_options) for uri in uris]


def run_maintenance(config: PipelineConfig, check_ids: bool = True) -> MaintenanceReport:
    """Index upkeep for ``config.sink`` by ``config.index``'s policy, housekeeping, the duplicate-id count.

    The caller decides what a duplicate means (:meth:`MaintenanceReport.raise_for_duplicates`).
    Upkeep rewrites fragments (compaction moves rows to new addresses), so it holds the table's
    lease (:mod:`connectors.lance.lease`) like an indexing run: it never runs beside one.

    Raises:
        SinkError: no such table, or not one of this pipeline's.
        TableBusyError: an indexing run holds the table (``sink.on_busy=fail``).
    """
    started = time.perf_counter()
    sink = config.sink
    storage = Storage.resolve(config.storage, paths=[sink.uri])
    if is_s3(sink.uri):
        storage.probe(sink.uri, "sink.uri")
    table = LanceTable.at(sink.uri, sink.table, storage)
    if table.lineage() is None:
        raise SinkError(f"no table {sink.table!r} in {sink.uri}")
    holder = f"maintain-{uuid.uuid4().hex[:8]}"
    with table.lease(
        holder,
        timeout_s=sink.lease_timeout_s,
        on_busy=sink.on_busy,
        log=log.info,
    ):
        # Read again under the lease: a lineage read before a wait (sink.on_busy=wait) may be another
        # model's, and an index rebuild writes the lineage back.
        lineage = table.lineage()
        if lineage is None:
            raise SinkError(f"no table {sink.table!r} in {sink.uri} (removed while this job waited)")
        report = _maintain(config, table, lineage, check_ids)
    report.seconds = time.perf_counter() - started
    return report


def _keep_text_index(table: LanceTable, handle, lineage: Lineage, index) -> tuple[dict, Lineage]:
    """The full-text index brought up to date (built when missing), and recorded in the lineage."""
    column = lineage.source.text_column if lineage.source else "text"
    fts = keep_text_index(handle, column, index.fts_options(), incremental=True)
    stored = (lineage.index or {}).get("fts") or {}
    if {k: stored.get(k) for k in ("column", "options", "rows")} == {k: fts[k] for k in ("column", "options", "rows")}:
        return fts, lineage  # nothing new to record: no lineage commit
    return fts, table.update_lineage(lineage, index={**(lineage.index or {}), "fts": fts})


def _maintain(config: PipelineConfig, table: LanceTable, lineage: Lineage, check_ids: bool) -> MaintenanceReport:
    sink = config.sink
    handle = table.open()
    report = MaintenanceReport(table_uri=sink.uri, table=sink.table, rows=handle.count_rows())
    report.before = index_stats(handle)
    index = settle_metric(config.index, lineage.metric)
    params = maintain_index(handle, report.rows, lineage.dimension, index)
    if params.type == "none":
        report.action, report.reason = "none", params.reason
    elif params.reason.startswith("optimized"):
        report.action, report.reason = "optimized", params.reason
    else:
        report.action = "rebuilt" if report.before["type"] != "none" else "built"
        report.reason = (
            f"{params.num_partitions} partitions"
            if report.before["type"] == "none"
            else f"unindexed rows over {config.index.reindex_fraction:.0%} of indexed"
        )
        # Queries take their defaults from the lineage: keep it in step with the new index.
        query_defaults = {"nprobes": params.nprobes, "refine_factor": params.refine_factor}
        lineage = table.update_lineage(lineage, index=params.to_dict(), query_defaults=query_defaults)
    if index.fts:
        report.text_index, lineage = _keep_text_index(table, handle, lineage, index)
    report.after = index_stats(handle)
    report.keep_versions = sink.keep_versions
    report.housekeeping = housekeep(config, table)
    report.version = table.version()
    if check_ids:
        id_column = lineage.source.id_column
        report.duplicate_ids, report.duplicate_examples = duplicate_ids(table.path, id_column, table.storage_options)
    return report
