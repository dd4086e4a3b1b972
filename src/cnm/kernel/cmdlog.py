"""Every kernel change, logged as the command a person would type.

``cnmd --log-level debug`` prints these lines (logger ``cnm.kernel``), so a learner can
replay what cnm did with iproute2 / nft by hand, and so can we when debugging.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence

log = logging.getLogger("cnm.kernel")


def log_command(command: str | Sequence[str], netns: str | None = None) -> None:
    """Log ``command`` (a string, or argv joined with shell quoting); inside a namespace
    other than cnmd's own, as ``nsenter --net=<path> <command>``."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    text = command if isinstance(command, str) else shlex.join(command)
    if netns:
        text = f"nsenter --net={shlex.quote(netns)} {text}"
    log.debug("%s", text)


def log_comment(text: str) -> None:
    """Log ``text`` as a shell comment (``# …``): what a logged command's numbers mean,
    in a form a replayed log skips."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("# %s", text)


def log_script(tool: str, script: str) -> None:
    """Log a multi-line batch (``nft -f -``, ``iptables-restore --noflush``) as a heredoc."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug("%s <<'EOF'\n%s\nEOF", tool, script.rstrip("\n"))
