"""STARTTLS preambles: the routing table, the reply parsers (property-tested: hostile bytes
give a typed answer or ``UpgradeFailure``, never another exception), the bounded reader on
real socket pairs, and NNTP, IRC and RDP preambles against scripted peers on a socket pair
(named as such: ``ScriptedPeer``) that check what was sent and that every answer was read.
The same three are also tested against real servers (INN's nnrpd, InspIRCd, xrdp) in
tests/integration/test_starttls_real_servers.py and test_starttls_pipeline.py."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probers.tls import starttls
from probers.tls.starttls import (
    MAX_PREAMBLE_BYTES,
    PREAMBLES,
    FailureKind,
    MysqlGreeting,
    Reader,
    Upgrade,
    UpgradeFailure,
    route_for,
)

PARSERS: list[Callable[[bytes], object]] = [
    starttls.parse_reply_line,
    starttls.imap_capabilities,
    lambda data: starttls.imap_tagged(data, b"pw1"),
    starttls.pop3_status,
    starttls.sieve_response,
    starttls.xmpp_offers_starttls,
    starttls.xmpp_starttls_answer,
    starttls.ber_header,
    starttls.ldap_message_complete,
    starttls.parse_ldap_extended_response,
    starttls.parse_mysql_greeting,
    starttls.parse_rdp_confirm,
]


# -- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "is_tls", "expected"),
    [
        ("smtp", False, Upgrade.SMTP),
        ("submission", False, Upgrade.SMTP),
        ("imap", False, Upgrade.IMAP),
        ("pop3", False, Upgrade.POP3),
        ("ftp", False, Upgrade.FTP),
        ("postgresql", False, Upgrade.POSTGRES),
        ("mysql", False, Upgrade.MYSQL),
        ("ldap", False, Upgrade.LDAP),
        ("xmpp-client", False, Upgrade.XMPP),
        ("ms-wbt-server", False, Upgrade.RDP),
        ("imap", True, Upgrade.DIRECT),  # imaps: TLS from the first byte
        ("ssl/http", False, Upgrade.DIRECT),
        ("SMTP?", False, Upgrade.SMTP),  # nmap's "unsure" suffix
        ("ssh", False, None),
        ("", False, None),
    ],
)
def test_route_follows_the_identified_service(service: str, is_tls: bool,
                                              expected: Upgrade | None) -> None:  # fmt: skip
    assert route_for(service, is_tls) is expected


def test_every_upgrade_has_a_preamble() -> None:
    assert set(PREAMBLES) == set(Upgrade) - {Upgrade.DIRECT}


# -- parsers: hostile input -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_parsers_answer_or_raise_upgrade_failure_only(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except UpgradeFailure as failure:
            assert failure.reason
            assert len(failure.reason) < 400  # an excerpt, never the whole hostile input


@settings(max_examples=200, deadline=None)
@given(code=st.integers(100, 599), text=st.text(max_size=60).filter(lambda t: "\n" not in t),
       more=st.booleans())  # fmt: skip
def test_reply_line_round_trip(code: int, text: str, more: bool) -> None:
    line = f"{code}{'-' if more else ' '}{text}".encode()
    assert starttls.parse_reply_line(line) == (code, not more, text)


@settings(max_examples=200, deadline=None)
@given(result_code=st.integers(0, 2**31 - 1), message=st.text(max_size=300),
       message_id=st.integers(1, 127))  # fmt: skip
def test_ldap_extended_response_round_trip(result_code: int, message: str,
                                           message_id: int) -> None:  # fmt: skip
    # Given an ExtendedResponse encoded as a server would (BER, definite lengths)
    ber = starttls._ber
    code_bytes = result_code.to_bytes(max(1, (result_code.bit_length() + 8) // 8), "big")
    body = ber(0x0A, code_bytes) + ber(0x04, b"") + ber(0x04, message.encode())
    packet = ber(0x30, ber(0x02, bytes([message_id])) + ber(0x78, body))
    # Then it is complete, and decodes to the same code and message
    assert starttls.ldap_message_complete(packet)
    assert not starttls.ldap_message_complete(packet[:-1]) or message == ""
    assert starttls.parse_ldap_extended_response(packet) == (result_code, message[:200])


def test_ldap_starttls_request_is_the_rfc_4511_extended_request() -> None:
    request = starttls.ldap_starttls_request()
    assert request == bytes.fromhex("301d02010177188016") + b"1.3.6.1.4.1.1466.20037"


@settings(max_examples=200, deadline=None)
@given(capabilities=st.integers(0, 2**32 - 1), version=st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_mysql_greeting_round_trip(capabilities: int, version: str) -> None:
    # Given a protocol-10 greeting (layout of MySQL's "Protocol::HandshakeV10")
    payload = (b"\x0a" + version.encode() + b"\x00" + struct.pack("<I", 7) + b"12345678\x00"
               + struct.pack("<H", capabilities & 0xFFFF) + b"\x21" + b"\x02\x00"
               + struct.pack("<H", capabilities >> 16) + b"\x15" + bytes(10) + b"abcdefghijkl\x00")
    greeting = starttls.parse_mysql_greeting(payload)
    assert greeting == MysqlGreeting(version, capabilities, 0x21)
    # And the SSLRequest asks for TLS with protocol 41, as sequence number 1
    request = starttls.mysql_ssl_request(greeting)
    assert len(request) == 4 + 32 and request[3] == 1
    flags = struct.unpack("<I", request[4:8])[0]
    assert flags & starttls.CLIENT_SSL and flags & starttls.CLIENT_PROTOCOL_41


def test_mysql_error_greeting_is_a_refusal() -> None:
    packet = b"\xff\x6a\x04Host '10.0.0.9' is not allowed to connect to this MariaDB server"
    with pytest.raises(UpgradeFailure) as caught:
        starttls.parse_mysql_greeting(packet)
    assert caught.value.kind is FailureKind.REFUSED
    assert "is not allowed to connect" in caught.value.reason


def test_rdp_confirm_parsing() -> None:
    request = starttls.rdp_connection_request()
    assert request == bytes.fromhex("030000130ee000000000000100080001000000")
    confirm_tls = bytes.fromhex("030000130ed000001234000200080001000000")
    assert starttls.parse_rdp_confirm(confirm_tls) == 1
    failure = bytes.fromhex("030000130ed000001234000300080002000000")  # SSL_NOT_ALLOWED
    with pytest.raises(UpgradeFailure) as caught:
        starttls.parse_rdp_confirm(failure)
    assert caught.value.kind is FailureKind.NOT_OFFERED
    legacy = bytes.fromhex("0300000b06d00000123400")  # no negotiation block at all
    with pytest.raises(UpgradeFailure) as caught:
        starttls.parse_rdp_confirm(legacy)
    assert caught.value.reason == "no TLS offered (standard RDP security)"


def test_xmpp_features_and_answers() -> None:
    features = (b"<?xml version='1.0'?><stream:stream from='localhost' id='x' version='1.0'>"
                b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
                b"<mechanisms/></stream:features>")  # fmt: skip
    assert starttls.xmpp_features_complete(features)
    assert starttls.xmpp_offers_starttls(features) is True
    assert starttls.xmpp_offers_starttls(features.replace(b"starttls", b"bind")) is False
    error = (b"<stream:stream><stream:error><host-unknown "
             b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    with pytest.raises(UpgradeFailure, match="stream error: host-unknown"):
        starttls.xmpp_offers_starttls(error)
    assert starttls.xmpp_starttls_answer(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") \
        == "proceed"  # fmt: skip
    assert starttls.xmpp_starttls_answer(b"<failure xmlns='x'/></stream:stream>") == "failure"
    assert starttls.xmpp_starttls_answer(b"<proc") is None
    # A hostile name cannot add attributes to our stream header
    assert b" to='eviltox' " in starttls.xmpp_stream_header("evil' to='x", is_server=False)


# -- the bounded reader, on real socket pairs -------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_reader_times_out_on_a_silent_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    with pytest.raises(UpgradeFailure) as caught:
        Reader(ours, time.monotonic() + 0.2).line()
    assert caught.value.kind is FailureKind.TIMEOUT


def test_reader_refuses_an_endless_line(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"2" * (starttls.MAX_LINE_BYTES + 10))
    with pytest.raises(UpgradeFailure, match="line too long"):
        Reader(ours, time.monotonic() + 5).line()


def test_reader_caps_the_whole_preamble(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    flood = threading.Thread(
        target=lambda: theirs.sendall(b"250-X\r\n" * (MAX_PREAMBLE_BYTES // 7 + 100)),
        daemon=True,
    )
    flood.start()
    reader = Reader(ours, time.monotonic() + 5)
    with pytest.raises(UpgradeFailure) as caught:
        starttls.read_numeric_reply(reader)
    # MAX_REPLY_LINES lines stop it first, or the byte cap does: either way, bounded
    assert caught.value.kind is FailureKind.UNEXPECTED
    assert reader.received <= MAX_PREAMBLE_BYTES + 4096
    ours.close()
    flood.join(timeout=5)


def test_reader_closed_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"220 partial")
    theirs.close()
    with pytest.raises(UpgradeFailure) as caught:
        Reader(ours, time.monotonic() + 5).line()
    assert caught.value.kind is FailureKind.CLOSED


# -- protocols without a Debian server here: scripted peers on a socket pair -----------


Script = list[tuple[bytes | None, bytes]]


class ScriptedPeer(threading.Thread):
    """A fake server (named as such): for each step, wait for the expected bytes (None =
    nothing), then send the answer. It records what it received and whether it reached
    the end of its script, so a test can tell a preamble that read every answer from one
    that returned early."""

    def __init__(self, sock: socket.socket, script: Script) -> None:
        super().__init__(daemon=True)
        self.sock, self.script = sock, script
        self.received = b""
        self.finished = False
        self.start()

    def run(self) -> None:
        buffer = b""
        for expected, answer in self.script:
            while expected is not None and expected not in buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                self.received += chunk
            buffer = b""
            self.sock.sendall(answer)
        self.finished = True


def scripted_peer(sock: socket.socket, script: Script) -> ScriptedPeer:
    return ScriptedPeer(sock, script)


def _upgrade(sock: socket.socket, upgrade: Upgrade) -> None:
    deadline = time.monotonic() + 5
    starttls.perform_upgrade(sock, upgrade, server_name="news.example", deadline=deadline)


def assert_upgraded(ours: socket.socket, peer: ScriptedPeer, sent: bytes) -> None:
    """The preamble returned ready for TLS: the peer served its whole script, received
    exactly ``sent``, and nothing it said is left unread on our socket (it would be
    taken for the TLS handshake)."""
    peer.join(timeout=5)
    assert peer.finished
    assert peer.received == sent
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):
        ours.recv(1)


def test_nntp_starttls(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    peer = scripted_peer(theirs, [
        (None, b"200 news.example ready\r\n"),
        (b"CAPABILITIES\r\n", b"101 Capability list:\r\nVERSION 2\r\nSTARTTLS\r\nREADER\r\n.\r\n"),
        (b"STARTTLS\r\n", b"382 Continue with TLS negotiation\r\n"),
    ])  # fmt: skip
    _upgrade(ours, Upgrade.NNTP)
    assert_upgraded(ours, peer, b"CAPABILITIES\r\nSTARTTLS\r\n")


def test_nntp_without_starttls_is_not_offered(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    scripted_peer(theirs, [
        (None, b"201 news.example ready (no posting)\r\n"),
        (b"CAPABILITIES\r\n", b"101 Capability list:\r\nVERSION 2\r\nREADER\r\n.\r\n"),
    ])  # fmt: skip
    with pytest.raises(UpgradeFailure) as caught:
        _upgrade(ours, Upgrade.NNTP)
    assert caught.value.kind is FailureKind.NOT_OFFERED


def test_irc_starttls(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    peer = scripted_peer(theirs, [
        (b"STARTTLS\r\n", b":irc.example NOTICE * :*** Looking up your hostname\r\n"
                          b":irc.example 670 * :STARTTLS successful, go ahead with TLS\r\n"),
    ])  # fmt: skip
    _upgrade(ours, Upgrade.IRC)
    assert_upgraded(ours, peer, b"STARTTLS\r\n")


def test_rdp_tls_security_layer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    peer = scripted_peer(theirs, [
        (bytes.fromhex("0100080001000000"),
         bytes.fromhex("030000130ed000001234000200080001000000")),
    ])  # fmt: skip
    _upgrade(ours, Upgrade.RDP)
    assert_upgraded(ours, peer, starttls.rdp_connection_request())


def test_smtp_refusal_is_stated_with_the_servers_words(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    scripted_peer(theirs, [
        (None, b"220 mx.example ESMTP\r\n"),
        (b"EHLO", b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
        (b"STARTTLS\r\n", b"454 4.7.0 TLS not available due to local problem\r\n"),
    ])  # fmt: skip
    with pytest.raises(UpgradeFailure) as caught:
        _upgrade(ours, Upgrade.SMTP)
    assert caught.value.kind is FailureKind.REFUSED
    assert caught.value.reason == (
        "STARTTLS answered 454 4.7.0 TLS not available due to local problem"
    )


def test_bytes_after_go_ahead_are_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    # A server that speaks after "220 ready" would have its words taken for TLS
    ours, theirs = pair
    scripted_peer(theirs, [
        (None, b"220 mx.example ESMTP\r\n"),
        (b"EHLO", b"250-mx.example\r\n250 STARTTLS\r\n"),
        (b"STARTTLS\r\n", b"220 go ahead\r\n250 surprise\r\n"),
    ])  # fmt: skip
    with pytest.raises(UpgradeFailure, match="data after the upgrade answer"):
        _upgrade(ours, Upgrade.SMTP)


# -- whole preambles against hostile peers (socket pairs) -------------------------------


def _hostile_peer(sock: socket.socket, chunks: list[bytes]) -> threading.Thread:
    """A fake server (named as such): sends ``chunks`` whatever we say, then closes."""

    def run() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            while sock.recv(4096):  # drain what the client still sends
                pass
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@settings(max_examples=40, deadline=None)
@given(upgrade=st.sampled_from([u for u in Upgrade if u is not Upgrade.DIRECT]),
       chunks=st.lists(st.binary(max_size=300), max_size=6))  # fmt: skip
def test_every_preamble_survives_hostile_bytes(upgrade: Upgrade, chunks: list[bytes]) -> None:
    # Given a peer that answers anything at all, in any chunking, then closes
    ours, theirs = socket.socketpair()
    try:
        peer = _hostile_peer(theirs, chunks)
        # When the preamble runs, Then it returns or raises UpgradeFailure, nothing else
        try:
            starttls.perform_upgrade(ours, upgrade, server_name="mx.example",
                                     deadline=time.monotonic() + 3)  # fmt: skip
        except UpgradeFailure as failure:
            assert failure.kind in FailureKind
        ours.close()  # ends the peer's drain
        peer.join(timeout=5)
    finally:
        ours.close()
        theirs.close()


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 120), min_size=1, max_size=12))
def test_smtp_preamble_whatever_the_chunking(cuts: list[int]) -> None:
    # Given a valid SMTP dialogue whose server bytes arrive split at arbitrary points
    greeting = (b"220-mx.example ESMTP\r\n220 welcome\r\n")
    ehlo = b"250-mx.example\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
    ready = b"220 2.0.0 Ready to start TLS\r\n"

    def split(data: bytes) -> list[bytes]:
        pieces, rest = [], data
        for cut in cuts:
            if not rest:
                break
            pieces.append(rest[:cut])
            rest = rest[cut:]
        return [*pieces, rest] if rest else pieces

    ours, theirs = socket.socketpair()

    def serve() -> None:
        for step, answer in ((None, greeting), (b"EHLO", ehlo), (b"STARTTLS", ready)):
            buffer = b""
            while step is not None and step not in buffer:
                buffer += theirs.recv(4096)
            for piece in split(answer):
                theirs.sendall(piece)
                time.sleep(0.001)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        _upgrade(ours, Upgrade.SMTP)
        thread.join(timeout=5)
        # Then it read every answer to its end (the server sent all, and nothing is left
        # for the TLS handshake to mistake for its own)
        assert not thread.is_alive()
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(1)
    finally:
        ours.close()
        theirs.close()

