"""UdpEngine against real UDP sockets on 127.0.0.0/8.

Every server here is a real socket served from a thread: a DNS responder and an
NTP/SNMP responder that answer only well-formed requests, a silent socket (bound,
never answers), junk and flood responders. A closed port is made certain by
binding it with a socket *connected* to an unused peer: the kernel then delivers
the scanner's datagrams to nobody and answers ICMP port-unreachable, while nobody
else can take the port meanwhile. Tests that bind well-known ports (< 1024) need
root and skip with the reason otherwise. Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from probers.discovery.base import DiscoveryEngine, DiscoveryError, EngineUnavailable, Progress
from probers.discovery.udp import (
    UdpEngine,
    UdpOptions,
    decode_response,
    encode_response,
    udp_service_hint,
    udp_top_ports,
)
from probers.discovery.udp_payloads import (
    GENERIC_PAYLOAD,
    dns_version_query,
    memcached_stats,
    netbios_node_status,
    ntp_client,
    own_payloads,
    snmp_get_sysdescr,
    ssdp_msearch,
)
from probers.service.app_protocols import snmp_v3_discovery
from schemas.records import OpenPort, PortRange, PortState, Proto, Shard, Target

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="binding UDP ports < 1024 needs root")

# Loopback addresses of our own, away from 127.0.0.1 where other tests bind.
HOST_A = "127.0.83.1"
HOST_B = "127.0.83.2"
WELL_KNOWN_HOST = "127.0.83.3"
UNUSED_PEER = ("127.0.83.254", 9)  # closed-port holders connect here; nothing is ever sent


# -- protocol answers of the test servers ----------------------------------------------


def dns_answer(query: bytes) -> bytes | None:
    """A DNS server: answers a well-formed single-question query, ignores anything else."""
    if len(query) < 17:
        return None
    txid, flags, qdcount, ancount, nscount, arcount = struct.unpack("!6H", query[:12])
    if flags & 0x8000 or qdcount != 1 or ancount or nscount or arcount:
        return None
    offset = 12
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:
            return None
        offset += 1 + length
    if offset + 4 != len(query):
        return None
    question = query[12 : offset + 4]
    txt = b"portwatch-test-dns"
    answer = b"\xc0\x0c" + query[offset : offset + 4] + struct.pack("!IH", 0, len(txt) + 1)
    header = struct.pack("!6H", txid, 0x8400, 1, 1, 0, 0)
    return header + question + answer + bytes([len(txt)]) + txt


def ntp_answer(request: bytes) -> bytes | None:
    """An NTP server: answers a 48-byte mode-3 (client) request of version 3 or 4 only."""
    if len(request) != 48:
        return None
    version, mode = (request[0] >> 3) & 0x7, request[0] & 0x7
    if mode != 3 or version not in (3, 4):
        return None
    head = bytes([(version << 3) | 4, 2, request[2], 0xEC]) + bytes(12)
    return head + bytes(8) + request[40:48] + bytes(16)  # origin = client's transmit


def snmp_answer(request: bytes) -> bytes | None:
    """An SNMP agent with community 'public': answers a GetRequest, ignores the rest."""
    if len(request) < 10 or request[0] != 0x30 or request[1] != len(request) - 2:
        return None
    if request[2:4] != b"\x02\x01" or request[4] not in (0, 1):
        return None
    if request[5:13] != b"\x04\x06public" or request[13] != 0xA0:
        return None
    descr = b"portwatch test agent"
    return b"\x30" + bytes([len(descr) + 2]) + b"\x04" + bytes([len(descr)]) + descr


def echo_junk(_: bytes) -> bytes:
    return JUNK


JUNK = bytes((i * 151 + 7) % 256 for i in range(60_000))


class UdpServer:
    """A real UDP socket served from a thread: ``answer(datagram)`` -> reply or None.

    ``replies`` datagrams are sent per answered request (a flood when > 1). Every
    datagram received is recorded, so a test can assert what the scanner sent.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        answer: Callable[[bytes], bytes | None] | None = None,
        replies: int = 1,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.answer = answer
        self.replies = replies
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"udp-test-{self.port}")

    def _serve(self) -> None:
        poller = select.poll()  # not select(): descriptors past 1,024 are refused there
        poller.register(self.sock, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            data, peer = self.sock.recvfrom(65_535)
            self.received.append(data)
            reply = self.answer(data) if self.answer else None
            if reply is not None:
                for _ in range(self.replies):
                    with contextlib.suppress(OSError):
                        self.sock.sendto(reply, peer)

    def __enter__(self) -> UdpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@contextlib.contextmanager
def closed_ports(host: str, count: int) -> Iterator[list[int]]:
    """``count`` UDP ports on ``host`` that answer ICMP port-unreachable, held for the test."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((host, 0))
            sock.connect(UNUSED_PEER)  # only datagrams from UNUSED_PEER would match
        yield [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def shard_for(*hosts: str, ports: list[int]) -> Shard:
    return Shard(
        scan_id="scan-udp-test",
        shard_id="shard-udp-test",
        targets=tuple(Target(ip=h, target=h) for h in hosts),
        ports=tuple(PortRange(p, p) for p in ports),
        proto=Proto.UDP,
    )


def run_scan(engine: UdpEngine, shard: Shard) -> tuple[list[OpenPort], Progress]:
    progress = Progress()

    async def collect() -> list[OpenPort]:
        return [event async for event in engine.scan(shard, progress)]

    return asyncio.run(collect()), progress


def states(found: list[OpenPort]) -> dict[tuple[str, int], PortState]:
    return {(o.target.ip, o.port): o.state for o in found}


def fast_engine(**overrides: object) -> UdpEngine:
    """Short timeouts: loopback answers in microseconds. Deadline bounds every test."""
    settings: dict[str, object] = {"timeout": 0.3, "deadline": 60.0}
    settings.update(overrides)
    return UdpEngine(**settings)  # type: ignore[arg-type]


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def bound_udp_ports() -> set[int]:
    """Every UDP port bound on this machine (any owner, any address), from /proc."""
    ports: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return ports


# -- contract and options ---------------------------------------------------------------


def test_engine_is_a_discovery_engine_named_udp() -> None:
    # Given the default engine / When checked / Then it conforms, named "udp"
    engine = UdpEngine()
    assert isinstance(engine, DiscoveryEngine)
    assert engine.name == "udp"
    assert engine.options == UdpOptions()
    assert (engine.options.retries, engine.options.rate) == (1, 500.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"rate": 0},
        {"retries": -1},
        {"concurrency": 0},
        {"deadline": -1},
        {"report_open_filtered": "sometimes"},
    ],
)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        UdpEngine(**bad)  # type: ignore[arg-type]


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown UdpEngine options"):
        UdpEngine(speed=3)


def test_tcp_shard_is_refused() -> None:
    # Given a TCP shard / When the UDP engine gets it / Then it refuses loudly
    shard = Shard("s", "x", (Target("127.0.0.1", "127.0.0.1"),), (PortRange(1, 2),))
    with pytest.raises(DiscoveryError, match="tcp shard"):
        run_scan(UdpEngine(), shard)


# -- payload choice ---------------------------------------------------------------------


def test_well_known_ports_get_portwatchs_own_payloads() -> None:
    engine = UdpEngine(use_nmap_payloads=False)
    assert [p.data for p in engine.payloads_for(53)] == [dns_version_query()]
    assert [p.data for p in engine.payloads_for(123)] == [ntp_client(4), ntp_client(3)]
    # SNMP: engine discovery (no credential) unless the "public" guess is allowed
    assert [p.data for p in engine.payloads_for(161)] == [snmp_v3_discovery()]
    allowed = UdpEngine(use_nmap_payloads=False, snmp_public_community=True)
    assert [p.data for p in allowed.payloads_for(161)] == [
        snmp_get_sysdescr(1),
        snmp_get_sysdescr(0),
    ]
    assert [p.data for p in engine.payloads_for(137)] == [netbios_node_status()]
    assert [p.data for p in engine.payloads_for(1900)] == [ssdp_msearch()]
    assert [p.data for p in engine.payloads_for(11211)] == [memcached_stats()]
    assert engine.payloads_for(40_000) == (GENERIC_PAYLOAD,)


def test_nmaps_snmp_walk_is_sent_only_when_the_public_community_is_allowed() -> None:
    from probers.nmapdata import NmapDataUnavailable
    from probers.nmapdata.payloads import udp_payloads
    from probers.service.app_protocols import carries_snmp_community

    try:
        table = udp_payloads()
    except NmapDataUnavailable as exc:
        pytest.skip(f"nmap-common not installed: {exc}")
    # Given nmap-payloads' "SNMP PUBLIC WALK" beside its SNMPv3 payload on 260 and 3401
    # (3401 is in the top 1,000)
    for port in (260, 3401):
        assert sorted(map(carries_snmp_community, table[port])) == [False, True]
    # When the engine picks their payloads with its defaults / Then its v3 one alone, no
    # community (a default --udp top1000 scan asked "public" on 3401: a review)
    engine = UdpEngine()
    for port in (260, 3401):
        assert [p.data for p in engine.payloads_for(port)] == [
            d for d in table[port] if not carries_snmp_community(d)]
    # And with the user's leave, nmap's walk too
    allowed = UdpEngine(snmp_public_community=True)
    assert [p.data for p in allowed.payloads_for(3401)] == list(dict.fromkeys(table[3401]))[:3]
    # A port whose every nmap payload asks with a community gets engine discovery: the
    # rule on a table of that shape (nmap's own file has none today)
    import probers.nmapdata.payloads as payloads_module

    walk_only = {3401: [d for d in table[3401] if carries_snmp_community(d)]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(payloads_module, "udp_payloads", lambda _path=None: walk_only)
        engine = UdpEngine()
        assert [(p.name, p.data) for p in engine.payloads_for(3401)] == [
            ("snmp:v3-engine-discovery", snmp_v3_discovery())]


def test_other_ports_get_nmap_payloads_when_installed() -> None:
    from probers.nmapdata import NmapDataUnavailable
    from probers.nmapdata.payloads import udp_payloads

    try:
        table = udp_payloads()
    except NmapDataUnavailable as exc:
        pytest.skip(f"nmap-common not installed: {exc}")
    # Given nmap's echo-port payload / When the engine picks one for port 7 / Then it is nmap's
    engine = UdpEngine()
    assert [p.data for p in engine.payloads_for(7)] == table[7][:1]
    assert engine.payloads_for(7)[0].name == "nmap-payloads:7:0"
    # and our own payload wins on a port both know
    assert [p.data for p in engine.payloads_for(53)] == [dns_version_query()]


def test_override_replaces_every_other_choice_and_is_capped() -> None:
    engine = UdpEngine(payload_for={53: [b"a", b"b", b"c", b"d"]}, max_payloads=2)
    assert [p.data for p in engine.payloads_for(53)] == [b"a", b"b"]
    assert [p.name for p in engine.payloads_for(53)] == ["override:0", "override:1"]


def test_own_payloads_are_well_formed_for_real_parsers() -> None:
    # Given the test servers' strict parsers / When fed our payloads / Then they answer
    assert dns_answer(dns_version_query()) is not None
    assert ntp_answer(ntp_client(4)) is not None and ntp_answer(ntp_client(3)) is not None
    assert snmp_answer(snmp_get_sysdescr(0)) is not None
    assert snmp_answer(snmp_get_sysdescr(1)) is not None
    # and the fixed fields are what the RFCs say
    assert ntp_client(4)[0] == 0x23 and ntp_client(3)[0] == 0x1B
    assert memcached_stats()[2:8] == b"\x00\x00\x00\x01\x00\x00"
    assert memcached_stats().endswith(b"stats\r\n")
    assert netbios_node_status()[12:14] == b"\x20C" and netbios_node_status()[-4:] == (
        b"\x00\x21\x00\x01"
    )
    assert own_payloads(9) == ()


def test_service_hint_prefers_our_table_then_nmap() -> None:
    assert udp_service_hint(53) == "domain"
    assert udp_service_hint(161) == "snmp"
    assert udp_service_hint(11211) == "memcache"
    try:
        udp_top_ports(1)
    except EngineUnavailable as exc:  # a skip, which make test counts as a failure
        pytest.skip(f"nmap-services is not installed: {exc}")
    assert udp_service_hint(631) == "ipp"  # from nmap-services


# -- reply excerpts ---------------------------------------------------------------------


def test_response_excerpt_is_printable_capped_and_reversible() -> None:
    raw = b"SSH\\x\r\n\x00\xff\x7f" + bytes(range(256))
    text = encode_response(raw, cap=64)
    assert text.isprintable()
    assert text.startswith("SSH\\\\x\\r\\n\\x00\\xff\\x7f")
    assert decode_response(text) == raw[:64]
    assert encode_response(raw, cap=0) == ""


# -- classification on loopback ---------------------------------------------------------


def test_dns_responder_is_open_with_its_reply_silent_is_open_filtered_closed_hidden() -> None:
    # Given a DNS responder on an ephemeral port (fed our DNS query by override),
    # a silent socket and three closed ports on one loopback address
    with (
        UdpServer(HOST_A, answer=dns_answer) as dns,
        UdpServer(HOST_A) as silent,
        closed_ports(HOST_A, 3) as closed,
    ):
        engine = fast_engine(payload_for={dns.port: [dns_version_query()]})
        # When the shard's ports are scanned
        found, progress = run_scan(
            engine, shard_for(HOST_A, ports=[dns.port, silent.port, *closed])
        )
    # Then: the responder is open with its reply, the silent socket open|filtered,
    # the closed ports absent
    assert states(found) == {
        (HOST_A, dns.port): PortState.OPEN,
        (HOST_A, silent.port): PortState.OPEN_FILTERED,
    }
    by_port = {o.port: o for o in found}
    reply = decode_response(by_port[dns.port].response)
    assert reply == dns_answer(dns_version_query())
    assert by_port[dns.port].reason == "udp-response"
    assert by_port[silent.port].reason == "no-response"
    assert by_port[silent.port].response == ""
    assert {(o.proto, o.engine, o.scan_id) for o in found} == {(Proto.UDP, "udp", "scan-udp-test")}
    # and the responder saw exactly our query; the silent socket got an attempt per round
    assert dns.received == [dns_version_query()]
    # (an ephemeral port gets nmap's RPC payload when nmap-common is installed)
    assert silent.received == [p.data for p in engine.payloads_for(silent.port)] * 2
    assert (progress.probes_total, progress.probes_done, progress.open_found) == (5, 5, 2)
    assert progress.retries == 1  # only the silent port was retried
    assert progress.errors == 0


def test_ipv6_loopback_responder_and_closed_port() -> None:
    # Given a DNS responder on ::1 and a port that was just released
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    probe.bind(("::1", 0))
    released = probe.getsockname()[1]
    probe.close()
    with UdpServer("::1", answer=dns_answer) as dns:
        engine = fast_engine(payload_for={dns.port: [dns_version_query()]})
        # When both are scanned over IPv6
        found, progress = run_scan(engine, shard_for("::1", ports=[dns.port, released]))
    # Then the responder is open and the released port closed (not listed)
    assert states(found) == {("::1", dns.port): PortState.OPEN}
    assert progress.probes_done == 2 and progress.errors == 0


def test_payload_choice_decides_open_versus_open_filtered() -> None:
    # Given an NTP server that ignores anything but a valid NTP client request
    with UdpServer(HOST_A, answer=ntp_answer) as ntp, closed_ports(HOST_A, 1) as closed:
        ports = [ntp.port, *closed]
        # When scanned with the default choice for that port (empty datagram, or
        # nmap's RPC payload for ports >= 32768)
        generic, _ = run_scan(fast_engine(), shard_for(HOST_A, ports=ports))
        # and when scanned with our NTP payload for that port
        proper, _ = run_scan(
            fast_engine(payload_for={ntp.port: [ntp_client(4)]}), shard_for(HOST_A, ports=ports)
        )
    # Then only the valid request makes it open
    assert states(generic) == {(HOST_A, ntp.port): PortState.OPEN_FILTERED}
    assert states(proper) == {(HOST_A, ntp.port): PortState.OPEN}
    reply = decode_response(proper[0].response)
    assert reply[0] == 0x24 and reply[24:32] == ntp_client(4)[40:48]


@needs_root
def test_well_known_ports_are_found_with_our_own_payloads() -> None:
    # Given DNS, NTP and SNMP servers on their well-known ports of a loopback address
    try:
        servers = [
            UdpServer(WELL_KNOWN_HOST, 53, dns_answer),
            UdpServer(WELL_KNOWN_HOST, 123, ntp_answer),
            UdpServer(WELL_KNOWN_HOST, 161, snmp_answer),
        ]
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        pytest.skip(f"a well-known UDP port on {WELL_KNOWN_HOST} is taken: {exc}")
    with servers[0] as dns, servers[1] as ntp, servers[2] as snmp:
        # When 53, 123, 161 and some closed well-known ports are scanned, no override
        engine = fast_engine(use_nmap_payloads=False, snmp_public_community=True)
        found, progress = run_scan(
            engine, shard_for(WELL_KNOWN_HOST, ports=[53, 69, 123, 137, 161, 1900])
        )
    # Then each answered our own payload; the closed ones are absent
    assert states(found) == {
        (WELL_KNOWN_HOST, 53): PortState.OPEN,
        (WELL_KNOWN_HOST, 123): PortState.OPEN,
        (WELL_KNOWN_HOST, 161): PortState.OPEN,
    }
    assert dns.received == [dns_version_query()]
    assert ntp.received[0] == ntp_client(4)
    assert snmp.received[0] == snmp_get_sysdescr(1)
    by_port = {o.port: o for o in found}
    assert b"portwatch test agent" in decode_response(by_port[161].response)
    assert progress.retries == 0


def test_host_filtering_everything_lists_no_open_filtered_and_says_so() -> None:
    # Given host A with one silent port and closed others, and host B silent on
    # every scanned port (no ICMP at all: what a dropping firewall looks like)
    with closed_ports(HOST_A, 2) as closed, UdpServer(HOST_A) as silent_a:
        ports = [silent_a.port, *closed]
        b_servers = [UdpServer(HOST_B, p) for p in ports]
        with contextlib.ExitStack() as stack:
            for server in b_servers:
                stack.enter_context(server)
            # When both are scanned in one shard
            found, progress = run_scan(fast_engine(), shard_for(HOST_A, HOST_B, ports=ports))
    # Then A's silent port is open|filtered, B lists nothing and a note says why
    assert states(found) == {(HOST_A, silent_a.port): PortState.OPEN_FILTERED}
    assert any(
        HOST_B in n and "no ICMP port-unreachable" in n and "3 silent ports" in n
        for n in progress.notes
    )
    assert progress.probes_done == progress.probes_total == 6


def test_report_open_filtered_always_and_never() -> None:
    # Given a host that sends no ICMP (only a silent socket is scanned)
    with UdpServer(HOST_A) as silent:
        shard = shard_for(HOST_A, ports=[silent.port])
        # When scanned with "always" and with "never"
        always, _ = run_scan(fast_engine(report_open_filtered="always", retries=0), shard)
        never, progress = run_scan(fast_engine(report_open_filtered="never", retries=0), shard)
    # Then "always" lists the silent port and "never" lists nothing, with a note
    assert states(always) == {(HOST_A, silent.port): PortState.OPEN_FILTERED}
    assert never == []
    assert any("1 silent ports not listed" in n for n in progress.notes)


def test_too_many_silent_ports_read_as_a_filter() -> None:
    # Given three silent sockets and one closed port, with max_open_filtered=2
    with (
        UdpServer(HOST_A) as s1,
        UdpServer(HOST_A) as s2,
        UdpServer(HOST_A) as s3,
        closed_ports(HOST_A, 1) as closed,
    ):
        ports = [s1.port, s2.port, s3.port, *closed]
        found, progress = run_scan(fast_engine(max_open_filtered=2), shard_for(HOST_A, ports=ports))
    # Then none is listed and the note says why
    assert found == []
    assert any("3 silent ports (more than 2)" in n for n in progress.notes)


# -- hostile peers ----------------------------------------------------------------------


def test_binary_junk_reply_is_capped_and_escaped() -> None:
    # Given a server answering every datagram with 60,000 bytes of binary junk, 20 times
    with UdpServer(HOST_A, answer=echo_junk, replies=20) as junk:
        found, _ = run_scan(fast_engine(response_cap=100), shard_for(HOST_A, ports=[junk.port]))
    # Then one open row whose excerpt is printable and holds the first 100 bytes
    assert len(found) == 1 and found[0].state is PortState.OPEN
    assert found[0].response.isprintable()
    assert decode_response(found[0].response) == JUNK[:100]


def test_deadline_stops_the_scan_with_an_error() -> None:
    # Given silent ports and a deadline shorter than one attempt's wait
    with UdpServer(HOST_A) as silent:
        engine = UdpEngine(timeout=30.0, deadline=0.5)
        # When scanned / Then the engine says it ran out of time instead of a silent gap
        with pytest.raises(DiscoveryError, match="deadline"):
            run_scan(engine, shard_for(HOST_A, ports=[silent.port]))


def test_a_shard_that_hits_its_deadline_is_named_once_in_the_error() -> None:
    from stream_processors.stages import discover_shard

    # Given the same silent port, through the discovery stage both transports use
    with UdpServer(HOST_A) as silent:
        engine = UdpEngine(timeout=30.0, deadline=0.5)
        outcome = asyncio.run(discover_shard(engine, shard_for(HOST_A, ports=[silent.port]),
                                             Progress()))
    # Then the error names the engine once (it read "udp: udp: shard ...": a review)
    assert outcome.error.startswith("udp: shard ") and "udp: udp:" not in outcome.error


def test_early_close_releases_every_socket() -> None:
    # Given a responder and many silent ports with a long timeout
    with (
        UdpServer(HOST_A, answer=lambda d: b"hi") as talker,
        contextlib.ExitStack() as stack,
    ):
        silents = [stack.enter_context(UdpServer(HOST_A)) for _ in range(20)]
        engine = UdpEngine(timeout=30.0, deadline=60.0)
        shard = shard_for(HOST_A, ports=[talker.port] + [s.port for s in silents])
        before = open_fds()

        async def first_then_close() -> OpenPort:
            async with contextlib.aclosing(engine.scan(shard, Progress())) as events:
                async for event in events:
                    return event
            raise AssertionError("no event")

        # When the consumer stops after the first event
        first = asyncio.run(first_then_close())
    # Then the event is the talker's, and no probe socket is left open
    assert (first.port, first.state) == (talker.port, PortState.OPEN)
    assert open_fds() <= before


# -- the top 1,000 ----------------------------------------------------------------------


def test_udp_top_ports_says_how_to_fix_missing_nmap_data(tmp_path: object, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Given no nmap data where portwatch looks / When the top ports are asked / Then a fix
    monkeypatch.setenv("PORTWATCH_NMAP_DATA", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="nmap-common"):
        udp_top_ports(1000)


def test_top_1000_scan_of_loopback_finds_exactly_our_listeners() -> None:
    try:
        top = udp_top_ports(1000)
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    assert len(top) == 1000 and len(set(top)) == 1000
    assert {53, 123, 137, 161} <= set(top)
    # Given a DNS responder and a silent socket on ephemeral ports of 127.0.0.1
    with UdpServer("127.0.0.1", answer=dns_answer) as dns, UdpServer("127.0.0.1") as silent:
        ours = {dns.port, silent.port}
        ports = sorted(set(top) | ours)
        engine = UdpEngine(payload_for={dns.port: [dns_version_query()]}, deadline=120.0)
        # When the top 1,000 plus those two are scanned at the default pace
        found, progress = run_scan(engine, shard_for("127.0.0.1", ports=ports))
        bound = bound_udp_ports()
    got = states(found)
    # Then both listeners are found with their exact states (recall 2/2)
    assert got[("127.0.0.1", dns.port)] is PortState.OPEN
    assert got[("127.0.0.1", silent.port)] is PortState.OPEN_FILTERED
    # and anything else reported is a port something on this machine really has bound
    others = {port for (_, port) in got} - ours
    assert others <= bound
    assert progress.probes_done == progress.probes_total == len(ports)
    assert progress.errors == 0


@pytest.mark.parametrize(("port", "reply", "service"), [
    (53, b"\x70\x77\x84\x00" + bytes(8), "domain"),
    (53, b"\x70\x77\x04\x00" + bytes(8), ""),  # a query echoed, not an answer
    (53, b"\x12\x34\x84\x00" + bytes(8), ""),  # another transaction's answer
    (137, b"\x70\x77\x84\x00" + bytes(8), "netbios-ns"),
    (123, bytes([0x24]) + bytes(47), "ntp"),
    (123, bytes([0x23]) + bytes(47), ""),  # a client packet echoed
    (123, bytes([0x24]) + bytes(10), ""),  # cut short
    (11211, b"\x70\x77\x00\x00\x00\x01\x00\x00STAT pid 1\r\n", "memcache"),
    (11211, b"\x70\x77\x00\x00\x00\x01\x00\x00ERROR\r\n", ""),
    (1900, b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n", "upnp"),
    (1900, b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", ""),
    (161, b"\x30\x00", ""),  # SNMP: named by its own probe
    (22, b"junk", ""),
])
def test_a_reply_to_our_own_payload_is_recognised_only_in_its_protocols_shape(
        port: int, reply: bytes, service: str) -> None:
    from probers.discovery.udp_payloads import own_reply_service

    assert own_reply_service(port, reply) == service


def test_a_udp_shard_cut_by_its_deadline_is_not_retried() -> None:
    from stream_processors.stages import discover_with_retries

    # Given 40 silent UDP listeners and a shard deadline far shorter than their rounds
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = sorted(s.getsockname()[1] for s in socks)
        shard = Shard(scan_id="s", shard_id="u1",
                      targets=(Target(ip="127.0.0.1", target="127.0.0.1"),),
                      ports=tuple(PortRange(p, p) for p in ports), proto=Proto.UDP)
        made: list[UdpEngine] = []

        def engine_for(_shard: Shard) -> UdpEngine:
            made.append(UdpEngine(UdpOptions(timeout=1.0, retries=3, deadline=0.8, rate=50)))
            return made[-1]

        # When the shard rule runs it with two attempts allowed
        outcome = asyncio.run(discover_with_retries(shard, engine_for, attempts=2))
    finally:
        for s in socks:
            s.close()
    # Then one attempt is made (a second has no more time: in a discover worker the two
    # outlasted Kafka's poll interval), and the shard says its deadline cut it
    assert len(made) == 1 and outcome.attempts == 1 and outcome.is_cut
    assert outcome.error.startswith("udp: shard u1 hit its 0.8s deadline with ")
