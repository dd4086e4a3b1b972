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
