"""JARM: Salesforce's active TLS server fingerprint (ten ClientHellos, a 62-character hash).

Owns: the ten ClientHello specifications of the published method
(https://github.com/salesforce/jarm, "JARM version 1.0", BSD-3), building each hello as
raw bytes, reading the answer the way the method reads it (selected cipher, ServerHello
version, ALPN, extension types, from the first read of at most 1,484 bytes, quirks
included so the hash equals the reference's), the fuzzy hash, and the async driver that
sends the ten hellos one connection each, bounded in time.

Written from the description of the algorithm, not from its code. Where the reference
crashes on a malformed answer (a ServerHello version it cannot index), this module
scores that hello as empty instead.

Must not touch: the rest of probers/tls (another engineer's), Kafka, storage. Sends only to
the address it is given; scope checks are the caller's job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

READ_SIZE = 1484  # the method reads the answer with one recv of this size
EMPTY_RESULT = "|||"  # no ServerHello (alert, reset, not TLS)
ZERO_HASH = "0" * 62  # no hello answered at all, or a hello timed out

# The cipher list of the method, in its "FORWARD" order: 69 suites, TLS 1.3 ones included.
_ALL_SUITES: tuple[int, ...] = (
    0x0016, 0x0033, 0x0067, 0xC09E, 0xC0A2, 0x009E, 0x0039, 0x006B, 0xC09F, 0xC0A3, 0x009F,
    0x0045, 0x00BE, 0x0088, 0x00C4, 0x009A, 0xC008, 0xC009, 0xC023, 0xC0AC, 0xC0AE, 0xC02B,
    0xC00A, 0xC024, 0xC0AD, 0xC0AF, 0xC02C, 0xC072, 0xC073, 0xCCA9, 0x1302, 0x1301, 0xCC14,
    0xC007, 0xC012, 0xC013, 0xC027, 0xC02F, 0xC014, 0xC028, 0xC030, 0xC060, 0xC061, 0xC076,
    0xC077, 0xCCA8, 0x1305, 0x1304, 0x1303, 0xCC13, 0xC011, 0x000A, 0x002F, 0x003C, 0xC09C,
    0xC0A0, 0x009C, 0x0035, 0x003D, 0xC09D, 0xC0A1, 0x009D, 0x0041, 0x00BA, 0x0084, 0x00C0,
    0x0007, 0x0004, 0x0005,
)
_TLS13_SUITES = frozenset({0x1301, 0x1302, 0x1303, 0x1304, 0x1305})
_NO13_SUITES: tuple[int, ...] = tuple(c for c in _ALL_SUITES if c not in _TLS13_SUITES)
# The hash encodes the chosen suite as its 1-based position in this order (hex, 2 chars):
# the pre-1.3 suites by code point, then the TLS 1.3 ones.
HASH_ORDER: tuple[int, ...] = tuple(sorted(_NO13_SUITES)) + tuple(sorted(_TLS13_SUITES))

_ALPN_ALL = (b"http/0.9", b"http/1.0", b"http/1.1", b"spdy/1", b"spdy/2", b"spdy/3", b"h2",
             b"h2c", b"hq")
_ALPN_RARE = (b"http/0.9", b"http/1.0", b"spdy/1", b"spdy/2", b"spdy/3", b"h2c", b"hq")
_GREASE = tuple(bytes([n, n]) for n in range(0x0A, 0x100, 0x10))  # RFC 8701 values
_SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
                         0x0201)
_GROUPS = (0x001D, 0x0017, 0x0018, 0x0019)


T = TypeVar("T")


class Order(StrEnum):
    FORWARD = "forward"
    REVERSE = "reverse"
    TOP_HALF = "top-half"
    BOTTOM_HALF = "bottom-half"
    MIDDLE_OUT = "middle-out"


class VersionsExt(StrEnum):
    UP_TO_12 = "1.2"  # supported_versions offers 1.0-1.2
    NONE = "none"  # no supported_versions extension (unless the hello is TLS 1.3)
    UP_TO_13 = "1.3"  # supported_versions offers 1.0-1.3


@dataclass(frozen=True, slots=True)
class HelloSpec:
    version: int  # 0x0302 = TLS 1.1, 0x0303 = TLS 1.2, 0x0304 = TLS 1.3 (sent as 1.2)
    with_tls13_suites: bool
    suite_order: Order
    has_grease: bool
    is_rare_alpn: bool
    versions_ext: VersionsExt
    extension_order: Order  # orders the ALPN and supported_versions lists


# The ten hellos, in the order their answers enter the hash.
HELLOS: tuple[HelloSpec, ...] = (
    HelloSpec(0x0303, True, Order.FORWARD, False, False, VersionsExt.UP_TO_12, Order.REVERSE),
    HelloSpec(0x0303, True, Order.REVERSE, False, False, VersionsExt.UP_TO_12, Order.FORWARD),
    HelloSpec(0x0303, True, Order.TOP_HALF, False, False, VersionsExt.NONE, Order.FORWARD),
    HelloSpec(0x0303, True, Order.BOTTOM_HALF, False, True, VersionsExt.NONE, Order.FORWARD),
    HelloSpec(0x0303, True, Order.MIDDLE_OUT, True, True, VersionsExt.NONE, Order.REVERSE),
    HelloSpec(0x0302, True, Order.FORWARD, False, False, VersionsExt.NONE, Order.FORWARD),
    HelloSpec(0x0304, True, Order.FORWARD, False, False, VersionsExt.UP_TO_13, Order.REVERSE),
    HelloSpec(0x0304, True, Order.REVERSE, False, False, VersionsExt.UP_TO_13, Order.FORWARD),
    HelloSpec(0x0304, False, Order.FORWARD, False, False, VersionsExt.UP_TO_13, Order.FORWARD),
    HelloSpec(0x0304, True, Order.MIDDLE_OUT, True, False, VersionsExt.UP_TO_13, Order.REVERSE),
)


def reorder(items: tuple[T, ...], order: Order) -> tuple[T, ...]:
    """The method's list orders. Halves of an odd list: the middle item goes with the top
    half; middle-out starts at the middle and alternates upper, lower."""
    n = len(items)
    mid = n // 2
    if order is Order.FORWARD:
        return items
    if order is Order.REVERSE:
        return items[::-1]
    if order is Order.BOTTOM_HALF:
        return items[mid + (n % 2):]
    if order is Order.TOP_HALF:
        rev = items[::-1]
        return ((items[mid],) if n % 2 else ()) + rev[mid + (n % 2):]
    out: list[T] = []
    if n % 2:
        out.append(items[mid])
        for i in range(1, mid + 1):
            out += [items[mid + i], items[mid - i]]
    else:
        for i in range(1, mid + 1):
            out += [items[mid - 1 + i], items[mid - i]]
    return tuple(out)


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def build_hello(spec: HelloSpec, server_name: str,
                rand: Callable[[int], bytes] = os.urandom,
                grease: Callable[[], bytes] | None = None) -> bytes:
    """One JARM ClientHello in its TLS record, as raw bytes."""
    pick_grease = grease or (lambda: random.choice(_GREASE))
    hello_version = min(spec.version, 0x0303)  # TLS 1.3 hellos say 1.2 (RFC 8446 4.1.2)
    record_version = 0x0301 if spec.version == 0x0304 else spec.version
    suites = reorder(_ALL_SUITES if spec.with_tls13_suites else _NO13_SUITES, spec.suite_order)
    suite_bytes = b"".join(struct.pack(">H", c) for c in suites)
    if spec.has_grease:
        suite_bytes = pick_grease() + suite_bytes

    alpn = reorder(_ALPN_RARE if spec.is_rare_alpn else _ALPN_ALL, spec.extension_order)
    alpn_list = b"".join(bytes([len(p)]) + p for p in alpn)
    try:  # (the method sends what it was given; a name IDNA refuses goes as its text)
        name = server_name.encode("idna" if not server_name.isascii() else "ascii")
    except UnicodeError:
        name = server_name.encode("utf-8", "replace")[:255]
    extensions = b""
    if spec.has_grease:
        extensions += pick_grease() + b"\x00\x00"
    extensions += _ext(0x0000, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
    extensions += _ext(0x0017, b"")  # extended master secret
    extensions += _ext(0x0001, b"\x01")  # max fragment length 2^9
    extensions += _ext(0xFF01, b"\x00")  # renegotiation info, empty
    groups = b"".join(struct.pack(">H", g) for g in _GROUPS)
    extensions += _ext(0x000A, struct.pack(">H", len(groups)) + groups)
    extensions += _ext(0x000B, b"\x01\x00")  # point formats: uncompressed
    extensions += _ext(0x0023, b"")  # session ticket
    extensions += _ext(0x0010, struct.pack(">H", len(alpn_list)) + alpn_list)
    sigs = b"".join(struct.pack(">H", a) for a in _SIGNATURE_ALGORITHMS)
    extensions += _ext(0x000D, struct.pack(">H", len(sigs)) + sigs)
    shares = (pick_grease() + b"\x00\x01\x00") if spec.has_grease else b""
    shares += struct.pack(">HH", 0x001D, 32) + rand(32)  # x25519, random bytes
    extensions += _ext(0x0033, struct.pack(">H", len(shares)) + shares)
    extensions += _ext(0x002D, b"\x01\x01")  # psk_dhe_ke
    if spec.version == 0x0304 or spec.versions_ext is VersionsExt.UP_TO_12:
        top = 0x0303 if spec.versions_ext is VersionsExt.UP_TO_12 else 0x0304
        offered = reorder(tuple(range(0x0301, top + 1)), spec.extension_order)
        versions = (pick_grease() if spec.has_grease else b"") + b"".join(
            struct.pack(">H", v) for v in offered)
        extensions += _ext(0x002B, bytes([len(versions)]) + versions)

    body = struct.pack(">H", hello_version) + rand(32) + b"\x20" + rand(32)
    body += struct.pack(">H", len(suite_bytes)) + suite_bytes + b"\x01\x00"
    body += struct.pack(">H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack(">HH", record_version, len(handshake)) + handshake


def _u16_hex_value(data: bytes, start: int) -> int:
    """Two bytes as the method reads a length: a short slice reads fewer bytes, an empty
    one is an error (ValueError), like parsing an empty hex string."""
    piece = data[start:start + 2]
    if not piece:
        raise ValueError("length past the end of the answer")
    return int.from_bytes(piece, "big")


def _extensions_text(data: bytes, session_len: int, hello_len: int) -> str:
    """'alpn|type-type-...' from the ServerHello extensions, read at the offsets the
    method uses (which assume a 32-byte-or-shorter session id in the first record)."""
    try:
        if data[session_len + 47] == 11:  # no extensions: the next handshake (Certificate)
            return "|"
    except IndexError:
        return "|"
    if data[session_len + 50:session_len + 53] == b"\x0e\xac\x0b" or \
            data[82:85] == b"\x0f\xf0\x0b":
        return "|"
    if session_len + 42 >= hello_len:
        return "|"
    pos = session_len + 49
    end = _u16_hex_value(data, session_len + 47) + pos - 1
    kinds: list[bytes] = []
    values: list[bytes | None] = []  # None: an empty extension
    while pos < end:
        kinds.append(data[pos:pos + 2])
        length = _u16_hex_value(data, pos + 2)
        if length == 0:
            values.append(None)
            pos += 4
        else:
            values.append(data[pos + 4:pos + 4 + length])
            pos += length + 4
    alpn = ""
    for kind, value in zip(kinds, values, strict=True):
        if kind == b"\x00\x10":
            if value is None:
                raise ValueError("empty ALPN extension")
            alpn = value[3:].decode("utf-8")  # strict: undecodable makes the answer empty
            break
    return alpn + "|" + "-".join(k.hex() for k in kinds)


def read_server_hello(data: bytes | None) -> str:
    """One hello's result: 'cipher|version|alpn|extensions', or '|||' when the answer is
    not a ServerHello (alert, reset, silence, anything else)."""
    if not data:
        return EMPTY_RESULT
    try:
        if data[0] == 21:
            return EMPTY_RESULT
        if data[0] != 22 or data[5] != 2:
            return EMPTY_RESULT
        hello_len = int.from_bytes(data[3:5], "big")
        session_len = data[43]
        cipher = data[session_len + 44:session_len + 46]
        version = data[9:11]
        return f"{cipher.hex()}|{version.hex()}|" + _extensions_text(data, session_len,
                                                                       hello_len)
    except (IndexError, ValueError):
        return EMPTY_RESULT


def _cipher_code(cipher_hex: str) -> str:
    if not cipher_hex:
        return "00"
    try:
        position = HASH_ORDER.index(int(cipher_hex, 16)) + 1
    except ValueError:
        position = len(HASH_ORDER) + 1  # a suite we never offered
    return f"{position:02x}"


def _version_code(version_hex: str) -> str:
    """0300..0305 -> a..f by the last digit; '' -> '0'. Anything else (which the reference
    cannot index) also reads '0'."""
    if not version_hex:
        return "0"
    digit = version_hex[3:4]
    if len(digit) == 1 and digit in "012345":
        return "abcdef"[int(digit)]
    return "0"


def jarm_hash(results: list[str] | tuple[str, ...]) -> str:
    """The 62-character fuzzy hash of the ten results: per hello the suite position (2 hex)
    and version letter (30 characters), then the first 32 hex characters of the SHA-256
    of every hello's ALPN and extension list, concatenated."""
    if all(r == EMPTY_RESULT for r in results):
        return ZERO_HASH
    fuzzy = ""
    tail = ""
    for result in results:
        parts = result.split("|")
        parts += [""] * (4 - len(parts))
        fuzzy += _cipher_code(parts[0]) + _version_code(parts[1])
        tail += parts[2] + parts[3]
    return fuzzy + hashlib.sha256(tail.encode()).hexdigest()[:32]


class _TimedOut(Exception):
    pass


async def _exchange(ip: str, port: int, hello: bytes, timeout: float) -> bytes | None:
    """Send one hello on its own connection; the first read of the answer. None: refused or
    reset (an empty result); _TimedOut: silence (the method then gives the zero hash)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ip, port)
            try:
                writer.write(hello)
                await writer.drain()
                return await reader.read(READ_SIZE)
            finally:
                writer.transport.abort()
    except TimeoutError as exc:
        raise _TimedOut from exc
    except OSError:
        return None


async def jarm_fingerprint(ip: str, port: int, *, server_name: str = "", timeout: float = 3.0,
                           budget: float = 20.0) -> str | None:
    """The JARM of ``ip:port``: ten hellos, one connection each, one after the other.

    ``server_name`` goes in SNI (the method sends the name it was given, an IP address
    included). A hello that gets no answer within ``timeout`` makes the whole
    fingerprint the zero hash, as in the method. None when ``budget`` seconds ran out
    first: "could not test", never a fingerprint.
    """
    results: list[str] = []
    name = server_name or ip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    for spec in HELLOS:
        left = deadline - loop.time()
        if left <= 0:
            return None
        try:
            answer = await _exchange(ip, port, build_hello(spec, name), min(timeout, left))
        except _TimedOut:
            if deadline - loop.time() <= 0.01:
                return None  # our budget, not the server's silence
            return ZERO_HASH
        results.append(read_server_hello(answer))
    return jarm_hash(results)


__all__ = ["HASH_ORDER", "HELLOS", "ZERO_HASH", "build_hello", "jarm_fingerprint", "jarm_hash",
           "read_server_hello", "reorder"]
