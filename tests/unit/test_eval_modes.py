"""The evaluation's search modes before any search: --modes parsed and checked against the config, and
the Markdown table that puts text, vector and hybrid side by side (tests/integration/test_evaluate.py
recomputes the numbers from the tables)."""

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.evaluation.modes import MODES, check_modes, parse_modes
from pipelines.evaluation.report import format_markdown


def test_modes_default_to_all_three_in_report_order_and_unknown_ones_are_refused():
    assert parse_modes(None) == parse_modes("all") == list(MODES) == ["text", "vector", "hybrid"]
    assert parse_modes("hybrid, text") == ["text", "hybrid"]  # the report's order, whatever the order given
    assert parse_modes("vector") == ["vector"]
    for bad in ("bm25", "text,keyword", "", " , "):
        with pytest.raises(ConfigError, match="--modes .*expected comma-separated modes from text, vector, hybrid"):
            parse_modes(bad)


def test_text_and_hybrid_modes_need_the_full_text_index_and_say_so_before_any_work():
    check_modes(list(MODES), load_config())  # index.fts is on by default
    no_fts = load_config(overrides=["index.fts=false"])
    check_modes(["vector"], no_fts)
    with pytest.raises(ConfigError, match=r"--modes text,hybrid: a text or hybrid search needs the full-text"):
        check_modes(["text", "vector", "hybrid"], no_fts)


def _report(modes: list[dict]) -> dict:
    metrics = {"ndcg@10": 0.9, "recall@10": 0.95, "recall@100": 1.0, "mrr@10": 0.88}
    return {
        "dataset": {"name": "set", "split": "test", "documents": 4, "queries": 2, "judgments": 2},
        "model": {"path": "m"},
        "results": [
            {"dimension": 8, "search": "exact", "storage": "float32", "bytes_per_vector": 32.0, "metrics": metrics}
            | {"nprobes": None, "refine_factor": None, "recall_at_10_vs_exact": None}
        ],
        "modes": modes,
    }


def _mode(table: str, dim: int, mode: str, ndcg: float, recall: float) -> dict:
    return {"table": table, "dimension": dim, "mode": mode, "metrics": {"ndcg@10": ndcg, "recall@100": recall}}


def test_the_markdown_puts_the_modes_side_by_side_one_line_per_table():
    rows = [
        _mode("set_d8", 8, "text", 0.5, 0.7),
        _mode("set_d8", 8, "vector", 0.6, 0.8),
        _mode("set_d8", 8, "hybrid", 0.65, 0.9),
        _mode("set_d4", 4, "text", 0.5, 0.7),
        _mode("set_d4", 4, "vector", 0.4, 0.75),
        _mode("set_d4", 4, "hybrid", 0.55, 0.85),
    ]
    lines = format_markdown(_report(rows)).splitlines()
    start = lines.index(
        "| dim | text nDCG@10 | vector nDCG@10 | hybrid nDCG@10 | text Recall@100 | vector Recall@100 | "
        "hybrid Recall@100 |"
    )
    assert lines[start + 2 :] == [
        "| 8 | 0.500 | 0.600 | 0.650 | 0.700 | 0.800 | 0.900 |",
        "| 4 | 0.500 | 0.400 | 0.550 | 0.700 | 0.750 | 0.850 |",
    ]
    assert lines[start + 1] == "|---:|" + "---:|" * 6
    only = format_markdown(_report([_mode("set_d8", 8, "hybrid", 0.65, 0.9)]))
    assert "| dim | hybrid nDCG@10 | hybrid Recall@100 |" in only and "| 8 | 0.650 | 0.900 |" in only
    assert "Search modes" not in format_markdown(_report([]))  # a report of before the modes


def test_the_hybrid_fusion_settings_are_named_above_the_modes_table_and_checked_against_the_modes():
    from jobs.evaluate import parse_args

    row = _mode("set_d8", 8, "hybrid", 0.65, 0.9) | {"fusion": {"rrf_k": 10, "text_weight": 0.7}}
    assert "of the vector and the text (BM25) search (rrf_k 10, text_weight 0.7)" in format_markdown(_report([row]))
    assert parse_args(["--dataset", "d", "--rrf-k", "10", "--text-weight", "0.7"]).fusion == {
        "rrf_k": 10,
        "text_weight": 0.7,
    }
    assert parse_args(["--dataset", "d"]).fusion == {}
    for bad, message in (
        (["--modes", "text,vector", "--rrf-k", "10"], "--rrf-k sets the hybrid mode's fusion, and --modes"),
        (["--text-weight", "1.2"], "--text-weight must be between 0 and 1"),
        (["--rrf-k", "0"], "--rrf-k must be >= 1"),
    ):
        with pytest.raises(SystemExit) as exc:
            parse_args(["--dataset", "d", *bad])
        assert exc.value.code == 2, bad
