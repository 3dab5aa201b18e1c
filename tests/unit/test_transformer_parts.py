"""The feature transformer's parts that need no server: the raw-transaction contract
(strict fields, exact ISO times, no personal data in messages) and the keep-alive
predictor client (reuse, a connection the server closed, chunked answers, timeouts)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pandas as pd
import pytest

from pipelines.features_online import OnlineFeatures
from serving.predictor_client import PredictorClient, PredictorUnavailable
from serving.schema import InputError
from serving.transactions import TransactionSchema, parse_time_ns
from tests.datasets import spec_of
from tests.support import run_async


def good_row() -> dict:
    return {
        "transaction_id": 17,
        "tx_time": "2026-01-31T12:00:00.5Z",
        "card_id": 4111,
        "customer_id": 9,
        "terminal_id": 3,
        "amount": 12.5,
        "channel": "online",
        "merchant_segment": "retail",
        "mcc": "5999",
        "distance_from_home_km": 1.25,
        "customer_tenure_days": 400,
    }


@pytest.fixture(scope="module")
def schema() -> TransactionSchema:
    spec = spec_of("fraud")
    return TransactionSchema(spec, OnlineFeatures(spec))


# ----------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00",
        "2026-01-31 12:00:00.123456789",
        "2026-01-31T12:00:00.5Z",
        "2026-01-31T13:30:00+01:30",
        "1999-12-31T23:59:59.000001-05:00",
    ],
)
def test_times_are_exact_nanoseconds_in_utc(text: str) -> None:
    stamp = pd.Timestamp(text)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    assert parse_time_ns(text) == stamp.value


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00", "2026-01-31", 1700000000])
def test_other_times_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="ISO 8601|not a valid"):
        parse_time_ns(bad)


def test_a_transaction_carries_exactly_the_fields_the_model_needs(
    schema: TransactionSchema,
) -> None:
    assert schema.fields[:2] == ("transaction_id", "tx_time")
    assert set(schema.fields) == set(good_row())
    (tx,) = schema.validate([good_row()])
    assert tx.time_ns == parse_time_ns("2026-01-31T12:00:00.5Z") and tx.event_id == 17
    assert tx.values["channel"] == "online" and "tx_time" not in tx.values


def test_the_json_schema_describes_exactly_what_validate_takes(
    schema: TransactionSchema,
) -> None:
    import jsonschema

    document = schema.json_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(document)
    good = {"instances": [good_row(), good_row() | {"amount": 3, "channel": "card_present"}]}
    assert schema.validate(good["instances"])  # the checks take it ...
    assert not list(validator.iter_errors(good))  # ... and so does the document
    for change in (
        {"channel": "telepathy"},
        {"amount": "12.5"},
        {"tx_time": "31/01/2026"},
        {"unknown": 1},
        {"transaction_id": None},
    ):
        body = {"instances": [good_row() | change]}
        with pytest.raises(InputError):
            schema.validate(body["instances"])
        assert list(validator.iter_errors(body)), change  # refused by both
    row = document["properties"]["instances"]["items"]
    assert row["required"] == list(schema.fields) and row["additionalProperties"] is False


def test_every_problem_is_named_once_and_personal_data_never_echoed(
    schema: TransactionSchema,
) -> None:
    row = {**good_row(), "card_id": "4111-1111", "amount": -3, "fee": 1}
    del row["terminal_id"]
    with pytest.raises(InputError) as caught:
        schema.validate([good_row(), row, "nope"])
    problems = caught.value.problems
    assert "row 1: card_id: expected an integer, got a string" in problems
    assert "row 1: terminal_id: missing field" in problems
    assert any(p.startswith("row 1: amount:") and "below the minimum" in p for p in problems)
    assert "row 1: unknown field 'fee' (not a transaction field)" in problems
    assert "row 2: expected an object {field: value}" in problems
    assert "4111" not in str(caught.value)
    for bad in ([], {"a": 1}, [good_row()] * (schema.max_rows + 1)):
        with pytest.raises(InputError):
            schema.validate(bad)


# ----------------------------------------------------------------------------- client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def test_the_client_reuses_connections_and_reads_both_framings() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if body == b"chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")  # fmt: skip
            else:
                answer = b'{"echo": ' + body + b"}"
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(answer))
                writer.write(answer)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, host = await serve(handler)
        client = PredictorClient(host, timeout=5)
        for i in range(5):
            assert await client.post("/x", b"%d" % i) == (201, b'{"echo": %d}' % i)
        assert await client.post("/x", b"chunked") == (200, b"abcde")
        await client.aclose()
        server.close()

    run_async(main())
    assert connections == 1


def test_an_idle_connection_the_server_closed_is_replaced_and_a_hang_times_out() -> None:
    served = 0

    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive timeout: closed while idle

    async def hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        server, host = await serve(closes_after_one)
        client = PredictorClient(host, timeout=2)
        assert await client.post("/x", b"1") == (200, b"ok")
        await asyncio.sleep(0.05)
        assert await client.post("/x", b"2") == (200, b"ok")  # on a new connection
        server.close()
        slow, slow_host = await serve(hangs)
        with pytest.raises(PredictorUnavailable, match="no answer within 0.2 s"):
            await PredictorClient(slow_host, timeout=0.2).post("/x", b"3")
        slow.close()
        with pytest.raises(PredictorUnavailable):
            await PredictorClient(host, timeout=1).post("/x", b"4")  # nobody listens

    run_async(main())
    assert served == 2


def test_odd_or_broken_answers_are_read_or_refused_cleanly() -> None:
    answers = {
        b"1": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end",  # no length
        b"2": b"SMTP ready\r\n\r\n",
        b"3": b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n",
        b"4": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    }

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answers[await read_request(reader)])
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, host = await serve(handler)
        client = PredictorClient(host, timeout=2)
        assert await client.post("/x", b"1") == (200, b"to the end")
        for body, message in ((b"2", "not an HTTP answer"), (b"3", "headers too large"),
                              (b"4", "IncompleteReadError")):  # fmt: skip
            with pytest.raises(PredictorUnavailable, match=message):
                await client.post("/x", body)
        server.close()

    run_async(main())
