"""Suite-wide pytest wiring, kept light: the unit tier must stay fast and root-free.

* Tests marked ``root`` skip, with the reason, when not run as root; they never skip otherwise.
* ``testhost``: a throwaway private host (``tests/harness.py``) for one test.
* ``busybox_tar``: the busybox root filesystem, built once per session.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # `import harness` from any tier
    sys.path.insert(0, str(TESTS))

from harness import REPO, ROOT_SKIP_REASON, TestHost, dump_host, is_root, test_failed  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and not is_root():
        pytest.skip(ROOT_SKIP_REASON)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Remember each phase's report so host fixtures can dump cnmd's log when a test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def testhost(request: pytest.FixtureRequest) -> Iterator[TestHost]:
    if not is_root():
        pytest.skip(ROOT_SKIP_REASON)
    with TestHost() as host:
        yield host
        if test_failed(request):
            dump_host(host)


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("image") / "busybox.tar"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make-busybox-tar"), str(out)],
        check=True,
        capture_output=True,
    )
    return out
