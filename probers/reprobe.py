"""Direct re-probe of closure candidates: one connection per (host, proto, port).

Owns: asking, once more and directly, whether a port that a completed scan did not see is
really closed, as nmap and masscan confirm before they believe a port changed. TCP: one
connect with the kernel's own SYN retransmits inside ``timeout`` (a single lost SYN is
retried by the kernel after ~1 s), so a dropped packet reads OPEN, not closed. UDP: one
connected datagram socket; only an ICMP port-unreachable (ECONNREFUSED) reads REFUSED,
silence reads SILENT, which never closes a UDP port.

Must not touch: storage, Kafka, the change rule (``stream_processors/changes.py`` decides
what an answer means). Only addresses of the scan that asked are probed: the caller passes
the hosts it has just scanned, so scope was checked before the scan.

Bounded: at most ``max_probes`` probes, ``concurrency`` at a time, each within ``timeout``,
the whole batch within ``deadline`` seconds; a candidate not probed gets no answer (the
rule then keeps the port open, never closes it on a guess).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum

from schemas.records import Proto


class Answer(StrEnum):
    OPEN = "open"
    REFUSED = "refused"
    SILENT = "silent"


ProbeKey = tuple[str, Proto, int]  # (ip, proto, port)


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


async def _tcp(ip: str, port: int, timeout: float) -> Answer:
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(ip), socket.SOCK_STREAM)
    sock.setblocking(False)
    # Close with RST (no TIME_WAIT): we only wanted the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), timeout)
    except ConnectionRefusedError:
        return Answer.REFUSED
    except (TimeoutError, OSError):
        return Answer.SILENT  # no answer, or an ICMP host/net unreachable
    finally:
        sock.close()
    return Answer.OPEN


async def _udp(ip: str, port: int, timeout: float, attempts: int = 2) -> Answer:
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(ip), socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.connect((ip, port))  # connected: ICMP port-unreachable arrives as ECONNREFUSED
        for _ in range(attempts):
            try:
                sock.send(b"")
                await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout / attempts)
                return Answer.OPEN
            except ConnectionRefusedError:
                return Answer.REFUSED
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    return Answer.REFUSED
                return Answer.SILENT
        return Answer.SILENT
    finally:
        sock.close()


async def reprobe(candidates: Iterable[ProbeKey], *, timeout: float = 3.0,
                  concurrency: int = 256, max_probes: int = 10_000,
                  deadline: float = 60.0) -> Mapping[ProbeKey, Answer]:
    """Probe each candidate once (bounded, see the module docstring); returns the answers
    of the candidates that were probed."""
    wanted = list(dict.fromkeys(candidates))[:max_probes]
    answers: dict[ProbeKey, Answer] = {}
    if not wanted:
        return answers
    slots = asyncio.Semaphore(max(1, concurrency))
    stop_at = time.monotonic() + deadline

    async def one(key: ProbeKey) -> None:
        async with slots:
            left = stop_at - time.monotonic()
            if left <= 0:
                return  # budget spent: no answer, so nothing is closed on a guess
            ip, proto, port = key
            wait = min(timeout, left)
            answer = await (_udp(ip, port, wait) if proto is Proto.UDP
                            else _tcp(ip, port, wait))
            # Silence within less than the full timeout (the deadline cut it short) is no
            # answer: a lost SYN is retransmitted after ~1 s, and a port read SILENT there
            # was closed on a guess (probes late in a big batch got a fraction of a second)
            if answer is not Answer.SILENT or wait >= timeout:
                answers[key] = answer

    tasks = [asyncio.create_task(one(k)) for k in wanted]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
    return answers
