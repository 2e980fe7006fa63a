"""Raw ClientHello building and first-flight parsing, checked by parsing our own bytes back
with tlslite-ng and by feeding the parsers hand-built messages."""

from __future__ import annotations

import contextlib

import pytest

from probers.tls.hello import (
    MAX_FLIGHT_BYTES,
    HelloSpec,
    build_client_hello,
    curve_name_and_bits,
    group_bits,
    parse_certificate_list,
    parse_key_exchange,
)
from probers.tls.suites import SUITES, TlsVersion, offer_list
from probers.tls.tlslite_compat import FFDHE_PARAMETERS, ClientHello, Parser


def parse_back(record: bytes) -> ClientHello:
    assert record[0] == 22  # handshake record
    assert int.from_bytes(record[3:5], "big") == len(record) - 5
    assert record[5] == 1  # client_hello
    return ClientHello().parse(Parser(bytearray(record[6:])))


def test_tls12_hello_offers_exactly_the_suites_and_the_name() -> None:
    suites = offer_list(TlsVersion.TLS_1_2)[:64]
    hello = parse_back(build_client_hello(HelloSpec(TlsVersion.TLS_1_2, suites, "localhost")))
    assert tuple(hello.client_version) == (3, 3)
    assert hello.cipher_suites == [*suites, 0x00FF]  # + the renegotiation SCSV
    assert hello.server_name == bytearray(b"localhost")
    assert hello.getExtension(13) is not None  # signature_algorithms, 1.2 only
    groups = hello.getExtension(10).groups
    assert groups[:2] == [29, 23]  # x25519, secp256r1 first


def test_no_sni_for_an_ip_address_and_no_sigalgs_below_tls12() -> None:
    hello = parse_back(build_client_hello(HelloSpec(TlsVersion.TLS_1_0, (0x000A,), "127.0.0.1")))
    assert tuple(hello.client_version) == (3, 1)
    assert hello.getExtension(0) is None
    assert hello.getExtension(13) is None


def test_sslv3_hello_has_no_extensions_and_an_sslv3_record() -> None:
    record = build_client_hello(HelloSpec(TlsVersion.SSL_3_0, (0x000A, 0x0005), "localhost"))
    assert record[1:3] == b"\x03\x00"
    hello = parse_back(record)
    assert tuple(hello.client_version) == (3, 0)
    assert hello.extensions is None


def test_hellos_in_the_f5_hang_range_are_padded_past_it() -> None:
    for count in range(1, 65):
        record = build_client_hello(
            HelloSpec(TlsVersion.TLS_1_2, offer_list(TlsVersion.TLS_1_2)[:count], "localhost")
        )
        assert not 0x100 <= len(record) - 5 < 0x200


def test_detection_hello_advertises_tls13_with_a_key_share() -> None:
    from probers.tls.hello import detect_spec

    hello = parse_back(build_client_hello(detect_spec(None)))
    assert hello.getExtension(43).versions[0] == (3, 4)
    (share,) = hello.getExtension(51).client_shares
    assert share.group == 29 and len(share.key_exchange) == 32


def test_key_exchange_ecdhe_named_curve() -> None:
    point = b"\x04" + b"\x11" * 64
    body = b"\x03" + (23).to_bytes(2, "big") + bytes([len(point)]) + point + b"\x04\x01\x00\x00"
    assert parse_key_exchange(body, SUITES[0xC02F]) == ("secp256r1", 256)


def test_key_exchange_dhe_prime_size_and_known_group() -> None:
    _g, prime = FFDHE_PARAMETERS["RFC7919 ffdhe2048"]
    p = prime.to_bytes(256, "big")
    body = len(p).to_bytes(2, "big") + p + b"\x00\x01\x02" + b"\x00\x01\x05"
    assert parse_key_exchange(body, SUITES[0x009E]) == ("ffdhe2048", 2048)
    custom = (1 << 1023) + 1
    p = custom.to_bytes(128, "big")
    body = len(p).to_bytes(2, "big") + p + b"\x00\x01\x02" + b"\x00\x01\x05"
    assert parse_key_exchange(body, SUITES[0x009E]) == ("DH", 1024)


def test_key_exchange_ecdhe_psk_skips_the_identity_hint() -> None:
    body = b"\x00\x04hint" + b"\x03" + (29).to_bytes(2, "big") + b"\x20" + b"\x09" * 32
    assert parse_key_exchange(body, SUITES[0xC037]) == ("x25519", 253)


def test_certificate_list() -> None:
    certs = [b"\x30\x03\x02\x01\x01", b"\x30\x03\x02\x01\x02"]
    entries = b"".join(len(c).to_bytes(3, "big") + c for c in certs)
    body = len(entries).to_bytes(3, "big") + entries
    assert parse_certificate_list(body) == tuple(certs)


@pytest.mark.parametrize(
    ("name", "bits"),
    [("x25519", 253), ("x448", 448), ("secp384r1", 384), ("sect163k1", 163),
     ("brainpoolP512r1", 512), ("ffdhe3072", 3072), ("X25519MLKEM768", 0)],
)  # fmt: skip
def test_group_bits(name: str, bits: int) -> None:
    assert group_bits(name) == bits


def test_unknown_curve_id_is_named_by_number() -> None:
    assert curve_name_and_bits(0x7777) == ("group-0x7777", 0)


# -- a first flight past the flight's bound (real sockets: a socketpair) -------------------


def _flight_with_chain(suite: int, chain_bytes: int) -> bytes:
    """A TLS 1.2 ServerHello picking ``suite``, a Certificate message of about
    ``chain_bytes`` (one entry), a ServerKeyExchange of a 1,024-bit DH group, and
    ServerHelloDone, in records of 16 KiB."""
    def handshake(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + len(body).to_bytes(3, "big") + body

    hello = handshake(2, b"\x03\x03" + b"\x11" * 32 + b"\x00" + suite.to_bytes(2, "big")
                      + b"\x00")
    entry = b"\x30" * chain_bytes
    certificate = handshake(11, (len(entry) + 3).to_bytes(3, "big")
                            + len(entry).to_bytes(3, "big") + entry)
    prime = b"\xff" * 128
    params = (len(prime).to_bytes(2, "big") + prime + b"\x00\x01\x02"
              + (128).to_bytes(2, "big") + b"\x5a" * 128)
    key_exchange = handshake(12, params + b"\x04\x01" + (256).to_bytes(2, "big") + b"\x00" * 256)
    payload = hello + certificate + key_exchange + handshake(14, b"")
    return b"".join(b"\x16\x03\x03" + len(chunk).to_bytes(2, "big") + chunk
                    for chunk in (payload[i:i + 16384] for i in range(0, len(payload), 16384)))


@pytest.mark.parametrize(("suite", "chain", "kex_bits", "kept_chain"), [
    (0x009E, 200_000, 1024, True),    # DHE, the chain fits: kept, the group read
    (0x009E, MAX_FLIGHT_BYTES - 400, 1024, True),  # fits just: the group has its room
    (0x009E, 300_000, 1024, False),   # past the bound: read past, the group read
    (0x009E, 5_000_000, 0, False),    # past the skip's bound too: the pick only
    (0x009C, 300_000, 0, False),      # RSA key exchange: nothing after it matters
], ids=["fits", "fits-just", "skipped", "too-long", "rsa-not-skipped"])
def test_the_key_exchange_behind_a_long_chain(suite: int, chain: int, kex_bits: int,
                                              kept_chain: bool) -> None:
    import socket
    import threading

    from probers.tls.hello import OutcomeKind, _Deadline, _read_flight

    # Given a server's first flight with a chain of this size (a DHE or RSA pick)
    ours, theirs = socket.socketpair()
    flight = _flight_with_chain(suite, chain)

    def send() -> None:
        with contextlib.suppress(OSError):
            theirs.sendall(flight)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        ours.settimeout(5)
        outcome = _read_flight(ours, HelloSpec(TlsVersion.TLS_1_2, (suite,)), _Deadline(5))
    finally:
        ours.close()
        theirs.close()
        sender.join(5)
    # Then the pick is kept, and the DH group is read whenever the chain could be read
    # past (it read 0 bits, a DHE port graded strong: reviews), the chain kept when it fits
    assert (outcome.kind, outcome.suite) == (OutcomeKind.ACCEPTED, suite)
    assert outcome.kex_bits == kex_bits
    assert bool(outcome.certificates) is kept_chain
