"""The query service (infra/serve/search.yaml) on its own Ray head, over HTTP: the same hits as
``jobs.query`` (text and hybrid modes: as ``Searcher.search``), concurrent queries batched, 4xx for
bad requests (alone, never their batch), only the served columns, a bearer token, and a new table
version served without a restart."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.ray_head import LocalRayHead, free_port

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["how do vaccines work", "rivers of europe", "the history of the printing press"]
TOKEN = "test-token-0123456789"


def _docs(sample_table, start: int, n: int) -> pa.Table:
    """Documents with a float metadata column that holds NaN and infinity (a rating not given)."""
    docs = sample_table.slice(start, n).select(["id", "title", "text", "length_chars"])
    rating = pc.divide(docs.column("length_chars").cast(pa.float64()), 100.0).to_pylist()
    rating = [math.nan if i % 3 == 0 else math.inf if i % 7 == 0 else r for i, r in enumerate(rating)]
    return docs.append_column("rating", pa.array(rating, pa.float64()))


def _index_in_this_process(corpus: Path, db: Path, *extra: str) -> None:
    """The service's table, built (and upserted) on the session's Ray in this process: its making is
    not under test here (a ``python -m jobs.index`` process and its Ray job workers cost ~10 s more)."""
    from pipelines.config import load_config
    from pipelines.run.runner import run_index

    sets = [f"source.path={corpus}", f"sink.uri={db}", "sink.table=docs"]
    run_index(load_config(overrides=[*sets, "source.metadata_columns=[title, length_chars, rating]", *extra]))


def _call(url: str, body=None, *, raw: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    return _request(url, body, raw=raw, token=token)[::2]


def _request(url: str, body=None, *, raw: bytes | None = None, token: str | None = TOKEN) -> tuple[int, dict, dict]:
    """(status, headers, JSON body); ``token`` goes in an ``Authorization: Bearer`` header."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, got, text = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, got, text = err.code, err.headers, err.read()
    try:
        return status, {k.lower(): v for k, v in got.items()}, json.loads(text)
    except ValueError:  # Serve's proxy answers plain text while the application deploys
        return status, {k.lower(): v for k, v in got.items()}, {"error": text.decode(errors="replace")}


def _unended_chunked_search(url: str, size: int) -> bytes:
    """The reply to a chunked POST /search whose body passes ``size`` bytes and never ends: only a
    limit kept while reading answers it (reading the whole body first waits for ever)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /search HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + f"{size:x}\r\n".encode() + b"x" * size + b"\r\n")
        # The headers and the body may come in separate packets (seen: a first recv of the headers
        # alone): read until the body's Content-Length is in, or the server closes.
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            headers, sep, body = reply.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", headers)
            if sep and length and len(body) >= int(length.group(1)):
                break
        return reply


def _job_query(db: Path, texts: list[str], k: int, tmp_path: Path) -> dict[str, list[dict]]:
    """jobs.query --json's hits for each text: its command line run in this process
    (helpers/job_main.py), the same output as its process's, without a Python start."""
    from helpers.job_main import run_job_main
    from jobs.query import main as query_main

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    argv = ["--uri", db, "--table", "docs", "-k", k, "--json", "--queries", queries]
    done = run_job_main(query_main, argv)
    assert done.returncode == 0, done.stderr[-3000:]
    hits = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {t: [h for h in hits if h["query"] == t] for t in texts}


@pytest.fixture
def service(ray_cluster, sample_table, tmp_path):
    """A table of 200 documents and the service on it, on a head of its own; yields (url, db, corpus)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(_docs(sample_table, 0, 200), corpus / "part-0.parquet")
    db = tmp_path / "db"
    _index_in_this_process(corpus, db)
    (tmp_path / "token").write_text(TOKEN + "\n")  # a mounted secret; the YAML names only its path
    head = LocalRayHead(num_cpus=1)  # the replica's; the jobs here run on the session's Ray
    serve_proc = None
    try:
        env = {**head.env, "RAY_ADDRESS": f"127.0.0.1:{head.gcs_port}", "HF_HUB_OFFLINE": "1"}
        config = yaml.safe_load((ROOT / "infra/serve/search.yaml").read_text())
        port = free_port()
        config["http_options"] = {"host": "127.0.0.1", "port": port}
        app = config["applications"][0]
        app["args"].update(uri=str(db), table="docs", refresh_seconds=2, max_k=50, max_body_bytes=4096)
        app["args"]["auth_token_file"] = str(tmp_path / "token")
        (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
        serve_log = open(tmp_path / "serve.log", "w")
        serve_proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", str(tmp_path / "search.yaml")],
            cwd=ROOT,
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while time.time() < deadline:
            assert serve_proc.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
            try:
                if _call(f"{url}/ready")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        else:
            pytest.fail("service not ready in 240 s:\n" + (tmp_path / "serve.log").read_text()[-4000:])
        yield url, db, corpus
    finally:
        if serve_proc is not None:
            serve_proc.terminate()  # `serve run` shuts its application down on SIGTERM/SIGINT
            try:
                serve_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve_proc.kill()
        head.stop()


def test_query_service_answers_like_the_query_job_batches_and_refuses_bad_requests(service, sample_table, tmp_path):
    url, db, corpus = service
    assert _call(f"{url}/healthz", token=None) == (200, {"status": "ok"})  # probes carry no token
    status, ready = _call(f"{url}/ready", token=None)
    assert status == 200 and ready["ready"] and ready["dimension"] == 384

    # Same hits as jobs.query (same model, prompt, index defaults), one request at a time.
    expected = _job_query(db, QUERIES, 5, tmp_path)
    assert all(len(expected[q]) == 5 for q in QUERIES), expected
    for q in QUERIES:
        status, body = _call(f"{url}/search", {"query": q, "k": 5})
        assert status == 200, body
        assert [h["id"] for h in body["hits"]] == [h["id"] for h in expected[q]]
        for hit, want in zip(body["hits"], expected[q]):
            assert abs(hit["score"] - want["score"]) < 1e-4
            assert set(hit) == {"id", "text", "score"}

    # Text and hybrid modes: the same hits as Searcher.search on the same table (hybrid ones with found_by),
    # also with filters and columns, also when they arrive together with vector queries.
    from pipelines.search.searcher import Searcher

    searcher = Searcher.open(str(db), "docs")
    wanted = {
        (m, q): searcher.search(q, 5, mode=m, columns=["id", "text"]) for m in ("text", "hybrid") for q in QUERIES
    }
    for (mode, q), want in wanted.items():
        status, body = _call(f"{url}/search", {"query": q, "k": 5, "mode": mode})
        assert status == 200, body
        assert [h["id"] for h in body["hits"]] == want.column("id").to_pylist(), (mode, q, body)
        assert [h["score"] for h in body["hits"]] == pytest.approx(want.column("score").to_pylist(), abs=1e-4)
        fields = {"id", "text", "score", *(["found_by"] if mode == "hybrid" else [])}
        assert all(set(h) == fields for h in body["hits"]), body
        if mode == "hybrid":
            assert [h["found_by"] for h in body["hits"]] == want.column("found_by").to_pylist()
    assert all(wanted["text", q].num_rows for q in QUERIES)  # the words are in the table: a real test
    assert any("vector,text" in wanted["hybrid", q].column("found_by").to_pylist() for q in QUERIES)
    gt = {"length_chars": {"op": ">", "value": 600}}
    request = {"query": QUERIES[1], "k": 10, "mode": "hybrid", "filters": gt, "columns": ["length_chars"]}
    want = searcher.search(QUERIES[1], 10, mode="hybrid", filters={"length_chars": (">", 600)}, columns=["id"])
    status, body = _call(f"{url}/search", request)
    assert status == 200 and [h["id"] for h in body["hits"]] == want.column("id").to_pylist(), body
    assert all(h["length_chars"] > 600 and set(h) == {"id", "length_chars", "score", "found_by"} for h in body["hits"])
    fused = {"query": QUERIES[0], "k": 5, "mode": "hybrid", "rrf_k": 5, "text_weight": 0.8}
    want = searcher.search(QUERIES[0], 5, mode="hybrid", rrf_k=5, text_weight=0.8, columns=["id"])
    status, body = _call(f"{url}/search", fused)
    assert status == 200 and [h["id"] for h in body["hits"]] == want.column("id").to_pylist(), body
    assert [h["score"] for h in body["hits"]] == pytest.approx(want.column("score").to_pylist(), abs=1e-4)
    before = _call(f"{url}/stats")[1]["searches_by_mode"]
    mixed_modes = [(m, q) for m in ("vector", "text", "hybrid") for q in QUERIES] * 3
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: _call(f"{url}/search", {"query": r[1], "k": 5, "mode": r[0]}), mixed_modes))
    for (mode, q), (status, body) in zip(mixed_modes, answers):
        ids = [h["id"] for h in expected[q]] if mode == "vector" else wanted[mode, q].column("id").to_pylist()
        assert status == 200 and [h["id"] for h in body["hits"]] == ids, (mode, q, body)
    after = _call(f"{url}/stats")[1]["searches_by_mode"]
    assert {m: after[m] - before[m] for m in after} == {"vector": 9, "text": 9, "hybrid": 9}

    # Concurrent queries share forward passes and each still gets its own hits.
    before = _call(f"{url}/stats")[1]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: _call(f"{url}/search", {"query": q, "k": 5}), QUERIES * 16))
    for q, (status, body) in zip(QUERIES * 16, answers):
        assert status == 200, body
        assert [h["id"] for h in body["hits"]] == [h["id"] for h in expected[q]]
    after = _call(f"{url}/stats")[1]
    queries = after["queries_embedded"] - before["queries_embedded"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert queries == 48 and passes < queries / 2, after

    # Filters through the safe builder, by text and by vector; selected columns.
    status, body = _call(f"{url}/search", {"query": QUERIES[0], "k": 10, "filters": gt, "columns": ["length_chars"]})
    assert status == 200 and body["hits"], body
    assert all(h["length_chars"] > 600 and set(h) == {"id", "length_chars", "score"} for h in body["hits"])
    status, body = _call(f"{url}/search", {"query": QUERIES[0], "filters": {"title": "x' OR 1=1 --"}})
    assert (status, body["hits"]) == (200, [])
    vector = [0.0] * 384
    vector[0] = 1.0
    assert _call(f"{url}/search", {"vector": vector, "k": 3})[0] == 200

    bad = [
        ({"query": "q", "filters": {"nope": 1}}, 400, "nope"),
        ({"query": "q", "filters": {"length_chars": "500"}}, 400, "length_chars"),
        ({"query": "q", "filters": {"length_chars": {"op": "LIKE", "value": 1}}}, 400, "LIKE"),
        ({"query": "q", "columns": ["secret"]}, 400, "secret"),
        ({"query": "q", "columns": ["vector"]}, 400, "vector"),
        ({"vector": [0.1] * 12}, 400, "384"),
        ({"query": "q", "k": 0}, 422, "k"),
        ({"query": "q", "k": 51}, 422, "50"),
        ({"query": "q", "k": "ten"}, 422, "k"),
        ({"query": "q", "vector": vector}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"query": "  "}, 422, "empty"),
        ({"query": "q", "limit": 3}, 422, "limit"),
        ({"query": "x" * 5000}, 413, "4096"),
        ({"query": "q", "mode": "keyword"}, 400, '"mode" must be one of vector, text, hybrid'),
        ({"query": "q", "mode": 2}, 422, "mode"),
        ({"vector": vector, "mode": "hybrid"}, 422, "hybrid search looks for words"),
        ({"query": "q", "rrf_k": 10}, 422, '"rrf_k" set the hybrid search\'s fusion, not a vector search'),
        ({"query": "q", "mode": "hybrid", "text_weight": 1.5}, 422, '"text_weight" must be between 0 and 1'),
    ]
    for request, code, word in bad:
        status, body = _call(f"{url}/search", request)
        assert (status, word in body.get("error", "")) == (code, True), (request, status, body)
    status, body = _call(f"{url}/search", raw=b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    reply = _unended_chunked_search(url, 5000)  # no Content-Length: the limit holds while reading
    assert reply.startswith(b"HTTP/1.1 413") and b"4096" in reply, reply

    # Each request is checked on its own: bad ones sent among good ones fail alone, 400 naming the field or
    # the reason (before: Lance refused 10**30, the tokenizer "\ud800", and every query batched with them
    # got a 500).
    huge = {"op": ">", "value": 10**400}
    bad_values = [
        ({"query": "\ud800 vaccines"}, "query"),
        ({"query": QUERIES[1], "filters": {"length_chars": 10**30}}, "filters.length_chars"),
        ({"query": QUERIES[2], "filters": {"length_chars": huge}}, "filters.length_chars.value"),
        ({"query": QUERIES[0], "filters": {"rating": math.nan}}, "filters.rating"),  # json.dumps writes NaN
        # Within int64, but Lance reads the literal -9223372036854775808 as a float and refuses it: the
        # checks let it through, its batch fails, and the batch is answered query by query.
        ({"query": QUERIES[1], "filters": {"length_chars": -(2**63)}}, "this query could not be answered"),
    ]
    mixed = [({"query": q, "k": 5}, q) for q in QUERIES * 6]
    mixed[1::4] = bad_values
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: _call(f"{url}/search", r[0]), mixed))
    for (request, want), (status, body) in zip(mixed, answers):
        if want in QUERIES:
            assert status == 200 and [h["id"] for h in body["hits"]] == [h["id"] for h in expected[want]], body
        else:
            assert status == 400 and body["error"].startswith(want + ":"), (request, status, body)

    # NaN and infinity in a float column come back as null; the bookkeeping columns are not served.
    status, body = _call(f"{url}/search", {"query": QUERIES[0], "k": 50, "columns": ["title", "rating"]})
    assert status == 200 and len(body["hits"]) == 50, body
    ratings = [h["rating"] for h in body["hits"]]
    assert None in ratings and all(r is None or 0 < r < 1e6 for r in ratings), ratings
    for hidden in ["source_file", "run_id", "content_hash"]:
        status, body = _call(f"{url}/search", {"query": "q", "columns": ["title", hidden]})
        assert status == 400 and hidden in body["error"] and "source_file" not in body["error"].split(";")[1], body
        status, body = _call(f"{url}/search", {"query": "q", "filters": {hidden: "x"}})
        assert status == 400 and hidden in body["error"], body

    # The bearer token (from auth_token_file): /search and /stats need it, /healthz and /ready do not.
    for token, challenge in [(None, 'Bearer realm="embedpipe"'), ("wrong", 'error="invalid_token"')]:
        for path, request in [("/search", {"query": "q"}), ("/stats", None)]:
            status, headers, body = _request(f"{url}{path}", request, token=token)
            assert status == 401 and challenge in headers.get("www-authenticate", ""), (path, status, headers)

    # A new version (an upsert of new documents) is served without a restart, within refresh_seconds.
    version = ready["table_version"]
    new = _docs(sample_table, 200, 5)
    pq.write_table(new, corpus / "part-1.parquet")
    _index_in_this_process(corpus, db, "sink.mode=upsert")
    target = new.column("text")[0].as_py()
    deadline, body = time.time() + 30, {}
    while time.time() < deadline:
        status, body = _call(f"{url}/search", {"query": target[:2000], "k": 1})
        if status == 200 and body["table_version"] > version and body["hits"][0]["id"] == new.column("id")[0].as_py():
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"the upserted version was not served within 30 s (refresh_seconds=2): {body}")

    # A version whose lineage records no full-text index (a table of before index.fts): text and hybrid
    # requests get 400 with the reason once it is served, vector ones their hits as before.
    from connectors.lance.metadata import read_lineage, write_lineage
    from pipelines.lineage import LineageMismatchError

    lineage = read_lineage(str(db), "docs")
    write_lineage(str(db), "docs", {**lineage, "index": {k: v for k, v in lineage["index"].items() if k != "fts"}})
    deadline = time.time() + 30
    while time.time() < deadline:
        status, body = _call(f"{url}/search", {"query": QUERIES[0], "mode": "hybrid"})
        if status != 200:
            break
        time.sleep(0.25)
    # The first refusal may come from Searcher.search itself (the version changed while the request
    # waited in the batch, after the service's check); once the version is served, the check answers.
    assert status == 400 and "needs the table's full-text index" in body["error"], body
    status, body = _call(f"{url}/search", {"query": QUERIES[0], "mode": "text"})
    assert status == 400 and body["error"].startswith('"mode": a text search needs'), body
    assert "table 'docs' has none" in body["error"] and "index.fts=true" in body["error"], body
    assert _call(f"{url}/search", {"query": QUERIES[0], "k": 3})[0] == 200

    # A version that records another model is never served with the loaded one: 503 with the reason.
    searcher = Searcher.open(str(db), "docs")
    lineage = read_lineage(str(db), "docs")
    fingerprint = lineage["model"]["fingerprint"]
    lineage["model"]["fingerprint"] = fingerprint[:-1] + ("0" if fingerprint[-1] != "0" else "1")  # other weights
    write_lineage(str(db), "docs", lineage)
    with pytest.raises(LineageMismatchError, match="model.fingerprint"):
        searcher.refresh()
    deadline = time.time() + 30
    while time.time() < deadline:
        status, body = _call(f"{url}/ready")
        if status == 503:
            break
        time.sleep(0.5)
    assert status == 503 and "model.fingerprint" in body.get("reason", body.get("error", "")), body


def test_a_job_beside_a_service_that_leaves_too_few_cpus_fails_at_once_naming_them(ray_cluster, corpus_dir, tmp_path):
    """Before: the job planned with the cluster's total CPUs; with a service holding one of two, its
    encoder took the last CPU and its read tasks waited for ever (a daily upsert hung for 10 minutes
    beside the query service)."""
    import ray

    from pipelines.config import ConfigError, load_config
    from pipelines.run.runner import run_index

    @ray.remote(num_cpus=1)
    class Replica:
        def ping(self) -> bool:
            return True

    replica = Replica.remote()
    try:
        assert ray.get(replica.ping.remote(), timeout=60)
        config = load_config(overrides=[f"source.path={corpus_dir}", f"sink.uri={tmp_path / 'db'}"])
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"1 CPUs free \(1 held by others.*compute.cpus_per_actor"):
            run_index(config)
        assert time.monotonic() - started < 120
    finally:
        ray.kill(replica)
