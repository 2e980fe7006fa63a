"""No UDP datagram asks with an SNMP community ("public": a credential guess) unless the
user allows it (``snmp_public_community``): nmap's UDP probes, sent to a real recorder
socket on loopback that answers every datagram with junk, so every probe is tried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from probers.service.app_protocols import carries_snmp_community
from stream_processors.stages import UDP_PROBE_BUDGET, NmapFallback
from tests import loopback


def _keep_and_answer_junk(got: list[bytes]) -> Callable[[bytes], bytes]:
    def answer(datagram: bytes) -> bytes:
        got.append(datagram)
        return b"\x01\x02junkjunk"
    return answer


@pytest.mark.parametrize("allowed", [False, True], ids=["default", "allowed"])
def test_nmaps_udp_probes_ask_with_a_community_only_when_allowed(allowed: bool) -> None:
    # Given a port that answers anything with junk (nothing names it: every probe is sent)
    got: list[bytes] = []
    with loopback.udp_responder(answer=_keep_and_answer_junk(got)) as port:
        # When nmap's UDP probes identify it, as the identify stage asks them
        info = asyncio.run(NmapFallback().udp("127.0.0.1", port, b"\x01\x02junkjunk",
                                              UDP_PROBE_BUDGET, allow_snmp_community=allowed))
    # Then its probes were sent, and SNMPv1public among them only with the user's leave
    # (it asked "public" of every such port on a default scan: a review)
    assert info is not None and not info.is_identified
    assert len(got) > 10
    assert sum(map(carries_snmp_community, got)) == (1 if allowed else 0)
