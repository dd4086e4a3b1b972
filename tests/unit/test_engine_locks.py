"""engine/locks.py: shared and exclusive holders, arrival order, the one lock order."""

from __future__ import annotations

import asyncio

import pytest

from cnm.engine.locks import CONTAINER, NETWORK, KeyedLocks, LockOrderError


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_shared_holders_overlap_and_exclusive_waits_for_them():
    locks = KeyedLocks()
    log: list[str] = []
    release = asyncio.Event()

    async def shared(name: str) -> None:
        async with locks.hold(networks=["n"]):
            log.append(f"{name} in")
            await release.wait()
            log.append(f"{name} out")

    async def exclusive() -> None:
        async with locks.hold(networks=["n"], networks_exclusive=True):
            log.append("rm")

    tasks = [asyncio.ensure_future(shared("a")), asyncio.ensure_future(shared("b"))]
    await settle()
    tasks.append(asyncio.ensure_future(exclusive()))
    await settle()
    assert log == ["a in", "b in"]
    release.set()
    await asyncio.gather(*tasks)
    assert log[-1] == "rm"
    assert len(locks) == 0  # nothing kept once idle


async def test_waiting_exclusive_holder_is_not_starved_by_later_shared_ones():
    locks = KeyedLocks()
    log: list[str] = []
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold(networks=["n"]):
            await release.wait()

    async def rm() -> None:
        async with locks.hold(networks=["n"], networks_exclusive=True):
            log.append("rm")

    async def later() -> None:
        async with locks.hold(networks=["n"]):
            log.append("later")

    tasks = [asyncio.ensure_future(first())]
    await settle()
    tasks.append(asyncio.ensure_future(rm()))
    await settle()
    tasks.append(asyncio.ensure_future(later()))
    await settle()
    assert log == []  # the later shared holder queues behind the waiting rm
    release.set()
    await asyncio.gather(*tasks)
    assert log == ["rm", "later"]


async def test_out_of_order_request_is_refused():
    locks = KeyedLocks()
    async with locks.hold(containers=["c"]):
        assert locks.held() == [(CONTAINER, "c")]
        with pytest.raises(LockOrderError):
            async with locks.hold(networks=["n"]):
                pass
        with pytest.raises(LockOrderError):  # not re-entrant: that would hang
            async with locks.hold(containers=["c"]):
                pass
    async with locks.hold(networks=["z", "a"], containers=["y", "b"]):
        assert locks.held() == [(NETWORK, "a"), (NETWORK, "z"), (CONTAINER, "b"), (CONTAINER, "y")]
    assert locks.held() == [] and len(locks) == 0


async def test_cancelled_waiter_lets_the_others_through():
    locks = KeyedLocks()
    release = asyncio.Event()
    got: list[str] = []

    async def holder() -> None:
        async with locks.hold(networks=["n"]):
            await release.wait()

    async def waiter(name: str, exclusive: bool) -> None:
        async with locks.hold(networks=["n"], networks_exclusive=exclusive):
            got.append(name)

    first = asyncio.ensure_future(holder())
    await settle()
    rm = asyncio.ensure_future(waiter("rm", True))
    await settle()
    shared = asyncio.ensure_future(waiter("shared", False))
    await settle()
    rm.cancel()  # the shared waiter was queued behind it only
    await settle()
    assert got == ["shared"]
    release.set()
    await first
    await shared
    assert len(locks) == 0


async def test_opposite_orders_of_request_do_not_deadlock():
    """Two changes naming the same objects in opposite orders take them in one order."""
    locks = KeyedLocks()

    async def change(networks: list[str], containers: list[str]) -> None:
        for _ in range(20):
            async with locks.hold(networks=networks, containers=containers):
                await asyncio.sleep(0)

    await asyncio.wait_for(
        asyncio.gather(change(["a", "b"], ["x", "y"]), change(["b", "a"], ["y", "x"])), timeout=5
    )
