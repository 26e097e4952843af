"""One query-service request on its own, before it joins a batch: the body read within its limit, its
values checked, its fields validated, and the reply's hits made JSON (NaN and infinity as null).

A request the service cannot answer as asked gets a :class:`BadRequest` with a 4xx status and the
reason, never a 500 (docs/serving.md).
"""

import json
import math
from typing import Annotated, Any, Optional

import pyarrow as pa
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictInt, ValidationError

from pipelines.search.searcher import SEARCH_MODES


def _a_number(value: Any) -> Any:
    """A JSON number, not ``true`` or ``"0.5"`` (which pydantic's lax float would take)."""
    if isinstance(value, (bool, str)):
        raise ValueError("must be a JSON number")
    return value


class SearchRequest(BaseModel):
    """One query: a text (embedded with the table's query prompt) or a vector, never both; ``mode``
    says how it is searched (:data:`~pipelines.search.searcher.SEARCH_MODES`), text and hybrid by text."""

    model_config = ConfigDict(extra="forbid")

    query: Optional[str] = None
    vector: Optional[list[float]] = None
    k: int = 10
    filters: Optional[dict[str, Any]] = None
    columns: Optional[list[str]] = None
    mode: str = "vector"
    # Strict, as Searcher.search takes them: JSON true is not the rank constant 1, nor "5" or 5.0 a whole number.
    rrf_k: Optional[StrictInt] = None  # hybrid only: the fusion's rank constant (default 60)
    text_weight: Optional[Annotated[float, BeforeValidator(_a_number)]] = None  # hybrid only: the text share, 0 to 1

    @property
    def fusion(self) -> dict[str, Any]:
        """The fusion settings given, as ``Searcher.search`` takes them (``{}`` when none)."""
        return {name: getattr(self, name) for name in ("rrf_k", "text_weight") if getattr(self, name) is not None}


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit``: a chunked body declares no length,
    and reading it whole before counting would take in any size."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body of {declared} bytes is over the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body is over the limit of {limit} bytes")
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


def parse_request(body: bytes, max_k: int) -> SearchRequest:
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also a 5000-digit integer, nesting 50 000 deep
        raise BadRequest(400, f"request body is not JSON: {exc}") from None
    if problem := _unfit(raw):
        raise BadRequest(400, problem)
    try:
        req = SearchRequest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(422, problems) from None
    if (req.query is None) == (req.vector is None):
        raise BadRequest(422, 'give exactly one of "query" (text) and "vector"')
    if req.query is not None and not req.query.strip():
        raise BadRequest(422, '"query" is empty')
    if req.mode not in SEARCH_MODES:
        raise BadRequest(400, f'"mode" must be one of {", ".join(SEARCH_MODES)}, got {req.mode!r}')
    if req.mode != "vector" and req.query is None:
        raise BadRequest(422, f'a {req.mode} search looks for words: give "query" (text), not "vector"')
    if req.fusion and req.mode != "hybrid":
        given = " and ".join(f'"{name}"' for name in req.fusion)
        raise BadRequest(422, f"{given} set the hybrid search's fusion, not a {req.mode} search")
    if req.rrf_k is not None and req.rrf_k < 1:
        raise BadRequest(422, f'"rrf_k" must be >= 1, got {req.rrf_k}')
    if req.text_weight is not None and not 0.0 <= req.text_weight <= 1.0:
        raise BadRequest(422, f'"text_weight" must be between 0 and 1, got {req.text_weight}')
    if not 1 <= req.k <= max_k:
        raise BadRequest(422, f'"k" must be between 1 and {max_k}, got {req.k}')
    return req


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def jsonable(hits: pa.Table) -> list[dict]:
    """The hits as JSON values, NaN and infinity as null: JSON has no such numbers, and a float
    metadata column that holds one (a missing rating stored as NaN) would fail the whole reply."""
    return _finite(jsonable_encoder(hits.to_pylist()))
