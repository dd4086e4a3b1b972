"""kernel/netlink.py: a dump the kernel interrupted (EBUSY, NLM_F_DUMP_INTR) runs again."""

from __future__ import annotations

import errno

import pytest
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

from cnm.kernel import netlink


async def test_interrupted_dump_is_run_again():
    failures = [NetlinkError(errno.EBUSY), NetlinkDumpInterrupted()]

    async def dump() -> list[str]:
        if failures:
            raise failures.pop(0)
        return ["eth0"]

    assert await netlink._retried(dump) == ["eth0"]


async def test_other_errors_and_endless_interruptions_are_raised():
    async def denied() -> None:
        raise NetlinkError(errno.EPERM)

    with pytest.raises(NetlinkError):
        await netlink._retried(denied)

    calls = 0

    async def busy() -> None:
        nonlocal calls
        calls += 1
        raise NetlinkError(errno.EBUSY)

    with pytest.raises(NetlinkError):
        await netlink._retried(busy)
    assert calls == netlink.DUMP_ATTEMPTS
