"""Checkpoints: the driver turns the sink's per-file fragments into commits a crash cannot tear.

The reasoning behind it: docs/design.md, section pipelines/run/checkpoints.py.
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from connectors.errors import RunError
from connectors.lance.commits import (
    MissingFilesError,
    check_version,
    commit_checkpoint,
    commit_overwrite,
    require_files,
)
from connectors.lance.runs import DoneFile, RunLog
from connectors.lance.table import REJECT_SCHEMA
from pipelines.run.progress import Progress

__all__ = ["Checkpointer", "IncompleteRunError"]

_FRAGMENT_FIELDS = ("fragments", "reject_fragments", "replaced_rowids")


class IncompleteRunError(RunError):
    """The stream ended but some input file's rows did not all come back (a lost block)."""


@dataclass
class _Pending:
    rows: int = 0  # source rows of the file seen so far
    rows_due: int = 0  # table rows (chunks) its documents seen so far became
    rows_seen: int = 0  # table rows (chunks) of it seen so far
    fragments: list = field(default_factory=list)
    reject_fragments: list = field(default_factory=list)
    replaced: list = field(default_factory=list)  # arrays of row addresses
    counts: list = field(default_factory=list)  # its stats rows without fragments: counted once it is done


class Checkpointer:
    """Holds written-but-uncommitted fragments per file; checkpoints complete files."""

    def __init__(
        self,
        *,
        run_id: str,
        runlog: RunLog,
        table_uri: str,
        rejects_uri: str,
        table_schema,
        expected_rows: dict[str, int],
        identity: dict[str, str],
        staged: bool,
        checkpoint_rows: int,
        table_version: Optional[int],
        rejects_version: Optional[int],
        on_batch: Callable[[dict], None],
        before_commit: Callable[[], None] = lambda: None,
        storage_options: Optional[dict] = None,
        progress: Optional[Progress] = None,
        on_checkpoint: Callable[[dict, list], None] = lambda timing, done: None,
        storage=None,
    ):
        self.run_id, self.runlog = run_id, runlog
        self.on_checkpoint = on_checkpoint  # (this checkpoint's timings, its DoneFiles)
        self.table_uri, self.rejects_uri, self.table_schema = table_uri, rejects_uri, table_schema
        self.expected_rows, self.identity = expected_rows, identity
        self.staged = staged
        self.checkpoint_rows = checkpoint_rows
        self.table_version, self.rejects_version = table_version, rejects_version
        self.start_version = table_version  # None: the table did not exist when the run began
        self.on_batch, self.before_commit = on_batch, before_commit
        self.options = storage_options
        self.storage = storage  # connectors.storage.Storage: where to look for the files a commit references
        self.pending: dict[str, _Pending] = {}
        self.emptied: set[int] = set()  # fragments whose every row this run's commits replaced
        self.progress = progress
        self.rows_seen = 0  # source rows of every batch the sink sent back
        self.done: set[str] = set()  # files this run committed or staged
        self.rows_since = 0
        self.checkpoints = 0
        self.rows_done = 0  # source rows of the files checkpointed so far
        # Per checkpoint: rows done after it, seconds since the checkpointer began (``at_s``: the rate
        # between two checkpoints), seconds in table commits and in run-log records (a 100M-row run
        # makes thousands; both must stay flat as the table and the log grow).
        self.timings: list[dict] = []
        self.began = time.perf_counter()

    def add(self, row: dict) -> None:
        """One sink stats row (one source file's rows of one batch)."""
        fragments = pickle.loads(row["fragments"])
        rejects = pickle.loads(row["reject_fragments"])
        replaced = pickle.loads(row["replaced_rowids"])
        counts = {k: v for k, v in row.items() if k not in _FRAGMENT_FIELDS}
        for f, n in json.loads(row["files"]).items():
            self.pending.setdefault(f, _Pending()).rows += n
        own = self.pending.setdefault(row["file"], _Pending())
        own.counts.append(counts)
        own.rows_due += row.get("rows_due", 0)
        own.rows_seen += row.get("rows_seen", 0)
        for f in {*fragments, *rejects, *replaced}:
            p = self.pending.setdefault(f, _Pending())
            p.fragments.extend(fragments.get(f, []))
            p.reject_fragments.extend(rejects.get(f, []))
            if f in replaced:
                p.replaced.append(replaced[f])
        self.rows_since += row["rows"]
        self.rows_seen += row["rows"]
        if self.progress:
            self.progress.rows_seen(self.rows_seen)
        if self.rows_since >= self.checkpoint_rows:
            self.checkpoint()

    def _complete(self) -> list[str]:
        # Every document seen, and every row they became: a chunked document's windows can arrive in
        # several batches, and a file committed at its last document's first window lost the others.
        return [
            f for f, p in self.pending.items() if p.rows >= self.expected_rows.get(f, 0) and p.rows_due == p.rows_seen
        ]

    def checkpoint(self) -> None:
        """Commit (or stage) every complete file; incomplete ones wait for their remaining rows."""
        files = self._complete()
        if not files:
            return  # tried again at the next batch: a checkpoint is due as soon as a file completes
        self.rows_since = 0
        self.before_commit()
        done = [
            DoneFile(
                f,
                self.expected_rows.get(f, self.pending[f].rows),
                self.identity.get(f, ""),
                self.pending[f].fragments,
                self.pending[f].reject_fragments,
            )
            for f in files
        ]
        started = time.perf_counter()
        commit_s = 0.0
        if self.staged:
            self.runlog.record(self.run_id, done)
        else:
            commit_s = self._commit(files, done)
        self.rows_done += sum(d.rows for d in done)
        self.timings.append(
            {
                "rows": self.rows_done,
                "at_s": round(time.perf_counter() - self.began, 2),
                "commit_s": round(commit_s, 4),
                "runlog_s": round(time.perf_counter() - started - commit_s, 4),
            }
        )
        self.done.update(files)
        for f in files:
            for counts in self.pending.pop(f).counts:
                self.on_batch(counts)
        self.on_checkpoint(self.timings[-1], done)
        self.checkpoints += 1
        if self.progress:
            self.progress.checkpoint(self.checkpoints, self.rows_done)

    def _commit(self, files: list[str], done: list[DoneFile]) -> float:
        """Append/upsert: commit the files' fragments (and the rows they replace) onto the table and the
        rejects table, recorded in the run log before (``committing``) and after; the seconds the commits took."""
        fragments = [x for d in done for x in d.fragments]
        rejects = [x for d in done for x in d.reject_fragments]
        require_files(self.table_uri, fragments, "the table", self.storage)
        require_files(self.rejects_uri, rejects, "the rejects table", self.storage)
        self.runlog.record(self.run_id, [DoneFile(d.file, d.rows, d.identity) for d in done], kind="committing")
        replaced = [a for f in files for a in self.pending[f].replaced]
        commit_started = time.perf_counter()
        self.table_version = commit_checkpoint(
            self.table_uri,
            self.table_schema,
            fragments,
            np.concatenate(replaced) if replaced else np.zeros(0, np.uint64),
            self.table_version,
            self.options,
            emptied=self.emptied,
        )
        self.rejects_version = commit_checkpoint(
            self.rejects_uri,
            REJECT_SCHEMA,
            rejects,
            np.zeros(0, np.uint64),
            self.rejects_version,
            self.options,
            what="the rejects table",
        )
        commit_s = time.perf_counter() - commit_started
        self.runlog.record(self.run_id, [DoneFile(d.file, d.rows, d.identity) for d in done])
        return commit_s

    def drop_incomplete(self, files: list[str]) -> list[str]:
        """The files of ``files`` not done yet, to be read again: their fragments so far are forgotten
        (uncommitted orphans, as after a crash) and so are their counts."""
        complete = set(self._complete())
        redo = [f for f in files if f not in self.done and f not in complete]
        for f in redo:
            self.pending.pop(f, None)
        return redo

    def finish(self, todo: list[str]) -> None:
        """After the stream: checkpoint the rest; every file of ``todo`` must now be complete."""
        for f in todo:  # a file without rows produces no batch
            if self.expected_rows.get(f, 0) == 0:
                self.pending.setdefault(f, _Pending())
        self.checkpoint()
        if self.pending:
            short = {f: f"{p.rows}/{self.expected_rows.get(f)}" for f, p in list(self.pending.items())[:3]}
            raise IncompleteRunError(
                f"rows of {len(self.pending)} input files did not all come back (rows seen/"
                f"expected: {short}); nothing of them was committed; run again with the "
                f"same run.id to redo them"
            )

    def publish(self, schema_of_rejects) -> None:
        """Staged runs: commit every staged fragment of the run (all its done files) in one Overwrite,
        once every data file it references is known to be there."""
        self.before_commit()
        done = self.runlog.done_files(self.run_id, with_fragments=True).values()
        check_version(self.table_uri, self.table_version, "the table", self.options)
        fragments = [x for d in done for x in d.fragments]
        rejects = [x for d in done for x in d.reject_fragments]
        try:
            require_files(self.table_uri, fragments, "the table", self.storage)
            require_files(self.rejects_uri, rejects, "the rejects table", self.storage)
        except MissingFilesError as exc:
            raise MissingFilesError(
                f"{exc}. Resume the run with --set run.id={self.run_id}: the files whose staged data is gone "
                "are embedded again"
            ) from None
        commit_overwrite(self.rejects_uri, schema_of_rejects, rejects, self.options)
        self.table_version = commit_overwrite(self.table_uri, self.table_schema, fragments, self.options)
        self.runlog.mark(self.run_id, "committed")
