"""Retrieval modes side by side: text (BM25), vector and hybrid search on each evaluated table.

The same queries go through :meth:`pipelines.search.searcher.Searcher.search` in each mode: ``text``
(the query's words against the table's full-text index, which the indexing run builds with
``index.fts``), ``vector`` (its embedding against every vector: exact search) and ``hybrid`` (both,
fused by reciprocal rank, :mod:`pipelines.search.fusion`). The vector search of both the vector and the
hybrid mode is exact, so the comparison is of the ways to retrieve and not of an index's approximation,
which the evaluation's index rows measure; the vector mode's metrics are the exact row's.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence

import numpy as np

from pipelines.config import ConfigError, PipelineConfig
from pipelines.evaluation.metrics import evaluate_run

__all__ = ["MODES", "MODE_K", "check_modes", "evaluate_modes", "parse_modes"]

MODES = ("text", "vector", "hybrid")  # the order of the report's columns
MODE_K = 100  # hits per query in each mode: Recall@100 needs the top 100


def parse_modes(text: Optional[str]) -> list[str]:
    """``"text,hybrid"`` -> ``["text", "hybrid"]`` in :data:`MODES` order; None or ``"all"``: all three."""
    if text is None or text.strip() == "all":
        return list(MODES)
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in asked if m not in MODES]
    if not asked or unknown:
        raise ConfigError(f"--modes {text!r}: expected comma-separated modes from {', '.join(MODES)}, or all")
    return [m for m in MODES if m in asked]


def check_modes(modes: Sequence[str], config: PipelineConfig) -> None:
    """Before any work: text and hybrid search need the full-text index the run builds with index.fts."""
    wordy = [m for m in modes if m != "vector"]
    if wordy and not config.index.fts:
        raise ConfigError(
            f"--modes {','.join(wordy)}: a {' or '.join(wordy)} search needs the full-text index, and the "
            "config sets index.fts=false; drop --set index.fts=false, or evaluate --modes vector"
        )


def evaluate_modes(
    searcher,
    vectors: np.ndarray,
    texts: Sequence[str],
    qids: Sequence[str],
    qrels: Mapping[str, Mapping],
    modes: Sequence[str],
    table: str,
    fusion: Optional[Mapping] = None,
) -> list[dict]:
    """One report row per mode for ``searcher``'s table: the mode, the metrics of its top
    :data:`MODE_K` (nDCG@10, Recall@10/100, MRR@10) and its milliseconds per query.

    ``vectors`` are the queries' vectors at the table's dimension (for a derived table, the wide ones
    re-cut), ``texts`` their words, in ``qids`` order. ``fusion``: the hybrid search's ``rrf_k`` and
    ``text_weight`` (:meth:`~pipelines.search.searcher.Searcher.search`; default: its defaults).
    """
    rows = []
    for mode in modes:
        started = time.perf_counter()
        options = dict(fusion or {}) if mode == "hybrid" else {}
        run = {qid: _ranked(searcher, mode, v, text, options) for qid, v, text in zip(qids, vectors, texts)}
        ms = (time.perf_counter() - started) * 1000 / max(len(qids), 1)
        rows.append(
            {
                "dimension": searcher.dimension,
                "table": table,
                "mode": mode,
                "metrics": evaluate_run(run, qrels),
                "search_ms_per_query": round(ms, 2),
                **({"fusion": options} if options else {}),
            }
        )
    return rows


def _ranked(searcher, mode: str, vector: np.ndarray, text: str, options: Mapping) -> list:
    """The ids of the top :data:`MODE_K` hits of one query in ``mode``, best first."""
    query = text if mode == "text" else vector
    hits = searcher.search(query, MODE_K, mode=mode, text=text, exact=mode != "text", columns=["id"], **options)
    return hits.column("id").to_pylist()
