"""Certificate facts: what a served chain says, as ``schemas.records.Certificate`` values.

Owns: parsing DER certificates (cryptography), hostname matching (RFC 6125: SANs first,
wildcards only as the whole left-most label, IP addresses only against IP SANs; the
subject CN only when the certificate has no SAN extension at all), and the facts the
records carry: subject, SANs ("DNS:name" / "IP:address"), issuer, validity (ISO 8601 UTC),
key type and size, signature algorithm, self-signed, expired, SHA-256 fingerprint and
chain position (0 = leaf, as served).

Must not touch: the network. Nothing here verifies trust: a chain is described, not
validated against a trust store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from schemas.bounded import ARRAY_CAP, text
from schemas.records import Certificate

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What cryptography raises for a certificate it cannot read (it parses lazily, so some
# only once a field is asked for): names that are not UTF-8, dates it refuses, a key
# algorithm or curve it does not implement (SM2, GOST), a version or a kind of name
# (x400Address) it does not know, an extension given twice (DuplicateExtension, which
# is no ValueError). A
# served certificate is the server's to choose: each is a fact about it, never an error
# of the probe.
UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
              x509.UnsupportedGeneralNameType, x509.DuplicateExtension)
# Names are capped here, not only at the store: a finding crosses Kafka whole, and JSON
# writes a control character in six bytes. A leaf's SANs may be many (multi-domain
# certificates carry hundreds); past this many characters the rest are counted.
NAME_CAP = 1024
SANS_CAP = 16 * 1024


def _key_facts(cert: x509.Certificate) -> tuple[str, int]:
    try:
        key = cert.public_key()
    except UNREADABLE:  # a key algorithm or curve cryptography does not implement
        return "unknown", 0
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    return type(key).__name__, 0


def _sans(cert: x509.Certificate) -> tuple[list[str], list[_Address], bool]:
    """(DNS names, IP addresses, whether a SAN extension exists)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], [], False
    except UNREADABLE:  # malformed extension: treat as present but unusable
        return [], [], True
    names = ext.value.get_values_for_type(x509.DNSName)
    addresses = ext.value.get_values_for_type(x509.IPAddress)
    return (
        list(names),
        [a for a in addresses if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)],
        True,
    )


def _dns_match(pattern: str, hostname: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    hostname = hostname.rstrip(".").lower()
    if not pattern or not hostname:
        return False
    if pattern.startswith("*."):
        # RFC 6125 6.4.3: the wildcard stands for exactly one whole left-most label.
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:] and "*" not in rest
    return "*" not in pattern and pattern == hostname


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """Does the certificate cover ``name`` (a hostname or an IP address literal)? A
    non-ASCII name is compared in its IDNA form, as certificates write it (and as SNI
    sends it): "bücher.example" is covered by "xn--bcher-kva.example"."""
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    names, addresses, has_san = _sans(cert)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        return address in addresses
    if has_san:
        return any(_dns_match(pattern, name) for pattern in names)
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return any(_dns_match(str(attr.value), name) for attr in common_names)


def is_self_signed(cert: x509.Certificate) -> bool:
    try:
        if cert.issuer != cert.subject:
            return False
        cert.verify_directly_issued_by(cert)
    except InvalidSignature:
        return False
    except UNREADABLE:
        # cryptography refuses to check SHA-1 and MD5 signatures ("Unsupported signature
        # algorithm"): old appliances' self-signed certificates read "not self-signed",
        # their reason became a basicConstraints complaint. Checked with the key itself.
        return _signed_by_own_key(cert)
    return True


def _signed_by_own_key(cert: x509.Certificate) -> bool:
    try:
        key, algorithm = cert.public_key(), cert.signature_hash_algorithm
        if algorithm is None:
            return False
        tbs, signature = cert.tbs_certificate_bytes, cert.signature
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, tbs, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, tbs, algorithm)
        else:
            return False
    except (*UNREADABLE, InvalidSignature):
        return False
    return True


@contextlib.contextmanager
def served_certificate_warnings_ignored() -> Iterator[None]:
    """What cryptography warns about a served certificate (a serial that is not positive,
    a country name of 12 letters) or a trust bundle's root is a fact about the server,
    described like the rest: not a warning of ours for the terminal.

    The filters are the process's, put (back) in front on every entry, never a
    ``catch_warnings`` block: that saves and restores the one process-wide list, so a
    block ending in one thread dropped a filter another had just added, and the warning's
    raw lines reached the terminal amid a scan once in a while (a review). Adding a
    filter that is there already only moves it to the front."""
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    warnings.filterwarnings("ignore", message="Attribute's length must be",
                            category=UserWarning)
    yield


def load_certificate(der: bytes) -> x509.Certificate:
    """A certificate read as far as every fact portwatch takes from it needs (cryptography
    decodes names and dates only when asked): raises one of ``UNREADABLE`` otherwise."""
    cert = x509.load_der_x509_certificate(der)
    cert.subject.rfc4514_string()
    cert.issuer.rfc4514_string()
    cert.not_valid_before_utc  # noqa: B018 - decoded on access
    cert.not_valid_after_utc  # noqa: B018
    return cert


def name_text(value: str, cap: int = NAME_CAP) -> str:
    """A name from a certificate as stored and shown: printable characters kept as
    served (the DN's own backslash escapes too), every other one (controls, bidi
    overrides, separators, lone surrogates) as ``\\xNN`` / ``\\uXXXX``, at most ``cap``
    characters, cut with "..." (a served certificate's names are hostile text, like a
    banner: raw ESC sequences reached `report ciphers -f csv`; a review, 2026-12-05)."""
    out: list[str] = []
    size = 0
    for ch in value:
        piece = ch if ch.isprintable() else (
            f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else
            f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        if size + len(piece) > cap:
            while out and size + 3 > cap:
                size -= len(out.pop())
            out.append("..."[:cap])
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _capped_sans(names: Sequence[str], addresses: Sequence[_Address]) -> tuple[str, ...]:
    """The names, within ``SANS_CAP`` characters and the store's array bound with room for
    the last entry, "(and N more names)" (the array bound cut that note off after 1,000
    short names: a review)."""
    kept: list[str] = []
    size = 0
    entries = [f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses]
    for entry in entries:
        size += len(entry)
        left = len(entries) - len(kept)
        if size > SANS_CAP or (len(kept) == ARRAY_CAP - 1 and left > 1):
            kept.append(f"(and {len(entries) - len(kept)} more names)")
            break
        kept.append(name_text(entry))
    return tuple(kept)


def describe_certificate(
    der: bytes, *, position: int, hostname: str | None, now: datetime
) -> Certificate:
    """Facts about one certificate; an unparseable one still gets a row, saying so.

    ``hostname``: the name the target was given as (None or "" for a bare IP target,
    whose leaf then reads "no name to check", never "mismatch")."""
    fingerprint = hashes.Hash(hashes.SHA256())
    fingerprint.update(der)
    sha256 = fingerprint.finalize().hex()
    with served_certificate_warnings_ignored():
        return _describe(der, sha256, position=position, hostname=hostname, now=now)


def _describe(der: bytes, sha256: str, *, position: int, hostname: str | None,
              now: datetime) -> Certificate:
    # posture.py builds on this module's matching; imported here to keep the cycle one-way
    from probers.tls.posture import expiry, key_weakness, name_check, signature_weakness

    try:
        cert = load_certificate(der)
        names, addresses, _ = _sans(cert)
        key_type, key_bits = _key_facts(cert)
        oid = cert.signature_algorithm_oid
        not_after = cert.not_valid_after_utc
        days_left, expiry_warning = expiry(cert, now)
        return Certificate(
            subject=name_text(cert.subject.rfc4514_string()),
            sans=_capped_sans(names, addresses),
            issuer=name_text(cert.issuer.rfc4514_string()),
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=not_after.isoformat(),
            key_type=key_type,
            key_bits=key_bits,
            signature_algorithm=getattr(oid, "_name", "") or oid.dotted_string,
            is_self_signed=is_self_signed(cert),
            is_expired=now > not_after,
            # Only the leaf is presented for a name; intermediates never "match".
            is_hostname_match=position == 0 and bool(hostname)
            and hostname_matches(cert, hostname or ""),
            sha256=sha256,
            chain_position=position,
            name_check=name_check(cert, hostname) if position == 0 else "",
            days_to_expiry=days_left,
            expiry_warning=expiry_warning,
            weak_key=key_weakness(cert),
            weak_signature="" if position and is_self_signed(cert) else signature_weakness(cert),
        )
    except UNREADABLE as exc:
        return Certificate(subject=text(f"unparseable certificate: {exc}", NAME_CAP),
                           sha256=sha256, chain_position=position)


def describe_chain(
    chain: Sequence[bytes], *, hostname: str | None, now: datetime
) -> tuple[Certificate, ...]:
    return tuple(
        describe_certificate(der, position=i, hostname=hostname, now=now)
        for i, der in enumerate(chain)
    )


__all__ = [
    "NAME_CAP",
    "SANS_CAP",
    "UNREADABLE",
    "describe_certificate",
    "describe_chain",
    "hostname_matches",
    "is_self_signed",
    "load_certificate",
    "served_certificate_warnings_ignored",
]
