"""Hostile TLS peers on 127.0.0.1, built on raw sockets: what a scanned host can throw
at the TLS prober and at the store behind it (issue 11).

Owns: ``hostile_tls_server(mode)``, a context manager serving one of these modes from
threads (one per connection, each bounded in time and bytes):

* ``big-dh-prime``: answers any ClientHello that offers a DHE suite with ServerHello,
  Certificate and a ServerKeyExchange whose prime is 9,000 bytes (72,000 bits: more
  than a UInt16 column holds), then ServerHelloDone;
* ``big-chain``: a Certificate message of ~2 MiB (the same certificate over and over);
* ``garbage``: handshake records full of random bytes;
* ``stall``: the first 3 bytes of a record header, then silence until the peer gives up;
* ``renegotiation-storm``: ServerHello, then HelloRequest after HelloRequest;
* ``served-certificate``: a plain ServerHello, Certificate (the one given), ServerHelloDone
  flight: how a hostile certificate (``hostile_certificate``) reaches the prober;
* ``duplicate-extension``: a TLS 1.3 ServerHello carrying supported_versions twice.

``hostile_certificate(kind)``: a valid certificate patched in place (same lengths, so the
DER still parses) into what real servers serve and cryptography cannot read all of: a
key algorithm or a curve it does not implement (as SM2 and GOST certificates are), a
name that is not UTF-8, a notAfter of letters (which OpenSSL accepts).

The ServerHello is built here byte by byte (RFC 5246 7.4): no TLS library would send
these flights. Must not touch: any address but 127.0.0.1; it never connects anywhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probers.tls.suites import describe

LOOPBACK = "127.0.0.1"
MODES = ("big-dh-prime", "big-chain", "garbage", "stall", "renegotiation-storm",
         "served-certificate", "duplicate-extension")
PRIME_BYTES = 9000  # 72,000 bits (the case)
CONNECTION_SECONDS = 8.0  # no connection is served longer than this
MAX_SENT_BYTES = 4 * 1024 * 1024  # nor sent more than this


def _record(content_type: int, version: int, payload: bytes) -> bytes:
    """One or more TLS records carrying ``payload`` (split at 16 KiB, RFC 5246 6.2.1)."""
    out = b""
    for at in range(0, max(1, len(payload)), 16384):
        chunk = payload[at:at + 16384]
        out += struct.pack("!BHH", content_type, version, len(chunk)) + chunk
    return out


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _read_client_hello(conn: socket.socket) -> tuple[int, list[int]] | None:
    """(client_version, offered suites) of the first ClientHello, or None."""
    conn.settimeout(3.0)
    data = b""
    try:
        while len(data) < 5:
            chunk = conn.recv(5 - len(data))
            if not chunk:
                return None
            data += chunk
        length = int.from_bytes(data[3:5], "big")
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
    except OSError:
        return None
    if data[0] != 22 or len(body) < 4 + 2 + 32 + 1 or body[0] != 1:
        return None
    at = 4
    version = int.from_bytes(body[at:at + 2], "big")
    at += 2 + 32
    at += 1 + body[at]  # session id
    count = int.from_bytes(body[at:at + 2], "big")
    suites = [int.from_bytes(body[i:i + 2], "big") for i in range(at + 2, at + 2 + count, 2)]
    return version, suites


def _server_hello(version: int, suite: int) -> bytes:
    body = version.to_bytes(2, "big") + os.urandom(32) + b"\x00" + suite.to_bytes(2, "big") \
        + b"\x00"
    return _handshake(2, body)


def _certificate(der: bytes, copies: int) -> bytes:
    entries = b"".join(len(der).to_bytes(3, "big") + der for _ in range(copies))
    return _handshake(11, len(entries).to_bytes(3, "big") + entries)


def _duplicate_extension_hello() -> bytes:
    """A TLS 1.3 ServerHello (TLS_AES_128_GCM_SHA256) whose supported_versions comes twice."""
    version_ext = (43).to_bytes(2, "big") + (2).to_bytes(2, "big") + (0x0304).to_bytes(2, "big")
    extensions = version_ext + version_ext
    body = (0x0303).to_bytes(2, "big") + os.urandom(32) + b"\x00" + (0x1301).to_bytes(2, "big") \
        + b"\x00" + len(extensions).to_bytes(2, "big") + extensions
    return _handshake(2, body)


CERT_KINDS = ("unknown-key-algorithm", "unsupported-curve", "name-not-utf8",
              "date-of-letters", "extension-twice")
_NAME = "hostile.test"


def hostile_certificate(kind: str) -> tuple[bytes, bytes]:
    """(certificate DER, its key as PEM) of ``kind`` (one of CERT_KINDS): a self-signed
    P-256 certificate for hostile.test, patched in place."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _NAME)])
    start = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(4242)
               .not_valid_before(start - timedelta(days=1))
               .not_valid_after(start + timedelta(days=30))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(_NAME)]), False))
    if kind == "extension-twice":  # an issuerAltName, turned into a second subjectAltName
        builder = builder.add_extension(
            x509.IssuerAlternativeName([x509.DNSName(_NAME)]), False)
    cert = builder.sign(key, hashes.SHA256())
    der = cert.public_bytes(serialization.Encoding.DER)
    not_after = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ").encode()
    old, new = {
        # id-ecPublicKey (1.2.840.10045.2.1) -> an arc no library implements (2.9)
        "unknown-key-algorithm": (bytes.fromhex("06072a8648ce3d0201"),
                                  bytes.fromhex("06072a8648ce3d0209")),
        # prime256v1 (1.2.840.10045.3.1.7) -> prime192v2 (3.1.2), which it does not
        "unsupported-curve": (bytes.fromhex("06082a8648ce3d030107"),
                              bytes.fromhex("06082a8648ce3d030102")),
        # the subject's and issuer's UTF8String CN, with a byte no UTF-8 has
        "name-not-utf8": (b"\x0c\x0chostile.test", b"\x0c\x0chost\xffle.test"),
        "date-of-letters": (not_after, b"ABCDEFGHIJKLZ"),
        # issuerAltName (2.5.29.18) -> subjectAltName (2.5.29.17): the extension twice
        "extension-twice": (bytes.fromhex("0603551d12"), bytes.fromhex("0603551d11")),
    }[kind]
    assert der.count(old) >= 1, kind
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return der.replace(old, new), key_pem


def _big_dh_key_exchange(version: int) -> bytes:
    prime = b"\xff" * PRIME_BYTES
    params = (len(prime).to_bytes(2, "big") + prime + b"\x00\x01\x02"
              + (PRIME_BYTES).to_bytes(2, "big") + b"\x5a" * PRIME_BYTES)
    signature = os.urandom(256)
    algorithm = b"\x04\x01" if version >= 0x0303 else b""  # rsa_pkcs1_sha256 (TLS 1.2)
    return _handshake(12, params + algorithm + len(signature).to_bytes(2, "big") + signature)


def _serve(conn: socket.socket, mode: str, cert_der: bytes, stop: threading.Event) -> None:
    deadline = time.monotonic() + CONNECTION_SECONDS
    hello = _read_client_hello(conn)
    if hello is None:
        return
    client_version, suites = hello
    version = min(max(client_version, 0x0300), 0x0303)
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        if stop.is_set() or time.monotonic() > deadline or sent > MAX_SENT_BYTES:
            raise OSError("hostile server bound reached")
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        conn.sendall(data)
        sent += len(data)

    if mode == "stall":
        send(b"\x16\x03")  # a record header cut short, then nothing
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    if mode == "garbage":
        while True:
            send(_record(22, version, os.urandom(4096)))
    if mode == "big-dh-prime":
        # DHE without PSK: a PSK suite's ServerKeyExchange starts with a hint we omit
        dhe = [s for s in suites
               if describe(s).ephemeral_kind == "DH" and not describe(s).has_psk_hint]
        if not dhe:
            send(_record(21, version, b"\x02\x28"))  # fatal handshake_failure
            return
        flight = (_server_hello(version, dhe[0]) + _certificate(cert_der, 1)
                  + _big_dh_key_exchange(version) + _handshake(14, b""))
        send(_record(22, version, flight))
    elif mode == "big-chain":
        send(_record(22, version, _server_hello(version, suites[0] if suites else 0x002F)
                     + _certificate(cert_der, (2 * 1024 * 1024) // max(1, len(cert_der)))
                     + _handshake(14, b"")))
    elif mode == "served-certificate":
        send(_record(22, version, _server_hello(version, suites[0] if suites else 0x002F)
                     + _certificate(cert_der, 1) + _handshake(14, b"")))
    elif mode == "duplicate-extension":
        send(_record(22, 0x0303, _duplicate_extension_hello()))
    elif mode == "renegotiation-storm":
        send(_record(22, version, _server_hello(version, suites[0] if suites else 0x002F)))
        while True:
            send(_record(22, version, _handshake(0, b"") * 64))
    # Wait for the client to go away (or the bound) before closing.
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


@contextlib.contextmanager
def hostile_tls_server(mode: str, cert_der: bytes) -> Iterator[int]:
    """Serve ``mode`` (one of MODES) on 127.0.0.1 and a free port; yields the port."""
    if mode not in MODES:
        raise ValueError(f"unknown hostile mode {mode!r}: one of {', '.join(MODES)}")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    listener.settimeout(0.1)
    stop = threading.Event()
    workers: list[threading.Thread] = []
    held: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            _serve(conn, mode, cert_der, stop)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            worker = threading.Thread(target=handle, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(timeout=2)
        listener.close()
        for conn in held:
            with contextlib.suppress(OSError):
                conn.close()
        for worker in workers:
            worker.join(timeout=2)


__all__ = ["CERT_KINDS", "MODES", "PRIME_BYTES", "hostile_certificate", "hostile_tls_server"]
