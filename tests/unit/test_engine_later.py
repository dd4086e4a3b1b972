"""engine/later.py: store changes retried until the store takes them."""

from __future__ import annotations

import asyncio

from cnm.engine.later import Later
from cnm.errors import NotFound, Unavailable


async def test_a_change_is_retried_while_the_store_is_away_and_then_done_once():
    tries: list[str] = []
    away = [True]

    async def release() -> None:
        tries.append("try")
        if away[0]:
            raise Unavailable("etcd did not answer")

    later = Later("test changes", 0.01)
    later.add("a", release)
    await asyncio.sleep(0.05)
    assert later.pending() == ["a"] and len(tries) >= 2
    away[0] = False
    for _ in range(100):
        if not later.pending():
            break
        await asyncio.sleep(0.01)
    assert later.pending() == []
    done = len(tries)
    await asyncio.sleep(0.05)
    assert len(tries) == done  # never again
    await later.close()


async def test_another_error_ends_the_change_and_a_key_added_again_replaces_it():
    calls: list[str] = []

    async def gone() -> None:
        calls.append("gone")
        raise NotFound("no such pool")

    async def first() -> None:
        calls.append("first")
        raise Unavailable("away")

    async def second() -> None:
        calls.append("second")

    later = Later("test changes", 0.01)
    later.add("x", gone)
    later.add("k", first)
    later.add("k", second)  # replaces
    for _ in range(100):
        if not later.pending():
            break
        await asyncio.sleep(0.01)
    assert later.pending() == [] and calls == ["gone", "second"]
    await later.close()


async def test_close_cancels_what_is_pending():
    async def never() -> None:
        raise Unavailable("away")

    later = Later("test changes", 0.01)
    later.add("a", never)
    await later.close()
    assert later.pending() == ["a"]  # dropped with the task: the next start owns it
