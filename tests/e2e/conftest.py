"""End-to-end tier: cnmd and the cnm CLI driving real containers in a throwaway TestHost.

Every test here is marked ``root``.  ``cnmhost`` is one host per module (cnmd running, the
busybox image imported) for tests that do not disturb each other; ``fresh_cnmhost`` is one
host per test (restarts, pools, clean-up accounting).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT_SKIP_REASON, TestHost, dump_host, is_root, test_failed

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.root)


def _ready_host(busybox_tar: Path, *daemon_flags: str) -> TestHost:
    host = TestHost()
    try:
        host.start()
        host.start_daemon(*daemon_flags)
        host.import_image(busybox_tar, "busybox")
    except BaseException:
        print(host.daemon_log_tail(120))
        host.close()
        raise
    return host


@pytest.fixture(scope="module")
def cnmhost(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    failed_before = request.session.testsfailed
    host = _ready_host(busybox_tar)
    try:
        yield host
        if request.session.testsfailed != failed_before:
            dump_host(host)
    finally:
        host.close()


@pytest.fixture
def fresh_cnmhost(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    """A host of its own; daemon flags come from ``@pytest.mark.daemon_flags(...)``."""
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    marker = request.node.get_closest_marker("daemon_flags")
    host = _ready_host(busybox_tar, *(marker.args if marker else ()))
    try:
        yield host
        if test_failed(request):
            dump_host(host)
    finally:
        host.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "daemon_flags(*flags): extra cnmd flags for fresh_cnmhost")
