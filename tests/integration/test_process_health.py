"""The stream workers' health endpoint (stream_processors/transports/health.py), on a real
loopback socket: GET /healthz answers 200 from the event loop; anything else is 404; a
client that sends nothing or floods is dropped within the read deadline, never hangs the
listener; a taken port is an OSError for the caller (`process` says it in one line);
`portwatch process --health` refuses a bad address with one line."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest

from stream_processors.transports.health import READ_SECONDS, REQUEST_CAP, start_health
from tests.conftest import run_cli
from tests.servers import free_port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


async def _probe(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, port, path)


def test_healthz_answers_from_the_event_loop() -> None:
    async def scenario() -> list[tuple[int, str]]:
        port = free_port()
        server = await start_health("127.0.0.1", port)
        try:
            return [await _probe(port, "/healthz"), await _probe(port, "/healthz?x=1"),
                    await _probe(port, "/"), await _probe(port, "/healthz/more")]
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == [(200, "ok\n"), (200, "ok\n"), (404, "not found\n"),
                                       (404, "not found\n")]


def test_a_stuck_loop_fails_the_probe() -> None:
    # Given the listener on a loop that then blocks (a stuck worker)
    async def scenario() -> str:
        port = free_port()
        server = await start_health("127.0.0.1", port)
        try:
            probe = asyncio.ensure_future(asyncio.to_thread(_timed_get, port, 0.5))
            await asyncio.sleep(0)  # the probe's thread starts (it waits 0.5 s, then asks)
            time.sleep(3)  # meanwhile the loop is stuck: nothing of it runs
            return await probe
        finally:
            server.close()

    # Then the probe (1 s timeout) does not get its answer: the kernel accepted, the loop
    # never answered
    assert asyncio.run(scenario()) == "timed out"


def _timed_get(port: int, wait: float = 0.0) -> str:
    time.sleep(wait)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return str(answer.status)
    except (TimeoutError, urllib.error.URLError) as exc:
        return "timed out" if "timed out" in str(exc) else str(exc)


@pytest.mark.parametrize("payload", [b"", b"\x00\xff" * (4 * REQUEST_CAP)])
def test_a_silent_or_flooding_client_is_dropped_and_others_still_answered(
        payload: bytes) -> None:
    async def scenario() -> tuple[float, bytes, tuple[int, str]]:
        port = free_port()
        server = await start_health("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            begin = time.monotonic()
            if payload:
                writer.write(payload)
            # meanwhile another client is answered
            other = await _probe(port, "/healthz")
            answer = await asyncio.wait_for(reader.read(), READ_SECONDS + 5)
            writer.close()
            return time.monotonic() - begin, answer, other
        finally:
            server.close()

    spent, answer, other = asyncio.run(scenario())
    assert other == (200, "ok\n")
    if payload:
        assert answer.startswith(b"HTTP/1.1 404 Not Found")  # junk: answered, closed
    else:
        assert answer == b""  # silent: dropped after the read deadline, no answer
        assert spent >= READ_SECONDS - 0.5


@pytest.mark.parametrize(("address", "why"), [
    ("nowhere:http", "is not PORT or HOST:PORT"),
    # went on to contact the broker, and failed there with exit 1 (a review, 2026-12-06)
    ("999.1.1.1:1", "'999.1.1.1' is not an address or a hostname"),
    ("bad host!:80", "'bad host!' is not an address or a hostname"),
])
def test_process_refuses_a_bad_health_address(address: str, why: str) -> None:
    result = run_cli("process", "--health", address, "--broker-wait", "0")
    assert result.code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("portwatch: error: --health: ") and why in last


def test_a_taken_health_port_is_the_callers_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> str:
            try:
                await start_health("127.0.0.1", port)
            except OSError as exc:
                return type(exc).__name__
            return "listened"

        assert asyncio.run(scenario()) == "OSError"



@pytest.mark.parametrize(("text", "listen"), [
    ("[fe80::1%lo]:8765", ("fe80::1%lo", 8765)), ("[::1]:8765", ("::1", 8765)),
    ("8765", ("127.0.0.1", 8765)), ("localhost:1", ("localhost", 1)),
])
def test_listen_addresses_that_are_addresses_or_names(text: str,
                                                      listen: tuple[str, int]) -> None:
    from portwatch.web.cli import parse_listen

    # a link-local address with its zone stays an address (a review, 2026-12-06)
    assert parse_listen(text) == listen
