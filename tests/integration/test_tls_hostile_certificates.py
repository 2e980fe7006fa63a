"""The TLS prober against certificates and ServerHellos that real servers can send and
cryptography or tlslite cannot read all of (a helper session's audit, 2026-12-05).

Before, each made ``probe_tls`` raise: the port lost its identification and every TLS
result (stored "unidentified", "identification error: UnsupportedAlgorithm"). Now the
probe finishes, the suites are kept, and the certificate is described as far as it can
be read. Real sockets on 127.0.0.1: raw-socket peers (``tests.hostile_tls``) for what no
TLS library would send, ``openssl s_server`` for the certificate OpenSSL accepts and
cryptography refuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import pytest

from probers.tls import probe_tls
from schemas.records import ProbeStatus, TlsResult
from tests.hostile_tls import hostile_certificate, hostile_tls_server
from tests.tls_servers import CertFiles, openssl_server


def _probe(port: int) -> TlsResult:
    return asyncio.run(probe_tls("127.0.0.1", port, timeout=2.0, budget=8.0))


@pytest.mark.parametrize(("kind", "subject", "key_type"), [
    ("unknown-key-algorithm", "CN=hostile.test", "unknown"),
    ("unsupported-curve", "CN=hostile.test", "unknown"),
])
def test_a_key_cryptography_does_not_implement_is_described_not_raised(
        kind: str, subject: str, key_type: str) -> None:
    # Given a TLS peer serving a certificate whose key cryptography cannot load (the
    # SM2 and GOST certificates of real servers do this)
    der, _key = hostile_certificate(kind)
    with hostile_tls_server("served-certificate", der) as port:
        # When it is probed
        result = _probe(port)
    # Then the probe completes with its suites, and the certificate is described with
    # what can be read: its names, an unknown key, its own fingerprint
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.suites
    (leaf,) = result.certificates
    assert (leaf.subject, leaf.issuer, leaf.key_type, leaf.key_bits, leaf.weak_key) == (
        subject, subject, key_type, 0, "")
    assert leaf.sans == ("DNS:hostile.test",)
    assert leaf.sha256 == hashlib.sha256(der).hexdigest()


def test_a_name_that_is_not_utf8_reads_unparseable() -> None:
    # Given a certificate that loads, but whose subject and issuer are not UTF-8
    der, _key = hostile_certificate("name-not-utf8")
    with hostile_tls_server("served-certificate", der) as port:
        result = _probe(port)
    # Then the suites are kept, and the certificate gets its row, saying it is unreadable
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.suites
    (leaf,) = result.certificates
    assert leaf.subject.startswith("unparseable certificate: ")
    assert (leaf.issuer, leaf.not_after, leaf.chain_position) == ("", "", 0)
    assert leaf.sha256 == hashlib.sha256(der).hexdigest()


def test_a_certificate_with_an_extension_twice_is_described_not_raised() -> None:
    # Given a certificate carrying subjectAltName twice (cryptography raises
    # DuplicateExtension, no ValueError, once its extensions are read)
    der, _key = hostile_certificate("extension-twice")
    with hostile_tls_server("served-certificate", der) as port:
        result = _probe(port)
    # Then the probe completes with its suites; the leaf is described without the
    # extensions it could not read, and is not trusted
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.suites
    (leaf,) = result.certificates
    assert (leaf.subject, leaf.sans) == ("CN=hostile.test", ())
    assert leaf.sha256 == hashlib.sha256(der).hexdigest()
    assert result.is_chain_trusted is False


def test_a_certificate_openssl_accepts_and_cryptography_refuses(tmp_path: Path) -> None:
    # Given a real OpenSSL server whose certificate's notAfter is letters (OpenSSL serves
    # it; cryptography refuses to parse it)
    der, key = hostile_certificate("date-of-letters")
    (tmp_path / "cert.pem").write_text(ssl.DER_cert_to_PEM_cert(der))
    (tmp_path / "cert.key").write_bytes(key)
    with openssl_server(CertFiles(tmp_path / "cert.pem", tmp_path / "cert.key")) as port:
        # When it is probed (its full handshakes take the chain as OpenSSL read it)
        result = _probe(port)
    # Then the probe completes with TLS 1.2 and 1.3 suites, and the certificate, served
    # byte for byte, is described as unreadable
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert {s.tls_version for s in result.suites} >= {"TLSv1.2", "TLSv1.3"}
    (leaf,) = result.certificates
    assert leaf.subject.startswith("unparseable certificate: ")
    assert leaf.sha256 == hashlib.sha256(der).hexdigest()


def test_a_serverhello_with_an_extension_twice_is_a_protocol_error() -> None:
    # Given a peer answering every hello with a ServerHello carrying supported_versions
    # twice (tlslite raises its own TLSInternalError on it)
    der, _key = hostile_certificate("unknown-key-algorithm")
    with hostile_tls_server("duplicate-extension", der) as port:
        result = _probe(port)
    # Then the probe ends with "could not test", naming what the peer did
    assert result.status is ProbeStatus.ERROR
    assert result.error.startswith("could not test: ")
    assert "server picked suite 0x1301, not in the offer" in result.error
    assert result.suites == ()
