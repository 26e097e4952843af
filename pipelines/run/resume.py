"""What a run still has to embed: all of the source, or what a resumed run has not finished (and the
leftovers of its unfinished commits removed first).
"""

from __future__ import annotations

import logging

from connectors import columns as C
from connectors.lance.commits import delete_run_leftovers, missing_files
from connectors.lance.runs import DoneFile, RunLog
from pipelines.run.preflight import RunPlan

__all__ = ["files_to_do"]

log = logging.getLogger(__name__)


def files_to_do(plan: RunPlan, runlog: RunLog) -> tuple[list[str], bool]:
    """The files this run still has to embed (all, or what a resumed run has not finished), after
    removing what a resumed run's unfinished commits left; and whether a staged run was committed."""
    options = plan.sink_options
    staged = plan.staged
    committed = staged and "committed" in runlog.kinds(plan.run_id)
    done = runlog.done_files(plan.run_id, with_fragments=staged and not committed)
    # A finished file that was rewritten since is done again; one that is gone stays done (it was read whole).
    changed = [f for f, d in done.items() if f in plan.source.identity and d.identity != plan.source.identity[f]]
    for f in changed:
        del done[f]
    if staged and not committed and done:
        gone = _staged_data_gone(plan, done)
        for f in gone:
            del done[f]
        # Gone from the source too: nothing can redo it, and the table must not hold it. Recorded, so
        # that the final commit (which reads every done file from the log) leaves it out.
        runlog.record(plan.run_id, [d for f, d in gone.items() if f not in plan.source.identity], kind="dropped")
    todo = [f for f in plan.source.files if f not in done]
    if plan.resuming and not staged:
        # Rows of files whose commit died before its bookkeeping, and of finished files redone now.
        redo = sorted(runlog.uncertain_files(plan.run_id) | set(changed))
        delete_run_leftovers(plan.table_uri, plan.run_id, redo, C.SOURCE_FILE, options)
        delete_run_leftovers(plan.rejects_uri, plan.run_id, redo, "file", options)
    return todo, committed


def _staged_data_gone(plan: RunPlan, done: dict) -> dict:
    """The files of a resumed staged run whose staged fragments are no longer all in storage (a prune
    removed uncommitted files older than Lance's 7 days, or someone did by hand), by name: they are
    embedded again (or, gone from the source too, dropped), so that the final commit never references
    a file that is not there."""
    table = missing_files(plan.table_uri, [x for d in done.values() for x in d.fragments], plan.storage)
    rejects = missing_files(plan.rejects_uri, [x for d in done.values() for x in d.reject_fragments], plan.storage)
    gone_paths = set(table) | set(rejects)
    if not gone_paths:
        return {}
    gone = {
        f: DoneFile(f, d.rows, d.identity)
        for f, d in done.items()
        if any(x.path in gone_paths for fragment in (*d.fragments, *d.reject_fragments) for x in fragment.files)
    }
    dropped = sorted(f for f in gone if f not in plan.source.identity)
    log.warning(
        f"run {plan.run_id}: the staged data of {len(gone)} finished file(s) is gone ({len(gone_paths)} data "
        f"file(s), e.g. {sorted(gone_paths)[:2]}; removed by housekeeping?): embedding them again"
        + (
            f", except {len(dropped)} no longer in the source (left out of the table, e.g. {dropped[:2]})"
            if dropped
            else ""
        )
    )
    return gone
