"""AnswerTap on real packets: a packet socket on loopback, real TCP handshakes.

Connections are made *from* the tap's port on 127.0.0.1 to a listening port (the
answer is a SYN-ACK) and to a closed port (a RST), exactly what masscan's probes
get back. Root only (AF_PACKET); skips with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

import pytest

from probers.discovery.tap import CLOSED, OPEN, AnswerTap, bpf_program, compact
from schemas.records import PortRange

try:
    from tests import netns
    from tests.servers import free_port, free_ports
except ModuleNotFoundError:  # pragma: no cover - tests/ not on sys.path
    import netns  # type: ignore[no-redef]
    from servers import free_port, free_ports  # type: ignore[no-redef]


def _connect_from(src_port: int, dst_port: int) -> None:
    """One handshake from 127.0.0.1:src_port; closed with a RST (no TIME_WAIT)."""
    with socket.socket() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.bind(("127.0.0.1", src_port))
        c.settimeout(2.0)
        with contextlib.suppress(ConnectionRefusedError):
            c.connect(("127.0.0.1", dst_port))


def _drain_until(tap: AnswerTap, done: object, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end and not done():  # type: ignore[operator]
        tap.drain()
        time.sleep(0.01)


def test_tap_records_syn_acks_as_open_and_rsts_as_closed_for_its_port_only() -> None:
    netns.require_root()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        open_port = server.getsockname()[1]
        closed_port, tap_port, other_port = free_ports(3)
        opened: list[tuple[str, int]] = []
        tap = AnswerTap(
            "lo", "127.0.0.1", tap_port, ["127.0.0.1"],
            on_open=lambda ip, port: opened.append((ip, port)),
        )
        with tap:
            # Given answers to the tap's port: a SYN-ACK and a RST
            _connect_from(tap_port, open_port)
            _connect_from(tap_port, closed_port)
            # And a RST to another source port, which is not the scan's
            _connect_from(other_port, closed_port + 1 if closed_port < 65535 else 1)
            _drain_until(tap, lambda: tap.answered >= 2)
            # Then the open port is OPEN (reported once), the closed one CLOSED
            assert tap.state("127.0.0.1", open_port) == OPEN
            assert tap.state("127.0.0.1", closed_port) == CLOSED
            assert opened == [("127.0.0.1", open_port)]
            # And nothing else was recorded (the other source port's RST was filtered)
            assert tap.answered == 2
            assert tap.count("127.0.0.1", OPEN) == 1
            assert tap.count("127.0.0.1", CLOSED) == 1
            # And the silent set of a range is every port that did not answer
            lo = min(open_port, closed_port)
            hi = max(open_port, closed_port)
            silent = tap.silent("127.0.0.1", [PortRange(lo, hi)])
            assert open_port not in silent and closed_port not in silent
            assert len(silent) == hi - lo + 1 - 2
            assert tap.silent_count("127.0.0.1", [PortRange(lo, hi)]) == len(silent)


def test_tap_ignores_answers_from_hosts_outside_the_shard() -> None:
    netns.require_root()
    closed_port, tap_port = free_ports(2)
    with AnswerTap("lo", "127.0.0.1", tap_port, ["127.0.0.2"]) as tap:
        _connect_from(tap_port, closed_port)  # answered by 127.0.0.1, not 127.0.0.2
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            tap.drain()
            time.sleep(0.01)
        assert tap.packets >= 1  # the kernel filter let it through ...
        assert tap.answered == 0  # ... and the host check dropped it
        assert tap.state("127.0.0.2", closed_port) == 0


def test_tap_drains_from_the_event_loop_and_close_is_idempotent() -> None:
    netns.require_root()
    closed_port, tap_port = free_ports(2)
    tap = AnswerTap("lo", "127.0.0.1", tap_port, ["127.0.0.1"])

    async def run() -> int:
        tap.open()
        tap.attach(asyncio.get_running_loop())
        await asyncio.to_thread(_connect_from, tap_port, closed_port)
        for _ in range(200):
            if tap.answered:
                break
            await asyncio.sleep(0.01)
        return tap.state("127.0.0.1", closed_port)

    try:
        assert asyncio.run(run()) == CLOSED
    finally:
        tap.close()
        tap.close()


def _frame(ihl_words: int, tcp: bytes, *, version: int = 4, options: bytes = b"") -> bytes:
    """Ethernet (loopback's all-zero MACs) + IPv4 127.0.0.1 -> 127.0.0.1 + ``tcp``."""
    ip = struct.pack(
        "!BBHHHBBH4s4s", version << 4 | ihl_words, 0, 20 + len(options) + len(tcp), 0, 0,
        64, 6, 0, socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"),
    )
    return b"\0" * 12 + b"\x08\x00" + ip + options + tcp


def _tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 1, 5 << 4, flags, 0, 0, 0)


def test_tap_survives_junk_frames_and_reads_answers_with_ip_options() -> None:
    netns.require_root()
    tap_port = free_port()
    with AnswerTap("lo", "127.0.0.1", tap_port, ["127.0.0.1"]) as tap, socket.socket(
        socket.AF_PACKET, socket.SOCK_RAW
    ) as raw:
        raw.bind(("lo", 0))
        # Given frames a hostile or broken peer could send to the scan's port:
        junk = [
            _frame(3, _tcp(1111, tap_port, 0x04)),  # IHL below 5
            _frame(5, _tcp(2222, tap_port, 0x04), version=6),  # not IPv4 inside
            _frame(15, _tcp(3333, tap_port, 0x04)[:8]),  # IHL 60 on a short frame
            _frame(5, _tcp(4444, tap_port, 0x10)),  # a bare ACK: no answer to a SYN
            _frame(5, _tcp(5555, tap_port, 0x04))[:40],  # cut inside the TCP header
        ] * 50
        for frame in junk:
            raw.send(frame)
        # And then a real RST carrying 4 bytes of IP options, and a plain SYN-ACK
        raw.send(_frame(6, _tcp(6666, tap_port, 0x14), options=b"\x01\x01\x01\x00"))
        raw.send(_frame(5, _tcp(7777, tap_port, 0x12)))
        _drain_until(tap, lambda: tap.answered >= 2)
        # Then neither the junk nor the ACK left a mark, and both answers did
        assert tap.state("127.0.0.1", 6666) == CLOSED
        assert tap.state("127.0.0.1", 7777) == OPEN
        assert tap.answered == 2
        assert tap.packets >= 2 + 3 * 50  # the IPv6-labelled, ACK and cut frames got in
        assert all(tap.state("127.0.0.1", p) == 0 for p in (1111, 2222, 3333, 4444, 5555))


def test_tap_on_a_missing_adapter_raises_oserror() -> None:
    netns.require_root()
    with pytest.raises(OSError):
        AnswerTap("pw-no-such-if", "127.0.0.1", 61000, ["127.0.0.1"]).open()


def test_bpf_program_jumps_land_on_the_drop_return() -> None:
    prog = bpf_program("198.18.7.1", 61234)
    drop = len(prog) - 1
    assert prog[drop] == (0x06, 0, 0, 0)
    assert prog[drop - 1][0] == 0x06 and prog[drop - 1][3] > 0
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code == 0x15:  # jeq: a miss goes to drop
            assert (jt, i + 1 + jf) == (0, drop)
        if code == 0x45:  # jset (fragment): a hit goes to drop
            assert (i + 1 + jt, jf) == (drop, 0)
    assert (0x15, 0, drop - 4, 0xC6120701) in prog  # 198.18.7.1
    assert prog[10][3] == 61234
    with pytest.raises(ValueError):
        bpf_program("198.18.7.1", 0)


def test_compact_merges_sorted_ports_into_ranges() -> None:
    assert compact([7, 1, 3, 2, 2, 65535]) == (
        PortRange(1, 3), PortRange(7, 7), PortRange(65535, 65535)
    )
    assert compact([]) == ()
    assert compact(range(1, 65536)) == (PortRange(1, 65535),)


def test_paths_through_one_adapter_and_address_share_one_tap() -> None:
    netns.require_root()
    from probers.discovery.base import Progress
    from probers.discovery.masscan import MasscanEngine
    from probers.discovery.masscan_path import MasscanPath
    from schemas.records import Shard, Target

    # Given two LAN hosts, each behind its own next-hop MAC (two masscan runs), and a
    # third path through another source address
    a = MasscanPath("lo", "127.0.0.1", router_mac="02:00:00:00:00:01", local_source=True)
    b = MasscanPath("lo", "127.0.0.1", router_mac="02:00:00:00:00:02", local_source=True)
    c = MasscanPath("lo", "127.0.0.2", router_mac="02:00:00:00:00:03", local_source=True)
    hosts = {a: ["127.0.0.11"], b: ["127.0.0.12"], c: ["127.0.0.13"]}
    groups = {p: [Target(ip=ip, target=ip) for ip in ips] for p, ips in hosts.items()}
    shard = Shard(scan_id="s", shard_id="s", ports=(PortRange(1, 1024),),
                  targets=tuple(t for ts in groups.values() for t in ts))

    async def run() -> tuple[object, object, object, list[str], list[str]]:
        taps, opened = MasscanEngine()._open_taps(shard, groups, 61000, Progress(),
                                                  lambda d: None)
        try:
            return taps[a], taps[b], taps[c], sorted(taps[a].hosts), taps[c].hosts
        finally:
            for tap in opened:
                tap.close()

    tap_a, tap_b, tap_c, hosts_ab, hosts_c = asyncio.run(run())
    # Then the two runs through 127.0.0.1 read one tap covering both hosts
    assert tap_a is tap_b and tap_a is not tap_c
    assert hosts_ab == ["127.0.0.11", "127.0.0.12"]
    assert hosts_c == ["127.0.0.13"]
