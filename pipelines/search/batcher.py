"""The query service's batcher: queries that wait while the model is busy go in together, and a batch
that fails is answered query by query, so one bad query never fails the others."""

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Work:
    """One checked query in a batch: a text (embedded unless ``mode`` is text) or a vector, and what
    to search with."""

    text: Optional[str]
    vector: Optional[np.ndarray]
    k: int
    where: Optional[str]  # built by build_filter: typed, quoted
    columns: list[str]
    mode: str = "vector"  # pipelines.search.searcher.SEARCH_MODES
    fusion: Optional[dict] = None  # hybrid only: rrf_k, text_weight (Searcher.search's)


class Batcher:
    """Queries wait while the model is busy and go in together once it is free: no added wait at low
    load, full batches under load.

    Not ``@serve.batch``: it forms a batch from what arrives within ``batch_wait_timeout_s`` of the
    first query, also while the previous batch still runs, so under load the batches stay as small
    as the window (1.8-2.7 queries per forward pass with 32 clients waiting, on the demo table; this
    batcher: 15.8, docs/benchmarks.md) and a longer window delays every query at low load.
    """

    def __init__(self, run: Callable[[list], list], max_size: int):
        self.run = run  # blocking: a batch in, one answer per item out, in order
        self.max_size = max_size
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.busy = False
        self._task: Optional[asyncio.Task] = None  # held: the loop keeps only a weak reference to a task

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((item, future))
        if not self.busy:  # the task starts on the loop's next turn: queries of this turn join it
            self.busy = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[: self.max_size], self.waiting[self.max_size :]
                await self._answer(batch)
        finally:
            self.busy = False

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        """One run for the batch; if it fails, one run per query, so that a query the checks let
        through but the model or Lance refuses fails alone and the others get their answers."""
        try:
            answers = await asyncio.to_thread(self.run, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001  each caller gets its error, none waits for ever
            if len(batch) > 1:
                for one in batch:
                    if not one[1].done():  # a client that went away cancelled its future
                        await self._answer([one])
            elif not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)
