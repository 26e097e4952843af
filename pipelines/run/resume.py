"""What a run still has to embed: all of the source, or what a resumed run has not finished (and the
leftovers of its unfinished commits removed first).
"""

from __future__ import annotations

import logging

from connectors import columns as C
from connectors import lance_commits
from connectors.run_log import RunLog
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
        for f in _staged_data_gone(plan, done):
            del done[f]
    todo = [f for f in plan.source.files if f not in done]
    if plan.resuming and not staged:
        # Rows of files whose commit died before its bookkeeping, and of finished files redone now.
        redo = sorted(runlog.uncertain_files(plan.run_id) | set(changed))
        lance_commits.delete_run_leftovers(plan.table_uri, plan.run_id, redo, C.SOURCE_FILE, options)
        lance_commits.delete_run_leftovers(plan.rejects_uri, plan.run_id, redo, "file", options)
    return todo, committed


def _staged_data_gone(plan: RunPlan, done: dict) -> list[str]:
    """The files of a resumed staged run whose staged fragments are no longer all in storage (a prune
    removed uncommitted files older than Lance's 7 days, or someone did by hand): they are embedded
    again, so that the final commit never references a file that is not there."""
    table = lance_commits.missing_files(plan.table_uri, [x for d in done.values() for x in d.fragments], plan.storage)
    rejects = lance_commits.missing_files(
        plan.rejects_uri, [x for d in done.values() for x in d.reject_fragments], plan.storage
    )
    gone_paths = set(table) | set(rejects)
    if not gone_paths:
        return []
    gone = [
        f
        for f, d in done.items()
        if any(x.path in gone_paths for fragment in (*d.fragments, *d.reject_fragments) for x in fragment.files)
    ]
    log.warning(
        f"run {plan.run_id}: the staged data of {len(gone)} finished file(s) is gone ({len(gone_paths)} data "
        f"file(s), e.g. {sorted(gone_paths)[:2]}; removed by housekeeping?): embedding them again"
    )
    return gone
