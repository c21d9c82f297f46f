"""The worker's consumer hands a fetched message to the streams without four tasks per message
(:class:`stream_workers.transport.DeliverWithoutTasks`), and still races a delivery that blocks
(a full stream buffer) against the flow's suspension as Faust does: the same winner, the same
result or error, and a losing delivery cancelled where it waits."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from mode import Service

from stream_workers.transport import DeliverWithoutTasks


class CountingService(Service):
    """mode's own ``wait_first``, counting how often the race really runs."""

    races = 0

    async def wait_first(self, *coros, timeout=None):  # type: ignore[no-untyped-def]
        CountingService.races += 1
        return await super().wait_first(*coros, timeout=timeout)


class Consumer(DeliverWithoutTasks, CountingService):
    pass


def run(main):  # type: ignore[no-untyped-def]
    CountingService.races = 0
    return asyncio.run(main())


def test_a_delivery_that_does_not_suspend_wins_without_a_race_and_the_other_waiter_is_closed() -> None:
    delivered = []

    async def deliver(message: str) -> str:
        delivered.append(message)
        return "queued"

    async def main():  # type: ignore[no-untyped-def]
        consumer, suspended = Consumer(), asyncio.Event()
        first, other = deliver("m1"), suspended.wait()
        result = await consumer.wait_first(first, other)
        return result, first, other

    result, first, other = run(main)
    assert result.done == [first] and result.results == ["queued"] and not result.stopped
    assert delivered == ["m1"]
    assert CountingService.races == 0
    assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED


def test_a_delivery_that_suspends_is_continued_and_raced_and_finishes_with_its_result() -> None:
    steps = []

    async def deliver() -> str:
        steps.append("before")
        room = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, room.set_result, "room")  # a buffer that frees up
        got = await room
        steps.append(got)
        await asyncio.sleep(0)  # a bare yield on the way
        steps.append("after")
        return "queued"

    async def main():  # type: ignore[no-untyped-def]
        return await Consumer().wait_first(deliver(), asyncio.Event().wait())

    result = run(main)
    assert result.results == ["queued"] and not result.stopped
    assert steps == ["before", "room", "after"]
    assert CountingService.races == 1


def test_the_flow_suspended_wins_over_a_blocked_delivery_which_is_cancelled_where_it_waits() -> None:
    seen = []

    async def deliver() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # a full buffer that never drains
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main():  # type: ignore[no-untyped-def]
        suspended = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, suspended.set)
        waiter = suspended.wait()
        result = await Consumer().wait_first(deliver(), waiter)
        await asyncio.sleep(0.01)  # the loser's cancellation runs
        return result, waiter

    result, waiter = run(main)
    assert result.done == [waiter]
    assert seen == ["cancelled"]


@pytest.mark.parametrize("suspends", [False, True], ids=["at-once", "after-suspending"])
def test_an_error_in_a_delivery_reaches_the_fetch_loop(suspends: bool) -> None:
    async def deliver() -> None:
        if suspends:
            await asyncio.sleep(0.001)
        raise ValueError("cannot decode")

    async def main():  # type: ignore[no-untyped-def]
        waiter = asyncio.Event().wait()
        with pytest.raises(ValueError, match="cannot decode"):
            await Consumer().wait_first(deliver(), waiter)
        await asyncio.sleep(0.01)  # the other waiter's cancellation runs
        return waiter

    assert inspect.getcoroutinestate(run(main)) == inspect.CORO_CLOSED
