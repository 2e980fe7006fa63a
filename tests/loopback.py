"""Real loopback listeners for tests: banner services, HTTP, TLS and hostile peers.

Each listener is a real socket served by a thread, bound to loopback addresses
only, started by a context manager that returns once the port accepts and that
always closes everything on exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Handler = Callable[[socket.socket], None]


@dataclass
class Services:
    """Named listener ports started by a test, and the --ports spec that covers them."""

    ports: dict[str, int]

    @property
    def spec(self) -> str:
        return ",".join(str(p) for p in sorted(self.ports.values()))


def mariadb_greeting(version: bytes) -> bytes:
    """A MySQL-protocol handshake packet (protocol 10) announcing ``version``."""
    body = b"\x0a" + version + b"\x00" + b"\x08\x00\x00\x00" + b"abcdefgh\x00" + b"\xff\xf7"
    return len(body).to_bytes(3, "little") + b"\x00" + body


@dataclass
class Listener:
    port: int
    addresses: tuple[str, ...]
    _socks: list[socket.socket] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self._stop.set()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=2)


def free_port(addresses: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A port free on every given loopback address."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        ok = True
        for addr in addresses[1:]:
            with socket.socket() as other:
                try:
                    other.bind((addr, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


def _serve(listener: Listener, sock: socket.socket, handler: Handler) -> None:
    sock.settimeout(0.2)
    while not listener._stop.is_set():
        try:
            conn, _ = sock.accept()
        except (TimeoutError, OSError):
            continue
        def run(c: socket.socket = conn) -> None:
            with contextlib.suppress(OSError), c:
                c.settimeout(5)
                handler(c)
        threading.Thread(target=run, daemon=True).start()


@contextlib.contextmanager
def listen(handler: Handler, addresses: tuple[str, ...] = ("127.0.0.1",),
           port: int | None = None) -> Iterator[Listener]:
    port = port or free_port(addresses)
    listener = Listener(port, addresses)
    try:
        for addr in addresses:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            listener._socks.append(s)  # closed by listener.close() even if bind fails
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(128)
            t = threading.Thread(target=_serve, args=(listener, s, handler), daemon=True)
            t.start()
            listener._threads.append(t)
        yield listener
    finally:
        listener.close()


# -- handlers ---------------------------------------------------------------------------


def request_head(conn: socket.socket, cap: int = 8192) -> bytes | None:
    """What a test server reads of a request: up to the end of its head (at most about
    ``cap`` bytes; the body's start may come with it); None when the client went away."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < cap:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def banner(data: bytes, then_wait: float = 0.5) -> Handler:
    """Send a greeting first (SSH, SMTP, FTP style), then read until the peer leaves."""
    return in_pieces((data, 0.0), then_wait=then_wait)


def in_pieces(*pieces: tuple[bytes, float], then_wait: float = 0.5) -> Handler:
    """Send a greeting in pieces, each after its pause (a server writing line by line, or
    a lost segment sent again), then read until the peer leaves (or ``then_wait`` of
    silence)."""
    def handle(conn: socket.socket) -> None:
        for data, pause in pieces:
            time.sleep(pause)
            conn.sendall(data)
        conn.settimeout(then_wait)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
    return handle


def endless(chunk: bytes = b"A" * 4096, limit_seconds: float = 20) -> Handler:
    """A hostile peer that never stops talking (bounded so the test host stays sane)."""
    def handle(conn: socket.socket) -> None:
        deadline = dt.datetime.now() + dt.timedelta(seconds=limit_seconds)
        while dt.datetime.now() < deadline:
            conn.sendall(chunk)
    return handle


def silent(hold_seconds: float = 20) -> Handler:
    """Accepts and never says anything, never answers."""
    def handle(conn: socket.socket) -> None:
        conn.settimeout(hold_seconds)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
    return handle


@contextlib.contextmanager
def full_accept_queue() -> Iterator[int]:
    """A TCP port whose accept queue is full: the kernel drops new SYNs, so a connect
    to it neither succeeds nor is refused (a lost SYN, as on a congested link)."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for s in [blocker, *fillers]:
            s.close()


def http_handler(server_header: str, extra_headers: dict[str, str] | None = None, *,
                 body: bytes = b"<html><body>portwatch test</body></html>") -> Handler:
    """A real HTTP/1.0 server (stdlib BaseHTTPRequestHandler) with a chosen Server header
    and page."""
    headers = dict(extra_headers or {})
    page = body

    class H(http.server.BaseHTTPRequestHandler):
        def version_string(self) -> str:  # the Server header
            return server_header

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            body = page
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    def handle(conn: socket.socket) -> None:
        H(conn, ("127.0.0.1", 0), None)  # type: ignore[arg-type]
    return handle


_TLS_SERVER = """
import http.server, ssl, sys
cert, key, addr, port, header = sys.argv[1:6]
class H(http.server.BaseHTTPRequestHandler):
    def version_string(self): return header
    def do_GET(self):
        body = b"<html>portwatch tls test</html>"
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer((addr, int(port)), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"""


@contextlib.contextmanager
def tls_http_server(cert_dir: Path, server_header: str,
                    addresses: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[Listener]:
    """A real HTTPS server (stdlib http.server behind TLS) in its own process per address,
    with a throwaway certificate; returns once every address accepts."""
    self_signed(cert_dir)
    port = free_port(addresses)
    procs: list[subprocess.Popen[str]] = []
    try:
        for addr in addresses:
            proc = subprocess.Popen(
                [sys.executable, "-c", _TLS_SERVER, str(cert_dir / "cert.pem"),
                 str(cert_dir / "key.pem"), addr, str(port), server_header],
                stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield Listener(port, addresses)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()


def self_signed(directory: Path, common_name: str = "localhost",
                days: int = 30) -> ssl.SSLContext:
    """A throwaway certificate and key, and a server context using them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


@contextlib.contextmanager
def udp_responder(address: str = "127.0.0.1", port: int = 0,
                  answer: Callable[[bytes], bytes | None] | None = None) -> Iterator[int]:
    """A real UDP service on loopback answering every datagram with ``answer(datagram)``
    (default: ``pong:`` and the first bytes of what it got; None: no answer, as a
    service that cannot parse the request); yields its port, always closed on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    reply = answer or (lambda data: b"pong:" + data[:8])
    sock.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            said = reply(data)
            if said is not None:
                sock.sendto(said, peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()
