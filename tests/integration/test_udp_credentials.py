"""No UDP datagram asks with an SNMP community ("public": a credential guess) unless the
user allows it (``snmp_public_community``): nmap's UDP probes, sent to a real recorder
socket on loopback that answers every datagram with junk, so every probe is tried."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from probers.service.app_protocols import carries_snmp_community
from stream_processors.stages import UDP_PROBE_BUDGET, NmapFallback


@contextmanager
def junk_answering_recorder() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP socket on 127.0.0.1 that keeps every datagram and answers each with junk:
    (its port, the datagrams so far)."""
    got: list[bytes] = []
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.1)

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(65_535)
                except TimeoutError:
                    continue
                got.append(data)
                sock.sendto(b"\x01\x02junkjunk", peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield sock.getsockname()[1], got
        finally:
            stop.set()
            thread.join(timeout=5)


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "allowed"])
def test_nmaps_udp_probes_ask_with_a_community_only_when_allowed(allowed: bool) -> None:
    # Given a port that answers anything with junk (nothing names it: every probe is sent)
    with junk_answering_recorder() as (port, got):
        # When nmap's UDP probes identify it, as the identify stage asks them
        info = asyncio.run(NmapFallback().udp("127.0.0.1", port, b"\x01\x02junkjunk",
                                              UDP_PROBE_BUDGET, allow_snmp_community=allowed))
    # Then its probes were sent, and SNMPv1public among them only with the user's leave
    # (it asked "public" of every such port on a default scan: a review)
    assert info is not None and not info.is_identified
    assert len(got) > 10
    assert sum(map(carries_snmp_community, got)) == (1 if allowed else 0)
