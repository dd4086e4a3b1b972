"""What cnmd's start does to be quick, and that it changes nothing else."""

from __future__ import annotations

import ssl
import subprocess
import sys

from cnm.daemon.main import _no_default_ca_store


def test_ca_store_skipped_only_while_inside():
    before = ssl.create_default_context().cert_store_stats()
    with _no_default_ca_store():
        assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0
    assert ssl.create_default_context().cert_store_stats() == before
    assert "set_default_verify_paths" not in vars(ssl.SSLContext)


def test_ca_store_restored_when_the_import_fails():
    try:
        with _no_default_ca_store():
            raise ImportError("no such module")
    except ImportError:
        pass
    assert "set_default_verify_paths" not in vars(ssl.SSLContext)


def test_the_api_imported_without_reading_the_ca_store():
    """aiohttp's client contexts (made at its import) hold no CA, every later context the
    system's; the API app still imports whole."""
    script = (
        "import ssl\n"
        "from cnm.daemon.main import _no_default_ca_store\n"
        "with _no_default_ca_store():\n"
        "    from cnm.api.app import make_app\n"
        "from aiohttp import connector\n"
        "print(connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],\n"
        "      ssl.create_default_context().cert_store_stats() == ssl.create_default_context().cert_store_stats())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "True"]


_PYROUTE2 = r"""
import sys
from cnm.daemon.main import _pyroute2_parts_only
_pyroute2_parts_only()
import cnm.kernel.netlink  # what cnmd uses of pyroute2
skipped = [m for m in ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack") if m in sys.modules]
import asyncio
from pyroute2.iproute import AsyncIPRoute

async def loopback():  # a read-only dump: the parts work
    async with AsyncIPRoute() as ipr:
        return [link.get("ifname") async for link in await ipr.link("dump") if link.get("ifname") == "lo"]

assert asyncio.run(loopback()) == ["lo"]
import pyroute2
assert pyroute2.IPRoute and pyroute2.NDB and pyroute2.__version__  # the whole package, on demand
print(skipped, "pyroute2.ndb.main" in sys.modules)
"""


def test_pyroute2_parts_only_until_the_package_itself_is_asked():
    """cnmd imports the parts of pyroute2 it uses, not the package's ``__init__`` (which
    imports all of pyroute2); the first name asked of the package runs it then."""
    done = subprocess.run(
        [sys.executable, "-c", _PYROUTE2], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True"]
