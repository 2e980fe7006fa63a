"""MasscanEngine against real namespace test hosts (root only; skips otherwise).

Every target is a 198.18.x.y address inside a namespace built by ``tests/netns.py``
(veth pair, verified route, always torn down). masscan is given the helper's
unused ``scanner_ip`` as ``--adapter-ip`` where a test needs a raw source the
root kernel does not own (the confirm-pass case); elsewhere the engine picks the
kernel's own address, adapter and next hop by itself, as in production.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probers.discovery.base import DiscoveryError, EngineUnavailable, Progress
from probers.discovery.connect import ConnectEngine
from probers.discovery.engines import choose_engine
from probers.discovery.masscan import MasscanEngine
from probers.discovery.masscan_path import MasscanPath, resolve_path
from probers.discovery.tap import AnswerTap
from probers.discovery.tarpit import TarpitDetector
from schemas.records import OpenPort, PortRange, Proto, Shard, Target

try:
    from tests import netns
except ModuleNotFoundError:  # tests/ is not on sys.path: load the helper by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import netns  # type: ignore[no-redef]

pytestmark = pytest.mark.netns

INDEX = 63  # 198.18.63.0/24, unused by the other netns tests
ALL_PORTS = (PortRange(1, 65535),)
BANNERS = {
    22: b"SSH-2.0-OpenSSH_9.2p1\r\n",
    25: b"220 mail ESMTP\r\n",
    80: b"",
    3306: b"",
    47001: b"hello\r\n",
}


def _shard(ips: list[str], ports: tuple[PortRange, ...], proto: Proto = Proto.TCP) -> Shard:
    return Shard(
        scan_id="scan-masscan",
        shard_id="shard-masscan",
        targets=tuple(Target(ip=ip, target=ip) for ip in ips),
        ports=ports,
        proto=proto,
    )


def _scan(engine: MasscanEngine, shard: Shard) -> tuple[list[OpenPort], Progress, float]:
    progress = Progress()
    started = time.monotonic()

    async def collect() -> list[OpenPort]:
        return [event async for event in engine.scan(shard, progress)]

    found = asyncio.run(collect())
    return found, progress, time.monotonic() - started


def _require_masscan() -> None:
    netns.require_root()
    try:
        MasscanEngine().check_usable([])
    except EngineUnavailable as exc:
        pytest.skip(str(exc))


def test_engine_finds_the_path_to_a_namespace_host_by_itself() -> None:
    _require_masscan()
    with netns.test_host(INDEX, tcp_banners={22: b"x"}) as host:
        # When the path to the target is resolved with nothing but the target
        path = resolve_path(host.address)
    # Then it leaves through the host's veth, from the host address, to the peer's MAC
    assert path == MasscanPath(
        host.host_ifname, host.host_ip, router_mac=host.peer_mac, local_source=True
    )
    # And an address the kernel does not own is not "local" (masscan must RST itself)
    with netns.test_host(INDEX, tcp_banners={22: b"x"}) as host:
        assert not resolve_path(host.address, adapter_ip=host.scanner_ip).local_source


@pytest.mark.slow
def test_full_sweep_finds_exactly_the_listening_ports_twice_in_a_row() -> None:
    _require_masscan()
    # Given a host with 5 banner services
    with netns.test_host(INDEX, tcp_banners=BANNERS) as host:
        engine = MasscanEngine(rate=30_000)
        for _run in range(2):
            # When all 65,535 TCP ports are swept
            found, progress, _elapsed = _scan(engine, _shard([host.address], ALL_PORTS))
            # Then exactly the listeners are reported, confirmed, once each
            assert sorted(o.port for o in found) == sorted(BANNERS)
            assert {(o.engine, o.reason, o.target.ip) for o in found} == {
                ("masscan", "syn-ack+connect", host.address)
            }
            assert progress.open_found == len(BANNERS)
            # And every port answered (RST or SYN-ACK): the retry pass re-sent at most
            # the probes a loaded machine dropped (0 when quiet, 1,056 in one full-suite
            # run beside a review's scans), never the range (65,535)
            assert progress.probes_done == progress.probes_total == 65535 + progress.retries
            assert progress.retries < 6_500
            assert progress.errors == 0
            assert progress.notes == []


def test_a_retry_pass_resends_only_the_ports_that_stayed_silent() -> None:
    _require_masscan()
    # Given a path that loses the first SYN to 22 and to 1000-1999 (a listener on
    # 1500 among them) and a firewall that drops everything to 5000-5099
    lossy = [22, *range(1000, 2000)]
    banners = {22: b"SSH-2.0-x\r\n", 80: b"", 1500: b""}
    with netns.test_host(
        INDEX, tcp_banners=banners, first_syn_lost=lossy, filtered_ports=range(5000, 5100)
    ) as host:
        engine = MasscanEngine(rate=30_000, passes=2)
        # When all 65,535 ports are swept
        found, progress, _ = _scan(engine, _shard([host.address], ALL_PORTS))
    # Then the retry pass found the listeners whose first SYN was lost
    assert sorted(o.port for o in found) == [22, 80, 1500]
    # And it re-sent the 1,001 lossy + 100 filtered ports, not the whole sweep again (plus
    # the probes a loaded machine dropped: none when it is quiet, 1,766 in one CI run on
    # two busy cores; a pass re-sending everything would be 65,535)
    assert 1101 <= progress.retries < 1101 + 6_500
    assert progress.probes_done == progress.probes_total == 65535 + progress.retries
    # And the ports that never answered are reported, not silently forgotten
    assert progress.notes == [
        "masscan: 100 of 65,535 TCP probes never answered after 2 passes "
        "(filtered, or lost on the way)"
    ]


def test_a_down_host_on_the_link_is_not_scanned_and_fails_nothing() -> None:
    _require_masscan()
    # Given a live namespace host and an address on its link that nobody answers ARP for
    with netns.test_host(INDEX, tcp_banners={22: b"SSH-2.0-x\r\n"}) as host:
        down = host.address.rsplit(".", 1)[0] + ".77"
        # Then the down address has no path masscan could take (it would ARP forever)
        assert resolve_path(down).unreachable
        engine = MasscanEngine(rate=30_000)
        # When both are scanned in one shard
        found, progress, _ = _scan(engine, _shard([host.address, down], (PortRange(1, 1000),)))
    # Then the live host's port is found, the shard does not fail (before: masscan was
    # told --router-ip of the down host, ARPed for it forever, and the shard failed at
    # its deadline on every attempt, the live host's results with it: a review), and
    # the down host is said, its probes counted done
    assert [(o.target.ip, o.port) for o in found] == [(host.address, 22)]
    assert progress.errors == 0
    assert any(n.startswith("masscan: 1 host(s) not probed: they, or the gateway to them, "
                            "answered no ARP request") for n in progress.notes), progress.notes
    assert progress.probes_done == progress.probes_total == 2_000 + progress.retries


def test_a_target_behind_a_dead_gateway_is_not_scanned_and_fails_nothing() -> None:
    _require_masscan()
    # Given a live namespace host and a block routed through a gateway on its link that
    # nobody answers ARP for (a route of this test, removed after it)
    with netns.test_host(INDEX, tcp_banners={22: b"SSH-2.0-x\r\n"}) as host:
        prefix = host.address.rsplit(".", 1)[0]
        block, gateway = f"{prefix}.192/26", f"{prefix}.9"
        subprocess.run(["ip", "route", "add", block, "via", gateway, "dev", host.host_ifname],
                       check=True)
        try:
            engine = MasscanEngine(rate=30_000)
            found, progress, _ = _scan(
                engine, _shard([f"{prefix}.193", host.address], (PortRange(1, 100),)))
        finally:
            subprocess.run(["ip", "route", "del", block], check=False)
    # Then the live host is scanned and the shard does not fail (before: masscan ARPed
    # for the gateway forever and the shard failed at its deadline, the live host's
    # ports with it: a review), and the one behind the dead gateway is said
    assert [(o.target.ip, o.port) for o in found] == [(host.address, 22)]
    assert progress.errors == 0
    assert any(f"e.g. {prefix}.193" in n for n in progress.notes), progress.notes


def test_a_masscan_that_will_not_exit_is_killed_at_the_deadline_and_results_are_kept() -> None:
    _require_masscan()
    # Given masscan told to wait 60 s after sending (it stays alive, like a 1.3.2
    # hang after 100%) and a 8 s shard deadline
    with netns.test_host(INDEX, tcp_banners=BANNERS) as host:
        engine = MasscanEngine(
            rate=20_000, adapter_ip=host.scanner_ip, wait=60, deadline=8.0, passes=1,
            answer_tap=False,  # with the tap the run would end when every port answered
        )
        # When 1-50000 is scanned
        found, progress, elapsed = _scan(engine, _shard([host.address], (PortRange(1, 50000),)))
    # Then the engine returns soon after the deadline with every port it saw
    assert elapsed < 8.0 + 3.0
    assert sorted(o.port for o in found) == sorted(p for p in BANNERS if p <= 50000)
    assert any("killed at its deadline after 100% done" in n for n in progress.notes)


def test_masscan_killed_mid_run_raises_discovery_error_after_yielding_what_it_saw() -> None:
    _require_masscan()
    with netns.test_host(INDEX, tcp_banners=BANNERS) as host:
        # Given a slow full sweep (about 13 s at 5,000 packets/s)
        engine = MasscanEngine(rate=5_000, adapter_ip=host.scanner_ip, passes=1)
        shard = _shard([host.address], ALL_PORTS)
        progress = Progress()
        found: list[OpenPort] = []
        killed_pid: list[int] = []

        async def killer() -> None:
            # When someone else SIGKILLs masscan's process group 2 s into the run
            while engine.current_run is None or engine.current_run.pid is None:
                await asyncio.sleep(0.05)
            pid = engine.current_run.pid
            await asyncio.sleep(2.0)
            os.killpg(pid, signal.SIGKILL)
            killed_pid.append(pid)

        async def run() -> None:
            task = asyncio.create_task(killer())
            try:
                async for event in engine.scan(shard, progress):
                    found.append(event)
            finally:
                await task

        # Then the shard fails loudly (it must be retried), never a silent gap
        with pytest.raises(DiscoveryError, match="killed by signal 9"):
            asyncio.run(run())
    assert killed_pid
    assert progress.errors == 1
    assert {o.port for o in found} <= set(BANNERS)  # what it did see was real


def test_loopback_targets_make_the_engine_unavailable_and_auto_falls_back() -> None:
    _require_masscan()
    loopback = _shard(["127.0.0.1"], (PortRange(1, 10),))
    # When masscan is asked to scan loopback, Then it refuses in one line, sending nothing
    with pytest.raises(EngineUnavailable, match="cannot scan loopback") as info:
        _scan(MasscanEngine(), loopback)
    assert "\n" not in str(info.value)
    # And --engine auto falls back to the connect engine and says why
    engine, note = choose_engine("auto", Proto.TCP, loopback.targets)
    assert isinstance(engine, ConnectEngine)
    assert note == "masscan unavailable: masscan cannot scan loopback (127.0.0.1); " \
        "using the connect engine"
    # And --engine masscan does not fall back
    with pytest.raises(EngineUnavailable):
        choose_engine("masscan", Proto.TCP, loopback.targets)


def test_auto_picks_masscan_for_a_namespace_host() -> None:
    _require_masscan()
    with netns.test_host(INDEX) as host:
        engine, note = choose_engine("auto", Proto.TCP,
                                     [Target(ip=host.address, target=host.address)])
    assert isinstance(engine, MasscanEngine)
    assert note == ""


def test_confirm_pass_drops_syn_acks_that_do_not_accept_a_connect() -> None:
    _require_masscan()
    # Given a host where 8081 and 8443 SYN-ACK masscan's source but reset a real
    # connect from the host (a SYN-ACK with no service behind it for us)
    with netns.test_host(INDEX, tcp_banners={22: b"x", 80: b""}, raw_only_ports=[8081, 8443]) as h:
        shard = _shard([h.address], (PortRange(1, 10000),))
        # When scanned without and with the confirm pass
        raw, _, _ = _scan(MasscanEngine(rate=20_000, adapter_ip=h.scanner_ip, confirm=False), shard)
        confirmed, progress, _ = _scan(MasscanEngine(rate=20_000, adapter_ip=h.scanner_ip), shard)
    # Then masscan saw all four SYN-ACKs, and only the two real services are yielded
    assert sorted(o.port for o in raw) == [22, 80, 8081, 8443]
    assert sorted(o.port for o in confirmed) == [22, 80]
    assert any(
        "2 SYN-ACKs not confirmed and dropped: 2 refused a connect (RST)" in n
        for n in progress.notes
    )


def test_udp_shard_finds_dns_responders_with_masscan_and_nmap_payloads() -> None:
    _require_masscan()
    if not Path("/usr/share/nmap/nmap-payloads").is_file():
        pytest.skip("nmap-common is not installed (/usr/share/nmap/nmap-payloads)")
    # Given DNS responders on 53 (masscan's own payload) and 5353 (nmap's payload)
    with netns.test_host(INDEX, udp_dns_ports=[53, 5353]) as host:
        engine = MasscanEngine(rate=2_000, adapter_ip=host.scanner_ip)
        shard = _shard([host.address], (PortRange(50, 60), PortRange(5353, 5353)), Proto.UDP)
        # When the UDP shard is scanned
        found, _progress, _ = _scan(engine, shard)
    # Then both answer as open UDP ports
    assert sorted((o.port, o.proto, o.reason) for o in found) == [
        (53, Proto.UDP, "udp-response"),
        (5353, Proto.UDP, "udp-response"),
    ]


def test_a_host_answering_on_every_port_is_flagged_by_the_tarpit_detector() -> None:
    _require_masscan()
    # Given a host where every TCP port SYN-ACKs and accepts
    with netns.test_host(INDEX, tcp_banners={22: b"SSH-2.0-x\r\n"}, syn_ack_all=True) as host:
        # 3,000 SYN-ACKs in a burst at 20,000 packets/s: masscan's own capture loses
        # a third of them; the engine's answer tap sees every one.
        engine = MasscanEngine(rate=20_000, passes=2)
        detector = TarpitDetector(threshold=1000, max_held=500)
        shard = _shard([host.address], (PortRange(1, 3000),))
        progress = Progress()
        passed: list[OpenPort] = []

        async def run() -> None:
            # When the engine's stream is fed through the detector
            async for event in engine.scan(shard, progress):
                if detector.admit(event):
                    passed.append(event)

        asyncio.run(run())
    # Then the host is flagged, 1000 ports went downstream and the rest were held/bounded
    assert detector.is_tarpit(host.address)
    verdict = detector.verdict(host.address)
    assert verdict is not None
    assert len(passed) == verdict.admitted == 1000
    assert verdict.open_seen == 3000  # every port accounted for, none lost
    assert verdict.held == 500
    assert progress.retries < 3000  # a retry (if any) re-sent only unanswered probes
    assert verdict.admitted + verdict.held + verdict.dropped == verdict.open_seen


def test_without_a_packet_socket_the_engine_falls_back_to_full_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require_masscan()

    # FAKE fault: a process that may run masscan (file capabilities) but may not open
    # a packet socket itself. As root that cannot be caused for real, so the tap's
    # open() is made to fail the way the kernel would refuse it.
    def refuse(self: AnswerTap) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(AnswerTap, "open", refuse)
    with netns.test_host(INDEX, tcp_banners=BANNERS) as host:
        # From an address the kernel does not own: nobody RSTs the SYN-ACKs, so a
        # target re-sends one that masscan's lossy capture missed (measured: from
        # the kernel's own address, two passes at 30k/s lost port 80 without the tap).
        engine = MasscanEngine(rate=30_000, passes=2, adapter_ip=host.scanner_ip)
        found, progress, _ = _scan(engine, _shard([host.address], (PortRange(1, 50000),)))
    # Then the scan still finds every listener, re-sending the whole range once
    assert sorted(o.port for o in found) == sorted(p for p in BANNERS if p <= 50000)
    assert progress.retries == 50000
    assert progress.probes_done == progress.probes_total == 100000
    assert progress.notes[0].startswith(
        f"masscan: cannot read answers on {host.host_ifname} (Operation not permitted)"
    )


def test_auto_prefers_connect_when_this_process_cannot_count_answers(tmp_path: Path) -> None:
    _require_masscan()
    for tool in ("capsh", "setcap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian libcap2-bin)")
    # Given a masscan with file capabilities, and a portwatch process whose
    # capability bounding set has no CAP_NET_RAW (root, but not allowed raw sockets)
    binary = tmp_path / "masscan"
    shutil.copy(shutil.which("masscan") or "masscan", binary)
    subprocess.run(["setcap", "cap_net_raw,cap_net_admin+ep", str(binary)], check=True)
    probe = tmp_path / "choose.py"
    with netns.test_host(INDEX) as host:
        probe.write_text(
            "import sys\n"
            "from probers.discovery.engines import EngineOptions, MasscanOptions, choose_engine\n"
            "from schemas.records import Proto, Target\n"
            f"t = [Target(ip={host.address!r}, target={host.address!r})]\n"
            f"opts = EngineOptions(masscan=MasscanOptions(binary={str(binary)!r}))\n"
            "for mode in ('auto', 'masscan'):\n"
            "    engine, note = choose_engine(mode, Proto.TCP, t, opts)\n"
            "    print(mode, type(engine).__name__, note or '-')\n"
        )
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["capsh", "--drop=cap_net_raw", "--", "-c", f"{sys.executable} {probe}"],
            capture_output=True, text=True, timeout=60, cwd=repo, check=True,
            env={**os.environ, "PYTHONPATH": str(repo)},
        ).stdout.splitlines()
    # Then auto takes the connect engine and says why; an explicit masscan is honoured
    assert out == [
        "auto ConnectEngine masscan not used: this process lacks CAP_NET_RAW to count its "
        "answers; using the connect engine",
        "masscan MasscanEngine -",
    ]
