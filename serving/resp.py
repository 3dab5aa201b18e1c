"""A lean asyncio Redis client for the transformer's request path (RESP2, pipelined).

Each transaction costs one Redis round trip (``EVALSHA`` of the feature store's
observe script); redis-py's asyncio client spends about 150 µs of Python per command
around it, more than Redis and the network. This client writes a whole pipeline in one
``write`` on a pooled connection and parses the replies from whole reads:
about 15 µs per command. It speaks what the feature store needs (``EVALSHA``,
``EVAL``, ``AUTH``, ``SELECT``; an error reply such as ``NOSCRIPT`` comes back as a
:class:`RespError` in its place); the backfill and the tests use redis-py.

URLs as redis-py takes them: ``redis://[[user]:password@]host[:port][/db]``,
``rediss://...`` (TLS), ``unix://[[user]:password@]/path.sock[?db=N]``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any

from pipelines.errors import GovMLError

Reply = Any


class RespError(GovMLError):
    """Redis answered an error, the connection failed, or the answer was unreadable."""


class Encoded(bytes):
    """Arguments already encoded as RESP bulk strings (:func:`bulk`), sent as they are:
    ``count`` of them. Lets a caller encode what never changes once."""

    count: int

    def __new__(cls, data: bytes, count: int) -> Encoded:
        self = super().__new__(cls, data)
        self.count = count
        return self


def bulk(data: bytes) -> bytes:
    """One argument as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _encode(command: Sequence[Any]) -> bytes:
    parts = [b""]
    count = 0
    for arg in command:
        if type(arg) is Encoded:
            parts.append(arg)
            count += arg.count
            continue
        count += 1
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    parts[0] = b"*%d\r\n" % count
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends before the reply does."""


def _parse(buf: bytes, pos: int) -> tuple[Reply, int]:
    """The reply that starts at ``buf[pos]`` and the position after it; raises
    :class:`_Incomplete` when ``buf`` holds only part of it."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, rest, pos = buf[pos], buf[pos + 1 : end], end + 2
    if kind == 36:  # $ bulk string
        size = int(rest)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise RespError("not a Redis answer: a bulk string without its CRLF")
        return buf[pos : pos + size], pos + size + 2
    if kind == 58:  # : integer
        return int(rest), pos
    if kind == 42:  # * array
        size = int(rest)
        if size < 0:
            return None, pos
        items = []
        for _ in range(size):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # + simple string
        return rest, pos
    if kind == 45:  # - error
        return RespError(rest.decode("utf-8", "replace")), pos
    raise RespError(f"not a Redis answer: {buf[pos - 2 - len(rest) - 1 : end][:40]!r}")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Reply]:
        """Write the commands at once, then parse the replies from whole reads (one
        read, one await, for a small answer)."""
        self.writer.write(b"".join(_encode(c) for c in commands))
        replies: list[Reply] = []
        buf, pos = b"", 0
        while len(replies) < len(commands):
            try:
                reply, pos = _parse(buf, pos)
            except _Incomplete:
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    raise RespError("connection closed mid-answer") from None
                buf, pos = buf[pos:] + chunk, 0
                continue
            replies.append(reply)
        if pos != len(buf):
            raise RespError("Redis answered more than was asked: connection out of step")
        return replies

    def close(self) -> None:
        self.writer.close()


class RespClient:
    """Pipelines of commands over pooled connections to one Redis server."""

    def __init__(self, url: str, *, timeout: float = 5.0, max_idle: int = 16) -> None:
        from redis.connection import parse_url

        options = parse_url(url)
        self.path: str | None = options.get("path")
        self.host = options.get("host", "127.0.0.1")
        self.port = int(options.get("port", 6379))
        self.db = int(options.get("db", 0) or 0)
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")
        self.ssl = ssl_module.create_default_context() if url.startswith("rediss://") else None
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []

    async def execute(self, *commands: Sequence[Any]) -> list[Reply]:
        """The replies of ``commands`` sent as one pipeline, in order. A command that
        Redis refuses gives a :class:`RespError` *in* its place; a connection or
        protocol problem raises it."""
        try:
            async with asyncio.timeout(self.timeout):
                connection = self._idle.pop() if self._idle else await self._connect()
                try:
                    replies = await connection.pipeline(commands)
                except BaseException:
                    connection.close()
                    raise
        except TimeoutError:
            raise RespError(f"no answer within {self.timeout:g} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise RespError(f"{type(exc).__name__}: {exc}") from None
        if len(self._idle) < self.max_idle:
            self._idle.append(connection)
        else:
            connection.close()
        return replies

    async def _connect(self) -> _Connection:
        if self.path:
            reader, writer = await asyncio.open_unix_connection(self.path)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        connection = _Connection(reader, writer)
        setup: list[list[Any]] = []
        if self.password is not None:
            setup.append(["AUTH", *([self.username] if self.username else []), self.password])
        if self.db:
            setup.append(["SELECT", self.db])
        if setup:
            for answer in await connection.pipeline(setup):
                if isinstance(answer, RespError):
                    connection.close()
                    raise answer
        return connection

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
