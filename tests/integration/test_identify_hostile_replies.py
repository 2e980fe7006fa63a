"""Identification against replies that break a protocol parser or a probe's second step
(real servers on 127.0.0.1): the port keeps what the earlier exchange told, and
``identify`` never raises (a helper session's review, 2026-12-05)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time

from probers.service.app_protocols import AMQP_HEADER, parse_amqp
from probers.service.engine import (
    TLS_PORTS,
    Endpoint,
    Settings,
    identify,
    probe_postgres,
    probe_tls,
)
from tests import loopback

# A frame that starts like Connection.Start (type 1, size 4, class 10 method 10) and
# ends before the version bytes a Connection.Start carries
SHORT_CONNECTION_START = b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a\xce\x08"


def test_a_connection_start_too_short_for_its_version_is_no_answer() -> None:
    assert parse_amqp(SHORT_CONNECTION_START) is None


def test_an_amqp_broker_whose_second_reply_is_malformed_is_still_amqp() -> None:
    # Given a server that answers any request with the AMQP protocol header (so the
    # AMQP probe comes next) and the AMQP probe with a truncated Connection.Start
    def handle(conn: socket.socket) -> None:
        conn.settimeout(3)
        data = conn.recv(4096)
        conn.sendall(SHORT_CONNECTION_START if data.startswith(AMQP_HEADER) else AMQP_HEADER)
        time.sleep(0.3)

    with loopback.listen(handle) as listener:
        info = asyncio.run(identify(Endpoint("127.0.0.1", listener.port),
                                    Settings(budget=5, jarm=False)))
    # Then identification finishes, and what the header said stands
    assert info.service == "amqp"


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_postgres_that_resets_after_its_n_is_still_postgresql() -> None:
    # Given a server answering PostgreSQL's SSLRequest with 'N', then resetting the
    # connection (before the startup packet the probe sends next is read)
    def handle(conn: socket.socket) -> None:
        conn.settimeout(3)
        if conn.recv(4096) == struct.pack("!II", 8, 80877103):
            conn.sendall(b"N")
            time.sleep(0.05)
            _reset(conn)

    with loopback.listen(handle) as listener:
        outcome = asyncio.run(probe_postgres(Endpoint("127.0.0.1", listener.port),
                                             Settings(), "postgresql"))
    # Then what 'N' told is kept
    assert outcome.info is not None
    assert (outcome.info.service, outcome.info.extra_info) == ("postgresql", "TLS not offered")


SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _drip(conn: socket.socket) -> None:
    """An SSH banner sent a byte every 0.5 s, whatever the client says."""
    conn.settimeout(0.5)
    for byte in b"SSH-2.0-OpenSSH_8.0\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


def _postgres_tls(conn: socket.socket) -> None:
    """'S' to the SSLRequest, then a TLS alert record to the ClientHello (a server whose
    TLS refused our hello still speaks TLS)."""
    conn.settimeout(3)
    if conn.recv(4096) == SSL_REQUEST:
        conn.sendall(b"S")
        if conn.recv(4096)[:1] == b"\x16":  # the ClientHello's handshake record
            conn.sendall(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
        time.sleep(0.3)


def _postgres_s_then_silent(conn: socket.socket) -> None:
    conn.settimeout(3)
    if conn.recv(4096) == SSL_REQUEST:
        conn.sendall(b"S")
        time.sleep(1.5)


def test_a_banner_dripped_a_byte_at_a_time_is_not_postgresql() -> None:
    # Given a server whose "SSH-2.0" banner starts with the byte PostgreSQL answers an
    # SSLRequest with, sent a byte every half second (a review found it named a red
    # PostgreSQL "TLS offered" from that one 'S')
    with loopback.listen(_drip) as listener:
        outcome = asyncio.run(probe_postgres(Endpoint("127.0.0.1", listener.port),
                                             Settings(), "postgresql"))
    # Then the probe names nothing: the ClientHello after the 'S' met more text
    assert outcome.info is None
    assert outcome.data == b"S"


def test_an_s_confirmed_by_a_tls_record_is_postgresql_and_silence_only_a_guess() -> None:
    # Given a PostgreSQL answering 'S' whose next words are TLS
    with loopback.listen(_postgres_tls) as listener:
        confirmed = asyncio.run(probe_postgres(Endpoint("127.0.0.1", listener.port),
                                               Settings(), "postgresql"))
    # Then it is PostgreSQL offering TLS, sure enough to stop there
    assert confirmed.info is not None
    assert (confirmed.info.service, confirmed.info.extra_info,
            confirmed.info.confidence) == ("postgresql", "TLS offered", 8)
    # And one whose 'S' is followed by silence is PostgreSQL only as a guess other probes
    # may outbid (below the stop confidence)
    with loopback.listen(_postgres_s_then_silent) as listener:
        guessed = asyncio.run(probe_postgres(Endpoint("127.0.0.1", listener.port),
                                             Settings(probe_timeout=1.0), "postgresql"))
    assert guessed.info is not None
    assert (guessed.info.service, guessed.info.confidence) == ("postgresql", 5)


def _slow_tls_http(context: ssl.SSLContext, delay: float) -> loopback.Handler:
    """A TLS server that takes ``delay`` seconds to answer a ClientHello (an appliance's
    slow key), then serves HTTP as nginx; anything not TLS gets the connection closed."""
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            first = conn.recv(1, socket.MSG_PEEK)
            time.sleep(delay)
            if first != b"\x16":  # not a TLS handshake record
                return
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nContent-Length: 0"
                            b"\r\nConnection: close\r\n\r\n")
    return handle


def test_a_slow_tls_handshake_on_an_odd_port_is_still_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a TLS server answering its handshake after 0.8 s, on a port no hint names
    # (the guessed handshake gave up after 0.5 s: the port was "not identified", and
    # its certificate and suites never reached the Ciphers report; a review)
    context = loopback.self_signed(tmp_path)
    with loopback.listen(_slow_tls_http(context, 0.8)) as listener:
        assert listener.port not in TLS_PORTS
        info = asyncio.run(identify(Endpoint("127.0.0.1", listener.port),
                                    Settings(budget=10, jarm=False, http_meta=False)))
    # Then the guessed handshake waited long enough: the port is HTTPS by nginx
    assert (info.service, info.product, info.version, info.is_tls) == (
        "https", "nginx", "1.24.0", True)


def test_a_tls_handshake_broken_by_junk_is_not_called_an_alert() -> None:
    # Given a server answering a ClientHello with a handshake record whose message is
    # junk (a ServerHelloDone-like 0x0e with a bad length), and one sending a real alert
    def junk(conn: socket.socket) -> None:
        conn.settimeout(3)
        conn.recv(4096)
        conn.sendall(b"\x16\x03\x03\x00\x06\x0e\x00\x00\x02\xff\xff")
        time.sleep(1)

    def alert(conn: socket.socket) -> None:
        conn.settimeout(3)
        conn.recv(4096)
        conn.sendall(b"\x15\x03\x03\x00\x02\x02\x28")  # fatal handshake_failure
        time.sleep(1)

    methods = {}
    for name, handler in (("junk", junk), ("alert", alert)):
        with loopback.listen(handler) as listener:
            outcome = asyncio.run(probe_tls(Endpoint("127.0.0.1", listener.port),
                                            Settings(probe_timeout=2), ""))
        assert outcome.info is not None and outcome.info.service == "ssl"
        methods[name] = (outcome.info.method, outcome.info.extra_info)
    # Then only the alert is said to be one ("tls:alert" named both: a review)
    assert methods == {
        "junk": ("tls:handshake-error", "handshake failed: UNEXPECTED_MESSAGE"),
        "alert": ("tls:alert", "handshake failed: SSLV3_ALERT_HANDSHAKE_FAILURE")}
