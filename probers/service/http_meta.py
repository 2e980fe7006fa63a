"""What analysts pivot on in an HTTP answer: title, redirect, Server, X-Powered-By, favicon.

Owns: pure, bounded parsers over the bytes an HTTP server sent (status line and headers,
the body after them, chunked transfer coding, the page ``<title>``, the ``Location`` of a
redirect and whether it stays on the same host, the ``<link rel=icon>`` of a page) and
the favicon hash in Shodan's convention. Every input is hostile: sizes are capped before
any parsing, text is sanitized before it reaches a record, and nothing here raises on
bad bytes (hypothesis tests in tests/unit/test_http_meta.py).

Must not touch: sockets (probers/service/engine.py fetches), Kafka, storage.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import mmh3

from probers.service.banners import parse_http_headers, sanitize

HEAD_CAP = 16_384  # bytes of status line + headers looked at; endless headers stop here
BODY_CAP = 262_144  # bytes of body kept (a favicon above this is not hashed)
TITLE_CAP = 256  # characters of title kept
FIELD_CAP = 256  # characters of a header value kept
PATH_CAP = 2048  # characters of a same-host path we request (a redirect's, a favicon's)
TITLE_SCAN = 65_536  # bytes of body searched for <title> / <link rel=icon>
MAX_CHUNKS = 4_096  # chunks decoded before giving up on a chunked body
# A chunk-size line: hex, leading zeros and chunk extensions allowed (RFC 9112 7.1.1);
# 64 bytes lost a valid answer that used them (no title, no favicon)
SIZE_LINE_CAP = 1_024

# as banners._STATUS: a code 100-599 ended by a space, a line end or the end
_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)? ([1-5]\d\d)(?=[ \r\n]|\Z)")
# A title is the text between the first ``<title...>`` and a ``</title`` at most
# TITLE_SPAN bytes after it. Found with one scan, not with a lazy ``.{0,4096}?`` per
# opening tag: a page of ``<title>`` repeated and never closed cost that regex 0.3 s
# of CPU on the event loop, for every such page.
_TITLE_OPEN = re.compile(rb"<title[^>]{0,200}>", re.I)
_TITLE_CLOSE = b"</title"
TITLE_SPAN = 4096
_LINK = re.compile(rb"<link\b[^>]{0,1000}>", re.I)
_REL_ICON = re.compile(rb"""\brel\s*=\s*["']?[^"'>]{0,64}\bicon\b""", re.I)
_HREF = re.compile(rb"""\bhref\s*=\s*(?:"([^"]{0,1024})"|'([^']{0,1024})'|([^\s>]{1,1024}))""",
                   re.I)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One HTTP answer, split and bounded; ``status`` 0 when it is not HTTP."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # The body arrived whole: its Content-Length reached, its last chunk read, or (with
    # neither) not cut at BODY_CAP. A favicon is hashed only whole: a hash of the bytes
    # an idle gap or the cap let through matches no real icon and moves scan to scan.
    is_whole: bool = True

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


def _raw_header(head: bytes, name: bytes) -> bytes:
    """The raw (unsanitized) value of a header, for decoding decisions only."""
    for line in head.split(b"\n")[1:128]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return b""


def dechunk(body: bytes, cap: int = BODY_CAP) -> bytes:
    """Decode a chunked body (RFC 9112 7.1), keeping what arrived whole; never raises."""
    return _dechunk(body, cap)[0]


def _chunk_size(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(end of the chunk-size line at ``pos``, the size) once that line is whole; None
    when it is not (yet), or is not a size (a negative one included)."""
    line_end = data.find(b"\r\n", pos, pos + SIZE_LINE_CAP)
    if line_end < 0:
        return None
    try:
        size = int(bytes(data[pos:line_end]).split(b";", 1)[0].strip(), 16)
    except ValueError:
        return None
    return (line_end, size) if size >= 0 else None


def _dechunk(body: bytes, cap: int) -> tuple[bytes, bool]:
    """(the decoded body, whether its last chunk was reached within ``cap``)."""
    out = bytearray()
    pos = 0
    for _ in range(MAX_CHUNKS):
        found = _chunk_size(body, pos)
        if found is None:
            break
        line_end, size = found
        if size == 0:
            return bytes(out[:cap]), True
        start = line_end + 2
        out += body[start:start + size]
        if len(out) > cap or start + size > len(body):
            break
        pos = start + size + 2
    return bytes(out[:cap]), False


def _content_length(head: bytes) -> int | None:
    """The declared length; None when there is none, -1 when it is not a length we take
    (a body whose end cannot be known is never whole)."""
    value = _raw_header(head, b"content-length")
    if not value:
        return None
    return int(value) if value.isdigit() and len(value) <= 12 else -1


def split_response(data: bytes) -> HttpResponse:
    """Status, headers (sanitized) and body (dechunked, capped) of an HTTP answer."""
    status = _STATUS.match(data[:32])
    if not status:
        return HttpResponse(0, (), b"")
    frame = http_framing(data)
    if frame is None:  # headers never ended within the cap: no body to trust
        return HttpResponse(int(status.group(1)), parse_http_headers(data[:HEAD_CAP]), b"")
    start, length, chunked = frame
    head, body = data[:start], data[start:]
    if chunked:
        body, is_whole = _dechunk(body, BODY_CAP)
    elif length is not None:
        is_whole = 0 <= length <= BODY_CAP and len(body) >= length
        body = body[:length] if length >= 0 else body
    else:
        is_whole = len(body) <= BODY_CAP
    return HttpResponse(int(status.group(1)), parse_http_headers(head), body[:BODY_CAP],
                        is_whole)


Framing = tuple[int, int | None, bool]  # (body start, declared length, chunked)


def http_framing(data: bytes | bytearray) -> Framing | None:
    """How an answer says it ends, once its head has ended (None before): where its body
    starts, its Content-Length (None: none; -1: one we do not take) and whether it is
    chunked. Read once per answer, not at every read."""
    end, sep = data.find(b"\r\n\r\n", 0, HEAD_CAP), 4
    if end < 0:
        end, sep = data.find(b"\n\n", 0, HEAD_CAP), 2
    if end < 0:
        return None
    head = bytes(data[:end])
    chunked = b"chunked" in _raw_header(head, b"transfer-encoding").lower()
    return end + sep, None if chunked else _content_length(head), chunked


class DeclaredEnd:
    """Whether all of what an answer declared has arrived, asked at every read of it:
    a length is one comparison; chunks are walked forward from where the last call
    stopped, each byte looked at a bounded number of times (a trickle of tiny chunks,
    or of lines that look like a last chunk, must not make reading quadratic)."""

    def __init__(self, frame: Framing) -> None:
        self.start, self.length, self.chunked = frame
        # the answer says where it ends (a length we take, or chunks)
        self.is_declared = self.chunked or (self.length is not None and self.length >= 0)
        self._pos = self.start  # the next chunk-size line

    def reached(self, data: bytes | bytearray) -> bool:
        if not self.chunked:
            return self.length is not None and 0 <= self.length <= len(data) - self.start
        while True:
            found = _chunk_size(data, self._pos)
            if found is None:
                return False  # not whole yet, or not chunks we can follow: to the close
            line_end, size = found
            if size == 0:  # the last chunk: its trailers end at an empty line (bounded)
                return (data.find(b"\r\n\r\n", line_end, line_end + HEAD_CAP) >= 0
                        or len(data) - line_end > HEAD_CAP)  # trailers past any sense
            following = line_end + 2 + size + 2
            if following > len(data):
                return False
            self._pos = following


def reached_declared_end(data: bytes | bytearray, frame: Framing) -> bool:
    """All of what the answer declared has arrived (one question; ``DeclaredEnd`` for
    the reads of one answer)."""
    return DeclaredEnd(frame).reached(data)


def _clean(text: str, cap: int) -> str:
    """Entities decoded, whitespace folded, then sanitized like a banner read as UTF-8:
    a Cyrillic or accented title stays readable (as \\xNN escapes of its bytes, a
    52-letter Russian title kept 30 unreadable characters), controls still escaped."""
    folded = _SPACES.sub(" ", html.unescape(text)).strip()
    return sanitize(folded.encode("utf-8", "replace"), cap, utf8=True)


def _title_bytes(page: bytes) -> bytes | None:
    """The bytes of the first title closed within TITLE_SPAN bytes of its opening tag
    (ASCII case-insensitive tags), in time linear in the page."""
    folded = page.lower()  # bytes.lower folds ASCII only, as re.I does for bytes
    close = -1
    for opening in _TITLE_OPEN.finditer(page):
        start = opening.end()
        if close < start:
            close = folded.find(_TITLE_CLOSE, start)
            if close < 0:
                return None  # no closing tag after this one, nor after any later one
        if close - start <= TITLE_SPAN:
            return page[start:close]
    return None


def page_title(body: bytes) -> str:
    """The first ``<title>`` of a page, decoded (UTF-8, else Latin-1), sanitized, capped."""
    raw = _title_bytes(body[:TITLE_SCAN])
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return _clean(text, TITLE_CAP)


def redirect_location(response: HttpResponse) -> str:
    """The ``Location`` of a 3xx answer (sanitized), else ""."""
    if not 300 <= response.status < 400:
        return ""
    return response.header("location")[:FIELD_CAP]


def _authority(url: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def same_host_path(location: str, host: str, port: int, *, is_tls: bool,
                   base_path: str = "/") -> str | None:
    """The path to fetch for ``location`` when it stays on ``host:port``, else None.

    Relative locations stay on the host. Absolute ones must name the same host and the
    same port (the scheme's default when none is written): a redirect never sends us
    to another machine or another service.
    """
    if not location or any(c in location for c in "\r\n\x00\\"):
        return None
    scheme = "https" if is_tls else "http"
    netloc = f"[{host}]" if ":" in host else host
    base = f"{scheme}://{netloc}:{port}{base_path if base_path.startswith('/') else '/'}"
    try:
        absolute = urljoin(base, location)
        parts = urlsplit(absolute)
        target_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() != host.lower():
        return None
    if target_port != port or (parts.scheme == "https") != is_tls:
        return None
    path = parts.path or "/"
    if not path.startswith("/"):
        return None
    path += f"?{parts.query}" if parts.query else ""
    # A favicon link read from the page is not capped as a header is: a 200 KB path was
    # requested, in a 200 KB request line (a review). No page worth a title is there.
    return path if len(path) <= PATH_CAP else None


def favicon_href(body: bytes) -> str:
    """The href of the first ``<link rel="icon">`` (or "shortcut icon") of a page, raw."""
    for link in _LINK.finditer(body[:TITLE_SCAN]):
        tag = link.group(0)
        if not _REL_ICON.search(tag):
            continue
        href = _HREF.search(tag)
        if href:
            raw = next(g for g in href.groups() if g is not None)
            return html.unescape(raw.decode("latin-1")).strip()
    return ""


def favicon_hash(icon: bytes) -> int:
    """Shodan's ``http.favicon.hash``: MurmurHash3 (x86, 32-bit, seed 0, signed) of the
    icon's base64 with a newline every 76 characters and at the end, as
    ``base64.encodebytes`` writes it."""
    return int(mmh3.hash(base64.encodebytes(icon)))


def is_icon_response(response: HttpResponse) -> bool:
    """An answer worth hashing: 200 with a whole body that is not an HTML error page."""
    if response.status != 200 or not response.body or not response.is_whole:
        return False
    kind = response.header("content-type").lower()
    return not kind.startswith("text/html")


__all__ = ["DeclaredEnd", "Framing", "HttpResponse", "dechunk", "favicon_hash", "favicon_href",
           "http_framing", "is_icon_response", "reached_declared_end",
           "page_title", "redirect_location", "same_host_path", "split_response"]
