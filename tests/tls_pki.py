"""Test certificates from a throwaway CA (trustme): valid, expired, expiring, SHA-1 signed.

Owns: ``TestPki`` (one test CA per instance, written to a directory) and ``LeafFiles``
(the PEM paths a server needs: certificate chain, key, and the CA as trust anchor). Each
leaf covers DNS:localhost and IP:127.0.0.1. The SHA-1 leaf is built with cryptography
and ``openssl x509 -sha1``: trustme signs with SHA-256 only, cryptography refuses SHA-1.

Must not touch: anything outside the directory it is given; the network.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
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

    def sha1_signed(self) -> LeafFiles:
        """A leaf signed by the test CA with sha1WithRSAEncryption. cryptography refuses to
        sign with SHA-1, so ``openssl x509 -req -sha1`` signs a CSR built here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .sign(key, hashes.SHA256())
        )
        csr_path, ca_key, ext = (self.directory / n for n in ("sha1.csr", "ca.key", "sha1.ext"))
        csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        ca_key.write_bytes(self.ca.private_key_pem.bytes())
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                       "basicConstraints=critical,CA:FALSE\n")  # fmt: skip
        signed = subprocess.run(
            ["openssl", "x509", "-req", "-in", str(csr_path), "-CA", str(self.ca_path),
             "-CAkey", str(ca_key), "-set_serial", "4242", "-sha1", "-days", "90",
             "-extfile", str(ext)],
            capture_output=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self._write("sha1", signed, key_pem)

    def sha1_self_signed(self) -> bytes:
        """A self-signed RSA-1024 certificate signed with SHA-1 (an old appliance's), DER:
        made by ``openssl req -x509 -sha1``, as cryptography will not sign with SHA-1."""
        key, cert = self.directory / "old.key", self.directory / "old.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:1024", "-sha1", "-nodes",
             "-subj", "/CN=old.example.test", "-days", "90",
             "-addext", "subjectAltName=DNS:old.example.test",
             "-keyout", str(key), "-out", str(cert)],
            capture_output=True, timeout=60, check=True)
        return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
            serialization.Encoding.DER)


__all__ = ["LeafFiles", "TestPki"]
