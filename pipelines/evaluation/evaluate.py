"""Retrieval quality on a BEIR-layout test set: per Matryoshka dimension, exact search against the index.

The corpus goes once through the ordinary indexing run (:func:`pipelines.run.runner.run_index`: same
stages, same model, same index build and recall tuning) at the widest dimension asked for, into its
own table, and the queries are embedded once with that table's model
(:class:`pipelines.search.searcher.Searcher`). Each narrower dimension's table is derived from it
(:func:`pipelines.evaluation.matryoshka.derive_table`: the vectors re-cut and normalised again, as a run
at that dimension writes them) and indexed by the run's own index step
(:func:`pipelines.vector_index.step.index_step`); its query vectors are the wide ones re-cut the same way.
Configs whose derived tables would differ from a run's (float16 vectors, chunked documents) get one
indexing run per dimension instead. The queries are searched twice per table, exactly (every vector
scanned) and through the index at the query defaults stored with the table, which is what a user of
``jobs.query`` gets. Further index types (``ivf_sq``: int8 codes, ``ivf_rq``: RaBitQ codes of
``index.num_bits`` per dimension) are built in turn on the same table, tuned and evaluated the same
way; the table ends up with the last one.

Each result row carries nDCG@10, Recall@10/100 and MRR@10 (:mod:`pipelines.evaluation.metrics`), the bytes per
vector the search scans, and the overlap of the index's top 10 with the exact top 10 on these queries.
Each table's text, vector and hybrid search are compared side by side in the report's ``modes``
(:mod:`pipelines.evaluation.modes`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from connectors.beir import BeirDataset, load_beir, write_corpus_parquet
from connectors.lance.index import code_bytes, index_size_bytes
from connectors.lance.table import LanceTable
from pipelines.config import ConfigError, PipelineConfig, load_config
from pipelines.embed.postprocess import postprocess
from pipelines.evaluation.matryoshka import cannot_derive, derive_table
from pipelines.evaluation.metrics import evaluate_run
from pipelines.evaluation.modes import MODES, check_modes, evaluate_modes
from pipelines.lineage import Lineage
from pipelines.vector_index.params import ROWS_PER_LIST, min_index_rows, settle_metric
from pipelines.vector_index.step import index_step
from pipelines.vector_index.tuning import index_lineage, knn_recall

__all__ = ["EvalRow", "evaluate_dataset", "model_dimensions", "parse_dimensions"]

log = logging.getLogger(__name__)

K = 100  # Recall@100 needs the top 100
STORAGE = {"exact": "float", "ivf_pq": "PQ codes", "ivf_sq": "int8", "ivf_hnsw_sq": "int8 (HNSW)"}


def _storage(index: dict) -> str:
    if index["type"] == "ivf_rq":
        return f"{index.get('num_bits') or 1}-bit"
    return STORAGE.get(index["type"], index["type"])


@dataclass
class EvalRow:
    dimension: int
    search: str  # "exact" or the index type
    storage: str
    bytes_per_vector: float  # what a search scans per vector: the float vector, or the index's codes
    metrics: dict  # ndcg@10, recall@10, recall@100, mrr@10
    index_bytes_per_row: Optional[float] = None  # the index on disk / rows (codes, row ids, codebooks)
    nprobes: Optional[int] = None
    refine_factor: Optional[int] = None
    tuned_recall_at_10: Optional[float] = None  # measured by the tuning, on pseudo-queries
    recall_at_10_vs_exact: Optional[float] = None  # the index's top 10 against the exact top 10, these queries
    index_seconds: Optional[float] = None
    search_ms_per_query: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Table:
    """One dimension's table, ready to search: its config, rows, searcher, query vectors, report entry."""

    config: PipelineConfig
    rows: int
    searcher: object  # pipelines.search.searcher.Searcher
    queries: np.ndarray
    run: dict  # its entry in the report's "runs"


def model_dimensions(config: PipelineConfig) -> list[int]:
    """The Matryoshka dimensions ``config.model`` declares (config.json or its sentence-transformers
    config), widest first; [] when it declares none."""
    from connectors.model_store import resolve_model_dir
    from pipelines.embed.model_pipeline import declared_dimensions

    return sorted(declared_dimensions(resolve_model_dir(config.model.path, config.model.revision)) or [], reverse=True)


def parse_dimensions(text: Optional[str]) -> list[Optional[int]]:
    """``"384,256,128"`` -> ``[384, 256, 128]``; None -> ``[None]`` (the config's dimension)."""
    if not text:
        return [None]
    try:
        dims = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--dimensions {text!r}: expected comma-separated integers, e.g. 384,256,128") from None
    if not dims or min(dims) < 1 or len(set(dims)) != len(dims):
        raise ConfigError(f"--dimensions {text!r}: expected distinct positive integers")
    return dims


def _run_config(base: PipelineConfig, corpus: Path, db: str, table: str, dimension: Optional[int]) -> PipelineConfig:
    """The base config with source and sink pointed at the evaluation's corpus and table, validated again."""
    tree = base.model_dump()
    tree["source"] = {"path": str(corpus), "id_column": "id", "text_column": "text", "metadata_columns": []}
    tree["sink"] = {**tree["sink"], "uri": db, "table": table, "mode": "overwrite"}
    if dimension is not None:
        tree["embed"]["dimension"] = dimension
    if tree["index"]["min_rows"] == "auto":
        # The evaluation measures the indexes it is asked for: auto (no index where exact search is as
        # fast, 2,605 rows at 384 dimensions) would leave a small evaluation set without them; one list's
        # worth of rows is the least an IVF index can be trained on.
        tree["index"]["min_rows"] = ROWS_PER_LIST
    try:
        return load_config(data=tree)
    except ConfigError as exc:  # e.g. index.num_sub_vectors that does not divide this dimension
        raise ConfigError(f"--dimensions {dimension}: {exc}") from None


def _search_all(searcher, vectors: np.ndarray, exact: bool) -> tuple[list[list[str]], float]:
    started = time.perf_counter()
    ranked = [
        searcher.search(v, k=K, exact=exact, columns=["id", "_distance"]).column("id").to_pylist() for v in vectors
    ]
    return ranked, (time.perf_counter() - started) * 1000 / max(len(vectors), 1)


def _index_row(searcher, dimension: int, vectors, qids, dataset, exact_ranked, rows: int) -> EvalRow:
    lineage = searcher.lineage
    index, tuning = lineage.index or {}, lineage.tuning or {}
    ranked, ms = _search_all(searcher, vectors, exact=False)
    size = index_size_bytes(searcher.table)
    return EvalRow(
        dimension=dimension,
        search=index["type"],
        storage=_storage(index),
        bytes_per_vector=code_bytes(
            index["type"], dimension, index.get("num_sub_vectors"), num_bits=index.get("num_bits")
        ),
        metrics=evaluate_run(dict(zip(qids, ranked)), dataset.qrels),
        index_bytes_per_row=round(size / rows, 1) if size else None,
        nprobes=lineage.query_defaults["nprobes"],
        refine_factor=lineage.query_defaults["refine_factor"],
        tuned_recall_at_10=tuning.get("recall"),
        recall_at_10_vs_exact=round(knn_recall(ranked, exact_ranked, 10), 4),
        index_seconds=index.get("build_seconds"),
        search_ms_per_query=round(ms, 2),
        extra={
            "num_partitions": index.get("num_partitions"),
            "num_sub_vectors": index.get("num_sub_vectors"),
            "num_bits": index.get("num_bits"),
            "tuning_reached": tuning.get("reached"),
        },
    )


def _indexed(config: PipelineConfig, texts: list[str], on_run, verbose: bool) -> _Table:
    """The corpus through an indexing run at ``config``'s dimension; the queries through its model."""
    from pipelines.run.runner import run_index
    from pipelines.search.searcher import Searcher

    summary = run_index(config, verbose=verbose)
    if on_run is not None:
        on_run(summary)
    searcher = Searcher.open(config.sink.uri, config.sink.table)
    run = {"dimension": searcher.dimension, "table": config.sink.table, "summary": summary.to_dict()}
    return _Table(config, summary.table_rows, searcher, searcher.embed_queries(texts), run)


def _index(config: PipelineConfig, rows: int, dimension: int, lineage: Lineage):
    """``config.sink.table`` indexed as a run indexes it (:func:`~pipelines.vector_index.step.index_step`),
    the index recorded in its lineage; returns the index parameters, the tuning and the seconds."""
    config = config.model_copy(update={"index": settle_metric(config.index, lineage.metric)})  # as a run settles it
    params, tuning, seconds = index_step(config, rows=rows, dimension=dimension, lineage=lineage)
    LanceTable(config.sink.uri, config.sink.table).update_lineage(lineage, **index_lineage(params, tuning))
    return params, tuning, seconds


def _derived(config: PipelineConfig, wide: _Table) -> _Table:
    """``wide``'s table and query vectors re-cut to ``config``'s dimension, and indexed as a run indexes."""
    from pipelines.search.searcher import Searcher

    uri, table, dimension = config.sink.uri, config.sink.table, config.embed.dimension
    started = time.perf_counter()
    lineage, rows = derive_table(config, wide.config.sink.table, version=wide.searcher.version)
    derive_seconds = round(time.perf_counter() - started, 2)
    params, tuning, index_seconds = _index(config, rows, dimension, lineage)
    log.info(
        f"table {table!r}: {rows} rows derived from {wide.config.sink.table!r} at dimension {dimension} in "
        f"{derive_seconds:g}s; index {params.type} built and tuned in {index_seconds:g}s"
    )
    run = {
        "dimension": dimension,
        "table": table,
        "derived_from": wide.config.sink.table,
        "derive_seconds": derive_seconds,
        "index_seconds": index_seconds,
        "table_rows": rows,
        "index": params.to_dict(),
        "tuning": tuning.to_dict() if tuning else {},
    }
    queries = postprocess(wide.queries, dimension, lineage.normalize)
    return _Table(config, rows, Searcher.open(uri, table), queries, run)


def _evaluate_table(t: _Table, types: Sequence[str], qids: list, dataset: BeirDataset) -> list[EvalRow]:
    """Exact search, then each index type in turn (the first is the one the table was indexed with)."""
    from pipelines.search.searcher import Searcher

    cfg, searcher, vectors = t.config, t.searcher, t.queries
    dim = searcher.dimension
    exact_ranked, ms = _search_all(searcher, vectors, exact=True)
    vector_bytes = 2 if searcher.lineage.vector_dtype == "float16" else 4
    results = [
        EvalRow(
            dimension=dim,
            search="exact",
            storage=f"float{vector_bytes * 8}",
            bytes_per_vector=float(dim * vector_bytes),
            metrics=evaluate_run(dict(zip(qids, exact_ranked)), dataset.qrels),
            search_ms_per_query=round(ms, 2),
        )
    ]
    for n, index_type in enumerate(types):
        if index_type == "none" or t.rows < min_index_rows(cfg.index, dim):
            break
        if n > 0:  # the configured type was built by the index step; build the others in turn
            typed = cfg.model_copy(update={"index": cfg.index.model_copy(update={"type": index_type})})
            _index(typed, t.rows, dim, LanceTable(cfg.sink.uri, cfg.sink.table).lineage())
            searcher = Searcher.open(cfg.sink.uri, cfg.sink.table)
        results.append(_index_row(searcher, dim, vectors, qids, dataset, exact_ranked, t.rows))
        log.info("dimension %d %s: %s", dim, index_type, results[-1].metrics)
    return results


def evaluate_dataset(
    dataset_dir: str | Path,
    config: PipelineConfig,
    dimensions: Sequence[Optional[int]] = (None,),
    out_dir: str | Path = "out/eval",
    index_types: Optional[Sequence[str]] = None,
    split: str = "test",
    on_run: Optional[Callable] = None,
    verbose: bool = False,
    modes: Sequence[str] = MODES,
    fusion: Optional[dict] = None,
) -> dict:
    """Embed the set once at the widest dimension, derive the others, measure exact and indexed search
    at each; returns the report dict.

    Args:
        dimensions: None stands for the config's ``embed.dimension`` (the model's when unset), and is
            then the widest.
        index_types: index types to evaluate per dimension; the config's ``index.type`` is always first.
        on_run: called with the indexing run's :class:`~pipelines.run.summary.RunSummary` (progress
            output); once, or once per dimension when tables cannot be derived (:func:`cannot_derive`).
        modes: the search modes compared side by side on each table (:mod:`pipelines.evaluation.modes`).
        fusion: the hybrid mode's ``rrf_k`` and ``text_weight`` (default: the search's defaults).
    """
    check_modes(modes, config)
    dataset: BeirDataset = load_beir(dataset_dir, split)
    out = Path(out_dir)
    corpus = write_corpus_parquet(dataset, out / "corpus.parquet")
    db = str(out / "lancedb")
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    types = [config.index.type] + [t for t in (index_types or []) if t != config.index.type]
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", dataset.name)
    dimensions = list(dimensions)
    # Every dimension's config checked before any work (e.g. index.num_sub_vectors must divide it).
    configs = [_run_config(config, corpus, db, f"{prefix}_d{d or 'model'}", d) for d in dimensions]
    why = cannot_derive(config) if len(dimensions) > 1 else None
    if why is not None:
        log.info(f"one indexing run per dimension: {why}")
    widest = None if None in dimensions else max(dimensions)
    wide = _indexed(configs[dimensions.index(widest)], texts, on_run, verbose) if why is None else None

    results: list[EvalRow] = []
    runs, by_mode = [], []
    for dimension, cfg in zip(dimensions, configs):
        if why is not None:
            table = _indexed(cfg, texts, on_run, verbose)
        else:
            table = wide if dimension == widest else _derived(cfg, wide)
        # The modes first, on the table as its run or derivation left it (the index builds below are new versions).
        by_mode.extend(
            evaluate_modes(table.searcher, table.queries, texts, qids, dataset.qrels, modes, cfg.sink.table, fusion)
        )
        results.extend(_evaluate_table(table, types, qids, dataset))
        runs.append(table.run)
        dtype = table.searcher.lineage.model.dtype  # model.dtype as resolved (auto) by the run
    return {**_report(dataset_dir, dataset, split, config, dtype, results, runs), "modes": by_mode}


def _report(dataset_dir, dataset: BeirDataset, split: str, config, dtype: str, results: list, runs: list) -> dict:
    """The report dict: the set, the model, every result row and every table's run (the modes: the caller)."""
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "path": str(dataset_dir),
            "name": dataset.name,
            "split": split,
            "documents": len(dataset.corpus),
            "queries": len(dataset.queries),
            "judgments": sum(len(v) for v in dataset.qrels.values()),
        },
        "model": {"path": config.model.path, "dtype": dtype},
        "k": K,
        "results": [r.to_dict() for r in results],
        "runs": runs,
        "config": config.model_dump(exclude={"source", "sink"}),  # both are set by the job
    }
