"""Client tier: Docker's own tools (docker-compose 1.29, the docker CLI 28, the Docker SDK for
Python) driving cnmd in a throwaway TestHost, unchanged.

Every test here is marked ``root``.  ``clienthost`` is one host per module with cnmd running
and the busybox image imported; ``client_env`` is what a user sets to point a Docker tool at
it (``DOCKER_HOST`` = the host's socket, a private ``DOCKER_CONFIG``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT_SKIP_REASON, TestHost, dump_host, is_root

HERE = Path(__file__).resolve().parent
E2E = HERE.parent / "e2e"
if str(E2E) not in sys.path:  # kernel_state and friends from the e2e tier's helpers
    sys.path.insert(0, str(E2E))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="module")
def clienthost(request: pytest.FixtureRequest, busybox_tar: Path) -> Iterator[TestHost]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    failed_before = request.session.testsfailed
    host = TestHost()
    try:
        host.start()
        host.start_daemon()
        host.import_image(busybox_tar, "busybox")
        yield host
        if request.session.testsfailed != failed_before:
            dump_host(host)
    finally:
        host.close()


@pytest.fixture(scope="module")
def client_env(clienthost: TestHost) -> dict[str, str]:
    cfg = clienthost.tmp / "docker-config"
    cfg.mkdir(exist_ok=True)
    return {
        "DOCKER_HOST": f"unix://{clienthost.socket_path}",
        "DOCKER_CONFIG": str(cfg),
        "COMPOSE_INTERACTIVE_NO_CLI": "1",
    }
