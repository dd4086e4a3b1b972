"""``cnm ui``: the URL of the live page (``cnmd --ui-addr``), token included.

cnmd made the token at start; it hands the URL to whoever may use its Engine API socket
(``GET /cnm/v1/ui``), so the page is open to exactly those who may drive cnmd.
"""

from __future__ import annotations

import json

from cnm.cli import flags as F
from cnm.cli.context import Cli

UI = F.Command(
    "cnm ui",
    "",
    "Print the URL of the live page: the network map, explain and port paths (cnmd --ui-addr)",
    [],
    max_args=0,
)


def cmd_ui(cli: Cli, argv: list[str]) -> int:
    F.parse(UI, argv)
    resp = cli.client.request("GET", "/cnm/v1/ui")
    try:
        body = json.loads(resp.read())
    finally:
        resp.close()
    cli.out(body["url"] + "\n")
    return 0
