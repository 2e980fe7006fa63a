"""ConnectEngine and confirm_open against real sockets on 127.0.0.0/8 and ::1.

Closed ports are made certain by binding a socket without listening (the kernel
answers RST and nobody else can take the port meanwhile); filtered and unreachable
ports are made real with iptables rules on loopback-only addresses, removed in
``finally`` (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probers.discovery.base import DiscoveryEngine, DiscoveryError, Progress, ShardDeadline
from probers.discovery.connect import ConnectEngine, confirm_open
from schemas.records import OpenPort, PortRange, Proto, Shard, Target
from stream_processors.stages import discover_with_retries

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
HAS_IPTABLES = shutil.which("iptables") is not None
needs_iptables = pytest.mark.skipif(
    not (IS_ROOT and HAS_IPTABLES),
    reason="needs root and iptables to make a loopback port filtered/unreachable for real",
)


# -- helpers -------------------------------------------------------------------


def _socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


SWEPT = "127.0.0.45"  # the full sweep's address: no other test module binds it


@contextlib.contextmanager
def ports_on(host: str, *, listening: int, closed: int) -> Iterator[tuple[list[int], list[int]]]:
    """``listening`` listeners and ``closed`` bound-but-not-listening ports on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    opened: list[int] = []
    shut: list[int] = []
    try:
        for i in range(listening + closed):
            sock = _socket(family)
            socks.append(sock)
            sock.bind((host, 0))
            if i < listening:
                sock.listen(64)
                opened.append(sock.getsockname()[1])
            else:
                shut.append(sock.getsockname()[1])
        yield opened, shut
    finally:
        for sock in socks:
            sock.close()


def shard_for(*targets: str, ports: list[int] | None = None,
              ranges: tuple[PortRange, ...] = ()) -> Shard:
    port_ranges = ranges or tuple(PortRange(p, p) for p in sorted(set(ports or [])))
    return Shard(
        scan_id="scan-test",
        shard_id="shard-test",
        targets=tuple(Target(ip=t, target=t) for t in targets),
        ports=port_ranges,
    )


def around(ports: list[int], width: int = 16) -> tuple[PortRange, ...]:
    """Ranges of +-width ports around each port (merged), all in 1..65535."""
    spans = sorted((max(1, p - width), min(65535, p + width)) for p in ports)
    merged: list[list[int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple(PortRange(first, last) for first, last in merged)


async def collect(engine: ConnectEngine, shard: Shard, progress: Progress) -> list[OpenPort]:
    return [event async for event in engine.scan(shard, progress)]


def run_scan(engine: ConnectEngine, shard: Shard) -> tuple[list[OpenPort], Progress]:
    progress = Progress()
    found = asyncio.run(collect(engine, shard, progress))
    return found, progress


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def connect_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("connect-")]


@contextlib.contextmanager
def iptables_rule(*spec: str, table: str = "filter") -> Iterator[None]:
    """Insert one iptables rule; delete exactly that rule afterwards, whatever happens."""
    rule = [*spec, "-m", "comment", "--comment", f"portwatch-test-{os.getpid()}"]
    subprocess.run(["iptables", "-t", table, "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-t", table, "-D", *rule], check=True, capture_output=True)


def listening_ports_v4() -> set[int]:
    """Every TCP port in LISTEN state on this machine (any owner), from /proc."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- the engine contract -------------------------------------------------------


def test_engine_is_a_discovery_engine() -> None:
    # Given the default engine / When checked against the protocol / Then it conforms
    engine = ConnectEngine()
    assert isinstance(engine, DiscoveryEngine)
    assert engine.name == "connect"


@pytest.mark.parametrize(
    "kwargs",
    [{"concurrency": 0}, {"timeout": 0.0}, {"retries": -1}, {"deadline": 0.0},
     {"backlog_cap": 0}],
)
def test_engine_rejects_nonsense_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConnectEngine(**kwargs)  # type: ignore[arg-type]


def test_udp_shard_is_refused_not_silently_skipped() -> None:
    # Given a UDP shard / When the TCP connect engine is asked to scan it
    shard = Shard(scan_id="s", shard_id="u", targets=(Target(ip="127.0.0.1", target="lo"),),
                  ports=(PortRange(53, 53),), proto=Proto.UDP)
    # Then it raises instead of returning nothing
    with pytest.raises(DiscoveryError, match="TCP only"):
        run_scan(ConnectEngine(), shard)


# -- finding ports -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sweep_finds_every_listener_and_no_closed_port(host: str) -> None:
    # Given 5 listeners and 5 certainly-closed ports on the host
    with ports_on(host, listening=5, closed=5) as (listening, closed):
        shard = shard_for(host, ranges=around(listening + closed))
        # When the ranges around them are swept
        found, progress = run_scan(ConnectEngine(timeout=1.0), shard)
    ports = {event.port for event in found}
    # Then every listener is found, no closed port is, and each event is well formed
    assert set(listening) <= ports
    assert not set(closed) & ports
    assert all(event.target.ip == host for event in found)
    assert {(e.scan_id, e.engine, e.reason, e.proto) for e in found} == {
        ("scan-test", "connect", "syn-ack", Proto.TCP)
    }
    assert len(ports) == len(found)  # each open port once
    # And the counters add up
    assert progress.probes_total == shard.probe_count
    assert progress.probes_done == shard.probe_count
    assert progress.open_found == len(found)
    assert progress.errors == 0


def test_sweep_interleaves_ipv4_and_ipv6_targets_of_one_shard() -> None:
    # Given listeners on 127.0.0.1 and on ::1
    with ports_on("127.0.0.1", listening=2, closed=2) as (v4_open, v4_closed), \
            ports_on("::1", listening=2, closed=2) as (v6_open, v6_closed):
        every_port = v4_open + v4_closed + v6_open + v6_closed
        shard = shard_for("127.0.0.1", "::1", ports=every_port)
        engine = ConnectEngine()
        # When one shard covers both hosts
        found, progress = run_scan(engine, shard)
    by_host: dict[str, set[int]] = {"127.0.0.1": set(), "::1": set()}
    for event in found:
        by_host[event.target.ip].add(event.port)
    # Then each listener is attributed to its own address
    assert set(v4_open) <= by_host["127.0.0.1"]
    assert set(v6_open) <= by_host["::1"]
    assert not set(v4_closed) & by_host["127.0.0.1"]
    assert not set(v6_closed) & by_host["::1"]
    assert progress.probes_done == 2 * len(every_port)
    assert engine.last_report is not None
    assert [h.ip for h in engine.last_report.hosts] == ["127.0.0.1", "::1"]
    assert all(h.is_complete for h in engine.last_report.hosts)


def test_overlapping_ranges_probe_each_port_once() -> None:
    # Given one listener and two overlapping ranges that both contain it
    with ports_on("127.0.0.1", listening=1, closed=0) as (listening, _):
        port = listening[0]
        first, last = max(1, port - 5), min(65535, port + 5)
        shard = shard_for("127.0.0.1", ranges=(PortRange(first, last), PortRange(first, last)))
        found, progress = run_scan(ConnectEngine(), shard)
    # Then the port is yielded once and the progress bar still completes
    assert [event.port for event in found].count(port) == 1
    assert progress.probes_done == progress.probes_total == shard.probe_count


@pytest.mark.slow
def test_full_sweep_of_every_port_finds_listeners_and_no_phantoms() -> None:
    # Given 5 listeners on a loopback address of this test's own (the other test worker's
    # listeners on 127.0.0.1 include hostile peers that reset connections: an error here)
    with ports_on(SWEPT, listening=5, closed=0) as (listening, _):
        before = listening_ports_v4()
        shard = shard_for(SWEPT, ranges=(PortRange(1, 65535),))
        # When all 65,535 ports are swept
        found, progress = run_scan(ConnectEngine(), shard)
        after = listening_ports_v4()
    ports = {event.port for event in found}
    # Then ours are found, and nothing that was not listening (a TCP self-connect in
    # the ephemeral range would be such a phantom) is reported open
    assert set(listening) <= ports
    assert ports <= before | after | set(listening)
    assert progress.probes_done == 65535
    assert progress.errors == 0


# -- resource bounds -----------------------------------------------------------


def test_sweep_with_256_file_descriptors_does_not_exhaust_them() -> None:
    # Given a listener, and a child process whose RLIMIT_NOFILE soft limit is 256
    with ports_on("127.0.0.1", listening=1, closed=0) as (listening, _):
        port = listening[0]
        first = max(1, min(port - 2000, 65535 - 4000))
        script = textwrap.dedent(
            f"""
            import asyncio, json, resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
            from probers.discovery.base import Progress
            from probers.discovery.connect import ConnectEngine
            from schemas.records import PortRange, Shard, Target

            async def main():
                shard = Shard(scan_id="s", shard_id="fd",
                              ports=(PortRange({first}, {first + 4000}),),
                              targets=(Target(ip="127.0.0.1", target="lo"),))
                engine = ConnectEngine(concurrency=2000)
                progress = Progress()
                ports = [e.port async for e in engine.scan(shard, progress)]
                report = engine.last_report
                print(json.dumps({{"ports": ports, "done": progress.probes_done,
                                  "errors": progress.errors, "budget": report.fd_budget,
                                  "peak": report.peak_inflight, "stop": report.stop_reason}}))

            asyncio.run(main())
            """
        )
        # When it sweeps 4,001 ports with concurrency 2000
        child = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                               text=True, timeout=120, check=False)
    # Then it completes without EMFILE, within a budget below the limit
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert port in result["ports"]
    assert result["done"] == 4001
    assert result["errors"] == 0
    assert result["stop"] == "complete"
    assert 0 < result["budget"] < 256
    assert result["peak"] <= result["budget"]


def test_budget_never_exceeds_concurrency() -> None:
    # Given a small concurrency / When a few hundred ports are swept
    with ports_on("127.0.0.1", listening=1, closed=0) as (listening, _):
        engine = ConnectEngine(concurrency=7)
        run_scan(engine, shard_for("127.0.0.1", ranges=around(listening, 150)))
    # Then no more than 7 sockets were ever in flight
    assert engine.last_report is not None
    assert engine.last_report.fd_budget == 7
    assert 1 <= engine.last_report.peak_inflight <= 7


# -- cancellation --------------------------------------------------------------


def test_consumer_that_stops_early_leaves_no_socket_and_no_thread() -> None:
    # Given listeners on both loopbacks and a full two-host sweep
    async def first_then_stop() -> list[OpenPort]:
        shard = shard_for("127.0.0.1", "::1", ranges=(PortRange(1, 65535),))
        engine = ConnectEngine()
        got: list[OpenPort] = []
        async with contextlib.aclosing(engine.scan(shard, Progress())) as events:
            async for event in events:
                got.append(event)
                break  # When the consumer stops after the first open port
        assert engine.last_report is not None
        assert engine.last_report.stop_reason == "cancelled"
        return got

    with ports_on("127.0.0.1", listening=3, closed=0), ports_on("::1", listening=3, closed=0):
        fds_before = open_fds()
        got = asyncio.run(first_then_stop())
        fds_after = open_fds()
    # Then it got one event, every socket is closed and the worker thread is gone
    assert len(got) == 1
    assert fds_after == fds_before
    assert connect_threads() == []


def test_cancelled_task_closes_every_socket() -> None:
    async def cancel_mid_sweep() -> str:
        shard = shard_for("127.0.0.1", "::1", ranges=(PortRange(1, 65535),))
        engine = ConnectEngine()
        started = asyncio.Event()

        async def consume() -> None:
            async for _event in engine.scan(shard, Progress()):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        # When the consuming task is cancelled mid-sweep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.last_report is not None
        return engine.last_report.stop_reason

    with ports_on("127.0.0.1", listening=3, closed=0), ports_on("::1", listening=3, closed=0):
        fds_before = open_fds()
        stop_reason = asyncio.run(cancel_mid_sweep())
        fds_after = open_fds()
    # Then the sweep stopped, its sockets are closed and its thread has ended
    assert stop_reason == "cancelled"
    assert fds_after == fds_before
    assert connect_threads() == []


# -- timeouts, retries, errors, deadline (real filtering via iptables) ---------


@needs_iptables
def test_silent_port_is_retried_then_reported_filtered() -> None:
    # Given a listener and a port whose SYNs are dropped on a loopback-only address
    host = "127.0.0.1"
    with ports_on(host, listening=1, closed=1) as (listening, closed):
        silent = closed[0]
        drop = ("OUTPUT", "-o", "lo", "-d", f"{host}/32", "-p", "tcp", "--dport", str(silent),
                "--syn", "-j", "DROP")
        with iptables_rule(*drop):
            engine = ConnectEngine(timeout=0.3, retries=2)
            # When both are swept
            found, progress = run_scan(engine, shard_for(host, ports=[listening[0], silent]))
    # Then the listener is open, the silent port is retried twice and reported filtered
    assert [event.port for event in found] == [listening[0]]
    assert progress.retries == 2
    assert progress.errors == 0
    assert progress.probes_done == 2
    assert engine.last_report is not None
    (outcome,) = engine.last_report.hosts
    assert (outcome.open, outcome.filtered, outcome.untested) == (1, 1, 0)
    assert any("1 ports filtered" in note and "3 attempts" in note for note in progress.notes)


@needs_iptables
def test_unreachable_host_counts_errors_and_is_given_up_not_retried() -> None:
    # Given a loopback address whose every SYN is answered "host unreachable"
    host = "127.77.0.77"
    reject = ("OUTPUT", "-d", f"{host}/32", "-p", "tcp", "-j", "REJECT", "--reject-with",
              "icmp-host-unreachable")
    with iptables_rule(*reject):
        engine = ConnectEngine(concurrency=4, timeout=1.0, retries=3)
        # When 1,000 of its ports are swept
        found, progress = run_scan(engine, shard_for(host, ranges=(PortRange(1000, 1999),)))
    # Then nothing is reported open, errors are counted and never retried, and the host
    # is given up with its untested ports said out loud
    assert found == []
    assert progress.retries == 0
    assert progress.errors >= 32
    assert progress.probes_done == 1000
    assert engine.last_report is not None
    (outcome,) = engine.last_report.hosts
    assert outcome.is_given_up
    assert dict(outcome.error_kinds) == {"EHOSTUNREACH": outcome.errors}
    assert outcome.errors + outcome.untested == 1000
    assert outcome.untested > 0
    assert any(f"{host} unreachable" in note for note in progress.notes)


@needs_iptables
def test_deadline_stops_the_sweep_and_says_so() -> None:
    # Given an address that drops every SYN, and a 0.5 s shard deadline
    host = "127.77.0.78"
    drop = ("OUTPUT", "-d", f"{host}/32", "-p", "tcp", "--syn", "-j", "DROP")
    progress = Progress()
    found: list[OpenPort] = []

    async def sweep(engine: ConnectEngine, shard: Shard) -> None:
        async for event in engine.scan(shard, progress):
            found.append(event)

    with iptables_rule(*drop):
        engine = ConnectEngine(timeout=30.0, retries=1, deadline=0.5)
        fds_before = open_fds()
        # When 200 ports are swept
        with pytest.raises(ShardDeadline) as cut:
            asyncio.run(sweep(engine, shard_for(host, ranges=(PortRange(2000, 2199),))))
        fds_after = open_fds()
    # Then it stops by itself, closes its sockets and says how much was left untested,
    # as an error (before: a note only, which a discover worker dropped)
    assert str(cut.value) == ("connect: shard shard-test cut short by its 0.5s deadline: "
                              "200 of 200 probes not tested")
    assert found == []
    assert engine.last_report is not None
    assert engine.last_report.stop_reason == "deadline"
    assert engine.last_report.hosts[0].untested == 200
    assert progress.probes_done == 0
    assert fds_after == fds_before


@contextlib.contextmanager
def a_listener_and_300_dropped(host: str = "127.0.0.1") -> Iterator[tuple[Shard, int]]:
    """A shard of one listening port and 300 ports whose SYNs are dropped (iptables, while
    in the block); yields (the shard, the listening port)."""
    with ports_on(host, listening=1, closed=0) as (listening, _):
        port = listening[0]
        first = 40000 if port < 40000 else 20000
        drop = ("OUTPUT", "-o", "lo", "-d", f"{host}/32", "-p", "tcp", "--dport",
                f"{first}:{first + 299}", "--syn", "-j", "DROP")
        with iptables_rule(*drop):
            yield shard_for(host, ranges=(PortRange(port, port),
                                          PortRange(first, first + 299))), port


@needs_iptables
def test_a_shard_cut_by_its_deadline_keeps_its_ports_is_an_error_and_is_not_retried() -> None:
    # Given a listener and 300 ports whose SYNs are dropped, on one loopback address,
    # under a 1 s shard deadline (shorter than a probe's timeout)
    made: list[ConnectEngine] = []

    def engine_for(_shard: Shard) -> ConnectEngine:
        made.append(ConnectEngine(timeout=5.0, retries=0, deadline=1.0))
        return made[-1]

    with a_listener_and_300_dropped() as (shard, port):
        # When the shard rule both transports use runs it
        outcome = asyncio.run(discover_with_retries(shard, engine_for, attempts=2))
    # Then the open port is kept, the shard is not tried again (no more time), and its
    # host is recorded "error" saying why (before: "completed", ports untested unsaid)
    assert [p.port for p in outcome.ports] == [port]
    assert len(made) == 1 and outcome.attempts == 1 and outcome.is_cut
    (scan,) = outcome.host_scans()
    assert scan.status == "error"
    assert scan.note == ("connect: shard shard-test cut short by its 1s deadline: 300 of "
                         "301 probes not tested")
    # And says the one port it got to, not the shard's 301 (before: 301, as if every
    # port had been scanned)
    assert scan.ports_scanned == 1


@needs_iptables
def test_a_stopped_shard_says_the_ports_it_got_to() -> None:
    # Given a listener and 300 ports whose SYNs are dropped, on one loopback address
    async def stopped_midway(shard: Shard) -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.0, stop.set)
        return await discover_with_retries(
            shard, lambda _s: ConnectEngine(timeout=10.0, retries=0), attempts=2, stop=stop)

    with a_listener_and_300_dropped() as (shard, port):
        # When the shard rule both transports use is stopped (Ctrl-C) a second in, the
        # listener answered and the dropped probes still waiting
        outcome = asyncio.run(stopped_midway(shard))
    # Then its host is recorded "interrupted" with the one port it got to (before: the
    # embedded runner alone counted them, and no test said so)
    assert [p.port for p in outcome.ports] == [port]
    (scan,) = outcome.host_scans()
    assert (scan.status, scan.ports_scanned) == ("interrupted", 1)


@needs_iptables
def test_host_answering_on_every_port_keeps_the_backlog_bounded() -> None:
    # Given a loopback address where every port is redirected to one accepting server
    host = "127.77.0.79"
    server = _socket(socket.AF_INET)
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    server.settimeout(0.2)
    is_done = threading.Event()

    def accept_all() -> None:
        while not is_done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    acceptor = threading.Thread(target=accept_all, daemon=True)
    acceptor.start()
    redirect = ("OUTPUT", "-d", f"{host}/32", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
                str(server.getsockname()[1]))

    async def slow_consumer(engine: ConnectEngine, shard: Shard) -> list[int]:
        ports = []
        async for event in engine.scan(shard, Progress()):
            ports.append(event.port)
            if len(ports) % 50 == 0:
                await asyncio.sleep(0.01)  # a consumer slower than the sweep
        return ports

    try:
        with iptables_rule(*redirect, table="nat"):
            engine = ConnectEngine(concurrency=50, backlog_cap=100, timeout=2.0)
            shard = shard_for(host, ranges=(PortRange(3000, 4999),))
            # When 2,000 ports are swept by a slow consumer
            ports = asyncio.run(slow_consumer(engine, shard))
    finally:
        is_done.set()
        acceptor.join()
        server.close()
    # Then every port is yielded once, and found-but-unconsumed ports stayed bounded
    assert sorted(ports) == list(range(3000, 5000))
    assert engine.last_report is not None
    assert engine.last_report.peak_backlog <= 100 + 50


# -- confirm pass --------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_confirm_open_returns_exactly_the_listening_ports(host: str) -> None:
    # Given 3 listeners and 3 closed ports
    with ports_on(host, listening=3, closed=3) as (listening, closed):
        # When the confirm pass checks all six
        confirmed = confirm_open(host, listening + closed, timeout=1.0)
    # Then exactly the listeners are confirmed
    assert confirmed == set(listening)


def test_confirm_open_of_nothing_is_nothing_and_bad_ports_are_refused() -> None:
    assert confirm_open("127.0.0.1", [], timeout=1.0) == set()
    with pytest.raises(ValueError, match="out of range"):
        confirm_open("127.0.0.1", [0], timeout=1.0)
    with pytest.raises(DiscoveryError, match="not an IP"):
        confirm_open("localhost", [80], timeout=1.0)


def test_fd_budget_respects_the_soft_limit() -> None:
    # Given the current limit / When the budget is computed / Then it leaves headroom
    from probers.discovery.connect import fd_budget

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = fd_budget(10**9)
    assert 1 <= budget <= soft - len(open_fds())
    assert fd_budget(3) == 3


@contextlib.contextmanager
def resetting_listeners(host: str, count: int) -> Iterator[list[int]]:
    """``count`` listeners on ``host`` that accept each connection and reset it at once
    (SO_LINGER 0), all served by one thread."""
    import selectors

    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(count):
        sock = _socket(socket.AF_INET)
        sock.bind((host, 0))
        sock.listen(64)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        socks.append(sock)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                with contextlib.suppress(OSError):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sorted(s.getsockname()[1] for s in socks)
    finally:
        stop.set()
        thread.join(5)
        for s in socks:
            s.close()
        selector.close()


def test_a_port_that_accepts_then_resets_is_open() -> None:
    # Given 200 listeners that accept and reset at once (a TCP wrapper refusing the
    # client): the handshake completed, so each port is open
    with resetting_listeners("127.0.0.1", 200) as ports:
        found, progress = run_scan(ConnectEngine(timeout=1.0), shard_for("127.0.0.1",
                                                                        ports=ports))
    # Then every one is found, none "could not be tested" (before: the reset, read from
    # SO_ERROR or raised by getpeername, made most of them errors, and crashed a sweep)
    assert sorted(e.port for e in found) == ports
    assert (progress.open_found, progress.errors) == (200, 0)


def test_a_narrow_range_full_of_real_listeners_is_no_tarpit_when_it_refuses_the_rest() -> None:
    # Given 200 real listeners and 21 ports that refuse, in one 221-port range (9 in 10
    # open: the share rule alone flags it "answers on every port")
    import random

    socks: list[socket.socket] = []
    try:
        for _ in range(20):
            base = random.randint(30000, 60000)
            if listening_ports_v4() & set(range(base, base + 221)):
                continue
            try:
                for port in range(base, base + 200):
                    sock = _socket(socket.AF_INET)
                    socks.append(sock)
                    sock.bind(("127.0.0.1", port))
                    sock.listen(16)
            except OSError:
                for sock in socks:
                    sock.close()
                socks.clear()
                continue
            break
        assert len(socks) == 200, "no free 221-port range on loopback"
        shard = shard_for("127.0.0.1", ranges=(PortRange(base, base + 220),))
        # When the shard rule both transports use runs it through the connect engine
        outcome = asyncio.run(discover_with_retries(
            shard, lambda _s: ConnectEngine(timeout=1.0, retries=0), attempts=1))
    finally:
        for sock in socks:
            sock.close()
    # Then it is an ordinary host with its 200 ports (before: flagged, 0 findings kept)
    assert outcome.tarpit_notes == {} and outcome.refusing == {"127.0.0.1"}
    assert sorted(p.port for p in outcome.ports) == list(range(base, base + 200))
    assert all(p.reason != "tarpit-candidate" for p in outcome.ports)
