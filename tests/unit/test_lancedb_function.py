"""The table's embedding function as LanceDB reads it from the schema (one test loads the model)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from lancedb.embeddings import get_registry

from connectors.lance.embedding_function import TableEmbedding
from connectors.lance.metadata import LINEAGE_KEY, table_metadata
from pipelines.lineage import LineageMismatchError

LINEAGE = {
    "model": {"path": "packaged:all-MiniLM-L6-v2", "fingerprint": "sha256-full:x", "query_prompt": "query: "},
    "dimension": 256,
    "normalize": True,
    "metric": "cosine",
    "source": {"id_column": "id", "text_column": "body", "metadata_columns": []},
    "query_defaults": {"nprobes": 8, "refine_factor": 5},
}


def test_the_schema_names_the_function_with_the_tables_model_and_columns():
    metadata = table_metadata(LINEAGE)
    assert json.loads(metadata[LINEAGE_KEY]) == LINEAGE
    schema = pa.schema([pa.field("body", pa.string())], metadata=metadata)
    functions = get_registry().parse_functions(schema.metadata)  # what LanceDB does on search("text")
    config = functions["vector"]
    assert config.source_column == "body"
    function = config.function
    assert isinstance(function, TableEmbedding)
    assert function.ndims() == 256
    assert function.lineage == {k: LINEAGE[k] for k in ("model", "dimension", "normalize", "metric")}
    assert function.max_retries == 0  # a missing model fails at once instead of after minutes of backoff


def _function():
    schema = pa.schema([pa.field("body", pa.string())], metadata=table_metadata(LINEAGE))
    return get_registry().parse_functions(schema.metadata)["vector"].function  # opening: no model needed


def test_a_model_that_is_not_the_tables_fails_on_the_first_text_not_on_open():
    import pipelines.search.searcher  # noqa: F401  gives the function its embedding

    with pytest.raises(LineageMismatchError, match="fingerprint"):  # the recorded fingerprint is not the model's
        _function().compute_query_embeddings_with_retry("how do vaccines work")


def test_without_the_searcher_imported_the_error_says_what_to_import(monkeypatch):
    monkeypatch.setattr(TableEmbedding, "embedder", None)
    with pytest.raises(RuntimeError, match="import pipelines.search.searcher"):
        _function().compute_query_embeddings_with_retry("how do vaccines work")
