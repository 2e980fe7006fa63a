"""A real ``openssl s_server`` serving certificate chains past the prober's bounds: a
leaf of ~150 KB (3,000 SANs: over OpenSSL's 100 KB limit on a Certificate message, so
pyOpenSSL refuses it after the server's TLS 1.3 pick) and a chain of ~320 KB (400
intermediates: past ``MAX_FLIGHT_BYTES``, so the raw hello reads past it keeping none
of it, to the ServerKeyExchange after it). The suites the server picked are still its
answers: TLS 1.3 went missing with no word, and the 320 KB chain made the whole port
"could not test" (a helper session's review, 2026-12-06). What could not be read is
named ("partial: ...")."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probers.tls import probe_tls
from probers.tls.hello import MAX_FLIGHT_BYTES
from tests.tls_servers import CertFiles, make_cert, openssl_server

OPENSSL_MAX_CERT_LIST = 100 * 1024  # OpenSSL's default bound on a Certificate message


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def many_names_cert(directory: Path, names: int = 3000) -> CertFiles:
    """Self-signed ECDSA P-256 for CN=localhost with ``names`` DNS SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    sans = [x509.DNSName("localhost")] + [
        x509.DNSName(f"host-{i:05d}.a-long-label-for-padding.example.test") for i in range(names)]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    assert len(cert.public_bytes(serialization.Encoding.DER)) > OPENSSL_MAX_CERT_LIST
    files = CertFiles(directory / "many.pem", directory / "many.key")
    files.cert.write_bytes(_pem(cert))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def long_chain(directory: Path, copies: int = 400) -> Path:
    """A chain file of ``copies`` times one CA certificate (~0.8 KB each)."""
    ca = make_cert(directory, "ca")
    path = directory / "chain.pem"
    path.write_bytes(ca.cert.read_bytes() * copies)
    assert len(path.read_bytes()) * 3 // 4 > MAX_FLIGHT_BYTES  # PEM -> DER, roughly
    return path


def probe(port: int):  # type: ignore[no-untyped-def]
    return asyncio.run(probe_tls("127.0.0.1", port, timeout=3.0, budget=60.0))


def test_a_leaf_over_openssls_limit_keeps_tls13_and_reads_the_leaf_from_tls12(
        tmp_path: Path) -> None:
    # Given a server of TLS 1.2 and 1.3 whose leaf is ~150 KB
    with openssl_server(many_names_cert(tmp_path)) as port:
        result = probe(port)
    # Then both versions are found (TLS 1.3 was missing, with no error), and the leaf
    # is the one the raw TLS 1.2 hello read
    assert result.status.value == "completed", result.error
    assert set(result.versions) == {"TLSv1.2", "TLSv1.3"}
    assert {s.iana_name for s in result.suites if s.tls_version == "TLSv1.3"} >= {
        "TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
    assert result.error == ""
    assert [(c.subject, c.key_type, c.sans[:2]) for c in result.certificates] == [
        ("CN=localhost", "EC secp256r1",
         ("DNS:localhost", "DNS:host-00000.a-long-label-for-padding.example.test"))]


def test_a_tls13_only_server_with_that_leaf_is_partial_and_says_why(tmp_path: Path) -> None:
    # Given the same leaf on a server of TLS 1.3 only
    with openssl_server(many_names_cert(tmp_path), "-tls1_3") as port:
        result = probe(port)
    # Then TLS 1.3 and its suites are found (it read "could not test" before), and the
    # certificate nobody could read is named, not its suite's name
    assert result.status.value == "completed", result.error
    assert result.versions == ("TLSv1.3",)
    assert len([s for s in result.suites if s.tls_version == "TLSv1.3"]) >= 3
    assert result.error == "partial: certificate: excessive message size", result.error
    assert result.certificates == ()


def test_a_chain_past_the_flight_bound_keeps_every_pick(tmp_path: Path) -> None:
    # Given a server of TLS 1.2 and 1.3 sending ~320 KB of intermediates after its leaf
    leaf = make_cert(tmp_path)
    with openssl_server(leaf, "-cert_chain", str(long_chain(tmp_path))) as port:
        result = probe(port)
    # Then both versions and the TLS 1.2 suites are found (the whole port read "could
    # not test" before), and the certificate is named as what could not be read
    assert result.status.value == "completed", result.error
    assert set(result.versions) == {"TLSv1.2", "TLSv1.3"}
    assert "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" in {
        s.iana_name for s in result.suites if s.tls_version == "TLSv1.2"}
    assert result.error.startswith("partial: certificate: "), result.error


def test_the_key_exchange_behind_a_long_chain_is_still_read(tmp_path: Path) -> None:
    import subprocess

    # Given a TLS 1.2 server of a 1,024-bit DH group and ECDHE, sending ~320 KB of
    # intermediates (its ServerKeyExchange comes after them)
    dh = tmp_path / "dh1024.pem"
    subprocess.run(["openssl", "dhparam", "-out", str(dh), "1024"], check=True,
                   capture_output=True, timeout=120)
    leaf = make_cert(tmp_path)
    with openssl_server(leaf, "-no_tls1_3", "-dhparam", str(dh), "-cert_chain",
                        str(long_chain(tmp_path)), "-cipher",
                        "DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0"
                        ) as port:
        result = probe(port)
    # Then each suite's key exchange is read past the chain (it read 0 bits, so the
    # port was "strong": a review), and the small DH group makes the port medium
    kex = {s.iana_name: (s.kex_group, s.kex_bits) for s in result.suites}
    assert kex["TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"][1] == 1024, kex
    assert kex["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"][1] >= 253, kex
    assert result.grade == "medium", (result.grade, result.grade_reason)
    assert "DH group under 2048 bits" in result.grade_reason
