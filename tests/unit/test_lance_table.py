"""The table object: one (uri, name, options) and what goes with the table, on a local Lance dataset."""

from __future__ import annotations

import pyarrow as pa

from connectors.lance.lease import TableLease
from connectors.lance.metadata import table_metadata
from connectors.lance.table import LanceTable


def test_a_missing_table_has_no_version_and_no_lineage(tmp_path):
    table = LanceTable(str(tmp_path), "docs")
    assert table.version() is None and table.lineage() is None and table.schema() is None
    assert table.path == f"{tmp_path}/docs.lance"
    assert table.rejects.name == "docs_rejects" and table.rejects.path == f"{tmp_path}/docs_rejects.lance"
    assert table.runs is table.runs and table.runs.uri == f"{tmp_path}/docs_runs.lance"


def test_versions_lineage_and_lease_of_a_table(tmp_path):
    import lance

    table = LanceTable(str(tmp_path), "docs")
    lineage = {"format": 1, "dimension": 2}
    schema = pa.schema([("id", pa.string())], metadata=table_metadata(lineage))
    lance.write_dataset(pa.table({"id": ["a"]}, schema=schema), table.path)
    assert table.version() == 1 and table.lineage().to_dict() == lineage
    table.write_lineage({**lineage, "dimension": 3})
    assert table.version() == 2 and table.lineage().dimension == 3
    updated = table.update_lineage(query_defaults={"nprobes": 4})
    assert (
        table.lineage().to_dict() == updated.to_dict() == {**lineage, "dimension": 3, "query_defaults": {"nprobes": 4}}
    )
    assert table.dataset(version=1).count_rows() == 1 and table.dataset().version == 3
    assert table.open().count_rows() == 1
    lease = table.lease("run-1", timeout_s=30)
    assert isinstance(lease, TableLease) and lease.holder == "run-1" and lease.timeout_s == 30
