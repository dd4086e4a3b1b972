"""One exception tree for all of cnm.

    CnmError                      every error cnm raises on purpose
    ├── InvalidArgument           bad input: malformed names, CIDRs, ports, options (HTTP 400)
    ├── NotFound                  no such network/container/image/exec (HTTP 404)
    ├── Conflict                  name in use, address in use, wrong state (HTTP 409)
    ├── Forbidden                 allowed syntax, refused operation: predefined networks,
    │                             networks with active endpoints (HTTP 403)
    ├── NotModified               start of a started container, stop of a stopped one (HTTP 304)
    ├── Unavailable               a dependency is missing or not answering (HTTP 503)
    └── SystemFailure             the kernel or a helper program failed (HTTP 500)
        ├── KernelError           netlink / netns / sysctl / mount failures
        ├── FirewallError         nft / iptables-restore failures
        └── RuntimeFailure        runc failures

Lower layers translate foreign exceptions (``NetlinkError``, ``OSError``,
``sqlite3.Error``, ``CalledProcessError``) into these at their boundary, with
``raise ... from exc``.  Only ``cnm.api.errors`` maps a category to an HTTP status.
"""

from __future__ import annotations


class CnmError(Exception):
    """Base of every error cnm raises on purpose; ``str(err)`` is the user-facing message."""

    status = 500  # informative only; the HTTP mapping lives in cnm.api.errors

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(CnmError):
    status = 400


class NotFound(CnmError):
    status = 404


class Conflict(CnmError):
    status = 409


class Forbidden(CnmError):
    status = 403


class NotModified(CnmError):
    status = 304


class Unavailable(CnmError):
    status = 503


class SystemFailure(CnmError):
    status = 500


class KernelError(SystemFailure):
    """A netlink, netns, mount or sysctl operation failed."""


class FirewallError(SystemFailure):
    """Applying firewall rules failed."""


class RuntimeFailure(SystemFailure):
    """runc (or the container's rootfs preparation) failed."""


class TeardownErrors(SystemFailure):
    """Teardown went on past failures and reports them all at the end."""

    def __init__(self, what: str, errors: list[BaseException]) -> None:
        detail = "; ".join(str(e) for e in errors)
        super().__init__(f"{what}: {len(errors)} error(s) during teardown: {detail}")
        self.errors = errors
