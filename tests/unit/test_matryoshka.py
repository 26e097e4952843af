"""derive_table on a small real Lance table: each batch re-cut as the pipeline cuts pooled vectors, the hash
re-keyed by the dimension, everything else kept; configs it cannot reproduce are refused."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from connectors.lance.metadata import read_lineage, table_metadata
from connectors.lance.table import SinkError, dataset_uri, table_schema
from helpers.settled import settled
from pipelines.config import ConfigError, load_config
from pipelines.embed.postprocess import postprocess
from pipelines.evaluation.matryoshka import cannot_derive, derive_table
from pipelines.lineage import make_lineage, vector_key
from pipelines.run.stages.validate import content_hash

ROWS, WIDE, NARROW = 10, 8, 4


def _config(db, dimension, *extra):
    return settled(
        load_config(
            overrides=[
                "source.path=corpus.parquet",
                "source.metadata_columns=[title]",
                f"sink.uri={db}",
                f"sink.table=d{dimension}",
                f"embed.dimension={dimension}",
                "index.type=ivf_pq",  # IVF-RQ (the default) needs a dimension divisible by 8
                *extra,
            ]
        )
    )


def _lineage(config, dimension):
    return make_lineage(
        config, fingerprint="sha256:test", hidden_size=WIDE, max_tokens=16, dimension=dimension
    ).to_dict()


def _write_wide(db, pooled: np.ndarray, texts: list[str]) -> dict:
    """A table as a run at WIDE dimensions writes it (vectors, hashes, lineage with an index)."""
    import lance

    config = _config(db, WIDE)
    lineage = {**_lineage(config, WIDE), "index": {"type": "ivf_pq"}, "query_defaults": {"nprobes": 3}}
    key = vector_key(lineage, config)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("title", pa.string()),
            ("vector", pa.list_(pa.float32(), WIDE)),
            ("content_hash", pa.string()),
            ("source_file", pa.string()),
            ("run_id", pa.string()),
        ],
        metadata=table_metadata(lineage),
    )
    n = len(texts)
    data = pa.table(
        {
            "id": [f"doc{i}" for i in range(n)],
            "text": texts,
            "title": [f"title {i}" for i in range(n)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(postprocess(pooled, WIDE).ravel()), WIDE),
            "content_hash": [content_hash(t, key) for t in texts],
            "source_file": ["a.parquet"] * n,
            "run_id": ["run1"] * n,
        },
        schema=schema,
    )
    return lance.write_dataset(data, dataset_uri(db, f"d{WIDE}"), mode="overwrite").version


def _read(db, table):
    import lance

    return lance.dataset(dataset_uri(db, table)).to_table()


@pytest.fixture()
def pooled() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(ROWS, WIDE)).astype(np.float32)


def test_derived_rows_are_what_a_run_at_the_narrow_dimension_writes(tmp_path, pooled):
    db = str(tmp_path)
    texts = [f"text number {i}" for i in range(ROWS)]
    version = _write_wide(db, pooled, texts)
    config = _config(db, NARROW)
    lineage, rows = derive_table(config, f"d{WIDE}", batch_rows=3)  # 4 batches, the last of 1 row
    assert rows == ROWS

    got = _read(db, f"d{NARROW}")
    wide = _read(db, f"d{WIDE}")
    vectors = np.asarray(got.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == (ROWS, NARROW)
    assert np.abs(vectors - postprocess(pooled, NARROW)).max() < 1e-6  # what the encode stage stores at 4
    expected_key = vector_key(_lineage(config, NARROW), config)
    assert got.column("content_hash").to_pylist() == [content_hash(t, expected_key) for t in texts]
    assert got.column("content_hash") != wide.column("content_hash")
    keep = ["id", "text", "title", "source_file", "run_id"]
    assert got.select(keep).equals(wide.select(keep))  # same rows, same order
    assert got.schema.field("vector").type == pa.list_(pa.float32(), NARROW)

    stored = read_lineage(db, f"d{NARROW}")
    lineage = lineage.to_dict()  # the stored form of the Lineage derive_table returns
    assert stored == lineage
    assert lineage["dimension"] == NARROW and "index" not in lineage and "query_defaults" not in lineage
    assert lineage["derived_from"] == {"table": f"d{WIDE}", "version": version, "dimension": WIDE}
    wide_lineage = read_lineage(db, f"d{WIDE}")
    assert {k: v for k, v in lineage.items() if k not in ("dimension", "derived_from")} == {
        k: v for k, v in wide_lineage.items() if k not in ("dimension", "index", "query_defaults")
    }
    assert b'"dimension": 4' in table_schema(db, f"d{NARROW}").metadata[b"embedding_functions"]


def test_rows_come_from_the_pinned_version(tmp_path, pooled):
    db = str(tmp_path)
    first = _write_wide(db, pooled, [f"old {i}" for i in range(ROWS)])
    _write_wide(db, pooled[:3], ["new 0", "new 1", "new 2"])  # a later version of the wide table
    _, rows = derive_table(_config(db, NARROW), f"d{WIDE}", version=first)
    assert rows == ROWS and _read(db, f"d{NARROW}").column("text")[0].as_py() == "old 0"


def test_configs_a_derived_table_cannot_reproduce_are_refused(tmp_path, pooled):
    db = str(tmp_path)
    _write_wide(db, pooled, [f"t{i}" for i in range(ROWS)])
    assert cannot_derive(_config(db, NARROW)) is None
    half = _config(db, NARROW, "embed.vector_dtype=float16")
    assert "float16" in cannot_derive(half)
    assert "chunk" in cannot_derive(_config(db, NARROW, "embed.long_text=chunk"))
    with pytest.raises(ConfigError, match="float16"):
        derive_table(half, f"d{WIDE}")
    with pytest.raises(ConfigError, match="at most its 8"):
        derive_table(_config(db, 16), f"d{WIDE}")
    with pytest.raises(ConfigError, match="embed.normalize=False"):
        derive_table(_config(db, NARROW, "embed.normalize=false"), f"d{WIDE}")
    with pytest.raises(SinkError, match="no table 'missing'"):
        derive_table(_config(db, NARROW), "missing")
