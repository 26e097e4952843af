"""``<table>_runs``: what each run has finished, so a run that died can be resumed.

The reasoning behind it: docs/design.md, section connectors/lance/runs.py.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import pyarrow as pa

from connectors.sql import string_literal

__all__ = ["DoneFile", "RunLog", "RUNS_SCHEMA"]

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),  # started | file | committing | dropped | committed | finished
        ("file", pa.string()),
        ("rows", pa.int64()),  # source rows of the file
        ("identity", pa.string()),  # size + ETag/mtime of the file when it was read
        ("fragments", pa.string()),  # JSON list of staged table fragments (overwrite/create runs)
        ("reject_fragments", pa.string()),
        ("mode", pa.string()),  # sink.mode of the run (on ``started``)
        ("seq", pa.int64()),  # nanoseconds since the epoch: orders the events
        ("at", pa.string()),
    ]
)
_LEGACY_START = "*started*"  # the start marker of tables written before the ``kind`` column


@dataclass
class DoneFile:
    """A finished input file and, for staged runs, the fragments that hold its rows."""

    file: str
    rows: int
    identity: str = ""
    fragments: list = field(default_factory=list)  # lance FragmentMetadata
    reject_fragments: list = field(default_factory=list)


def _fragments_json(fragments: Iterable) -> str:
    return json.dumps([f.to_json() for f in fragments])


def _fragments(text: Optional[str]) -> list:
    from lance.fragment import FragmentMetadata

    return [FragmentMetadata.from_json(json.dumps(f)) for f in json.loads(text or "[]")]


class RunLog:
    """Reads and appends the events of ``<db>/<table>_runs.lance``."""

    def __init__(self, db_uri: str, table: str, storage_options: Optional[dict] = None):
        from connectors.lance.table import dataset_uri, runs_table

        self.uri = dataset_uri(db_uri, runs_table(table))
        self.storage_options = storage_options

    def _dataset(self):
        import lance

        try:
            return lance.dataset(self.uri, storage_options=self.storage_options)
        except (ValueError, OSError, FileNotFoundError):
            return None

    def _rows(self, run_id: Optional[str] = None) -> pa.Table:
        ds = self._dataset()
        if ds is None:
            return RUNS_SCHEMA.empty_table()
        where = None if run_id is None else f"run_id = {string_literal(run_id)}"
        rows = ds.to_table(filter=where)
        if "kind" not in rows.column_names:
            return _upgrade(rows)
        return rows.sort_by("seq")

    def _append(self, rows: list[dict]) -> None:
        import lance

        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        seq = time.time_ns()
        data = pa.Table.from_pylist([{"seq": seq + k, "at": now, **r} for k, r in enumerate(rows)], schema=RUNS_SCHEMA)
        ds = self._dataset()
        if ds is not None and "kind" not in ds.schema.names:
            # Written before the ``kind`` column: rewrite the (small) log in today's schema once.
            data = pa.concat_tables([_upgrade(ds.to_table()), data])
            lance.write_dataset(data, self.uri, mode="overwrite", storage_options=self.storage_options)
            return
        mode = "append" if ds is not None else "create"
        lance.write_dataset(data, self.uri, mode=mode, storage_options=self.storage_options)

    # -- events -------------------------------------------------------------------------------

    def mark(self, run_id: str, kind: str, mode: Optional[str] = None) -> None:
        self._append([{"run_id": run_id, "kind": kind, "mode": mode}])

    def mark_started(self, run_id: str, mode: Optional[str] = None) -> None:
        if not self.started(run_id):
            self.mark(run_id, "started", mode)

    def record(self, run_id: str, files: Iterable[DoneFile], kind: str = "file") -> None:
        rows = [
            {
                "run_id": run_id,
                "kind": kind,
                "file": f.file,
                "rows": f.rows,
                "identity": f.identity,
                "fragments": _fragments_json(f.fragments) if f.fragments else None,
                "reject_fragments": _fragments_json(f.reject_fragments) if f.reject_fragments else None,
            }
            for f in files
        ]
        if rows:
            self._append(rows)

    # -- state --------------------------------------------------------------------------------

    def kinds(self, run_id: str) -> set[str]:
        return set(self._rows(run_id).column("kind").to_pylist())

    def started(self, run_id: str) -> bool:
        return "started" in self.kinds(run_id)

    def mode(self, run_id: str) -> Optional[str]:
        rows = self._rows(run_id).to_pylist()
        return next((r["mode"] for r in rows if r["kind"] == "started" and r["mode"]), None)

    def done_files(self, run_id: str, with_fragments: bool = False) -> dict[str, DoneFile]:
        """Files the run finished: the latest record of each (a file redone later has a newer one; one
        ``dropped`` since is not done)."""
        out: dict[str, DoneFile] = {}
        for r in self._rows(run_id).to_pylist():
            if r["kind"] == "dropped":
                out.pop(r["file"], None)
            elif r["kind"] == "file":
                out[r["file"]] = DoneFile(
                    r["file"],
                    r["rows"] or 0,
                    r["identity"] or "",
                    _fragments(r["fragments"]) if with_fragments else [],
                    _fragments(r["reject_fragments"]) if with_fragments else [],
                )
        return out

    def uncertain_files(self, run_id: str) -> set[str]:
        """Files a checkpoint was committing when the run died: their rows may be in the table."""
        latest: dict[str, str] = {}
        for r in self._rows(run_id).to_pylist():
            if r["kind"] in ("file", "committing"):
                latest[r["file"]] = r["kind"]
        return {f for f, kind in latest.items() if kind == "committing"}

    def last_unfinished(self) -> Optional[str]:
        """The run that started last and has not finished, or None."""
        started, finished = {}, set()
        for r in self._rows().to_pylist():
            if r["kind"] == "started":
                started[r["run_id"]] = r["seq"]
            elif r["kind"] == "finished":
                finished.add(r["run_id"])
        open_runs = {k: v for k, v in started.items() if k not in finished}
        return max(open_runs, key=open_runs.get) if open_runs else None


def _upgrade(rows: pa.Table) -> pa.Table:
    """Old logs (run_id, file, rows, at): the start marker row becomes ``started``, others ``file``."""
    out = []
    for k, r in enumerate(rows.to_pylist()):
        start = r["file"] == _LEGACY_START
        out.append(
            {
                "run_id": r["run_id"],
                "kind": "started" if start else "file",
                "file": None if start else r["file"],
                "rows": r["rows"],
                "seq": k,
                "at": r.get("at"),
            }
        )
    return pa.Table.from_pylist(out, schema=RUNS_SCHEMA)
