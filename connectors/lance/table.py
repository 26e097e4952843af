"""The sink's tables: their names and places, schemas and versions, opening them, the sink's errors.

The sink writes like Ray Data's own Lance writer (fragments in tasks, then one commit in the
driver), in these modules of :mod:`connectors.lance`: :mod:`connectors.lance.write` (the write
stage), :mod:`connectors.lance.commits` (checkpoint and overwrite commits, deletes),
:mod:`connectors.lance.lookup` (upsert lookups), :mod:`connectors.lance.metadata` (the lineage in the
table's schema) and this one. Why checkpoints by file and not Ray Data's
checkpointing: Ray's row-level checkpoint keeps the id of every finished row (gigabytes at 100M
documents). Here the resume state is one row per finished input file in ``<table>_runs``, and every
table row carries ``run_id`` and ``source_file``, so a resumed run deletes the partial rows of
unfinished files and redoes only those files.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import pyarrow as pa

from connectors.errors import UserError

__all__ = [
    "LanceTable",
    "REJECT_SCHEMA",
    "SinkError",
    "dataset_uri",
    "map_table",
    "rejects_table",
    "runs_table",
    "table_schema",
    "table_version",
    "create_id_index",
    "open_dataset",
    "open_table",
]


REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("reason", pa.string()),
        ("text", pa.string()),
        ("run_id", pa.string()),
    ]
)


class SinkError(UserError):
    """The sink cannot be written as configured (table exists, lineage differs, ...)."""


class LanceTable:
    """One table of a LanceDB database (``uri``, local or ``s3://``) and what goes with it: its versions,
    its lineage, its run log (``<name>_runs``), its rejects (``<name>_rejects``) and its lease.

    What travelled as ``(sink.uri, sink.table, storage_options)`` through the jobs travels as this.
    ``storage`` (a :class:`connectors.storage.Storage`) is needed by the lease on ``s3://`` only;
    :meth:`at` derives the Lance ``storage_options`` from it.
    """

    def __init__(self, uri: str, name: str, storage_options: Optional[dict] = None, *, storage=None):
        self.uri, self.name, self.storage_options, self.storage = uri, name, storage_options, storage
        self._runs = None

    @classmethod
    def at(cls, uri: str, name: str, storage=None) -> "LanceTable":
        """Table ``name`` of database ``uri``, with the Lance options of ``storage`` (None: local)."""
        return cls(uri, name, storage.lance_options(uri) if storage else None, storage=storage)

    def __repr__(self) -> str:
        return f"LanceTable({self.uri!r}, {self.name!r})"

    @property
    def path(self) -> str:
        """Where Lance keeps the table's dataset (``<uri>/<name>.lance``)."""
        return dataset_uri(self.uri, self.name)

    @property
    def rejects(self) -> "LanceTable":
        """The table of this table's rejected rows."""
        return LanceTable(self.uri, rejects_table(self.name), self.storage_options, storage=self.storage)

    @property
    def runs(self):
        """The table's run log (:class:`connectors.lance.runs.RunLog`), one per table object."""
        if self._runs is None:
            from connectors.lance.runs import RunLog

            self._runs = RunLog(self.uri, self.name, self.storage_options)
        return self._runs

    def version(self) -> Optional[int]:
        """The table's current version, None when it does not exist."""
        return table_version(self.uri, self.name, self.storage_options)

    def schema(self, version: Optional[int] = None) -> Optional[pa.Schema]:
        """The table's schema at ``version`` (default: the latest), None when it does not exist."""
        return table_schema(self.uri, self.name, self.storage_options, version)

    def lineage(self):
        """The :class:`~connectors.lance.lineage.Lineage` stored with the table, None when the table does
        not exist.

        Raises:
            SinkError: the table was not written by this pipeline, or its lineage is not one it reads.
        """
        from pydantic import ValidationError

        from connectors.lance.lineage import Lineage
        from connectors.lance.metadata import read_lineage

        raw = read_lineage(self.uri, self.name, self.storage_options)
        if raw is None:
            return None
        try:
            return Lineage.parse(raw)
        except ValidationError as exc:
            raise SinkError(f"table {self.name!r} in {self.uri}: its lineage cannot be read: {exc}") from None

    def write_lineage(self, lineage) -> None:
        """Store ``lineage`` (a Lineage or its dict; and the embedding function entry that goes with it)."""
        from connectors.lance.metadata import write_lineage

        write_lineage(self.uri, self.name, lineage, self.storage_options)

    def update_lineage(self, base=None, **changes):
        """Store the lineage with the top-level ``changes`` (``index=``, ``query_defaults=``, ``counts=``...)
        and return it: the one way the pipeline rewrites a table's lineage. ``base``: the lineage to
        change (a run's own, made from its config), default the one the table stores now."""
        from connectors.lance.lineage import Lineage

        base = self.lineage() if base is None else Lineage.parse(base)
        if base is None:
            raise SinkError(f"no table {self.name!r} in {self.uri}")
        lineage = base.updated(**changes)
        self.write_lineage(lineage)
        return lineage

    def open(self):
        """A LanceDB handle on the table, at its latest version."""
        return open_table(self.uri, self.name, self.storage_options)

    def dataset(self, version: Optional[int] = None):
        """The table's Lance dataset at ``version`` (default: the latest)."""
        if version is None:
            return open_dataset(self.path, self.storage_options)
        import lance

        return lance.dataset(self.path, version=version, storage_options=self.storage_options)

    def lease(self, holder: str, **kwargs):
        """The table's lease for ``holder`` (:class:`connectors.lance.lease.TableLease`; ``kwargs``: its
        timeout, on_busy, log, ...), on this table's storage."""
        from connectors.lance.lease import TableLease

        kwargs.setdefault("storage", self.storage)
        return TableLease(self.uri, self.name, holder, **kwargs)


def rejects_table(table: str) -> str:
    """The name of the table that keeps ``table``'s rejected rows."""
    return table + "_rejects"


def runs_table(table: str) -> str:
    """The table that logs ``table``'s runs (:class:`connectors.lance.runs.RunLog`)."""
    return table + "_runs"


def dataset_uri(db_uri: str, table: str) -> str:
    """Where LanceDB keeps table ``table`` of database ``db_uri``."""
    return f"{db_uri.rstrip('/')}/{table}.lance"


def _open(uri: str, storage_options: Optional[dict] = None, version: Optional[int] = None):
    import lance

    try:
        return lance.dataset(uri, version=version, storage_options=storage_options)
    except (ValueError, OSError, FileNotFoundError):
        return None


def table_version(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[int]:
    """The table's current version, or None when it does not exist."""
    ds = _open(dataset_uri(db_uri, table), storage_options)
    return None if ds is None else ds.version


def table_schema(
    db_uri: str, table: str, storage_options: Optional[dict] = None, version: Optional[int] = None
) -> Optional[pa.Schema]:
    """The table's schema (with its metadata) at ``version`` (default: the latest), None when it does not exist."""
    ds = _open(dataset_uri(db_uri, table), storage_options, version)
    return None if ds is None else ds.schema


def map_table(
    db_uri: str,
    source: str,
    table: str,
    schema: pa.Schema,
    transform: Callable[[pa.RecordBatch], pa.RecordBatch],
    *,
    version: Optional[int] = None,
    batch_rows: int = 8192,
    storage_options: Optional[dict] = None,
) -> int:
    """Write ``table`` (overwritten) as ``source``'s rows at ``version`` (default: the latest), each
    batch of at most ``batch_rows`` rows passed through ``transform``, which returns it in ``schema``
    (whose metadata goes with the table). Streamed: one batch at a time is held, never the table.
    Returns the rows written. No index is copied."""
    import lance

    src = lance.dataset(dataset_uri(db_uri, source), version=version, storage_options=storage_options)
    rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in src.to_batches(batch_size=batch_rows):
            out = transform(batch)
            rows += out.num_rows
            yield out

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    lance.write_dataset(
        reader, dataset_uri(db_uri, table), schema=schema, mode="overwrite", storage_options=storage_options
    )
    return rows


def open_table(uri: str, name: str, storage_options: Optional[dict] = None):
    """A LanceDB handle on table ``name`` in database ``uri``, at its latest version."""
    import lancedb

    # The table's schema names its embedding function (connectors.lance.metadata.table_metadata), which
    # LanceDB looks up in its registry on writes through its API (merge_insert): registered here.
    import connectors.lance.embedding_function  # noqa: F401

    return lancedb.connect(uri, storage_options=storage_options).open_table(name)


def open_dataset(table_uri: str, storage_options: Optional[dict] = None):
    """The Lance dataset at ``table_uri`` (``<database>/<table>.lance``), for scans by column."""
    import lance

    return lance.dataset(table_uri, storage_options=storage_options)


def create_id_index(table, column: str) -> None:
    """A BTREE index on ``column``: fast id lookups for upserts, deletes and users' filters."""
    from lancedb.index import BTree

    table.create_index(column, config=BTree(), replace=True)
