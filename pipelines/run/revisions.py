"""Which revision of an id an upsert run keeps, found before anything is embedded.

An upsert compares each document with the table; when the run itself reads an id more than once (a
backfill over ``date=2026-11-05/`` and ``date=2026-11-20/``), that comparison alone cannot tell
which revision wins: the 11-20 row may be ``unchanged`` (skipped) while the 11-05 row differs from
the table and would replace it. So an upsert run over several files first finds the ids it reads more
than once, with their latest revision (``sink.revision_by``: the highest path, or the highest value of
a metadata column), in one distributed pass over the id column: Ray Data's ``groupby``, whose hash
shuffle spreads the ids over the cluster. Rows of those ids with an older revision are then
``superseded`` before tokenizing; the latest revision goes through the ordinary comparison.

The result travels to the workers once, through Ray's object store. It holds only ids that repeat;
a run where more than :data:`MAX_REPEATED_IDS` ids repeat fails before embedding, naming the way out
(one upsert run per partition, oldest first, gives the same table).
"""

from __future__ import annotations

from typing import Optional

from connectors.errors import UserError

__all__ = ["MAX_REPEATED_IDS", "RepeatedIdsError", "latest_revisions"]

MAX_REPEATED_IDS = 2_000_000


class RepeatedIdsError(UserError):
    """Too many ids repeat across one upsert run's files to resolve their revisions in memory."""


def latest_revisions(
    source, id_column: str, revision_column: Optional[str], files: list[str], limit: int = MAX_REPEATED_IDS
) -> dict:
    """``{id: latest revision}`` for each id the files hold more than once (revision: path or column)."""
    from ray.data.aggregate import Count, Max
    from ray.data.context import DataContext, ShuffleStrategy

    from connectors.parquet_source import PATH_COLUMN

    revision = revision_column or PATH_COLUMN
    columns = [id_column] + ([revision_column] if revision_column else [])
    ids = source.read(columns, files)
    if revision_column:
        ids = ids.select_columns([id_column, revision_column])
    grouped = ids.groupby(id_column).aggregate(Count(alias_name="n"), Max(revision, alias_name="latest"))
    repeated = grouped.filter(lambda row: row["n"] > 1)
    out: dict = {}
    context = DataContext.get_current()
    previous = context.shuffle_strategy
    # The sort shuffle runs as plain tasks; the default hash shuffle starts aggregator actors that
    # wait for CPUs a small cluster (or one busy with the encoder pool) may not have free.
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        for batch in repeated.iter_batches(batch_format="pyarrow", batch_size=65536):
            out.update(zip(batch.column(id_column).to_pylist(), batch.column("latest").to_pylist()))
            if len(out) > limit:
                raise RepeatedIdsError(
                    f"more than {limit} ids appear in more than one file of this upsert run (sink.revision_by="
                    f"{revision_column or 'path'} decides between them): run one upsert per partition, oldest "
                    "first, which gives the same table"
                )
    finally:
        context.shuffle_strategy = previous
    return out
