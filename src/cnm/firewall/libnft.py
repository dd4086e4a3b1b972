"""libnftables in-process: one context, and nft's error text made short.

Shared by the nftables backend and the anti-spoofing guard (neither imports the other)."""

from __future__ import annotations

import json
from typing import Any

from cnm.errors import FirewallError, Unavailable
from cnm.kernel.cmdlog import log_script


def nft_context(json_output: bool) -> Any:
    """A libnftables context acting on the network namespace of the calling thread (its
    netlink socket is opened here).  Create contexts at start-up only (DESIGN.md, rule 8)."""
    try:
        import nftables  # pip-nftables, binds Debian's libnftables1
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise Unavailable(f"python nftables bindings are not installed: {exc}") from exc
    try:
        nft = nftables.Nftables()
    except OSError as exc:
        raise Unavailable(f"libnftables is not available: {exc}") from exc
    nft.set_json_output(json_output)
    return nft


def first_error(err: str) -> str:
    """nft's message without the echoed script and caret lines (libnftables echoes the
    wrong line of a multi-line buffer, so the echo is not worth keeping)."""
    lines = [line for line in err.splitlines() if line.strip()]
    for line in lines:
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return lines[0] if lines else "unknown error"


class Session:
    """Two libnftables contexts of the calling thread's namespace: one applies scripts (each
    one transaction, logged as the command a person would type), one reads JSON back."""

    def __init__(self) -> None:
        self._apply = nft_context(json_output=False)
        self._list = nft_context(json_output=True)

    def apply(self, script: str) -> None:
        """Run ``script`` as one nft transaction (all or nothing); FirewallError otherwise."""
        log_script("nft -f -", script)
        rc, _out, err = self._apply.cmd(script)
        if rc != 0:
            raise FirewallError(f"nft: {first_error(err)}")

    def list_json(self, what: str, terse: bool) -> list[dict[str, Any]] | None:
        """``nft -j [-t] list <what>``; None when the table (or the object) is absent."""
        self._list.set_terse_output(terse)
        rc, out, err = self._list.cmd(f"list {what}")
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise FirewallError(f"nft: {first_error(err)}")
        listed: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return listed
