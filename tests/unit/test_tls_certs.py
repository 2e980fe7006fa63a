"""Certificate facts and RFC 6125 hostname matching, on certificates built in the test."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from probers.tls.certs import (
    NAME_CAP,
    SANS_CAP,
    describe_certificate,
    describe_chain,
    hostname_matches,
)
from probers.tls.posture import assess_chain
from schemas.bounded import ARRAY_CAP, texts

KEY = ec.generate_private_key(ec.SECP256R1())
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def build(
    cn: str, sans: list[x509.GeneralName] | None, issuer_cn: str | None = None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(KEY, hashes.SHA256())


WILDCARD = build("ignored.test", [x509.DNSName("*.example.test"), x509.DNSName("exact.test"),
                                  x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])  # fmt: skip
CN_ONLY = build("legacy.test", None)


@pytest.mark.parametrize(
    ("cert", "name", "expected"),
    [
        (WILDCARD, "www.example.test", True),
        (WILDCARD, "WWW.Example.Test.", True),  # case and trailing dot do not matter
        (WILDCARD, "example.test", False),  # the wildcard needs a label
        (WILDCARD, "a.b.example.test", False),  # and only one
        (WILDCARD, "exact.test", True),
        (WILDCARD, "ignored.test", False),  # CN is ignored when SANs exist
        (WILDCARD, "127.0.0.1", True),
        (WILDCARD, "127.0.0.2", False),
        (CN_ONLY, "legacy.test", True),  # no SAN extension: CN fallback
        (CN_ONLY, "127.0.0.1", False),  # an address never matches a CN
    ],
)
def test_hostname_matching(cert: x509.Certificate, name: str, expected: bool) -> None:
    assert hostname_matches(cert, name) is expected


def test_describe_leaf() -> None:
    der = WILDCARD.public_bytes(serialization.Encoding.DER)
    facts = describe_certificate(der, position=0, hostname="www.example.test",
                                 now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))  # fmt: skip
    assert facts.subject == "CN=ignored.test"
    assert facts.sans == ("DNS:*.example.test", "DNS:exact.test", "IP:127.0.0.1")
    assert (facts.key_type, facts.key_bits) == ("EC secp256r1", 256)
    assert facts.signature_algorithm == "ecdsa-with-SHA256"
    assert facts.not_before == "2024-01-01T00:00:00+00:00"
    assert facts.is_expired is True
    assert facts.is_self_signed is True
    assert facts.is_hostname_match is True
    assert facts.sha256 == WILDCARD.fingerprint(hashes.SHA256()).hex()


def test_issuer_differs_is_not_self_signed_and_only_the_leaf_matches() -> None:
    issued = build("www.example.test", [x509.DNSName("www.example.test")], issuer_cn="Some CA")
    chain = [issued.public_bytes(serialization.Encoding.DER)] * 2
    leaf, second = describe_chain(chain, hostname="www.example.test", now=START)
    assert leaf.is_self_signed is False and leaf.issuer == "CN=Some CA"
    assert (leaf.chain_position, second.chain_position) == (0, 1)
    assert leaf.is_hostname_match is True and second.is_hostname_match is False
    assert leaf.is_expired is False


def test_garbage_still_gets_a_row() -> None:
    facts = describe_certificate(b"not a certificate", position=0, hostname="x", now=START)
    assert facts.subject.startswith("unparseable certificate")
    assert len(facts.sha256) == 64


def test_many_sans_are_capped_and_counted() -> None:
    # Given a leaf with 2,000 long names (a hostile peer's; they would make a finding
    # too big for one Kafka message)
    names = [x509.DNSName(f"{i:04d}{'a' * 50}.example.test") for i in range(2000)]
    der = build("many.test", names).public_bytes(serialization.Encoding.DER)
    facts = describe_certificate(der, position=0, hostname=None, now=START)
    # Then the names are kept up to SANS_CAP characters, and the rest are counted
    kept = facts.sans[:-1]
    assert kept == tuple(f"DNS:{n.value}" for n in names[:len(kept)])
    assert sum(map(len, kept)) <= SANS_CAP < sum(map(len, kept)) + len(f"DNS:{names[0].value}")
    assert facts.sans[-1] == f"(and {2000 - len(kept)} more names)"


@pytest.mark.parametrize(("count", "kept"), [(1000, 1000), (1001, 999), (3001, 999)])
def test_many_short_sans_keep_their_count_within_the_stores_array_bound(
        count: int, kept: int) -> None:
    # Given a leaf with many short names (within SANS_CAP characters), more than the
    # store keeps of an array (ARRAY_CAP, 1,000)
    names = [x509.DNSName(f"h{i}.example") for i in range(count)]
    der = build("short.test", names).public_bytes(serialization.Encoding.DER)
    facts = describe_certificate(der, position=0, hostname=None, now=START)
    stored = texts(facts.sans)
    # Then what the store keeps still ends with how many names were left out (the array
    # bound cut that note off: a review), and 1,000 names need none
    assert len(stored) == min(count, ARRAY_CAP)
    assert stored[:kept] == [f"DNS:{n.value}" for n in names[:kept]]
    if kept < count:
        assert stored[-1] == f"(and {count - kept} more names)"


def test_a_long_subject_is_capped() -> None:
    # Given a subject of 200 organizational units of 60 characters
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{i:03d}" + "x" * 57)
                      for i in range(200)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(KEY.public_key()).serial_number(1).not_valid_before(START)
            .not_valid_after(END).sign(KEY, hashes.SHA256()))
    facts = describe_certificate(cert.public_bytes(serialization.Encoding.DER), position=0,
                                 hostname=None, now=START)
    # Then it is kept up to NAME_CAP characters, and says it was cut
    assert facts.subject == name.rfc4514_string()[:NAME_CAP - 3] + "..."
    assert len(name.rfc4514_string()) > NAME_CAP
    assert facts.issuer == facts.subject


VALID_DER = WILDCARD.public_bytes(serialization.Encoding.DER)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID_DER) - 1), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_a_damaged_certificate_is_described_never_raised(edits: list[tuple[int, int]]) -> None:
    # Given a valid certificate with a few bytes changed anywhere (names, dates, key,
    # extensions, lengths: whatever a server may serve)
    der = bytearray(VALID_DER)
    for at, value in edits:
        der[at] = value
    # When it is described and assessed, as the TLS probe does with a served chain
    facts = describe_certificate(bytes(der), position=0, hostname="www.example.test",
                                 now=START)
    assess_chain([bytes(der)], name="www.example.test", now=START)
    # Then it gets its row (never an exception), fingerprinted as served
    assert facts.sha256 == hashlib.sha256(bytes(der)).hexdigest()
    assert len(facts.subject) <= NAME_CAP


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_a_certificate_name_as_stored_is_printable_and_bounded(value: str) -> None:
    from probers.tls.certs import name_text

    stored = name_text(value)
    assert len(stored) <= NAME_CAP
    assert all(ch.isprintable() for ch in stored)
    if value.isascii() and value.isprintable() and len(value) <= NAME_CAP:
        assert stored == value  # an ordinary name reads as served
