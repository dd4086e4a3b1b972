#!/usr/bin/env python3
"""bench/ui.py — how soon the live page (cnmd --ui-addr) shows a change.

In a throwaway host (tests/harness.py), cnmd serves the page; headless Chromium (inside
the same host, driven over its DevTools pipe: tests/chromium.py) has it open.  Each round
makes one change through the Engine API socket and polls the page's DOM every few ms
until it shows the change.  Figures, p50/p99 in ms, from the moment the API answered (the
change is done) to the page showing it:

* ``network connect`` / ``network disconnect`` of a running container;
* ``run`` (create + start) / ``rm -f`` of a container.

Goal (issue 11): the page follows within 1 s.  No peer has such a page; none is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chromium import Chromium  # noqa: E402
from common import REPO, pct  # noqa: E402
from harness import TestHost  # noqa: E402

GOAL_MS = 1000.0
LISTED = (
    "Object.fromEntries([...document.querySelectorAll('#containers li[data-name]')]"
    ".map(li => [li.dataset.name, li.querySelector('.nets').textContent]))"
)


def until(browser: Chromium, predicate, timeout: float = 10.0) -> float:
    """Seconds (monotonic) at which ``predicate(listed)`` first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(browser.evaluate(LISTED)):
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError("the page did not show the change in time")


def api(host: TestHost, method: str, path: str, body: object = None) -> float:
    reply = host.api(method, path, body)
    if reply.status >= 300:
        raise RuntimeError(f"{method} {path}: {reply.status} {reply.message()}")
    return time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--image", default=str(REPO / "images" / "busybox.tar"))
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"connect": [], "disconnect": [], "run": [], "rm": []}
    with TestHost() as host:
        host.start_daemon("--ui-addr", "127.0.0.1:8088")
        host.import_image(args.image, "busybox")
        host.cnm("network", "create", "front")
        host.cnm("network", "create", "back")
        host.cnm("run", "-d", "--name", "db", "--network", "back", "busybox", "sleep", "1d")
        url = host.cnm("ui").stdout.strip()
        with tempfile.TemporaryDirectory(prefix="cnm-bench-ui-", dir=host.tmp) as profile:
            browser = Chromium(Path(profile), wrap=host.inside, env=host.environ())
            try:
                browser.open(url)
                until(browser, lambda shown: "db" in shown)
                for i in range(args.rounds):
                    done = api(host, "POST", "/networks/front/connect", {"Container": "db"})
                    figures["connect"].append(until(browser, lambda s: "front" in s.get("db", "")) - done)
                    done = api(host, "POST", "/networks/front/disconnect", {"Container": "db"})
                    figures["disconnect"].append(
                        until(browser, lambda s: "front" not in s.get("db", "")) - done
                    )
                    name = f"r{i}"
                    host.cnm("run", "-d", "--name", name, "--network", "back", "busybox", "sleep", "1d")
                    done = time.monotonic()
                    figures["run"].append(until(browser, lambda s, n=name: n in s) - done)
                    host.cnm("rm", "-f", name)
                    done = time.monotonic()
                    figures["rm"].append(until(browser, lambda s, n=name: n not in s) - done)
            finally:
                browser.close()
    print(f"live page: from the change done to the page showing it ({args.rounds} rounds each)")
    worst = 0.0
    for what, values in figures.items():
        ms = [v * 1000 for v in values]
        worst = max(worst, pct(ms, 99))
        print(f"  cnm: {what}: p50={pct(ms, 50):.0f} ms p99={pct(ms, 99):.0f} ms max={max(ms):.0f} ms")
    print(
        f"  goal: within {GOAL_MS:.0f} ms: {'met' if worst <= GOAL_MS else 'NOT met'} (worst p99 {worst:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
