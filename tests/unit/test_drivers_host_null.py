"""The host and null drivers are no-ops; the registry names the built-in drivers."""

from __future__ import annotations

import pytest

from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.drivers.registry import builtin_drivers
from cnm.kernel.fake import FakeKernel
from cnm.model.endpoint import EndpointRecord, SandboxRecord
from cnm.model.network import NetworkRecord, NetworkSpec

NET_ID = "a1" * 32
OTHER_ID = "b2" * 32


@pytest.mark.parametrize("cls", [HostDriver, NullDriver])
async def test_host_and_null_touch_nothing(cls):
    kernel = FakeKernel()
    drv = cls()
    assert not drv.needs_ipam
    net = NetworkRecord(id=NET_ID, name="none", driver=drv.name, created="x")
    ep = EndpointRecord(id=OTHER_ID, network_id=NET_ID, container_id="c", sandbox_id="s", name="c")
    drv.validate(NetworkSpec(name="none", driver=drv.name))
    await drv.create_network(net)
    await drv.join(net, ep, SandboxRecord(id="s", container_id="c", key=""))
    await drv.leave(net, ep, None)
    await drv.restore([net], [ep])
    await drv.delete_network(net)
    assert kernel.commands == []  # (they are not even given a kernel)


def test_registry_names():
    drivers = builtin_drivers(FakeKernel(), firewall=None)  # type: ignore[arg-type]
    assert sorted(drivers) == ["bridge", "host", "null", "overlay"]
    assert drivers["bridge"].needs_ipam and not drivers["host"].needs_ipam
