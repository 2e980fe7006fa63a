"""Faults of the distributed shape, caused for real against real brokers:

* the Faust worker is killed (SIGKILL) while it is identifying, then started again;
* a discovery worker is killed (SIGKILL) in the middle of a shard;
* the sink is killed (SIGKILL) while it holds stored hosts for change detection;
* the broker is stopped and started again during a scan (a second broker of the
  test's own, on its own ports and data dir: the shared one is left alone);
* poison messages on the open-ports and findings topics.

After each: every finding is in the store exactly once (one row per port in the
reports, first_seen equal to the first observation), the scan completes, and
poison went to the dead-letter topic with its reason without stopping the stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.kafka_io import make_consumer, make_producer, wait_for_broker
from producers.publish import publish_framed
from schemas.records import (
    ChangeEvent,
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    RiskColor,
    ServiceInfo,
    Severity,
    Target,
)
from tests import loopback
from tests.conftest import REPO
from tests.integration.test_distributed_pipeline import Pipeline, Worker, pipeline_of
from tests.kafka_fixtures import PrivateBroker, consume

pytestmark = pytest.mark.kafka

SLOW_IDENTIFY = {"PORTWATCH_IDENTIFY_BUDGET": "3", "PORTWATCH_BANNER_WAIT": "1"}


def addresses(first: int, count: int) -> tuple[str, ...]:
    return tuple(f"127.0.0.{n}" for n in range(first, first + count))


def wait_for(predicate: Any, timeout: float, what: str, pipe: Pipeline) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s\n{pipe.logs()}")
        time.sleep(0.1)


def dead_letters(pipe: Pipeline, count: int) -> list[dict[str, Any]]:
    consumer = make_consumer(pipe.bootstrap, pipe.topics.dead_letter.name,
                             f"{pipe.prefix}test-dead-letters")
    try:
        return [json.loads(r.value) for r in consume(consumer, count, timeout=20)]
    finally:
        consumer.close()


@contextlib.contextmanager
def saturated(addrs: tuple[str, ...]) -> Iterator[int]:
    """A port whose accept queue is full on every address: the kernel drops new SYNs,
    so probing it waits for the whole timeout (a real slow port, on loopback)."""
    port = loopback.free_port(addrs)
    socks: list[socket.socket] = []
    try:
        for addr in addrs:
            server = socket.socket()
            socks.append(server)  # closed below even if bind fails
            server.bind((addr, port))
            server.listen(0)
            for _ in range(3):  # fill the queue; these are never accepted
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((addr, port))
                socks.append(filler)
        time.sleep(0.2)
        yield port
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def scan_targets(addrs: tuple[str, ...]) -> Iterator[dict[str, int]]:
    """An SSH banner and an HTTP server on every address, plus a saturated port that
    makes each shard last a few seconds."""
    with contextlib.ExitStack() as stack:
        ports = {
            "ssh": stack.enter_context(loopback.listen(
                loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"), addrs)).port,
            "http": stack.enter_context(loopback.listen(
                loopback.http_handler("nginx/1.22.1"), addrs)).port,
            "slow": stack.enter_context(saturated(addrs)),
        }
        yield ports


def assert_scan_complete(pipe: Pipeline, addrs: tuple[str, ...], ports: dict[str, int]) -> None:
    """Every host's two open ports exactly once; every host scanned, completed."""
    rows = pipe.report("list")
    got = sorted((r["ip"], r["port"]) for r in rows)
    assert got == sorted((a, p) for a in addrs for p in (ports["ssh"], ports["http"]))
    assert {r["product"] for r in rows} == {"OpenSSH", "nginx"}
    summary = {r["ip"]: r for r in pipe.report("summary")}
    assert sorted(summary) == sorted(addrs)
    assert {r["scan_status"] for r in summary.values()} == {"completed"}
    assert {r["open_ports"] for r in summary.values()} == {2}


# -- the Faust worker -------------------------------------------------------------------


def test_faust_worker_killed_mid_stream_loses_and_duplicates_nothing(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # Given silent services on 30 loopback addresses (identifying each takes seconds)
    addrs = addresses(31, 30)
    waves = [addrs[:10], addrs[10:20], addrs[20:]]
    observed = [datetime(2026, 3, 1, 12, 0, i, tzinfo=UTC) for i in range(3)]
    with loopback.listen(loopback.silent(), addrs) as listener, \
            pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        producer = make_producer(kafka_bootstrap)

        def send_wave(i: int) -> None:
            events = [OpenPort(scan_id="faust-kill", target=Target(ip=a, target=a),
                               port=listener.port, observed_at=observed[i]) for a in waves[i]]
            publish_framed(producer, pipe.topics.open_ports.name, events)

        try:
            worker = pipe.process(env=SLOW_IDENTIFY)
            # When the first wave is fully stored
            send_wave(0)
            wait_for(lambda: pipe.lag("stages") == 0 and pipe.lag("sink") == 0, 60,
                     "first wave stored", pipe)
            # and the worker is killed while it identifies the second
            send_wave(1)
            wait_for(lambda: pipe.lag("stages") > 0, 20, "second wave in flight", pipe)
            time.sleep(1.0)
            assert pipe.lag("stages") > 0, "the second wave finished before the kill"
            pipe.kill(worker)
            # and the third wave and two poison messages arrive while it is down
            send_wave(2)
            producer.send(pipe.topics.open_ports.name, key=b"x", value=b"\x00garbage").get(10)
            producer.send(pipe.topics.findings.name, key=b"x", value=b'{"v":1,"port":{}}').get(10)
        finally:
            producer.close(timeout=5)
        # and the worker is started again
        worker = pipe.process(env=SLOW_IDENTIFY)
        wait_for(lambda: pipe.lag("stages") == 0 and pipe.lag("sink") == 0, 90,
                 "all waves stored", pipe)
        pipe.stop(worker)
        # Then every port is in the store once, first seen at its own observation
        rows = pipe.report("list", "--history")
        assert sorted(r["ip"] for r in rows) == sorted(addrs)
        first_seen = {r["ip"]: r["first_seen"] for r in rows}
        for wave, at in zip(waves, observed, strict=True):
            expected = at.strftime("%Y-%m-%d %H:%M:%S")
            assert {first_seen[a][:19].replace("T", " ") for a in wave} == {expected}
        # And each poison message is a dead letter with its reason
        letters = sorted(dead_letters(pipe, 2), key=lambda d: d["stage"])
        assert [(d["stage"], d["source_topic"]) for d in letters] == [
            ("process", pipe.topics.open_ports.name), ("sink", pipe.topics.findings.name)]
        assert "not JSON" in letters[0]["reason"]
        assert "malformed record" in letters[1]["reason"]


# -- the sink, while it holds hosts for change detection ----------------------------------


def test_a_sink_killed_while_it_holds_stored_hosts_loses_no_change_event(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # Given five hosts' completed scans of an hour ago (a backlog) and their findings
    addrs = addresses(71, 5)
    finished = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    ports = {22: ("ssh", "OpenSSH", RiskColor.GREEN), 6379: ("redis", "Redis", RiskColor.RED)}
    findings = [Finding(port=OpenPort(scan_id="sink-kill", target=Target(ip=a, target=a),
                                      port=port, observed_at=finished),
                        service=ServiceInfo(service=service, product=product,
                                            version="1.0", method=f"banner:{service}"),
                        risk_color=color)
                for a in addrs for port, (service, product, color) in ports.items()]
    scans = [HostScan("sink-kill", Target(ip=a, target=a), finished - timedelta(minutes=5),
                      finished, 65535, len(ports), status="completed",
                      shard_id="sink-kill:0", ports=(PortRange(1, 65535),))
             for a in addrs]
    with pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        # stored by a sink that holds every host for five minutes before comparing
        holder = pipe.process("--change-settle", "300")
        producer = make_producer(kafka_bootstrap)
        try:
            publish_framed(producer, pipe.topics.findings.name, findings)
            publish_framed(producer, pipe.topics.host_scans.name, scans)
        finally:
            producer.close(timeout=5)
        wait_for(lambda: pipe.lag("sink") == 0, 60, "the backlog stored", pipe)
        # When that sink is killed while it holds them (their offsets are committed:
        # no record of theirs comes again), and a new one starts
        pipe.kill(holder)
        changes = make_consumer(pipe.bootstrap, pipe.topics.changes.name,
                                f"{pipe.prefix}test-changes")
        try:
            assert consume(changes, 1, timeout=3) == [], "the killed sink released a host"
            successor = pipe.process()
            records = consume(changes, 2 * len(addrs), timeout=60)
            records += consume(changes, 1, timeout=3)  # and nothing more
        finally:
            changes.close()
        pipe.stop(successor)
        # Then the successor found what was stored but never compared, and published
        # each host's events once, at the scan's own time
        events = [ChangeEvent.from_json(r.value) for r in records]
        assert sorted((e.target.ip, e.port, e.kind, e.severity) for e in events) == sorted(
            (a, port, ChangeKind.OPENED, Severity.HIGH if port == 6379 else Severity.LOW)
            for a in addrs for port in ports), pipe.logs()
        assert {(e.scan_id, e.previous_scan_id, e.observed_at) for e in events} == {
            ("sink-kill", "", finished)}
        # And the change log holds each of them once
        rows = pipe.report("changes", "--since", "7d")
        assert sorted((r["ip"], r["port"], r["kind"]) for r in rows) == sorted(
            (a, port, "opened") for a in addrs for port in ports)


# -- a discovery worker -----------------------------------------------------------------


def _shard_started(worker: Worker) -> str:
    for line in worker.text().splitlines():
        if " started (" in line and "shard " in line:
            return line.split("shard ", 1)[1].split(" ", 1)[0]
    return ""


def test_discovery_worker_killed_mid_shard_is_replaced(kafka_bootstrap: str,
                                                       tmp_path: Path) -> None:
    addrs = addresses(71, 4)
    with scan_targets(addrs) as ports, pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        # Given a sink and two discovery workers in one group, each shard lasting seconds
        sink = pipe.process()
        slow = ("--timeout", "1.5", "--retries", "1")
        workers = [pipe.discover(*slow), pipe.discover(*slow)]
        spec = ",".join(str(p) for p in ports.values())
        produced = subprocess.run(
            [sys.executable, "-m", "portwatch", "produce", *addrs, "--ports", spec,
             "--hosts-per-shard", "1"], cwd=REPO, env={**os.environ, **pipe.env()},
            capture_output=True, text=True, timeout=60)
        assert produced.returncode == 0, produced.stderr
        # When the first worker to start a shard is killed in the middle of it
        wait_for(lambda: any(_shard_started(w) for w in workers), 30, "a shard started", pipe)
        victim = next(w for w in workers if _shard_started(w))
        pipe.kill(victim)
        killed_shard = _shard_started(victim)
        assert f"shard {killed_shard} done" not in victim.text()
        survivor = next(w for w in workers if w is not victim)
        # Then the other worker takes the shard over and the scan completes
        pipe.wait_drained(timeout=120)
        assert f"shard {killed_shard} done" in survivor.text()
        pipe.stop(survivor)
        pipe.stop(sink)
        assert_scan_complete(pipe, addrs, ports)


# -- the broker -------------------------------------------------------------------------


def test_broker_stopped_and_started_during_a_scan(tmp_path: Path, kafka_bootstrap: str) -> None:
    del kafka_bootstrap  # only to skip (or fail under CI) like the other broker tests
    broker = PrivateBroker.in_dir(tmp_path)
    broker.env["KAFKA_START_TIMEOUT"] = "90"
    addrs = addresses(81, 4)
    try:
        broker.ctl("up")
        wait_for_broker(broker.bootstrap, timeout=30)
        with scan_targets(addrs) as ports, pipeline_of(broker.bootstrap, tmp_path) as pipe:
            # Given a pipeline on the test's own broker, scanning 4 slow shards
            sink = pipe.process()
            worker = pipe.discover("--timeout", "1.5", "--retries", "1")
            spec = ",".join(str(p) for p in ports.values())
            produced = subprocess.run(
                [sys.executable, "-m", "portwatch", "produce", *addrs, "--ports", spec,
                 "--hosts-per-shard", "1"], cwd=REPO, env={**os.environ, **pipe.env()},
                capture_output=True, text=True, timeout=60)
            assert produced.returncode == 0, produced.stderr
            # When the broker stops after the first shard and starts again 3 s later
            wait_for(lambda: " done (" in worker.text(), 60, "a shard done", pipe)
            broker.ctl("down", "--keep-data")
            done_while_down = worker.text().count(" done (")
            time.sleep(3)
            broker.ctl("up")
            # Then the workers carry on and the scan completes, nothing lost or doubled
            pipe.wait_drained(timeout=150)
            assert worker.proc.poll() is None and sink.proc.poll() is None, pipe.logs()
            assert done_while_down < len(addrs), "the scan ended before the broker stopped"
            pipe.stop(worker)
            pipe.stop(sink)
            assert_scan_complete(pipe, addrs, ports)
    finally:
        broker.ctl("down")  # stops it and deletes its data dir


# -- a fault of the sink's own ----------------------------------------------------------


def test_a_sink_fault_of_its_own_stops_it_and_the_next_sink_stores_the_batch(
        kafka_bootstrap: str, store: Any) -> None:
    import asyncio
    import uuid

    from producers.kafka_io import ensure_topics
    from schemas.topics import topic_names
    from stream_processors.sink import StoreSink
    from stream_processors.transports.faust_app import (
        PipelineOptions,
        build_sink_app,
        run_apps,
    )
    from tests.unit.test_agents import FaultyChanges, finding

    topics = topic_names(f"test-sink-fault-{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, [topics.findings, topics.host_scans, topics.dead_letter],
                  timeout=30.0)
    options = PipelineOptions(bootstrap=kafka_bootstrap, topics=topics, session_timeout=6.0,
                              sink_within=0.2)
    producer = make_producer(kafka_bootstrap)
    try:
        publish_framed(producer, topics.findings.name,
                       [finding("127.0.0.1", 22), finding("127.0.0.1", 80)])
    finally:
        producer.close()

    async def run(sink: StoreSink, until: Any) -> None:
        app, _ = build_sink_app(options, sink)
        stop = asyncio.Event()
        runner = asyncio.ensure_future(run_apps([app], stop))
        for _ in range(240):  # bounded: at most ~120 s
            if runner.done() or until():
                break
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(runner, 60)

    # Given a sink failing on a fault of its own (a named fake: see FaultyChanges), when
    # it takes the findings, then its run ends with the fault (it neither goes on nor is
    # restarted past the batch)
    with pytest.raises(RuntimeError, match="stream processor crashed: TypeError"):
        asyncio.run(run(StoreSink(store, changes=FaultyChanges()), lambda: False))
    assert store.query("SELECT count() FROM port_observations") == [(0,)]
    # And the next sink of the group reads the batch again and stores it: nothing lost
    asyncio.run(run(StoreSink(store), lambda: store.query(
        "SELECT count() FROM port_observations") == [(2,)]))
    assert sorted(store.query("SELECT port FROM port_observations")) == [(22,), (80,)]
