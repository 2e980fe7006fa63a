"""Test certificates from a throwaway CA (trustme): valid, expired, expiring, SHA-1 signed.

Owns: ``TestPki`` (one test CA per instance, written to a directory) and ``LeafFiles``
(the PEM paths a server needs: certificate chain, key, and the CA as trust anchor). Each
leaf covers DNS:localhost and IP:127.0.0.1. The SHA-1 leaf is built with cryptography
and the CA's key, because trustme signs with SHA-256 only.

Must not touch: anything outside the directory it is given; the network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class LeafFiles:
    chain: Path  # leaf first, then any intermediates (PEM)
    key: Path  # PKCS#8 PEM, mode 0644 unless a server wants otherwise
    ca: Path  # the test CA certificate: the trust anchor tests validate against


class TestPki:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA(key_type=trustme.KeyType.RSA)
        self.ca_path = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))

    def _write(self, name: str, chain_pem: bytes, key_pem: bytes) -> LeafFiles:
        chain, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        chain.write_bytes(chain_pem)
        key.write_bytes(key_pem)
        os.chmod(key, 0o644)
        return LeafFiles(chain, key, self.ca_path)

    def leaf(
        self,
        name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> LeafFiles:
        cert = self.ca.issue_cert(
            "localhost", "127.0.0.1", common_name="localhost",
            not_before=not_before, not_after=not_after, key_type=trustme.KeyType.RSA,
        )  # fmt: skip
        chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
        return self._write(name, chain, cert.private_key_pem.bytes())

    def valid(self) -> LeafFiles:
        return self.leaf("valid")

    def expired(self) -> LeafFiles:
        now = dt.datetime.now(dt.UTC)
        return self.leaf("expired", not_before=now - dt.timedelta(days=60),
                         not_after=now - dt.timedelta(days=2))  # fmt: skip

    def expiring(self, days: float = 5.5) -> LeafFiles:
        now = dt.datetime.now(dt.UTC)
        return self.leaf("expiring", not_before=now - dt.timedelta(days=30),
                         not_after=now + dt.timedelta(days=days))  # fmt: skip

    def sha1_signed(self, key_bits: int = 2048) -> LeafFiles:
        """A leaf signed by the test CA with sha1WithRSAEncryption (``key_bits`` RSA)."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            )  # fmt: skip
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA1())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self._write(f"sha1-{key_bits}", cert.public_bytes(serialization.Encoding.PEM),
                           key_pem)  # fmt: skip


__all__ = ["LeafFiles", "TestPki"]
