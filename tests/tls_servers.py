"""Real TLS (and deliberately not-TLS) peers on loopback for the TLS prober's tests.

Owns: throwaway certificates (``openssl req`` for ordinary ones; cryptography for an
expired one, since Debian's OpenSSL 3.0 ``req``/``x509`` cannot back-date), and context
managers that start ``openssl s_server`` / ``gnutls-serv`` on 127.0.0.1 and a free port,
wait until they accept, and always kill their process group afterwards; plus two hostile
peers served from a thread: one that accepts and never answers, one that sends a banner.

Why gnutls-serv: Debian 12's OpenSSL 3.0 is built without 3DES/RC4 suites (``openssl
ciphers -v 'DES-CBC3-SHA:@SECLEVEL=0'`` -> "no cipher match", even with the legacy
provider), so it cannot serve the legacy TLS 1.0 + 3DES case; GnuTLS 3.7 (package
``gnutls-bin``) can.

Must not touch: any address but 127.0.0.1; anything outside its temporary directories.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0


class ServerUnavailable(RuntimeError):
    """The server cannot run here; tests skip with this reason."""


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def make_cert(directory: Path, name: str = "cert") -> CertFiles:
    """Self-signed RSA-2048 for CN=localhost, SANs DNS:localhost and IP:127.0.0.1, 30 days."""
    if shutil.which("openssl") is None:
        raise ServerUnavailable("openssl is not installed")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return CertFiles(cert, key)


def make_expired_cert(directory: Path, name: str = "expired") -> CertFiles:
    """Self-signed, CN=expired.test, valid 2020-01-01 .. 2021-01-01 (long expired)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("expired.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertFiles(cert_path, key_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _wait_until_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"server exited: {log.read_text(errors='replace')[-800:]}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"server did not accept within {START_TIMEOUT}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=3)


@contextlib.contextmanager
def _server(argv: Sequence[str], port: int, workdir: Path) -> Iterator[int]:
    if shutil.which(argv[0]) is None:
        raise ServerUnavailable(f"{argv[0]} is not installed")
    log = workdir / f"{argv[0]}-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir,
        )  # fmt: skip
    try:
        _wait_until_accepting(port, process, log)
        yield port
    finally:
        _stop(process)


@contextlib.contextmanager
def openssl_server(certs: CertFiles, *options: str, port: int | None = None) -> Iterator[int]:
    """``openssl s_server -www`` on 127.0.0.1:<port> (a free one by default) with the given
    extra options."""
    port = port or free_port()
    argv = ["openssl", "s_server", "-accept", f"{LOOPBACK}:{port}", "-cert", str(certs.cert),
            "-key", str(certs.key), "-www", *options]  # fmt: skip
    with _server(argv, port, certs.cert.parent) as bound:
        yield bound


@contextlib.contextmanager
def gnutls_server(certs: CertFiles, priority: str) -> Iterator[int]:
    """``gnutls-serv`` on a free port (it binds the wildcard; only loopback is ever dialled)."""
    port = free_port()
    argv = ["gnutls-serv", "--port", str(port), "--x509certfile", str(certs.cert),
            "--x509keyfile", str(certs.key), "--priority", priority]  # fmt: skip
    with _server(argv, port, certs.cert.parent) as bound:
        yield bound


@contextlib.contextmanager
def _thread_server(handle: object) -> Iterator[int]:
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            assert callable(handle)
            with contextlib.suppress(OSError):
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def tlslite_server(
    certs: CertFiles, *, version: tuple[int, int], ciphers: Sequence[str]
) -> Iterator[int]:
    """A tlslite-ng TLS server in a thread: the only local stack that still speaks SSLv3
    (neither Debian's OpenSSL 3.0 nor its GnuTLS 3.7 is built with it). RSA key
    exchange only; ``ciphers`` are tlslite names ("rc4", "3des", "aes128", ...)."""
    with warnings.catch_warnings():  # tlslite's __init__ imports the deprecated asyncore
        warnings.filterwarnings("ignore", message=r".*asyncore", category=DeprecationWarning)
        from tlslite.api import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey

    chain = X509CertChain()
    chain.parsePemList(certs.cert.read_text())
    key = parsePEMKey(certs.key.read_text(), private=True)
    settings = HandshakeSettings()
    settings.minVersion = settings.maxVersion = version
    settings.cipherNames = list(ciphers)
    settings.macNames = ["sha", "md5"]
    settings.keyExchangeNames = ["rsa"]

    def handshake(conn: socket.socket) -> None:
        conn.settimeout(2.0)
        with contextlib.suppress(Exception):  # a probe aborts every handshake midway
            TLSConnection(conn).handshakeServer(certChain=chain, privateKey=key, settings=settings)
        conn.close()

    with _thread_server(handshake) as port:
        yield port


@contextlib.contextmanager
def stalled_server() -> Iterator[int]:
    """Accepts every connection and never sends a byte (a tarpit / stalled handshake)."""
    with _thread_server(lambda conn: None) as port:
        yield port


@contextlib.contextmanager
def banner_server(banner: bytes = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") -> Iterator[int]:
    """Sends a plain-text banner on connect, like SSH or SMTP, and ignores what comes."""
    with _thread_server(lambda conn: conn.sendall(banner)) as port:
        yield port


__all__ = [
    "LOOPBACK",
    "CertFiles",
    "ServerUnavailable",
    "banner_server",
    "free_port",
    "gnutls_server",
    "make_cert",
    "make_expired_cert",
    "openssl_server",
    "stalled_server",
    "tlslite_server",
]
