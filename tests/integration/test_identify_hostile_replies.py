"""Identification against replies that break a protocol parser or a probe's second step
(real servers on 127.0.0.1): the port keeps what the earlier exchange told, and
``identify`` never raises (a helper session's review, 2026-12-05)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from probers.service.app_protocols import AMQP_HEADER, parse_amqp
from probers.service.engine import Endpoint, Settings, identify, probe_postgres
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
