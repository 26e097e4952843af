"""Online lookups: a Ray Serve deployment that answers text queries against one table.

Each replica loads the table's model once; the queries that wait while the model is busy are
embedded together in one forward pass and searched in one index search, with the table's stored
defaults; it answers JSON:

    POST /search   {"query": "how do vaccines work", "k": 5, "filters": {"length_chars": {"op": ">", "value": 500}}}
                   -> {"hits": [{"id": ..., "score": ..., "text": ...}, ...], "table_version": 7}
    GET  /healthz  the replica is up
    GET  /ready    the model is loaded and the table open (503 with the reason otherwise)
    GET  /stats    this replica's counts and times so far: queries embedded, forward passes, searches

``{"vector": [...]}`` instead of ``"query"`` searches by vector. ``"mode": "text"`` searches the
query's words in the table's full-text index (BM25), ``"hybrid"`` both ways fused by reciprocal rank
(each hit with ``found_by``); their queries join the batch (a hybrid's vector is embedded with the
others) and are then searched one by one through ``Searcher.search``. ``filters`` goes through the same
injection-safe builder as ``Searcher.search`` (:func:`pipelines.search.filters.filters_from_json`).
A request the service cannot answer as asked (unknown column, wrong vector dimension, k out of
range, malformed JSON, an oversized body, a value the model or Lance cannot take) gets a 4xx with
the reason, never a 500. Each request is checked on its own before it joins a batch, and a batch
that fails anyway is answered query by query: one bad query never fails the others.

Clients read only the served columns (``ServiceConfig.columns``; by default the id, the text and
the source's metadata columns, never ``source_file``, ``run_id``, ``content_hash`` or the vector),
and with ``auth_token_env`` or ``auth_token_file`` set, /search and /stats need that bearer token.

Every ``refresh_seconds`` a replica looks for a newer table version and serves it (a daily upsert
shows up without a restart). A version made with another model or dimension is not served: the
replica reports it on /ready and in its health check, and Serve restarts it, which loads the
model the table now records. Built by :func:`jobs.serve.app` (``serve run infra/serve/search.yaml``).

Its parts: :mod:`pipelines.search.requests` (one request checked on its own),
:mod:`pipelines.search.auth` (the bearer token) and :mod:`pipelines.search.batcher` (the batching).
"""

import asyncio
import logging
import time
from typing import Optional

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from connectors import columns as C
from connectors.errors import UserError
from connectors.storage import Storage
from pipelines.config import ServiceConfig
from pipelines.lineage import Lineage
from pipelines.search.auth import bearer_token, unauthorised
from pipelines.search.batcher import Batcher, Work
from pipelines.search.filters import build_filter, filters_from_json
from pipelines.search.requests import BadRequest, SearchRequest, jsonable, parse_request, read_body
from pipelines.search.searcher import SEARCH_MODES, Searcher

__all__ = ["SearchRequest", "TableSearch"]

log = logging.getLogger("ray.serve")
api = FastAPI(title="embedpipe search", docs_url=None, redoc_url=None)


# ---- what a client may read ----------------------------------------------------------------------
def _served_columns(lineage: Lineage, schema: pa.Schema, allowed: Optional[list[str]]) -> list[str]:
    """The columns a request may read and filter on: the id, then the allow-list, by default the text
    and the source's metadata columns as the lineage records them. Not the rest of the table: the
    pipeline's own columns say where and when it indexed (``source_file`` is a path on the indexing
    host), and the vector is the table's bulk."""
    source = lineage.source
    wanted = allowed if allowed is not None else [source.text_column, *source.metadata_columns]
    return [c for c in dict.fromkeys([source.id_column, *wanted]) if c in schema.names and c != C.VECTOR]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class TableSearch:
    """One replica: the table, its model, and a batching queue in front of the model."""

    def __init__(self, config: dict):
        self.config = ServiceConfig.model_validate(config)
        self._token = bearer_token(self.config)  # before the model loads: a missing secret fails at once
        storage = Storage.resolve(self.config.storage, [self.config.uri, self.config.model_path])
        self.searcher = Searcher.open(
            self.config.uri,
            self.config.table,
            model_path=self.config.model_path,
            device=self.config.device,
            storage=storage,
        )
        self.searcher.embed_queries(["warm-up"])  # the model is loaded before the replica takes traffic
        self._batcher = Batcher(self._answer_now, self.config.max_batch_size)
        self.queries = 0  # embedded, in self.batches forward passes taking self.embed_seconds
        self.batches = 0
        self.embed_seconds = 0.0
        self.searches = 0  # answered, their index searches taking self.search_seconds
        self.search_seconds = 0.0
        self.modes = dict.fromkeys(SEARCH_MODES, 0)  # searches answered, by mode
        self.stale: Optional[str] = None  # why the latest table version is not served
        self._checked = time.monotonic()
        self._refreshing: Optional[asyncio.Task] = None

    # ---- batching: concurrent queries share one forward pass and one index search -----------------
    def _answer_now(self, work: list[Work]) -> list[pa.Table]:
        """Embed the batch's texts in one pass (not those of text searches), then search each group of
        vector queries that share k, filter and columns (nearly always one group) in one index search,
        and each text or hybrid query on its own (:meth:`Searcher.search`)."""
        texts = [w.text for w in work if w.vector is None and w.mode != "text"]
        if texts:
            started = time.perf_counter()
            embedded = iter(self.searcher.embed_queries(texts))
            self.embed_seconds += time.perf_counter() - started
            self.queries += len(texts)
            self.batches += 1
        vectors = [w.vector if w.vector is not None or w.mode == "text" else next(embedded) for w in work]
        groups: dict[tuple, list[int]] = {}
        answers: list = [None] * len(work)
        started = time.perf_counter()
        for i, w in enumerate(work):
            if w.mode == "vector":
                groups.setdefault((w.k, w.where, tuple(w.columns)), []).append(i)
            else:  # the hybrid's vector embedded with the batch above, its words searched here
                query = w.text if w.mode == "text" else vectors[i]
                answers[i] = self.searcher.search(
                    query, w.k, mode=w.mode, text=w.text, where=w.where, columns=w.columns, **(w.fusion or {})
                )
        for (k, where, columns), members in groups.items():
            found = self.searcher.search_many(np.stack([vectors[i] for i in members]), k, where=where, columns=columns)
            for i, hits in zip(members, found):
                answers[i] = hits
        self.search_seconds += time.perf_counter() - started
        self.searches += len(work)
        for w in work:
            self.modes[w.mode] += 1
        return answers

    # ---- table versions -----------------------------------------------------------------------------
    def _maybe_refresh(self) -> None:
        """Start a look for a newer version when refresh_seconds have passed; never waits on it."""
        now = time.monotonic()
        if now - self._checked < self.config.refresh_seconds or self._refreshing is not None:
            return
        self._checked = now
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            before = self.searcher.version
            if await asyncio.to_thread(self.searcher.refresh):
                log.info("serving table version %s (was %s)", self.searcher.version, before)
        except UserError as exc:  # another model or dimension: not served; the health check restarts us
            self.stale = str(exc)
            log.error("not serving the latest table version: %s", exc)
        except Exception as exc:  # noqa: BLE001  storage hiccup: keep serving, try again next time
            log.warning("could not look for a newer table version: %s", exc)
        finally:
            self._refreshing = None

    async def check_health(self) -> None:
        """Serve's health check: fail when the table now holds another embedding space, so that
        Serve replaces this replica with one that loads the table's current model."""
        self._maybe_refresh()
        if self.stale:
            raise RuntimeError(self.stale)

    # ---- HTTP ---------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Open, like /ready: load balancers and Serve's probes carry no token."""
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> JSONResponse:
        self._maybe_refresh()
        body = {
            "table": self.config.table,
            "table_version": self.searcher.version,
            "model": self.searcher.lineage.model.path,
            "dimension": self.searcher.dimension,
        }
        if self.stale:
            return JSONResponse({**body, "ready": False, "reason": self.stale}, status_code=503)
        return JSONResponse({**body, "ready": True})

    @api.get("/stats")
    async def stats(self, request: Request) -> JSONResponse:
        if refusal := unauthorised(request, self._token):
            return refusal
        return JSONResponse(
            {
                "queries_embedded": self.queries,
                "forward_passes": self.batches,
                "embed_seconds": round(self.embed_seconds, 4),
                "searches": self.searches,
                "search_seconds": round(self.search_seconds, 4),
                "searches_by_mode": self.modes,
            }
        )

    @api.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        if refusal := unauthorised(request, self._token):  # before the body is read
            return refusal
        self._maybe_refresh()
        try:
            if self.stale:
                raise BadRequest(503, f"not ready: {self.stale}")
            req = parse_request(await read_body(request, self.config.max_body_bytes), self.config.max_k)
            hits = await self._search(req)
        except BadRequest as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except UserError as exc:  # FilterError, LineageMismatchError: the request's fault, named
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"hits": hits, "table_version": self.searcher.version})

    def _columns(self, req: SearchRequest, served: list[str]) -> list[str]:
        source = self.searcher.lineage.source
        wanted = req.columns if req.columns is not None else [c for c in [source.text_column] if c in served]
        refused = [c for c in wanted if c not in served]
        if refused:
            names = ", ".join(map(repr, refused))
            raise BadRequest(400, f"unknown or not served column(s) {names}; served columns: {', '.join(served)}")
        return list(dict.fromkeys([source.id_column, *wanted]))

    async def _search(self, req: SearchRequest) -> list[dict]:
        """Check everything about the request first: the batch only ever holds answerable queries."""
        schema = self.searcher.schema
        served = _served_columns(self.searcher.lineage, schema, self.config.columns)
        columns = self._columns(req, served)
        visible = pa.schema([schema.field(c) for c in served])  # a filter cannot probe a hidden column
        where = build_filter(filters_from_json(req.filters, visible), visible) if req.filters else None
        vector = None
        if req.vector is not None:
            vector = np.asarray(req.vector, dtype=np.float32)
            if vector.shape != (self.searcher.dimension,):
                dim = self.searcher.dimension
                raise BadRequest(400, f'"vector" has {vector.size} values, the table holds {dim}-dimensional vectors')
            if not np.isfinite(vector).all():
                raise BadRequest(400, '"vector" holds a value beyond the float32 range')
        if req.mode != "vector" and not self.searcher.text_index:
            raise BadRequest(
                400,
                f'"mode": a {req.mode} search needs the table\'s full-text index, and table '
                f"{self.config.table!r} has none (made with index.fts=false or before it): "
                'use "mode": "vector", or index the table with index.fts=true',
            )
        work = Work(req.query if vector is None else None, vector, req.k, where, columns, req.mode, req.fusion)
        try:
            hits = await self._batcher.submit(work)
        except UserError:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:  # refused alone (Lance, the tokenizer)
            log.warning("query refused: %s", exc, exc_info=True)
            raise BadRequest(400, f"this query could not be answered: {exc}") from None
        return jsonable(hits.select([*columns, C.SCORE, *([C.FOUND_BY] if req.mode == "hybrid" else [])]))
