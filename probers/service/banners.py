"""Banner and response parsers: bytes a service sent -> service, product, version.

Owns: portwatch's own recognisers for the common services (SSH, SMTP, FTP, HTTP,
MySQL/MariaDB, Redis, PostgreSQL, POP3, IMAP, NNTP, VNC, telnet, RDP), the reading of
answers to a probe meant for another protocol (which probe to send next), and the
sanitizing of untrusted bytes for storage and display. Pure functions over recorded bytes:
no sockets here (probers/service/engine.py sends and reads).

Why one file: every recogniser here reads hostile bytes through the same few helpers
(``_text``'s sanitizing and caps, ``_cpe``, the product tables' ASCII-only patterns) and
``parse_banner`` dispatches across all of them; one module keeps those rules in one place
and lets one hypothesis test feed every parser the same junk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace

from probers.nmapdata.service_probes import cpe_escape
from schemas.records import ServiceInfo

BANNER_EXCERPT = 512  # characters of sanitized banner kept on a ServiceInfo
# The method of a product guessed from a Server header no pattern of ours knows
SERVER_HEADER_GUESS = "http:server-header-guess"
# ... and from an SSH greeting's software no pattern of ours knows
SSH_SOFTWARE_GUESS = "banner:ssh-guess"
# which nmap probe's match lines read the answer a guess came from (engine.identify asks
# them after, with no new connection), and the service they must name ('': any)
GUESS_READ_BY: dict[str, tuple[str, str]] = {SERVER_HEADER_GUESS: ("GetRequest", ""),
                                             SSH_SOFTWARE_GUESS: ("NULL", "ssh")}


def _byte_piece(byte: int) -> str:
    if byte == 0x5C:
        return "\\\\"  # a literal backslash cannot fake an escape
    if 0x20 <= byte < 0x7F:
        return chr(byte)
    return {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(byte, f"\\x{byte:02x}")


_BYTE_PIECES = tuple(_byte_piece(byte) for byte in range(256))


def _utf8_pieces(data: bytes) -> Iterator[str]:
    for ch in data.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if code < 0x80:
            yield _BYTE_PIECES[code]
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8: as in ASCII mode
            yield _BYTE_PIECES[code - 0xDC00]
        elif ch.isprintable():
            yield ch
        else:  # C1 controls, bidi overrides, separators, unassigned...
            yield f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def sanitize(data: bytes, limit: int = BANNER_EXCERPT, *, utf8: bool = False) -> str:
    """Printable ASCII kept; everything else (escape sequences, NUL, binary) as \\xNN.

    With ``utf8``, the bytes are read as UTF-8 and printable non-ASCII characters are
    kept too (``Ünïcødé`` reads as sent); a character that is not printable (C1 controls
    U+0080-U+009F, bidi overrides, separators...) becomes \\uXXXX, and a byte that is not
    UTF-8 \\xNN as without ``utf8``: never a control character either way.

    The result is safe to store and to print on a terminal; it is capped at
    ``limit`` characters with a trailing ellipsis when cut.
    """
    # Each character is at least one output character and at most 4 bytes: no need to
    # decode more than 4 * (limit + 1) bytes of a megabyte banner.
    pieces = (_utf8_pieces(data[:4 * max(limit, 0) + 4]) if utf8
              else (_BYTE_PIECES[byte] for byte in data))
    out: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) > limit:
            # Cut: make room for the ellipsis so that a cut banner always says so.
            if limit >= 3:
                while size + 3 > limit:
                    size -= len(out.pop())
                out.append("...")
            break
        size += len(piece)
        out.append(piece)
    return "".join(out)


# One piece of sanitized text: an escape (never cut in half) or one character.
_PIECE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)|.", re.S)


def _clip(text: str, limit: int) -> str:
    """Sanitized ``text`` capped like ``sanitize`` caps: whole escapes, ellipsis when cut."""
    if len(text) <= limit:
        return text
    room = limit - 3 if limit >= 3 else limit
    end = 0
    for piece in _PIECE.finditer(text):
        if piece.end() > room:
            break
        end = piece.end()
    return text[:end] + ("..." if limit >= 3 else "")


FIELD_CAP = 256  # characters of one product, version, comment... read from a banner


def _text(data: bytes, limit: int = FIELD_CAP) -> str:
    """Remote bytes as text for a ServiceInfo field: UTF-8 where valid, sanitized, capped."""
    return sanitize(data, limit, utf8=True)


def _whole(data: bytes) -> str:
    """All of ``data`` as sanitized text (no piece is over 4 characters a byte): to match
    keywords in, never stored as it is (what is kept of it is a capped match)."""
    return _text(data, 4 * len(data))


def cpe_part(text: str) -> str:
    """One CPE 2.2 field as nmap writes it: lowercased, and every character outside
    the unreserved set percent-encoded, so a ``:`` or ``/`` from a banner can never
    become a field separator (same rule as nmap's templates, probers/nmapdata)."""
    return cpe_escape(text.encode("utf-8", "replace"))


def _cpe(vendor: str, product: str, version: str = "") -> str:
    """``cpe:/a:vendor:product[:version]`` for a product our own probes named."""
    cpe = f"cpe:/a:{cpe_part(vendor)}:{cpe_part(product)}"
    return f"{cpe}:{cpe_part(version)}" if version else cpe


# -- SSH ---------------------------------------------------------------------------------

_SSH = re.compile(rb"^SSH-(\d+\.\d+)-([^\s\r\n]+)(?:[ \t]+([^\r\n]*))?")
_SSH_SOFTWARE: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"^OpenSSH_([\w.]+)", re.A), "OpenSSH", "openbsd", "openssh"),
    (re.compile(r"^dropbear_([\w.]+)", re.A), "Dropbear sshd", "matt_johnston",
     "dropbear_ssh_server"),
    (re.compile(r"^libssh[_-]([\w.]+)", re.A), "libssh", "libssh", "libssh"),
    (re.compile(r"^Cisco-([\w.]+)", re.A), "Cisco SSH", "cisco", "ssh"),
)

# name, then a version after "_", "/" or "-" (an optional "v"): the whole token otherwise
_SSH_GUESS = re.compile(r"(.+?)[_/-]v?(\d[\w.-]*)", re.A)


def parse_ssh(data: bytes) -> ServiceInfo | None:
    m = _SSH.match(data)
    if not m:
        return None
    proto_version, software = _text(m.group(1), 16), _text(m.group(2))
    comment = _text((m.group(3) or b"").strip())
    extra = f"protocol {proto_version}" + (f"; {comment}" if comment else "")
    for pattern, product, vendor, cpe_name in _SSH_SOFTWARE:
        sm = pattern.match(software)
        if sm:
            version = sm.group(1)
            return ServiceInfo(service="ssh", product=product, version=version, extra_info=extra,
                               cpe=_cpe(vendor, cpe_name, version), method="banner:ssh",
                               confidence=10)
    # Software none of ours knows: nmap's ssh lines read the greeting after
    # (``SSH_SOFTWARE_GUESS``); till then, name and version as the token spells them
    # ("Sun_SSH_1.1.4" was product "Sun", no version; "mod_sftp/1.3.8" was "mod": a review)
    guess = _SSH_GUESS.match(software)
    product, version = (guess.group(1), guess.group(2)) if guess else (software, "")
    return ServiceInfo(service="ssh", product=product, version=version, extra_info=extra,
                       method=SSH_SOFTWARE_GUESS, confidence=8)


# -- SMTP / FTP / POP3 / IMAP (line-based greetings) -------------------------------------

# Text from a banner is sanitized Unicode (_text): every table here matches ASCII only
# (re.A), so a version is ASCII digits and letters, never another script's.

_SMTP_PRODUCTS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"ESMTP Postfix", re.I | re.A), "Postfix smtpd", "postfix", "postfix"),
    (re.compile(r"ESMTP Exim ([\d.]+)", re.I | re.A), "Exim smtpd", "exim", "exim"),
    (re.compile(r"Sendmail ([\d.]+)", re.I | re.A), "Sendmail", "sendmail", "sendmail"),
    (re.compile(r"Microsoft ESMTP MAIL Service(?:, Version: ([\d.]+))?", re.I | re.A),
     "Microsoft ESMTP", "microsoft", "exchange_server"),
    (re.compile(r"OpenSMTPD", re.I | re.A), "OpenSMTPD", "openbsd", "opensmtpd"),
)
_FTP_PRODUCTS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"\(vsFTPd ([\d.]+)\)", re.I | re.A), "vsftpd", "beasts", "vsftpd"),
    (re.compile(r"ProFTPD ([\d.]+\w*)", re.I | re.A), "ProFTPD", "proftpd", "proftpd"),
    (re.compile(r"Pure-FTPd", re.I | re.A), "Pure-FTPd", "pureftpd", "pure-ftpd"),
    (re.compile(r"FileZilla Server(?: version)? ([\d.]+\w*)", re.I | re.A),
     "FileZilla ftpd", "filezilla-project", "filezilla_server"),
    (re.compile(r"Microsoft FTP Service", re.I | re.A), "Microsoft ftpd", "microsoft",
     "ftp_service"),
)

# NNTP (RFC 3977 5.1.1): "200" posting allowed, "201" not; the rest of the line is free
# text, so only a news word (or the port hint) says it is NNTP and not another 200.
_NNTP_PRODUCTS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"InterNetNews (?:NNRP )?server INN ([\d.]+)", re.I | re.A), "InterNetNews (INN)",
     "isc", "inn"),
    (re.compile(r"Leafnode NNTP Daemon, version ([\d.]+)", re.I | re.A), "Leafnode", "leafnode",
     "leafnode"),
)
_NEWS_WORDS = ("NNTP", "NNRP", "NEWS")
# the word itself, not a host name's label ("220 smtp.example.com FTP server ready")
_SMTP_WORD = re.compile(r"(?<![\w.-])E?SMTP(?![\w.-])")


MAX_REPLY_LINES = 32  # lines of a multi-line 220 greeting read for its product


def _product_from(text: str, table: tuple[tuple[re.Pattern[str], str, str, str], ...],
                  service: str, method: str) -> ServiceInfo:
    for pattern, product, vendor, cpe_name in table:
        m = pattern.search(text)
        if m:
            version = _clip((m.group(1) or "") if m.groups() else "", FIELD_CAP)
            return ServiceInfo(service=service, product=product, version=version,
                               cpe=_cpe(vendor, cpe_name, version), method=method,
                               confidence=10)
    return ServiceInfo(service=service, method=method, confidence=6)


def parse_greeting(data: bytes, port_hint: str = "") -> ServiceInfo | None:
    text = first = _whole(data.split(b"\n", 1)[0].strip())
    if text.startswith("220-"):
        # A multi-line reply ("220-Welcome..." lines, then "220 ProFTPD 1.3.8 Server"):
        # the product may be on any of its lines, most often the last
        lines = [_whole(line.strip()) for line in data.split(b"\n")[:MAX_REPLY_LINES]]
        text = " ".join(line for line in lines if line.startswith("220"))
    if text.startswith("220"):
        upper = text.upper()
        # "mail" as a hint is read on the first line only (a host name, "220
        # mail.example.com"): a welcome text's "email us" is no mail server
        is_smtp = ("SMTP" in upper or "MAIL" in first.upper() or port_hint == "smtp")
        # An FTP server's own name decides first; then the word (E)SMTP, which no FTP
        # greeting says ("220 ftp.example.com ESMTP Postfix" is a mail server whose
        # host name holds "ftp"); then "FTP" anywhere (vsFTPd), then the mail hints
        if any(pattern.search(text) for pattern, *_ in _FTP_PRODUCTS) or (
                "FTP" in upper and not _SMTP_WORD.search(upper)) or (
                port_hint == "ftp" and not is_smtp):
            return _product_from(text, _FTP_PRODUCTS, "ftp", "banner:ftp")
        if is_smtp:
            return _product_from(text, _SMTP_PRODUCTS, "smtp", "banner:smtp")
        return None
    if text[:4] in ("200 ", "201 ") and (
            port_hint == "nntp" or any(w in text.upper() for w in _NEWS_WORDS)):
        info = _product_from(text, _NNTP_PRODUCTS, "nntp", "banner:nntp")
        return replace(info, extra_info="posting allowed" if text[2] == "0" else "no posting")
    if text.startswith("+OK"):
        is_dovecot = "Dovecot" in text
        return ServiceInfo(service="pop3", product="Dovecot pop3d" if is_dovecot else "",
                           cpe=_cpe("dovecot", "dovecot") if is_dovecot else "",
                           method="banner:pop3", confidence=8)
    if text.startswith("* OK"):
        is_dovecot = "Dovecot" in text
        return ServiceInfo(service="imap", product="Dovecot imapd" if is_dovecot else "",
                           cpe=_cpe("dovecot", "dovecot") if is_dovecot else "",
                           method="banner:imap", confidence=8)
    return None


# -- MySQL / MariaDB handshake -----------------------------------------------------------

_MARIADB = re.compile(r"^(?:5\.5\.5-)?([\d.]+)-MariaDB(.*)$", re.A)
_MYSQL = re.compile(r"^([\d.]+)(.*)$", re.A)


def parse_mysql(data: bytes) -> ServiceInfo | None:
    """MySQL protocol: 3-byte length, sequence id, then protocol 10 + NUL-terminated
    server version, or an error packet (0xff, code, message)."""
    if len(data) < 5:
        return None
    length = int.from_bytes(data[:3], "little")
    if data[3] != 0 or length < 2 or length > 1 << 16:
        return None
    body = data[4:4 + length]
    if body[:1] == b"\xff" and len(body) > 3:
        message = _whole(body[3:]).lstrip("#")
        if "mysql" in message.lower() or "mariadb" in message.lower() or "host" in message.lower():
            return ServiceInfo(service="mysql", extra_info=f"refused: {_text(body[3:], 120)}",
                               method="banner:mysql-error", confidence=7)
        return None
    if body[:1] != b"\x0a" or b"\x00" not in body[1:64]:
        return None
    version_text = _text(body[1:body.index(b"\x00", 1)])
    m = _MARIADB.match(version_text)
    if m:
        return ServiceInfo(service="mysql", product="MariaDB", version=m.group(1),
                           extra_info=m.group(2).lstrip("-"),
                           cpe=_cpe("mariadb", "mariadb", m.group(1)),
                           method="banner:mysql-greeting", confidence=10)
    m = _MYSQL.match(version_text)
    if not m:
        return None
    return ServiceInfo(service="mysql", product="MySQL", version=m.group(1),
                       extra_info=m.group(2).lstrip("-"), cpe=_cpe("mysql", "mysql", m.group(1)),
                       method="banner:mysql-greeting", confidence=10)


# -- other first-speakers ----------------------------------------------------------------


# ManageSieve (RFC 5804 1.7): the server speaks first with its capabilities, one quoted
# pair per line, "IMPLEMENTATION" among them, then an OK line.
_SIEVE_IMPLEMENTATION = re.compile(rb'^"IMPLEMENTATION" "([^"\r\n]{1,100})"\r?$', re.M | re.I)


def parse_managesieve(data: bytes) -> ServiceInfo | None:
    if not data.startswith(b'"') or b'"SIEVE"' not in data.upper():
        return None
    found = _SIEVE_IMPLEMENTATION.search(data[:4096])
    product = _text(found.group(1)) if found else ""
    upgrade = "STARTTLS offered" if b'\n"STARTTLS"' in data.upper() else ""
    return ServiceInfo(service="sieve", product=product, extra_info=upgrade,
                       method="banner:managesieve", confidence=9)


def parse_misc(data: bytes) -> ServiceInfo | None:
    sieve = parse_managesieve(data)
    if sieve is not None:
        return sieve
    if data.startswith(b"RFB 0"):
        return ServiceInfo(service="vnc", extra_info=f"protocol {_text(data[4:11])}",
                           method="banner:vnc", confidence=10)
    if data[:1] == b"\xff" and len(data) >= 3 and data[1] in (0xFB, 0xFC, 0xFD, 0xFE):
        return ServiceInfo(service="telnet", method="banner:telnet-iac", confidence=8)
    return None


# -- HTTP --------------------------------------------------------------------------------

# A status line: a version, then a code 100-599 ended by a space, a line end or the end
# ("HTTP/1.1 99999999" and "HTTP/9.9 000" are not HTTP: a review, 2026-12-05)
_STATUS = re.compile(rb"^HTTP/(\d(?:\.\d)?) ([1-5]\d\d)(?=[ \r\n]|\Z)")


def _server(name: str, version: str = r"[\d.]+") -> re.Pattern[str]:
    """A Server header's product: ``name``, then ``/version``; or ``(``, ``;``, ``,``,
    ``+`` (spaces before them allowed), the end, a bare version ("Apache 2.4") or a
    module token ("Apache mod_fcgid/2.3.9", "nginx + Phusion Passenger 6.0"). Names that
    only start the same, "Apache-Coyote/1.1" (Tomcat), "ApacheSolr", "Apache TomEE",
    "nginx-ingress-controller", are other products (a review, 2026-12-06: Tomcat was
    stored as Apache httpd with its CPE, at a confidence nmap never overruled)."""
    return re.compile(rf"^{name}(?:/({version})|(?=\s*[(;,+]|\s*$|\s+\d|\s+{_MODULE}))",
                      re.I | re.A)


# What follows a server's name when it lists its modules ("Apache mod_ssl/2.4 OpenSSL/3"):
# not another product's name ("Apache Tomcat/9.0.83" is Tomcat, "Apache ActiveMQ/5.18")
_MODULE = (r"(?:mod_\w+|OpenSSL|LibreSSL|BoringSSL|PHP|Perl|Python|SVN|DAV|FrontPage|"
           r"Phusion[_ ]Passenger|mpm\w*)/")


_SERVER_PRODUCTS: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (_server("nginx"), "nginx", "f5", "nginx"),
    (_server("Apache"), "Apache httpd", "apache", "http_server"),
    (_server("Microsoft-IIS"), "Microsoft IIS httpd", "microsoft",
     "internet_information_services"),
    (_server("lighttpd"), "lighttpd", "lighttpd", "lighttpd"),
    (_server("openresty"), "OpenResty web app server", "openresty", "openresty"),
    (_server("Caddy"), "Caddy httpd", "caddyserver", "caddy"),
    # "cloudflare" and the older "cloudflare-nginx": both Cloudflare's edge
    (re.compile(r"^cloudflare", re.I | re.A), "cloudflare", "cloudflare", "cloudflare"),
    (_server("SimpleHTTP"), "SimpleHTTPServer", "python", "simplehttpserver"),
    (_server("gunicorn"), "Gunicorn", "gunicorn", "gunicorn"),
    # "Jetty(9.4.51.v20230217)": the version is the dotted numbers, not the dot after them
    (re.compile(r"^Jetty\((\d+(?:\.\d+)*)", re.I | re.A), "Jetty", "eclipse", "jetty"),
    (_server("tinyproxy"), "tinyproxy", "tinyproxy_project", "tinyproxy"),
    (_server("squid", r"[\d.]+\w*"), "Squid http proxy", "squid-cache", "squid"),
)
# Products that are forward proxies: the service is nmap's "http-proxy", not "http".
_PROXY_PRODUCTS = frozenset({"tinyproxy", "Squid http proxy"})


def parse_http_headers(data: bytes) -> tuple[tuple[str, str], ...]:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers: list[tuple[str, str]] = []
    for line in head.split(b"\n")[1:64]:
        if b":" in line:
            name, value = line.split(b":", 1)
            headers.append((sanitize(name.strip(), 64).lower(), sanitize(value.strip(), 256)))
    return tuple(headers)


# A plain request on a TLS port: the server says so in its error page. The port speaks
# TLS; the answer inside TLS is the real identification (engine follows up with TLS).
_PLAIN_ON_TLS = re.compile(
    rb"plain HTTP request was sent to HTTPS port"  # nginx
    rb"|speaking plain HTTP to an SSL-enabled server port"  # Apache httpd
    rb"|Client sent an HTTP request to an HTTPS server",  # Go net/http
    re.I,
)
# Servers that send no Server header but say who they are in the body.
_BODY_PRODUCTS: tuple[tuple[re.Pattern[bytes], str, str, str], ...] = (
    (re.compile(rb"<pre>\s*s_server [^\n]*-www"), "OpenSSL s_server -www httpd", "openssl",
     "openssl"),
)


def parse_http(data: bytes, *, is_tls: bool = False) -> ServiceInfo | None:
    status = _STATUS.match(data)
    if not status:
        return None
    headers = parse_http_headers(data)
    server = next((v for k, v in headers if k == "server"), "")
    powered = next((v for k, v in headers if k == "x-powered-by"), "")
    service = "https" if is_tls else "http"
    extra = f"status {status.group(2).decode()}" + (f"; X-Powered-By: {powered}" if powered else "")
    # Only below the confidence at which the engine stops, so that it goes on to TLS.
    # The servers' own refusal is a 400; a page of any other status quoting the phrase (a
    # FAQ, a hostile page) is an ordinary page (it was taken for TLS, title and all lost)
    plain_on_tls = (not is_tls and status.group(2) == b"400"
                    and _PLAIN_ON_TLS.search(data) is not None)
    if plain_on_tls:
        service = "https"
        extra += "; plain HTTP refused: the port speaks TLS"
    for pattern, product, vendor, cpe_name in _SERVER_PRODUCTS:
        m = pattern.match(server)
        if m:
            version = (m.group(1) or "") if m.groups() else ""
            # "Apache/2.4.57 (Debian) OpenSSL/3.0.11": the rest as sent ("Debian)
            # OpenSSL/3.0.11" lost its bracket: a review), bar one comment alone
            rest = server[m.end():].strip()
            if rest[:1] == "(" and rest.find(")") == len(rest) - 1:
                rest = rest[1:-1].strip()
            if rest:
                extra += f"; {rest}"
            if product in _PROXY_PRODUCTS and not is_tls:
                service = "http-proxy"
            extra = _clip(extra, BANNER_EXCERPT)
            return ServiceInfo(service=service, product=product, version=version,
                               extra_info=extra, cpe=_cpe(vendor, cpe_name, version),
                               is_tls=is_tls or plain_on_tls,
                               method="http:plain-on-tls" if plain_on_tls else "http:server-header",
                               confidence=7 if plain_on_tls else 10, headers=headers)
    extra = _clip(extra, BANNER_EXCERPT)
    if not server:
        for body, product, vendor, cpe_name in _BODY_PRODUCTS:
            if body.search(data):
                return ServiceInfo(service=service, product=product, extra_info=extra,
                                   cpe=_cpe(vendor, cpe_name), is_tls=is_tls,
                                   method="http:body-signature", confidence=9, headers=headers)
    if plain_on_tls:
        return ServiceInfo(service=service, extra_info=extra, is_tls=True,
                           method="http:plain-on-tls", confidence=5, headers=headers)
    # A Server header none of our patterns knows: its first word split at "/" is a guess
    # (``SERVER_HEADER_GUESS``: nmap's http lines are asked after, and name it when they
    # can, e.g. "Python/3.9 aiohttp/3.8.1" is aiohttp 3.8.1, not Python 3.9: a review)
    return ServiceInfo(service=service, product=server.split("/")[0] if server else "",
                       version=server.split("/", 1)[1].split(" ")[0] if "/" in server else "",
                       extra_info=extra, is_tls=is_tls,
                       method=SERVER_HEADER_GUESS if server else "http:status-line",
                       confidence=8 if server else 6, headers=headers)


# -- Redis / PostgreSQL (answers to our probes) ------------------------------------------

_REDIS_VERSION = re.compile(rb"redis_version:([\d.]+)")


def parse_redis(data: bytes) -> ServiceInfo | None:
    m = _REDIS_VERSION.search(data)
    if m:
        version = _text(m.group(1))
        return ServiceInfo(service="redis", product="Redis key-value store", version=version,
                           cpe=_cpe("redis", "redis", version), method="probe:redis-info",
                           confidence=10)
    if data.startswith((b"-NOAUTH", b"-DENIED", b"-ERR operation not permitted")):
        return ServiceInfo(service="redis", product="Redis key-value store",
                           extra_info="authentication required", method="probe:redis-info",
                           confidence=9)
    return None


def parse_postgres_ssl_reply(data: bytes) -> ServiceInfo | None:
    """Answer to an SSLRequest: exactly one byte, 'S' (will do TLS) or 'N' (will not)."""
    if data in (b"S", b"N"):
        return ServiceInfo(service="postgresql", product="PostgreSQL DB",
                           extra_info="TLS offered" if data == b"S" else "TLS not offered",
                           cpe="cpe:/a:postgresql:postgresql", method="probe:postgres-sslrequest",
                           confidence=8)
    if data.startswith(b"E") and b"SFATAL" in data:
        return ServiceInfo(service="postgresql", product="PostgreSQL DB",
                           cpe="cpe:/a:postgresql:postgresql", method="probe:postgres-error",
                           confidence=8)
    return None


# PostgreSQL ErrorResponse fields: one type byte, a NUL-terminated value, a NUL at the end
# (PostgreSQL protocol, "Error and Notice Message Fields").
_PG_FIELD = re.compile(rb"([A-Za-z])([^\x00]*)\x00")


def parse_postgres_error_fields(data: bytes) -> dict[str, str]:
    """The fields of a PostgreSQL ErrorResponse ('E', int32 length, fields), or {}."""
    if len(data) < 6 or data[:1] != b"E":
        return {}
    length = int.from_bytes(data[1:5], "big")
    if length < 4 or length > 4096:
        return {}
    body = data[5:1 + length]
    return {m.group(1).decode(): _text(m.group(2), BANNER_EXCERPT)
            for m in _PG_FIELD.finditer(body)}


_PG_SUPPORTS = re.compile(r"server supports (\d+)\.\d+ to (\d+)\.\d+")


def parse_postgres_version_error(data: bytes) -> ServiceInfo | None:
    """Answer to a StartupMessage with a protocol version no server supports.

    PostgreSQL refuses it before any authentication with an ErrorResponse whose
    fields date the server: the non-localized severity field ``V`` exists since
    9.6 (nmap words this "9.6.0 or later"), and "server supports 3.0 to 3.0"
    (protocol 2 removed) means 14 or later. The exact version is never sent
    before authentication.
    """
    fields = parse_postgres_error_fields(data)
    if fields.get("S") not in ("FATAL", "ERROR") and fields.get("V") not in ("FATAL", "ERROR"):
        return None
    message = fields.get("M", "")
    if not fields.get("C", "").startswith("0A") and "protocol" not in message:
        return None
    version = "9.6.0 or later" if "V" in fields else ""
    extra = [_clip(message, 120)] if message else []  # fields are sanitized already
    supports = _PG_SUPPORTS.search(message)
    if supports and supports.group(1) == "3" and version:
        extra.append("protocol 2 removed: 14 or later")
    return ServiceInfo(service="postgresql", product="PostgreSQL DB", version=version,
                       extra_info="; ".join(extra), cpe="cpe:/a:postgresql:postgresql",
                       method="probe:postgres-startup-version", confidence=10 if version else 9)


# -- answers to a probe meant for another protocol ---------------------------------------


def is_tls_record(data: bytes) -> bool:
    """A TLS record header: alert (21) or handshake (22), major version 3."""
    return len(data) >= 5 and data[0] in (0x15, 0x16) and data[1] == 0x03


_XMPP_NAMESPACE = re.compile(rb"""xmlns=['"]jabber:(client|server)['"]""")


def parse_xmpp_stream(data: bytes) -> ServiceInfo | None:
    """An XMPP server's stream header (RFC 6120 4.2): what it answers to anything, our
    GET included (a stream error follows). The namespace says client or server stream;
    the STARTTLS stage then upgrades the same way (RFC 6120 5)."""
    head = data[:4096]
    if b"<stream:stream" not in head or b"http://etherx.jabber.org/streams" not in head:
        return None
    found = _XMPP_NAMESPACE.search(head)
    kind = found.group(1).decode() if found else "client"
    return ServiceInfo(service=f"xmpp-{kind}", method="reply:xmpp-stream", confidence=9)


def parse_foreign_reply(data: bytes) -> ServiceInfo | None:
    """What a non-HTTP service says to ``GET / HTTP/1.0``: enough to pick the next probe.

    Confidence stays below 8 so the engine asks the service in its own protocol
    (INFO for Redis, a startup packet for PostgreSQL, a handshake for TLS).
    """
    if is_tls_record(data):
        return ServiceInfo(service="ssl", is_tls=True, method="reply:tls-record", confidence=4)
    xmpp = parse_xmpp_stream(data)
    if xmpp is not None:
        return xmpp
    if data.startswith(b"AMQP") and len(data) == 8:
        # An AMQP broker answers a request it cannot read with the protocol header it
        # speaks, then closes (AMQP 0-9-1, 4.2.2): ask it properly next.
        return ServiceInfo(service="amqp", method="reply:amqp-header", confidence=6)
    if data.startswith((b"-ERR ", b"-NOAUTH", b"-DENIED", b"-WRONGTYPE")):
        return ServiceInfo(service="redis", product="Redis key-value store",
                           cpe="cpe:/a:redis:redis", method="reply:redis-error", confidence=7)
    fields = parse_postgres_error_fields(data)
    if fields.get("S") == "FATAL" or (data.startswith(b"EFATAL") and b"startup packet" in data):
        return ServiceInfo(service="postgresql", product="PostgreSQL DB",
                           cpe="cpe:/a:postgresql:postgresql", method="reply:postgres-error",
                           confidence=7)
    return None


# -- RDP ---------------------------------------------------------------------------------

_RDP_PROTOCOLS = {0: "standard RDP security", 1: "TLS", 2: "CredSSP (NLA)", 4: "RDSTLS",
                  8: "CredSSP with early user auth"}
_RDP_FAILURES = {1: "SSL required by server", 2: "SSL not allowed by server",
                 3: "SSL certificate not on server", 4: "inconsistent flags",
                 5: "hybrid (CredSSP) required by server", 6: "SSL with user auth required"}


def parse_rdp_confirm(data: bytes) -> ServiceInfo | None:
    """X.224 Connection Confirm in a TPKT ([MS-RDPBCGR] 2.2.1.2), with the optional
    RDP_NEG_RSP (type 2: selected protocol) or RDP_NEG_FAILURE (type 3: code)."""
    if len(data) < 11 or data[0] != 0x03 or data[1] != 0x00:
        return None
    tpkt_length = int.from_bytes(data[2:4], "big")
    if tpkt_length < 11 or data[5] & 0xF0 != 0xD0:
        return None
    extra = ""
    if len(data) >= 19 and data[11] in (0x02, 0x03):
        value = int.from_bytes(data[15:19], "little")
        if data[11] == 0x02:
            extra = f"selected protocol: {_RDP_PROTOCOLS.get(value, hex(value))}"
        else:
            extra = f"negotiation failure: {_RDP_FAILURES.get(value, hex(value))}"
    return ServiceInfo(service="ms-wbt-server", extra_info=extra, method="probe:rdp-negotiation",
                       confidence=8)


BannerParser = Callable[[bytes], ServiceInfo | None]


def parse_banner(data: bytes, port_hint: str = "") -> ServiceInfo | None:
    """Try every first-speaker recogniser on what a service sent unasked."""
    for parser in (parse_ssh, parse_mysql, parse_misc):
        info = parser(data)
        if info:
            return info
    return parse_greeting(data, port_hint)
