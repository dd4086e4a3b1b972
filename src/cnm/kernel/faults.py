"""Aimed crashes for the fault tests: ``CNM_TEST_CRASH_AT=<point>`` makes cnmd SIGKILL
itself when it reaches ``crash_point(<point>)``.

The points sit right after a kernel object or a container comes to life and before the
store records it -- the windows a restart must be able to clean up.  Unset (always, outside
the tests) a crash point is one dictionary-free string comparison.
"""

from __future__ import annotations

import logging
import os
import signal

ENV = "CNM_TEST_CRASH_AT"
_AT = os.environ.get(ENV, "")

log = logging.getLogger("cnm.kernel")


def crash_point(name: str) -> None:
    """SIGKILL this process if the tests aimed a crash at ``name``."""
    if _AT and _AT == name:
        log.warning("%s=%s: killing cnmd here", ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)
