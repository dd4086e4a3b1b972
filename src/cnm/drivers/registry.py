"""The built-in network drivers, by the name Docker uses for them.

The daemon (the composition root) calls ``builtin_drivers`` with the kernel and firewall
it chose and hands the mapping to the engine.
"""

from __future__ import annotations

from cnm.drivers.api import NetworkDriver
from cnm.drivers.bridge import BridgeDriver, BridgeKernel
from cnm.drivers.host import HostDriver
from cnm.drivers.null import NullDriver
from cnm.drivers.overlay import OverlayDriver
from cnm.firewall.api import Firewall


def builtin_drivers(kernel: BridgeKernel, firewall: Firewall) -> dict[str, NetworkDriver]:
    """``bridge``, ``host``, ``null`` and ``overlay``, each built on its explicit
    dependencies."""
    drivers: list[NetworkDriver] = [
        BridgeDriver(kernel, firewall),
        HostDriver(),
        NullDriver(),
        OverlayDriver(),
    ]
    return {driver.name: driver for driver in drivers}
