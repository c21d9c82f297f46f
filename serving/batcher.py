"""Dynamic batching of concurrent requests on the event loop.

While one batch is being served (its CPU work, or awaiting Redis), the requests that arrive wait
in a list; when it is done they are served together as the next batch. An idle server therefore
answers a lone request at once (a batch of one, no added delay), and a busy one pays each fixed
per-batch cost -- Redis round trips, tower and ranking-head passes, FAISS calls -- once per batch
instead of once per request, which is what lets one Python process keep up with hundreds of
requests per second on one core.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Serves items one batch at a time with ``run(items) -> results`` (same order, same length)."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.run, self.max_batch = run, max_batch
        self._waiting: list[tuple[T, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (an exception of its batch is raised here)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch:]
            self.batches += 1
            self.items += len(batch)
            try:
                results = await self.run([item for item, _ in batch])
            except Exception as exc:  # every request of the batch gets the error (a 500 for each)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(result)
