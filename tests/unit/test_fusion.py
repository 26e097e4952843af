"""Reciprocal rank fusion (pipelines/search/fusion.py) against LanceDB's own RRFReranker on a real table."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from lancedb.rerankers import RRFReranker

from pipelines.search.fusion import leg_weights, reciprocal_rank_fusion

WORDS = ["river", "stone", "cloud", "maple", "harbor", "lantern", "violet", "copper"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(7)
    n = 300
    texts = [" ".join(rng.choice(WORDS, size=6)) + f" item{i}" for i in range(n)]
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    data = pa.table(
        {
            "id": [f"d{i}" for i in range(n)],
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16),
        }
    )
    tbl = lancedb.connect(str(tmp_path_factory.mktemp("fusion"))).create_table("t", data)
    tbl.create_fts_index("text", use_tantivy=False)
    return tbl


@pytest.mark.parametrize("seed, words", [(0, "river maple"), (1, "copper lantern violet"), (2, "harbor")])
@pytest.mark.parametrize("k", [60, 5])
def test_the_same_ranking_and_scores_as_lancedbs_rrf_reranker(table, seed, words, k):
    query = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    limit = 10
    ds = table.to_lance()
    vector = ds.to_table(nearest={"column": "vector", "q": query, "k": limit}, with_row_id=True)
    text = ds.to_table(full_text_query=words, limit=limit, with_row_id=True)
    assert text.num_rows == limit  # both legs full: the fusion has overlaps and misses to rank

    got = reciprocal_rank_fusion({"vector": vector, "text": text}, "_rowid", limit, k=k)
    want = RRFReranker(K=k, return_score="all").rerank_hybrid(words, vector, text)
    want_scores = dict(zip(want["_rowid"].to_pylist(), want["_relevance_score"].to_pylist()))

    scores = got["score"].to_numpy()
    assert list(scores) == sorted(scores, reverse=True)
    assert set(got["_rowid"].to_pylist()) <= set(want_scores)
    for row, score in zip(got["_rowid"].to_pylist(), scores):
        assert score == pytest.approx(want_scores[row], rel=1e-6)
    # The top `limit` of LanceDB's ranking by score (ties may come in another order).
    assert sorted(scores, reverse=True) == pytest.approx(sorted(want_scores.values(), reverse=True)[:limit], rel=1e-6)
    # found_by names the searches each hit was in; the row's columns come with it.
    in_vector, in_text = set(vector["_rowid"].to_pylist()), set(text["_rowid"].to_pylist())
    texts = dict(zip(*table.to_arrow().select(["id", "text"]).to_pydict().values()))
    for row in got.to_pylist():
        legs = {leg for leg, rows in (("vector", in_vector), ("text", in_text)) if row["_rowid"] in rows}
        assert set(row["found_by"].split(",")) == legs
        assert row["text"] == texts[row["id"]]


def test_a_row_found_by_both_searches_outranks_one_found_by_either_at_the_same_rank():
    a = pa.table({"key": [1, 2, 3], "v": ["a", "b", "c"]})
    b = pa.table({"key": [4, 2, 5], "v": ["d", "b", "e"]})
    got = reciprocal_rank_fusion({"vector": a, "text": b}, "key", 10)
    assert got["key"].to_pylist()[0] == 2 and got["found_by"].to_pylist()[0] == "vector,text"
    assert got["score"].to_pylist()[0] == pytest.approx(2 / 62)
    assert got["key"].to_pylist()[1:3] == [1, 4]  # rank 1 in one leg each: ties keep first-seen order
    assert got.num_rows == 5 and reciprocal_rank_fusion({"vector": a, "text": b}, "key", 2).num_rows == 2


def test_empty_legs_give_an_empty_table_with_the_columns():
    empty = pa.table({"key": pa.array([], pa.int64()), "v": pa.array([], pa.string())})
    got = reciprocal_rank_fusion({"vector": empty, "text": empty}, "key", 5)
    assert got.num_rows == 0 and got.column_names == ["key", "v", "score", "found_by"]


def test_weighted_fusion_multiplies_each_legs_contributions():
    a = pa.table({"key": [1, 2, 3], "v": ["a", "b", "c"]})
    b = pa.table({"key": [3, 4, 1], "v": ["c", "d", "a"]})
    legs = {"vector": a, "text": b}
    weights = leg_weights(0.8)
    assert weights == pytest.approx({"vector": 0.4, "text": 1.6})
    got = reciprocal_rank_fusion(legs, "key", 10, k=10, weights=weights)
    expected = {  # by hand: weight / (k + rank) summed over the legs that found the row
        1: 0.4 / 11 + 1.6 / 13,
        2: 0.4 / 12,
        3: 0.4 / 13 + 1.6 / 11,
        4: 1.6 / 12,
    }
    order = sorted(expected, key=lambda key: -expected[key])
    assert got["key"].to_pylist() == order == [3, 1, 4, 2]
    assert got["score"].to_pylist() == pytest.approx([expected[key] for key in order])
    # 0.5 is plain RRF, scores and all; the weights as given
    plain = reciprocal_rank_fusion(legs, "key", 10, k=10)
    assert reciprocal_rank_fusion(legs, "key", 10, k=10, weights=leg_weights(0.5)).equals(plain)
    # a leg of weight 0 decides nothing: the other leg's order, then its rows (score 0) as they came
    only_text = reciprocal_rank_fusion(legs, "key", 10, k=10, weights=leg_weights(1.0))
    assert only_text["key"].to_pylist() == [3, 4, 1, 2]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            leg_weights(bad)
    with pytest.raises(ValueError, match="must not be negative"):
        reciprocal_rank_fusion(legs, "key", 10, weights={"text": -1.0})
