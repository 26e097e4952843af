"""Inputs that must not hurt a run: bad bytes, changed settings, changed weights, hostile paths.

Real local Ray, real LanceDB, real model weights and a real S3 server (moto over HTTP); each test
names the case of issue 13 ("Production-safe table writes") it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.settled import settled
from pipelines.config import load_config
from pipelines.lineage import ABSENT_MEANS, VECTOR_FIELDS, make_lineage, vector_key
from pipelines.run.runner import run_index
from pipelines.run.stages.validate import content_hash


def _config(src, db, *extra):
    return load_config(
        overrides=[
            f"source.path={src}",
            f"sink.uri={db}",
            "sink.table=docs",
            "compute.block_rows=32",
            "sink.rows_per_fragment=64",
            "index.type=none",
            *extra,
        ]
    )


def _rows(db, table="docs"):
    return lancedb.connect(str(db)).open_table(table).to_arrow().to_pylist()


# --- case 8: invalid UTF-8 in a string column -----------------------------------------------------


def test_invalid_utf8_in_a_string_column_rejects_only_that_row(ray_cluster, sample_table, tmp_path):
    docs = sample_table.slice(0, 6).select(["id", "text"]).to_pylist()
    raw = [d["text"].encode() for d in docs]
    raw[2] = b"caf\xe9 au lait \xff\xfe"  # Latin-1 bytes in a column the file declares UTF-8
    text = pa.array(raw, pa.binary()).view(pa.string())
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"id": [d["id"] for d in docs], "text": text}), src / "latin1.parquet")
    assert pq.read_schema(src / "latin1.parquet").field("text").type == pa.string()
    db = tmp_path / "db"

    summary = run_index(_config(src, db))

    assert dict(summary.rejected) == {"invalid_utf8": 1}
    assert summary.rows_written == 5 and summary.rows_read == 6
    assert sorted(r["id"] for r in _rows(db)) == sorted(d["id"] for i, d in enumerate(docs) if i != 2)
    [reject] = _rows(db, "docs_rejects")
    assert (reject["id"], reject["reason"]) == (docs[2]["id"], "invalid_utf8")
    assert reject["file"].endswith("latin1.parquet")
    assert reject["text"] == "caf\ufffd au lait \ufffd\ufffd"  # kept, with replacement characters


# --- case 9: the content hash keys every setting that changes a stored vector ----------------------

_BASE = dict(fingerprint="f" * 16, hidden_size=384, max_tokens=256, dimension=384, append_eos=False)


def _key(overrides=(), **lineage_args):
    config = settled(load_config(overrides=list(overrides)))
    return vector_key(make_lineage(config, **{**_BASE, **lineage_args}), config)


@pytest.mark.parametrize(
    "overrides, lineage_args",
    [
        ([], dict(fingerprint="e" * 16)),
        (["model.pooling=cls"], {}),
        ([], dict(max_tokens=128)),
        (["model.query_prompt=query: "], {}),
        (["model.document_prompt=passage: "], {}),
        ([], dict(append_eos=True)),
        ([], dict(dimension=256)),
        (["embed.normalize=false"], {}),
        (["index.metric=dot"], {}),
        (["model.dtype=bfloat16"], {}),
        (["model.backend=vllm"], {}),
        (["model.padding_side=left"], {}),
        (["embed.vector_dtype=float16"], {}),
        (["embed.long_text=chunk"], {}),
    ],
    ids=lambda v: str(v),
)
def test_every_setting_that_changes_a_stored_vector_changes_the_key(overrides, lineage_args):
    assert _key(overrides, **lineage_args) != _key()


def test_chunk_overlap_changes_the_key_when_text_is_chunked_only():
    chunked = ["embed.long_text=chunk"]
    assert _key([*chunked, "embed.chunk_overlap=8"]) != _key([*chunked, "embed.chunk_overlap=16"])
    assert _key(["embed.chunk_overlap=8"]) == _key(["embed.chunk_overlap=16"])  # truncated rows ignore it
    assert _key() == _key()  # and the key is stable


def test_vector_fields_are_all_recorded_in_the_lineage():
    lineage = make_lineage(settled(load_config()), **_BASE).to_dict()  # as stored
    recorded = {f for f in VECTOR_FIELDS if _lookup(lineage, f) is not None}
    # a field recorded only where it differs from what its absence means (tables of before it) may be absent
    assert recorded | set(ABSENT_MEANS) >= set(VECTOR_FIELDS) and recorded >= set(VECTOR_FIELDS) - set(ABSENT_MEANS)


def _lookup(lineage, dotted):
    node = lineage
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_content_hash_uses_the_whole_key():
    # blake2b keys stop at 64 bytes; a key that differs only after that must still change the hash.
    head = "x" * 64
    assert content_hash("same text", head + "|chunk|8") != content_hash("same text", head + "|chunk|16")


@pytest.mark.slow  # CI: the content-hash unit checks of every vector setting
def test_upsert_after_changing_the_compute_dtype_embeds_again(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    src = tmp_path / "docs.parquet"
    pq.write_table(sample_table.slice(0, 8).select(["id", "text"]), src)
    db = tmp_path / "db"
    model = f"model.path={tiny_bert_dir}"
    first = run_index(_config(src, db, model, "model.dtype=float32"))
    assert first.rows_written == 8

    again = run_index(_config(src, db, model, "sink.mode=upsert"))
    assert (again.skipped, again.rows_written) == (8, 0)  # nothing changed: nothing embedded

    changed = run_index(_config(src, db, model, "model.dtype=bfloat16", "sink.mode=upsert"))
    assert (changed.skipped, changed.rows_written) == (0, 8)
    rows = _rows(db)
    assert len(rows) == 8 and {r["run_id"] for r in rows} == {changed.run_id}


@pytest.mark.slow  # CI: the content-hash unit checks of every vector setting
def test_upsert_after_changing_chunk_overlap_embeds_again(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    src = tmp_path / "docs.parquet"
    pq.write_table(sample_table.slice(0, 8).select(["id", "text"]), src)
    db = tmp_path / "db"
    chunked = [f"model.path={tiny_bert_dir}", "embed.long_text=chunk", "model.max_tokens=64"]
    first = run_index(_config(src, db, *chunked, "embed.chunk_overlap=16"))
    assert first.rows_read == 8 and first.rows_written > 8  # long documents were split

    again = run_index(_config(src, db, *chunked, "embed.chunk_overlap=16", "sink.mode=upsert"))
    assert (again.skipped, again.rows_written) == (8, 0)  # nothing changed: nothing embedded

    changed = run_index(_config(src, db, *chunked, "embed.chunk_overlap=4", "sink.mode=upsert"))
    assert changed.skipped == 0 and changed.rows_written > 0
    rows = _rows(db)
    assert {r["run_id"] for r in rows} == {changed.run_id}
    assert len({r["id"] for r in rows}) == len(rows)


# --- case 10: the model fingerprint covers every weight ---------------------------------------------


def _change_one_float(weights, tensor: str) -> int:
    """Add 1.0 to the first float of ``tensor`` in a safetensors file, in place; returns its offset."""
    with open(weights, "r+b") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(header_len))
        assert header[tensor]["dtype"] == "F32"
        offset = 8 + header_len + header[tensor]["data_offsets"][0]
        fh.seek(offset)
        value = struct.unpack("<f", fh.read(4))[0]
        fh.seek(offset)
        fh.write(struct.pack("<f", value + 1.0))
    return offset


def test_a_changed_encoder_weight_past_the_first_mib_changes_the_fingerprint(tiny_bert_dir, tmp_path, monkeypatch):
    from connectors.model_store import model_fingerprint

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the digest cache lives under ~/.cache
    tuned = tmp_path / "fine-tuned"
    shutil.copytree(tiny_bert_dir, tuned)
    before = model_fingerprint(tuned)
    assert model_fingerprint(tiny_bert_dir) == before
    offset = _change_one_float(tuned / "model.safetensors", "encoder.layer.1.output.dense.weight")
    assert offset > 1 << 20  # where the old scheme never looked
    assert model_fingerprint(tuned) != before


def test_weight_digests_are_cached_by_path_size_and_mtime(tiny_bert_dir, tmp_path):
    from connectors.model_store import model_fingerprint

    cache = tmp_path / "digests.json"
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    real = model_fingerprint(model, cache)
    weights = (model / "model.safetensors").resolve()
    stat = weights.stat()
    [key] = json.loads(cache.read_text())
    assert key == f"{weights}\0{stat.st_size}\0{stat.st_mtime_ns}"

    # The second call takes the digest from the cache instead of reading the file: a planted
    # digest shows up in the fingerprint.
    cache.write_text(json.dumps({key: "0" * 64}))
    assert model_fingerprint(model, cache) != real
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a touched file is hashed again
    assert model_fingerprint(model, cache) == real
    cache.write_text("{not json")  # a corrupt cache is ignored and replaced
    assert model_fingerprint(model, cache) == real
    assert len(json.loads(cache.read_text())) == 1


def test_legacy_fingerprint_tables_refuse_writes_with_the_way_out():
    from pipelines.lineage import LineageMismatchError, check_compatible

    config = settled(load_config())
    old = make_lineage(config, **{**_BASE, "fingerprint": "0123456789abcdef"})
    new = make_lineage(config, **{**_BASE, "fingerprint": "sha256-full:" + "a" * 32})
    with pytest.raises(LineageMismatchError, match="legacy scheme.*rebuild the table with sink.mode=overwrite"):
        check_compatible(old, new, "this run's config")
    check_compatible(new, new, "this run's config")


# --- case 11: hostile keys, unreachable stores, odd ids, bad overlaps, verbatim strings -------------


def test_s3_model_key_that_climbs_out_of_the_cache_is_refused(s3_server, tiny_bert_dir, tmp_path, monkeypatch):
    from connectors.model_store import ModelNotFoundError, resolve_model_dir
    from connectors.storage import Storage

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDPIPE_MODEL_CACHE", str(cache))
    client = s3_server.client()
    client.create_bucket(Bucket="hostile")
    for f in tiny_bert_dir.iterdir():
        client.put_object(Bucket="hostile", Key=f"m/{f.name}", Body=f.read_bytes())
    client.put_object(Bucket="hostile", Key="m/../../escaped.txt", Body=b"written outside the cache")
    assert "m/../../escaped.txt" in [o["Key"] for o in client.list_objects_v2(Bucket="hostile")["Contents"]]

    with pytest.raises(ModelNotFoundError, match=r"model.path=s3://hostile/m: object key '\.\./\.\./escaped.txt'"):
        resolve_model_dir("s3://hostile/m", None, Storage.resolve())
    assert not list(tmp_path.rglob("escaped.txt"))


def test_unreachable_endpoint_exits_2_with_one_line_in_seconds(tmp_path):
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY0000", "AWS_SECRET_ACCESS_KEY": "secret-0123456789"}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.index",
            "--set",
            "source.path=s3://corpus/docs/",
            "--set",
            f"storage.endpoint_url=http://127.0.0.1:{port}",
            "--set",
            "storage.allow_http=true",
            "--set",
            f"sink.uri={tmp_path / 'db'}",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert f"cannot reach the store at storage.endpoint_url=http://127.0.0.1:{port}" in line
    assert elapsed < 30  # a bound on retries, not a benchmark (it took ~45 s and exited 1)


def test_credentials_in_an_endpoint_url_are_never_shown(monkeypatch):
    from connectors.storage import Storage, StorageError, redact_environment
    from pipelines.config import ConfigError

    url = "http://user:hunter2-secret@127.0.0.1:9000"
    with pytest.raises(ConfigError, match="storage.endpoint_url: .*must not hold credentials") as err:
        load_config(overrides=[f"storage.endpoint_url={url}"])
    assert "hunter2" not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    storage = Storage.resolve()
    with pytest.raises(StorageError, match=r"AWS_ENDPOINT_URL=http://\*\*\*@127.0.0.1:9000: credentials") as err:
        storage.lance_options("s3://bucket/db")
    assert "hunter2" not in str(err.value) and "hunter2" not in storage.redact(f"at {url}")
    assert "hunter2" not in redact_environment(f"Could not connect to {url}/bucket")


@pytest.mark.parametrize("name", ["doc-id", "doc id", "1st", "id;drop"])
def test_id_column_must_be_a_plain_identifier(name):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="source.id_column: .*not a plain identifier"):
        load_config(overrides=[f"source.id_column={name}"])


@pytest.mark.parametrize(
    "ids", [pa.array([1.5, 2.5]), pa.array([b"a", b"b"]), pa.array([True, False])], ids=["double", "binary", "bool"]
)
def test_id_types_other_than_string_or_integer_fail_in_preflight(ids, tmp_path):
    from connectors.parquet_source import SourceError
    from pipelines.run.preflight import preflight

    pq.write_table(pa.table({"id": ids, "text": ["one", "two"]}), tmp_path / "odd.parquet")
    with pytest.raises(SourceError, match=rf"odd.parquet: id column id is {ids.type}; source.id_column"):
        preflight(_config(tmp_path / "odd.parquet", tmp_path / "db"))
    assert not (tmp_path / "db").exists()


def test_integer_ids_still_work_in_preflight(tmp_path):
    from pipelines.run.preflight import preflight

    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "text": ["one", "two"]}), tmp_path / "i.parquet")
    assert preflight(_config(tmp_path / "i.parquet", tmp_path / "db")).source.schema.field("id").type == pa.int64()


def test_chunk_overlap_at_or_over_the_token_budget_fails_before_work(tiny_bert_dir, tmp_path):
    from pipelines.config import ConfigError
    from pipelines.run.preflight import preflight

    with pytest.raises(ConfigError, match="embed.chunk_overlap=64 must be below model.max_tokens=64"):
        load_config(overrides=["embed.long_text=chunk", "model.max_tokens=64", "embed.chunk_overlap=64"])
    load_config(overrides=["model.max_tokens=64", "embed.chunk_overlap=64"])  # truncating: not used
    pq.write_table(pa.table({"id": ["a"], "text": ["one"]}), tmp_path / "a.parquet")
    # Below max_tokens, but not below the text tokens a window has once [CLS] and [SEP] are in.
    with pytest.raises(ConfigError, match=r"embed.chunk_overlap=63 must be below the 62 text tokens"):
        preflight(
            _config(
                tmp_path / "a.parquet",
                tmp_path / "db",
                f"model.path={tiny_bert_dir}",
                "embed.long_text=chunk",
                "model.max_tokens=64",
                "embed.chunk_overlap=63",
            )
        )
    # The model's own limit (128 positions here) counts when model.max_tokens is not set.
    with pytest.raises(ConfigError, match=r"embed.chunk_overlap=500 must be below"):
        preflight(
            _config(
                tmp_path / "a.parquet",
                tmp_path / "db",
                f"model.path={tiny_bert_dir}",
                "embed.long_text=chunk",
                "embed.chunk_overlap=500",
            )
        )


@pytest.mark.parametrize(
    "item, expected",
    [
        ("model.query_prompt=query #1: ", {"model": {"query_prompt": "query #1: "}}),
        ("model.document_prompt=[passage] ", {"model": {"document_prompt": "[passage] "}}),
        ("run.id=0123", {"run": {"id": "0123"}}),
        ("model.revision=null", {"model": {"revision": None}}),
        ("compute.actors=2", {"compute": {"actors": 2}}),
    ],
)
def test_set_keeps_string_values_verbatim(item, expected):
    from pipelines.config import parse_overrides

    assert parse_overrides([item]) == expected
    config = load_config(overrides=[item])
    section, key = item.split("=", 1)[0].split(".")
    assert getattr(getattr(config, section), key) == expected[section][key]
