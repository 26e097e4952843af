"""Pseudo-queries: the angle to their document, their spread along the data's own directions, sampling."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipelines.vector_index.pseudo_queries import ANGLE_DEGREES, pseudo_queries, sample_pseudo_queries

DIM = 64


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _flat_data(rows: int, span: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around a common direction (axis 0) that vary only in axes 1..span."""
    rng = np.random.default_rng(seed)
    v = np.zeros((rows, DIM))
    v[:, 0] = 3.0
    v[:, 1 : span + 1] = rng.normal(size=(rows, span))
    return _unit(v).astype(np.float32)


def test_each_query_is_the_angle_from_its_document_and_keeps_its_norm():
    docs = _flat_data(50, 8) * np.linspace(0.5, 2.0, 50)[:, None]  # dot/l2 tables need not be unit
    queries = pseudo_queries(docs, _flat_data(500, 8, seed=1))
    cosines = (_unit(queries) * _unit(docs)).sum(axis=1)
    assert np.allclose(cosines, math.cos(math.radians(ANGLE_DEGREES)), atol=1e-5)
    assert np.allclose(np.linalg.norm(queries, axis=1), np.linalg.norm(docs, axis=1), rtol=1e-5)
    turned = pseudo_queries(docs, _flat_data(500, 8, seed=1), angle_degrees=30)
    assert np.allclose((_unit(turned) * _unit(docs)).sum(axis=1), math.cos(math.radians(30)), atol=1e-5)


def test_queries_move_along_the_directions_the_data_varies_in():
    # The data spans axes 1..8 around axis 0: the queries' moves stay in that span (isotropic noise
    # would put 55 of every 64 parts of the move outside it) and differ from query to query.
    docs, pool = _flat_data(40, 8), _flat_data(500, 8, seed=1)
    moves = pseudo_queries(docs, pool) - math.cos(math.radians(ANGLE_DEGREES)) * docs
    assert np.abs(moves[:, 9:]).max() < 1e-6
    assert np.linalg.matrix_rank(moves[:, 1:9], tol=1e-3) == 8
    assert not np.allclose(pseudo_queries(docs, pool, seed=1), pseudo_queries(docs, pool, seed=0))
    np.testing.assert_array_equal(pseudo_queries(docs, pool, seed=3), pseudo_queries(docs, pool, seed=3))


def test_a_pool_without_spread_is_refused():
    with pytest.raises(ValueError, match="at least two pool rows"):
        pseudo_queries(_flat_data(3, 8), _flat_data(1, 8))


def test_sampled_from_a_table_with_each_query_s_document(tmp_path):
    import lancedb

    vectors = _flat_data(300, 8)
    data = pa.table(
        {
            "id": [f"v{i}" for i in range(300)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        }
    )
    table = lancedb.connect(str(tmp_path)).create_table("t", data)
    ids, queries = sample_pseudo_queries(table, 20, "id", seed=0)
    assert len(set(ids)) == 20 and queries.shape == (20, DIM)  # 300 rows < 20 + the pool: all of them sampled
    docs = vectors[[int(i[1:]) for i in ids]]
    assert np.allclose((_unit(queries) * docs).sum(axis=1), math.cos(math.radians(ANGLE_DEGREES)), atol=1e-5)
    again = sample_pseudo_queries(table, 20, "id", seed=0)
    assert again[0] == ids and np.array_equal(again[1], queries)
