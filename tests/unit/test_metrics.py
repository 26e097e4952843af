"""Retrieval metrics against values worked out by hand from their definitions."""

import math

import pytest

from pipelines.evaluation.metrics import evaluate_run, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_graded_relevance_by_hand():
    judged = {"a": 2, "b": 1, "c": 0}
    # ranks 1..3 = x, b, a: DCG = 1/log2(3) + 2/log2(4); ideal a, b: 2/log2(2) + 1/log2(3)
    dcg = 1 / math.log2(3) + 2 / 2
    idcg = 2 / 1 + 1 / math.log2(3)
    assert ndcg_at_k(["x", "b", "a", "c"], judged, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], judged, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "b", "a"], judged, 1) == 0.0


def test_recall_and_mrr_by_hand():
    judged = {"a": 1, "b": 1, "c": 1, "z": 0}
    ranked = ["z", "x", "b", "y", "c"]
    assert recall_at_k(ranked, judged, 3) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, judged, 5) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, judged, 10) == pytest.approx(1 / 3)  # "z" is judged but not relevant
    assert mrr_at_k(ranked, judged, 2) == 0.0


def test_means_skip_unjudged_queries_and_count_missing_runs_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": ["a", "x"], "q3": ["c"]}  # q2 has no results; q3 has no relevant document
    scores = evaluate_run(run, qrels)
    assert scores == {"ndcg@10": 0.5, "recall@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5}


def test_recall_at_100_sees_ranks_beyond_10():
    ranked = [f"d{i}" for i in range(150)]
    scores = evaluate_run({"q": ranked}, {"q": {"d40": 1, "d120": 1}})
    assert scores["recall@10"] == 0.0 and scores["recall@100"] == 0.5 and scores["mrr@10"] == 0.0


def test_no_judged_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate_run({}, {"q": {"a": 0}})
