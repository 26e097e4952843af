"""The query service's request handling without Serve: each request checked on its own, a failing
batch answered query by query, the body limit kept while reading, NaN as null, the bearer token and
the served columns. The same code the deployment runs (tests/integration/test_query_service.py
drives it over HTTP)."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest
from fastapi.responses import JSONResponse
from starlette.requests import Request

from connectors.errors import UserError
from pipelines.config import ConfigError, ServiceConfig
from pipelines.lineage import Lineage
from pipelines.search import auth, service
from pipelines.search.batcher import Batcher
from pipelines.search.requests import BadRequest, jsonable, parse_request, read_body


def _refused(body: bytes, max_k: int = 100) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_request(body, max_k)
    return caught.value


def test_a_failing_batch_is_answered_query_by_query_so_only_the_bad_one_fails():
    """Before: the batch's error went to every query in it (a tokenizer TypeError for one lone
    surrogate, a filter literal Lance refused: 500 for all)."""
    runs: list[list[str]] = []

    def run(batch: list[str]) -> list[str]:
        runs.append(batch)
        if "bad" in batch:
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return [item.upper() for item in batch]

    async def main():
        batcher = Batcher(run, max_size=8)
        return await asyncio.gather(*(batcher.submit(q) for q in ["a", "bad", "c"]), return_exceptions=True)

    a, bad, c = asyncio.run(main())
    assert (a, c) == ("A", "C")
    assert isinstance(bad, TypeError) and "TextEncodeInput" in str(bad)
    assert runs[0] == ["a", "bad", "c"]  # together first: one forward pass when nothing is wrong
    assert sorted(map(tuple, runs[1:])) == [("a",), ("bad",), ("c",)]


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"query": "q", "filters": {"length_chars": 1000000000000000000000000000000}}', "filters.length_chars"),
        (
            b'{"query": "q", "filters": {"length_chars": {"op": ">", "value": 1' + b"0" * 400 + b"}}}",
            "filters.length_chars.value",
        ),  # noqa: E501
        (b'{"query": "q", "filters": {"length_chars": [1, -99999999999999999999]}}', "filters.length_chars[1]"),
        (b'{"query": "\\ud800 vaccines"}', "query"),
        (b'{"query": "q", "filters": {"title": "\\udfff"}}', "filters.title"),
        (b'{"query": "q", "filters": {"\\ud800": 1}}', "filters"),
        (b'{"query": "q", "columns": ["title", "\\ud800"]}', "columns[1]"),
        (b'{"vector": [0.5, NaN]}', "vector[1]"),
        (b'{"query": "q", "filters": {"length_chars": {"op": ">", "value": -Infinity}}}', "filters.length_chars.value"),
    ],
)
def test_values_json_allows_but_lance_or_the_model_cannot_take_are_400_naming_the_field(body, field):
    """Before: these passed the checks and failed in the batch (Lance: "could not convert to literal";
    10**400: OverflowError; tokenizer: TypeError), a 500 for every query batched with them."""
    bad = _refused(body)
    assert bad.status == 400 and bad.reason.startswith(field + ":"), bad.reason
    json.dumps(bad.reason).encode()  # the reason itself is valid UTF-8 to send back
    bad.reason.encode("utf-8")


def test_bodies_json_itself_cannot_read_are_400_not_500():
    """A 5000-digit integer (Python refuses to read it: ValueError) and deep nesting (RecursionError)
    fit in the body limit and were 500s."""
    digits = _refused(b'{"query": "q", "k": ' + b"1" * 5000 + b"}")
    deep = _refused(b'{"query": "q", "filters": {"title": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}")
    assert (digits.status, deep.status) == (400, 400)
    assert "not JSON" in digits.reason and "not JSON" in deep.reason


def test_the_search_mode_defaults_to_vector_and_a_bad_one_is_refused_naming_the_allowed_modes():
    assert parse_request(b'{"query": "q"}', 10).mode == "vector"
    assert parse_request(b'{"query": "q", "mode": "hybrid"}', 10).mode == "hybrid"
    assert parse_request(b'{"query": "q", "mode": "text"}', 10).mode == "text"
    assert parse_request(b'{"vector": [0.5], "mode": "vector"}', 10).mode == "vector"
    bad = _refused(b'{"query": "q", "mode": "keyword"}')
    assert bad.status == 400 and bad.reason == "\"mode\" must be one of vector, text, hybrid, got 'keyword'"
    assert _refused(b'{"query": "q", "mode": "Hybrid"}').status == 400  # modes are lower case, as in jobs.query
    not_text = _refused(b'{"query": "q", "mode": 3}')
    assert not_text.status == 422 and not_text.reason.startswith("mode:")  # the wrong shape, like "k": "ten"
    for mode in ("text", "hybrid"):  # they look for words: a vector alone has none
        words = _refused(b'{"vector": [0.5], "mode": "%s"}' % mode.encode())
        assert words.status == 422 and f"a {mode} search looks for words" in words.reason


def test_the_fusion_settings_belong_to_hybrid_requests_and_are_checked():
    req = parse_request(b'{"query": "q", "mode": "hybrid", "rrf_k": 5, "text_weight": 0.25}', 10)
    assert (req.rrf_k, req.text_weight) == (5, 0.25)
    assert (parse_request(b'{"query": "q"}', 10).rrf_k, parse_request(b'{"query": "q"}', 10).text_weight) == (None,) * 2
    for body, reason in (
        (b'{"query": "q", "rrf_k": 5}', '"rrf_k" set the hybrid search\'s fusion, not a vector search'),
        (b'{"query": "q", "mode": "text", "rrf_k": 5, "text_weight": 0.5}', '"rrf_k" and "text_weight" set'),
        (b'{"query": "q", "mode": "hybrid", "rrf_k": 0}', '"rrf_k" must be >= 1, got 0'),
        (b'{"query": "q", "mode": "hybrid", "text_weight": -0.5}', '"text_weight" must be between 0 and 1, got -0.5'),
        (b'{"query": "q", "mode": "hybrid", "text_weight": "a lot"}', "text_weight:"),
    ):
        refused = _refused(body)
        assert refused.status == 422 and refused.reason.startswith(reason), (body, refused.reason)


def test_nan_and_infinity_in_a_float_column_are_null_in_the_answer():
    """Before: a NaN in a float metadata column made the JSON reply fail (500, "Out of range float
    values are not JSON compliant")."""
    hits = pa.table(
        {
            "id": ["a", "b", "c"],
            "rating": [float("nan"), float("inf"), 2.5],
            "tags": [[1.0, float("-inf")], [], None],
            "score": pa.array([0.9, 0.8, float("nan")], pa.float32()),
        }
    )
    body = json.loads(JSONResponse({"hits": jsonable(hits)}).body)
    assert body["hits"] == [
        {"id": "a", "rating": None, "tags": [1.0, None], "score": pytest.approx(0.9)},
        {"id": "b", "rating": None, "tags": [], "score": pytest.approx(0.8)},
        {"id": "c", "rating": 2.5, "tags": None, "score": None},
    ]


def _chunked_request(chunk: bytes, chunks: int, headers: list[tuple[bytes, bytes]]):
    """A Starlette request whose body arrives in ``chunks`` pieces; ``pulled`` counts those read."""
    pulled = [0]

    async def receive():
        pulled[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled[0] < chunks}

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers, "query_string": b""}
    return Request(scope, receive), pulled


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    """Before: a body sent without Content-Length was read whole (20 MB here) before the 413."""
    request, pulled = _chunked_request(b"x" * 1024, 20 * 1024, [(b"transfer-encoding", b"chunked")])
    with pytest.raises(BadRequest) as caught:
        asyncio.run(read_body(request, 4096))
    assert caught.value.status == 413 and "4096" in caught.value.reason
    assert pulled[0] == 5  # the fifth KiB passed the limit: nothing after it was read

    request, _ = _chunked_request(b"y" * 1000, 4, [])
    assert asyncio.run(read_body(request, 4096)) == b"y" * 4000
    request, pulled = _chunked_request(b"z", 1, [(b"content-length", b"999999")])
    with pytest.raises(BadRequest, match="999999 bytes"):
        asyncio.run(read_body(request, 4096))
    assert pulled[0] == 0  # a declared length over the limit: refused before reading


def test_the_token_comes_from_the_named_variable_or_file_and_a_missing_one_stops_the_replica(tmp_path, monkeypatch):
    assert auth.bearer_token(ServiceConfig()) is None
    monkeypatch.setenv("SEARCH_TOKEN", " s3cret\n")
    assert auth.bearer_token(ServiceConfig(auth_token_env="SEARCH_TOKEN")) == "s3cret"
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert auth.bearer_token(ServiceConfig(auth_token_file=str(secret))) == "from-a-file"
    monkeypatch.delenv("SEARCH_TOKEN")
    with pytest.raises(UserError, match="SEARCH_TOKEN"):  # fail closed: never serve open by accident
        auth.bearer_token(ServiceConfig(auth_token_env="SEARCH_TOKEN"))
    with pytest.raises(UserError, match="nowhere"):
        auth.bearer_token(ServiceConfig(auth_token_file=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="auth_token_env.*auth_token_file|auth_token_file.*auth_token_env"):
        ServiceConfig.load({"auth_token_env": "SEARCH_TOKEN", "auth_token_file": str(secret)})
    with pytest.raises(ConfigError, match="auth_token_env"):
        ServiceConfig.load({"auth_token_env": "not a name"})


@pytest.mark.parametrize(
    "header, ok",
    [
        (None, False),
        ("Bearer s3cret", True),
        ("bearer s3cret", True),
        ("Bearer s3cre", False),
        ("Bearer s3cretX", False),
        ("Basic s3cret", False),
        ("Bearer \u00e9t\u00e9", False),  # not ASCII: compared as bytes, refused, no TypeError
    ],
)
def test_only_the_right_bearer_token_passes_and_a_refusal_says_how_to_authenticate(header, ok):
    headers = [(b"authorization", header.encode("latin-1"))] if header else []
    request = Request({"type": "http", "method": "GET", "path": "/stats", "headers": headers, "query_string": b""})
    refusal = auth.unauthorised(request, "s3cret")
    if ok:
        assert refusal is None
    else:
        assert refusal.status_code == 401 and refusal.headers["www-authenticate"].startswith("Bearer")
    assert auth.unauthorised(request, None) is None  # no token configured: open


def test_the_served_columns_default_to_id_text_and_the_sources_metadata_never_the_bookkeeping():
    schema = pa.schema(
        [(n, pa.string()) for n in ["id", "text", "title", "source_file", "run_id", "content_hash", "doc_id"]]
        + [("vector", pa.list_(pa.float32(), 4)), ("length_chars", pa.int32())]
    )
    source = {"id_column": "id", "text_column": "text", "metadata_columns": ["title", "length_chars"]}
    lineage = Lineage.parse({"dimension": 4, "source": source})
    assert service._served_columns(lineage, schema, None) == ["id", "text", "title", "length_chars"]
    assert service._served_columns(lineage, schema, ["title"]) == ["id", "title"]  # narrowed: no text
    assert service._served_columns(lineage, schema, ["doc_id", "gone"]) == ["id", "doc_id"]  # named others
    with pytest.raises(ConfigError, match="vector"):
        ServiceConfig.load({"columns": ["title", "vector"]})


def test_a_boolean_rrf_k_is_refused_as_searcher_search_refuses_it():
    """``Searcher.search(rrf_k=True)`` is a SearchModeError ('a whole number'); the service's pydantic
    model (lax) reads ``"rrf_k": true`` as rrf_k=1 (the sharpest fusion there is) and searches with it:
    the same setting means different things through the two doors."""
    assert _refused(b'{"query": "q", "mode": "hybrid", "rrf_k": true}').status == 422
    for body in (b'"rrf_k": 5.0', b'"rrf_k": "5"', b'"text_weight": true', b'"text_weight": "0.5"'):
        assert _refused(b'{"query": "q", "mode": "hybrid", ' + body + b"}").status == 422, body
    req = parse_request(b'{"query": "q", "mode": "hybrid", "rrf_k": 5, "text_weight": 1}', 10)
    assert req.fusion == {"rrf_k": 5, "text_weight": 1}  # JSON numbers as they are meant
