"""Model conformance: the pipeline embeds every shape of sentence-transformers model the way
sentence-transformers itself does, reading the model's own pipeline from its directory.

For each shape of tests/helpers/model_zoo.py (pooling modes, Dense heads, Normalize, prompts,
T5's encoder, decoders, bidirectional Gemma3, the packaged MiniLM), and for a few shapes in the
legacy hub config form as well:

- documents: a dozen sample texts, with only ``model.path`` and ``model.dtype=float32`` set (pooling,
  prompts and head must come from the model directory), settled by the run's own preflight and put
  through the run's own validate, tokenize and encode stages (``embedding_stages``, in this process:
  the objects Ray Data calls in the job) match ``SentenceTransformer.encode(texts, prompt_name=<the
  document prompt>)`` row by row (cosine >= 0.99999), in its dimension;
- queries: a ``Searcher`` on the lineage that preflight made for the table (the schema metadata the
  job writes) matches ``encode(queries, prompt_name="query")``.

For the shapes in ``JOBS`` (a Dense head, prompts, a prompt left out of pooling, a decoder: each settles
something different into the lineage) the whole job runs as well (``run_index`` on the session's local
Ray): the table's vectors and ``Searcher.open`` on the table must match too. The rest of the job (Ray
Data scheduling, the sink, the commits) does not depend on the model's shape, and a job costs ~10 s
here where the stages in this process cost ~1 s (docs/testing.md).

Both sides are L2-normalised before comparing (the table stores unit vectors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.model_zoo import SHAPES
from pipelines.config import load_config
from pipelines.run.runner import run_index
from pipelines.search.searcher import Searcher

MIN_COSINE = 0.99999
# Shapes also checked in the legacy config form (1_Pooling booleans, sentence_transformers.models.*)
LEGACY = ["bert_cls", "labse", "qwen3_lasttoken"]
CASES = [(s, False) for s in SHAPES] + [(s, True) for s in LEGACY]
# Cases that also run as a whole job: a Dense head after CLS pooling, prompts read from the model,
# a prompt left out of pooling (include_prompt false), a decoder pooling its last token.
JOBS = [("labse", False), ("xlmr_e5_prompts", False), ("instructor_no_prompt", False), ("qwen3_lasttoken", True)]
QUERIES = [
    "Which planet is the largest?",
    "how do vaccines work",
    "capital city of France",
    "who wrote the play Hamlet",
]


# The named prompt each role takes: the first of these the model gives a non-empty prompt, else its
# default prompt. sentence-transformers' encode_query / encode_document try the same names, but 6.x
# saves every model with empty "query"/"document" placeholders and then takes the empty "document"
# before e5's "passage" (docs/models.md).
QUERY, DOCUMENT = ("query",), ("document", "passage", "corpus")


def _prompt_name(st, names: tuple[str, ...]) -> Optional[str]:
    return next((n for n in names if st.prompts.get(n)), None) or st.default_prompt_name


def _case_id(case) -> str:
    shape, legacy = case
    return f"{shape}-legacy" if legacy else shape


@dataclass
class Reference:
    name: str  # the case, as the failure messages name it
    model_dir: Path
    dimension: int  # sentence-transformers' get_embedding_dimension()
    ids: list
    docs: np.ndarray  # encode(prompt_name=<document prompt>), L2-normalised, one row per id
    queries: np.ndarray  # encode(prompt_name=<query prompt>), L2-normalised


@dataclass
class Indexed:
    reference: Reference
    db: str
    error: Optional[str]  # what run_index raised, if it did (its last line: a worker's exception)


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def documents(sample_table, tmp_path_factory):
    """Twelve sample texts of different lengths (every batch pads), in one Parquet file."""
    rows = sample_table.slice(0, 12)
    texts = [text[: 60 + 25 * i].strip() for i, text in enumerate(rows.column("text").to_pylist())]
    table = pa.table({"id": rows.column("id").to_pylist(), "text": texts})
    path = tmp_path_factory.mktemp("conformance-docs") / "docs.parquet"
    pq.write_table(table, path)
    return path, table["id"].to_pylist(), texts


def _reference(case, model_zoo, documents) -> Reference:
    from sentence_transformers import SentenceTransformer

    shape, legacy = case
    model_dir = model_zoo(shape, legacy_config=legacy)
    _, ids, texts = documents
    st = SentenceTransformer(str(model_dir), device="cpu")
    docs = _unit(st.encode(texts, prompt_name=_prompt_name(st, DOCUMENT), convert_to_numpy=True))
    queries = _unit(st.encode(QUERIES, prompt_name=_prompt_name(st, QUERY), convert_to_numpy=True))
    return Reference(_case_id(case), model_dir, st.get_embedding_dimension(), ids, docs, queries)


def _config(reference: Reference, documents, db: str):
    return load_config(
        overrides=[
            f"source.path={documents[0]}",
            f"sink.uri={db}",
            "sink.table=docs",
            f"model.path={reference.model_dir}",
            "model.dtype=float32",  # compared with sentence-transformers in float32
            "index.type=none",
        ]
    )


@pytest.fixture(scope="module")
def references(model_zoo, documents):
    """``get(case)``: the case's sentence-transformers reference, made once (a case in ``JOBS`` needs it
    for its stages and for its job)."""
    made = {}

    def get(case) -> Reference:
        if case not in made:
            made[case] = _reference(case, model_zoo, documents)
        return made[case]

    return get


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def reference(request, references) -> Reference:
    return references(request.param)


@pytest.fixture(scope="module", params=JOBS, ids=_case_id)
def indexed(request, ray_cluster, references, documents, tmp_path_factory) -> Indexed:
    ref = references(request.param)
    db = str(tmp_path_factory.mktemp(f"conformance-{ref.name}"))
    error = None
    try:
        run_index(_config(ref, documents, db))
    except Exception as exc:  # reported by each test of the case, naming it
        error = _cause(exc)
    if error:  # the traceback no longer holds the failed execution: its encoder actor can go
        _wait_for_free_cpus()
    return Indexed(ref, db, error)


def _cause(exc: Exception) -> str:
    """The exception's type and the line naming its cause (a Ray worker's error comes wrapped in
    its traceback and Ray's retry advice)."""
    lines = [line.strip() for line in str(exc).strip().splitlines()] or [""]
    causes = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line) and not line.startswith("ray.")]
    return f"{type(exc).__name__}: {causes[-1] if causes else lines[0]}"


def _wait_for_free_cpus(timeout_s: float = 60.0) -> None:
    """After a failed job, until its encoder actor has given its CPU back (the next case's preflight
    counts CPUs held by others; Ray Data can leave a failed execution's encoder actor holding its CPU
    for a while: a pending task's callback keeps its handle)."""
    import gc
    import time

    import ray

    gc.collect()
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
            break
        time.sleep(0.5)


def _require_table(case: Indexed) -> None:
    if case.error is not None:
        pytest.fail(f"{case.reference.name}: the index job failed: {case.error}")


def _check(case: Reference, what: str, got: np.ndarray, expected: np.ndarray, labels: list) -> None:
    assert got.shape[1] == case.dimension, (
        f"{case.name}: {what} have dimension {got.shape[1]}, sentence-transformers' "
        f"get_embedding_dimension() is {case.dimension}"
    )
    cosines = np.sum(_unit(got) * expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= MIN_COSINE, (
        f"{case.name}: {what}: worst cosine with sentence-transformers {cosines[worst]:.6f} "
        f"({labels[worst]!r}) < {MIN_COSINE}; {int(np.sum(cosines < MIN_COSINE))} of {len(cosines)} below"
    )


def test_reference_vectors_are_distinct(reference):
    """The zoo's random models give different texts clearly different vectors, so agreement to
    0.99999 below means the same computation, not a degenerate model."""
    off_diagonal = (reference.docs @ reference.docs.T)[~np.eye(len(reference.docs), dtype=bool)]
    assert off_diagonal.max() < 0.999, f"{reference.name}: two documents' vectors have cosine {off_diagonal.max():.6f}"


@dataclass
class Staged:
    reference: Reference
    docs: np.ndarray  # what the run's stages made of the documents, one row per id
    queries: np.ndarray  # what a Searcher on the planned lineage made of QUERIES


@pytest.fixture(scope="module")
def staged(reference, ray_cluster, documents, tmp_path_factory) -> Staged:
    """The run's preflight settles the model's chain; its validate, tokenize and encode stages embed
    the documents; a ``Searcher`` on the lineage preflight planned for the table embeds the queries."""
    from connectors.lance.metadata import lineage_in
    from pipelines.lineage import vector_key
    from pipelines.run.plan import embedding_stages
    from pipelines.run.preflight import preflight

    db = str(tmp_path_factory.mktemp(f"conformance-stages-{reference.name}"))
    plan = preflight(_config(reference, documents, db))
    key = vector_key(plan.lineage, plan.config)
    stages = {
        s.name: s
        for s in embedding_stages(plan.config, max_tokens=plan.max_tokens, dimension=plan.dimension, lineage_key=key)
    }
    read = pq.read_table(documents[0])
    read = read.append_column("path", pa.array([str(documents[0])] * read.num_rows))  # as Ray's reader adds it
    encoded = stages["encode"].fn(**stages["encode"].constructor_kwargs)(
        stages["tokenize"].fn(stages["validate"].fn(read))
    )
    vectors = dict(zip(encoded.column("id").to_pylist(), encoded.column("vector").to_pylist()))
    assert sorted(vectors) == sorted(reference.ids), f"{reference.name}: the stages' ids differ from the corpus's"
    searcher = Searcher(None, lineage_in(plan.table_schema, "the planned table"), device="cpu")
    return Staged(reference, np.array([vectors[i] for i in reference.ids]), np.asarray(searcher.embed_queries(QUERIES)))


def test_run_stages_embed_documents_like_encode_document(staged):
    _check(staged.reference, "documents", staged.docs, staged.reference.docs, staged.reference.ids)


def test_planned_lineage_embeds_queries_like_encode_query(staged):
    _check(staged.reference, "query vectors", staged.queries, staged.reference.queries, QUERIES)


def test_job_table_vectors_match_encode_document(indexed):
    import lancedb

    _require_table(indexed)
    ref = indexed.reference
    table = lancedb.connect(indexed.db).open_table("docs").to_arrow()
    stored = dict(zip(table.column("id").to_pylist(), table.column("vector").to_pylist()))
    assert sorted(stored) == sorted(ref.ids), f"{ref.name}: the table's ids differ from the corpus's"
    got = np.array([stored[i] for i in ref.ids], dtype=np.float64)
    _check(ref, "stored vectors", got, ref.docs, ref.ids)


def test_job_searcher_queries_match_encode_query(indexed):
    _require_table(indexed)
    searcher = Searcher.open(indexed.db, "docs", device="cpu")
    got = np.asarray(searcher.embed_queries(QUERIES), dtype=np.float64)
    _check(indexed.reference, "query vectors", got, indexed.reference.queries, QUERIES)
