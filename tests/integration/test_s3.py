"""S3 end to end against a real S3-compatible server on 127.0.0.1 (moto over HTTP, IAM checking on).

A Hive-partitioned corpus of real documents is indexed from the bucket into a LanceDB table in the
bucket, the index is built there and queried from there. Ray starts before the AWS variables are
set, so its workers never see them: everything they need travels with the job, as it must with
``ray job submit`` onto a cluster whose nodes have no such variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lance.metadata import read_lineage
from connectors.model_store import ModelNotFoundError, model_fingerprint
from connectors.parquet_source import SourceError
from connectors.storage import Storage, StorageError
from helpers.job_main import run_job_main
from helpers.s3_server import Proxy
from jobs.index import main as index_main
from jobs.query import main as query_main
from pipelines.config import ConfigError, load_config
from pipelines.run.preflight import preflight
from pipelines.run.runner import run_index
from pipelines.search.searcher import Searcher

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "corpora"
CORPUS = f"s3://{BUCKET}/wiki/"
DB = f"s3://{BUCKET}/lancedb"
MODEL = f"s3://{BUCKET}/models/tiny-bert"
PARTS = {  # folder -> files -> slice of the sample corpus
    "date=2026-11-27": {"part-0.parquet": (600, 16)},
    "date=2026-11-28": {"part-0.parquet": (616, 16), "part-1.parquet": (632, 16)},
}


@pytest.fixture(scope="module")
def aws(ray_cluster, s3_server, tmp_path_factory):
    """The standard AWS variables pointing at the test server, set only after Ray has started."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        mp.setenv("EMBEDPIPE_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield s3_server


@pytest.fixture(scope="module")
def corpus(aws, sample_table, tiny_bert_dir) -> dict[str, str]:
    """Upload the partitioned corpus, the tiny model and the broken inputs; returns id -> date."""
    aws.client().create_bucket(Bucket=BUCKET)
    fs = aws.filesystem()
    docs = sample_table.select(["id", "title", "text"])
    docs = docs.cast(pa.schema([f.with_nullable(True) for f in docs.schema]))
    dates = {}
    for folder, files in PARTS.items():
        for name, (start, n) in files.items():
            part = docs.slice(start, n)
            if name == "part-1.parquet":  # one row the pipeline must reject, not drop
                part = pa.concat_tables(
                    [part, pa.table({"id": ["bad-null"], "title": ["t"], "text": [None]}, schema=docs.schema)]
                )
            with fs.open(f"{BUCKET}/wiki/{folder}/{name}", "wb") as fh:
                pq.write_table(part, fh)
            date = folder.split("=", 1)[1]
            dates.update({i: date for i in part.column("id").to_pylist() if not i.startswith("bad-")})
    fs.pipe(f"{BUCKET}/wiki/README.txt", b"not data: listing must skip it\n")
    fs.put(str(tiny_bert_dir), f"{BUCKET}/models/tiny-bert", recursive=True)
    # Broken inputs, one per error the preflight must name.
    fs.pipe(f"{BUCKET}/csv-only/a.csv", b"id,text\n1,hello\n")
    fs.pipe(f"{BUCKET}/not-parquet/part-0.parquet", b"id,text\n1,hello\n")
    with fs.open(f"{BUCKET}/no-text/part-0.parquet", "wb") as fh:
        pq.write_table(pa.table({"id": ["a"], "body": ["hello"]}), fh)
    return dates


def _config(*extra: str, table: str = "wiki", **kv):
    return load_config(
        overrides=[
            f"source.path={CORPUS}",
            "source.metadata_columns=[title, date]",
            f"sink.uri={DB}",
            f"sink.table={table}",
            "compute.block_rows=16",
            "sink.rows_per_fragment=20",
            "index.type=ivf_hnsw_sq",
            "index.min_rows=32",
            # Recall tuning searches the table once per query at each setting it tries: with the default
            # 100 queries that was ~1,000 GETs through moto (and the flaky test's proxy), 15-40 s of a
            # run on 2 cores. 10 queries still tune the index in the bucket; no test here reads the result.
            "index.tuning_queries=10",
            *extra,
        ]
        + [f"{k}={v}" for k, v in kv.items()]
    )


def _table(name: str):
    import lancedb

    return lancedb.connect(DB, storage_options=Storage.resolve().lance_options(DB)).open_table(name)


@pytest.fixture(scope="module")
def indexed(corpus):
    return run_index(_config())


def _secrets(server) -> list[str]:
    return [server.secret, server.key]


def _run(args, env, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        timeout=timeout,
    )


# --- the happy path ------------------------------------------------------------------------------


def test_workers_without_the_aws_environment_read_the_bucket_with_the_storage_the_driver_resolved(corpus, aws):
    """The variables were set after Ray started, so no worker has them (the premise of every test here);
    the Storage the driver resolves from them travels into a task and is all it needs to list and read."""
    import ray

    names = sorted(aws.env())
    storage = Storage.resolve()

    @ray.remote
    def in_a_worker(storage):
        env = {k: os.environ[k] for k in names if k in os.environ}
        fs, root = storage.fsspec(CORPUS)
        files = sorted(f for f in fs.find(root) if f.endswith(".parquet"))
        with fs.open(files[0], "rb") as fh:
            ids = pq.read_table(fh, columns=["id"]).column("id").to_pylist()
        return env, files, ids

    env, files, ids = ray.get(in_a_worker.remote(storage))
    assert env == {} and all(name in os.environ for name in names)  # while the driver has them all
    assert files == sorted(f"{BUCKET}/wiki/{folder}/{name}" for folder, parts in PARTS.items() for name in parts)
    assert sorted(ids) == sorted(i for i, date in corpus.items() if date == "2026-11-27")


def test_partitioned_corpus_is_indexed_into_the_bucket_every_row_once(indexed, corpus):
    data = _table("wiki").to_arrow()
    ids = data.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 48
    assert set(ids) == set(corpus)
    assert indexed.rows_read == 49 and indexed.rows_written == 48 and dict(indexed.rejected) == {"null_text": 1}
    # The partition folder became a column, per document.
    assert dict(zip(ids, data.column("date").to_pylist())) == corpus
    assert set(data.column_names) == {"id", "title", "text", "date", "vector", "content_hash", "source_file", "run_id"}
    assert all(f.startswith("s3://") or "wiki/date=" in f for f in data.column("source_file").to_pylist())
    rejects = _table("wiki_rejects").to_arrow().to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [("bad-null", "null_text")]
    assert rejects[0]["file"].endswith("wiki/date=2026-11-28/part-1.parquet")


def test_table_and_index_live_in_the_bucket(indexed, aws):
    keys = aws.filesystem().find(f"{BUCKET}/lancedb/wiki.lance")
    assert any("/_versions/" in k for k in keys) and any("/data/" in k for k in keys)
    assert any("/_indices/" in k for k in keys)
    table = _table("wiki")
    [index] = [i for i in table.list_indices() if i.columns == ["vector"]]
    assert index.index_type == "IvfHnswSq"
    assert table.index_stats(index.name).num_indexed_rows == 48
    assert indexed.index["type"] == "ivf_hnsw_sq"


def test_searcher_queries_the_table_in_the_bucket(indexed, sample_table):
    searcher = Searcher.open(DB, "wiki")
    for row in sample_table.slice(600, 48).to_pylist()[::9]:
        hits = searcher.search(row["text"], k=3)
        assert hits.column("id")[0].as_py() == row["id"]
        assert hits.column("score")[0].as_py() > 0.99
    hits = searcher.search("history", k=5, where="date = '2026-11-27'")
    assert hits.num_rows == 5 and set(hits.column("date").to_pylist()) == {"2026-11-27"}


def test_query_job_reads_from_the_bucket(indexed, aws, sample_table, tmp_path, capfd):
    """The query job's command line in this process (helpers/job_main.py), with the AWS variables of
    the ``aws`` fixture; what reaches the file descriptors (native clients' output) is checked too."""
    target = sample_table.slice(620, 1).to_pylist()[0]
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q1", "text": target["text"]}) + "\n")
    result = run_job_main(query_main, ["--uri", DB, "--table", "wiki", "-k", "2", "--json", "--queries", queries])
    assert result.returncode == 0, result.stderr[-2000:]
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(h["query_id"], h["rank"]) for h in hits] == [("q1", 1), ("q1", 2)]
    assert hits[0]["id"] == target["id"]
    written = "".join(capfd.readouterr())
    for secret in _secrets(aws):
        assert secret not in result.stdout + result.stderr + written


def test_index_job_with_model_from_s3_then_query(corpus, aws, tiny_bert_dir, tmp_path, monkeypatch, capfd):
    """The command lines, run in this process (helpers/job_main.py) on the session's Ray: the driver
    alone has the AWS variables (its workers started before they were set); the model comes from the
    bucket. What reaches the file descriptors (native clients' output) is checked for secrets too."""
    monkeypatch.setenv("EMBEDPIPE_MODEL_CACHE", str(tmp_path / "cache"))
    summary_file = tmp_path / "summary.json"
    result = run_job_main(
        index_main,
        [
            "--set",
            f"source.path={CORPUS}",
            "--set",
            f"sink.uri={DB}",
            "--set",
            "sink.table=tiny",
            "--set",
            f"model.path={MODEL}",
            "--set",
            "index.type=none",
            "--set",
            "source.metadata_columns=[date]",
            "--summary-json",
            summary_file,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded     48" in result.stdout
    summary = summary_file.read_text()
    assert json.loads(summary)["rows_written"] == 48
    lineage = read_lineage(DB, "tiny", Storage.resolve().lance_options(DB))
    assert lineage["model"]["path"] == MODEL and lineage["dimension"] == 32
    assert lineage["model"]["fingerprint"] == model_fingerprint(tiny_bert_dir)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] != []

    query = run_job_main(query_main, ["--uri", DB, "--table", "tiny", "-k", "3", "--json", "rivers"])
    assert query.returncode == 0, query.stderr[-2000:]
    assert [json.loads(line)["rank"] for line in query.stdout.splitlines()] == [1, 2, 3]
    written = "".join(capfd.readouterr())
    for secret in _secrets(aws):
        for text in (result.stdout, result.stderr, summary, json.dumps(lineage), query.stdout, query.stderr, written):
            assert secret not in text


def test_model_from_s3_is_downloaded_once_per_node(corpus, aws, tiny_bert_dir, tmp_path):
    """Three processes on one node ask for the model at once: one download, one shared copy."""
    proxy = Proxy(aws.port)  # counts requests per object
    try:
        env = {**os.environ, **aws.env(proxy.endpoint), "EMBEDPIPE_MODEL_CACHE": str(tmp_path / "cache")}
        script = f"from connectors.model_store import resolve_model_dir; print(resolve_model_dir({MODEL!r}))"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=ROOT,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(3)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        proxy.stop()
    assert all(p.returncode == 0 for p in procs), [err[-1000:] for _, err in outputs]
    dirs = {out.strip() for out, _ in outputs}
    assert len(dirs) == 1
    local = Path(dirs.pop())
    assert local.parent == tmp_path / "cache"
    assert model_fingerprint(local) == model_fingerprint(tiny_bert_dir)
    weights = [k for k in proxy.requests if k[0] == "GET" and k[1].endswith("model.safetensors")]
    assert weights and all(proxy.requests[k] == 1 for k in weights)


def test_profile_credentials_reach_workers_that_have_none(corpus, aws, monkeypatch, tmp_path):
    """AWS_PROFILE + a shared credentials file on the driver only; Ray's read tasks still get in."""
    from connectors.parquet_source import open_source

    credentials = tmp_path / "credentials"
    credentials.write_text(f"[embedpipe]\naws_access_key_id = {aws.key}\naws_secret_access_key = {aws.secret}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "embedpipe")
    source = open_source(CORPUS, ["id", "text", "date"])
    assert len(source.files) == 3 and source.schema.field("date").type == pa.string()
    rows = source.read(["id", "date"]).take_all()
    assert sorted(r["id"] for r in rows if r["id"] != "bad-null") == sorted(corpus)
    assert all(r["path"].startswith(f"{BUCKET}/wiki/date=") for r in rows)


# --- errors, all before any embedding work -------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, error, fragments",
    [
        (["source.path=s3://no-such-bucket/wiki/"], SourceError, ["bucket 'no-such-bucket' does not exist"]),
        ([f"source.path=s3://{BUCKET}/nothing-here/"], SourceError, ["no such prefix", BUCKET]),
        ([f"source.path=s3://{BUCKET}/csv-only/"], SourceError, ["no Parquet files found", "csv-only/a.csv"]),
        (
            [f"source.path=s3://{BUCKET}/not-parquet/"],
            SourceError,
            [f"s3://{BUCKET}/not-parquet/part-0.parquet: not a readable Parquet file"],
        ),
        (
            [f"source.path=s3://{BUCKET}/no-text/", "source.metadata_columns=[]"],
            SourceError,
            [f"s3://{BUCKET}/no-text/part-0.parquet: missing column(s) text", "has id, body"],
        ),
        (
            ["source.metadata_columns=[title, month]"],
            SourceError,
            ["part-0.parquet: missing column(s) month", "date (partition)"],
        ),
        (["sink.uri=s3://no-such-sink/db"], StorageError, ["sink.uri", "bucket 'no-such-sink' does not exist"]),
        ([f"model.path=s3://{BUCKET}/models/nope"], ModelNotFoundError, ["model.path", "no objects"]),
    ],
)
def test_clear_errors_before_any_work(corpus, overrides, error, fragments):
    with pytest.raises(error) as err:
        preflight(_config(*overrides))
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_refused_credentials_are_named_and_never_shown(corpus, monkeypatch, variable):
    wrong = "wRoNgCrEdEnTiAl1234567890"
    monkeypatch.setenv(variable, wrong)
    with pytest.raises(SourceError) as err:
        preflight(_config())
    message = str(err.value)
    assert f"source.path={CORPUS}: access to bucket '{BUCKET}' denied" in message
    assert "credentials were refused" in message
    assert wrong not in message and os.environ["AWS_SECRET_ACCESS_KEY"] not in message


def test_cli_refused_credentials_exit_2_with_one_line(corpus, aws):
    env = {**aws.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123456789"}
    result = _run(["jobs.index", "--set", f"source.path={CORPUS}", "--set", f"sink.uri={DB}"], env, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: source.path={CORPUS}: access to bucket '{BUCKET}' denied (SignatureDoesNotMatch")
    assert "not-the-secret" not in result.stderr + result.stdout and aws.key not in result.stderr


def test_plain_http_endpoint_needs_allow_http(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    storage = Storage.resolve()
    assert storage.lance_options("/local/db") is None  # a local job is not concerned
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL=http://127.0.0.1:1 is plain HTTP: set storage.allow_http"):
        storage.lance_options("s3://bucket/db")
    with pytest.raises(StorageError, match="plain HTTP"):
        preflight(load_config(overrides=["source.path=s3://bucket/corpus/"]))
    with pytest.raises(ConfigError, match="storage.endpoint_url: Value error, must be http"):
        load_config(overrides=["storage.endpoint_url=ftp://example.com"])
    with pytest.raises(ConfigError, match="storage: Value error, endpoint_url is plain http"):
        load_config(overrides=["storage.endpoint_url=http://x:9000", "storage.allow_http=false"])
    with pytest.raises(ConfigError, match="storage.region"):
        load_config(overrides=["storage.region=Not A Region"])


def test_config_keys_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    config = load_config(
        overrides=["storage.endpoint_url=https://s3.example.com", "storage.region=us-west-2", "storage.max_attempts=4"]
    )
    storage = Storage.resolve(config.storage)
    options = storage.lance_options("s3://b/db")
    assert options["aws_endpoint"] == "https://s3.example.com" and options["aws_region"] == "us-west-2"
    assert options["client_max_retries"] == "4"
    assert storage.lance_options("/local/db") is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALOCALONLY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-secret")
    assert Storage.resolve(config.storage).access_key == "AKIALOCALONLY"
    assert Storage.resolve(config.storage, paths=["/data/corpus", "out/lancedb"]).access_key is None  # not carried


# --- a store that fails a share of requests ------------------------------------------------------


def test_flaky_store_job_finishes_with_every_row_exactly_once(corpus, aws):
    proxy = Proxy(aws.port, fail_every=5)  # 503 SlowDown for every fifth request
    try:
        summary = run_index(_config(f"storage.endpoint_url={proxy.endpoint}", "storage.allow_http=true", table="flaky"))
    finally:
        proxy.stop()
    assert proxy.failed == proxy.total // 5 >= 10, proxy.failures
    assert {method for method, _ in proxy.failures} >= {"GET", "PUT"}, proxy.failures  # reads and writes
    ids = _table("flaky").to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 48 and set(ids) == set(corpus)
    assert summary.rows_written == 48 and summary.table_rows == 48 and summary.index["type"] == "ivf_hnsw_sq"


# --- credentials never leave the process in the clear --------------------------------------------


def test_credentials_absent_from_summary_lineage_and_logs(indexed, aws, ray_cluster):
    storage = Storage.resolve()
    assert storage.secret_key == aws.secret and aws.secret not in repr(storage)
    lineage = read_lineage(DB, "wiki", storage.lance_options(DB))
    texts = {"summary": indexed.to_json() + indexed.format(), "lineage": json.dumps(lineage)}
    logs = Path(ray_cluster.address_info["session_dir"]) / "logs"
    for path in logs.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert len(texts) > 3
    for secret in _secrets(aws):
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == []
