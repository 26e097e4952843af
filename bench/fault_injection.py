"""Fault injection: kill the driver, an encoder actor or a write task mid-run, resume, check the table.

    python bench/fault_injection.py [--docs 20000] [--seeds 10] [--seed-start 0] [--out FILE]

A local Ray (2 CPUs) is started in this process; every job is ``python -m jobs.index`` in a
subprocess that joins it through ``RAY_ADDRESS``. The corpus is short documents (sentences of the
bundled Wikipedia sample, each made unique by its id) in 20-40 Parquet files, plus rows that must be
rejected (null text, empty text, an id repeated in another file). A clean overwrite run builds the
base table (version 1 of the corpus) and times a run; every seed then copies that table and runs one
scenario against version 2 of the corpus (some documents changed, some removed, some added):

- ``overwrite``: one overwrite run;
- ``upsert``: one ``sink.mode=upsert`` run with ``sink.delete_missing=true``;
- ``overlap``: two runs (both overwrite or both upsert) on the same table, started 0-2 s apart.

During the (first) run 1-2 processes are killed with SIGKILL at a random moment: the driver (the
job's pid), an encoder actor (``ray::MapWorker(...EncodeStage...)``) or a write task (the worker whose
proctitle names ``FragmentWriter`` while it runs the sink stage). Only processes below this one are
candidates (the Ray started here, the jobs started here), never another user's Ray. A kill counts as
injected only when the target pid was alive, the job was still running, and the kill succeeded. A
failed run is started again with the same ``run.id`` (a resume) until it exits 0 (at most
``MAX_ATTEMPTS``); a pending second kill hits the resumed run.

Then the table is checked against version 2: every valid id exactly once, with its text; the vector
of a sample of rows equals what the model gives for the text (embedded here with transformers, mean
pooling, L2 norm; within 1e-4); removed ids absent; null/empty rows (and, for overwrite runs, the
repeated id) in ``<table>_rejects`` with their reason, once per run; the table readable (LanceDB
``count_rows``, a full read, a vector search; Lance ``validate``). Exit code 1 when any check fails.

The model is a 2-layer, 32-wide random BERT with MiniLM's tokenizer (built here, as in
bench/memory.py): the pipeline's own work, fast enough for 20k documents a run on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Kill", "RunResult", "check_table", "main", "make_corpus", "run_job"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers.table_model import job_env  # noqa: E402  (the jobs' environment, as bench/table_model.py's)

SCENARIOS = ("overwrite", "upsert", "overlap")
TARGETS = ("driver", "encoder", "writer")
MAX_ATTEMPTS = 5
ATTEMPT_TIMEOUT = 900  # seconds (--attempt-timeout); a run still going then is killed, reported hung
STALL_TIMEOUT = 120  # seconds (--stall-timeout): the jobs' compute.stall_timeout_s
STALL_LINE = "the stream made no progress for compute.stall_timeout_s"  # a job's line when it restarts a pass
HUNG = 124
RAY_CPUS = 6
TABLE = "docs"
BAD_ROWS = {"bad-null": (None, "null_text"), "bad-empty": ("", "empty_text")}
VECTOR_SAMPLE = 50
VECTOR_TOL = 1e-4


def _bench_memory():
    """bench/memory.py (its short documents and its tiny model), loaded by path: bench is no package."""
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """One version of the source: the files, and what the table must hold after a run over it."""

    path: Path
    texts: dict  # valid id -> set of accepted texts (two for the repeated id: either row may be first)
    dup_id: str
    removed: set = field(default_factory=set)  # ids of the previous version that are gone
    changed: set = field(default_factory=set)


def _write_files(rows: list[dict], root: Path, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string())])
    size = -(-len(rows) // files)
    for k in range(files):
        pq.write_table(
            pa.Table.from_pylist(rows[k * size : (k + 1) * size], schema=schema), root / f"part-{k:03d}.parquet"
        )


def _with_bad_rows(docs: list[dict], dup_text: str) -> list[dict]:
    """Bad rows in the first file (null, empty text) and a repeat of the first id in the last file."""
    bad = [{"id": i, "text": t} for i, (t, _) in BAD_ROWS.items()]
    return bad + docs + [{"id": docs[0]["id"], "text": dup_text}]


def make_corpus(n: int, root: Path, files: int, sentences: list[str]) -> tuple[list[dict], Corpus]:
    """Version 1: ``n`` unique short documents (sentence + id) in ``files`` files, plus bad rows."""
    docs = [{"id": f"d{i:07d}", "text": f"{sentences[i % len(sentences)]} (doc {i})"} for i in range(n)]
    dup_text = f"a second row with the id {docs[0]['id']}, in another file"
    _write_files(_with_bad_rows(docs, dup_text), root, files)
    texts = {d["id"]: {d["text"]} for d in docs}
    texts[docs[0]["id"]] = {dup_text}  # the repeat is in the last file: the latest revision (sink.revision_by)
    return docs, Corpus(root, texts, docs[0]["id"])


def change_corpus(docs: list[dict], root: Path, files: int, sentences: list[str], rng: random.Random) -> Corpus:
    """Version 2: ~5% of the documents changed, ~3% removed, ~3% added (the repeated id untouched)."""
    n = len(docs)
    others = list(range(1, n))
    rng.shuffle(others)
    k_changed, k_removed = max(1, n // 20), max(1, n * 3 // 100)
    changed = {docs[i]["id"] for i in others[:k_changed]}
    removed = {docs[i]["id"] for i in others[k_changed : k_changed + k_removed]}
    new = [
        {"id": f"n{i:07d}", "text": f"{sentences[(n + i * 7) % len(sentences)]} (new doc {i})"}
        for i in range(max(1, n * 3 // 100))
    ]
    rows = []
    for d in docs:
        if d["id"] in removed:
            continue
        text = f"Revised {rng.randrange(10**6)}: {d['text']}" if d["id"] in changed else d["text"]
        rows.append({"id": d["id"], "text": text})
    rows += new
    dup_text = f"a second row with the id {docs[0]['id']}, in another file"
    _write_files(_with_bad_rows(rows, dup_text), root, files)
    texts = {r["id"]: {r["text"]} for r in rows}
    texts[docs[0]["id"]] = {dup_text}  # the repeat is in the last file: the latest revision (sink.revision_by)
    return Corpus(root, texts, docs[0]["id"], removed, changed)


# ---------------------------------------------------------------- processes and kills


@dataclass
class Kill:
    target: str  # driver | encoder | writer
    delay: float  # seconds after the start of the run (attempt) it hits
    injected: bool = False
    pid: Optional[int] = None
    attempt: Optional[int] = None
    at: Optional[float] = None  # seconds into the attempt when it was sent


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process(os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _matches(proc: psutil.Process, target: str) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if target == "encoder":
        return "MapWorker" in cmd and "EncodeStage" in cmd
    if target == "writer":  # a task worker's proctitle while it runs the sink stage
        return cmd.startswith("ray::") and "FragmentWriter" in cmd and "MapWorker" not in cmd
    raise ValueError(f"unknown kill target {target!r}")


def _worker_pids(target: str) -> set[int]:
    """Pids of Ray workers below this process (our own Ray only) that match ``target``."""
    return {p.pid for p in _descendants() if _matches(p, target)}


def _inject(kill: Kill, job: subprocess.Popen, stale: set[int], started: float, attempt: int, deadline: float) -> bool:
    """Wait for the kill's moment and its target, then SIGKILL it; False when the job ended first."""
    while time.time() - started < kill.delay:
        if job.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.05)
    while job.poll() is None and time.time() < deadline:
        if kill.target == "driver":
            pids = [job.pid]
        else:
            pids = sorted(_worker_pids(kill.target) - stale)
        if pids:
            pid = pids[0]
            if job.poll() is not None:
                return False
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # the task finished between the look and the kill: look again
                continue
            kill.pid, kill.attempt, kill.at = pid, attempt, round(time.time() - started, 2)
            kill.injected = _dead(pid)
            return kill.injected
        time.sleep(0.02)
    return False


def _dead(pid: int, timeout: float = 10.0) -> bool:
    """The killed process is gone (or a zombie its parent has not reaped yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@dataclass
class RunResult:
    run_id: str
    attempts: list = field(default_factory=list)  # exit code of each attempt
    attempt_seconds: list = field(default_factory=list)
    first_error: str = ""  # the first failed attempt's error line (e.g. a lease naming the other run)
    stalls: int = 0  # passes restarted because no block moved for compute.stall_timeout_s (in any attempt)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1] == 0


class Job:
    """One ``python -m jobs.index`` command line; each :meth:`attempt` starts it (again) and waits."""

    def __init__(
        self,
        run_id: str,
        corpus: Path,
        db: Path,
        overrides: list[str],
        env: dict,
        logdir: Path,
        timeout: float = ATTEMPT_TIMEOUT,
    ):
        self.run_id, self.env, self.logdir, self.timeout = run_id, env, logdir, timeout
        self.cmd = [sys.executable, "-m", "jobs.index"]
        for item in [f"source.path={corpus}", f"sink.uri={db}", f"sink.table={TABLE}", f"run.id={run_id}", *overrides]:
            self.cmd += ["--set", item]
        self.result = RunResult(run_id)

    def attempt(self, kills: list[Kill]) -> int:
        """Run once, injecting ``kills`` in order (removed from the list when injected); the exit code."""
        n = len(self.result.attempts)
        log = self.logdir / f"{self.run_id}-{n}.log"
        stale = _worker_pids("encoder") | _worker_pids("writer")  # leftovers of an earlier driver
        started = time.time()
        with open(log, "w") as fh:  # a file, not a pipe: a full pipe would block the job
            job = subprocess.Popen(
                self.cmd + ["--summary-json", str(self.logdir / f"{self.run_id}.json")],
                cwd=ROOT,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            deadline = started + self.timeout
            while kills and _inject(kills[0], job, stale, started, n, deadline):
                done = kills.pop(0)
                if done.target == "driver":
                    break
            try:
                rc = job.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
                rc = HUNG
        self.result.seconds += time.time() - started
        self.result.attempt_seconds.append(round(time.time() - started, 1))
        self.result.attempts.append(rc)
        text = log.read_text(errors="replace")
        self.result.stalls += text.count(STALL_LINE)
        if rc and not self.result.first_error:
            lines = [x for x in text.splitlines() if x.startswith("error")]
            self.result.first_error = lines[-1] if lines else ("hung" if rc == HUNG else f"exit {rc}")
        return rc

    def until_done(self, kills: list[Kill]) -> RunResult:
        """Attempts (the first ones with the kills) until exit 0 or ``MAX_ATTEMPTS``."""
        while not self.result.ok and len(self.result.attempts) < MAX_ATTEMPTS:
            if self.attempt(kills) == 0:
                break
        return self.result


def run_job(
    run_id: str,
    corpus: Path,
    db: Path,
    overrides: list[str],
    env: dict,
    logdir: Path,
    kills: Optional[list[Kill]] = None,
    timeout: float = ATTEMPT_TIMEOUT,
) -> RunResult:
    return Job(run_id, corpus, db, overrides, env, logdir, timeout).until_done(kills if kills is not None else [])


# ---------------------------------------------------------------- checks


class Reference:
    """The model's vector for a text, computed here without the pipeline: one text per forward pass."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()

    def embed(self, text: str) -> np.ndarray:
        import torch

        enc = self.tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        vec = hidden[0].mean(dim=0).numpy()
        return vec / np.linalg.norm(vec)


def _readable(db: Path) -> str:
    """'' when LanceDB and Lance read the table fully and a vector search answers; else the error."""
    import lance
    import lancedb

    try:
        table = lancedb.connect(str(db)).open_table(TABLE)
        data = table.to_arrow()
        if table.count_rows() != data.num_rows:
            return f"count_rows {table.count_rows()} != rows read {data.num_rows}"
        hits = table.search(np.asarray(data.column("vector")[0].as_py(), np.float32)).limit(5).to_list()
        if not hits:
            return "vector search returned nothing"
        ds = lance.dataset(str(db / f"{TABLE}.lance"))
        ds.validate()
        if ds.count_rows() != data.num_rows:
            return f"lance count {ds.count_rows()} != {data.num_rows}"
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return ""


def _rejects(db: Path, run_ids: list[str], expect_dup: bool, dup_id: str) -> tuple[list, list]:
    """(missing, doubled) reject entries: each bad row once per run that read it, with its reason."""
    import lancedb

    try:
        rows = lancedb.connect(str(db)).open_table(f"{TABLE}_rejects").to_arrow().to_pylist()
    except Exception as exc:  # noqa: BLE001
        return [f"rejects table unreadable: {exc}"], []
    counts = Counter((r["id"], r["reason"], r["run_id"]) for r in rows if r["run_id"] in run_ids)
    doubled = [f"{k} x{v}" for k, v in counts.items() if v > 1]
    wanted = {(i, reason) for i, (_, reason) in BAD_ROWS.items()}
    if expect_dup:
        wanted.add((dup_id, "superseded"))  # the first file's row: an older revision of the repeated id
    seen = {(i, reason) for i, reason, _ in counts}
    return sorted(f"{i}:{reason}" for i, reason in wanted - seen), doubled


def check_table(
    db: Path, corpus: Corpus, reference: Reference, rng: random.Random, run_ids: list[str], expect_dup_reject: bool
) -> dict:
    """Compare the table with the corpus it was last built from; counts of every kind of defect."""
    import lancedb

    problem = _readable(db)
    if problem:
        return {
            "unreadable": 1,
            "error": problem,
            "lost": 0,
            "duplicated": 0,
            "extra": 0,
            "wrong_text": 0,
            "wrong_vector": 0,
            "rejects_missing": [],
            "rejects_doubled": [],
        }
    data = lancedb.connect(str(db)).open_table(TABLE).to_arrow()
    ids, texts = data.column("id").to_pylist(), data.column("text").to_pylist()
    counts = Counter(ids)
    lost = sorted(i for i in corpus.texts if counts[i] == 0)
    extra = sorted(i for i in counts if i not in corpus.texts)
    wrong_text = sorted({i for i, t in zip(ids, texts) if i in corpus.texts and t not in corpus.texts[i]})
    sample = rng.sample(range(len(ids)), min(VECTOR_SAMPLE, len(ids)))
    vectors = data.column("vector")
    wrong_vector = [
        ids[k]
        for k in sample
        if not np.allclose(np.asarray(vectors[k].as_py(), np.float32), reference.embed(texts[k]), atol=VECTOR_TOL)
    ]
    missing, doubled = _rejects(db, run_ids, expect_dup_reject, corpus.dup_id)
    return {
        "unreadable": 0,
        "error": "",
        "lost": len(lost),
        "duplicated": sum(c - 1 for c in counts.values() if c > 1),
        "extra": len(extra),
        "wrong_text": len(wrong_text),
        "wrong_vector": len(wrong_vector),
        "rejects_missing": missing,
        "rejects_doubled": doubled,
        "examples": {
            "lost": lost[:5],
            "duplicated": [i for i, c in counts.items() if c > 1][:5],
            "extra": extra[:5],
            "wrong_text": wrong_text[:5],
            "wrong_vector": wrong_vector[:5],
        },
    }


def failed(check: dict) -> bool:
    keys = ("unreadable", "lost", "duplicated", "extra", "wrong_text", "wrong_vector")
    return any(check[k] for k in keys) or bool(check["rejects_missing"] or check["rejects_doubled"])


# ---------------------------------------------------------------- scenarios


@dataclass
class Setup:
    workdir: Path
    base_db: Path
    docs: list
    sentences: list
    files: int
    overrides: list
    env: dict
    reference: Reference
    durations: dict  # mode -> seconds of its last uninterrupted run (what kill delays scale with)
    timeout: float  # seconds an attempt may run

    def learn(self, mode: str, runs: list[RunResult]) -> None:
        clean = [r.attempt_seconds[0] for r in runs if r.attempts and r.attempts[0] == 0]
        if clean:
            self.durations[mode] = max(clean)


def plan_kills(seed: int, rng: random.Random, run_seconds: float) -> list[Kill]:
    """1-2 kills; the first target cycles so that any 3 consecutive seeds cover all three targets.

    Delays fall in the first half of a run as long as ``run_seconds`` (the last clean run of the
    same mode): startup, embedding and checkpoints, where most of a run's time goes.
    """
    targets = [TARGETS[(seed + seed // 3) % 3]]
    if rng.random() < 0.4:
        targets.append(rng.choice(TARGETS))
    delays = sorted(rng.uniform(0.05, 0.5) * run_seconds for _ in targets)
    return [Kill(t, round(d, 2)) for t, d in zip(targets, delays)]


def _overlap(
    setup: Setup, corpus: Corpus, db: Path, overrides: list, kills: list[Kill], logdir: Path, rng: random.Random
) -> tuple[list[RunResult], str]:
    """Two runs on one table, the second started 0-2 s after the first; the kills hit the first."""
    a = Job("overlap-a", corpus.path, db, overrides, setup.env, logdir, setup.timeout)
    b = Job("overlap-b", corpus.path, db, overrides, setup.env, logdir, setup.timeout)
    gap = rng.uniform(0, 2)
    first = threading.Thread(target=a.attempt, args=(kills,))
    first.start()
    time.sleep(gap)
    b.attempt([])
    first.join()
    happened = f"gap {gap:.1f}s; first attempts: a exit {a.result.attempts[0]}, b exit {b.result.attempts[0]}" + (
        f" ({b.result.first_error})" if b.result.attempts[0] else ""
    )
    a.until_done(kills)  # resumes of whichever failed (a killed driver, a refused lease), one after the other
    b.until_done([])
    return [a.result, b.result], happened


def run_seed(seed: int, setup: Setup) -> dict:
    rng = random.Random(seed)
    scenario = SCENARIOS[seed % 3]
    mode = scenario if scenario != "overlap" else rng.choice(["overwrite", "upsert"])
    kills = plan_kills(seed, rng, setup.durations[mode])
    planned = [Kill(k.target, k.delay) for k in kills]
    seed_dir = setup.workdir / f"seed-{seed}"
    logdir = seed_dir / "logs"
    logdir.mkdir(parents=True)
    corpus = change_corpus(setup.docs, seed_dir / "src", setup.files, setup.sentences, rng)
    db = seed_dir / "db"
    shutil.copytree(setup.base_db, db)
    overrides = list(setup.overrides)
    overrides += ["sink.mode=upsert", "sink.delete_missing=true"] if mode == "upsert" else ["sink.mode=overwrite"]
    injected_kills = list(kills)
    happened = ""
    if scenario == "overlap":
        runs, happened = _overlap(setup, corpus, db, overrides, kills, logdir, rng)
    else:
        runs = [run_job(f"{scenario}-{seed}", corpus.path, db, overrides, setup.env, logdir, kills, setup.timeout)]
        setup.learn(mode, runs)  # overlapping runs share the CPUs: their length is no estimate
    check = check_table(db, corpus, setup.reference, rng, [r.run_id for r in runs], expect_dup_reject=True)
    result = {
        "seed": seed,
        "scenario": scenario,
        "mode": mode,
        "overlap": happened,
        "kills_planned": [asdict(k) for k in planned],
        "kills": [asdict(k) for k in injected_kills],
        "runs": [asdict(r) | {"ok": r.ok} for r in runs],
        "check": check,
        "failed": failed(check) or not all(r.ok for r in runs),
        "dir": str(seed_dir),
    }
    if not result["failed"]:
        shutil.rmtree(seed_dir)  # keep only what a failure needs for inspection
    return result


def seed_line(r: dict) -> str:
    kills = ", ".join(
        f"{k['target']} at {k['at']}s of attempt {k['attempt']}"
        if k["injected"]
        else f"{k['target']} after {k['delay']}s missed (the job had ended)"
        for k in r["kills"]
    )
    attempts = " ".join(f"{x['run_id']}:{','.join(str(a) for a in x['attempts'])}" for x in r["runs"])
    c = r["check"]
    line = (
        f"seed {r['seed']:>3} {r['scenario']:<9} ({r['mode']}) kills [{kills}] attempts [{attempts}] "
        f"lost {c['lost']} dup {c['duplicated']} extra {c['extra']} wrong_text {c['wrong_text']} "
        f"wrong_vector {c['wrong_vector']} unreadable {c['unreadable']}"
    )
    if c["rejects_missing"] or c["rejects_doubled"]:
        line += f" rejects missing {c['rejects_missing']} doubled {c['rejects_doubled']}"
    if r["overlap"]:
        line += f"\n         overlap: {r['overlap']}"
    if c["error"]:
        line += f"\n         unreadable: {c['error']}"
    if r["failed"]:
        line += f"\n         FAILED; files kept in {r['dir']}"
    return line


def totals(results: list[dict]) -> dict:
    kills = [k for r in results for k in r["kills"]]
    return {
        "seeds_run": len(results),
        "kills_injected": sum(k["injected"] for k in kills),
        "kills_missed": sum(not k["injected"] for k in kills),
        "kills_by_target": dict(Counter(k["target"] for k in kills if k["injected"])),
        **{
            key: sum(r["check"][key] for r in results)
            for key in ("lost", "duplicated", "extra", "wrong_text", "wrong_vector", "unreadable")
        },
        "reject_problems": sum(
            len(r["check"]["rejects_missing"]) + len(r["check"]["rejects_doubled"]) for r in results
        ),
        "runs_not_finished": sum(not x["ok"] for r in results for x in r["runs"]),
        # Kills should fail a stream at once (a lost worker) or be retried, never leave it waiting.
        "stall_restarts": sum(x["stalls"] for r in results for x in r["runs"]),
        "seeds_failed": [r["seed"] for r in results if r["failed"]],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------- main


def _start_ray(cpus: int) -> tuple[str, bool]:
    """This process's Ray (started here unless already initialised): its address, and whether we started it.

    ``cpus`` logical CPUs, more than the cores: two overlapping jobs on a 2-CPU Ray stalled here (both
    at 93 of 651 blocks until the 300 s attempt timeout, Ray Data warning "Cluster resources are not
    enough to run any task from ReadFilesParquetV2"), most likely each job's budget counting CPUs the
    other holds. That is capacity, not the write-path property under test, so the jobs get room.
    """
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_BIN_PACKING_BYTES", "1")  # small files: one read task each
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address, False
    os.environ.pop("RAY_ADDRESS", None)  # a new local Ray, never someone else's
    ctx = ray.init(
        num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}}
    )
    return ctx.address_info["address"], True


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000, help="documents in the corpus (default 20000)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds to run (default 10)")
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--files", type=int, default=None, help="Parquet files (default: docs/600, within 20-40)")
    ap.add_argument("--workdir", default=None, help="where corpora and tables go (default: a new dir under /tmp)")
    ap.add_argument(
        "--ray-cpus",
        type=int,
        default=RAY_CPUS,
        help=f"logical CPUs of the local Ray started here (default {RAY_CPUS}; see _start_ray)",
    )
    ap.add_argument(
        "--attempt-timeout",
        type=float,
        default=ATTEMPT_TIMEOUT,
        help=f"seconds before a run is killed and reported hung (default {ATTEMPT_TIMEOUT})",
    )
    ap.add_argument(
        "--stall-timeout",
        type=float,
        default=STALL_TIMEOUT,
        help=f"the jobs' compute.stall_timeout_s (default {STALL_TIMEOUT:g}; a stall after a kill waits this long)",
    )
    ap.add_argument("--out", default=None, help="results JSON (default: <workdir>/results.json)")
    return ap.parse_args(argv)


def setup_run(args, workdir: Path, address: str) -> Setup:
    memory = _bench_memory()
    sentences = [s[:200] for s in memory.short_docs(3000).column("text").to_pylist()]
    files = args.files or max(20, min(40, args.docs // 600))
    docs, base = make_corpus(args.docs, workdir / "base-src", files, sentences)
    model = memory.tiny_model(workdir)
    # No recall tuning after the index build (the index is built; tuning is search quality, not safety).
    # Half a CPU per encoder actor: two overlapping jobs' actors then leave a CPU of the 2 for their
    # read and write tasks (with a whole CPU each, the two pools can take both and the tasks wait).
    overrides = [
        f"model.path={model}",
        # The reference vectors are float32; model.dtype=auto picks bfloat16 on a CPU with native bf16
        # (avx512_bf16/amx_bf16), whose vectors differ from them by more than the check's 1e-4.
        "model.dtype=float32",
        "compute.block_rows=64",
        "index.target_recall=null",
        "compute.cpus_per_actor=0.5",
        f"sink.rows_per_fragment={max(64, args.docs // 80)}",
        f"sink.checkpoint_rows={max(128, args.docs // 8)}",
        # A stream that stalls after a kill (Ray waiting on a vanished task) restarts its pass
        # well inside an attempt, instead of hanging until the attempt's timeout.
        f"compute.stall_timeout_s={args.stall_timeout:g}",
    ]
    env = job_env(address)
    reference = Reference(model)
    base_db = workdir / "base-db"
    result = run_job(
        "base", base.path, base_db, overrides + ["sink.mode=overwrite"], env, workdir, timeout=args.attempt_timeout
    )
    if not result.ok:
        raise SystemExit(f"the clean base run failed: {result.first_error} (log in {workdir})")
    check = check_table(base_db, base, reference, random.Random(0), ["base"], expect_dup_reject=True)
    if failed(check):
        raise SystemExit(f"the clean base run's table fails the checks: {json.dumps(check)}")
    print(f"base run: {args.docs} docs in {files} files, {result.seconds:.1f}s, table checked", flush=True)
    # An upsert embeds only the changed documents: a first guess at its length until one ran clean.
    durations = {"overwrite": result.seconds, "upsert": 0.6 * result.seconds}
    return Setup(workdir, base_db, docs, sentences, files, overrides, env, reference, durations, args.attempt_timeout)


def main(argv=None) -> dict:
    """Run the seeds; prints a line each and the totals; returns the totals (and writes the JSON)."""
    args = parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fault-injection-"))
    workdir.mkdir(parents=True, exist_ok=True)
    address, started_ray = _start_ray(args.ray_cpus)
    try:
        setup = setup_run(args, workdir, address)
        results = []
        try:
            for seed in range(args.seed_start, args.seed_start + args.seeds):
                results.append(run_seed(seed, setup))
                print(seed_line(results[-1]), flush=True)
        except KeyboardInterrupt:  # Ctrl-C / SIGINT: report the seeds that finished
            print(f"interrupted: totals of the {len(results)} seeds that finished", flush=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    total = totals(results) | {
        "docs": args.docs,
        "files": setup.files,
        "cpu": cpu_model(),
        "run_seconds": {k: round(v, 1) for k, v in setup.durations.items()},
    }
    print("total: " + ", ".join(f"{k} {v}" for k, v in total.items()), flush=True)
    out = Path(args.out) if args.out else workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"totals": total, "seeds": results}, indent=2))
    print(f"results: {out}")
    return total


if __name__ == "__main__":
    totals_ = main()
    bad = (
        totals_["lost"]
        or totals_["duplicated"]
        or totals_["extra"]
        or totals_["wrong_text"]
        or totals_["wrong_vector"]
        or totals_["unreadable"]
        or totals_["reject_problems"]
        or totals_["runs_not_finished"]
    )
    sys.exit(1 if bad else 0)
