"""Open a LanceDB table or its Lance dataset (local or ``s3://``), and give it an id index."""

from __future__ import annotations

from typing import Optional

__all__ = ["create_id_index", "open_dataset", "open_table"]


def open_table(uri: str, name: str, storage_options: Optional[dict] = None):
    """A LanceDB handle on table ``name`` in database ``uri``, at its latest version."""
    import lancedb

    # The table's schema names its embedding function (connectors.lance_sink.table_metadata), which
    # LanceDB looks up in its registry on writes through its API (merge_insert): registered here.
    import connectors.lancedb_function  # noqa: F401

    return lancedb.connect(uri, storage_options=storage_options).open_table(name)


def open_dataset(table_uri: str, storage_options: Optional[dict] = None):
    """The Lance dataset at ``table_uri`` (``<database>/<table>.lance``), for scans by column."""
    import lance

    return lance.dataset(table_uri, storage_options=storage_options)


def create_id_index(table, column: str) -> None:
    """A BTREE index on ``column``: fast id lookups for upserts, deletes and users' filters."""
    from lancedb.index import BTree

    table.create_index(column, config=BTree(), replace=True)
