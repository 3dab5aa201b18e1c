"""The lean Redis client's reply parser: every reply type, split at every byte."""

from __future__ import annotations

from typing import Any

import pytest

from serving.resp import RespError, _Connection
from tests.support import run_async

ANSWER = (
    b"$5\r\nhello\r\n"  # bulk
    b"$-1\r\n"  # nil
    b":-42\r\n"  # integer
    b"*3\r\n:0\r\n$4\r\n\r\n\r\n\r\n*2\r\n$0\r\n\r\n$-1\r\n"  # nested, a bulk of CRLFs
    b"+OK\r\n"
    b"-NOSCRIPT No matching script\r\n"
    b"*0\r\n"
    b"*-1\r\n"
)
EXPECTED: list[Any] = [
    b"hello",
    None,
    -42,
    [0, b"\r\n\r\n", [b"", None]],
    b"OK",
    "NOSCRIPT",
    [],
    None,
]


class Reader:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class Writer:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def answer(chunks: list[bytes], commands: int) -> list[Any]:
    connection = _Connection(Reader(chunks), Writer())  # type: ignore[arg-type]
    return run_async(connection.pipeline([["PING"]] * commands))


def check(replies: list[Any]) -> None:
    assert replies[:5] == EXPECTED[:5]
    assert isinstance(replies[5], RespError) and str(replies[5]).startswith("NOSCRIPT")
    assert replies[6:] == EXPECTED[6:]


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(ANSWER)])
def test_replies_split_anywhere_parse_the_same(size: int) -> None:
    check(answer([ANSWER[i : i + size] for i in range(0, len(ANSWER), size)], len(EXPECTED)))


def test_every_single_cut_point() -> None:
    for cut in range(1, len(ANSWER)):
        check(answer([ANSWER[:cut], ANSWER[cut:]], len(EXPECTED)))


def test_a_closed_connection_or_a_wrong_answer_is_an_error() -> None:
    with pytest.raises(RespError, match="closed mid-answer"):
        answer([b"$5\r\nhel"], 1)
    with pytest.raises(RespError, match="more than was asked"):
        answer([b":1\r\n:2\r\n"], 1)
    with pytest.raises(RespError, match="not a Redis answer"):
        answer([b"?what\r\n"], 1)
    with pytest.raises(RespError, match="CRLF"):
        answer([b"$2\r\nabcd\r\n"], 1)
