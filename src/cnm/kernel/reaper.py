"""Deleting veth pairs off the request path.

Unregistering a network device waits for RCU grace periods: ``ip link del vethX`` takes
15-30 ms on the machines cnm targets, nearly all of it in ``rcu_barrier()`` *after* the
RTNL lock is released (other netlink requests go on meanwhile), and the same for one
device as for a batch.  So ``network disconnect`` takes the host end out of service at
once (``nomaster down``: the bridge forgets the port, the container side loses its
carrier) and moves it into ``RETIRED_GROUP``; this reaper then deletes the whole group,
``ip link del group RETIRED_GROUP``, on its own thread, batching whatever was retired
meanwhile.  Whoever needs a retired link to be gone (a new pair in the same namespace,
the namespace's removal, a bridge's removal, shutdown) waits for its deletion.

The thread lives in cnmd's own network namespace (it is started from the event loop's
thread) and never enters another, so DESIGN.md's rule about pooled threads holds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
from dataclasses import dataclass

from cnm.kernel import rtnl
from cnm.kernel.cmdlog import log_command, log_comment

log = logging.getLogger("cnm.kernel")

# The link group that marks a link cnm has retired ("cnm" in ASCII).  Only links cnm moved
# there (owner-tagged veth host ends) are in it; the reaper deletes the group as a batch.
RETIRED_GROUP = 0x636E6D
CLOSE_TIMEOUT = 10.0  # seconds shutdown waits for the last deletions


@dataclass(slots=True)
class _Item:
    name: str
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class LinkReaper:
    """A thread that deletes retired links in batches.  ``submit`` from the event loop;
    ``close`` (blocking) waits for the queue to drain and stops the thread."""

    def __init__(self, group: int = RETIRED_GROUP) -> None:
        self.group = group
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    def submit(self, name: str) -> asyncio.Future[None]:
        """Queue the retired link ``name`` (already in the group) for deletion; the future
        resolves once it is gone (or fails with the kernel's error)."""
        loop = asyncio.get_running_loop()
        item = _Item(name, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise RuntimeError("link reaper is closed")
            self._queue.append(item)
            if self._thread is None:
                # Started from the caller's thread, so it shares that thread's namespace.
                self._thread = threading.Thread(target=self._run, name="cnm-reaper", daemon=True)
                self._thread.start()
            self._cond.notify()
        return item.done

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Delete what is queued, then stop the thread.  Idempotent."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        sock = None
        try:
            sock = rtnl.open_route_socket()
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch, self._queue = self._queue, []
                errors = self._delete(sock, batch)
                for item in batch:
                    self._deliver(item, errors.get(item.name))
        except BaseException as exc:  # noqa: BLE001 -- every waiter must hear about it
            log.error("link reaper stopped: %s", exc)
            with self._cond:
                batch, self._queue = self._queue, []
                self._closing = True
            for item in batch:
                self._deliver(item, exc)
        finally:
            if sock is not None:
                sock.close()

    @staticmethod
    def _deliver(item: _Item, error: BaseException | None) -> None:
        try:
            item.loop.call_soon_threadsafe(_settle, item.done, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _delete(self, sock: socket.socket, batch: list[_Item]) -> dict[str, BaseException]:
        """Move the batch into the group and delete the group, in one datagram (links
        already gone answer ENODEV, which is success); one by one if the group delete is
        refused.  Returns the errors by link name."""
        log_comment(
            f"link group {self.group} ({self.group:#x}, 'cnm' in ASCII) holds the links cnm retired:"
            " deleting the group deletes them in one go"
        )
        for item in batch:
            log_command(["ip", "link", "set", item.name, "group", str(self.group)])
        log_command(["ip", "link", "del", "group", str(self.group)])
        requests = [rtnl.set_link(name=item.name, group=self.group) for item in batch]
        requests.append(rtnl.del_link(group=self.group))
        *moved, deleted = rtnl.transact(sock, requests)
        if deleted.error in (0, errno.ENODEV):  # ENODEV: the group was empty (all gone already)
            return {
                item.name: rtnl.NetlinkError(answer.error, request.what)
                for item, answer, request in zip(batch, moved, requests, strict=False)
                if answer.error and answer.error != errno.ENODEV
            }
        log.warning("ip link del group %d: %s; deleting one by one", self.group, os.strerror(deleted.error))
        errors: dict[str, BaseException] = {}
        for item in batch:
            log_command(["ip", "link", "del", item.name])
            request = rtnl.del_link(name=item.name)
            (one,) = rtnl.transact(sock, [request])
            if one.error and one.error != errno.ENODEV:
                errors[item.name] = rtnl.NetlinkError(one.error, request.what)
        return errors
