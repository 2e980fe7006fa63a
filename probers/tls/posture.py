"""Certificate posture: is the served chain trusted, does it cover the name, how long it
has left, and whether its key or signature is weak.

Owns: ``assess_chain`` (chain validation with cryptography's X.509 verification API
against a trust store, the system bundle by default, with a human reason when it fails),
``name_check`` ("match" / "mismatch" only when a name exists; "no name to check" for a
bare IP target), expiry (days left, and the 30 / 14 / 7 / 1 days / expired warning), weak keys
(RSA or DSA < 2048 bits, EC < 224 bits) and weak signatures (MD5, SHA-1) on every served
certificate but a self-signed root (whose own signature nobody checks).

The chain is validated for the leaf's *own* first subjectAltName, so "untrusted" never
means "wrong name": the name is judged separately, and only when there is one.

Must not touch: the network, records (``certs.py`` and ``commands.fold`` build them).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from probers.tls.certs import (
    UNREADABLE,
    hostname_matches,
    is_self_signed,
    load_certificate,
    name_text,
    served_certificate_warnings_ignored,
)
from probers.tls.hello import MAX_CHAIN_LENGTH

SYSTEM_TRUST_STORE = Path("/etc/ssl/certs/ca-certificates.crt")
# The tightest threshold reached is the warning; the same days as the change log's
# cert_expiring thresholds (30 / 14 / 7 / 1), so a certificate hours from expiry does not
# read "within 7 days" beside a "1d" event (a review).
EXPIRY_WARNING_DAYS = (1, 7, 14, 30)
NO_NAME = "no name to check"
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)


@dataclass(frozen=True, slots=True)
class CertificatePosture:
    """What a security team acts on, for the served leaf and its chain."""

    is_trusted: bool = False
    trust_error: str = ""  # why not: "self-signed", "unknown issuer ...", "expired"...
    name_check: str = NO_NAME  # "match" / "mismatch" / "no name to check"
    days_to_expiry: int = 0  # whole days left on the leaf; negative once expired
    expiry_warning: str = ""  # "expired" / "expires within 1 day" / ... / ""
    weak_keys: tuple[str, ...] = ()  # "leaf: RSA 1024"
    weak_signatures: tuple[str, ...] = ()  # "leaf: sha1WithRSAEncryption"

    @property
    def warnings(self) -> tuple[str, ...]:
        """Every problem, worst first, in words a report can show as they are."""
        found: list[str] = []
        if self.expiry_warning:
            found.append(
                "certificate expired"
                if self.expiry_warning == "expired"
                else f"certificate {self.expiry_warning} ({self.days_to_expiry} days left)"
            )
        found += [f"weak key: {item}" for item in self.weak_keys]
        found += [f"weak signature: {item}" for item in self.weak_signatures]
        if not self.is_trusted and self.trust_error:
            found.append(f"untrusted: {self.trust_error}")
        if self.name_check == "mismatch":
            found.append("name mismatch")
        return tuple(found)


@cache
def _trust_anchors(path: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle, read once per path; () when it is missing or
    unreadable. (Debian's bundle holds a root with a non-positive serial, which
    cryptography warns about: not portwatch's error to print, a review.)"""
    try:
        with served_certificate_warnings_ignored():
            return tuple(x509.load_pem_x509_certificates(Path(path).read_bytes()))
    except (OSError, ValueError):
        return ()


@cache
def load_trust_store(path: str = str(SYSTEM_TRUST_STORE)) -> Store | None:
    """Trust anchors from a PEM bundle; None when it is missing or holds none."""
    anchors = _trust_anchors(path)
    return Store(list(anchors)) if anchors else None


@cache
def load_trust_anchors(path: str = str(SYSTEM_TRUST_STORE)) -> frozenset[bytes]:
    """The trust store's certificates (DER), to recognise a self-signed leaf it holds."""
    return frozenset(a.public_bytes(Encoding.DER) for a in _trust_anchors(path))


def trust_store_problem(path: str) -> str:
    """'' when ``path`` is a readable file holding at least one PEM certificate; else
    why not, in words. ``load_trust_store`` answers None for any of these, which the
    prober stores as "no trust store" on every TLS port: a mistyped
    PORTWATCH_TLS_TRUST_STORE turned every port yellow, blaming the system bundle. The
    settings check calls this once at start instead."""
    file = Path(path)
    if file.is_dir():
        return "is a directory"
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    try:
        with served_certificate_warnings_ignored():
            anchors = x509.load_pem_x509_certificates(raw)
    except ValueError:
        anchors = []
    return "" if anchors else "holds no PEM certificate"


def _server_policy(store: Store, now: datetime) -> PolicyBuilder:
    # RFC 5280 allows a critical subjectAltName / extendedKeyUsage; the CA/B Forum profile
    # cryptography enforces by default does not. Many private CAs (and trustme) mark them
    # critical: a critical bit is not a trust problem, so criticality is not judged.
    leaf_policy = (
        ExtensionPolicy.webpki_defaults_ee()
        .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    )
    return (
        PolicyBuilder()
        .store(store)
        .time(now)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
        # as many intermediates as a kept chain can hold (cryptography's default of 8
        # called a trusted chain of 9 "unknown issuer", naming one it was served: a review)
        .max_chain_depth(MAX_CHAIN_LENGTH)
    )


def _own_subjects(leaf: x509.Certificate) -> list[x509.DNSName | x509.IPAddress]:
    """Names the leaf covers, to verify its chain for (the trust verdict is about the
    chain; the name check is separate): each DNS SAN, a wildcard as one name it covers
    ("*.example.test" -> "x.example.test": stripping the "*." named the apex, which a
    wildcard never covers, and a wildcard-only certificate read untrusted), then each IP
    SAN. The verifier may refuse a name (an underscore): the next one is tried."""
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, *UNREADABLE):
        return []
    out: list[x509.DNSName | x509.IPAddress] = []
    for name in sans.get_values_for_type(x509.DNSName):
        try:
            out.append(x509.DNSName("x." + name[2:] if name.startswith("*.") else name))
        except ValueError:
            continue
    out += [x509.IPAddress(a) for a in sans.get_values_for_type(x509.IPAddress)
            if isinstance(a, ipaddress.IPv4Address | ipaddress.IPv6Address)]
    return out


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return name_text(str(values[0].value) if values else name.rfc4514_string(), 80)


def _trust_error(chain: Sequence[x509.Certificate], store: Store | None, now: datetime,
                 anchors: frozenset[bytes] = frozenset()) -> str:
    """"" when the chain validates; else the most useful reason, in words. ``anchors``:
    the trust store's certificates (DER): a self-signed leaf that is one of them is
    trusted (a pinned internal certificate, as ``openssl -CAfile`` takes it)."""
    leaf = chain[0]
    if now > leaf.not_valid_after_utc:
        return "expired"
    if now < leaf.not_valid_before_utc:
        return "not yet valid"
    if is_self_signed(leaf):
        return "" if leaf.public_bytes(Encoding.DER) in anchors else "self-signed"
    if store is None:
        return f"no trust store ({SYSTEM_TRUST_STORE} missing)"
    subjects = _own_subjects(leaf)
    if not subjects:
        return "leaf has no subjectAltName"
    message = ""
    for subject in subjects:
        try:
            _server_policy(store, now).build_server_verifier(subject).verify(
                leaf, list(chain[1:]))
            return ""  # a path exists (an expired cross-signed intermediate served beside
            # a valid path to a trusted root is not a trust problem: AddTrust, 2020)
        except ValueError as exc:  # the verifier refuses this name: try the next
            message = f"unverifiable: {exc}"[:200]
            continue
        except VerificationError as exc:
            message = str(exc).split(" (encountered", 1)[0].removeprefix(
                "validation failed: ")
            if "subjectAltName" in message or "domain name" in message:
                continue  # about this name, not the chain: the next name may verify
            break
    return _why_untrusted(chain, message, now)


def _why_untrusted(chain: Sequence[x509.Certificate], message: str, now: datetime) -> str:
    """The reason a chain that did not verify is untrusted, in words."""
    leaf = chain[0]
    for cert in chain[1:]:
        if now > cert.not_valid_after_utc and not is_self_signed(cert):
            return f"expired intermediate ({_common_name(cert.subject)})"
    if "candidates exhausted" in message:
        top = chain[-1]
        if is_self_signed(top):
            return f"unknown issuer: root {_common_name(top.subject)!r} is not trusted"
        if len(chain) == 1 and _has_ca_issuers(leaf):
            return f"incomplete chain: issuer {_common_name(leaf.issuer)!r} not served"
        if len(chain) >= MAX_CHAIN_LENGTH:  # the rest of a longer chain was not read
            return (f"unknown issuer: {_common_name(top.issuer)!r} (not among the first "
                    f"{MAX_CHAIN_LENGTH} certificates served)")
        return f"unknown issuer: {_common_name(top.issuer)!r}"
    return message[:200] or "untrusted"


def _has_ca_issuers(cert: x509.Certificate) -> bool:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, *UNREADABLE):
        return False
    return any(d.access_method == AuthorityInformationAccessOID.CA_ISSUERS for d in aia)


def key_weakness(cert: x509.Certificate) -> str:
    """"RSA 1024" when the key is weak, else ""."""
    try:
        key = cert.public_key()
    except UNREADABLE:  # a key algorithm or curve cryptography does not implement
        return ""
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"{'RSA' if isinstance(key, rsa.RSAPublicKey) else 'DSA'} {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.key_size < MIN_EC_BITS:
        return f"EC {key.curve.name} ({key.key_size} bits)"
    return ""


def signature_weakness(cert: x509.Certificate) -> str:
    """The signature algorithm's name when it hashes with MD5 or SHA-1, else ""."""
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - cryptography raises UnsupportedAlgorithm for odd OIDs
        return ""
    if isinstance(algorithm, _WEAK_HASHES):
        oid = cert.signature_algorithm_oid
        return getattr(oid, "_name", "") or oid.dotted_string
    return ""


def expiry(leaf: x509.Certificate, now: datetime) -> tuple[int, str]:
    """(whole days left, warning); "0 days" is the last day, negative once expired."""
    seconds = (leaf.not_valid_after_utc - now).total_seconds()
    # floored: "5 days left" (5.5), and an hour past expiry is -1, not 0 ("negative once
    # expired"; toward zero, a certificate expired less than a day ago read 0 days left)
    days = math.floor(seconds / 86400)
    if seconds < 0:
        return days, "expired"
    for limit in EXPIRY_WARNING_DAYS:
        if days < limit:
            return days, f"expires within {limit} day{'' if limit == 1 else 's'}"
    return days, ""


def name_check(leaf: x509.Certificate, name: str | None) -> str:
    if not name:
        return NO_NAME
    return "match" if hostname_matches(leaf, name) else "mismatch"


def assess_chain(
    chain_der: Sequence[bytes],
    *,
    name: str | None,
    now: datetime,
    trust_store: str | None = None,
) -> CertificatePosture | None:
    """Posture of a served chain (leaf first); None when there is no parseable leaf."""
    with served_certificate_warnings_ignored():
        return _assess(chain_der, name=name, now=now, trust_store=trust_store)


def _assess(chain_der: Sequence[bytes], *, name: str | None, now: datetime,
            trust_store: str | None) -> CertificatePosture | None:
    chain: list[x509.Certificate] = []
    for der in chain_der:
        try:
            chain.append(load_certificate(der))
        except UNREADABLE:
            break  # keep what came before the first unreadable certificate
    if not chain:
        # A leaf the parser cannot read is not a certificate anyone can trust: said, so
        # the port is not scored as if TLS were sound (before: no posture, every
        # certificate check skipped, a green port; a hostile-server review, 2026-12-05)
        return (CertificatePosture(is_trusted=False, trust_error="unparseable certificate")
                if chain_der else None)
    leaf = chain[0]
    store_path = trust_store or str(SYSTEM_TRUST_STORE)
    store = load_trust_store(store_path)
    try:
        error = _trust_error(chain, store, now, load_trust_anchors(store_path))
    except UNREADABLE as exc:  # the verifier met what cryptography cannot read
        error = f"unverifiable: {exc}"[:200]
    days, warning = expiry(leaf, now)
    labelled = [("leaf" if i == 0 else f"chain[{i}]", c) for i, c in enumerate(chain)]
    return CertificatePosture(
        is_trusted=not error,
        trust_error=error,
        name_check=name_check(leaf, name),
        days_to_expiry=days,
        expiry_warning=warning,
        weak_keys=tuple(f"{label}: {w}" for label, c in labelled if (w := key_weakness(c))),
        weak_signatures=tuple(
            f"{label}: {w}"
            for label, c in labelled
            if not (label != "leaf" and is_self_signed(c)) and (w := signature_weakness(c))
        ),
    )


__all__ = [
    "EXPIRY_WARNING_DAYS",
    "NO_NAME",
    "SYSTEM_TRUST_STORE",
    "trust_store_problem",
    "CertificatePosture",
    "assess_chain",
    "expiry",
    "key_weakness",
    "load_trust_store",
    "name_check",
    "signature_weakness",
]
