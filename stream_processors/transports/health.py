"""The stream workers' health endpoint: ``GET /healthz`` answered from their event loop.

Owns: a tiny HTTP listener for Kubernetes probes of ``portwatch process --health``. Faust's
own web server is off in our workers (``faust_app``), so without this a probe had nothing
to check. It answers from the same event loop as the agents: a worker whose loop is
stuck or gone stops answering, which a TCP probe (accepted by the kernel's backlog
whatever the loop does) cannot see.

Every client is hostile until proven otherwise: the request is read up to a small cap
and a short deadline, the answer is fixed, and the connection is closed after it.

Must not touch: the store, Kafka, any address but the one it listens on.
"""

from __future__ import annotations

import asyncio
import contextlib

REQUEST_CAP = 2048  # bytes of request head read at most
READ_SECONDS = 2.0  # a client that sends nothing is dropped after this
OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
      b"Connection: close\r\n\r\nok\n")
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
             b"Connection: close\r\n\r\nnot found\n")


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.read(REQUEST_CAP), READ_SECONDS)
        line = head.split(b"\r\n", 1)[0].split(b" ")
        is_health = len(line) >= 2 and line[0] in (b"GET", b"HEAD") and (
            line[1] == b"/healthz" or line[1].startswith(b"/healthz?"))
        writer.write(OK if is_health else NOT_FOUND)
        await asyncio.wait_for(writer.drain(), READ_SECONDS)
    except (TimeoutError, ConnectionError):
        pass  # a silent or vanished client: nothing owed
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), READ_SECONDS)


async def start_health(host: str, port: int) -> asyncio.Server:
    """Listen on (host, port) and answer ``GET /healthz`` with 200 ``ok`` until the
    returned server is closed. OSError (port taken, address not ours) is the caller's."""
    return await asyncio.start_server(_answer, host, port)


__all__ = ["READ_SECONDS", "REQUEST_CAP", "start_health"]
