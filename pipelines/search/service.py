"""Online lookups: a Ray Serve deployment that answers text queries against one table.

Each replica loads the table's model once; the queries that wait while the model is busy are
embedded together in one forward pass and searched in one index search, with the table's stored
defaults; it answers JSON:

    POST /search   {"query": "how do vaccines work", "k": 5, "filters": {"length_chars": {"op": ">", "value": 500}}}
                   -> {"hits": [{"id": ..., "score": ..., "text": ...}, ...], "table_version": 7}
    GET  /healthz  the replica is up
    GET  /ready    the model is loaded and the table open (503 with the reason otherwise)
    GET  /stats    this replica's counts and times so far: queries embedded, forward passes, searches

``{"vector": [...]}`` instead of ``"query"`` searches by vector. ``filters`` goes through the same
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
"""

import asyncio
import hmac
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve

from connectors import columns as C
from connectors.errors import UserError
from connectors.storage import Storage
from pipelines.config import ServiceConfig
from pipelines.lineage import Lineage
from pipelines.search.filters import build_filter, filters_from_json
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


# ---- one request, on its own: the body, its values, the reply ---------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit``: a chunked body declares no length,
    and reading it whole before counting would take in any size."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(413, f"request body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadRequest(413, f"request body is over the limit of {limit} bytes")
    return bytes(body)


_INT64 = 2**63


def _unfit_scalar(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        digits = str(abs(value))
        shown = digits if len(digits) <= 24 else f"{digits[:8]}... ({len(digits)} digits)"
        return f"{'-' * (value < 0)}{shown} is outside the 64-bit integer range"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text that is not valid UTF-8 (lone surrogate {value[exc.start]!r} at character {exc.start})"
    return None


def _unfit(raw: Any) -> Optional[str]:
    """The first value that JSON allows but a batch cannot take, as ``field: why``: an integer outside
    int64 (Lance refuses the literal, 10**400 overflows a float), NaN or infinity (Python's JSON reads
    them), a string with a lone surrogate (a ``\\ud800`` escape: the tokenizer raises). Found here,
    before the request joins a batch, it fails only its own request. Iterative: no depth limit."""
    todo: list[tuple[str, Any]] = [("", raw)]
    while todo:
        field, value = todo.pop()
        if isinstance(value, dict):
            for key in value:
                if problem := _unfit_scalar(key):
                    return f"{field or 'body'}: a key is {problem}"
            todo.extend((f"{field}.{k}" if field else k, v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            todo.extend((f"{field}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif problem := _unfit_scalar(value):
            return f"{field or 'body'}: {problem}"
    return None


def _parse_request(body: bytes, max_k: int) -> SearchRequest:
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also a 5000-digit integer, nesting 50 000 deep
        raise _BadRequest(400, f"request body is not JSON: {exc}") from None
    if problem := _unfit(raw):
        raise _BadRequest(400, problem)
    try:
        req = SearchRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise _BadRequest(422, problems) from None
    if (req.query is None) == (req.vector is None):
        raise _BadRequest(422, 'give exactly one of "query" (text) and "vector"')
    if req.query is not None and not req.query.strip():
        raise _BadRequest(422, '"query" is empty')
    if not 1 <= req.k <= max_k:
        raise _BadRequest(422, f'"k" must be between 1 and {max_k}, got {req.k}')
    return req


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _jsonable(hits: pa.Table) -> list[dict]:
    """The hits as JSON values, NaN and infinity as null: JSON has no such numbers, and a float
    metadata column that holds one (a missing rating stored as NaN) would fail the whole reply."""
    return _finite(jsonable_encoder(hits.to_pylist()))


# ---- what a client may read, and who may ask ----------------------------------------------------
def _served_columns(lineage: Lineage, schema: pa.Schema, allowed: Optional[list[str]]) -> list[str]:
    """The columns a request may read and filter on: the id, then the allow-list, by default the text
    and the source's metadata columns as the lineage records them. Not the rest of the table: the
    pipeline's own columns say where and when it indexed (``source_file`` is a path on the indexing
    host), and the vector is the table's bulk."""
    source = lineage.source
    wanted = allowed if allowed is not None else [source.text_column, *source.metadata_columns]
    return [c for c in dict.fromkeys([source.id_column, *wanted]) if c in schema.names and c != C.VECTOR]


def _bearer_token(config: ServiceConfig) -> Optional[str]:
    """The token /search and /stats require, from the variable or file the config names (never from
    the config: it is in git and on Serve's dashboard). Named but missing or empty: the replica does
    not start, rather than serve open."""
    if config.auth_token_env:
        where, token = f"environment variable {config.auth_token_env}", os.environ.get(config.auth_token_env, "")
    elif config.auth_token_file:
        where = f"auth_token_file {config.auth_token_file}"
        try:
            token = Path(config.auth_token_file).read_text()
        except OSError as exc:
            raise UserError(f"cannot read {where}: {exc.strerror}") from None
    else:
        return None
    if not token.strip():
        raise UserError(f"{where} is empty or not set on this node: the service would answer without a token")
    return token.strip()


def _unauthorised(request: Request, token: Optional[str]) -> Optional[JSONResponse]:
    """401 with a ``WWW-Authenticate`` challenge unless the request carries ``Bearer <token>``
    (compared in constant time); None when it does or no token is configured."""
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    challenge = 'Bearer realm="embedpipe"' + (', error="invalid_token"' if given else "")
    reason = "wrong bearer token" if given else 'missing "Authorization: Bearer <token>" header'
    return JSONResponse({"error": reason}, status_code=401, headers={"WWW-Authenticate": challenge})


# ---- batching -------------------------------------------------------------------------------------
@dataclass
class _Work:
    """One checked query in a batch: a text to embed or a vector, and what to search with."""

    text: Optional[str]
    vector: Optional[np.ndarray]
    k: int
    where: Optional[str]  # built by build_filter: typed, quoted
    columns: list[str]


class _Batcher:
    """Queries wait while the model is busy and go in together once it is free: no added wait at low
    load, full batches under load.

    Not ``@serve.batch``: it forms a batch from what arrives within ``batch_wait_timeout_s`` of the
    first query, also while the previous batch still runs, so under load the batches stay as small
    as the window (1.8-2.7 queries per forward pass with 32 clients waiting, on the demo table; this
    batcher: 15.8, docs/benchmarks.md) and a longer window delays every query at low load.
    """

    def __init__(self, run: Callable[[list], list], max_size: int):
        self.run = run  # blocking: a batch in, one answer per item out, in order
        self.max_size = max_size
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.busy = False
        self._task: Optional[asyncio.Task] = None  # held: the loop keeps only a weak reference to a task

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((item, future))
        if not self.busy:  # the task starts on the loop's next turn: queries of this turn join it
            self.busy = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[: self.max_size], self.waiting[self.max_size :]
                await self._answer(batch)
        finally:
            self.busy = False

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        """One run for the batch; if it fails, one run per query, so that a query the checks let
        through but the model or Lance refuses fails alone and the others get their answers."""
        try:
            answers = await asyncio.to_thread(self.run, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001  each caller gets its error, none waits for ever
            if len(batch) > 1:
                for one in batch:
                    if not one[1].done():  # a client that went away cancelled its future
                        await self._answer([one])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class TableSearch:
    """One replica: the table, its model, and a batching queue in front of the model."""

    def __init__(self, config: dict):
        self.config = ServiceConfig.model_validate(config)
        c = self.config
        self._token = _bearer_token(c)  # before the model loads: a missing secret fails at once
        storage = Storage.resolve(c.storage, [c.uri, c.model_path])
        self.searcher = Searcher.open(c.uri, c.table, model_path=c.model_path, device=c.device, storage=storage)
        self.searcher.embed_queries(["warm-up"])  # the model is loaded before the replica takes traffic
        self._batcher = _Batcher(self._answer_now, c.max_batch_size)
        self.queries = 0  # embedded, in self.batches forward passes taking self.embed_seconds
        self.batches = 0
        self.embed_seconds = 0.0
        self.searches = 0  # answered, their index searches taking self.search_seconds
        self.search_seconds = 0.0
        self.stale: Optional[str] = None  # why the latest table version is not served
        self._checked = time.monotonic()
        self._refreshing: Optional[asyncio.Task] = None

    # ---- batching: concurrent queries share one forward pass and one index search -----------------
    def _answer_now(self, work: list[_Work]) -> list[pa.Table]:
        """Embed the batch's texts in one pass, then search each group of queries that share k,
        filter and columns (nearly always one group) in one index search."""
        texts = [w.text for w in work if w.text is not None]
        if texts:
            started = time.perf_counter()
            embedded = iter(self.searcher.embed_queries(texts))
            self.embed_seconds += time.perf_counter() - started
            self.queries += len(texts)
            self.batches += 1
        vectors = [w.vector if w.vector is not None else next(embedded) for w in work]
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(work):
            groups.setdefault((w.k, w.where, tuple(w.columns)), []).append(i)
        answers: list = [None] * len(work)
        started = time.perf_counter()
        for (k, where, columns), members in groups.items():
            found = self.searcher.search_many(np.stack([vectors[i] for i in members]), k, where=where, columns=columns)
            for i, hits in zip(members, found):
                answers[i] = hits
        self.search_seconds += time.perf_counter() - started
        self.searches += len(work)
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
        if refusal := _unauthorised(request, self._token):
            return refusal
        return JSONResponse(
            {
                "queries_embedded": self.queries,
                "forward_passes": self.batches,
                "embed_seconds": round(self.embed_seconds, 4),
                "searches": self.searches,
                "search_seconds": round(self.search_seconds, 4),
            }
        )

    @api.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        if refusal := _unauthorised(request, self._token):  # before the body is read
            return refusal
        self._maybe_refresh()
        try:
            if self.stale:
                raise _BadRequest(503, f"not ready: {self.stale}")
            req = _parse_request(await _read_body(request, self.config.max_body_bytes), self.config.max_k)
            hits = await self._search(req)
        except _BadRequest as exc:
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
            raise _BadRequest(400, f"unknown or not served column(s) {names}; served columns: {', '.join(served)}")
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
                raise _BadRequest(400, f'"vector" has {vector.size} values, the table holds {dim}-dimensional vectors')
            if not np.isfinite(vector).all():
                raise _BadRequest(400, '"vector" holds a value beyond the float32 range')
        work = _Work(req.query if vector is None else None, vector, req.k, where, columns)
        try:
            hits = await self._batcher.submit(work)
        except UserError:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:  # refused alone (Lance, the tokenizer)
            log.warning("query refused: %s", exc, exc_info=True)
            raise _BadRequest(400, f"this query could not be answered: {exc}") from None
        return _jsonable(hits.select([*columns, C.SCORE]))
