"""UDP services off their usual ports, silent to discovery's datagram: the identify
stage asks each again in every protocol portwatch speaks (``udp_probes.second_look``),
as nmap -sV sends its UDP probes to an open|filtered port (a review found a DNS server
on 21053 and snmpd on 21161 listed open|filtered, unnamed, where nmap named both).

Real sockets on 127.0.0.1 only: a DNS server that answers only a DNS query, a real
snmpd, an echo service that ignores empty datagrams, a silent socket and a closed port.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

from tests import daemons, loopback
from tests.conftest import run_cli

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "6", "PORTWATCH_BANNER_WAIT": "1"}


def _dns_only(query: bytes) -> bytes | None:
    """A DNS server's answer to a well-formed query (header: id, QR set, REFUSED); any
    other datagram, discovery's empty one included, gets nothing."""
    if len(query) < 12 or query[2] & 0x80 or struct.unpack("!H", query[4:6])[0] != 1:
        return None
    return query[:2] + b"\x81\x05" + query[4:6] + b"\x00\x00\x00\x00\x00\x00" + query[12:]


def _echo_non_empty(data: bytes) -> bytes | None:
    return data or None


def test_silent_udp_services_off_their_ports_are_opened_and_named(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        closed_port = gone.getsockname()[1]  # a port unreachable: silence means something
    # (snmpd comes from make install: a start that fails is this test's failure)
    with daemons.start_snmpd("127.0.0.1") as snmp_server, \
            loopback.udp_responder(answer=_dns_only) as dns_port, \
            loopback.udp_responder(answer=_echo_non_empty) as echo_port, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent_port = silent.getsockname()[1]
        ports = [dns_port, snmp_server.port, echo_port, silent_port, closed_port]
        # When they are scanned over UDP (none is a port our payload table knows)
        result = run_cli("scan", "127.0.0.1", "--ports", "1", "--udp",
                         ",".join(map(str, ports)), store=store, env=FAST)
    assert result.code == 0, result.stderr
    listed = run_cli("report", "list", "--format", "json", store=store)
    assert listed.code == 0, listed.stderr
    rows = {r["port"]: r for r in json.loads(listed.stdout) if r["proto"] == "udp"}
    # Then each service that answered its own protocol is open and named by it
    assert (rows[dns_port]["state"], rows[dns_port]["service"]) == ("open", "domain")
    snmp = rows[snmp_server.port]
    assert (snmp["state"], snmp["service"], snmp["product"]) == ("open", "snmp", "net-snmp")
    assert snmp["risk_color"] == "red"
    assert (rows[echo_port]["state"], rows[echo_port]["service"]) == ("open", "echo")
    # and silence is still only open|filtered, unnamed; the closed port is not listed
    assert (rows[silent_port]["state"], rows[silent_port]["service"]) == ("open|filtered", "")
    assert closed_port not in rows
