"""A lean keep-alive HTTP/1.1 client for the transformer's calls to its predictor.

The transformer sends one small JSON request per transaction to one host. KServe's
REST client (httpx) spends more than a millisecond per call here (it looks for an
optional module on every request, and builds cookie jars and URL objects), about as
much as the rest of the transformer's work. This client writes each request in one
``write`` on a pooled asyncio connection and reads a ``Content-Length`` or chunked
answer: about 60 µs of Python per call.

* Connections are reused (at most ``max_idle`` kept); a connection the server closed
  while idle is detected on the next request, which is retried once on a new one
  (only then: a request that may have reached the server is never sent twice).
* ``timeout`` bounds each call (connect, write, read); on expiry the connection is
  dropped and :class:`PredictorUnavailable` raised, as for any network error.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Mapping

from pipelines.errors import GovMLError

MAX_HEADER_LINES = 100
MAX_BODY_BYTES = 64 << 20


class PredictorUnavailable(GovMLError):
    """The predictor cannot be reached, timed out, or answered something unreadable."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class PredictorClient:
    """POST JSON to one ``host:port`` over pooled keep-alive connections."""

    def __init__(
        self, host: str, *, use_ssl: bool = False, timeout: float = 5.0, max_idle: int = 32
    ) -> None:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"predictor host {host!r}: expected host:port")
        self.host = name.strip("[]")
        self.port = int(port)
        self.authority = host
        self.timeout = timeout
        self.max_idle = max_idle
        self._ssl = ssl_module.create_default_context() if use_ssl else None
        self._idle: list[_Connection] = []

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of one POST; PredictorUnavailable on any transport problem."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self.authority}",
                f"Content-Length: {len(body)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        reused = bool(self._idle)
        try:
            async with asyncio.timeout(self.timeout):
                connection = self._idle.pop() if self._idle else await self._connect()
                try:
                    return await self._exchange(connection, request)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if not (reused and _closed_before_answer(exc)):
                        raise
                connection = await self._connect()  # the idle one had been closed
                return await self._exchange(connection, request)
        except TimeoutError:
            raise PredictorUnavailable(f"no answer within {self.timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise PredictorUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl)
        return _Connection(reader, writer)

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, bytes]:
        try:
            connection.writer.write(request)
            status, body, keep = await self._response(connection.reader)
        except BaseException:
            connection.close()
            raise
        if keep and len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return status, body

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        try:  # the status line and headers in one read (an await each cost more)
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ValueError("answer headers too large") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("connection closed before the answer") from None
            raise
        status, length, chunked, keep = _parse_head(head)
        if chunked:
            return status, await _chunks(reader), keep
        if length is None:  # the body runs to the end of the connection
            return status, await reader.read(MAX_BODY_BYTES), False
        if length > MAX_BODY_BYTES:
            raise ValueError(f"answer of {length} bytes is too large")
        return status, await reader.readexactly(length), keep

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, content length, chunked, keep alive) from an answer's status line and headers."""
    lines = head[:-4].split(b"\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise ValueError("too many header lines")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:60]!r}")
    status = int(parts[1])
    keep = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for header in lines[1:]:
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = value.lower() != b"close"
    return status, length, chunked, keep


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        if len(out) + size > MAX_BODY_BYTES:
            raise ValueError("chunked answer is too large")
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def _closed_before_answer(exc: BaseException) -> bool:
    """The server had closed an idle connection: nothing of the answer arrived."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return True
