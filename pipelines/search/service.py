"""Online lookups: a Ray Serve deployment that answers text queries against one table.

Each replica loads the table's model once, embeds the queries that arrive together in one forward
pass (Serve's request batching), searches with the table's stored defaults and answers JSON:

    POST /search   {"query": "how do vaccines work", "k": 5, "filters": {"length_chars": {"op": ">", "value": 500}}}
                   -> {"hits": [{"id": ..., "score": ..., "text": ...}, ...], "table_version": 7}
    GET  /healthz  the replica is up
    GET  /ready    the model is loaded and the table open (503 with the reason otherwise)
    GET  /stats    queries and forward passes so far on this replica (mean batch size)

``{"vector": [...]}`` instead of ``"query"`` searches by vector. ``filters`` goes through the same
injection-safe builder as ``Searcher.search`` (:func:`pipelines.search.filters.filters_from_json`).
A request the service cannot answer as asked (unknown column, wrong vector dimension, k out of
range, malformed JSON, an oversized body) gets a 4xx with the reason, never a 500.

Every ``refresh_seconds`` a replica looks for a newer table version and serves it (a daily upsert
shows up without a restart). A version made with another model or dimension is not served: the
replica reports it on /ready and in its health check, and Serve restarts it, which loads the
model the table now records. Built by :func:`jobs.serve.app` (``serve run infra/serve/search.yaml``).
"""

import asyncio
import json
import logging
import time
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve

from connectors.errors import UserError
from connectors.storage import Storage
from pipelines.config import ServiceConfig
from pipelines.search.filters import filters_from_json
from pipelines.search.searcher import Searcher

__all__ = ["SearchRequest", "TableSearch"]

log = logging.getLogger("ray.serve")
api = FastAPI(title="embedpipe search", docs_url=None, redoc_url=None)


class SearchRequest(BaseModel):
    """One query: a text (embedded with the table's query prompt) or a vector, never both."""

    model_config = ConfigDict(extra="forbid")

    query: Optional[str] = None
    vector: Optional[list[float]] = None
    k: int = 10
    filters: Optional[dict[str, Any]] = None
    columns: Optional[list[str]] = None


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class TableSearch:
    """One replica: the table, its model, and a batching queue in front of the model."""

    def __init__(self, config: dict):
        self.config = ServiceConfig.model_validate(config)
        c = self.config
        storage = Storage.resolve(c.storage, [c.uri, c.model_path])
        self.searcher = Searcher.open(c.uri, c.table, model_path=c.model_path, device=c.device, storage=storage)
        self.searcher.embed_queries(["warm-up"])  # the model is loaded before the replica takes traffic
        self._embed_batch.set_max_batch_size(c.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(c.batch_wait_ms / 1000)
        self.queries = 0
        self.batches = 0
        self.stale: Optional[str] = None  # why the latest table version is not served
        self._checked = time.monotonic()
        self._refreshing: Optional[asyncio.Task] = None

    # ---- batching: concurrent queries share one forward pass -------------------------------------
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self.searcher.embed_queries, texts)
        self.queries += len(texts)
        self.batches += 1
        return list(vectors)

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
            before = self.searcher.table.version
            if await asyncio.to_thread(self.searcher.refresh):
                log.info("serving table version %s (was %s)", self.searcher.table.version, before)
        except UserError as exc:  # another model or dimension: not served; the health check restarts us
            self.stale = str(exc)
            log.error("not serving the latest table version: %s", exc)
        except Exception as exc:  # noqa: BLE001  storage hiccup: keep serving, try again next time
            log.warning("could not look for a newer table version: %s", exc)
        finally:
            self._refreshing = None

    def check_health(self) -> None:
        """Serve's health check: fail when the table now holds another embedding space, so that
        Serve replaces this replica with one that loads the table's current model."""
        self._maybe_refresh()
        if self.stale:
            raise RuntimeError(self.stale)

    # ---- HTTP ---------------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> JSONResponse:
        body = {
            "table": self.config.table,
            "table_version": self.searcher.table.version,
            "model": self.searcher.lineage["model"]["path"],
            "dimension": self.searcher.dimension,
        }
        if self.stale:
            return JSONResponse({**body, "ready": False, "reason": self.stale}, status_code=503)
        return JSONResponse({**body, "ready": True})

    @api.get("/stats")
    async def stats(self) -> dict:
        return {
            "queries_embedded": self.queries,
            "forward_passes": self.batches,
            "mean_batch_size": round(self.queries / self.batches, 3) if self.batches else None,
        }

    @api.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        self._maybe_refresh()
        try:
            if self.stale:
                raise _BadRequest(503, f"not ready: {self.stale}")
            req = await self._parse(request)
            hits = await self._search(req)
        except _BadRequest as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except UserError as exc:  # FilterError, LineageMismatchError: the request's fault, named
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"hits": hits, "table_version": self.searcher.table.version})

    async def _parse(self, request: Request) -> SearchRequest:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _BadRequest(413, f"request body of {declared} bytes is over the limit of {limit}")
        body = await request.body()
        if len(body) > limit:
            raise _BadRequest(413, f"request body of {len(body)} bytes is over the limit of {limit}")
        try:
            raw = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(400, f"request body is not JSON: {exc}") from None
        try:
            req = SearchRequest.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            raise _BadRequest(422, problems) from None
        if (req.query is None) == (req.vector is None):
            raise _BadRequest(422, 'give exactly one of "query" (text) and "vector"')
        if req.query is not None and not req.query.strip():
            raise _BadRequest(422, '"query" is empty')
        if not 1 <= req.k <= self.config.max_k:
            raise _BadRequest(422, f'"k" must be between 1 and {self.config.max_k}, got {req.k}')
        return req

    def _columns(self, req: SearchRequest) -> list[str]:
        source = self.searcher.lineage["source"]
        wanted = req.columns if req.columns is not None else [source["text_column"], *self.config.columns]
        names = self.searcher.table.schema.names
        unknown = [c for c in wanted if c not in names or c == "vector"]
        if unknown:
            choices = ", ".join(n for n in names if n != "vector")
            raise _BadRequest(400, f"unknown column(s) {', '.join(map(repr, unknown))}; columns: {choices}")
        return list(dict.fromkeys([source["id_column"], *wanted]))

    async def _search(self, req: SearchRequest) -> list[dict]:
        columns = self._columns(req)
        filters = filters_from_json(req.filters, self.searcher.table.schema) if req.filters else None
        if req.vector is not None:
            vector = np.asarray(req.vector, dtype=np.float32)
            if vector.shape != (self.searcher.dimension,):
                dim = self.searcher.dimension
                raise _BadRequest(400, f'"vector" has {vector.size} values, the table holds {dim}-dimensional vectors')
            if not np.isfinite(vector).all():
                raise _BadRequest(400, '"vector" holds a NaN or infinite value')
        else:
            vector = await self._embed_batch(req.query)
        hits = await asyncio.to_thread(self.searcher.search, vector, k=req.k, filters=filters, columns=columns)
        keep = [*columns, "score"]
        return jsonable_encoder(hits.select(keep).to_pylist())
