"""Query a table with the model, prompt and dimension recorded in it.

    from pipelines.search.searcher import Searcher
    searcher = Searcher.open("out/lancedb", "documents")
    hits = searcher.search("how do vaccines work", k=5)           # pyarrow.Table
    hits = searcher.search("...", k=5, filters={"title": user_input, "length_chars": (">", 500)})

``filters`` is the way to filter on values that come from users: column names are checked against
the table's schema and values are typed and quoted (:func:`pipelines.search.filters.build_filter`),
so no value can change the meaning of the filter. ``where=`` takes raw LanceDB SQL and is for trusted,
hand-written filters.

The query goes through the same tokenizer, encoder, pooling and post-processing code as the
documents. Any model or dimension given here is checked against the table's lineage; a mismatch
raises :class:`LineageMismatchError` instead of returning meaningless neighbours.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from connectors import columns as C
from connectors.errors import UserError
from connectors.lance.embedding_function import TableEmbedding
from connectors.lance.metadata import lineage_in
from connectors.lance.table import LanceTable, SinkError
from connectors.model_store import is_legacy_fingerprint, legacy_model_fingerprint, model_fingerprint, resolve_model_dir
from connectors.storage import Storage, is_s3
from pipelines.embed.precision import query_dtype
from pipelines.lineage import Lineage, LineageMismatchError, check_compatible, query_model_config
from pipelines.search.filters import FilterError, build_filter
from pipelines.search.fusion import DEFAULT_RRF_K, DEFAULT_TEXT_WEIGHT, leg_weights, reciprocal_rank_fusion

__all__ = ["FilterError", "LineageMismatchError", "SEARCH_MODES", "SearchModeError", "Searcher", "build_filter"]

SEARCH_MODES = ("vector", "text", "hybrid")


class SearchModeError(UserError):
    """A search mode this table or query cannot answer (an unknown mode, no full-text index, no words)."""


class Searcher:
    """An open table plus the encoder that made it; search by text or by vector."""

    def __init__(
        self,
        table,
        lineage: Lineage | dict,
        model_path: Optional[str] = None,
        device: str = "auto",
        storage: Optional[Storage] = None,
    ):
        lineage = Lineage.parse(lineage)
        self._use_table(table)
        self.storage = storage
        self._use_lineage(lineage)
        self._reopen = None  # set by open(): how refresh() opens the table again
        m = lineage.model
        if m is None:
            raise SinkError("the table's lineage records no model: it was not embedded by this pipeline")
        path = model_path or m.path
        model_dir = resolve_model_dir(path, m.revision, storage)
        # A table of the legacy fingerprint scheme stays queryable with the model it was checked
        # against before (reading cannot mix two models into the table).
        legacy = is_legacy_fingerprint(m.fingerprint)
        fingerprint = legacy_model_fingerprint(model_dir) if legacy else model_fingerprint(model_dir)
        if fingerprint != m.fingerprint:
            raise LineageMismatchError(
                f"model {path} (fingerprint {fingerprint}) is not the model that made this table "
                f"({m.path}, fingerprint {m.fingerprint})"
            )
        self.model_config = query_model_config(lineage, path, query_dtype(m.dtype or "float32", device), device)
        self._encoder = None

    @classmethod
    def open(
        cls,
        uri: str,
        table: str,
        *,
        model_path: Optional[str] = None,
        dimension: Optional[int] = None,
        device: str = "auto",
        storage: Optional[Storage] = None,
    ) -> "Searcher":
        """Open ``table`` in the LanceDB database ``uri`` (a directory or ``s3://`` prefix).

        Args:
            model_path: where the table's model lives on this machine, when not at the recorded path;
                its weights must be the recorded ones.
            dimension: the dimension the caller expects; checked against the table.
            storage: endpoint and credentials for ``s3://``; default: from the environment
                (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
        """
        storage = storage or Storage.resolve()
        if is_s3(uri):
            storage.probe(uri, "uri")  # a missing bucket or refused credentials, not "no table"
        lance_table = LanceTable.at(uri, table, storage)
        lineage = lance_table.lineage()
        if lineage is None:
            raise SinkError(f"no table {table!r} in {uri}")
        if dimension is not None and dimension != lineage.dimension:
            raise LineageMismatchError(f"dimension {dimension} does not match the table's {lineage.dimension}")
        searcher = cls(lance_table.open(), lineage, model_path=model_path, device=device, storage=storage)
        searcher._reopen = lance_table.open
        return searcher

    def _use_table(self, table) -> None:
        # Schema and version read once per table version: each read is a round trip through
        # LanceDB's event loop thread, which a busy service felt on every request.
        self.table = table
        self.schema = table.schema if table is not None else None
        self.version = table.version if table is not None else None
        # Searches go through the Lance dataset of this version, not LanceDB's query builder: same
        # results (same engine), ~3 ms less per query on a 2-core box (bench/ann_paths.py).
        self._dataset = table.to_lance() if table is not None else None

    def _use_lineage(self, lineage: Lineage) -> None:
        self.lineage = lineage
        self.dimension = lineage.dimension
        self.metric = lineage.metric
        self.defaults = lineage.query_defaults or {}
        self.has_index = lineage.index_type() != "none"
        self.text_index = (lineage.index or {}).get("fts")  # the full-text index, when the table has one

    def refresh(self) -> bool:
        """Serve the table's latest version, if a newer one was committed; True when it changed.

        The new version's lineage must be the same embedding space (model weights, pooling, prompts,
        dimension, metric): a table rebuilt with another model raises :class:`LineageMismatchError`
        and this searcher keeps the version it had. Its query defaults and index state are taken up.
        """
        if self._reopen is None:
            raise TypeError("refresh() needs a Searcher made by Searcher.open()")
        table = self._reopen()
        if table.version == self.version:
            return False
        lineage = Lineage.parse(lineage_in(table.schema, f"version {table.version} of the table"))
        check_compatible(self.lineage, lineage, f"version {table.version} of the table")
        self._use_lineage(lineage)
        self._use_table(table)
        return True

    def _encode(self):
        # Queries always go through the hf backend, also for tables a vLLM run made: a vLLM engine
        # takes tens of seconds to start for a handful of texts, and the backends agree (the vLLM
        # tests hold them to cosine >= 0.999 on the same inputs).
        if self._encoder is None:
            from pipelines.embed.hf_encoder import HFEncoder

            self._encoder = HFEncoder(self.model_config, storage=self.storage)
        return self._encoder

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors exactly as the table's documents were made, with the query prompt."""
        return self._embed(texts, self.model_config.query_prompt)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of texts as documents (the document prompt), cut at the model's token limit."""
        return self._embed(texts, self.model_config.document_prompt)

    def _embed(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        from pipelines.embed.texts import embed_texts

        encoder = self._encode()
        return embed_texts(encoder, texts, prompt, self.model_config.max_tokens, self.dimension, self.lineage.normalize)

    def search(
        self,
        query: Union[str, Sequence[float], np.ndarray],
        k: int = 10,
        *,
        mode: str = "vector",
        text: Optional[str] = None,
        filters: Optional[Mapping[str, Any]] = None,
        where: Optional[str] = None,
        nprobes: Optional[int] = None,
        refine_factor: Optional[int] = None,
        columns: Optional[Sequence[str]] = None,
        exact: bool = False,
        rrf_k: Optional[int] = None,
        text_weight: Optional[float] = None,
    ) -> pa.Table:
        """Top-``k`` rows for a text or a vector, best first, with a ``score`` column.

        ``mode``: ``vector`` (the query's embedding against the vectors), ``text`` (its words against
        the full-text index: BM25) or ``hybrid`` (both, fused by reciprocal rank with constant
        ``rrf_k``, default 60, the text search's ranks weighing ``text_weight`` of the sum, default
        0.5: alike; a ``found_by`` column says which search found each hit). ``score`` is the cosine
        similarity (or dot product) for cosine/dot tables and the negated L2 distance for l2 tables
        in vector mode, the BM25 score in text mode, the fused score in hybrid mode: higher is always
        better. A vector ``query`` in hybrid mode takes its words from ``text``.

        ``filters`` (see :func:`build_filter`) and ``where`` restrict the rows before the search (both
        searches in hybrid mode); both given, both must hold. ``exact`` scans every vector instead of
        the index (the ground truth the index is measured against).

        Args:
            filters: ``{column: condition}`` built into a typed, quoted filter: use this for any
                value that comes from a user.
            where: a raw LanceDB SQL filter, passed as is: only for trusted, hand-written text,
                never for strings that contain user input.
        """
        words = self._words(query, mode, text)
        fusion = _fusion(mode, rrf_k, text_weight)
        _refuse_vector_options(mode, nprobes=nprobes, refine_factor=refine_factor, exact=exact)
        restrict = dict(filters=filters, where=where, columns=columns)
        if mode == "text":
            return self._text_hits(words, k, **restrict)
        if isinstance(query, str):
            vector = self.embed_queries([query])[0]
        else:
            vector = np.asarray(query, dtype=np.float32)
            if vector.shape != (self.dimension,):
                raise LineageMismatchError(
                    f"query vector has shape {vector.shape}, the table holds {self.dimension}-dimensional vectors"
                )
        tuning = dict(nprobes=nprobes, refine_factor=refine_factor, exact=exact)
        hits = self._scored(self._hits(vector, k, with_row_id=mode == "hybrid", **tuning, **restrict))
        if mode == "vector":
            return hits
        return reciprocal_rank_fusion(
            {"vector": hits, "text": self._text_hits(words, k, with_row_id=True, **restrict)}, C.ROW_ID, k, **fusion
        ).drop_columns([C.ROW_ID])

    def _words(self, query, mode: str, text: Optional[str]) -> Optional[str]:
        """The words a text or hybrid search looks for; checks the mode and that the table can answer it."""
        if mode not in SEARCH_MODES:
            raise SearchModeError(f"search mode {mode!r}: one of {', '.join(SEARCH_MODES)}")
        if mode == "vector":
            return None
        if not self.text_index:
            raise SearchModeError(
                f"a {mode} search needs the table's full-text index, and this table has none: "
                "index it with index.fts=true (the default), e.g. an upsert run of the same source"
            )
        words = query if isinstance(query, str) else text
        if not words or not words.strip():
            raise SearchModeError(f"a {mode} search needs the query's text (a vector query: text=...)")
        return words

    def _text_hits(self, words: str, k: int, *, filters=None, where=None, columns=None, with_row_id=False) -> pa.Table:
        """The top ``k`` rows for ``words`` by BM25 on the full-text index, with ``score``."""
        options = {"columns": [*columns, "_score"]} if columns else {}
        hits = self._dataset.to_table(
            full_text_query=words, filter=self._filter(filters, where), prefilter=True, limit=k,
            with_row_id=with_row_id, **options,
        )  # fmt: skip
        return hits.append_column(C.SCORE, hits.column("_score").cast(pa.float32())).drop_columns(["_score"])

    def search_many(self, vectors: np.ndarray, k: int = 10, **options: Any) -> list[pa.Table]:
        """:meth:`search` for each row of ``vectors`` in one index search (one table per vector, the
        same hits as one search each; several at once cost a fraction of one each). ``options``:
        :meth:`search`'s keyword arguments."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise LineageMismatchError(
                f"query vectors have shape {vectors.shape}, the table holds {self.dimension}-dimensional vectors"
            )
        if len(vectors) == 1:  # Lance returns no query_index for a single vector
            return [self.search(vectors[0], k, **options)]
        hits = self._hits(vectors, k, **options)
        which = hits.column(C.QUERY_INDEX).to_numpy()
        hits = self._scored(hits.take(np.lexsort((hits.column("_distance").to_numpy(), which))).drop([C.QUERY_INDEX]))
        ends = np.cumsum(np.bincount(which, minlength=len(vectors)))
        return [hits.slice(end - n, n) for end, n in zip(ends, np.diff(ends, prepend=0))]

    def _hits(
        self, vector, k, *, filters=None, where=None, nprobes=None, refine_factor=None, columns=None, exact=False,
        with_row_id=False,
    ) -> pa.Table:  # fmt: skip
        """The top ``k`` rows (and ``_distance``) for a vector, or for each row of a 2-D array of them
        (then with ``query_index``)."""
        nearest = {"column": C.VECTOR, "q": vector, "k": k, "metric": self.metric}
        if exact:
            nearest["use_index"] = False
        elif self.has_index:
            nearest["nprobes"] = nprobes or self.defaults.get("nprobes") or 20
            refine = refine_factor or self.defaults.get("refine_factor")
            if refine:
                nearest["refine_factor"] = refine
        options = {"with_row_id": True} if with_row_id else {}
        if columns:  # _distance named: Lance warns on every query whose columns leave it out
            options["columns"] = [*columns, *(["_distance"] if "_distance" not in columns else [])]
        return self._dataset.to_table(nearest=nearest, filter=self._filter(filters, where), prefilter=True, **options)

    def _filter(self, filters, where) -> Optional[str]:
        clauses = [f"({where})"] if where else []
        if filters:
            clauses.append(build_filter(filters, self.schema))
        return " AND ".join(clauses) or None

    def _scored(self, hits: pa.Table) -> pa.Table:
        distance = hits.column("_distance").to_numpy()
        score = 1.0 - distance if self.metric == "cosine" else -distance
        return hits.append_column(C.SCORE, pa.array(score.astype(np.float32)))


def _refuse_vector_options(mode: str, **options) -> None:
    """A text search has no vector search to tune: a setting for one is an error, not ignored."""
    given = [name for name, value in options.items() if value]
    if mode == "text" and given:
        raise SearchModeError(f"{' and '.join(given)} set the vector search, not a text search")


def _fusion(mode: str, rrf_k: Optional[int], text_weight: Optional[float]) -> dict:
    """The hybrid search's fusion settings; refused for a mode that fuses nothing, or out of range."""
    given = [name for name, value in (("rrf_k", rrf_k), ("text_weight", text_weight)) if value is not None]
    if given and mode != "hybrid":
        raise SearchModeError(f"{' and '.join(given)} set the hybrid search's fusion, not a {mode} search")
    if rrf_k is not None and (isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 1):
        raise SearchModeError(f"rrf_k must be a whole number >= 1, got {rrf_k!r}")
    if text_weight is not None and (isinstance(text_weight, bool) or not 0.0 <= text_weight <= 1.0):
        raise SearchModeError(f"text_weight must be between 0 and 1, got {text_weight!r}")
    return {
        "k": DEFAULT_RRF_K if rrf_k is None else rrf_k,
        "weights": leg_weights(DEFAULT_TEXT_WEIGHT if text_weight is None else text_weight),
    }


def _embedder(lineage: dict, device: str) -> Searcher:
    """What LanceDB's ``search("text")`` on the table embeds with (connectors.lance.embedding_function)."""
    return Searcher(None, lineage, device=device, storage=Storage.resolve())


TableEmbedding.embedder = _embedder
