"""HTTP pivots (title, redirect, favicon hash): recorded answers, and hostile bytes.

The favicon hash is checked against Shodan's convention computed here from its parts
(base64 with a newline every 76 characters, MurmurHash3 x86 32-bit, signed), and the
parsers are property-tested: any bytes in, a bounded, printable result out, no raise.
"""

from __future__ import annotations

import base64
import re

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probers.service.banners import parse_http
from probers.service.http_meta import (
    BODY_CAP,
    TITLE_CAP,
    DeclaredEnd,
    _title_bytes,
    dechunk,
    favicon_hash,
    favicon_href,
    http_framing,
    is_icon_response,
    page_title,
    reached_declared_end,
    redirect_location,
    same_host_path,
    split_response,
)

# nginx 1.22's answer to GET / on a default Debian install (headers recorded, body cut).
NGINX_WELCOME = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 615\r\nConnection: close\r\n\r\n"
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n<style>\nhtml "
    b"{ color-scheme: light dark; }\n</style>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>"
)
# An application behind PHP redirecting to its login page (relative Location).
PHP_REDIRECT = (
    b"HTTP/1.1 302 Found\r\nServer: Apache/2.4.62 (Debian)\r\nX-Powered-By: PHP/8.2.26\r\n"
    b"Location: /login.php?next=%2F\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n"
    b"7\r\n<title>\r\n11\r\nGrafana &amp; co \r\n9\r\n </title>\r\n0\r\n\r\n"
)


def test_title_server_and_status_of_a_recorded_nginx_page() -> None:
    # Given nginx's welcome page
    response = split_response(NGINX_WELCOME)
    # Then the status, the Server header and the title are read
    assert response.status == 200
    assert response.header("server") == "nginx/1.22.1"
    assert page_title(response.body) == "Welcome to nginx!"
    assert redirect_location(response) == ""


def test_redirect_and_powered_by_of_a_recorded_php_answer() -> None:
    response = split_response(PHP_REDIRECT)
    assert response.status == 302
    assert redirect_location(response) == "/login.php?next=%2F"
    assert response.header("x-powered-by") == "PHP/8.2.26"
    # And a relative redirect stays on the host: its path is what we would fetch next
    assert same_host_path("/login.php?next=%2F", "127.0.0.1", 8080, is_tls=False) == \
        "/login.php?next=%2F"


def test_chunked_body_is_decoded_and_entities_and_spaces_folded_in_the_title() -> None:
    response = split_response(CHUNKED)
    assert page_title(response.body) == "Grafana & co"


def test_redirects_to_another_host_port_or_scheme_are_not_followed() -> None:
    # Given locations a hostile or merely external server may send
    host, port = "127.0.0.1", 8080
    assert same_host_path("http://127.0.0.1:8080/a", host, port, is_tls=False) == "/a"
    assert same_host_path("https://127.0.0.1:8080/a", host, port, is_tls=False) is None
    assert same_host_path("http://127.0.0.2:8080/a", host, port, is_tls=False) is None
    assert same_host_path("http://127.0.0.1/a", host, port, is_tls=False) is None  # port 80
    assert same_host_path("//example.org/a", host, port, is_tls=False) is None
    assert same_host_path("javascript:alert(1)", host, port, is_tls=False) is None
    assert same_host_path("/a\r\nX-Injected: 1", host, port, is_tls=False) is None
    # The default port of the scheme counts as the same port
    assert same_host_path("https://127.0.0.1/x", "127.0.0.1", 443, is_tls=True) == "/x"
    # Relative to the page that redirected
    assert same_host_path("next", host, port, is_tls=False, base_path="/app/") == "/app/next"
    # A path too long to be a page is not requested (a favicon link of 200 KB was)
    assert same_host_path("/" + "a" * 2047, host, port, is_tls=False) == "/" + "a" * 2047
    assert same_host_path("/" + "a" * 2048, host, port, is_tls=False) is None
    assert same_host_path("/x?" + "q" * 5000, host, port, is_tls=False) is None


def test_favicon_link_of_a_page_is_found_whatever_the_attribute_order() -> None:
    body = (b'<head><link href="/static/ico.png?v=2&amp;x=1" rel="shortcut icon">'
            b"<link rel=stylesheet href=/a.css></head>")
    assert favicon_href(body) == "/static/ico.png?v=2&x=1"
    assert favicon_href(b"<link rel='icon' href='fav.ico'>") == "fav.ico"
    assert favicon_href(b"<link rel=stylesheet href=/a.css>") == ""


def test_favicon_hash_is_shodans_convention() -> None:
    # Given an icon long enough for base64 to wrap (76-character lines)
    icon = bytes(range(256)) * 3
    encoded = base64.b64encode(icon).decode()
    wrapped = "".join(encoded[i:i + 76] + "\n" for i in range(0, len(encoded), 76))
    # When hashed, then it is MurmurHash3 (signed 32-bit) of the wrapped base64
    assert favicon_hash(icon) == mmh3.hash(wrapped.encode(), 0, signed=True)
    assert -2**31 <= favicon_hash(icon) < 2**31
    # A known value: the hash of an empty icon's base64 ("") is MurmurHash3 of "" = 0
    assert favicon_hash(b"") == 0


def test_only_a_200_non_html_answer_counts_as_an_icon() -> None:
    icon = split_response(b"HTTP/1.1 200 OK\r\nContent-Type: image/x-icon\r\n\r\n\x00\x00\x01")
    not_found = split_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: image/x-icon\r\n\r\nx")
    soft_404 = split_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
    assert is_icon_response(icon)
    assert not is_icon_response(not_found)
    assert not is_icon_response(soft_404)


def test_endless_headers_leave_no_body_and_a_bounded_header_list() -> None:
    # Given headers that never end (a hostile server)
    data = b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * 100 + b"\r\n" * 1 + b"X-B: b\r\n" * 20_000
    response = split_response(data)
    # Then no body is trusted, and the headers kept are few and capped
    assert response.body == b""
    assert len(response.headers) <= 64
    assert all(len(value) <= 256 for _, value in response.headers)


def test_not_http_is_status_zero() -> None:
    assert split_response(b"SSH-2.0-OpenSSH_9.2p1\r\n").status == 0
    assert split_response(b"").status == 0


@pytest.mark.parametrize(("line", "status"), [
    (b"HTTP/1.1 200 OK\r\n", 200), (b"HTTP/1.0 404\r\n", 404), (b"HTTP/2 503", 503),
    (b"HTTP/1.1 199\n", 199),
    # Not status lines (a hostile-server review, 2026-12-05: stored as http, "status 999")
    (b"HTTP/1.1 99999999 Huge\r\n", 0), (b"HTTP/9.9 000\r\n", 0),
    (b"HTTP/1.1 600 x\r\n", 0), (b"HTTP/1.1 2000\r\n", 0), (b"HTTP/1.1 20x\r\n", 0)])
def test_a_status_line_has_a_code_from_100_to_599_and_nothing_glued_to_it(
        line: bytes, status: int) -> None:
    assert split_response(line + b"\r\n").status == status
    info = parse_http(line + b"\r\n")
    assert (info.extra_info if info else "") == (f"status {status}" if status else "")


# -- hostile bytes -----------------------------------------------------------------------

_HTTPISH = st.builds(
    lambda status, heads, body: b"HTTP/1.1 " + status + b"\r\n" + heads + b"\r\n\r\n" + body,
    st.sampled_from([b"200 OK", b"302 Found", b"404 x", b"999 ?", b"abc"]),
    st.binary(max_size=600),
    st.binary(max_size=2000),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=3000), _HTTPISH))
def test_parsers_never_raise_and_stay_bounded(data: bytes) -> None:
    response = split_response(data)
    assert len(response.body) <= BODY_CAP
    title = page_title(response.body)
    assert len(title) <= TITLE_CAP
    assert title.isascii() and title.isprintable()
    location = redirect_location(response)
    assert len(location) <= 256
    same_host_path(location, "127.0.0.1", 80, is_tls=False)
    href = favicon_href(response.body)
    same_host_path(href, "127.0.0.1", 80, is_tls=False)
    assert -2**31 <= favicon_hash(response.body) < 2**31


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_dechunk_never_raises_nor_grows(data: bytes) -> None:
    assert len(dechunk(data)) <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300) | st.text(min_size=1900, max_size=2200))
def test_same_host_path_only_ever_returns_a_path(location: str) -> None:
    path = same_host_path(location, "127.0.0.1", 8080, is_tls=False)
    assert path is None or (path.startswith("/") and "\r" not in path and "\n" not in path
                            and len(path) <= 2048)


# The title rule as the regex first wrote it (correct, but quadratic on a page of
# unclosed <title> tags): the linear scan must agree with it on every page.
_TITLE_SPEC = re.compile(rb"<title[^>]{0,200}>(.{0,4096}?)</title", re.I | re.S)
_TITLE_PIECES = st.sampled_from([b"<title>", b"</title>", b"<TITLE lang=en>", b"</TiTlE",
                                 b"<title", b">", b"<", b"x" * 150, b"y" * 3000, b"\n",
                                 b"<titles>", b"</title\xff"])


@settings(max_examples=500)
@given(st.lists(st.one_of(_TITLE_PIECES, st.binary(max_size=40)), max_size=14))
def test_the_title_scan_agrees_with_the_title_rule(pieces: list[bytes]) -> None:
    page = b"".join(pieces)
    spec = _TITLE_SPEC.search(page)
    assert _title_bytes(page) == (spec.group(1) if spec else None)


def test_a_page_of_unclosed_titles_has_no_title() -> None:
    assert page_title(b"<title>" * 10_000) == ""
    assert page_title(b"<title>" * 10_000 + b"x</title>") == ""  # closed too far away
    assert page_title(b"<title>a<title>b</TITLE>") == "a<title>b"


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/x-icon\r\n"


@pytest.mark.parametrize(("answer", "whole", "body"), [
    (HEAD + b"Content-Length: 4\r\n\r\nabcd", True, b"abcd"),
    (HEAD + b"Content-Length: 4\r\n\r\nabcdEXTRA", True, b"abcd"),  # what follows is not it
    (HEAD + b"Content-Length: 9\r\n\r\nabcd", False, b"abcd"),  # cut short
    (HEAD + f"Content-Length: {BODY_CAP + 1}\r\n\r\n".encode() + b"x" * 10, False, b"x" * 10),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n", True,
     b"abcd"),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n", False, b"abcd"),
    (HEAD + b"\r\nabcd", True, b"abcd"),  # no length: it ends where the server closed
    (HEAD + b"\r\n" + b"x" * (BODY_CAP + 1), False, b"x" * BODY_CAP),
])
def test_a_body_is_whole_only_when_all_it_declares_arrived(answer: bytes, whole: bool,
                                                           body: bytes) -> None:
    response = split_response(answer)
    assert (response.is_whole, response.body) == (whole, body)
    assert is_icon_response(response) is whole


def _ended(data: bytes) -> bool:
    frame = http_framing(data)
    return frame is not None and reached_declared_end(data, frame)


def test_reading_stops_once_the_declared_end_arrived() -> None:
    assert _ended(HEAD + b"Content-Length: 4\r\n\r\nabcd")
    assert not _ended(HEAD + b"Content-Length: 4\r\n\r\nab")
    assert not _ended(HEAD + b"\r\nabcd")  # no length: read to the close (or a pause)
    assert not _ended(HEAD + b"Content-Length: 4\r\n")  # headers not ended
    assert not _ended(HEAD + b"Content-Length: 99999999999999\r\n\r\nab")  # not taken
    # a head ended by bare line feeds (a review: the length was never seen as reached)
    assert _ended(b"HTTP/1.0 200 OK\nContent-Length: 2\n\nab")
    chunked = HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
    assert not _ended(chunked) and _ended(chunked + b"0\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**40), st.binary(max_size=256))
def test_a_whole_body_is_exactly_its_declared_length(lead: bytes, length: int,
                                                     rest: bytes) -> None:
    lead = lead.replace(b"\r", b"").replace(b"\n", b"")  # another header's value
    response = split_response(HEAD + b"X-Lead: " + lead + b"\r\nContent-Length: "
                              + str(length).encode() + b"\r\n\r\n" + rest)
    assert len(response.body) <= min(length, BODY_CAP)
    if response.is_whole:
        assert len(response.body) == length



@pytest.mark.parametrize(("page", "title"), [
    ("<title>Главная страница компании — вход для сотрудников</title>".encode(),
     "Главная страница компании — вход для сотрудников"),
    (b"<title>Caf\xe9 cr\xe8me</title>", "Café crème"),  # Latin-1, read as such
    ("<title>a\u202eb\u0085c</title>".encode(), "a\\u202eb c"),  # escaped, NEL a space
])
def test_a_title_in_another_script_stays_readable(page: bytes, title: str) -> None:
    # before: every non-ASCII byte became \\xNN, so a Russian title kept ~30 unreadable
    # characters of its 256, and Latin-1's é became the UTF-8 escapes \\xc3\\xa9
    assert page_title(page) == title


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=12), st.binary(max_size=30),
       st.lists(st.integers(1, 60), min_size=1, max_size=40))
def test_the_end_of_chunks_read_piece_by_piece_is_the_end_read_whole(
        chunks: list[bytes], tail: bytes, cuts: list[int]) -> None:
    # A chunked answer (any chunks, a last chunk, junk after) arriving in any pieces: the
    # incremental walk says "ended" at the first read where the whole answer says so
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    answer = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + tail
    frame = http_framing(answer)
    assert frame is not None
    end, buf, at, before = DeclaredEnd(frame), bytearray(), 0, 0
    ended_at = None
    for cut in [*cuts, len(answer)]:
        before = len(buf)
        buf += answer[at:at + cut]
        at += cut
        if end.reached(buf):
            ended_at = len(buf)
            break
    # it ended, where the answer read whole says so, and not a read too late
    assert ended_at is not None and reached_declared_end(answer[:ended_at], frame)
    assert before == 0 or not reached_declared_end(answer[:before], frame)



@pytest.mark.parametrize("size_line", [b"0" * 70 + b"5", b"5;" + b"ext=value;" * 8])
def test_a_chunk_size_line_with_leading_zeros_or_extensions_is_read(size_line: bytes) -> None:
    # RFC 9112 allows both; a 64-byte window lost the body (a review)
    answer = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n"
              b"0\r\n\r\n")
    assert split_response(answer).body == b"hello"
    assert _ended(answer)
