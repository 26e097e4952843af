"""The query service under load, side by side with the same queries one at a time through Searcher.

    python bench/serve.py [--rows 1000000] [--seconds 20] [--concurrency 1 8 32]

Tables: the demo's (``out/lancedb``, ``wiki``: run ``bash scripts/demo.sh`` first) and one of
``--rows`` rows at 256 dims, made as the job makes it (``jobs.index`` on 1,000 real documents, then
bench/index.py's derived MiniLM vectors appended, then the job's own index build and recall tuning),
kept in ``--workdir`` for the next run.

For each table, in one Ray (2 CPUs, the replica holds both, as the in-process Searcher uses both):
  searcher        one query at a time in this process: embed + search (Searcher.search)
  serve, batch 1  the service with max_batch_size=1 (no batching), N closed-loop HTTP clients
  serve, batch 32 the service as shipped (max_batch_size 32), N clients
QPS, p50/p99 end to end (HTTP request to the last byte of the answer: embed + search), and the mean
batch size the replica saw (its /stats). Queries: the bundled sample's titles made into questions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._machine import cpu  # noqa: E402

SAMPLE = ROOT / "data/sample/wiki_vital.parquet"


def queries() -> list[str]:
    titles = pq.read_table(SAMPLE, columns=["title"]).column("title").to_pylist()
    forms = ["what is {}", "history of {}", "{} explained", "facts about {}"]
    return [forms[i % len(forms)].format(t) for i, t in enumerate(titles)]


def big_table(workdir: Path, rows: int) -> tuple[str, str]:
    """A ``rows``-row table with the job's lineage, index and tuned query defaults (cached)."""
    import lance
    from index import DIM, derive, real_vectors

    from connectors.lance.metadata import read_lineage, write_lineage
    from connectors.storage import Storage
    from pipelines.config import IndexConfig, load_config
    from pipelines.run.runner import run_index
    from pipelines.vector_index.step import index_table
    from pipelines.vector_index.tuning import index_lineage

    uri, name = str(workdir / "db"), f"rows{rows}"
    if (workdir / "db" / f"{name}.lance").exists() and lance.dataset(f"{uri}/{name}.lance").count_rows() == rows:
        return uri, name
    t0 = time.perf_counter()
    docs = pq.read_table(SAMPLE).slice(0, 1000).select(["id", "title", "text", "length_chars"])
    (workdir / "corpus").mkdir(parents=True, exist_ok=True)
    pq.write_table(docs, workdir / "corpus" / "part-0.parquet")
    overrides = [f"source.path={workdir / 'corpus'}", f"sink.uri={uri}", f"sink.table={name}"]
    overrides += ["sink.mode=overwrite", f"embed.dimension={DIM}", "index.type=none"]
    overrides += ["source.metadata_columns=[title, length_chars]"]
    run_index(load_config(overrides=overrides))
    dataset = lance.dataset(f"{uri}/{name}.lance")
    schema = dataset.schema
    real = real_vectors(20_000)
    extra = rows - dataset.count_rows()
    vectors = derive(real, extra, seed=1)
    for start in range(0, extra, 200_000):
        n = min(200_000, extra - start)
        columns = {}
        for field in schema:
            if field.name == "id":
                columns["id"] = pa.array([f"derived-{start + i}" for i in range(n)])
            elif field.name == "text":
                columns["text"] = pa.array([f"derived document {start + i}" for i in range(n)])
            elif field.name == "vector":
                flat = pa.array(vectors[start : start + n].reshape(-1), pa.float32())
                columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, DIM)
            else:
                columns[field.name] = pa.nulls(n, field.type)
        lance.write_dataset(pa.table(columns, schema=schema), f"{uri}/{name}.lance", mode="append")
    lineage = read_lineage(uri, name)
    params, tuning = index_table(
        uri,
        name,
        IndexConfig(),
        id_column="id",
        dimension=DIM,
        incremental=False,
        lineage=lineage,
        storage=Storage.resolve(),
        cpus=2,
    )
    lineage.update(index_lineage(params, tuning))
    write_lineage(uri, name, lineage)
    print(f"built {name}: {rows} rows, {params.to_dict()} in {time.perf_counter() - t0:.0f}s", flush=True)
    return uri, name


def load(port: int, texts: list[str], clients: int, seconds: float) -> tuple[int, np.ndarray, float]:
    """``clients`` closed-loop HTTP clients for ``seconds``: (answers, latencies in s, elapsed)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = time.perf_counter()
    stop = start + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        n = i
        while time.perf_counter() < stop:
            body = json.dumps({"query": texts[n % len(texts)], "k": 10})
            t = time.perf_counter()
            conn.request("POST", "/search", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                errors.append(f"{resp.status} {data[:200]!r}")
                return
            latencies[i].append(time.perf_counter() - t)
            n += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    lat = np.array([x for per in latencies for x in per])
    return len(lat), lat, time.perf_counter() - start


def stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/stats")
    return json.loads(conn.getresponse().read())


def row(table: str, rows: int, mode: str, clients: int, n: int, lat: np.ndarray, elapsed: float, batch) -> dict:
    p50, p99 = (round(float(np.percentile(lat, q)) * 1000, 1) for q in (50, 99))
    r = dict(table=table, rows=rows, mode=mode, clients=clients, qps=round(n / elapsed, 1), p50_ms=p50, p99_ms=p99,
             mean_batch=batch)  # fmt: skip
    print(
        f"{table:>10} {rows:>9} {mode:>16} {clients:>7} {r['qps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
        f"{batch if batch is not None else '-':>10}",
        flush=True,
    )
    return r


def bench_table(uri: str, name: str, args, texts: list[str]) -> list[dict]:
    from ray import serve

    from pipelines.config import ServiceConfig
    from pipelines.search.searcher import Searcher
    from pipelines.search.service import TableSearch

    rows = Searcher.open(uri, name).table.count_rows()
    out = []
    searcher = Searcher.open(uri, name)
    searcher.search(texts[0], k=10)  # load the model
    lat, stop, i = [], time.perf_counter() + args.seconds, 0
    start = time.perf_counter()
    while time.perf_counter() < stop:
        t = time.perf_counter()
        searcher.search(texts[i % len(texts)], k=10)
        lat.append(time.perf_counter() - t)
        i += 1
    out.append(row(name, rows, "searcher", 1, len(lat), np.array(lat), time.perf_counter() - start, None))
    del searcher

    for batch in (1, 32):
        config = ServiceConfig.load(dict(uri=uri, table=name, max_batch_size=batch, refresh_seconds=3600))
        deployment = TableSearch.options(ray_actor_options={"num_cpus": 2}, max_ongoing_requests=128)
        application = deployment.bind(config.model_dump())
        serve.run(application, name="bench", route_prefix="/")
        load(args.port, texts, 4, 3)  # warm the proxy and the replica
        for clients in args.concurrency:
            before = stats(args.port)
            n, lat, elapsed = load(args.port, texts, clients, args.seconds)
            after = stats(args.port)
            d = {k: after[k] - before[k] for k in after}
            mean = round(d["queries_embedded"] / d["forward_passes"], 2) if d["forward_passes"] else None
            r = row(name, rows, f"serve, batch {batch}", clients, n, lat, elapsed, mean)
            r["replica_embed_ms_per_query"] = round(d["embed_seconds"] * 1000 / max(d["queries_embedded"], 1), 2)
            r["replica_search_ms_per_query"] = round(d["search_seconds"] * 1000 / max(d["searches"], 1), 2)
            print(f"{'':>45} replica: embed {r['replica_embed_ms_per_query']} ms/query, "
                  f"search {r['replica_search_ms_per_query']} ms/query", flush=True)  # fmt: skip
            out.append(r)
        serve.delete("bench")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="the big table's rows (0: the demo table only)")
    ap.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workdir", default=str(ROOT / "out" / "bench" / "serve"))
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if not (ROOT / "out/lancedb/wiki.lance").exists():
        sys.exit("no demo table at out/lancedb/wiki: run `bash scripts/demo.sh` first")

    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})  # fmt: skip
    tables = [(str(ROOT / "out/lancedb"), "wiki")]
    if args.rows:
        tables.append(big_table(Path(args.workdir), args.rows))
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    texts = queries()
    print(f"CPU: {cpu()}; {args.seconds:g} s per measurement; k=10")
    head = ("table", "rows", "mode", "clients", "QPS", "p50 ms", "p99 ms", "mean batch")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (10, 9, 16, 7, 8, 8, 8, 10))))
    results = []
    for uri, name in tables:
        results += bench_table(uri, name, args, texts)
    serve.shutdown()

    print()
    for uri, name in tables:
        mine = [r for r in results if r["table"] == name]
        base = next(r for r in mine if r["mode"] == "searcher")
        for clients in args.concurrency:
            on = next(r for r in mine if r["mode"] == "serve, batch 32" and r["clients"] == clients)
            off = next(r for r in mine if r["mode"] == "serve, batch 1" and r["clients"] == clients)
            print(
                f"{name}: {clients} clients: batching {on['qps'] / off['qps']:.2f}x the QPS of no batching, "
                f"{on['qps'] / base['qps']:.2f}x one-at-a-time Searcher"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(cpu=cpu(), seconds=args.seconds, results=results), indent=2))


if __name__ == "__main__":
    main()
