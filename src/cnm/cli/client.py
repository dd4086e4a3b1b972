"""HTTP/1.1 to cnmd's Docker-compatible API over a unix (or tcp) socket.

Owns: the connection to the daemon, request framing (JSON, raw and streamed bodies),
response framing (Content-Length, chunked, close-delimited), the upgrade to a raw stream
(hijack, status 101), and turning error statuses into ``DaemonError`` with Docker's text.

A daemon that dies mid-reply (EOF, a reset, a truncated or garbled body) is a
``ConnectError`` with one line of text, never an ``OSError`` or ``ValueError`` escaping.

Start-up time is a goal, so this module is deliberately small and imports almost nothing:
``_socket`` instead of ``socket`` (``socket`` pulls in ``enum``; ~4 ms), no ``http.client``
(~20 ms of ``email`` parsing), ``json`` only when a body is to be encoded or decoded.
"""

from __future__ import annotations

import _socket
import os

from cnm.cli.errors import ConnectError, DaemonError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing/collections.abc costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import Any

DEFAULT_HOST = "unix:///run/cnm/cnm.sock"
API_VERSION = "1.51"
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def quote(text: str, safe: str = "") -> str:
    """Percent-encode ``text`` for a URL path segment or query value (RFC 3986 unreserved kept)."""
    keep = _SAFE | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def encode_query(query: Mapping[str, object] | None) -> str:
    if not query:
        return ""
    parts = [f"{quote(k)}={quote(str(v))}" for k, v in query.items() if v is not None]
    return "?" + "&".join(parts) if parts else ""


def parse_host(host: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:///path`` → ("unix", "/path"); ``tcp://h:p`` → ("tcp", (h, p))."""
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not path:
            raise ConnectError(f"invalid host: {host}: unix socket path is empty")
        return "unix", path
    if host.startswith("/"):
        return "unix", host
    if host.startswith("tcp://") or host.startswith("http://"):
        rest = host.split("://", 1)[1].rstrip("/")
        h, _, p = rest.rpartition(":")
        if not h or not p.isdigit():
            raise ConnectError(f"invalid host: {host}")
        return "tcp", (h.strip("[]"), int(p))
    raise ConnectError(f"invalid host: {host}: only unix:// and tcp:// are supported")


class Response:
    """A response whose head has been read; the body is read on demand.

    ``read()`` returns the whole body; ``chunks()`` yields it as it arrives (streams such as
    ``logs -f`` and ``wait``). Closing the response closes its connection.
    """

    def __init__(
        self, conn: Connection, status: int, reason: str, headers: dict[str, str], method: str
    ) -> None:
        self.conn, self.status, self.reason, self.headers = conn, status, reason, headers
        self._no_body = method == "HEAD" or status in (101, 204, 304) or 100 <= status < 200

    def chunks(self) -> Iterator[bytes]:
        if self._no_body:
            return
        conn = self.conn
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                line = conn.read_line()
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    raise ConnectError(f"malformed chunked reply from the daemon: {line[:40]!r}") from None
                if size == 0:
                    while conn.read_line():  # trailers, then the blank line
                        pass
                    return
                yield conn.read_exact(size)
                conn.read_line()
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = conn.read_some(min(left, 65536))
                if not data:
                    raise ConnectError("unexpected EOF from the daemon")
                left -= len(data)
                yield data
        else:
            while data := conn.read_some(65536):
                yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def json(self) -> Any:
        data = self.read()
        if not data.strip():
            return None
        import json

        try:
            return json.loads(data)
        except ValueError as exc:  # a reply cut short by a daemon that died mid-write
            raise ConnectError(f"malformed JSON reply from the daemon ({len(data)} bytes): {exc}") from None

    def close(self) -> None:
        self.conn.close()


def _lost(exc: OSError) -> ConnectError:
    """The connection failed mid-request or mid-reply (the daemon died, or closed it)."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return ConnectError(f"error during connect: the connection to the cnm daemon was lost: {reason}")


class Connection:
    """One socket to the daemon with a read buffer (line, exact and partial reads).  Every
    socket failure is raised as ConnectError."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except OSError as exc:
            raise _lost(exc) from exc

    def read_some(self, n: int) -> bytes:
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        return self._recv(n)

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self._recv(max(65536, n - len(self.buf)))
            if not data:
                raise ConnectError("unexpected EOF from the daemon")
            self.buf += data
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_line(self) -> bytes:
        while (idx := self.buf.find(b"\n")) < 0:
            data = self._recv(65536)
            if not data:
                raise ConnectError("unexpected EOF from the daemon")
            self.buf += data
        line = bytes(self.buf[: idx + 1])
        del self.buf[: idx + 1]
        return line.rstrip(b"\r\n")

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _lost(exc) from exc

    def take_buffered(self) -> bytes:
        """Bytes already read past the response head (the start of a hijacked stream)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def dumps(body: object) -> bytes:
    """Compact JSON for a request body.

    Built on ``_json.encode_basestring`` (the C string escaper behind ``json``) because
    ``import json`` pulls in ``re`` (~6 ms of a ~25 ms command); bodies are only dicts,
    lists, strings, numbers, booleans and None.
    """
    try:
        from _json import encode_basestring
    except ImportError:  # an interpreter without the C accelerator
        import json

        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    out: list[str] = []

    def emit(v: object) -> None:
        if isinstance(v, str):
            out.append(encode_basestring(v))
        elif v is None:
            out.append("null")
        elif v is True:
            out.append("true")
        elif v is False:
            out.append("false")
        elif isinstance(v, int):
            out.append(int.__repr__(v))
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"cannot encode {v!r} as JSON")
            out.append(float.__repr__(v))
        elif isinstance(v, dict):
            out.append("{")
            for i, (k, x) in enumerate(v.items()):
                if i:
                    out.append(",")
                out.append(encode_basestring(str(k)))
                out.append(":")
                emit(x)
            out.append("}")
        elif isinstance(v, (list, tuple)):
            out.append("[")
            for i, x in enumerate(v):
                if i:
                    out.append(",")
                emit(x)
            out.append("]")
        else:
            raise TypeError(f"cannot encode {type(v).__name__} as JSON")

    emit(body)
    return "".join(out).encode()


class Client:
    """The CLI's view of the daemon: one ``Client`` per invocation, one connection per request.

    ``autostart`` (a callable taking the socket path) is called once when nothing answers on
    a unix socket (ENOENT/ECONNREFUSED); it starts cnmd and waits until it answers.
    """

    def __init__(self, host: str = DEFAULT_HOST, autostart: Callable[[str], None] | None = None) -> None:
        self.host = host
        self.kind, self.addr = parse_host(host)
        self.autostart = autostart

    # -- connecting -------------------------------------------------------------------
    def _dial(self) -> _socket.socket:
        if self.kind == "unix":
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        else:
            sock = _socket.socket(
                _socket.AF_INET6 if ":" in self.addr[0] else _socket.AF_INET, _socket.SOCK_STREAM
            )
        try:
            sock.connect(self.addr)
        except BaseException:
            sock.close()
            raise
        return sock

    def connect(self) -> Connection:
        try:
            return Connection(self._dial())
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if self.kind == "unix" and self.autostart is not None:
                starter, self.autostart = self.autostart, None
                starter(str(self.addr))  # a unix host: the socket path
                try:
                    return Connection(self._dial())
                except OSError as exc2:
                    raise self._cannot_connect(exc2) from exc2
            raise self._cannot_connect(exc) from exc
        except PermissionError as exc:
            raise ConnectError(
                f"permission denied while trying to connect to the cnm daemon socket at {self.host}: "
                f"dial unix {self.addr}: connect: permission denied"
            ) from exc
        except OSError as exc:
            raise self._cannot_connect(exc) from exc

    def _cannot_connect(self, exc: OSError) -> ConnectError:
        return ConnectError(f"Cannot connect to the cnm daemon at {self.host}. Is the cnm daemon running?")

    # -- requests ---------------------------------------------------------------------
    def open(
        self,
        method: str,
        path: str,
        query: Mapping[str, object] | None = None,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send a request and read the response head; the caller reads (or streams) the body.

        ``body`` may be a dict/list (sent as JSON), bytes, or an iterable of bytes (sent
        chunked). No status check is done here (see ``request``).
        """
        hdrs = {"Host": "api.moby.localhost", "User-Agent": "cnm-cli"}
        payload: bytes | None = None
        stream: Iterable[bytes] | None = None
        if isinstance(body, (dict, list)):
            payload = dumps(body)
            hdrs["Content-Type"] = "application/json"
        elif isinstance(body, (bytes, bytearray)):
            payload = bytes(body)
        elif body is not None:
            stream = body  # type: ignore[assignment]
            hdrs["Transfer-Encoding"] = "chunked"
        if payload is not None:
            hdrs["Content-Length"] = str(len(payload))
        elif stream is None and method in ("POST", "PUT"):
            hdrs["Content-Length"] = "0"
        if headers:
            hdrs.update(headers)
        head = (
            f"{method} {path}{encode_query(query)} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
            + "\r\n"
        )
        conn = self.connect()
        try:
            conn.send(head.encode() + (payload or b""))
            if stream is not None:
                for piece in stream:
                    if piece:
                        conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            return self._read_head(conn, method)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _read_head(conn: Connection, method: str) -> Response:
        status_line = conn.read_line().decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ConnectError(f"malformed HTTP response from the daemon: {status_line!r}")
        headers: dict[str, str] = {}
        while line := conn.read_line():
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if not headers.get("content-length", "0").isdigit():
            raise ConnectError(
                f"malformed HTTP response from the daemon: Content-Length {headers['content-length']!r}"
            )
        return Response(conn, int(parts[1]), parts[2] if len(parts) > 2 else "", headers, method)

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, object] | None = None,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Like ``open`` but raise ``DaemonError`` for a status of 400 or more."""
        resp = self.open(method, path, query, body, headers)
        if resp.status >= 400:
            try:
                raise self.error_from(resp, path)
            finally:
                resp.close()
        return resp

    def call(
        self, method: str, path: str, query: Mapping[str, object] | None = None, body: object = None
    ) -> Any:
        """A request whose whole JSON (or empty) answer is returned decoded (any JSON value:
        each caller knows the shape its endpoint answers with)."""
        resp = self.request(method, path, query, body)
        try:
            return resp.json()
        finally:
            resp.close()

    @staticmethod
    def error_from(resp: Response, path: str) -> DaemonError:
        """Docker's client rules: JSON ``message`` only when Content-Type is application/json."""
        data = resp.read().strip()
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        if not data:
            text = f"{resp.status} {resp.reason or _REASONS.get(resp.status, '')}".strip()
            return DaemonError(
                resp.status,
                f"request returned {text} for API route and version "
                f"{path}, check if the server supports the requested API version",
            )
        if ctype == "application/json":
            import json

            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data.decode(errors="replace")
            return DaemonError(resp.status, message)
        return DaemonError(resp.status, data.decode(errors="replace"))

    def hijack(
        self,
        path: str,
        query: Mapping[str, object] | None = None,
        body: object = None,
        content_type: str = "text/plain",
    ) -> tuple[_socket.socket, bytes]:
        """POST with ``Upgrade: tcp``; on 101 return the raw socket and any bytes already read.

        Any other success status is refused as Docker's client does; errors raise DaemonError.
        """
        resp = self.open(
            "POST",
            path,
            query,
            body,
            {"Connection": "Upgrade", "Upgrade": "tcp", "Content-Type": content_type}
            if body is None
            else {"Connection": "Upgrade", "Upgrade": "tcp"},
        )
        if resp.status >= 400:
            try:
                raise self.error_from(resp, path)
            finally:
                resp.close()
        if resp.status != 101:
            resp.close()
            raise ConnectError(f"unable to upgrade to tcp, received {resp.status}")
        return resp.conn.sock, resp.conn.take_buffered()


def default_host(env: Mapping[str, str] | None = None) -> str:
    environ = os.environ if env is None else env
    return environ.get("CNM_HOST") or DEFAULT_HOST
