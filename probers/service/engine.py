"""Service identification engine: portwatch's own probes, one connection each.

Owns: the explicit table of probe kinds (``PROBES``), the plan that orders them
by port hint so the common case costs one round trip, bounded reads, and the
fold of probe outcomes into one ``ServiceInfo`` that says how it was identified
and, when it was not, what was tried. Must not touch Kafka or storage.

Shape (sslyze's plugin pattern, STYLE.md): a ``ProbeKind`` enum, one async
implementation per kind in ``PROBES`` (a test asserts every member has one),
each job uses at most one connection, so a per-host connection limit is simply
a semaphore around jobs.

The nmap service-probe database (issue 4) plugs in as ``fallback``: it runs when
our own probes name nothing, and never when the database is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from probers.service.banners import (
    parse_banner,
    parse_http,
    parse_postgres_ssl_reply,
    parse_redis,
    sanitize,
)
from probers.service.nmap_engine import tls_client_context
from schemas.records import ServiceInfo

READ_CAP = 16_384  # bytes read from any one answer: endless banners stop here
USER_AGENT = "portwatch/0.1 (+https://github.com/portwatch/portwatch)"


class ProbeKind(StrEnum):
    NULL = "null"  # connect and listen: first-speaker banners (SSH, SMTP, FTP, MySQL...)
    HTTP_GET = "http-get"  # GET / ; Server header
    TLS = "tls"  # ClientHello; on success, NULL + GET again inside TLS
    REDIS_INFO = "redis-info"  # INFO server
    POSTGRES_SSL = "postgres-sslrequest"  # SSLRequest: one-byte S/N answer


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    banner_wait: float = 2.0  # seconds to wait for a first-speaker banner
    probe_timeout: float = 3.0  # connect + exchange, per probe
    budget: float = 10.0  # per port, all probes together


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one probe job: failures are data."""

    kind: ProbeKind
    info: ServiceInfo | None = None
    data: bytes = b""
    is_tls: bool = False
    error: str = ""


# -- bounded I/O -------------------------------------------------------------------------


async def read_bounded(reader: asyncio.StreamReader, *, timeout: float, cap: int = READ_CAP,
                       until: bytes | None = None, idle: float = 0.3) -> bytes:
    """Read at most ``cap`` bytes within ``timeout``; stop early at ``until`` or when
    the peer has sent something and then stays quiet for ``idle`` seconds."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < cap:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait = min(remaining, idle) if buf else remaining
        try:
            chunk = await asyncio.wait_for(reader.read(cap - len(buf)), wait)
        except (TimeoutError, ConnectionError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        if until is not None and until in buf:
            break
    return bytes(buf[:cap])


@contextlib.asynccontextmanager
async def _connect(ep: Endpoint, timeout: float, tls: ssl.SSLContext | None = None,
                   server_hostname: str | None = None,
                   ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(ep.ip, ep.port, ssl=tls,
                                server_hostname=server_hostname if tls else None,
                                ssl_handshake_timeout=timeout if tls else None,
                                limit=READ_CAP),
        timeout,
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 0.5)


def _http_request(ep: Endpoint) -> bytes:
    host = ep.hostname or (f"[{ep.ip}]" if ":" in ep.ip else ep.ip)
    return (f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode()


# Handshake failures that mean "the peer does not speak TLS at all".
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF", "RECORD_LAYER_FAILURE",
                    "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNKNOWN_PROTOCOL")


# -- probes ------------------------------------------------------------------------------


async def probe_null(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, _writer):
        data = await read_bounded(reader, timeout=s.banner_wait)
    return Outcome(ProbeKind.NULL, parse_banner(data, port_hint) if data else None, data)


async def probe_http(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(_http_request(ep))
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, until=b"\r\n\r\n")
    info = parse_http(data) or (parse_banner(data, port_hint) if data else None)
    return Outcome(ProbeKind.HTTP_GET, info, data)


async def probe_tls(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    try:
        async with _connect(ep, s.probe_timeout, tls_client_context(),
                            ep.hostname or None) as (reader, writer):
            data = await read_bounded(reader, timeout=min(1.0, s.banner_wait))
            info = parse_banner(data, port_hint) if data else None
            if info is None:
                writer.write(_http_request(ep))
                await writer.drain()
                data = await read_bounded(reader, timeout=s.probe_timeout, until=b"\r\n\r\n")
                info = parse_http(data, is_tls=True) or (
                    parse_banner(data, port_hint) if data else None)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if any(r in reason for r in _NOT_TLS_REASONS):
            return Outcome(ProbeKind.TLS, error=f"not TLS ({reason})")
        # A TLS alert or a refused version: it speaks TLS, we could not finish.
        return Outcome(ProbeKind.TLS, ServiceInfo(service="ssl", is_tls=True,
                                                  extra_info=f"handshake failed: {reason}",
                                                  method="tls:alert", confidence=5),
                       is_tls=True)
    if info is not None:
        service = info.service if info.service in ("https",) else f"ssl/{info.service}"
        info = replace(info, service=service, is_tls=True)
    else:
        info = ServiceInfo(service="ssl", is_tls=True, method="tls:handshake", confidence=6)
    return Outcome(ProbeKind.TLS, info, data, is_tls=True)


async def probe_redis(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(b"INFO server\r\n")
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout)
    return Outcome(ProbeKind.REDIS_INFO, parse_redis(data), data)


async def probe_postgres(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        # SSLRequest: int32 length 8, int32 code 80877103 (PostgreSQL protocol, 54.2.10)
        writer.write((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, cap=256, idle=0.2)
    return Outcome(ProbeKind.POSTGRES_SSL, parse_postgres_ssl_reply(data), data)


ProbeImpl = Callable[[Endpoint, Settings, str], Awaitable[Outcome]]
PROBES: dict[ProbeKind, ProbeImpl] = {
    ProbeKind.NULL: probe_null,
    ProbeKind.HTTP_GET: probe_http,
    ProbeKind.TLS: probe_tls,
    ProbeKind.REDIS_INFO: probe_redis,
    ProbeKind.POSTGRES_SSL: probe_postgres,
}

# -- plan --------------------------------------------------------------------------------

HTTP_PORTS = frozenset({80, 81, 591, 3000, 5000, 8000, 8008, 8080, 8081, 8088, 8888, 9000})
TLS_PORTS = frozenset({443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 2053, 2083, 2087,
                       2096, 4443, 5061, 6697, 8443, 9443})
PORT_HINTS: dict[int, str] = {21: "ftp", 25: "smtp", 587: "smtp", 2525: "smtp", 6379: "redis",
                              5432: "postgresql"}
DEFAULT_ORDER = (ProbeKind.NULL, ProbeKind.HTTP_GET, ProbeKind.TLS, ProbeKind.POSTGRES_SSL,
                 ProbeKind.REDIS_INFO)


def plan(port: int) -> tuple[ProbeKind, ...]:
    """Probe order for a port: the likely probe first, then everything else."""
    first: tuple[ProbeKind, ...] = ()
    if port in TLS_PORTS:
        first = (ProbeKind.TLS,)
    elif port in HTTP_PORTS:
        first = (ProbeKind.HTTP_GET,)
    elif PORT_HINTS.get(port) == "redis":
        first = (ProbeKind.REDIS_INFO,)
    elif PORT_HINTS.get(port) == "postgresql":
        first = (ProbeKind.POSTGRES_SSL,)
    return first + tuple(k for k in DEFAULT_ORDER if k not in first)


# (endpoint, speaks TLS, what the port already sent, seconds left) -> identification
Fallback = Callable[[Endpoint, bool, bytes, float], Awaitable[ServiceInfo | None]]


async def identify(ep: Endpoint, settings: Settings | None = None,
                   fallback: Fallback | None = None) -> ServiceInfo:
    """Identify the service on one open TCP port within ``settings.budget`` seconds."""
    s = settings or Settings()
    deadline = time.monotonic() + s.budget
    hint = PORT_HINTS.get(ep.port, "")
    tried: list[str] = []
    notes: list[str] = []
    best: ServiceInfo | None = None
    first_data = b""
    is_tls = False
    for kind in plan(ep.port):
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            notes.append("budget exhausted")
            break
        tried.append(kind.value)
        try:
            outcome = await asyncio.wait_for(PROBES[kind](ep, s, hint), remaining)
        except (TimeoutError, OSError, ssl.SSLError, EOFError) as exc:
            notes.append(f"{kind.value}: {type(exc).__name__}")
            continue
        if outcome.error:
            notes.append(f"{kind.value}: {outcome.error}")
        first_data = first_data or outcome.data
        is_tls = is_tls or outcome.is_tls
        info = outcome.info
        if info is None:
            continue
        if best is None or info.confidence > best.confidence:
            best = info
        if info.confidence >= 8:
            break
    if (best is None or best.confidence < 8) and fallback is not None:
        remaining = deadline - time.monotonic()
        if remaining > 0.5:
            tried.append("nmap-service-probes")
            try:
                extra = await asyncio.wait_for(fallback(ep, is_tls, first_data, remaining),
                                               remaining)
            except (TimeoutError, OSError) as exc:
                notes.append(f"nmap: {type(exc).__name__}")
                extra = None
            if extra is not None and (best is None or extra.confidence > best.confidence):
                best = extra
    banner = sanitize(first_data) if first_data else ""
    if best is None:
        return ServiceInfo(is_tls=is_tls, banner=banner, method="unidentified",
                           extra_info="; ".join(notes)[:300], tried=tuple(tried))
    return replace(best, banner=best.banner or banner, tried=tuple(tried),
                   is_tls=best.is_tls or is_tls)
