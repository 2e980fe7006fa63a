"""Text that banner parsers (probers/service/banners.py) return from what a scanned service
sent: read as UTF-8 where it is UTF-8, never a control character (a raw ESC or C1 byte in
a product would reach a terminal through CSV output), always bounded. Real recorded-style
bytes, no mocks; a property test over arbitrary bytes for every parser."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from probers.service.banners import (
    BANNER_EXCERPT,
    FIELD_CAP,
    parse_banner,
    parse_foreign_reply,
    parse_greeting,
    parse_http,
    parse_http_headers,
    parse_managesieve,
    parse_misc,
    parse_mysql,
    parse_postgres_error_fields,
    parse_postgres_ssl_reply,
    parse_postgres_version_error,
    parse_rdp_confirm,
    parse_redis,
    parse_ssh,
    parse_xmpp_stream,
    sanitize,
)
from schemas.records import ServiceInfo

# What the reviewer's listener on 127.0.0.6:1002 sent.
HOSTILE_SSH = "SSH-2.0-Ünïcødé_💥 \x1b[31mred\x1b[0m\r\n".encode()


def mysql_packet(body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + b"\x00" + body


def postgres_error(*fields: bytes) -> bytes:
    body = b"".join(field + b"\x00" for field in fields) + b"\x00"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body


def has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


# -- sanitize(utf8=True) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"SSH-2.0-OpenSSH_9.2p1", "SSH-2.0-OpenSSH_9.2p1"),  # ASCII: as without utf8
        (b"line\r\n\tnext\\", "line\\r\\n\\tnext\\\\"),
        ("Ünïcødé_💥".encode(), "Ünïcødé_💥"),  # valid UTF-8 reads as sent
        (b"\x1b[31mred\x1b[0m\x07", "\\x1b[31mred\\x1b[0m\\x07"),  # ESC, BEL never raw
        (b"\x00nul\x00", "\\x00nul\\x00"),
        (b"csi\x9b31m", "csi\\x9b31m"),  # a lone 0x9b byte (8-bit CSI) is not UTF-8
        ("csi\x9b31m".encode(), "csi\\u009b31m"),  # U+009B, the C1 CSI character, as UTF-8
        ("a\u202eb\u2028c\u00a0d".encode(), "a\\u202eb\\u2028c\\u00a0d"),  # bidi, separators
        (b"caf\xe9 \xff\xfe", "caf\\xe9 \\xff\\xfe"),  # not UTF-8: byte escapes, not mojibake
        (b"\xc3", "\\xc3"),  # UTF-8 cut short
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # an encoded surrogate is not UTF-8
        (b"", ""),
    ],
)
def test_sanitize_utf8_keeps_printable_unicode_and_escapes_the_rest(raw: bytes,
                                                                    expected: str) -> None:
    # Given bytes a service sent, when sanitized as UTF-8
    out = sanitize(raw, utf8=True)
    # Then printable characters are kept and every control is an escape
    assert out == expected
    assert not has_control(out)


def test_sanitize_without_utf8_still_escapes_every_non_ascii_byte() -> None:
    # Given the same UTF-8 bytes, when sanitized the default way (banner excerpts)
    # Then nothing changed: ASCII only
    assert sanitize("Ünï".encode()) == "\\xc3\\x9cn\\xc3\\xaf"


def test_sanitize_utf8_caps_whole_characters_and_says_so() -> None:
    # Given more text than the cap, when sanitized as UTF-8
    # Then at most `limit` characters, never half an escape, an ellipsis when cut
    assert sanitize("é".encode() * 20, 10, utf8=True) == "ééééééé..."
    assert sanitize(b"ab\x1bcdef", 6, utf8=True) == "ab..."
    assert sanitize("💥".encode() * 10, 10, utf8=True) == "💥" * 10  # exactly at the cap
    assert sanitize(b"x" * 100_000, BANNER_EXCERPT, utf8=True) == "x" * 509 + "..."


# -- the reviewer's banner, and other hostile SSH banners -------------------------------


def test_hostile_ssh_banner_reads_utf8_and_escapes_terminal_controls() -> None:
    # Given the banner of the reviewer's listener (UTF-8 software name, ANSI colours)
    # When parsed, directly and the way a scan does (parse_banner)
    for info in (parse_ssh(HOSTILE_SSH), parse_banner(HOSTILE_SSH)):
        # Then the product reads as sent and the colour codes are visible escapes
        assert info is not None
        assert (info.service, info.product, info.version, info.extra_info, info.cpe,
                info.method, info.confidence) == (
            "ssh", "Ünïcødé_💥", "", "protocol 2.0; \\x1b[31mred\\x1b[0m", "",
            "banner:ssh-guess", 8)


@pytest.mark.parametrize(
    ("banner", "product", "extra"),
    [
        (b"SSH-2.0-nul\x00nul \x00\x00\r\n", "nul\\x00nul", "protocol 2.0; \\x00\\x00"),
        (b"SSH-2.0-csi\x9b2J \x9b31mred\r\n", "csi\\x9b2J", "protocol 2.0; \\x9b31mred"),
        ("SSH-2.0-c1\x9c x\x9b2J\r\n".encode(), "c1\\u009c", "protocol 2.0; x\\u009b2J"),
        (b"SSH-2.0-caf\xe9_x \xff\xfeboom\r\n", "caf\\xe9_x", "protocol 2.0; \\xff\\xfeboom"),
        (b"SSH-2.0-x \t\x07bell\t \r\n", "x", "protocol 2.0; \\x07bell"),
    ],
)
def test_ssh_banner_controls_are_escaped(banner: bytes, product: str, extra: str) -> None:
    info = parse_ssh(banner)
    assert info is not None
    assert (info.product, info.version, info.extra_info) == (product, "", extra)


def test_ssh_known_software_with_hostile_comment_keeps_its_version() -> None:
    # Given OpenSSH followed by bytes that are not UTF-8 and a terminal title sequence
    info = parse_ssh(b"SSH-2.0-OpenSSH_9.2p1\xff Debian\x1b]0;pwned\x07\r\n")
    # Then the version stops at the odd byte and the comment is escaped
    assert info is not None
    assert (info.product, info.version, info.extra_info, info.cpe) == (
        "OpenSSH", "9.2p1", "protocol 2.0; Debian\\x1b]0;pwned\\x07",
        "cpe:/a:openbsd:openssh:9.2p1")


def test_100kb_ssh_banner_is_capped() -> None:
    # Given a 100 KB software name, comment and protocol version
    info = parse_ssh(b"SSH-2.0-" + b"A" * 100_000 + b" " + b"c" * 100_000 + b"\r\n")
    long_protocol = parse_ssh(b"SSH-" + b"2" * 100_000 + b".0-x\r\n")
    # Then each field is cut at its cap, with an ellipsis
    assert info is not None and long_protocol is not None
    assert info.product == "A" * (FIELD_CAP - 3) + "..."
    assert info.extra_info == "protocol 2.0; " + "c" * (FIELD_CAP - 3) + "..."
    assert long_protocol.extra_info == "protocol " + "2" * 13 + "..."


# -- the other parsers ----------------------------------------------------------------


def test_greeting_with_escapes_and_a_100kb_line_still_names_the_product() -> None:
    # Given an SMTP greeting with a terminal escape, and one 100 KB long
    hostile = parse_greeting(b"220 \x1b]0;pwned\x07 mx ESMTP Exim 4.96 \xc3\x9c\r\n")
    long = parse_greeting(b"220 " + b"x" * 100_000 + b" ESMTP Exim 4.96\r\n")
    huge_version = parse_greeting(b"220 mx ESMTP Exim " + b"4" * 100_000 + b"\r\n")
    # Then the product is found as before and the version is bounded
    assert hostile is not None and long is not None and huge_version is not None
    assert (hostile.product, hostile.version) == ("Exim smtpd", "4.96")
    assert (long.product, long.version) == ("Exim smtpd", "4.96")
    assert huge_version.version == "4" * (FIELD_CAP - 3) + "..."


def test_mysql_texts_are_utf8_and_escaped() -> None:
    # Given a MariaDB greeting whose version suffix carries an escape sequence
    greeting = parse_mysql(mysql_packet(b"\x0a10.11.6-MariaDB-\x1b[2J\xc3\xa9\x00"
                                        + b"\x2a\x00\x00\x00"))
    # and a refusal with UTF-8, a C1 character and ESC in its message
    refusal = parse_mysql(mysql_packet(b"\xff\x15\x04#HY000Host 'h"
                                       + "ôte\x9c' \x1b[0m".encode()))
    # Then both read as UTF-8 with every control escaped
    assert greeting is not None and refusal is not None
    assert (greeting.product, greeting.version, greeting.extra_info) == (
        "MariaDB", "10.11.6", "\\x1b[2Jé")
    assert refusal.extra_info == "refused: #HY000Host 'hôte\\u009c' \\x1b[0m"


def test_managesieve_and_vnc_texts_are_escaped() -> None:
    sieve = parse_managesieve(b'"IMPLEMENTATION" "D\xc3\xb6vecot\x1b[1m\x9b"\r\n"SIEVE" "x"\r\n'
                              b'OK\r\n')
    vnc = parse_misc(b"RFB 0\x1b[2J\x00\n")
    assert sieve is not None and vnc is not None
    assert sieve.product == "Dövecot\\x1b[1m\\x9b"
    assert vnc.extra_info == "protocol 0\\x1b[2J\\x00\\n"


def test_postgres_error_texts_are_escaped_and_cut_on_whole_escapes() -> None:
    # Given a refusal whose message has an ESC right where the 120-character cut falls
    data = postgres_error(b"SFATAL", b"VFATAL", b"C0A000",
                          b"Mprotocol " + b"x" * 105 + b"\x1b[2J" + b"y" * 10)
    # When parsed
    fields = parse_postgres_error_fields(data)
    info = parse_postgres_version_error(data)
    # Then the field is escaped, and the excerpt is cut before the escape, not inside it
    assert fields["M"] == "protocol " + "x" * 105 + "\\x1b[2J" + "y" * 10
    assert info is not None
    assert info.extra_info == "protocol " + "x" * 105 + "..."


def test_postgres_utf8_message_is_read_as_utf8() -> None:
    data = postgres_error(b"SFATAL", b"C0A000", "Mprotocole non supporté\x1b".encode())
    info = parse_postgres_version_error(data)
    assert info is not None
    assert info.extra_info == "protocole non supporté\\x1b"


def test_redis_100kb_version_is_capped() -> None:
    info = parse_redis(b"$100020\r\n# Server\r\nredis_version:" + b"7" * 100_000 + b"\r\n")
    assert info is not None
    assert info.version == "7" * (FIELD_CAP - 3) + "..."
    assert info.cpe == "cpe:/a:redis:redis:" + info.version


def test_http_extra_info_stays_within_the_excerpt() -> None:
    # Given long Server and X-Powered-By headers (each sanitized to 256 characters)
    data = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.0 (" + b"r" * 300 + b")\r\n"
            b"X-Powered-By: " + b"p" * 300 + b"\r\n\r\n")
    # When parsed
    info = parse_http(data)
    # Then extra_info is cut at the excerpt, with an ellipsis
    assert info is not None
    assert (info.product, info.version) == ("nginx", "1.0")
    assert info.extra_info == ("status 200; X-Powered-By: " + "p" * 253 + "...; ("
                               + "r" * 224 + "...")
    assert len(info.extra_info) == BANNER_EXCERPT


def test_http_server_header_controls_are_escaped() -> None:
    info = parse_http(b"HTTP/1.1 200 OK\r\nServer: \xc3\x9c\x1b[31m/1\x9b\r\n\r\n")
    assert info is not None
    assert (info.product, info.version) == ("\\xc3\\x9c\\x1b[31m", "1\\x9b")


# -- property: any bytes, any parser --------------------------------------------------

_PREFIXES = st.sampled_from([
    b"", b"SSH-2.0-", b"SSH-2.0-OpenSSH_", b"HTTP/1.1 200 OK\r\nServer: ",
    b"HTTP/1.1 200 OK\r\nServer: nginx/", b"HTTP/1.0 400 Bad\r\nX-Powered-By: ", b"220 ",
    b"220 ESMTP Exim ", b"220 FTP ProFTPD ", b"+OK ", b"* OK ", b"200 news ", b"RFB 0",
    b'"SIEVE"\r\n"IMPLEMENTATION" "', b"redis_version:", b"-ERR ", b"\x16\x03\x01",
    b"\x03\x00\x00\x13\x0e\xd0",
])
_BODIES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from([b"\x1b[31m", b"\x9b", "\x9b".encode(), b"\x00", b"\xff",
                              "é".encode(), "\u202e".encode(), b"\\", b"\r\n", b" "]),
             max_size=200).map(b"".join),
)
_DATA = st.one_of(
    st.tuples(_PREFIXES, _BODIES).map(b"".join),
    _BODIES.map(lambda b: mysql_packet(b"\x0a" + b[:60] + b"\x00")),
    _BODIES.map(lambda b: mysql_packet(b"\x0a5.5.5-10.11.6-MariaDB" + b[:40] + b"\x00")),
    _BODIES.map(lambda b: mysql_packet(b"\xff\x15\x04#HY000Host " + b)),
    _BODIES.map(lambda b: postgres_error(b"SFATAL", b"VFATAL", b"C0A000",
                                         b"Mprotocol " + b.replace(b"\x00", b""))),
)
_PARSERS = (
    parse_ssh, parse_mysql, parse_misc, parse_managesieve, parse_redis,
    parse_postgres_ssl_reply, parse_postgres_version_error, parse_foreign_reply,
    parse_rdp_confirm, parse_xmpp_stream, parse_http,
    lambda data: parse_http(data, is_tls=True),
    *(lambda data, hint=hint: parse_banner(data, hint)
      for hint in ("", "ftp", "smtp", "nntp")),
)


def _texts(info: ServiceInfo) -> list[str]:
    return [info.service, info.product, info.version, info.extra_info, info.cpe, info.banner,
            info.method, *(part for header in info.headers for part in header)]


@settings(max_examples=400, deadline=None)
@given(_DATA)
@example(HOSTILE_SSH)
@example(b"SSH-2.0-" + b"\x9b" * 100_000)
@example(b"HTTP/1.1 200 OK\r\nServer: nginx/1 (" + "é\x1b".encode() * 400 + b")\r\n"
         b"X-Powered-By: " + b"\x1b" * 400 + b"\r\n\r\n")
def test_every_returned_text_is_free_of_controls_and_bounded(data: bytes) -> None:
    # Given any bytes a service could send, when every parser reads them
    for parser in _PARSERS:
        info = parser(data)
        if info is None:
            continue
        # Then no text field holds a control character, and none exceeds the excerpt
        for text in _texts(info):
            assert not has_control(text), (parser, text)
            assert len(text) <= BANNER_EXCERPT, (parser, len(text))
    for text in (*parse_postgres_error_fields(data).values(),
                 *(part for header in parse_http_headers(data) for part in header)):
        assert not has_control(text)
        assert len(text) <= BANNER_EXCERPT


@settings(max_examples=300, deadline=None)
@given(_BODIES, st.integers(min_value=0, max_value=600))
def test_sanitize_utf8_is_free_of_controls_and_within_its_limit(data: bytes,
                                                                limit: int) -> None:
    out = sanitize(data, limit, utf8=True)
    assert not has_control(out)
    assert len(out) <= limit
    if data.isascii():
        assert out == sanitize(data, limit)  # ASCII: the same text with or without utf8
