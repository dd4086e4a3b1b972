"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol on a pipe.

Why the protocol and not chromedriver + selenium: Chromium runs inside a test host's
network namespace (it must reach the page on that host's 127.0.0.1) while the test runs in
the real host's.  ``--remote-debugging-pipe`` talks over two inherited file descriptors
(fd 3: commands in, fd 4: replies out, NUL-separated JSON), which cross ``nsenter`` as
they are: no TCP port is opened on either side and nothing is relayed, where chromedriver
would listen on a TCP port inside the test host that the test could not reach.  And no
package beyond Chromium itself.

``Chromium`` owns one browser process (``--headless --no-sandbox``, as root, its profile
in a directory the caller gives and removes): ``open`` a page, ``evaluate`` JavaScript,
``click`` an element as a mouse does (pressed and released at its centre), take a
``screenshot``; ``close`` ends the browser and waits for it, killing it if it lingers.
``png_pixels`` decodes a PNG (8-bit RGB/RGBA) without a library, to check a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, and in a namespace with no user namespaces to spare
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # nothing but the page: no updates, no safe browsing
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    pass


def chromium_binary() -> str | None:
    """Debian's browser (``/usr/bin/chromium`` is a wrapper script; the binary beside it)."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    def __init__(
        self,
        profile: Path,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
        env: dict[str, str] | None = None,
        size: tuple[int, int] = (1400, 1000),
        timeout: float = 60.0,
    ) -> None:
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("chromium is not installed (Debian package chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends above fd 9, so putting them on 3 and 4 never closes one of them
        to_browser_r, from_browser_w = (_above_nine(fd) for fd in (to_browser_r, from_browser_w))
        argv = [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ]
        # bash puts the pipe ends on fds 3 and 4 (any fd number works there, unlike dash)
        shell = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        environ = dict(env if env is not None else os.environ)
        environ.update(
            {"HOME": str(profile), "XDG_CONFIG_HOME": str(profile), "XDG_CACHE_HOME": str(profile)}
        )
        self.log = profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                wrap(["bash", "-c", shell, "chromium", *argv]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(to_browser_r, from_browser_w),
                env=environ,
                start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = ""
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # -- the pipe ----------------------------------------------------------------------------

    def _read(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffered += chunk
            while b"\0" in buffered:
                raw, buffered = buffered.split(b"\0", 1)
                message = json.loads(raw)
                with self._lock:
                    waiting = self._replies.get(message.get("id", -1))
                if waiting is not None:
                    waiting.put(message)
        with self._lock:  # the browser is gone: wake every waiter
            for waiting in self._replies.values():
                waiting.put({"error": {"message": "chromium exited"}})

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One protocol command (on the page's session once attached); its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            waiting: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = waiting
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
            reply = waiting.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise BrowserError(f"chromium: no answer to {method} in {timeout or self.timeout} s") from None
        except OSError as exc:
            raise BrowserError(f"chromium: {exc}\n{self.log_tail()}") from None
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"chromium: {method}: {reply['error'].get('message')}\n{self.log_tail()}")
        return reply.get("result", {})

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- the page ---------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait until the document has loaded."""
        self.send("Page.navigate", {"url": url})
        if not self.wait_until("document.readyState === 'complete'", timeout=30):
            raise BrowserError(f"{url} did not finish loading")

    def evaluate(self, expression: str) -> Any:
        """``expression``'s value (promises awaited), as JSON; BrowserError on a throw."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"javascript: {text}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float = 15.0, interval: float = 0.1) -> bool:
        """Poll ``expression`` until it is truthy; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.evaluate(expression):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def click(self, selector: str) -> None:
        """A mouse click at the centre of the first element matching ``selector``."""
        rect = self.evaluate(
            f"""(() => {{
                const e = document.querySelector({json.dumps(selector)});
                if (!e) return null;
                e.scrollIntoView({{block: "center", inline: "center"}});
                const r = e.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if rect is None:
            raise BrowserError(f"no element matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": rect["x"], "y": rect["y"], "button": "left", "clickCount": 1},
            )

    def screenshot(self, path: Path) -> Path:
        """The page as a PNG at ``path`` (the whole page, not just the window)."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser (politely, then by signal) and wait for it.  Idempotent."""
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reader.join(timeout=5)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a PNG, decoded --------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of pixels as RGB(A) bytes) of an 8-bit, non-interlaced RGB or
    RGBA PNG; ValueError for anything else or a corrupt file."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]:
            raise ValueError(f"bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("no IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            elif kind != 0:
                raise ValueError(f"bad filter {kind} on row {y}")
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colours(data: bytes) -> set[bytes]:
    """The distinct pixel values of a PNG."""
    width, _, rows = png_pixels(data)
    bpp = len(rows[0]) // width if rows else 3
    return {row[i : i + bpp] for row in rows for i in range(0, len(row), bpp)}
