"""Raw ClientHello exchanges: one TCP connection, one ClientHello, the server's first flight.

Owns: building ClientHellos with tlslite-ng for any version from SSLv3 to TLS 1.2 (and a
TLS 1.3-advertising hello for detection), sending one on a fresh blocking socket, and
reading the answer under a hard per-attempt deadline into a ``HelloOutcome``: which suite
the server picked, at which version, the (EC)DH group it used and the certificate chain
it sent. Nothing here completes a handshake, so suites the local OpenSSL cannot speak
(RC4, 3DES, EXPORT, NULL, SSLv3) are still seen.

A STARTTLS preamble (``starttls.perform_upgrade``), when asked for, runs on the same
connection before the hello and within the same deadline; its failures become their own
outcome kinds (UPGRADE_NOT_OFFERED / UPGRADE_FAILED), never a refusal of the offer.

Must not touch: pyOpenSSL, records, grading, asyncio. Every function here is blocking and
meant to run in a worker thread; each call to ``exchange_hello`` opens at most one
connection and returns within its ``timeout``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from probers.tls.starttls import FailureKind, Upgrade, UpgradeFailure, perform_upgrade
from probers.tls.suites import TLS13_CODES, SuiteInfo, TlsVersion, describe
from probers.tls.tlslite_compat import (
    FFDHE_PARAMETERS,
    AlertDescription,
    BaseTLSException,
    ClientHello,
    ClientKeyShareExtension,
    DecodeError,
    ECPointFormatsExtension,
    GroupName,
    HandshakeType,
    KeyShareEntry,
    PaddingExtension,
    Parser,
    ServerHello,
    SignatureAlgorithmsExtension,
    SNIExtension,
    SupportedGroupsExtension,
    SupportedVersionsExtension,
    TLSExtension,
)

# Hostile peers: a first flight bigger than this is not worth reading (real chains are
# a few KiB; 256 KiB leaves room for absurd ones). A record may not exceed 2^14 + 2048
# bytes of ciphertext (RFC 5246 6.2.3); plaintext handshake records are smaller still.
MAX_FLIGHT_BYTES = 256 * 1024
MAX_SKIPPED_CERTIFICATE = 4 * 1024 * 1024  # a longer chain is not read past: kex unknown
KEX_ROOM = 16 * 1024  # after the Certificate: the ServerKeyExchange's (a DH prime's) room
MAX_RECORD_BYTES = 2**14 + 2048
MAX_CHAIN_LENGTH = 10
_EXCERPT_BYTES = 40  # of a non-TLS answer, quoted in the error

_CONTENT_CHANGE_CIPHER_SPEC = 20
_CONTENT_ALERT = 21
_CONTENT_HANDSHAKE = 22
_TLS_CONTENT_TYPES = frozenset({20, 21, 22, 23, 24})

# RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this fixed "random".
_HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
_RENEGOTIATION_SCSV = 0x00FF

# Every named curve, so an ECDHE suite is never refused for want of a common curve; the
# ones modern clients send come first, so servers that follow the client's group order
# report the group a browser would get.
_MODERN_GROUPS = (29, 23, 30, 24, 25, 26, 27, 28)  # x25519, P-256, x448, P-384, P-521, bp*
_EC_GROUPS: tuple[int, ...] = _MODERN_GROUPS + tuple(
    g for g in range(1, 31) if g not in _MODERN_GROUPS
)
# (hash, signature) pairs of RFC 5246 7.4.1.4.1 plus the RFC 8446 schemes (0x08xx).
_SIGNATURE_ALGORITHMS: tuple[tuple[int, int], ...] = tuple(
    (h, s) for h in (6, 5, 4, 3, 2, 1) for s in (1, 2, 3)
) + tuple((8, s) for s in range(4, 12))

_DH_GROUP_NAMES: dict[int, str] = {
    p: name.removeprefix("RFC7919 ") for name, (_g, p) in FFDHE_PARAMETERS.items()
}


class OutcomeKind(StrEnum):
    """What one ClientHello got back. Only ACCEPTED, ALERT, CLOSED and WRONG_VERSION
    are answers about the offer; the rest mean the attempt could not test anything."""

    ACCEPTED = "accepted"  # a ServerHello (or HelloRetryRequest) picking a suite
    ALERT = "alert"  # a TLS alert instead of a ServerHello: the offer was refused
    CLOSED = "closed"  # the peer closed or reset without a word: refused, the quiet way
    WRONG_VERSION = "wrong_version"  # a ServerHello for another version than offered
    TIMEOUT = "timeout"  # nothing (or not enough) within the attempt's deadline
    CONNECT_FAILED = "connect_failed"  # TCP connect refused / unreachable
    NOT_TLS = "not_tls"  # the first bytes back are not a TLS record
    PROTOCOL_ERROR = "protocol_error"  # TLS-looking but malformed, or oversized
    UPGRADE_NOT_OFFERED = "upgrade_not_offered"  # the plaintext service offers no STARTTLS
    UPGRADE_FAILED = "upgrade_failed"  # the STARTTLS preamble was refused or broke off

    @property
    def is_refusal(self) -> bool:
        return self in (OutcomeKind.ALERT, OutcomeKind.CLOSED, OutcomeKind.WRONG_VERSION)

    @property
    def is_failure(self) -> bool:
        return not (self is OutcomeKind.ACCEPTED or self.is_refusal)


@dataclass(frozen=True, slots=True)
class HelloOutcome:
    kind: OutcomeKind
    detail: str = ""
    suite: int = 0
    version: TlsVersion | None = None
    kex_group: str = ""
    kex_bits: int = 0
    certificates: tuple[bytes, ...] = ()  # DER, leaf first, as the server sent them
    is_tls_answer: bool = False  # a well-formed TLS record came back (for detection)
    # ACCEPTED from a handshake cut short after the server's pick: what cut it short
    # (why no certificate came with it)
    cut_short: str = ""


@dataclass(frozen=True, slots=True)
class HelloSpec:
    """What one ClientHello offers."""

    version: TlsVersion
    suites: tuple[int, ...]
    server_name: str | None = None
    # Detection only: advertise TLS 1.3 too (supported_versions + an x25519 key share).
    advertise_tls13: bool = False
    # The named groups offered, in order; () = every named curve, the modern ones first
    groups: tuple[int, ...] = ()


def is_ip_literal(name: str) -> bool:
    """An address, scoped IPv6 ones (fe80::1%eth0) included: RFC 6066 sends no SNI for
    any of them. (``schemas.filters.is_ip_address`` refuses a zone: no column holds one.)"""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def sni_name(name: str) -> bytes | None:
    """``name`` as SNI sends it (IDNA), or None when it has no such form: an address
    (RFC 6066 3), or a name IDNA refuses (a label over 63 characters, an empty label):
    such a hello goes without SNI rather than failing in our own hands, which read as
    the peer's protocol error."""
    if not name or is_ip_literal(name):
        return None
    try:
        return name.encode("idna")
    except UnicodeError:
        return None


def build_client_hello(spec: HelloSpec) -> bytes:
    """The ClientHello as one TLS record, ready to send."""
    version = spec.version
    suites = list(spec.suites) + [_RENEGOTIATION_SCSV]
    extensions: list[TLSExtension] | None = None
    session_id = bytearray()
    if version is not TlsVersion.SSL_3_0:
        # SSLv3 (RFC 6101) has no extensions; some SSLv3-only stacks choke on them.
        extensions = []
        sni = sni_name(spec.server_name or "")
        if sni is not None:
            extensions.append(SNIExtension().create(bytearray(sni)))
        extensions.append(SupportedGroupsExtension().create(list(spec.groups or _EC_GROUPS)))
        extensions.append(ECPointFormatsExtension().create([0]))
        if version is TlsVersion.TLS_1_2 or spec.advertise_tls13:
            # RFC 5246 7.4.1.4.1: only meaningful (and only safe to send) when offering 1.2.
            extensions.append(SignatureAlgorithmsExtension().create(list(_SIGNATURE_ALGORITHMS)))
        if spec.advertise_tls13:
            extensions.append(SupportedVersionsExtension().create([(3, 4), (3, 3), (3, 2), (3, 1)]))
            public = X25519PrivateKey.generate().public_key().public_bytes_raw()
            share = KeyShareEntry().create(GroupName.x25519, bytearray(public))
            extensions.append(ClientKeyShareExtension().create([share]))
            session_id = bytearray(os.urandom(32))  # RFC 8446 D.4 middlebox compatibility
    hello = ClientHello().create(
        version.wire if version is not TlsVersion.TLS_1_3 else (3, 3),
        bytearray(os.urandom(32)),
        session_id,
        suites,
        extensions=extensions,
    )
    body = bytes(hello.write())
    if extensions is not None and 0xFF < len(body) < 0x200:
        # RFC 7685: some middleboxes (F5) hang on ClientHellos of 256-511 bytes; pad past it.
        hello.extensions.append(PaddingExtension().create(max(1, 0x200 - len(body) - 4)))
        body = bytes(hello.write())
    record_version = b"\x03\x00" if version is TlsVersion.SSL_3_0 else b"\x03\x01"
    return bytes([_CONTENT_HANDSHAKE]) + record_version + len(body).to_bytes(2, "big") + body


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()


class _PeerClosed(Exception):
    pass


class _NotTls(Exception):
    pass


def _recv_exact(sock: socket.socket, size: int, deadline: _Deadline) -> bytes:
    chunks: list[bytes] = []
    needed = size
    while needed:
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError
        # A per-recv timeout alone would let a peer dripping one byte at a time hold us
        # forever: every wait is cut to what is left of the attempt's deadline.
        sock.settimeout(left)
        chunk = sock.recv(needed)
        if not chunk:
            raise _PeerClosed
        chunks.append(chunk)
        needed -= len(chunk)
    return b"".join(chunks)


def _peek_more(sock: socket.socket, deadline: _Deadline) -> bytes:
    """A few more bytes of a non-TLS answer, for the error message; best effort, brief."""
    sock.settimeout(max(0.001, min(deadline.remaining(), 0.2)))
    try:
        return sock.recv(_EXCERPT_BYTES)
    except OSError:
        return b""


def _excerpt(data: bytes) -> str:
    text = data[:_EXCERPT_BYTES].decode("latin-1")
    return "".join(ch if 32 <= ord(ch) < 127 else "." for ch in text)


@dataclass(slots=True)
class _Flight:
    """What the first server flight told us so far."""

    server_hello: ServerHello | None = None
    version: TlsVersion | None = None
    kex_group: str = ""
    kex_bits: int = 0
    certificates: tuple[bytes, ...] = ()
    is_done: bool = False


def parse_certificate_list(body: bytes) -> tuple[bytes, ...]:
    """TLS <= 1.2 Certificate message body: a 3-byte total, then 3-byte-length DER entries."""
    parser = Parser(bytearray(body))
    total = parser.get(3)
    data = Parser(parser.getFixBytes(total))
    chain: list[bytes] = []
    while data.getRemainingLength() > 0 and len(chain) < MAX_CHAIN_LENGTH:
        chain.append(bytes(data.getVarBytes(3)))
    return tuple(chain)


def parse_key_exchange(body: bytes, suite: SuiteInfo) -> tuple[str, int]:
    """(group name, bits) from a ServerKeyExchange body; ('', 0) when it carries neither.

    Parsed by hand rather than with tlslite's ServerKeyExchange, which asserts on curve
    types it does not support and needs to know every suite.
    """
    parser = Parser(bytearray(body))
    if suite.has_psk_hint:
        parser.getVarBytes(2)
    if suite.ephemeral_kind == "DH":
        prime = int.from_bytes(bytes(parser.getVarBytes(2)), "big")
        return _DH_GROUP_NAMES.get(prime, "DH"), prime.bit_length()
    if suite.ephemeral_kind == "EC":
        curve_type = parser.get(1)
        if curve_type != 3:  # explicit curves (RFC 4492 5.4): name unknown, size unread
            return "explicit-curve", 0
        return curve_name_and_bits(parser.get(2))
    return "", 0


def curve_name_and_bits(group_id: int) -> tuple[str, int]:
    name = GroupName.toRepr(group_id)  # None for an id tlslite does not know
    if name is None:
        return f"group-0x{group_id:04x}", 0
    return name, group_bits(name)


def group_bits(name: str) -> int:
    """Nominal size of a named group, as OpenSSL reports it (x25519 = 253)."""
    special = {"x25519": 253, "x448": 448}
    if name in special:
        return special[name]
    size = re.match(r"(?:secp|sect|brainpoolP|ffdhe)(\d+)", name)  # secp256r1, ffdhe2048...
    return int(size.group(1)) if size else 0  # unknown or hybrid (e.g. X25519MLKEM768)


# The named curves under 224 bits (secp160*, secp192*, sect163*, sect193*), offered alone
# to ask whether a server accepts one it would never prefer over the modern groups first
WEAK_EC_GROUPS: tuple[int, ...] = tuple(
    g for g in _EC_GROUPS if 0 < curve_name_and_bits(g)[1] < 224)


def _handle_handshake(
    msg_type: int, body: bytes, spec: HelloSpec, flight: _Flight
) -> HelloOutcome | None:
    """Fold one handshake message into the flight; an outcome ends the attempt early."""
    if flight.server_hello is None:
        if msg_type != HandshakeType.server_hello:
            return HelloOutcome(
                OutcomeKind.PROTOCOL_ERROR,
                f"expected ServerHello, got handshake type {msg_type}",
                is_tls_answer=True,
            )
        # tlslite's parser wants the 3-byte handshake length in front of the body
        hello = ServerHello().parse(Parser(bytearray(len(body).to_bytes(3, "big") + body)))
        flight.server_hello = hello
        negotiated = tuple(hello.server_version)
        versions_ext = hello.getExtension(43)  # supported_versions (RFC 8446 4.2.1)
        if versions_ext is not None and getattr(versions_ext, "version", None):
            negotiated = tuple(versions_ext.version)
        flight.version = TlsVersion.from_wire((negotiated[0], negotiated[1]))
        if hello.cipher_suite not in spec.suites:
            return HelloOutcome(
                OutcomeKind.PROTOCOL_ERROR,
                f"server chose suite 0x{hello.cipher_suite:04x}, which was not offered",
                is_tls_answer=True,
            )
        if flight.version is None or (
            not spec.advertise_tls13 and flight.version is not spec.version
        ):
            return HelloOutcome(
                OutcomeKind.WRONG_VERSION,
                f"server answered with version {negotiated[0]}.{negotiated[1]}",
                version=flight.version,
                is_tls_answer=True,
            )
        if flight.version is TlsVersion.TLS_1_3 or bytes(hello.random) == _HRR_RANDOM:
            # Everything after a TLS 1.3 ServerHello is encrypted: this is all we learn.
            flight.is_done = True
            share = hello.getExtension(51)  # key_share (RFC 8446 4.2.8)
            group = getattr(share, "selected_group", None) or getattr(
                getattr(share, "server_share", None), "group", None
            )
            if group:
                flight.kex_group, flight.kex_bits = curve_name_and_bits(group)
        return None
    suite = describe(flight.server_hello.cipher_suite)
    if msg_type == HandshakeType.certificate and not flight.certificates:
        flight.certificates = parse_certificate_list(body)
        if not suite.ephemeral_kind:
            flight.is_done = True  # nothing else in this flight we care about
    elif msg_type == HandshakeType.server_key_exchange:
        if suite.ephemeral_kind:
            flight.kex_group, flight.kex_bits = parse_key_exchange(body, suite)
        flight.is_done = True
    elif msg_type == HandshakeType.server_hello_done:
        flight.is_done = True
    return None


def _read_flight(sock: socket.socket, spec: HelloSpec, deadline: _Deadline) -> HelloOutcome:
    flight = _Flight()
    pending = b""  # handshake bytes not yet forming a whole message
    received = 0  # bytes of the flight kept (bounded by MAX_FLIGHT_BYTES)
    # Bytes left of a Certificate message that does not fit the flight's bound, read and
    # dropped (once a flight, at most MAX_SKIPPED_CERTIFICATE, for an ephemeral key
    # exchange only): the ServerKeyExchange after it says the key exchange's size (not
    # read, every DHE/ECDHE suite read strong behind a long chain: a review). After a
    # Certificate (kept or dropped) the flight may grow KEX_ROOM more, for that message.
    skip = 0
    skipped = False
    while not flight.is_done:
        try:
            header = _recv_exact(sock, 5, deadline)
        except (TimeoutError, _PeerClosed, ConnectionResetError):
            if flight.server_hello is not None:
                break  # we have the pick; the rest of the flight is a bonus
            raise
        content_type, major, length = header[0], header[1], int.from_bytes(header[3:5], "big")
        if content_type not in _TLS_CONTENT_TYPES or major not in (2, 3):
            raise _NotTls(header + _peek_more(sock, deadline))
        # (records: the flight's bound and the room of a ServerKeyExchange, which a record
        # may carry with the end of the Certificate; each message is judged below)
        if length > MAX_RECORD_BYTES or (
                received + max(0, length - skip) > MAX_FLIGHT_BYTES + KEX_ROOM):
            if flight.server_hello is not None:
                break
            return HelloOutcome(
                OutcomeKind.PROTOCOL_ERROR,
                f"oversized record ({length} bytes)",
                is_tls_answer=received > 0,
            )
        try:
            payload = _recv_exact(sock, length, deadline)
        except (TimeoutError, _PeerClosed, ConnectionResetError):
            if flight.server_hello is not None:
                break
            raise
        received += 5 + length
        if content_type == _CONTENT_ALERT and len(payload) >= 2:
            level, description = payload[0], payload[1]
            name = AlertDescription.toStr(description) or f"alert {description}"
            if level == 1 and description != 0 and flight.server_hello is None:
                continue  # a warning (e.g. unrecognized_name) before the ServerHello
            if flight.server_hello is not None:
                break
            return HelloOutcome(OutcomeKind.ALERT, name, is_tls_answer=True)
        if content_type != _CONTENT_HANDSHAKE:
            if flight.server_hello is not None:
                break  # e.g. TLS 1.3 middlebox-compat ChangeCipherSpec
            if content_type == _CONTENT_CHANGE_CIPHER_SPEC:
                continue
            return HelloOutcome(
                OutcomeKind.PROTOCOL_ERROR,
                f"unexpected record type {content_type} before ServerHello",
                is_tls_answer=True,
            )
        if skip:
            dropped = min(skip, len(payload))
            skip -= dropped
            received -= dropped
            payload = payload[dropped:]
        pending += payload
        while len(pending) >= 4 and not flight.is_done:
            msg_len = int.from_bytes(pending[1:4], "big")
            # (the bytes of the flight before this message, and this message whole)
            room = MAX_FLIGHT_BYTES + (KEX_ROOM if skipped or flight.certificates else 0)
            if received - len(pending) + 4 + msg_len > room:
                if (flight.server_hello is not None and pending[0] == HandshakeType.certificate
                        and not skipped and 4 + msg_len <= MAX_SKIPPED_CERTIFICATE
                        and describe(flight.server_hello.cipher_suite).ephemeral_kind):
                    # (a chain past the bound) read past it, keeping none of it
                    skip = 4 + msg_len - len(pending)
                    received -= len(pending)
                    pending = b""
                    skipped = True
                    break
                if flight.server_hello is not None:
                    # (past even that) the pick is made: keep it
                    flight.is_done = True
                    break
                return HelloOutcome(
                    OutcomeKind.PROTOCOL_ERROR, "oversized handshake message", is_tls_answer=True
                )
            if len(pending) < 4 + msg_len:
                break
            msg_type, body = pending[0], pending[4 : 4 + msg_len]
            pending = pending[4 + msg_len :]
            try:
                early = _handle_handshake(msg_type, body, spec, flight)
            # (tlslite raises its own errors too: TLSInternalError for an extension
            # sent twice)
            except (DecodeError, BaseTLSException, AssertionError, ValueError, IndexError,
                    TypeError) as exc:
                if flight.server_hello is None:
                    return HelloOutcome(
                        OutcomeKind.PROTOCOL_ERROR,
                        f"malformed ServerHello: {exc}",
                        is_tls_answer=True,
                    )
                flight.is_done = True  # a later message we could not read: keep the pick
                break
            if early is not None:
                return early
    hello = flight.server_hello
    if hello is None:  # pragma: no cover - the loop only ends with a hello or an outcome
        return HelloOutcome(OutcomeKind.PROTOCOL_ERROR, "no ServerHello", is_tls_answer=True)
    return HelloOutcome(
        OutcomeKind.ACCEPTED,
        suite=hello.cipher_suite,
        version=flight.version,
        kex_group=flight.kex_group,
        kex_bits=flight.kex_bits,
        certificates=flight.certificates,
        is_tls_answer=True,
    )


def upgrade_outcome(failure: UpgradeFailure) -> HelloOutcome:
    """A failed STARTTLS preamble as an attempt's outcome. A close or reset during the
    preamble is UPGRADE_FAILED, never CLOSED: CLOSED means "the offer was refused" and
    would make the enumeration drop suites the server never saw."""
    if failure.kind is FailureKind.NOT_OFFERED:
        return HelloOutcome(OutcomeKind.UPGRADE_NOT_OFFERED, failure.reason)
    if failure.kind is FailureKind.TIMEOUT:
        return HelloOutcome(OutcomeKind.TIMEOUT, failure.reason)
    return HelloOutcome(OutcomeKind.UPGRADE_FAILED, failure.reason)


def exchange_hello(
    ip: str, port: int, spec: HelloSpec, timeout: float, upgrade: Upgrade = Upgrade.DIRECT
) -> HelloOutcome:
    """Connect, run ``upgrade``'s plaintext preamble (none for DIRECT), send one
    ClientHello, read the first flight; never longer than ``timeout`` in all.

    Blocking; opens exactly one connection and always closes it.
    """
    deadline = _Deadline(timeout)
    hello = build_client_hello(spec)
    try:
        sock = socket.create_connection((ip, port), timeout=max(deadline.remaining(), 0.001))
    except TimeoutError:
        return HelloOutcome(OutcomeKind.TIMEOUT, f"TCP connect timed out after {timeout:g}s")
    except OSError as exc:
        return HelloOutcome(OutcomeKind.CONNECT_FAILED, f"TCP connect failed: {exc.strerror}")
    try:
        if upgrade is not Upgrade.DIRECT:
            try:
                perform_upgrade(
                    sock,
                    upgrade,
                    server_name=spec.server_name or ip,
                    deadline=time.monotonic() + max(deadline.remaining(), 0.0),
                )
            except UpgradeFailure as failure:
                return upgrade_outcome(failure)
        sock.settimeout(max(deadline.remaining(), 0.001))
        sock.sendall(hello)
        return _read_flight(sock, spec, deadline)
    except TimeoutError:
        return HelloOutcome(
            OutcomeKind.TIMEOUT, f"handshake stalled: no answer within {timeout:g}s"
        )
    except _PeerClosed:
        return HelloOutcome(OutcomeKind.CLOSED, "connection closed without an answer")
    except ConnectionResetError:
        return HelloOutcome(OutcomeKind.CLOSED, "connection reset without an answer")
    except _NotTls as exc:
        return HelloOutcome(OutcomeKind.NOT_TLS, f"answered {_excerpt(exc.args[0])!r}")
    except OSError as exc:
        return HelloOutcome(OutcomeKind.CLOSED, f"socket error: {exc.strerror or exc}")
    finally:
        sock.close()


# Detection offers what nearly every TLS server speaks, TLS 1.3 suites first; any
# ServerHello *or alert* proves TLS, so the exact list only has to be plausible.
DETECT_SUITES: tuple[int, ...] = TLS13_CODES + (
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0xC00A, 0xC014,
    0x009E, 0x009F, 0x0033, 0x0039, 0x009C, 0x009D, 0x002F, 0x0035, 0x000A, 0x0005,
    0x0004, 0xC012, 0x0016, 0xC027, 0xC028, 0x003C, 0x003D, 0x0067, 0x006B,
)  # fmt: skip


def detect_spec(server_name: str | None) -> HelloSpec:
    return HelloSpec(TlsVersion.TLS_1_2, DETECT_SUITES, server_name, advertise_tls13=True)


__all__ = [
    "DETECT_SUITES",
    "WEAK_EC_GROUPS",
    "HelloOutcome",
    "HelloSpec",
    "OutcomeKind",
    "build_client_hello",
    "curve_name_and_bits",
    "detect_spec",
    "exchange_hello",
    "group_bits",
    "is_ip_literal",
    "parse_certificate_list",
    "parse_key_exchange",
    "upgrade_outcome",
]
