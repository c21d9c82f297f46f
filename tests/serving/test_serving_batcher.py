"""Dynamic batching: concurrent requests are served together, each gets its own result, a lone
request is served at once, and a failing batch fails only its own requests."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from serving.batcher import Batcher


def test_concurrent_requests_are_served_together_in_order() -> None:
    seen: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        seen.append(list(items))
        await asyncio.sleep(0.01)  # the next requests arrive while this batch is served
        return [2 * i for i in items]

    async def main() -> list[int]:
        batcher: Batcher[int, int] = Batcher(run, max_batch=4)
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))

    assert asyncio.run(main()) == [2 * i for i in range(10)]
    assert sorted(i for batch in seen for i in batch) == list(range(10))
    assert max(len(b) for b in seen) == 4 and len(seen) <= 4


def test_a_lone_request_is_served_without_waiting_for_company() -> None:
    async def main() -> tuple[int, int]:
        batcher: Batcher[int, int] = Batcher(lambda items: asyncio.sleep(0, [i + 1 for i in items]))
        first = await asyncio.wait_for(batcher.submit(1), 1.0)
        second = await asyncio.wait_for(batcher.submit(2), 1.0)
        return first, second

    assert asyncio.run(main()) == (2, 3)


def test_an_error_fails_its_batch_and_the_next_batch_is_served() -> None:
    async def run(items: Sequence[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad batch")
        return list(items)

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(run, max_batch=1)
        results = await asyncio.gather(batcher.submit(0), batcher.submit(5), return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == 5

    asyncio.run(main())


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(lambda items: asyncio.sleep(0, []), max_batch=0)
