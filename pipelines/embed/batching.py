"""Token-budget batching: group length-sorted texts so each forward pass pads little."""

from __future__ import annotations

from typing import Iterator, Sequence

__all__ = ["token_budget_batches"]


def token_budget_batches(lengths: Sequence[int], budget: int) -> Iterator[list[int]]:
    """Yield lists of row indices, longest first, each costing at most ``budget`` padded tokens.

    The cost of a batch is ``len(batch) * max_length`` (what the padded tensor holds). A single row
    longer than the budget still forms a batch of its own, so nothing is ever dropped.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    batch_max = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        # Rows come longest first, so the first row of a batch fixes its padded length.
        if batch and (len(batch) + 1) * batch_max > budget:
            yield batch
            batch, batch_max = [], 0
        if not batch:
            batch_max = n
        batch.append(i)
    if batch:
        yield batch
