"""Identification depth (issue 15) against real servers on loopback.

- the continuation rule: our RDP probe names ``ms-wbt-server`` without a product; nmap's
  probes that can name it then name xrdp (a real xrdp), as ``nmap -sV`` does;
- HTTP pivots from a real nginx: title after a same-host redirect, the redirect target,
  Server, the favicon hash (Shodan's convention, computed here from the file served);
  X-Powered-By from a real stdlib HTTP server; JARM on nginx's TLS port equal to the
  independent reference of tests/integration/test_jarm_reference.py;
- bounds: a redirect to another loopback host is never followed (a listener there sees
  no connection); endless headers, binary junk and a trickling (slowloris) server end
  within the identification budget with bounded fields.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import mmh3
import pytest

from probers.service.engine import Endpoint, Settings, identify
from schemas.records import ServiceInfo
from stream_processors.stages import NmapFallback
from tests import daemons, loopback, servers
from tests.integration.test_jarm_reference import reference_jarm

pytestmark = pytest.mark.slow

# A tiny PNG-ish icon: its bytes are what matter to the hash, not that it renders.
ICON = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2


def _own_address(port: int) -> str:
    if port < 1024 and not servers.is_root():
        pytest.skip(f"binding port {port} needs root")
    for _ in range(50):
        host = f"127.0.0.{random.randint(2, 250)}"
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return host
    pytest.skip(f"no loopback address with port {port} free")


def _identify(host: str, port: int, *, fallback: bool = False, budget: float = 10.0,
              **options: object) -> ServiceInfo:
    settings = Settings(budget=budget, **options)  # type: ignore[arg-type]
    return asyncio.run(identify(Endpoint(host, port), settings,
                                NmapFallback() if fallback else None))


def _nmap_sv(host: str, port: int) -> tuple[str, str, str]:
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap is not installed")
    proc = subprocess.run([nmap, "-sV", "-n", "-Pn", "-p", str(port), host, "-oX", "-"],
                          capture_output=True, timeout=120, check=True)
    service = ET.fromstring(proc.stdout).find(".//port/service")
    assert service is not None
    return service.get("name", ""), service.get("product", ""), service.get("version", "")


# -- xrdp: our probe names the service, nmap's probes name the product ------------------


def test_xrdp_is_named_by_nmaps_probes_after_our_rdp_probe_names_the_service() -> None:
    host = _own_address(3389)
    try:
        cm = daemons.start_xrdp(host, 3389)
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(f"xrdp unavailable: {exc}")
    try:
        info = _identify(host, 3389, fallback=True)
        nmap_service, nmap_product, _ = _nmap_sv(host, 3389)
    finally:
        cm.__exit__(None, None, None)
    assert server.port == 3389
    # Then our RDP probe ran first, and nmap's probes were asked for the product only
    assert info.tried[0] == "rdp-negotiation"
    assert info.tried[-1] == "nmap-service-probes:ms-wbt-server"
    assert (info.service, info.product, info.cpe) == (
        "ms-wbt-server", "xrdp", "cpe:/a:jay_sorg:xrdp")
    # And our own finding stays in the notes
    assert "selected protocol" in info.extra_info
    # The same product nmap -sV names
    assert (nmap_service, nmap_product) == ("ms-wbt-server", "xrdp")


class SlowFirstLoad:
    """A fallback whose one-time preparation takes longer than a port's whole budget
    (NmapFallback's first load and compile of nmap's lines took ~8 s on a slow machine,
    a fault this test cannot time for real), then answers at once. Named as a fake."""

    def __init__(self) -> None:
        self.loaded = False
        self.remaining: list[float] = []

    async def prepare(self) -> None:
        if not self.loaded:
            await asyncio.sleep(1.5)
            self.loaded = True

    async def __call__(self, ep: Endpoint, is_tls: bool, first: bytes | None,
                       remaining: float, service: str = "") -> ServiceInfo | None:
        await self.prepare()  # as NmapFallback loads on its first call
        self.remaining.append(remaining)
        return ServiceInfo(service="pop3", product="FakePOP", confidence=10, method="fake")

    async def prepare_answer(self, probe_name: str, service: str = "") -> None:
        await self.prepare()  # as NmapFallback loads and compiles on its first call

    async def match_answer(self, probe_name: str, answer: bytes, is_tls: bool,
                           service: str = "") -> ServiceInfo | None:
        return None  # no match


def test_the_fallbacks_first_load_is_not_the_ports_budget() -> None:
    # Given a POP3 server our banner probe names without a product (nmap is then asked
    # for it), and a fallback whose first load outlasts the port's budget
    fallback = SlowFirstLoad()
    with loopback.listen(loopback.banner(b"+OK\r\n"), ("127.0.0.1",)) as listener:
        info = asyncio.run(identify(Endpoint("127.0.0.1", listener.port),
                                    Settings(budget=1.0, banner_wait=0.3), fallback))
    # Then the fallback still answers within the budget left after our probe, not
    # what its first load left of it (the first xrdp of a process read unnamed on a
    # slower machine: CI, 2026-12-06)
    assert len(fallback.remaining) == 1 and fallback.remaining[0] > 0.5
    assert (info.service, info.product) == ("pop3", "FakePOP")


# -- nginx: title, redirect, Server, favicon, JARM --------------------------------------


@contextlib.contextmanager
def start_site(host: str = "127.0.0.1", *, tls: bool = False,
               other_host: str = "") -> Iterator[servers.Server]:
    """nginx serving: / -> 302 /app/, /app/ a titled page linking /static/icon.png;
    /away -> 302 to ``other_host`` (another loopback address)."""
    nginx = servers.require_binary("nginx", "/usr/sbin/nginx")
    port = servers.free_port(host)
    with servers._workdir("site") as work:
        (work / "logs").mkdir()
        (work / "html" / "app").mkdir(parents=True)
        (work / "html" / "static").mkdir()
        (work / "html" / "app" / "index.html").write_text(
            "<html><head><title>  portwatch\n test &amp; app </title>"
            '<link rel="icon" href="/static/icon.png"></head><body>hi</body></html>\n')
        (work / "html" / "static" / "icon.png").write_bytes(ICON)
        listen = f"{host}:{port}"
        tls_lines = ""
        if tls:
            cert, key = servers.make_self_signed_cert(work)
            listen += " ssl"
            tls_lines = f"ssl_certificate {cert};\n        ssl_certificate_key {key};"
        user = "user root;\n" if servers.is_root() else ""
        away = f"return 302 http://{other_host}:{port}/;" if other_host else "return 404;"
        (work / "nginx.conf").write_text(f"""{user}daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    types {{ image/png png; text/html html; }}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {listen};
        {tls_lines}
        root {work}/html;
        location = / {{ {"return 302 /app/;" if not other_host else away} }}
    }}
}}
""")
        argv = [nginx, "-p", str(work), "-c", str(work / "nginx.conf"),
                "-e", str(work / "logs" / "error.log")]
        with servers.run_server(argv, host, port, work, name="nginx") as server:
            yield server


def _shodan_hash(icon: bytes) -> int:
    encoded = base64.b64encode(icon).decode()
    wrapped = "".join(encoded[i:i + 76] + "\n" for i in range(0, len(encoded), 76))
    return int(mmh3.hash(wrapped.encode(), 0, signed=True))


def _nginx_version() -> str:
    for package in ("nginx-light", "nginx-core", "nginx"):
        found = servers.debian_version(package)
        if found:
            return servers.upstream_version(found)
    pytest.skip("nginx is not installed")


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_nginx_title_redirect_server_and_favicon(tls: bool) -> None:
    version = _nginx_version()
    try:
        cm = start_site(tls=tls)
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(f"nginx unavailable: {exc}")
    try:
        info = _identify(server.host, server.port)
        reference = reference_jarm(server.port) if tls else ""
    finally:
        cm.__exit__(None, None, None)
    # Then the redirect target is kept as sent (nginx makes it absolute: same host and
    # port, so it is followed), and the title is the page it leads to
    scheme = "https" if tls else "http"
    assert info.http_redirect == (
        f"{scheme}://{server.host}:{server.port}/app/")
    assert info.http_title == "portwatch test & app"
    assert info.http_server == f"nginx/{version}"
    assert info.http_powered_by == ""
    # The favicon the page links, hashed as Shodan does
    assert info.favicon_mmh3 == _shodan_hash(ICON)
    # Our own probes' CPE for the product, escaped as nmap writes it
    assert info.cpe == f"cpe:/a:f5:nginx:{version}"
    if tls:
        assert info.is_tls and info.service == "https"
        assert info.jarm == reference and len(reference) == 62
        assert reference != "0" * 62
    else:
        assert info.jarm == ""


def test_x_powered_by_and_the_default_favicon_path() -> None:
    # Given a real stdlib HTTP server that says who powers it and serves any path
    handler = loopback.http_handler("Werkzeug/3.0.1 Python/3.11.2",
                                    {"X-Powered-By": "Express"})
    with loopback.listen(handler) as listener:
        info = _identify("127.0.0.1", listener.port)
    assert info.http_server == "Werkzeug/3.0.1 Python/3.11.2"
    assert info.http_powered_by == "Express"
    assert info.http_title == ""
    # /favicon.ico answered text/html: not an icon, so no hash (None, never 0)
    assert info.favicon_mmh3 is None


def test_a_redirect_to_another_host_is_recorded_but_never_followed() -> None:
    other = f"127.0.0.{random.randint(2, 250)}"  # another loopback host
    hits: list[bytes] = []

    def record(conn: socket.socket) -> None:
        hits.append(conn.recv(1024))

    try:
        cm = start_site(other_host=other)
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(f"nginx unavailable: {exc}")
    try:
        with loopback.listen(record, (other,), server.port):
            info = _identify(server.host, server.port)
    finally:
        cm.__exit__(None, None, None)
    assert info.http_redirect == f"http://{other}:{server.port}/"
    assert hits == []


# -- hostile peers -----------------------------------------------------------------------


def _trickle(conn: socket.socket) -> None:
    """Slowloris in reverse: a status line, then one header byte every 0.2 s for 30 s."""
    conn.recv(1024)
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Slow: ")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.sendall(b"a")
        time.sleep(0.2)


def _endless_headers(conn: socket.socket) -> None:
    conn.recv(1024)
    conn.sendall(b"HTTP/1.1 200 OK\r\nServer: nginx\r\n")
    deadline = time.monotonic() + 30
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            conn.sendall(b"X-Junk: " + b"\xff\x00<title>" * 64 + b"\r\n")


def _binary_junk(conn: socket.socket) -> None:
    conn.recv(1024)
    rng = random.Random(15)
    conn.sendall(b"HTTP/1.1 302 \xff\xfe\r\nLocation: \x00\x1b[31m/\xff\r\nServer: \x1b]0;x\x07"
                 b"\r\n\r\n<title>\x1b[2J" + bytes(rng.randrange(256) for _ in range(5000)))


@pytest.mark.parametrize("handler", [_trickle, _endless_headers, _binary_junk],
                         ids=["trickle", "endless-headers", "binary-junk"])
def test_hostile_http_peers_end_within_the_budget_with_bounded_fields(handler: object) -> None:
    with loopback.listen(handler) as listener:  # type: ignore[arg-type]
        info = _identify("127.0.0.1", listener.port, budget=6.0, jarm=False)
    # Then identification finished (the budget bounds it) and every field is printable
    for value in (info.http_title, info.http_redirect, info.http_server,
                  info.http_powered_by, info.banner):
        assert value.isascii() and value.isprintable()
        assert len(value) <= 512
    assert info.service == "http"


# -- JSON version endpoints (no Elasticsearch or Kubernetes is packaged for this machine) --

ES_ROOT = (b'{"name":"node-1","cluster_name":"docker-cluster","version":{"number":"8.11.1",'
           b'"build_flavor":"default"},"tagline":"You Know, for Search"}')
K8S_STATUS = (b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
              b'"message":"forbidden","reason":"Forbidden","details":{},"code":403}')
K8S_VERSION = (b'{"major":"1","minor":"28","gitVersion":"v1.28.2","gitCommit":"89a4ea3e",'
               b'"platform":"linux/amd64"}')


def _replay(routes: dict[bytes, tuple[int, bytes]], context: object = None) -> loopback.Handler:
    """FAKE server: replays recorded JSON answers by path (Elasticsearch and the Kubernetes
    API server cannot be installed here); anything else is 404."""
    def answer(conn: socket.socket) -> None:
        request = conn.recv(4096)
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
        status, body = routes.get(path, (404, b'{"error":"not found"}'))
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (status, len(body), body))

    def handle(conn: socket.socket) -> None:
        if context is None:
            answer(conn)
            return
        with context.wrap_socket(conn, server_side=True) as tls:  # type: ignore[attr-defined]
            answer(tls)
    return handle


def test_elasticsearch_is_named_from_the_json_of_its_root() -> None:
    with loopback.listen(_replay({b"/": (200, ES_ROOT)})) as listener:
        info = _identify("127.0.0.1", listener.port, jarm=False)
    assert (info.service, info.product, info.version, info.cpe, info.method) == (
        "http", "Elasticsearch", "8.11.1", "cpe:/a:elastic:elasticsearch:8.11.1",
        "http:json-version")


def test_kubernetes_api_status_answer_leads_to_its_version(tmp_path: object) -> None:
    from pathlib import Path

    context = loopback.self_signed(Path(str(tmp_path)))
    routes = {b"/": (403, K8S_STATUS), b"/version": (200, K8S_VERSION)}
    with loopback.listen(_replay(routes, context)) as listener:
        info = _identify("127.0.0.1", listener.port, jarm=False)
    assert (info.service, info.product, info.version, info.cpe) == (
        "https", "Kubernetes API server", "1.28.2", "cpe:/a:kubernetes:kubernetes:1.28.2")
    assert info.tried[-1] == "kubernetes-version"


def test_a_plain_page_quoting_nginxs_tls_refusal_is_a_plain_page() -> None:
    # A real HTTP server whose 200 page quotes "The plain HTTP request was sent to HTTPS
    # port" (a FAQ): the port is plain HTTP with its title (before: taken for TLS, the
    # title fetched over TLS and lost, and the TLS stage said "could not test")
    page = (b"<html><head><title>Web server FAQ</title></head><body><p>Seeing \"The plain "
            b"HTTP request was sent to HTTPS port\"? Use https://.</p></body></html>")
    with loopback.listen(loopback.http_handler("nginx/1.24.0", body=page)) as server:
        info = _identify("127.0.0.1", server.port)
    assert (info.service, info.product, info.version, info.is_tls, info.http_title) == (
        "http", "nginx", "1.24.0", False, "Web server FAQ")


def _answering(answer: Callable[[socket.socket, bytes], None]) -> loopback.Handler:
    """A test web server's connection handler: it reads the request's head (bounded in
    time and size; nothing when the client went away) and lets ``answer`` reply to it."""
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            request = loopback.request_head(conn)
            if request is not None:
                answer(conn, request)
    return handle


def _paced_site(page: bytes, icon: bytes, *, pause_after: int, pause: float,
                length: bool = True, eol: bytes = b"\r\n", hold: float = 0.0,
                server: bytes = b"nginx/1.24.0") -> loopback.Handler:
    """A web server whose icon is sent in two parts with a pause between them, as a slow
    or loaded server does; with ``length`` False it declares no Content-Length, with
    ``hold`` it keeps the connection open that long after answering (ignoring the
    request's Connection: close), and ``eol`` ends its header lines."""
    def answer(conn: socket.socket, request: bytes) -> None:
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
        body, kind = (icon, b"image/x-icon") if path == b"/i.ico" else (page, b"text/html")
        lines = [b"HTTP/1.1 200 OK", b"Server: " + server, b"Content-Type: " + kind]
        if length:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        conn.sendall(eol.join([*lines, b"", b""]) + body[:pause_after])
        time.sleep(pause)
        conn.sendall(body[pause_after:])
        time.sleep(hold)
    return _answering(answer)


PACED_PAGE = b'<html><head><title>Paced</title><link rel="icon" href="/i.ico"></head></html>'


def test_an_icon_sent_with_a_pause_is_hashed_whole() -> None:
    # Given an icon of 60 KB whose server pauses half a second after 30 KB
    icon = random.Random(7).randbytes(60_000)
    handler = _paced_site(PACED_PAGE, icon, pause_after=30_000, pause=0.5)
    with loopback.listen(handler) as listener:
        info = _identify("127.0.0.1", listener.port)
    # Then the hash is the whole icon's (before: of the 30 KB before the pause, another
    # hash each time the pause fell elsewhere)
    assert info.http_title == "Paced"
    assert info.favicon_mmh3 == _shodan_hash(icon)


def test_an_icon_larger_than_the_cap_is_not_hashed() -> None:
    # Given an icon larger than what is read of a body: its first bytes' hash would match
    # no real icon, so there is none
    from probers.service.http_meta import BODY_CAP

    icon = random.Random(8).randbytes(BODY_CAP + 100_000)
    with loopback.listen(_paced_site(PACED_PAGE, icon, pause_after=0, pause=0)) as listener:
        info = _identify("127.0.0.1", listener.port)
    assert (info.http_title, info.favicon_mmh3) == ("Paced", None)


def test_a_title_past_the_first_read_of_the_page_is_found() -> None:
    # Given a page whose <title> comes after 18 KB of inline style (past what the
    # identifying probe reads): the page is fetched whole for its title
    page = (b"<html><head><style>" + b"p{margin:0}" * 1_700 + b"</style><title>Late Title"
            b"</title></head></html>")
    with loopback.listen(loopback.http_handler("nginx/1.24.0", body=page)) as listener:
        info = _identify("127.0.0.1", listener.port)
    assert info.http_title == "Late Title"



@pytest.mark.parametrize(("server_header", "product"), [
    ("Docker/24.0.7 (linux)", "Docker"), ("CouchDB/3.3.2 (Erlang OTP/25)", "CouchDB")])
def test_an_api_server_found_by_its_server_header_is_red(server_header: str,
                                                         product: str) -> None:
    # Given a real HTTP server answering as a Docker API or a CouchDB would, through the
    # stage both transports run (identification, then risk)
    from schemas.records import OpenPort, RiskColor, Target
    from stream_processors.stages import identify_port, make_context

    ctx = make_context(banner_wait=1.0, identify_budget=8, use_nmap_probes=False,
                       tls_enumeration=False)
    with loopback.listen(loopback.http_handler(server_header)) as server:
        finding = asyncio.run(identify_port(OpenPort(
            scan_id="s", target=Target("127.0.0.1", "127.0.0.1"), port=server.port), ctx))
    # Then it is red for what it is (before: green, "web server; meant to be public")
    assert finding is not None
    assert (finding.service.service, finding.service.product) == ("http", product)
    assert finding.risk_color is RiskColor.RED
    assert "web server" not in finding.risk_reason


@pytest.mark.parametrize(("length", "eol"), [(False, b"\r\n"), (True, b"\n")],
                         ids=["no-length", "bare-lf-head"])
def test_an_icon_from_a_server_that_holds_the_connection_is_hashed(length: bool,
                                                                  eol: bytes) -> None:
    # Given a server that keeps the connection open after its answer (ignoring our
    # Connection: close), declaring no length, or ending its head with bare line feeds
    icon = random.Random(9).randbytes(1_071)
    handler = _paced_site(PACED_PAGE, icon, pause_after=len(icon), pause=0, length=length,
                          eol=eol, hold=8)
    with loopback.listen(handler) as listener:
        info = _identify("127.0.0.1", listener.port)
    # Then the icon is hashed (a review of the first fix: the read ran to the timeout and
    # threw away what had arrived)
    assert (info.http_title, info.favicon_mmh3) == ("Paced", _shodan_hash(icon))



@pytest.mark.parametrize(("pieces", "named"), [
    (((b"SSH-2.0-OpenSSH_9.6", 0.0), (b"p1 Ubuntu-3ubuntu13\r\n", 0.5)),
     ("ssh", "OpenSSH", "9.6p1")),
    (((b"SSH-2.0-Open", 0.0), (b"SSH_9.2p1 Debian-2\r\n", 0.6)),
     ("ssh", "OpenSSH", "9.2p1")),
    (((b"220-Welcome to the archive\r\n", 0.0), (b"220 ProFTPD 1.3.8 Server (Debian)\r\n", 1.0)),
     ("ftp", "ProFTPD", "1.3.8")),
], ids=["ssh-cut-in-its-version", "ssh-cut-in-its-product", "ftp-multi-line"])
def test_a_greeting_sent_in_pieces_is_read_to_its_end(
        pieces: tuple[tuple[bytes, float], ...], named: tuple[str, str, str]) -> None:
    # Given a server whose greeting comes in two writes, the second after a pause longer
    # than the greeting window (0.25 s on loopback) and than the read's idle cut (0.3 s)
    with loopback.listen(loopback.in_pieces(*pieces, then_wait=5)) as server:
        info = _identify("127.0.0.1", server.port)
    # Then the whole greeting names the service (before: the first piece alone named
    # "OpenSSH 9.6", a product "Open", or nothing at all for the FTP server)
    assert (info.service, info.product, info.version) == named
    assert info.confidence >= 8


@pytest.mark.parametrize(("pause", "greeting", "named"), [
    (3.0, b"220 (vsFTPd 3.0.3)\r\n", ("ftp", "vsftpd", "3.0.3")),
    (5.0, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", ("ssh", "OpenSSH", "9.2p1")),
], ids=["ftp-after-3s", "ssh-after-5s"])
def test_a_greeting_held_back_for_seconds_is_still_heard(
        pause: float, greeting: bytes, named: tuple[str, str, str]) -> None:
    # Given a server that greets only seconds after it accepts (a reverse-DNS or ident
    # lookup first, an SMTP greet pause), past banner_wait (2 s): a review found vsftpd,
    # MariaDB and OpenSSH behind such a delay unidentified and yellow, while nmap -sV,
    # whose NULL probe waits 6 s, named them
    with loopback.listen(loopback.in_pieces((greeting, pause), then_wait=5)) as server:
        info = _identify("127.0.0.1", server.port)
    # Then the NULL probe's connection, still open and silent, is listened to long
    # enough to hear it
    assert (info.service, info.product, info.version) == named
    assert info.tried[0] == "null+http-get"


def test_a_silent_port_says_why_nmaps_probes_named_nothing() -> None:
    # Given a port that accepts and never says a word, identified with nmap's probes
    # (a budget that leaves nmap time after our guesses, the TLS one's 1.5 s included)
    with loopback.listen(loopback.silent(hold_seconds=30)) as server:
        info = _identify("127.0.0.1", server.port, fallback=True, budget=6.5)
    # Then it stays unidentified, and says what nmap left unsent (before: "nmap:
    # TimeoutError", our timeout firing with nmap's own budget)
    assert info.method == "unidentified"
    assert "nmap: no match (budget exhausted, " in info.extra_info
    assert "nmap: TimeoutError" not in info.extra_info


@pytest.mark.parametrize(("server_header", "named"), [
    ("Python/3.9 aiohttp/3.8.1", ("aiohttp", "3.8.1", "cpe:/a:aiohttp:aiohttp:3.8.1")),
    ("TornadoServer/6.1", ("Tornado httpd", "6.1", "cpe:/a:tornadoweb:tornado:6.1")),
    ("Apache-Coyote/1.1", ("Apache Tomcat/Coyote JSP engine", "1.1",
                           "cpe:/a:apache:coyote_http_connector:1.1")),
    ("Acme-Unknown/2.3", ("Acme-Unknown", "2.3", "")),
], ids=["aiohttp", "tornado", "coyote", "unknown"])
def test_a_server_header_ours_does_not_know_is_named_by_nmaps_lines_on_its_answer(
        server_header: str, named: tuple[str, str, str]) -> None:
    # Given a real HTTP server whose Server header none of our patterns knows (CDN
    # headers too), through the stage both transports run, nmap's database loaded
    from schemas.records import OpenPort, Target
    from stream_processors.stages import identify_port, make_context

    ctx = make_context(banner_wait=1.0, identify_budget=8, tls_enumeration=False)
    with loopback.listen(loopback.http_handler(server_header, {"CF-RAY": "8a1b2c-LHR"})) as s:
        finding = asyncio.run(identify_port(OpenPort(
            scan_id="s", target=Target("127.0.0.1", "127.0.0.1"), port=s.port), ctx))
    assert finding is not None
    info = finding.service
    # Then nmap's GetRequest lines name it from the answer already read (it was the
    # header's first word: "Python" 3.9 for aiohttp, a review), with its CPE, sending
    # nothing more; an unknown header keeps our guess; the CDN headers stay read
    assert (info.service, info.product, info.version, info.cpe.split(" ")[0]) == (
        "http", *named)
    assert info.tried == ("null+http-get",)
    assert info.method.startswith("nmap:GetRequest line ") if named[2] else (
        info.method == "http:server-header-guess")
    assert finding.cdn.provider == "cloudflare"


@pytest.mark.parametrize(("greeting", "named"), [
    (b"SSH-2.0-ROSSSH\r\n", ("MikroTik RouterOS sshd", "")),
    (b"SSH-2.0-mod_sftp/1.3.8\r\n", ("ProFTPD mod_sftp", "1.3.8")),
    (b"SSH-2.0-Sun_SSH_1.1.4\r\n", ("SunSSH", "1.1.4")),
    (b"SSH-2.0-Acme_Unknown_SSH_7.1\r\n", ("Acme_Unknown_SSH", "7.1")),
], ids=["routeros", "mod_sftp", "sunssh", "unknown"])
def test_an_ssh_greeting_ours_does_not_know_is_named_by_nmaps_lines_on_it(
        greeting: bytes, named: tuple[str, str]) -> None:
    # Given a real server greeting with SSH software none of our patterns knows, through
    # the stage both transports run, nmap's database loaded
    from schemas.records import OpenPort, Target
    from stream_processors.stages import identify_port, make_context

    ctx = make_context(banner_wait=1.0, identify_budget=8, tls_enumeration=False)
    with loopback.listen(loopback.banner(greeting)) as s:
        finding = asyncio.run(identify_port(OpenPort(
            scan_id="s", target=Target("127.0.0.1", "127.0.0.1"), port=s.port), ctx))
    assert finding is not None
    info = finding.service
    # Then nmap's NULL lines name it from the greeting already read, sending nothing
    # more (it was "Sun", "mod", "ROSSSH": the token's first piece, and nmap never asked:
    # a review); a greeting nmap does not know keeps our guess
    assert (info.service, info.product, info.version) == ("ssh", *named)
    assert info.tried == ("null",)
    assert info.method.startswith("nmap:NULL line ") if named[0] != "Acme_Unknown_SSH" else (
        info.method == "banner:ssh-guess")


def _endless_icon_site(period: float) -> loopback.Handler:
    """A web server whose page links an icon it then streams without end (no length, a
    512-byte piece every ``period`` seconds, bounded at 30 s by the handler itself)."""
    def answer(conn: socket.socket, request: bytes) -> None:
        if b" /i.ico " not in request:
            conn.sendall(b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Type: "
                         b"text/html\r\nContent-Length: %d\r\n\r\n" % len(PACED_PAGE)
                         + PACED_PAGE)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/x-icon\r\n\r\n")
        pieces = random.Random(3)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            conn.sendall(pieces.randbytes(512))
            time.sleep(period)
    return _answering(answer)


def test_an_icon_still_arriving_at_the_deadline_is_not_hashed() -> None:
    # Given a site whose icon never ends (a piece every 0.2 s: never the idle gap that
    # ends an answer declaring no length)
    with loopback.listen(_endless_icon_site(0.2)) as listener:
        first = _identify("127.0.0.1", listener.port, budget=4.0)
        second = _identify("127.0.0.1", listener.port, budget=4.0)
    # Then no hash is kept (before: the bytes the deadline let through were hashed, a
    # new hash each scan, and each a "product changed" event: a review); the title is
    assert (first.http_title, first.favicon_mmh3) == ("Paced", None)
    assert (second.http_title, second.favicon_mmh3) == ("Paced", None)


def test_a_certificates_cn_is_kept_as_utf8_and_its_controls_escaped(tmp_path: object) -> None:
    import datetime as dt
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tests.tls_servers import CertFiles, openssl_server

    # Given a TLS server whose certificate's CN is Cyrillic with a bidi override in it
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Москва\u202e.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    files = CertFiles(Path(str(tmp_path)) / "cn.pem", Path(str(tmp_path)) / "cn.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    with openssl_server(files) as port:
        info = _identify("127.0.0.1", port)
    # Then the hint reads as sent, the control escaped (it read "??????.example": a
    # review)
    assert "certificate CN: Москва\\u202e.example" in info.extra_info, info.extra_info


def test_the_first_guess_read_by_nmaps_lines_keeps_the_ports_budget() -> None:
    # Given a site whose Server header none of our patterns knows (nmap's lines are asked
    # about the answer) and a fallback whose first load outlasts the port's budget
    icon = random.Random(5).randbytes(900)
    handler = _paced_site(PACED_PAGE, icon, pause_after=len(icon), pause=0,
                          server=b"Acme-Unknown/2.3")
    with loopback.listen(handler) as listener:
        info = asyncio.run(identify(Endpoint("127.0.0.1", listener.port),
                                    Settings(budget=1.0, banner_wait=0.3), SlowFirstLoad()))
    # Then the page's title and icon are still read in the budget (the first such ports
    # of a process lost them to the load under load: a review)
    assert (info.product, info.method) == ("Acme-Unknown", "http:server-header-guess")
    assert (info.http_title, info.favicon_mmh3) == ("Paced", _shodan_hash(icon))
