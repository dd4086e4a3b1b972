"""Network namespaces: create, delete, and open sockets inside them.

A thread's network namespace is per-thread in Linux, so every entry into another namespace
happens on a *fresh, short-lived* thread that ends right after (never a pooled thread: a
pool would hand a thread still inside a container's namespace to unrelated work).  Inside
it we do only what must be done there (unshare/setns, bind-mount, open a netlink socket,
write a /proc/sys file); the socket then serves requests from the event loop.

Namespaces are made persistent the way ``ip netns add`` does it: an empty file with the
thread's ``/proc/self/task/<tid>/ns/net`` bind-mounted onto it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from cnm.errors import Conflict, KernelError
from cnm.kernel.cmdlog import log_command

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NETLINK_ROUTE = 0
_SOCKET_BUFFER = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


# -- running code inside a namespace ---------------------------------------------------------


def _discard(value: object) -> None:
    """Release what a thread produced for a caller that is gone (a cancelled await)."""
    close = getattr(value, "close", None)
    if callable(close):
        close()


async def run_on_fresh_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread that ends when ``fn`` returns, without blocking the loop.

    The thread may change its own namespace freely: it dies with that change.  If the
    awaiting task is cancelled, a result that can be closed (a socket) is closed."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, exc: BaseException | None) -> None:
        if future.cancelled():
            if exc is None:
                _discard(result)
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def runner() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the loop is closed: nobody will take the result
            if error is None:
                _discard(result)

    threading.Thread(target=runner, name="cnm-netns", daemon=True).start()
    return await future


def enter_netns(path: str) -> None:
    """Move the *calling thread* into the network namespace bind-mounted at ``path``.
    Only ever call this on a thread that ends afterwards."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def open_netlink_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
    return sock


def read_proc_sys(key: str) -> str | None:
    """``/proc/sys/<key>`` in the calling thread's namespace; None when it does not exist."""
    try:
        with open(os.path.join("/proc/sys", key.replace(".", "/"))) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def write_proc_sys(key: str, value: str, netns: str | None) -> str:
    """Write ``value`` to ``key`` in the calling thread's namespace (which is ``netns``, for
    the log line); return the previous value.  Writes nothing when already set."""
    path = os.path.join("/proc/sys", key.replace(".", "/"))
    try:
        with open(path) as f:
            previous = f.read().strip()
        if previous != value:
            log_command(["sysctl", "-w", f"{key}={value}"], netns=netns)
            with open(path, "w") as f:
                f.write(value)
    except OSError as exc:
        raise KernelError(f"cannot set sysctl {key}={value}: {exc.strerror}") from exc
    return previous


# -- persistent namespaces -------------------------------------------------------------------


def netns_exists(path: str) -> bool:
    """Whether a namespace is bind-mounted at ``path`` (an nsfs mount, not a bare file)."""
    return os.path.ismount(path)


def _create_here(path: str, setup: Callable[[], T]) -> T:
    """On a fresh thread: unshare a new netns, pin it at ``path``, then run ``setup``
    inside it.  Undoes the mount when ``setup`` fails."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
    source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
    _check(_libc.mount(source, path.encode(), b"none", MS_BIND, None), f"bind-mount {path}")
    try:
        return setup()
    except BaseException:
        _libc.umount2(path.encode(), MNT_DETACH)
        raise


async def create_netns(path: str, setup: Callable[[], T]) -> T:
    """Create a network namespace bind-mounted at ``path`` and return what ``setup`` (run on
    the creating thread, inside the new namespace) returns -- typically a netlink socket.

    Raises Conflict when a namespace is already mounted at ``path``; leaves nothing behind
    on failure."""
    if netns_exists(path):
        raise Conflict(f"network namespace {path} already exists")
    parent = os.path.dirname(path)
    # what ``ip netns add`` does, for any path (``ip`` itself takes only a name under /run/netns)
    log_command(["touch", path])
    log_command(["unshare", f"--net={path}", "true"])
    try:
        os.makedirs(parent, mode=0o711, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
        os.close(fd)
    except OSError as exc:
        raise KernelError(f"cannot create network namespace file {path}: {exc.strerror}") from exc
    try:
        return await run_on_fresh_thread(lambda: _create_here(path, setup))
    except BaseException as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise KernelError(f"cannot create network namespace {path}: {exc}") from exc
        raise


def same_netns(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` are mounts of one namespace (one nsfs inode)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def name_netns(path: str, named: str) -> None:
    """Make the namespace at ``path`` known by a second path too, ``named`` (a file in
    ``/run/netns``, so ``ip netns exec NAME`` works): a bind mount of it, as ``ip netns
    add`` would have made.  Conflict when ``named`` holds another namespace (never
    replaced: it is not ours); ``delete_netns(named)`` removes it and leaves ``path``."""
    if netns_exists(named):
        if same_netns(path, named):
            return
        raise Conflict(f"{named} already holds another network namespace")
    log_command(["touch", named])
    log_command(["mount", "--bind", path, named])
    try:
        os.makedirs(os.path.dirname(named), mode=0o755, exist_ok=True)
        os.close(os.open(named, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    except OSError as exc:
        raise KernelError(f"cannot create {named}: {exc.strerror}") from exc
    if _libc.mount(path.encode(), named.encode(), b"none", MS_BIND, None) != 0:
        code = ctypes.get_errno()
        try:
            os.unlink(named)
        except OSError:
            pass
        raise KernelError(f"cannot bind-mount {path} on {named}: {os.strerror(code)}")


def delete_netns(path: str) -> None:
    """Lazily unmount and unlink ``path``; "not mounted" and "not there" are success.  The
    namespace itself lives on while a process or socket still uses it."""
    if not os.path.lexists(path):
        return
    log_command(["umount", "--lazy", path])
    log_command(["rm", "-f", path])
    if os.path.ismount(path) and _libc.umount2(path.encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # raced with another unmount
            raise KernelError(f"cannot unmount network namespace {path}: {os.strerror(code)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KernelError(f"cannot remove network namespace file {path}: {exc.strerror}") from exc


async def socket_in_netns(path: str, prepare: Callable[[], None] | None = None) -> socket.socket:
    """A netlink socket inside the namespace at ``path`` (opened on a fresh thread that
    runs ``prepare`` there first, e.g. to write a sysctl)."""

    def work() -> socket.socket:
        enter_netns(path)
        if prepare is not None:
            prepare()
        return open_netlink_socket()

    try:
        return await run_on_fresh_thread(work)
    except FileNotFoundError as exc:
        raise KernelError(f"network namespace {path} does not exist") from exc
    except OSError as exc:
        raise KernelError(f"cannot enter network namespace {path}: {exc}") from exc


async def call_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread inside the namespace at ``path``."""

    def work() -> T:
        enter_netns(path)
        return fn()

    try:
        return await run_on_fresh_thread(work)
    except FileNotFoundError as exc:
        raise KernelError(f"network namespace {path} does not exist") from exc
    except KernelError:
        raise
    except OSError as exc:
        raise KernelError(f"cannot enter network namespace {path}: {exc}") from exc
