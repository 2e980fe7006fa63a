"""Plaintext preambles that upgrade a connection to TLS (STARTTLS and its relatives).

Owns: ``Upgrade`` (every way portwatch reaches TLS besides a direct handshake: SMTP,
IMAP, POP3, FTP, LDAP, XMPP client/server, PostgreSQL, MySQL/MariaDB, ManageSieve, NNTP,
IRC, RDP), ``route_for`` (which upgrade an *identified service* needs: the protocol is
chosen from what answered, never from the port number), ``perform_upgrade`` (one preamble
on one already-connected blocking socket, replayed by the caller on every enumeration
connection) and the pure reply parsers it uses, each one a function of bytes.

Every read is bounded twice: by the attempt's deadline (the socket timeout is cut to what
is left before every ``recv``, so a peer dripping one byte at a time cannot hold us) and
by ``MAX_PREAMBLE_BYTES`` over the whole preamble. Parsers never trust a length field
beyond those limits and raise ``UpgradeFailure`` (never anything else) on bad input.

Outcomes are data: ``UpgradeFailure.kind`` is NOT_OFFERED when the service does not
advertise the upgrade (a finding: "no STARTTLS offered"), REFUSED when it advertised it
or was asked and said no, and TIMEOUT / CLOSED / UNEXPECTED when the preamble could not
finish. Wire details were checked against the RFCs cited per protocol, and against how
sslscan (``--starttls-*``) and testssl.sh speak them.

Must not touch: TLS itself (``hello.py`` / ``handshake.py`` run after the preamble),
records, asyncio. Only the socket it is handed is used.

Why one file: every preamble is a few lines over the same bounded reader and the same
failure kinds; the table of upgrades reads best next to them, as sslscan keeps its own.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

# Banners, capability lists and XMPP stream features are a few hundred bytes; 64 KiB
# over the whole preamble leaves room for chatty servers and nothing for a flood.
MAX_PREAMBLE_BYTES = 64 * 1024
MAX_LINE_BYTES = 4096  # RFC 5321 4.5.3.1.5 allows 512 per reply line; IMAP lines run longer
MAX_REPLY_LINES = 200  # lines of one multi-line reply (EHLO, CAPA, CAPABILITIES)
_CLIENT_NAME = "portwatch.invalid"  # RFC 6761: a name that can never belong to anyone


class Upgrade(StrEnum):
    """How TLS is reached; the value is what records store ("direct" = no preamble)."""

    DIRECT = "direct"
    SMTP = "starttls-smtp"
    IMAP = "starttls-imap"
    POP3 = "starttls-pop3"
    FTP = "starttls-ftp"
    LDAP = "starttls-ldap"
    XMPP = "starttls-xmpp"
    XMPP_SERVER = "starttls-xmpp-server"
    POSTGRES = "starttls-postgres"
    MYSQL = "starttls-mysql"
    SIEVE = "starttls-sieve"
    NNTP = "starttls-nntp"
    IRC = "starttls-irc"
    RDP = "starttls-rdp"

    @property
    def sslscan_option(self) -> str:
        """sslscan's flag for the same upgrade ("" when sslscan has none)."""
        return _SSLSCAN.get(self, "")


_SSLSCAN = {
    Upgrade.SMTP: "--starttls-smtp", Upgrade.IMAP: "--starttls-imap",
    Upgrade.POP3: "--starttls-pop3", Upgrade.FTP: "--starttls-ftp",
    Upgrade.LDAP: "--starttls-ldap", Upgrade.XMPP: "--starttls-xmpp",
    Upgrade.POSTGRES: "--starttls-psql", Upgrade.MYSQL: "--starttls-mysql",
    Upgrade.IRC: "--starttls-irc", Upgrade.XMPP_SERVER: "--xmpp-server",
}  # fmt: skip

# Identified service name (ours and nmap's spellings) -> upgrade. A service identified as
# TLS already (imaps, ssl/http...) is reached directly whatever its name.
_SERVICE_UPGRADES: dict[str, Upgrade] = {
    "smtp": Upgrade.SMTP, "submission": Upgrade.SMTP, "esmtp": Upgrade.SMTP,
    "imap": Upgrade.IMAP, "imap4": Upgrade.IMAP,
    "pop3": Upgrade.POP3, "pop": Upgrade.POP3,
    "ftp": Upgrade.FTP,
    "ldap": Upgrade.LDAP,
    "xmpp": Upgrade.XMPP, "xmpp-client": Upgrade.XMPP, "jabber": Upgrade.XMPP,
    "xmpp-server": Upgrade.XMPP_SERVER, "xmpp-s2s": Upgrade.XMPP_SERVER,
    "postgresql": Upgrade.POSTGRES, "postgres": Upgrade.POSTGRES,
    "mysql": Upgrade.MYSQL, "mariadb": Upgrade.MYSQL,
    "sieve": Upgrade.SIEVE, "managesieve": Upgrade.SIEVE,
    "nntp": Upgrade.NNTP,
    "irc": Upgrade.IRC,
    "ms-wbt-server": Upgrade.RDP, "rdp": Upgrade.RDP,
}  # fmt: skip


def route_for(service: str, is_tls: bool) -> Upgrade | None:
    """How to reach TLS on a port identified as ``service``; None = no TLS to test."""
    if is_tls:
        return Upgrade.DIRECT
    name = service.lower().rstrip("?")
    if name.startswith(("ssl/", "tls/")):
        return Upgrade.DIRECT
    return _SERVICE_UPGRADES.get(name)


class FailureKind(StrEnum):
    NOT_OFFERED = "not_offered"  # the service does not advertise the upgrade: a finding
    REFUSED = "refused"  # advertised (or asked) and refused: could not test
    TIMEOUT = "timeout"
    CLOSED = "closed"
    UNEXPECTED = "unexpected"  # not the protocol we expected, or malformed


class UpgradeFailure(Exception):
    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _unexpected(what: str, data: bytes) -> UpgradeFailure:
    return UpgradeFailure(FailureKind.UNEXPECTED, f"{what}: {printable(data)!r}")


def printable(data: bytes, limit: int = 80) -> str:
    text = data[:limit].decode("latin-1")
    return "".join(ch if 32 <= ord(ch) < 127 else "." for ch in text).strip()


class Reader:
    """Bounded reads from a blocking socket: every wait cut to the deadline, every byte
    counted against ``MAX_PREAMBLE_BYTES``."""

    def __init__(self, sock: socket.socket, deadline: float, limit: int = MAX_PREAMBLE_BYTES):
        self._sock = sock
        self._deadline = deadline  # time.monotonic() value
        self._limit = limit
        self._buffer = b""
        self.received = 0

    def _fill(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise UpgradeFailure(FailureKind.TIMEOUT, "no answer to the upgrade preamble in time")
        self._sock.settimeout(left)
        try:
            chunk = self._sock.recv(4096)
        except TimeoutError as exc:
            raise UpgradeFailure(
                FailureKind.TIMEOUT, "no answer to the upgrade preamble in time"
            ) from exc
        except OSError as exc:
            raise UpgradeFailure(
                FailureKind.CLOSED, f"connection lost in the preamble: {exc.strerror or exc}"
            ) from exc
        if not chunk:
            raise UpgradeFailure(FailureKind.CLOSED, "connection closed during the preamble")
        self.received += len(chunk)
        if self.received > self._limit:
            raise UpgradeFailure(FailureKind.UNEXPECTED, "preamble answer too long")
        self._buffer += chunk

    def line(self) -> bytes:
        """One line without its CRLF / LF."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE_BYTES:
                raise _unexpected("line too long", self._buffer)
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE_BYTES:
            raise _unexpected("line too long", line)
        return line.rstrip(b"\r")

    def exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def until(self, is_complete: Callable[[bytes], bool]) -> bytes:
        """Everything read until ``is_complete(data)``; consumes it all."""
        while not is_complete(self._buffer):
            self._fill()
        data, self._buffer = self._buffer, b""
        return data

    def leftover(self) -> bytes:
        return self._buffer


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpgradeFailure(FailureKind.TIMEOUT, "no time left to send the preamble")
    sock.settimeout(left)
    try:
        sock.sendall(data)
    except OSError as exc:
        raise UpgradeFailure(
            FailureKind.CLOSED, f"connection lost in the preamble: {exc.strerror or exc}"
        ) from exc


# -- line protocols with numeric replies: SMTP, FTP, NNTP ---------------------------------


@dataclass(frozen=True, slots=True)
class NumericReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)[:200]


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """``250-PIPELINING`` -> (250, False, "PIPELINING"); the bool says the reply ended.

    RFC 5321 4.2.1 / RFC 959 4.2: three digits, then "-" (more lines follow) or a space /
    nothing (the last line)."""
    if len(line) < 3 or not line[:3].isdigit():
        raise _unexpected("not a numeric reply", line)
    separator = line[3:4]
    if separator not in (b"", b" ", b"-"):
        raise _unexpected("not a numeric reply", line)
    text = line[4:].decode("utf-8", "replace")
    return int(line[:3]), separator != b"-", text


def read_numeric_reply(reader: Reader) -> NumericReply:
    """One reply, all its lines. The first line must carry the code; later lines may not
    (RFC 959 4.2: FTP's FEAT lists features on lines starting with a space); the reply
    ends at the line that starts with the same code and a space."""
    code, is_last, text = parse_reply_line(reader.line())
    lines = [text]
    for _ in range(MAX_REPLY_LINES):
        if is_last:
            return NumericReply(code, tuple(lines))
        line = reader.line()
        if line[:3] == str(code).encode() and line[3:4] in (b"", b" ", b"-"):
            _, is_last, text = parse_reply_line(line)
        else:
            text = line.decode("utf-8", "replace")
        lines.append(text)
    raise UpgradeFailure(FailureKind.UNEXPECTED, "reply with too many lines")


def smtp_extensions(reply: NumericReply) -> frozenset[str]:
    """EHLO keywords (RFC 5321 4.1.1.1): the first word of every line after the greeting."""
    return frozenset(line.split(" ", 1)[0].upper() for line in reply.lines[1:] if line)


def _smtp(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    greeting = read_numeric_reply(reader)
    if greeting.code != 220:
        raise UpgradeFailure(FailureKind.REFUSED, f"SMTP greeting {greeting.code} {greeting.text}")
    _send(sock, f"EHLO {_CLIENT_NAME}\r\n".encode(), deadline)
    ehlo = read_numeric_reply(reader)
    if ehlo.code != 250:
        raise UpgradeFailure(FailureKind.REFUSED, f"EHLO answered {ehlo.code} {ehlo.text}")
    if "STARTTLS" not in smtp_extensions(ehlo):
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STARTTLS offered (EHLO)")
    _send(sock, b"STARTTLS\r\n", deadline)
    answer = read_numeric_reply(reader)
    if answer.code != 220:  # RFC 3207 4: 220 ready, 454 TLS not available
        raise UpgradeFailure(FailureKind.REFUSED, f"STARTTLS answered {answer.code} {answer.text}")


def _ftp(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    greeting = read_numeric_reply(reader)
    if greeting.code != 220:
        raise UpgradeFailure(FailureKind.REFUSED, f"FTP greeting {greeting.code} {greeting.text}")
    # FEAT first (RFC 2389): servers list "AUTH TLS" there before login, and some answer a
    # bare AUTH they do not support with "530 Please login" rather than "502".
    _send(sock, b"FEAT\r\n", deadline)
    features = read_numeric_reply(reader)
    if features.code == 211 and not ftp_offers_auth_tls(features):
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no AUTH TLS offered (FEAT)")
    _send(sock, b"AUTH TLS\r\n", deadline)
    answer = read_numeric_reply(reader)
    if answer.code == 234:  # RFC 4217 4.1
        return
    if answer.code in (500, 502, 504) and features.code != 211:  # unknown / not implemented
        raise UpgradeFailure(FailureKind.NOT_OFFERED, f"no AUTH TLS offered ({answer.code})")
    raise UpgradeFailure(FailureKind.REFUSED, f"AUTH TLS answered {answer.code} {answer.text}")


def ftp_offers_auth_tls(features: NumericReply) -> bool:
    """Does a FEAT reply list the AUTH command with the TLS mechanism (RFC 4217 6)?"""
    for line in features.lines[1:-1]:
        words = line.strip().upper().split()
        if words and words[0] == "AUTH" and any("TLS" in w for w in words[1:]):
            return True
    return False


def _nntp(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    greeting = read_numeric_reply(reader)
    if greeting.code not in (200, 201):  # RFC 3977 5.1.1
        raise UpgradeFailure(FailureKind.REFUSED, f"NNTP greeting {greeting.code} {greeting.text}")
    _send(sock, b"CAPABILITIES\r\n", deadline)
    caps = read_numeric_reply(reader)
    if caps.code == 101:  # RFC 3977 5.2: a multi-line block ending with "."
        names = read_dot_block(reader)
        if "STARTTLS" not in names:
            raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STARTTLS offered (CAPABILITIES)")
    _send(sock, b"STARTTLS\r\n", deadline)
    answer = read_numeric_reply(reader)
    if answer.code == 382:  # RFC 4642 2.2.2
        return
    if answer.code in (500, 501, 580) and caps.code != 101:
        raise UpgradeFailure(FailureKind.NOT_OFFERED, f"no STARTTLS offered ({answer.code})")
    raise UpgradeFailure(FailureKind.REFUSED, f"STARTTLS answered {answer.code} {answer.text}")


def read_dot_block(reader: Reader) -> frozenset[str]:
    """The first words of a dot-terminated block (POP3 CAPA, NNTP CAPABILITIES)."""
    words: set[str] = set()
    for _ in range(MAX_REPLY_LINES):
        line = reader.line()
        if line == b".":
            return frozenset(words)
        words.add(line.split(b" ", 1)[0].decode("latin-1").upper())
    raise UpgradeFailure(FailureKind.UNEXPECTED, "capability list with too many lines")


# -- IMAP, POP3, ManageSieve -------------------------------------------------------------

_IMAP_CAPABILITY = re.compile(rb"CAPABILITY ([^\]\r\n]*)", re.IGNORECASE)


def imap_capabilities(line: bytes) -> frozenset[str] | None:
    """Capabilities named on an IMAP line (greeting code or untagged CAPABILITY), or None."""
    found = _IMAP_CAPABILITY.search(line)
    if found is None:
        return None
    return frozenset(word.decode("latin-1").upper() for word in found.group(1).split())


def imap_tagged(line: bytes, tag: bytes) -> tuple[str, str] | None:
    """``a1 OK done`` -> ("OK", "done") for our tag; None for any other line."""
    if not line.startswith(tag + b" "):
        return None
    status, _, text = line[len(tag) + 1 :].partition(b" ")
    return status.decode("latin-1").upper(), text.decode("utf-8", "replace")[:200]


def _imap(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    greeting = reader.line()
    if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
        if greeting.upper().startswith(b"* BYE"):
            raise UpgradeFailure(FailureKind.REFUSED, f"IMAP greeting {printable(greeting)}")
        raise _unexpected("not an IMAP greeting", greeting)
    capabilities = imap_capabilities(greeting)
    if capabilities is None:
        _send(sock, b"pw1 CAPABILITY\r\n", deadline)
        capabilities = frozenset()
        for _ in range(MAX_REPLY_LINES):
            line = reader.line()
            capabilities |= imap_capabilities(line) or frozenset()
            tagged = imap_tagged(line, b"pw1")
            if tagged is not None:
                break
        else:
            raise UpgradeFailure(FailureKind.UNEXPECTED, "CAPABILITY never answered")
    if "STARTTLS" not in capabilities:
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STARTTLS offered (CAPABILITY)")
    _send(sock, b"pw2 STARTTLS\r\n", deadline)
    for _ in range(MAX_REPLY_LINES):
        tagged = imap_tagged(reader.line(), b"pw2")
        if tagged is None:
            continue  # untagged noise before the answer
        if tagged[0] == "OK":  # RFC 3501 6.2.1
            return
        raise UpgradeFailure(FailureKind.REFUSED, f"STARTTLS answered {tagged[0]} {tagged[1]}")
    raise UpgradeFailure(FailureKind.UNEXPECTED, "STARTTLS never answered")


def pop3_status(line: bytes) -> tuple[bool, str]:
    """``+OK text`` -> (True, "text"); ``-ERR text`` -> (False, "text") (RFC 1939 3)."""
    if line.startswith(b"+OK"):
        return True, line[3:].decode("utf-8", "replace").strip()[:200]
    if line.startswith(b"-ERR"):
        return False, line[4:].decode("utf-8", "replace").strip()[:200]
    raise _unexpected("not a POP3 status line", line)


def _pop3(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    is_ok, text = pop3_status(reader.line())
    if not is_ok:
        raise UpgradeFailure(FailureKind.REFUSED, f"POP3 greeting -ERR {text}")
    _send(sock, b"CAPA\r\n", deadline)
    is_ok, _ = pop3_status(reader.line())
    advertised = read_dot_block(reader) if is_ok else None
    if advertised is not None and "STLS" not in advertised:
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STLS offered (CAPA)")
    _send(sock, b"STLS\r\n", deadline)
    is_ok, text = pop3_status(reader.line())
    if is_ok:  # RFC 2595 4
        return
    kind = FailureKind.NOT_OFFERED if advertised is None else FailureKind.REFUSED
    raise UpgradeFailure(kind, f"STLS answered -ERR {text}")


def sieve_response(line: bytes) -> str | None:
    """``OK ...`` / ``NO ...`` / ``BYE ...`` -> the status word; None for a capability line."""
    head = line.split(b" ", 1)[0].upper()
    if head in (b"OK", b"NO", b"BYE"):
        return head.decode()
    if line.startswith(b'"'):
        return None
    raise _unexpected("not a ManageSieve line", line)


def _sieve(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    capabilities: set[str] = set()
    for _ in range(MAX_REPLY_LINES):  # RFC 5804 1.7: capabilities, then OK
        line = reader.line()
        status = sieve_response(line)
        if status is None:
            parts = line.split(b'"')
            capabilities.add(parts[1].decode("latin-1").upper() if len(parts) > 2 else "")
            continue
        if status != "OK":
            raise UpgradeFailure(FailureKind.REFUSED, f"ManageSieve greeting {printable(line)}")
        break
    else:
        raise UpgradeFailure(FailureKind.UNEXPECTED, "ManageSieve greeting never ended")
    if "STARTTLS" not in capabilities:
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STARTTLS offered (capabilities)")
    _send(sock, b"STARTTLS\r\n", deadline)
    line = reader.line()
    if sieve_response(line) != "OK":
        raise UpgradeFailure(FailureKind.REFUSED, f"STARTTLS answered {printable(line)}")


def _irc(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    # IRCv3 tls extension (as sslscan speaks it): 670 = go ahead, 691 = failed; an
    # ERR_UNKNOWNCOMMAND (421) or ERR_NOTREGISTERED-only server has no STARTTLS.
    _send(sock, b"STARTTLS\r\n", deadline)
    for _ in range(MAX_REPLY_LINES):
        words = reader.line().split(b" ")
        code = words[1] if len(words) > 1 and words[0].startswith(b":") else words[0]
        if code == b"670":
            return
        if code == b"691":
            raise UpgradeFailure(FailureKind.REFUSED, "STARTTLS answered 691")
        if code in (b"421", b"451"):
            raise UpgradeFailure(FailureKind.NOT_OFFERED, f"no STARTTLS offered ({code.decode()})")
    raise UpgradeFailure(FailureKind.UNEXPECTED, "STARTTLS never answered")


# -- XMPP (RFC 6120 5.4) ------------------------------------------------------------------

_XMPP_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


def xmpp_stream_header(domain: str, *, is_server: bool) -> bytes:
    namespace = "jabber:server" if is_server else "jabber:client"
    safe = re.sub(r"[^A-Za-z0-9.:\-\[\]]", "", domain)[:255] or "localhost"
    return (
        "<?xml version='1.0'?><stream:stream xmlns='" + namespace + "' "
        "xmlns:stream='http://etherx.jabber.org/streams' to='" + safe + "' version='1.0'>"
    ).encode()


def xmpp_features_complete(data: bytes) -> bool:
    """Has the server's stream header plus its features (or a stream error) arrived?"""
    return b"</stream:features>" in data or b"<stream:features/>" in data or (
        b"</stream:error>" in data or b"</stream:stream>" in data
    )


def xmpp_offers_starttls(data: bytes) -> bool:
    if b"<stream:error" in data:
        error = re.search(rb"<([a-z-]+) xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams", data)
        raise UpgradeFailure(
            FailureKind.REFUSED,
            f"stream error: {error.group(1).decode() if error else printable(data)}",
        )
    if b"<stream:features" not in data:
        raise _unexpected("no XMPP stream features", data)
    return re.search(rb"<starttls[\s>/]", data) is not None


def xmpp_starttls_answer(data: bytes) -> str | None:
    """"proceed" / "failure" once the answer to <starttls/> is in ``data``, else None."""
    if re.search(rb"<proceed[\s>/]", data):
        return "proceed"
    if re.search(rb"<failure[\s>/]", data) or b"</stream:stream>" in data:
        return "failure"
    return None


def _xmpp(sock: socket.socket, reader: Reader, deadline: float, name: str,
          *, is_server: bool = False) -> None:  # fmt: skip
    _send(sock, xmpp_stream_header(name, is_server=is_server), deadline)
    features = reader.until(xmpp_features_complete)
    if not xmpp_offers_starttls(features):
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no STARTTLS offered (stream features)")
    _send(sock, f"<starttls xmlns='{_XMPP_TLS_NS}'/>".encode(), deadline)
    answer = reader.until(lambda data: xmpp_starttls_answer(data) is not None)
    if xmpp_starttls_answer(answer) != "proceed":
        raise UpgradeFailure(FailureKind.REFUSED, f"starttls answered {printable(answer)}")


def _xmpp_server(sock: socket.socket, reader: Reader, deadline: float, name: str) -> None:
    _xmpp(sock, reader, deadline, name, is_server=True)


# -- LDAP StartTLS extended operation (RFC 4511 4.14), BER by hand -------------------------

_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"


def _ber_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    body = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _ber(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _ber_length(len(content)) + content


def ldap_starttls_request(message_id: int = 1) -> bytes:
    """LDAPMessage { messageID, extendedReq [APPLICATION 23] { requestName [0] OID } }."""
    request = _ber(0x77, _ber(0x80, _STARTTLS_OID))
    return _ber(0x30, _ber(0x02, message_id.to_bytes(1, "big")) + request)


def ber_header(data: bytes, offset: int = 0) -> tuple[int, int, int] | None:
    """(tag, content length, header length) of the element at ``offset``; None if more
    bytes are needed. Definite lengths of at most 4 bytes only (LDAP, RFC 4511 5.1)."""
    if len(data) < offset + 2:
        return None
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        return tag, first, 2
    count = first & 0x7F
    if count == 0 or count > 4:
        raise _unexpected("unsupported BER length", data[offset : offset + 8])
    if len(data) < offset + 2 + count:
        return None
    return tag, int.from_bytes(data[offset + 2 : offset + 2 + count], "big"), 2 + count


def ldap_message_complete(data: bytes) -> bool:
    header = ber_header(data)
    if header is None:
        return False
    _tag, length, head = header
    if length > MAX_PREAMBLE_BYTES:
        raise _unexpected("LDAP message too long", data[:16])
    return len(data) >= head + length


def parse_ldap_extended_response(data: bytes) -> tuple[int, str]:
    """(resultCode, diagnosticMessage) of an ExtendedResponse ([APPLICATION 24])."""

    def element(offset: int, expected: int | None) -> tuple[int, int, int]:
        header = ber_header(data, offset)
        if header is None:
            raise _unexpected("truncated LDAP message", data[:16])
        tag, length, head = header
        if expected is not None and tag != expected:
            raise _unexpected(f"LDAP tag 0x{tag:02x}, expected 0x{expected:02x}", data[:16])
        if offset + head + length > len(data):
            raise _unexpected("truncated LDAP element", data[:16])
        return offset + head, length, tag

    start, _, _ = element(0, 0x30)
    id_start, id_length, _ = element(start, 0x02)
    op_start, _, op_tag = element(id_start + id_length, None)
    if op_tag != 0x78:
        raise _unexpected(f"LDAP operation 0x{op_tag:02x}, not an ExtendedResponse", data[:16])
    code_start, code_length, _ = element(op_start, 0x0A)
    if not 1 <= code_length <= 4:
        raise _unexpected("bad LDAP resultCode", data[:16])
    code = int.from_bytes(data[code_start : code_start + code_length], "big")
    dn_start, dn_length, _ = element(code_start + code_length, 0x04)
    msg_start, msg_length, _ = element(dn_start + dn_length, 0x04)
    message = data[msg_start : msg_start + msg_length].decode("utf-8", "replace")[:200]
    return code, message


def _ldap(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    _send(sock, ldap_starttls_request(), deadline)
    code, message = parse_ldap_extended_response(reader.until(ldap_message_complete))
    if code == 0:
        return
    if code in (2, 12):  # protocolError / unavailableCriticalExtension: not supported
        raise UpgradeFailure(FailureKind.NOT_OFFERED, f"no StartTLS offered (result {code})")
    raise UpgradeFailure(FailureKind.REFUSED, f"StartTLS answered result {code} {message}")


# -- PostgreSQL SSLRequest (protocol docs 55.2.10) ----------------------------------------

POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _postgres(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    _send(sock, POSTGRES_SSL_REQUEST, deadline)
    answer = reader.exact(1)
    if answer == b"S":
        return
    if answer == b"N":
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no SSL offered (SSLRequest answered N)")
    raise _unexpected("SSLRequest answer", answer)


# -- MySQL / MariaDB: the SSL capability flag in the handshake ----------------------------

CLIENT_PROTOCOL_41 = 0x0200
CLIENT_SSL = 0x0800
CLIENT_SECURE_CONNECTION = 0x8000


@dataclass(frozen=True, slots=True)
class MysqlGreeting:
    server_version: str
    capabilities: int
    charset: int


def parse_mysql_greeting(packet: bytes) -> MysqlGreeting:
    """The initial handshake packet's payload (protocol 10) -> version, capabilities.

    https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html
    """
    if not packet:
        raise _unexpected("empty MySQL greeting", packet)
    if packet[0] == 0xFF:  # an ERR packet: e.g. "Host is not allowed to connect"
        raise UpgradeFailure(
            FailureKind.REFUSED, f"MySQL error: {printable(packet[3:], 120)}"
        )
    if packet[0] != 10:
        raise _unexpected("MySQL protocol version", packet[:8])
    end = packet.find(b"\x00", 1, 1 + 256)
    if end < 0:
        raise _unexpected("MySQL server version unterminated", packet[:40])
    rest = packet[end + 1 :]
    # connection id (4), auth data part 1 (8), filler (1), capabilities low (2)
    if len(rest) < 15:
        raise _unexpected("MySQL greeting truncated", packet[:40])
    capabilities = int.from_bytes(rest[13:15], "little")
    charset = rest[15] if len(rest) >= 16 else 0x21
    if len(rest) >= 20:  # then status flags (2), capabilities high (2)
        capabilities |= int.from_bytes(rest[18:20], "little") << 16
    return MysqlGreeting(printable(packet[1:end], 60), capabilities, charset)


def mysql_ssl_request(greeting: MysqlGreeting) -> bytes:
    """SSLRequest packet (sequence id 1): capabilities, max packet, charset, 23 zeros."""
    flags = CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
    payload = struct.pack("<IIB", flags, 1 << 24, greeting.charset or 0x21) + bytes(23)
    return len(payload).to_bytes(3, "little") + b"\x01" + payload


def _mysql(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    header = reader.exact(4)
    length = int.from_bytes(header[:3], "little")
    if length > 1024:  # a real greeting is ~100 bytes
        raise _unexpected("MySQL greeting too long", header)
    greeting = parse_mysql_greeting(reader.exact(length))
    if not greeting.capabilities & CLIENT_SSL:
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no SSL offered (capability flag unset)")
    _send(sock, mysql_ssl_request(greeting), deadline)


# -- RDP: X.224 Connection Request asking for the TLS security layer ([MS-RDPBCGR] 2.2.1) --

_RDP_PROTOCOL_SSL = 0x00000001


def rdp_connection_request() -> bytes:
    negotiation = struct.pack("<BBHI", 0x01, 0, 8, _RDP_PROTOCOL_SSL)  # RDP_NEG_REQ
    x224 = bytes([6 + len(negotiation), 0xE0, 0, 0, 0, 0, 0]) + negotiation
    return struct.pack("!BBH", 3, 0, 4 + len(x224)) + x224  # TPKT (RFC 1006)


def parse_rdp_confirm(tpdu: bytes) -> int:
    """The selected protocol of an X.224 Connection Confirm; raises on failure/absence."""
    if len(tpdu) < 11 or tpdu[0] != 3 or tpdu[5] & 0xF0 != 0xD0:
        raise _unexpected("not an X.224 Connection Confirm", tpdu[:16])
    negotiation = tpdu[11:19]
    if len(negotiation) < 8:  # no negotiation block: standard RDP security only
        raise UpgradeFailure(FailureKind.NOT_OFFERED, "no TLS offered (standard RDP security)")
    kind, _flags, _length, value = struct.unpack("<BBHI", negotiation)
    if kind == 0x02:  # RDP_NEG_RSP
        return int(value)
    if kind == 0x03:  # RDP_NEG_FAILURE
        kind_of = FailureKind.NOT_OFFERED if value in (1, 2) else FailureKind.REFUSED
        raise UpgradeFailure(kind_of, f"RDP negotiation failure code {value}")
    raise _unexpected("unknown RDP negotiation type", negotiation)


def _rdp(sock: socket.socket, reader: Reader, deadline: float, _name: str) -> None:
    _send(sock, rdp_connection_request(), deadline)
    header = reader.exact(4)
    length = int.from_bytes(header[2:4], "big")
    if header[0] != 3 or not 11 <= length <= 512:
        raise _unexpected("not a TPKT answer", header)
    selected = parse_rdp_confirm(header + reader.exact(length - 4))
    if selected != _RDP_PROTOCOL_SSL:
        raise UpgradeFailure(FailureKind.REFUSED, f"RDP selected protocol {selected}, not TLS")


_Preamble = Callable[[socket.socket, Reader, float, str], None]

PREAMBLES: dict[Upgrade, _Preamble] = {
    Upgrade.SMTP: _smtp,
    Upgrade.IMAP: _imap,
    Upgrade.POP3: _pop3,
    Upgrade.FTP: _ftp,
    Upgrade.LDAP: _ldap,
    Upgrade.XMPP: _xmpp,
    Upgrade.XMPP_SERVER: _xmpp_server,
    Upgrade.POSTGRES: _postgres,
    Upgrade.MYSQL: _mysql,
    Upgrade.SIEVE: _sieve,
    Upgrade.NNTP: _nntp,
    Upgrade.IRC: _irc,
    Upgrade.RDP: _rdp,
}


def perform_upgrade(
    sock: socket.socket, upgrade: Upgrade, *, server_name: str, deadline: float
) -> None:
    """Run ``upgrade``'s preamble on a connected blocking socket; return when the next
    bytes on it are TLS. ``deadline`` is a ``time.monotonic()`` value. Raises only
    ``UpgradeFailure``."""
    if upgrade is Upgrade.DIRECT:
        return
    reader = Reader(sock, deadline)
    PREAMBLES[upgrade](sock, reader, deadline, server_name)
    if reader.leftover():
        # Bytes after "go ahead" would be taken for the server's TLS answer.
        raise _unexpected("data after the upgrade answer", reader.leftover())


__all__ = [
    "MAX_PREAMBLE_BYTES",
    "PREAMBLES",
    "FailureKind",
    "MysqlGreeting",
    "NumericReply",
    "Reader",
    "Upgrade",
    "UpgradeFailure",
    "ber_header",
    "ftp_offers_auth_tls",
    "imap_capabilities",
    "imap_tagged",
    "ldap_message_complete",
    "ldap_starttls_request",
    "mysql_ssl_request",
    "parse_ldap_extended_response",
    "parse_mysql_greeting",
    "parse_rdp_confirm",
    "parse_reply_line",
    "perform_upgrade",
    "pop3_status",
    "rdp_connection_request",
    "route_for",
    "sieve_response",
    "smtp_extensions",
    "xmpp_offers_starttls",
    "xmpp_starttls_answer",
]
