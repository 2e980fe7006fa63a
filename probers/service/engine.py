"""Service identification engine: portwatch's own probes, one connection each.

Why one file: the probe table, the planner that orders it and the loop that runs it
share one per-port state (what was heard, what was tried, the budget left); the
parsers live apart (banners.py, app_protocols.py, http_meta.py).

Owns: the explicit table of probe kinds (``PROBES``), the plan that orders them
by port hint so the common case costs one round trip, bounded reads, and the
fold of probe outcomes into one ``ServiceInfo`` that says how it was identified
and, when it was not, what was tried. Must not touch Kafka or storage.

How the order adapts (measured in ``bench/identify.py`` against ``nmap -sV``):

- a hinted port gets its protocol's probe first (GET on 80/8080..., a TLS
  handshake on 443/8443..., INFO on 6379, SSLRequest on 5432, RDP on 3389);
- any other port gets NULL: a greeting window of a few connect round trips
  (``GREETING_WINDOW``/``GREETING_RTTS``, never more than ``banner_wait``), which
  ends as soon as a whole greeting is recognised, then ``GET /`` on the same
  connection. First speakers and HTTP cost one connection and one round trip;
- an answer that names a protocol tentatively (a TLS record, "plain HTTP sent to
  an HTTPS port", a Redis or PostgreSQL error) puts that protocol's probe next;
- probes sent on a guess get a few round trips (``GUESS_TIMEOUT``/``GUESS_RTTS``)
  instead of the full ``probe_timeout``: a service that speaks the protocol
  answers at once, and a silent one must not cost seconds per guess. A guessed TLS
  handshake gets ``TLS_GUESS_TIMEOUT`` at least: a server's handshake can be slow.

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
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from probers.service.app_protocols import (
    AMQP_HEADER,
    KAFKA_FRAME_CAP,
    MEMCACHED_VERSION_REQUEST,
    MQTT_DISCONNECT,
    is_kubernetes_status,
    is_whole_kafka_frame,
    kafka_api_versions_request,
    mqtt_request,
    parse_amqp,
    parse_kafka_api_versions,
    parse_kubernetes_version,
    parse_memcached_version,
    parse_mqtt,
    parse_ntlm_challenge,
    parse_search_refusal,
    parse_search_root,
    parse_smb2_negotiate,
    smb2_negotiate_request,
    smb2_session_setup_request,
)
from probers.service.banners import (
    GUESS_READ_BY,
    parse_banner,
    parse_foreign_reply,
    parse_http,
    parse_postgres_ssl_reply,
    parse_postgres_version_error,
    parse_rdp_confirm,
    parse_redis,
    sanitize,
)
from probers.service.http_meta import (
    BODY_CAP,
    HEAD_CAP,
    DeclaredEnd,
    HttpResponse,
    favicon_hash,
    favicon_href,
    http_framing,
    is_icon_response,
    page_title,
    redirect_location,
    same_host_path,
    split_response,
)
from probers.service.nmap_engine import tls_client_context
from probers.tls.jarm import HELLOS as JARM_HELLOS
from probers.tls.jarm import build_hello, jarm_fingerprint
from schemas.records import ServiceInfo

READ_CAP = 16_384  # bytes read from any one answer: endless banners stop here
USER_AGENT = "portwatch/0.1 (+https://github.com/portwatch/portwatch)"

log = logging.getLogger(__name__)


class ProbeKind(StrEnum):
    # Connect and listen for a first-speaker greeting (SSH, SMTP, FTP, MySQL...); when
    # the port stays silent through the greeting window, send GET / on the same
    # connection: one connection and one round trip name HTTP, and the reply of a
    # Redis, PostgreSQL or TLS port says which probe to send next.
    NULL = "null"
    HTTP_GET = "http-get"  # GET / ; Server header, X-Powered-By, status line
    TLS = "tls"  # handshake (certificate CN kept as a hint), then NULL + GET inside TLS
    REDIS_INFO = "redis-info"  # INFO server
    POSTGRES_SSL = "postgres-sslrequest"  # SSLRequest; on 'N', a startup packet that dates it
    RDP = "rdp-negotiation"  # X.224 Connection Request with an RDP negotiation request
    # What nmap learns through version scripts (issue 15), one connection each:
    MQTT = "mqtt-sys-version"  # CONNECT + SUBSCRIBE $SYS/broker/version (mqtt-subscribe)
    MQTT_TLS = "mqtt-sys-version-tls"  # the same inside TLS (secure-mqtt, 8883)
    AMQP = "amqp-connection-start"  # protocol header -> Connection.Start server-properties
    SMB = "smb2-negotiate"  # SMB2 NEGOTIATE (dialect, signing), then the NTLMSSP challenge
    K8S_VERSION = "kubernetes-version"  # GET /version inside TLS, after a k8s Status answer
    KAFKA = "kafka-apiversions"  # ApiVersions v0: the protocol nmap does not know
    KAFKA_TLS = "kafka-apiversions-tls"  # the same inside TLS (an SSL listener)
    MEMCACHED = "memcached-version"  # version: nmap's lines name Memcached without one


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    banner_wait: float = 2.0  # seconds to wait for any answer on an otherwise silent port
    probe_timeout: float = 3.0  # connect + exchange, per probe
    budget: float = 10.0  # per port, all probes together
    http_meta: bool = True  # HTTP ports: title, redirect, favicon hash (a few more requests)
    jarm: bool = True  # TLS ports: the JARM fingerprint (ten ClientHellos, one connection each)
    # SNMP: send the conventional read community "public" (a credential guess, even if a
    # well-known one) only when the user allows it; engine discovery needs none.
    snmp_public_community: bool = False


# The greeting window: how long a silent port is given to speak first before we do.
# First speakers greet as soon as they accept, so a few connect round trips are
# plenty; a late greeting is not lost (it arrives ahead of the answer to our GET).
GREETING_WINDOW = 0.25  # seconds, at least
GREETING_RTTS = 4  # and at least this many connect (or TLS handshake) times


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one probe job: failures are data."""

    kind: ProbeKind
    info: ServiceInfo | None = None
    data: bytes = b""
    is_tls: bool = False
    error: str = ""
    label: str = ""  # what was sent, when more than the kind says ("null+http-get")
    connect_seconds: float = 0.0  # TCP connect time (a round trip), when measured
    # seconds spent listening for a late greeting on a silent port: not charged to the
    # port's budget (nmap's probes keep theirs)
    late_seconds: float = 0.0


# -- bounded I/O -------------------------------------------------------------------------


async def read_bounded(reader: asyncio.StreamReader, *, timeout: float, cap: int = READ_CAP,
                       until: bytes | None = None, idle: float = 0.3,
                       is_complete: Callable[[bytes], bool] | None = None) -> bytes:
    """Read at most ``cap`` bytes within ``timeout``; stop early at ``until``, when
    ``is_complete`` says the answer is whole, or when the peer has sent something
    and then stays quiet for ``idle`` seconds."""
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
        if is_complete is not None and is_complete(bytes(buf)):
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
        try:
            await asyncio.wait_for(writer.wait_closed(), 0.5)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:  # noqa: BLE001 - whatever the peer did, the socket goes
            # A TLS peer that never answers our close_notify would hold the socket for
            # asyncio's 30 s SSL shutdown timeout: a scan of such ports piles them up.
            writer.transport.abort()


def _http_request(ep: Endpoint) -> bytes:
    host = ep.hostname or (f"[{ep.ip}]" if ":" in ep.ip else ep.ip)
    return (f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode()


# Handshake failures that mean "the peer does not speak TLS at all".
_NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF", "RECORD_LAYER_FAILURE",
                    "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "UNKNOWN_PROTOCOL")
# What an echo service's answer to a ClientHello fails with (our own ClientHello back,
# where the ServerHello belongs); a TLS server sending a broken handshake message fails
# alike, so the peer is asked once more, in plain text (``_echoes``).
_ECHO_SUSPECT = "UNEXPECTED_MESSAGE"
_ECHO_PROBE = b"portwatch: is this an echo service?\r\n"


# -- probes ------------------------------------------------------------------------------


def _is_whole_greeting(data: bytes) -> bool:
    """A greeting that names its product needs no more waiting: a full line (SSH,
    FTP, SMTP...) or a complete MySQL handshake packet that a parser recognises."""
    is_line = data.endswith(b"\n")
    is_packet = len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:3], "little")
    if not (is_line or is_packet):
        return False
    info = parse_banner(data)
    return info is not None and info.confidence >= STOP_CONFIDENCE


_CONTINUED = re.compile(rb"\d{3}-")  # FTP/SMTP: "220-" says more lines follow
# The greetings waited for to their line end: SSH, FTP/SMTP/NNTP, POP3, IMAP. A prompt
# ("login: ") or any other text is not: it may never end a line.
_LINE_GREETING = re.compile(rb"SSH-|\d{3}[ -]|\+OK|\* OK")
_TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def _is_unfinished_text(data: bytes) -> bool:
    """A line greeting (``_LINE_GREETING``) still arriving: no line end yet, or a
    multi-line FTP/SMTP reply whose last line says more follow. Binary data, and text
    of no such protocol, is never waited for."""
    if not data or not _TEXT.issuperset(data) or not _LINE_GREETING.match(data):
        return False
    if not data.endswith(b"\n"):
        return True
    last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    return _CONTINUED.match(last) is not None


def _greeting_window(s: Settings, connect_seconds: float) -> float:
    return min(s.banner_wait, max(GREETING_WINDOW, GREETING_RTTS * connect_seconds))


LATE_GREETING_FACTOR = 3  # a silent, open port is listened to 3 x banner_wait in all...
LATE_GREETING_SHARE = 0.6  # ... and never more than this share of the port's budget


def _late_greeting_wait(s: Settings) -> float:
    """Seconds since connect a silent port that keeps the connection open is listened
    to for a late greeting (6 s by default, as nmap's NULL probe): the other probes and
    nmap's keep the rest of the budget."""
    return min(LATE_GREETING_FACTOR * s.banner_wait, LATE_GREETING_SHARE * s.budget)


async def _greet_or_get(ep: Endpoint, s: Settings, port_hint: str, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, connect_seconds: float, *,
                        is_tls: bool) -> tuple[ServiceInfo | None, bytes, bool, float]:
    """Listen for a greeting; when none comes, ask GET / on the same connection.

    Returns (identification, bytes received, whether GET was sent, seconds spent
    listening for a late greeting).
    """
    window = _greeting_window(s, connect_seconds)
    data = await read_bounded(reader, timeout=window, is_complete=_is_whole_greeting)
    if _is_unfinished_text(data) and s.banner_wait > window:
        # A greeting sent in pieces ("SSH-2.0-OpenSSH_9.6" then "p1 Ubuntu..."; FTP's
        # "220-Welcome" then "220 ProFTPD 1.3.8"): read to its end, within banner_wait,
        # silences included. A piece alone named a wrong version, or nothing.
        head = data
        data += await read_bounded(
            reader, timeout=s.banner_wait - window, idle=s.banner_wait, cap=READ_CAP - len(head),
            is_complete=lambda more: not _is_unfinished_text(head + more))
    if data:
        return parse_banner(data, port_hint) or parse_foreign_reply(data), data, False, 0.0
    writer.write(_http_request(ep))
    await writer.drain()
    waited = max(s.banner_wait - window, window)
    data = await read_bounded(reader, timeout=waited)
    late = _late_greeting_wait(s) - window - waited
    listened = 0.0
    if not data and not reader.at_eof() and late > 0:
        # Silent and still open: a greeting held back (a reverse-DNS or ident lookup
        # before the banner, an SMTP greet pause, a slow accept hook) comes late; nmap's
        # NULL probe waits 6 s for it. A port that closed, or answered, is not waited on.
        began = time.monotonic()
        data = await read_bounded(reader, timeout=late)
        listened = time.monotonic() - began
    # A late greeting arrives ahead of the answer to GET: try banners first.
    info = (parse_banner(data, port_hint) or parse_http(data, is_tls=is_tls)
            or parse_foreign_reply(data)) if data else None
    return info, data, True, listened


async def probe_null(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    started = time.monotonic()
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        connected = time.monotonic() - started
        info, data, sent_get, late = await _greet_or_get(ep, s, port_hint, reader, writer,
                                                         connected, is_tls=False)
    return Outcome(ProbeKind.NULL, info, data, label="null+http-get" if sent_get else "",
                   connect_seconds=connected, late_seconds=late)


async def probe_http(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    started = time.monotonic()
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        connected = time.monotonic() - started
        writer.write(_http_request(ep))
        await writer.drain()
        # "Connection: close": a server ends the answer by closing; a body signature
        # (servers without a Server header) may follow the headers.
        data = await read_bounded(reader, timeout=s.probe_timeout)
    info = parse_http(data) or ((parse_banner(data, port_hint) or parse_foreign_reply(data))
                                if data else None)
    return Outcome(ProbeKind.HTTP_GET, info, data, connect_seconds=connected)


def _certificate_cn(writer: asyncio.StreamWriter) -> str:
    """The leaf certificate's subject CN, unverified: a hint (hostname, appliance
    name), never a trust decision."""
    ssl_object = writer.get_extra_info("ssl_object")
    try:
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    except ValueError:  # "handshake not done yet": the server's TLS 1.3 alert came first
        return ""
    if not der:
        return ""
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        from probers.tls.certs import served_certificate_warnings_ignored

        with served_certificate_warnings_ignored():  # (a serial that is not positive...)
            names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
                NameOID.COMMON_NAME)
    except (ImportError, ValueError):
        return ""
    value = names[0].value if names else ""
    # As UTF-8, as every other text is kept ("Москва.example" read "??????.example")
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return sanitize(raw, 128, utf8=True)


async def _echoes(ep: Endpoint, s: Settings) -> bool:
    """Does the peer send back a line of plain text it is sent (RFC 862's echo)?"""
    try:
        async with _connect(ep, s.probe_timeout) as (reader, writer):
            writer.write(_ECHO_PROBE)
            await writer.drain()
            data = await read_bounded(reader, timeout=s.probe_timeout, cap=len(_ECHO_PROBE),
                                      is_complete=lambda got: len(got) >= len(_ECHO_PROBE))
    except (OSError, TimeoutError):
        return False
    return data == _ECHO_PROBE


async def probe_tls(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    started = time.monotonic()
    try:
        async with _connect(ep, s.probe_timeout, tls_client_context(),
                            ep.hostname or None) as (reader, writer):
            cn = _certificate_cn(writer)
            info, data, _, late = await _greet_or_get(ep, s, port_hint, reader, writer,
                                                      time.monotonic() - started, is_tls=True)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if any(r in reason for r in _NOT_TLS_REASONS):
            return Outcome(ProbeKind.TLS, error=f"not TLS ({reason})")
        # (an echo service read "ssl", "handshake failed: UNEXPECTED_MESSAGE", where nmap
        # says echo: a review)
        if _ECHO_SUSPECT in reason and await _echoes(ep, s):
            return Outcome(ProbeKind.TLS, error="not TLS (it sends back what it gets)")
        # A TLS alert or a refused version: it speaks TLS, we could not finish. The method
        # says an alert only when the peer sent one (junk after a record header read
        # "tls:alert" too: a review)
        method = "tls:alert" if "ALERT" in reason.upper() else "tls:handshake-error"
        return Outcome(ProbeKind.TLS, ServiceInfo(service="ssl", is_tls=True,
                                                  extra_info=f"handshake failed: {reason}",
                                                  method=method, confidence=5),
                       is_tls=True)
    hint = f"certificate CN: {cn}" if cn else ""
    if info is not None and info.service not in ("ssl", ""):
        service = info.service if info.service in ("https",) else f"ssl/{info.service}"
        extra = "; ".join(x for x in (info.extra_info, hint) if x)
        info = replace(info, service=service, is_tls=True, extra_info=extra)
    else:
        info = ServiceInfo(service="ssl", is_tls=True, extra_info=hint, method="tls:handshake",
                           confidence=6)
    return Outcome(ProbeKind.TLS, info, data, is_tls=True, late_seconds=late)


async def probe_redis(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(b"INFO server\r\n")
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout)
    return Outcome(ProbeKind.REDIS_INFO, parse_redis(data), data)


# StartupMessage with protocol version 65535.0, newer than any server speaks: it is refused
# before authentication with an error that dates the server, and nothing else happens.
# The major version must be above 3: below, the server answers in the old v2 format,
# without the fields (PostgreSQL protocol, "Message Formats": int32 length, int32
# version, parameters, NUL).
_PG_FUTURE_STARTUP = (9).to_bytes(4, "big") + (0xFFFF_0000).to_bytes(4, "big") + b"\x00"


async def probe_memcached(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(MEMCACHED_VERSION_REQUEST)
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, until=b"\r\n", cap=256)
    return Outcome(ProbeKind.MEMCACHED, parse_memcached_version(data), data)


async def probe_postgres(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        # SSLRequest: int32 length 8, int32 code 80877103 (PostgreSQL protocol, 54.2.10)
        writer.write((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, cap=256, idle=0.2)
        info = parse_postgres_ssl_reply(data)
        if data == b"S":
            # One byte is weak evidence (a banner sent a byte at a time starts "SSH-2.0"):
            # 'S' means "go on with TLS", so a ClientHello on the same connection must
            # meet a TLS record. Anything else said after it is another protocol; silence
            # or a reset keeps the 'S', as a guess the other probes may outbid.
            reply = b""
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                # a ClientHello, any (JARM's first: already built here, stdlib only)
                writer.write(build_hello(JARM_HELLOS[0], ep.hostname or ep.ip))
                await writer.drain()
                reply = await read_bounded(reader, timeout=s.probe_timeout, cap=16, idle=0.2)
            if reply[:1] in (b"\x15", b"\x16") and reply[1:2] == b"\x03":
                pass  # a TLS alert or handshake record: a PostgreSQL offering TLS
            elif reply:
                info = None
            elif info is not None:
                info = replace(info, confidence=_PG_GUESS)
        if data == b"N":
            # Same connection: after 'N' the server waits for a startup packet. What 'N'
            # told is kept whatever the follow-up meets (a reset, a close, silence)
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                writer.write(_PG_FUTURE_STARTUP)
                await writer.drain()
                reply = await read_bounded(reader, timeout=s.probe_timeout, cap=1024,
                                           idle=0.2)
                dated = parse_postgres_version_error(reply)
                if dated is not None and info is not None:
                    info = replace(dated, extra_info="; ".join(
                        x for x in (info.extra_info, dated.extra_info) if x))
                elif reply and not reply.startswith(b"E"):
                    info = None  # more text, not PostgreSQL's refusal: another protocol
    return Outcome(ProbeKind.POSTGRES_SSL, info, data)


# An SSLRequest's lone 'S' whose ClientHello met silence: below the stop confidence, so
# the probes after it still run and a better answer wins.
_PG_GUESS = 5


# X.224 Connection Request in a TPKT, carrying RDP_NEG_REQ asking for TLS and CredSSP
# ([MS-RDPBCGR] 2.2.1.1): TPKT(3, 0, len 19), X.224 CR (LI 14, 0xE0, refs 0, class 0),
# RDP_NEG_REQ (type 1, flags 0, length 8, protocols 0x3).
_RDP_REQUEST = bytes(
    [0x03, 0x00, 0x00, 0x13, 0x0E, 0xE0, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00])


async def probe_rdp(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(_RDP_REQUEST)
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, cap=512, idle=0.2)
    return Outcome(ProbeKind.RDP, parse_rdp_confirm(data), data)


async def _exchange(ep: Endpoint, s: Settings, request: bytes, *, tls: bool, cap: int,
                    is_complete: Callable[[bytes], bool], farewell: bytes = b"") -> bytes:
    """One request and its bounded answer, in clear or inside TLS (then with our usual
    client context and the target's name). One timeout for connect and exchange: a TLS
    handshake must not double the budget. ``farewell`` is sent after the answer, if the
    peer is still there."""
    started = time.monotonic()
    async with _connect(ep, s.probe_timeout, tls_client_context() if tls else None,
                        ep.hostname or None) as (reader, writer):
        writer.write(request)
        await writer.drain()
        left = max(0.05, s.probe_timeout - (time.monotonic() - started))
        data = await read_bounded(reader, timeout=left, cap=cap, idle=0.3,
                                  is_complete=is_complete)
        if farewell:
            with contextlib.suppress(OSError):
                writer.write(farewell)
    return data


def _inside_tls(kind: ProbeKind, info: ServiceInfo | None, data: bytes) -> Outcome:
    """The outcome of a probe's TLS twin: what it names was found inside TLS."""
    return Outcome(kind, replace(info, is_tls=True) if info else None, data, is_tls=True)


async def _mqtt_exchange(ep: Endpoint, s: Settings, *, tls: bool) -> bytes:
    # CONNACK, SUBACK, then the retained version PUBLISH: whole once parsed
    return await _exchange(ep, s, mqtt_request(), tls=tls, cap=4096,
                           is_complete=_has_mqtt_version, farewell=MQTT_DISCONNECT)


async def probe_mqtt(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    data = await _mqtt_exchange(ep, s, tls=False)
    return Outcome(ProbeKind.MQTT, parse_mqtt(data), data)


async def probe_mqtt_tls(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    """MQTT over TLS (8883): the handshake, then the same exchange as ``probe_mqtt``."""
    data = await _mqtt_exchange(ep, s, tls=True)
    return _inside_tls(ProbeKind.MQTT_TLS, parse_mqtt(data), data)


def _has_mqtt_version(data: bytes) -> bool:
    info = parse_mqtt(data)
    return info is not None and (info.method == "probe:mqtt-sys-version"
                                 or "refused" in info.extra_info)


async def probe_amqp(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(AMQP_HEADER)
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, cap=8192, idle=0.3,
                                  is_complete=_is_whole_amqp_frame)
    return Outcome(ProbeKind.AMQP, parse_amqp(data), data)


def _is_whole_amqp_frame(data: bytes) -> bool:
    if data.startswith(b"AMQP"):
        return len(data) >= 8
    return len(data) >= 8 and len(data) >= 8 + int.from_bytes(data[3:7], "big")


async def probe_smb(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    async with _connect(ep, s.probe_timeout) as (reader, writer):
        writer.write(smb2_negotiate_request())
        await writer.drain()
        data = await read_bounded(reader, timeout=s.probe_timeout, cap=4096, idle=0.3,
                                  is_complete=_is_whole_netbios_message)
        info = parse_smb2_negotiate(data)
        if info is not None and info.extra_info.startswith("SMB dialect"):
            # Same connection: an NTLMSSP NEGOTIATE; the CHALLENGE names the server (no
            # credential is ever sent; the session is never completed). The dialect is
            # kept whatever the follow-up meets (a reset, a close, silence)
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                writer.write(smb2_session_setup_request())
                await writer.drain()
                challenge = await read_bounded(reader, timeout=s.probe_timeout, cap=4096,
                                               idle=0.3, is_complete=_is_whole_netbios_message)
                names = parse_ntlm_challenge(challenge)
                if names:
                    info = replace(info, extra_info=f"{info.extra_info}; {names}")
    return Outcome(ProbeKind.SMB, info, data)


async def _kafka_exchange(ep: Endpoint, s: Settings, *, tls: bool) -> bytes:
    return await _exchange(ep, s, kafka_api_versions_request(), tls=tls,
                           cap=KAFKA_FRAME_CAP + 4, is_complete=is_whole_kafka_frame)


async def probe_kafka(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    data = await _kafka_exchange(ep, s, tls=False)
    return Outcome(ProbeKind.KAFKA, parse_kafka_api_versions(data), data)


async def probe_kafka_tls(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    """Kafka's SSL listener: the handshake, then the same ApiVersions exchange."""
    data = await _kafka_exchange(ep, s, tls=True)
    return _inside_tls(ProbeKind.KAFKA_TLS, parse_kafka_api_versions(data), data)


def _is_whole_netbios_message(data: bytes) -> bool:
    return len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[1:4], "big")


async def probe_kubernetes(ep: Endpoint, s: Settings, port_hint: str) -> Outcome:
    data = await fetch_http(ep, "/version", is_tls=True, timeout=s.probe_timeout)
    response = split_response(data)
    info = parse_kubernetes_version(response.body) if response.status == 200 else None
    return Outcome(ProbeKind.K8S_VERSION, info, data, is_tls=bool(data))


def json_product(outcome: Outcome) -> ServiceInfo | None:
    """An HTTP answer whose JSON body names the product (Elasticsearch/OpenSearch's ``/``,
    or Elasticsearch's refusal of an anonymous request)."""
    if not outcome.data.startswith(b"HTTP/"):
        return None
    response = split_response(outcome.data)
    is_tls = outcome.is_tls or (outcome.info is not None and outcome.info.is_tls)
    if response.status == 200:
        found = parse_search_root(response.body, is_tls=is_tls)
    elif response.status == 401:
        found = parse_search_refusal(response.body, is_tls=is_tls)
    else:
        return None
    if found is None or outcome.info is None:
        return found
    return replace(found, headers=outcome.info.headers)


def wants_kubernetes_version(outcome: Outcome) -> bool:
    if not outcome.data.startswith(b"HTTP/"):
        return False
    return is_kubernetes_status(split_response(outcome.data).body)


ProbeImpl = Callable[[Endpoint, Settings, str], Awaitable[Outcome]]
PROBES: dict[ProbeKind, ProbeImpl] = {
    ProbeKind.NULL: probe_null,
    ProbeKind.HTTP_GET: probe_http,
    ProbeKind.TLS: probe_tls,
    ProbeKind.REDIS_INFO: probe_redis,
    ProbeKind.POSTGRES_SSL: probe_postgres,
    ProbeKind.RDP: probe_rdp,
    ProbeKind.MQTT: probe_mqtt,
    ProbeKind.MQTT_TLS: probe_mqtt_tls,
    ProbeKind.AMQP: probe_amqp,
    ProbeKind.SMB: probe_smb,
    ProbeKind.K8S_VERSION: probe_kubernetes,
    ProbeKind.KAFKA: probe_kafka,
    ProbeKind.KAFKA_TLS: probe_kafka_tls,
    ProbeKind.MEMCACHED: probe_memcached,
}

# -- plan --------------------------------------------------------------------------------

HTTP_PORTS = frozenset({80, 81, 591, 3000, 5000, 8000, 8008, 8080, 8081, 8088, 8888, 9000})
TLS_PORTS = frozenset({443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 2053, 2083, 2087,
                       6443,
                       2096, 4443, 5061, 6697, 8443, 9443})
PORT_HINTS: dict[int, str] = {21: "ftp", 25: "smtp", 587: "smtp", 2525: "smtp", 6379: "redis",
                              5432: "postgresql", 3389: "ms-wbt-server",
                              1883: "mqtt", 8883: "secure-mqtt", 5672: "amqp",
                              445: "microsoft-ds",
                              # Kafka: the default listener, the usual second (TLS or
                              # external) ones, KRaft's controller, Confluent's images
                              9092: "kafka", 9093: "kafka", 9094: "kafka", 29092: "kafka",
                              11211: "memcached"}
HINT_FIRST: dict[str, ProbeKind] = {"redis": ProbeKind.REDIS_INFO,
                                    "postgresql": ProbeKind.POSTGRES_SSL,
                                    "ms-wbt-server": ProbeKind.RDP,
                                    "mqtt": ProbeKind.MQTT, "secure-mqtt": ProbeKind.MQTT_TLS,
                                    "amqp": ProbeKind.AMQP, "microsoft-ds": ProbeKind.SMB,
                                    "kafka": ProbeKind.KAFKA, "memcached": ProbeKind.MEMCACHED}
# NULL already sends GET / when the port is silent, so HTTP_GET runs only where it
# goes first (HTTP ports); the rest follow in order of how often they name a port.
# Redis before PostgreSQL: PostgreSQL closes at once on "INFO", while Redis waits for
# the end of a line that the binary SSLRequest never sends.
DEFAULT_ORDER = (ProbeKind.NULL, ProbeKind.TLS, ProbeKind.REDIS_INFO, ProbeKind.POSTGRES_SSL,
                 ProbeKind.RDP)
# A tentative answer (confidence below STOP_CONFIDENCE) that names the protocol: the
# probe that speaks it goes next, ahead of the plan.
FOLLOW_UP: dict[str, ProbeKind] = {"ssl": ProbeKind.TLS, "https": ProbeKind.TLS,
                                   "redis": ProbeKind.REDIS_INFO,
                                   "postgresql": ProbeKind.POSTGRES_SSL,
                                   "amqp": ProbeKind.AMQP}
# Services nmap's probes name without a product (on a port no hint knows) that one of
# ours can name: asked after nmap, as nmap runs its version scripts after its probes.
AFTER_NMAP: dict[str, ProbeKind] = {"mqtt": ProbeKind.MQTT, "amqp": ProbeKind.AMQP,
                                    "microsoft-ds": ProbeKind.SMB}
# ... and services nmap names with a product but no version that one of ours can date
VERSION_AFTER_NMAP: dict[str, ProbeKind] = {"memcached": ProbeKind.MEMCACHED}
# ... and the one to send instead when that service was found inside TLS
INSIDE_TLS: dict[ProbeKind, ProbeKind] = {ProbeKind.MQTT: ProbeKind.MQTT_TLS}
# A probe planned first by a port hint, then its twin across TLS: MQTT's secure port may
# be a plaintext broker (nmap's mqtt probe is sent in clear to 1883 only, so it would go
# unnamed), and Kafka's second listener (9093/9094) is often its SSL one
TWIN_AFTER: dict[ProbeKind, ProbeKind] = {ProbeKind.MQTT_TLS: ProbeKind.MQTT,
                                          ProbeKind.KAFKA: ProbeKind.KAFKA_TLS}
STOP_CONFIDENCE = 8
FALLBACK_GRACE = 0.5  # seconds past nmap's own budget before it is cut
GUESS_TIMEOUT = 0.5  # seconds, at least, for a probe sent on a guess
GUESS_RTTS = 8  # and at least this many connect times (slow links)
# ... but a guessed TLS handshake: a server's side of it can take a second whatever the
# link (an appliance's RSA-4096 or HSM-held key, a loaded server). At 0.5 s a handshake
# of 0.6 s on an odd port was never known to be TLS, and its certificate and suites never
# reached the Ciphers report (a review). A silent port pays the second more, once.
TLS_GUESS_TIMEOUT = 1.5


def after_nmap(best: ServiceInfo | None, *, is_tls: bool) -> ProbeKind | None:
    """Our probe that can name the product of a service found without one, or date one
    found without a version (None: none can); its TLS variant when the port spoke TLS."""
    if best is None:
        return None
    if best.product:
        after = None if best.version else VERSION_AFTER_NMAP.get(best.service)
    else:
        after = AFTER_NMAP.get(best.service)
    if after is not None and (best.is_tls or is_tls):
        return INSIDE_TLS.get(after, after)
    return after


def plan(port: int) -> tuple[ProbeKind, ...]:
    """Probe order for a port: the likely probe first, then everything else."""
    first: tuple[ProbeKind, ...] = ()
    if port in TLS_PORTS:
        first = (ProbeKind.TLS,)
    elif port in HTTP_PORTS:
        first = (ProbeKind.HTTP_GET,)
    elif PORT_HINTS.get(port, "") in HINT_FIRST:
        hinted = HINT_FIRST[PORT_HINTS[port]]
        twin = TWIN_AFTER.get(hinted)
        first = (hinted,) if twin is None else (hinted, twin)
    return first + tuple(k for k in DEFAULT_ORDER if k not in first)


# (endpoint, speaks TLS, what the port said unasked (None: nobody listened; b"": our NULL
# probe listened and it stayed silent), seconds left, the service already named or "")
# -> identification
Fallback = Callable[[Endpoint, bool, bytes | None, float, str],
                    Awaitable[ServiceInfo | None]]


def needs_product(info: ServiceInfo | None) -> bool:
    """Our probe named the service but not the implementation: nmap's probes may."""
    return info is not None and bool(info.service) and not info.product


def _nmap_service(service: str) -> str:
    """Our service name as nmap's match lines spell it ("ssl/imap" -> "imap")."""
    return service.removeprefix("ssl/")


def better_of(ours: ServiceInfo | None, theirs: ServiceInfo | None) -> ServiceInfo | None:
    """Keep the best identification: a named product beats none; otherwise the more
    confident. When nmap names the product of a service ours found, our notes stay.
    nmap's "tcpwrapped" (closed before a word) names nothing: it never replaces what
    ours found (a TLS server that closes on a handshake without a client certificate)."""
    if theirs is None or not theirs.is_identified:
        return ours
    if ours is not None and theirs.service == "tcpwrapped":
        return ours
    if ours is None:
        return theirs
    if theirs.product and not ours.product:
        extra = "; ".join(x for x in (theirs.extra_info, ours.extra_info) if x)
        return replace(theirs, extra_info=extra[:300], headers=theirs.headers or ours.headers)
    if ours.product and not theirs.product:
        return ours
    if (theirs.version and not ours.version
            and theirs.product.casefold() == ours.product.casefold()):
        return replace(theirs, headers=theirs.headers or ours.headers)  # the same, dated
    if theirs.confidence > ours.confidence:
        # (the headers ours read stay: the CDN verdict and the pivots read them)
        return replace(theirs, headers=theirs.headers or ours.headers)
    return ours


async def identify(ep: Endpoint, settings: Settings | None = None,
                   fallback: Fallback | None = None) -> ServiceInfo:
    """Identify the service on one open TCP port within ``settings.budget`` seconds.

    Probes run one at a time (one connection each) in ``plan`` order; an answer
    that names a protocol tentatively moves that protocol's own probe to the
    front; the first answer at ``STOP_CONFIDENCE`` or above ends it. When nothing
    that sure was found, ``fallback`` (nmap's service probes) gets the rest of
    the budget. The result says how it was identified (``method``,
    ``confidence``) and what was sent (``tried``); an unidentified port also says
    why each probe failed (``extra_info``).
    """
    s = settings or Settings()
    deadline = time.monotonic() + s.budget
    hint = PORT_HINTS.get(ep.port, "")
    tried: list[str] = []
    notes: list[str] = []
    best: ServiceInfo | None = None
    first_data = b""
    greeting: bytes | None = None  # what the port said unasked: nmap's NULL-probe answer
    is_tls = False
    rtt = 0.0
    best_data = b""  # the answer that gave ``best``: its banner
    ordered = plan(ep.port)
    # (probe, whether it is a guess): the planned first probe and a follow-up asked for
    # by an answer get the full probe timeout; the rest are guesses and get a few
    # round trips (a service that speaks the probe's protocol answers at once).
    queue: list[tuple[ProbeKind, bool]] = [(ordered[0], False)] + [(k, True) for k in ordered[1:]]
    sent: set[ProbeKind] = set()
    while queue:
        kind, is_guess = queue.pop(0)
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            notes.append("budget exhausted")
            break
        tried.append(kind.value)
        sent.add(kind)
        probe_settings = s
        if is_guess:
            least = TLS_GUESS_TIMEOUT if kind is ProbeKind.TLS else GUESS_TIMEOUT
            probe_settings = replace(s, probe_timeout=min(
                s.probe_timeout, max(least, GUESS_RTTS * rtt)))
        try:
            outcome = await asyncio.wait_for(PROBES[kind](ep, probe_settings, hint), remaining)
        except (TimeoutError, OSError, ssl.SSLError, EOFError) as exc:
            notes.append(f"{kind.value}: {type(exc).__name__}")
            continue
        except Exception as exc:  # noqa: BLE001 - a parser's bug on a hostile reply: this
            # probe's answer is lost, never the port's identification (the next probe goes on)
            log.warning("probe %s of %s:%s failed on its reply: %s: %s", kind.value, ep.ip,
                        ep.port, type(exc).__name__, str(exc)[:200])
            notes.append(f"{kind.value}: {type(exc).__name__}")
            continue
        if outcome.label:
            tried[-1] = outcome.label
        if outcome.error:
            notes.append(f"{kind.value}: {outcome.error}")
        if outcome.connect_seconds > 0:
            rtt = max(rtt, outcome.connect_seconds)
        deadline += outcome.late_seconds  # the late-greeting wait is not the budget's
        first_data = first_data or outcome.data
        if kind is ProbeKind.NULL and greeting is None:
            # Unasked bytes, or silence through the greeting window (GET was sent then)
            greeting = b"" if outcome.label else outcome.data
        is_tls = is_tls or outcome.is_tls
        info = json_product(outcome) or outcome.info
        if ProbeKind.K8S_VERSION not in sent and wants_kubernetes_version(outcome):
            queue.insert(0, (ProbeKind.K8S_VERSION, False))
        if info is None:
            if kind is ProbeKind.NULL and outcome.label:
                notes.append(f"{outcome.label}: {'no answer' if not outcome.data else 'no match'}")
            continue
        if best is None or info.confidence > best.confidence:
            best, best_data = info, outcome.data
        if info.confidence >= STOP_CONFIDENCE:
            break
        follow = FOLLOW_UP.get(info.service)
        # Queued, or (a probe only hinted ports plan) not sent yet: it goes next.
        if follow is not None and follow not in sent and (
                any(k is follow for k, _ in queue) or follow not in ordered):
            queue = [(follow, False)] + [(k, g) for k, g in queue if k is not follow]
    read_by = GUESS_READ_BY.get(best.method) if best is not None else None
    if best is not None and read_by is not None and best_data:
        guessed_by, guessed_service = read_by
        # A product guessed from a Server header or an SSH greeting none of our patterns
        # knows: nmap's lines for its GetRequest (or NULL) read the answer already here
        # (no new connection; sending nmap's probes took the whole budget on every such
        # server) and name it when they can ("Python/3.9 aiohttp/3.8.1" is aiohttp
        # 3.8.1, "SSH-2.0-ROSSSH" MikroTik RouterOS sshd: reviews)
        read_answer = getattr(fallback, "match_answer", None)
        if read_answer is not None:
            prepare_answer = getattr(fallback, "prepare_answer", None)
            if prepare_answer is not None:
                # loading nmap's lines and compiling GetRequest's: seconds, once per
                # process, not this port's time, as for ``prepare`` below (the first such
                # ports lost their favicon to it under load: a review); the match is
                began = time.monotonic()
                await prepare_answer(guessed_by, guessed_service)
                deadline += time.monotonic() - began
            best = better_of(best, await read_answer(guessed_by, best_data, best.is_tls,
                                                     guessed_service))
    # nmap's probes run when ours named nothing for sure, and also when ours named the
    # service but not its product (an RDP negotiation answer names no implementation):
    # then only the probes that can name that service are sent (issue 15).
    is_unsure = best is None or best.confidence < STOP_CONFIDENCE
    if (is_unsure or needs_product(best)) and fallback is not None:
        prepare = getattr(fallback, "prepare", None)
        if prepare is not None:
            # loading and compiling nmap's lines happens once per process (seconds): not
            # this port's time, or the first ports to need nmap get none of it
            began = time.monotonic()
            await prepare()
            deadline += time.monotonic() - began
        remaining = deadline - time.monotonic()
        if remaining > 0.5:
            known = "" if is_unsure or best is None else _nmap_service(best.service)
            tried.append(f"nmap-service-probes:{known}" if known else "nmap-service-probes")
            try:
                # nmap keeps its own budget (``remaining``) and then says what it left
                # unsent; the grace lets that answer, not our timeout, end it
                extra = await asyncio.wait_for(
                    fallback(ep, is_tls, greeting, remaining, known),
                    remaining + FALLBACK_GRACE)
            except (TimeoutError, OSError) as exc:
                notes.append(f"nmap: {type(exc).__name__}")
                extra = None
            if extra is not None and not extra.is_identified:
                # "nmap: no match (budget exhausted, 21 probes not sent)", not a bare
                # TimeoutError that hid why (review)
                notes.append(f"nmap: {extra.method.removeprefix('nmap:')}"[:160])
                extra = None
            if extra is not None and best is not None and best.is_tls and not extra.is_tls:
                extra = replace(extra, is_tls=True)
            kept = better_of(best, extra)
            if kept is not best:
                best, best_data = kept, b""
    after = after_nmap(best, is_tls=is_tls)
    if after is not None and after.value not in tried and deadline - time.monotonic() > 0.2:
        tried.append(after.value)
        try:
            outcome = await asyncio.wait_for(PROBES[after](ep, s, hint),
                                             deadline - time.monotonic())
            best = better_of(best, outcome.info)
        except (TimeoutError, OSError, ssl.SSLError, EOFError) as exc:
            notes.append(f"{after.value}: {type(exc).__name__}")
    banner = sanitize(best_data or first_data)
    if best is None:
        return ServiceInfo(is_tls=is_tls, banner=banner, method="unidentified",
                           extra_info="; ".join(notes)[:300], tried=tuple(tried))
    found = replace(best, banner=best.banner or banner, tried=tuple(tried),
                    is_tls=best.is_tls or is_tls)
    if s.http_meta and is_http_service(found.service):
        found = await _with_http_meta(ep, s, found, best_data, deadline)
    if s.jarm and found.is_tls:
        found = await _with_jarm(ep, s, found, deadline)
    return found


# -- what analysts pivot on (issue 15): HTTP title/redirect/favicon, JARM ----------------

MAX_REDIRECTS = 3  # same-host redirects followed to reach the page whose title we keep
FETCH_CAP = HEAD_CAP + BODY_CAP


def is_http_service(service: str) -> bool:
    """http, https, http-proxy, ssl/http-alt...: every service nmap spells http*."""
    return service.removeprefix("ssl/").startswith("http")


async def fetch_http(ep: Endpoint, path: str, *, is_tls: bool, timeout: float) -> bytes:
    """GET ``path`` on one connection; at most ``FETCH_CAP`` bytes within ``timeout``.

    Hostile servers are bounded here: a slow or endless answer stops at the deadline or
    the cap, and whatever arrived is returned (parsers take it from there).
    """
    return (await _fetch(ep, path, is_tls=is_tls, timeout=timeout))[0]


async def _fetch(ep: Endpoint, path: str, *, is_tls: bool, timeout: float
                 ) -> tuple[bytes, bool]:
    """``fetch_http``'s answer, and whether it ended (``_read_http_answer``)."""
    host = ep.hostname or (f"[{ep.ip}]" if ":" in ep.ip else ep.ip)
    request = (f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode()
    deadline = time.monotonic() + timeout
    try:
        async with _connect(ep, timeout, tls_client_context() if is_tls else None,
                            ep.hostname or None) as (reader, writer):
            writer.write(request)
            await asyncio.wait_for(writer.drain(), max(0.05, deadline - time.monotonic()))
            return await _read_http_answer(reader, deadline)
    except (TimeoutError, OSError, ssl.SSLError, EOFError):
        return b"", False


FETCH_IDLE = 1.0  # s of silence that ends an answer declaring no end (and not closed)


async def _read_http_answer(reader: asyncio.StreamReader, deadline: float
                            ) -> tuple[bytes, bool]:
    """An HTTP answer read to the end it declares (Content-Length, last chunk), to the
    server's close, or, when it declares none and the server holds the connection, to
    FETCH_IDLE of silence; whatever arrived by the deadline otherwise. A body is never cut
    at a pause when its end is declared (an icon cut there hashed as another one).
    (The bytes, and whether the answer ended: not at the deadline nor at the cap. An
    endless icon cut at the deadline hashed as another icon every scan: a review.)"""
    buf = bytearray()
    end: DeclaredEnd | None = None
    ended = False
    while len(buf) < FETCH_CAP:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        waits_for_end = not buf or end is None or end.is_declared
        wait = left if waits_for_end else min(left, FETCH_IDLE)
        try:
            chunk = await asyncio.wait_for(reader.read(FETCH_CAP - len(buf)), wait)
        except TimeoutError:
            ended = wait < left  # a silence of FETCH_IDLE, not the deadline
            break
        except (ConnectionError, OSError, ssl.SSLError):
            ended = True  # the server ended it (a reset after its last byte)
            break
        if not chunk:
            ended = True
            break
        buf += chunk
        if end is None:
            frame = http_framing(buf)  # (no copy per read: a trickle stays linear)
            end = DeclaredEnd(frame) if frame is not None else None
        if end is not None and end.reached(buf):
            ended = True
            break
    return bytes(buf), ended


async def _with_http_meta(ep: Endpoint, s: Settings, info: ServiceInfo, answer: bytes,
                          deadline: float) -> ServiceInfo:
    """Title (after same-host redirects), redirect target, Server, X-Powered-By and the
    favicon hash; each extra request is one connection within what is left of the budget."""
    is_tls = info.is_tls

    async def get(path: str) -> HttpResponse | None:
        left = deadline - time.monotonic()
        if left < 0.1:
            return None
        data, ended = await _fetch(ep, path, is_tls=is_tls, timeout=min(s.probe_timeout, left))
        response = split_response(data)
        return response if ended or not response.is_whole else replace(response, is_whole=False)

    # The identifying probe's answer when it is whole (it was read up to READ_CAP only:
    # a title or an icon link past that was lost), else the page is fetched again
    probed = split_response(answer) if answer.startswith(b"HTTP/") else None
    first = probed if probed and probed.is_whole and len(answer) < READ_CAP else None
    if first is None or first.status == 0:
        fetched = await get("/")
        first = fetched if fetched is not None and fetched.status else probed
    if first is None or first.status == 0:
        return info
    redirect = redirect_location(first)
    page, page_path = first, "/"
    for _ in range(MAX_REDIRECTS):
        location = redirect_location(page)
        next_path = same_host_path(location, ep.hostname or ep.ip, ep.port, is_tls=is_tls,
                                   base_path=page_path) if location else None
        if next_path is None:
            break
        followed = await get(next_path)
        if followed is None or followed.status == 0:
            break
        page, page_path = followed, next_path
    href = favicon_href(page.body)
    icon_path = (same_host_path(href, ep.hostname or ep.ip, ep.port, is_tls=is_tls,
                                base_path=page_path) if href else None) or "/favicon.ico"
    icon = await get(icon_path)
    favicon = favicon_hash(icon.body) if icon is not None and is_icon_response(icon) else None
    return replace(info, http_title=page_title(page.body), http_redirect=redirect,
                   http_server=first.header("server"),
                   http_powered_by=first.header("x-powered-by"), favicon_mmh3=favicon,
                   headers=info.headers or first.headers)


async def _with_jarm(ep: Endpoint, s: Settings, info: ServiceInfo,
                     deadline: float) -> ServiceInfo:
    left = deadline - time.monotonic()
    if left < 0.2:
        return info
    fingerprint = await jarm_fingerprint(ep.ip, ep.port, server_name=ep.hostname or ep.ip,
                                         timeout=min(s.probe_timeout, left), budget=left)
    return replace(info, jarm=fingerprint or "")
