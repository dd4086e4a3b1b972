"""libnftables in-process: one context, and nft's error text made short.

Shared by the nftables backend and the anti-spoofing guard (neither imports the other)."""

from __future__ import annotations

from typing import Any

from cnm.errors import Unavailable


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
