"""How the worker cuts its stream: small slices for fresh features, larger batches for training.

faust-streaming's ``take_events(max, within)`` starts its ``within`` timer only once the previous
batch has been processed, and holds back the events that arrive meanwhile: with one batch for
both features and training, an event that lands while a batch trains waits for that training
and a whole window more before its features are written (0.36-0.54 s p99 from click to feature
at a 0.2 s window, ``benchmarks.freshness``). Shorter windows would mean more, smaller training
steps. So here the two are cut apart:

- a reader task keeps taking events while the worker works, and stamps each on arrival;
- a **slice** closes ``slice_s`` after its first event arrived (or at the room left in the
  training batch). Each slice is handed over at once: the pipeline writes its features and joins
  its examples (``train=False``);
- a **training batch** closes ``within_s`` after its first event arrived, or at ``max_events``:
  the slice that closes it (possibly empty, when nothing new came) is handed over with
  ``close=True`` and the pipeline trains every example staged since the last training.

Delivery stays at-least-once: a training batch's events are acknowledged, in order, only after
the call that trained them returned (the pipeline may also train earlier, e.g. after a recovery
replay, and says so). A call that raises is not retried here: the caller retries until it
succeeds, as it always did. The reader holds at most ``max_events`` events not yet handed over: a
worker that falls behind stops reading, and Faust's flow control then stops fetching.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterable, Awaitable, Callable, TypeVar

T = TypeVar("T")


async def run_slices(events: AsyncIterable[T], ack: Callable[[T], Awaitable[Any]],
                     handle: Callable[[list[T], bool], Awaitable[bool]],
                     max_events: int, within_s: float, slice_s: float) -> None:
    """Feed ``events`` to ``handle(slice, close)`` until ``events`` ends (re-raising what reading
    it raised); ``handle`` returns True when every event handed over so far was trained, and those
    are then passed to ``ack``. Events handed over but never trained are never acknowledged."""
    if max_events < 1 or within_s < 0 or slice_s < 0:
        raise ValueError(f"need max_events >= 1 and windows >= 0, got {max_events}, {within_s}, {slice_s}")
    queue: asyncio.Queue[tuple[float, T]] = asyncio.Queue(maxsize=max_events)

    async def read() -> None:
        async for event in events:
            await queue.put((time.monotonic(), event))

    reader = asyncio.create_task(read(), name="slice-reader")
    pending: list[T] = []  # handed over, not yet trained
    due = 0.0  # when the training batch of `pending` closes
    try:
        while True:
            wait = max(0.0, due - time.monotonic()) if pending else None
            got = await _take(queue, reader, max_events - len(pending), slice_s, wait)
            if got is None:
                reader.result()  # re-raises the reading's error
                return
            if got and not pending:
                due = got[0][0] + within_s
            piece = [event for _, event in got]
            pending += piece
            close = bool(pending) and (len(pending) >= max_events or time.monotonic() >= due)
            if not piece and not close:
                continue
            if await handle(piece, close):
                for event in pending:
                    await ack(event)
                pending = []
    finally:
        reader.cancel()


async def _take(queue: asyncio.Queue, reader: asyncio.Task, most: int, window_s: float,
                wait_s: float | None) -> list[tuple[float, Any]] | None:
    """Up to ``most`` queued items, closed ``window_s`` after the first one's arrival; [] when none
    came within ``wait_s`` (None: wait as long as it takes); None when the reader has ended and
    nothing is left."""
    first = await _next(queue, reader, wait_s)
    if first is None:
        return None if reader.done() and queue.empty() else []
    got = [first]
    deadline = first[0] + window_s
    while len(got) < most:
        item = await _next(queue, reader, deadline - time.monotonic())
        if item is None:
            break
        got.append(item)
    return got


async def _next(queue: asyncio.Queue, reader: asyncio.Task, timeout: float | None) -> Any:
    """The next queued item; None when ``timeout`` passed first, or when the reader ended and the
    queue is empty."""
    if not queue.empty():
        return queue.get_nowait()
    if reader.done() or (timeout is not None and timeout <= 0):
        return None
    getting = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait((getting, reader), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getting.done():
            getting.cancel()  # Queue.get gives up without taking an item
    if getting.done() and not getting.cancelled():
        return getting.result()
    return await _next(queue, reader, 0) if reader.done() else None
