"""Certificate posture (chain trust with reasons, name check only with a name, expiry
warnings, weak keys and signatures) and the Mozilla 5.7 profile verdicts, on certificates
made by a throwaway CA (trustme) and on hand-built suite lists."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from probers.tls.mozilla import AcceptedFacts, assess_profile
from probers.tls.posture import NO_NAME, assess_chain, expiry
from probers.tls.suites import TlsVersion as V
from tests.conftest import REPO

NOW = dt.datetime.now(dt.UTC)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def store(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _chain(leaf: trustme.LeafCert) -> list[bytes]:
    return [_der(blob.bytes()) for blob in leaf.cert_chain_pems]


def test_valid_chain_for_a_hostname(ca: trustme.CA, store: str) -> None:
    leaf = ca.issue_cert("mail.example.test")
    posture = assess_chain(_chain(leaf), name="mail.example.test", now=NOW, trust_store=store)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error, posture.name_check) == (True, "", "match")
    assert posture.warnings == ()


def _common_name(name: x509.Name) -> str:
    from probers.tls.posture import _common_name as named

    return named(name)


def _deep(ca: trustme.CA, intermediates: int) -> list[bytes]:
    issuer = ca
    for _ in range(intermediates):
        issuer = issuer.create_child_ca()
    return _chain(issuer.issue_cert("deep.example.test"))


def test_a_trusted_chain_of_nine_intermediates_is_trusted(ca: trustme.CA, store: str) -> None:
    # Given a leaf and 9 intermediates up to a trusted root (10 certificates: as many as
    # the probers keep); `openssl s_client -CAfile` verifies it
    chain = _deep(ca, 9)
    assert len(chain) == 10
    posture = assess_chain(chain, name="deep.example.test", now=NOW, trust_store=store)
    # Then it is trusted (cryptography's default depth of 8 called it "unknown issuer",
    # naming an intermediate the server sent: a review)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (True, "")


def test_a_chain_cut_at_what_the_probers_keep_says_so(tmp_path: Path) -> None:
    # Given the first 10 certificates of a longer chain (what the probers keep)
    root = trustme.CA(path_length=14)
    root.cert_pem.write_to_path(str(tmp_path / "root.pem"))
    chain = _deep(root, 12)[:10]
    posture = assess_chain(chain, name="deep.example.test", now=NOW,
                           trust_store=str(tmp_path / "root.pem"))
    # Then untrusted, and the reason says its issuer was not among what was read
    assert posture is not None and not posture.is_trusted
    issuer = _common_name(x509.load_der_x509_certificate(chain[-1]).issuer)
    assert issuer  # trustme names its CAs by organization: the name the reason uses
    assert posture.trust_error == (
        f"unknown issuer: {issuer!r} (not among the first 10 certificates served)")


def test_ip_target_has_no_name_to_check(ca: trustme.CA, store: str) -> None:
    # Given a leaf for a name, served on a bare IP target
    leaf = ca.issue_cert("mail.example.test")
    posture = assess_chain(_chain(leaf), name=None, now=NOW, trust_store=store)
    # Then the chain is judged, the name is not ("no name to check", never "mismatch")
    assert posture is not None
    assert posture.is_trusted is True
    assert posture.name_check == NO_NAME
    assert "name mismatch" not in posture.warnings


def test_name_mismatch_only_with_a_name(ca: trustme.CA, store: str) -> None:
    leaf = ca.issue_cert("other.example.test")
    posture = assess_chain(_chain(leaf), name="mail.example.test", now=NOW, trust_store=store)
    assert posture is not None
    assert posture.is_trusted is True  # the chain is fine; the name is the problem
    assert posture.name_check == "mismatch"
    assert posture.warnings == ("name mismatch",)


def test_unknown_issuer(ca: trustme.CA) -> None:
    # Given the system trust store, which does not hold the test CA
    leaf = trustme.CA().issue_cert("mail.example.test")
    posture = assess_chain(_chain(leaf), name=None, now=NOW)
    assert posture is not None
    assert posture.is_trusted is False
    assert posture.trust_error.startswith("unknown issuer")


def test_incomplete_chain_with_intermediate_missing(ca: trustme.CA, store: str) -> None:
    # Given a leaf from an intermediate, served without the intermediate
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("mail.example.test")
    full = _chain(leaf)
    assert len(full) == 2
    assert assess_chain(full, name=None, now=NOW, trust_store=store).is_trusted  # type: ignore[union-attr]
    posture = assess_chain(full[:1], name=None, now=NOW, trust_store=store)
    assert posture is not None
    assert posture.is_trusted is False
    assert posture.trust_error.startswith("unknown issuer")


def _self_signed(key_bits: int = 2048, algorithm: hashes.HashAlgorithm | None = None,
                 days: int = 90) -> bytes:  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self.example.test")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("self.example.test")]), False)
        .sign(key, algorithm or hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(Encoding.DER)


def test_self_signed_and_weak_key() -> None:
    # Given a self-signed leaf with a 1024-bit RSA key
    posture = assess_chain([_self_signed(1024)], name=None, now=NOW)
    assert posture is not None
    assert posture.trust_error == "self-signed"
    assert posture.weak_keys == ("leaf: RSA 1024",)
    assert posture.warnings == ("weak key: leaf: RSA 1024", "untrusted: self-signed")


def test_weak_ec_key() -> None:
    key = ec.generate_private_key(ec.SECP192R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec.example.test")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=9))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    posture = assess_chain([cert.public_bytes(Encoding.DER)], name=None, now=NOW)
    assert posture is not None
    assert posture.weak_keys == ("leaf: EC secp192r1 (192 bits)",)
    assert posture.expiry_warning == "expires within 14 days"


def test_sha1_signature_is_weak(tmp_path: Path) -> None:
    from tests.tls_pki import TestPki

    pki = TestPki(tmp_path)
    leaf = pki.sha1_signed()
    posture = assess_chain([_der(leaf.chain.read_bytes())], name="localhost", now=NOW,
                           trust_store=str(pki.ca_path))  # fmt: skip
    assert posture is not None
    assert posture.weak_signatures == ("leaf: sha1WithRSAEncryption",)
    assert posture.name_check == "match"
    # cryptography's verifier rejects SHA-1 signatures: untrusted, with that reason
    assert posture.is_trusted is False
    assert posture.trust_error


@pytest.mark.parametrize(
    ("days_left", "expected_days", "warning"),
    [
        (400.5, 400, ""),
        (30.5, 30, ""),
        (29.5, 29, "expires within 30 days"),
        (13.9, 13, "expires within 14 days"),
        (5.5, 5, "expires within 7 days"),
        (1.0, 1, "expires within 7 days"),
        # the last day: the change log's "1d" threshold, in the same words
        (0.99, 0, "expires within 1 day"),
        (0.2, 0, "expires within 1 day"),
        # floored, as the List's SQL floors it: expired an hour ago is -1, never 0
        (-2.5, -3, "expired"),
        (-0.04, -1, "expired"),
    ],
)
def test_expiry_thresholds(days_left: float, expected_days: int, warning: str) -> None:
    leaf = x509.load_der_x509_certificate(_self_signed(days=3))
    now = leaf.not_valid_after_utc - dt.timedelta(days=days_left)
    assert expiry(leaf, now) == (expected_days, warning)


def test_unparseable_chain_is_untrusted() -> None:
    posture = assess_chain([b"\x30\x03garbage"], name=None, now=NOW)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (False, "unparseable certificate")


# -- Mozilla server-side TLS 5.7 -------------------------------------------------------

TLS13 = [AcceptedFacts(V.TLS_1_3, "TLS_AES_128_GCM_SHA256"),
         AcceptedFacts(V.TLS_1_3, "TLS_AES_256_GCM_SHA384")]  # fmt: skip
TLS12_GOOD = [AcceptedFacts(V.TLS_1_2, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
              AcceptedFacts(V.TLS_1_2, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")]  # fmt: skip


def test_modern_tls13_only_with_ec_key() -> None:
    verdict = assess_profile([V.TLS_1_3], TLS13, ("EC secp256r1", 256))
    assert verdict is not None
    assert (verdict.profile, verdict.version, verdict.reasons) == ("modern", "5.7",
                                                                   ("meets modern",))  # fmt: skip


def test_intermediate_nginx_like() -> None:
    verdict = assess_profile([V.TLS_1_2, V.TLS_1_3], TLS13 + TLS12_GOOD, ("RSA", 2048))
    assert verdict is not None
    assert verdict.profile == "intermediate"
    assert verdict.reasons == ("not modern: TLSv1.2 enabled; RSA certificate key "
                               "(modern wants EC)",)  # fmt: skip


def test_tls10_only_is_old_and_says_why() -> None:
    # Issue 13: a TLS 1.0-only server graded "medium" like a modern one; now it is "old"
    suites = [AcceptedFacts(V.TLS_1_0, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")]
    verdict = assess_profile([V.TLS_1_0], suites, ("RSA", 2048))
    assert verdict is not None
    assert verdict.profile == "old"
    assert verdict.reasons[-1] == "not intermediate: TLSv1.0 enabled"


def test_non_compliant_lists_what_breaks_old() -> None:
    suites = TLS12_GOOD + [AcceptedFacts(V.TLS_1_2, "TLS_RSA_WITH_RC4_128_SHA"),
                           AcceptedFacts(V.TLS_1_2, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", 768)]
    verdict = assess_profile([V.SSL_3_0, V.TLS_1_2], suites, ("RSA", 1024))
    assert verdict is not None
    assert verdict.profile == "non-compliant"
    assert verdict.reasons == (
        "SSLv3 enabled",
        "TLSv1.2 TLS_RSA_WITH_RC4_128_SHA not in the old list",
        "DH group of 768 bits (< 1024)",
        "RSA 1024-bit certificate key (< 2048)",
    )


def test_an_ec_group_the_guidelines_do_not_list_is_no_profile() -> None:
    # Given an intermediate-looking port that also took secp192r1 when offered it alone
    ecdhe = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    suites = [AcceptedFacts(V.TLS_1_2, ecdhe, 0, "x25519"),
              AcceptedFacts(V.TLS_1_2, ecdhe, 0, "secp192r1")]
    verdict = assess_profile([V.TLS_1_2], suites, ("RSA", 2048))
    for curve in ("sect163k1", "brainpoolP256r1", "prime192v1", "secp521r1"):
        other = assess_profile([V.TLS_1_2], [AcceptedFacts(V.TLS_1_2, ecdhe, 0, curve)],
                               ("RSA", 2048))
        assert other is not None and other.profile == "non-compliant", curve
    # Then no profile (it read "intermediate" beside a weak grade for that group: a review)
    assert verdict is not None
    assert verdict.profile == "non-compliant"
    assert verdict.reasons == ("EC group secp192r1 accepted (wants X25519, P-256 or P-384)",)
    # And the listed groups, OpenSSL's names included, and groups that are not named
    # curves (a post-quantum hybrid) are no deviation
    for group in ("x25519", "prime256v1", "secp256r1", "secp384r1", "X25519MLKEM768",
                  "SecP256r1MLKEM768", "x448", ""):
        fine = assess_profile([V.TLS_1_2], [AcceptedFacts(V.TLS_1_2, ecdhe, 0, group)],
                              ("RSA", 2048))
        assert fine is not None and fine.profile == "intermediate", group


def test_an_ecdsa_key_on_another_curve_is_not_modern() -> None:
    # A P-521 certificate was "meets modern" (the guidelines: P-256 or P-384)
    verdict = assess_profile([V.TLS_1_3], TLS13, ("EC secp521r1", 521))
    assert verdict is not None
    assert verdict.profile == "non-compliant"
    assert verdict.reasons == ("EC secp521r1 certificate key (wants P-256 or P-384)",)
    p384 = assess_profile([V.TLS_1_3], TLS13, ("EC secp384r1", 384))
    assert p384 is not None and p384.profile == "modern"


def test_no_suites_no_verdict() -> None:
    assert assess_profile([], [], None) is None


def test_incomplete_chain_is_named_when_the_leaf_points_to_its_issuer(ca: trustme.CA,
                                                                       store: str) -> None:
    # Given a leaf issued by an intermediate, carrying an AIA caIssuers pointer (as public
    # CAs' leaves do), served alone: the issuer exists, the server just did not send it
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509.oid import AuthorityInformationAccessOID

    intermediate = ca.create_child_ca()
    issuer_key = load_pem_private_key(intermediate.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")]))
        .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.example.test")]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier("http://ca.example.test/issuer.crt"))]), False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    posture = assess_chain([leaf.public_bytes(Encoding.DER)], name=None, now=NOW,
                           trust_store=store)  # fmt: skip
    assert posture is not None
    assert posture.is_trusted is False
    assert posture.trust_error.startswith("incomplete chain: issuer")
    # And with the intermediate served, the same leaf validates
    full = [leaf.public_bytes(Encoding.DER), issuer.public_bytes(Encoding.DER)]
    assert assess_chain(full, name=None, now=NOW, trust_store=store).is_trusted  # type: ignore[union-attr]


def test_expired_intermediate_is_named(ca: trustme.CA, store: str) -> None:
    # Given a valid leaf whose (served) intermediate expired yesterday
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    root_key = load_pem_private_key(ca.private_key_pem.bytes(), None)
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old Intermediate")])
    mid = (
        x509.CertificateBuilder().subject_name(mid_name).issuer_name(root.subject)
        .public_key(mid_key.public_key()).serial_number(8)
        .not_valid_before(NOW - dt.timedelta(days=400)).not_valid_after(NOW - dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .sign(root_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.test")]))
        .issuer_name(mid_name).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(9)
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=60))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.example.test")]), False)
        .sign(mid_key, hashes.SHA256())
    )  # fmt: skip
    posture = assess_chain([leaf.public_bytes(Encoding.DER), mid.public_bytes(Encoding.DER)],
                           name="mx.example.test", now=NOW, trust_store=store)  # fmt: skip
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (False,
                                                         "expired intermediate (Old Intermediate)")
    assert posture.name_check == "match"
    assert posture.expiry_warning == ""  # the leaf itself has 60 days


# -- hostile certificates (a hostile-server review, 2026-12-05) ------------------------------


def _hostile_leaf(common_name: str, *, patch: bytes = b"") -> bytes:
    """A self-signed leaf whose CN is ``common_name``; with ``patch``, the CN's bytes in the
    DER are replaced by it afterwards (bytes no parser accepts as that string type)."""
    from cryptography.hazmat.primitives.serialization import Encoding as Enc
    from cryptography.x509.name import _ASN1Type

    key = ec.generate_private_key(ec.SECP256R1())
    kind = _ASN1Type.PrintableString if patch else _ASN1Type.UTF8String
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _type=kind,
                                         _validate=False)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=90)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(Enc.DER)
    return der.replace(common_name.encode(), patch) if patch else der


def test_a_leaf_the_parser_cannot_read_is_untrusted_not_skipped() -> None:
    # Given a leaf whose PrintableString name holds bytes no parser reads (0xff, NUL, ESC)
    der = _hostile_leaf("QQQQQQQQQQQQ", patch=b"\xff\xfe\xc3\x28\x00\x1b[31m\xed\xa0")
    # When its posture is assessed
    posture = assess_chain([der], name=None, now=NOW)
    # Then it is untrusted, and says why (before: no posture at all, so every certificate
    # check was skipped and the port scored green)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (False, "unparseable certificate")
    assert posture.warnings == ("untrusted: unparseable certificate",)
    # And nothing served is not a certificate problem
    assert assess_chain([], name=None, now=NOW) is None


def test_names_in_a_certificate_are_stored_without_control_characters() -> None:
    from probers.tls.certs import describe_certificate

    # Given a self-signed leaf whose CN clears the screen, rings, sets the window title
    # and reverses the text after it
    hostile = "evil\x1b[2J\x07\x1b]0;pwned\x07\u202etxt.exe\u009b\u0085\r\nx\x7f"
    described = describe_certificate(_hostile_leaf(hostile), position=0, hostname=None, now=NOW)
    # Then subject and issuer keep every printable character and escape the rest
    for text in (described.subject, described.issuer):
        assert text.startswith("CN=evil")
        assert all(ch.isprintable() for ch in text), repr(text)
        assert "\\x1b[2J" in text and "\\u202e" in text
    # And so does the trust error naming it
    posture = assess_chain([_hostile_leaf(hostile)], name=None, now=NOW)
    assert posture is not None and all(ch.isprintable() for ch in posture.trust_error)


# -- a review against openssl verify (2026-12-06) -----------------------------------------


def test_a_wildcard_only_certificate_is_trusted(ca: trustme.CA, store: str) -> None:
    # (before: its chain was verified for "example.test", which *.example.test never
    # covers: "untrusted: no matching subjectAltName" beside a name check that matched)
    leaf = ca.issue_cert("*.example.test")
    posture = assess_chain(_chain(leaf), name="www.example.test", now=NOW, trust_store=store)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error, posture.name_check) == (True, "", "match")


def test_a_name_the_verifier_refuses_is_skipped_for_the_next(ca: trustme.CA, store: str) -> None:
    # an underscore in the first SAN (trustme will not write one): "unverifiable: invalid
    # domain name" before
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b")]))
            .issuer_name(root.subject).public_key(ec.generate_private_key(
                ec.SECP256R1()).public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=60))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("my_host.example.test"),
                                                        x509.DNSName("b.example.test")]),
                           False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root.public_key()), False)  # type: ignore[arg-type]
            .sign(load_pem_private_key(ca.private_key_pem.bytes(), None),  # type: ignore[arg-type]
                  hashes.SHA256()))
    posture = assess_chain([leaf.public_bytes(Encoding.DER)], name="b.example.test", now=NOW,
                           trust_store=store)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (True, "")


def test_a_sha1_self_signed_certificate_is_self_signed(tmp_path: Path) -> None:
    # cryptography will not check a SHA-1 signature; before: "not self-signed", and the
    # reason was a basicConstraints complaint
    from tests.tls_pki import TestPki

    posture = assess_chain([TestPki(tmp_path).sha1_self_signed()], name=None,
                           now=dt.datetime.now(dt.UTC))  # (openssl made it valid from now)
    assert posture is not None
    assert posture.trust_error == "self-signed"
    assert posture.weak_signatures == ("leaf: sha1WithRSAEncryption",)


def test_a_self_signed_leaf_in_the_trust_store_is_trusted(tmp_path: Path) -> None:
    der = _self_signed()
    pinned = tmp_path / "pinned.pem"
    pinned.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
    posture = assess_chain([der], name="self.example.test", now=NOW, trust_store=str(pinned))
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (True, "")


def test_an_expired_cross_certificate_beside_a_valid_path_is_trusted(tmp_path: Path) -> None:
    # Given (as AddTrust in May 2020) a leaf issued by "New Root", served with an expired
    # cross-certificate of New Root by "Old Root", and New Root itself trusted
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca_cert(subject: str, issuer: str, public: ec.EllipticCurvePublicKey,
                signer: ec.EllipticCurvePrivateKey, until: dt.datetime) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(days=900)).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    signer.public_key()), False)
                .sign(signer, hashes.SHA256()))

    old_key, new_key = key(), key()
    new_root = ca_cert("New Root", "New Root", new_key.public_key(), new_key,
                       NOW + dt.timedelta(days=900))
    cross = ca_cert("New Root", "Old Root", new_key.public_key(), old_key,
                    NOW - dt.timedelta(days=1))
    leaf = (x509.CertificateBuilder().subject_name(name("mx.example.test"))
            .issuer_name(name("New Root")).public_key(key().public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=60))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.example.test")]),
                           False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                new_key.public_key()), False)
            .sign(new_key, hashes.SHA256()))
    trusted = tmp_path / "roots.pem"
    trusted.write_bytes(new_root.public_bytes(Encoding.PEM))
    posture = assess_chain([c.public_bytes(Encoding.DER) for c in (leaf, cross)],
                           name="mx.example.test", now=NOW, trust_store=str(trusted))
    # Then it is trusted, as openssl verify says (before: "expired intermediate", judged
    # before any path was looked for)
    assert posture is not None
    assert (posture.is_trusted, posture.trust_error) == (True, "")


def test_an_idn_name_is_checked_in_its_idna_form(ca: trustme.CA, store: str) -> None:
    leaf = ca.issue_cert("xn--bcher-kva.example")
    posture = assess_chain(_chain(leaf), name="bücher.example", now=NOW, trust_store=store)
    assert posture is not None
    assert (posture.name_check, posture.is_trusted) == ("match", True)


def test_the_system_bundle_loads_without_a_warning_on_stderr() -> None:
    # Given the OS's CA bundle (Debian's holds a root whose serial is not positive, on
    # which cryptography warns), loaded the way a scan loads it, with every warning shown
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    code = ("import sys; from probers.tls.posture import _trust_anchors; "
            f"print(len(_trust_anchors({bundle!r})))")
    ours = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=True)
    direct = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         "from cryptography import x509; from pathlib import Path; "
         f"x509.load_pem_x509_certificates(Path({bundle!r}).read_bytes())"],
        capture_output=True, text=True, timeout=60, check=True)
    # Then the anchors load and nothing is printed (a scan printed the warning's two raw
    # lines amid its progress: a review), where loading it bare warns (Debian 12's bundle)
    assert int(ours.stdout) > 0
    assert ours.stderr == ""
    assert "CryptographyDeprecationWarning: Parsed a serial number" in direct.stderr


def test_a_warnings_block_ending_in_another_thread_does_not_bring_the_warning_back() -> None:
    # Given another thread's ``catch_warnings`` block (a library's, a regex compile) that
    # began before the TLS modules were imported and ends after: on exit it puts back
    # the filter list it saved, without what the import added
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    code = textwrap.dedent(f"""\
        import threading, warnings
        entered, leave = threading.Event(), threading.Event()
        def other():
            with warnings.catch_warnings():
                entered.set()
                leave.wait(30)
        worker = threading.Thread(target=other)
        worker.start()
        entered.wait(30)
        from probers.tls.posture import _trust_anchors
        leave.set()
        worker.join(30)
        print(len(_trust_anchors({bundle!r})))
        """)
    # When the system bundle is then loaded, with every warning shown
    ours = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                          text=True, cwd=REPO, timeout=60, check=True)
    # Then nothing is printed (the filter was the module's, added once at import: the
    # warning's raw lines reached the terminal amid a scan once in a while, a review)
    assert int(ours.stdout) > 0
    assert ours.stderr == ""


def test_no_warnings_block_runs_while_scanning() -> None:
    # A catch_warnings block is only for an import (which happens once, before a scan):
    # anywhere else, its exit puts back the filter list it saved at entry, dropping what
    # another thread added meanwhile (identification's TLS context and nmap's patterns
    # were made in such blocks while the TLS prober loaded the trust bundle, whose
    # warning then reached the terminal amid a scan; a review)
    allowed = {"probers/tls/tlslite_compat.py", "producers/kafka_io.py"}
    found = {str(path.relative_to(REPO)) for package in
             ("portwatch", "probers", "producers", "stream_processors", "schemas")
             for path in (REPO / package).rglob("*.py")
             if "warnings.catch_warnings(" in path.read_text(encoding="utf-8")}
    assert found <= allowed, found - allowed


def test_the_ciphers_report_recounts_the_warning_at_the_same_thresholds() -> None:
    # schemas/reports/ciphers.sql says the warning again at read time: its thresholds
    # are this module's, in the same words
    from pathlib import Path

    from probers.tls.posture import EXPIRY_WARNING_DAYS
    sql = (Path(__file__).parents[2] / "schemas/reports/ciphers.sql").read_text()
    said = [f"< {limit}, 'expires within {limit} day{'' if limit == 1 else 's'}'"
            for limit in EXPIRY_WARNING_DAYS]
    assert [phrase in sql for phrase in said] == [True] * len(said)
