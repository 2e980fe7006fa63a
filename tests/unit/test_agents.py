"""Unit tests of the distributed shape's pieces that need no broker: message framing,
dead-letter envelopes, the store sink's idempotence, and the Faust agents driven
through Faust's own test context (``agent.test_context()``)."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
import pytest

from producers.publish import dead_letter, decode_records, encode_records, frame_by_key
from schemas.records import (
    SCHEMA_VERSION,
    Finding,
    HostScan,
    OpenPort,
    Proto,
    ServiceInfo,
    Target,
)
from schemas.topics import topic_names
from stream_processors.sink import SinkStopped, StoreSink
from stream_processors.stages import StageContext
from stream_processors.transports.faust_agents import (
    SinkAgentStats,
    StageStats,
    make_stage,
    sink_agent,
    stage_agent,
)
from tests import loopback

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def port(ip: str, number: int, *, scan: str = "s1", at: datetime = T0,
         proto: Proto = Proto.TCP) -> OpenPort:
    return OpenPort(scan_id=scan, target=Target(ip=ip, target=ip, organization="Org"),
                    port=number, proto=proto, observed_at=at)


def finding(ip: str, number: int, **kw: Any) -> Finding:
    return Finding(port=port(ip, number, **kw),
                   service=ServiceInfo(service="ssh", product="OpenSSH", version="9.2p1"))


# -- framing ----------------------------------------------------------------------------


def test_records_of_one_key_share_a_message_and_round_trip() -> None:
    # Given open ports of two hosts, interleaved
    ports = [port("127.0.0.1", 22), port("127.0.0.2", 80), port("127.0.0.1", 443)]
    # When they are framed by key
    messages = frame_by_key(ports)
    # Then one message per host, in first-seen order, decoding to the same records
    assert [(k, n) for k, _v, n in messages] == [(b"127.0.0.1", 2), (b"127.0.0.2", 1)]
    decoded, poison = decode_records(OpenPort, messages[0][1])
    assert decoded == [ports[0], ports[2]]
    assert poison == []


def test_framing_caps_records_per_message() -> None:
    ports = [port("127.0.0.1", p) for p in range(1, 12)]
    messages = frame_by_key(ports, max_records=5)
    assert [n for _k, _v, n in messages] == [5, 5, 1]


def test_a_poison_line_is_reported_with_its_reason_and_neighbours_survive() -> None:
    # Given a message with a good record, junk, a bad port and a future schema version
    good = port("127.0.0.1", 22)
    bad_port = json.loads(good.to_json())
    bad_port["port"] = 70000
    future = json.loads(good.to_json())
    future["v"] = SCHEMA_VERSION + 1
    value = b"\n".join([good.to_json(), b"\xff\xfenot json", json.dumps(bad_port).encode(),
                        json.dumps(future).encode()])
    # When it is decoded
    records, poison = decode_records(OpenPort, value)
    # Then the good record is kept and each bad line says why
    assert records == [good]
    assert [p.line for p in poison] == [1, 2, 3]
    assert "not JSON" in poison[0].reason
    assert "port out of range" in poison[1].reason
    assert "unsupported schema version" in poison[2].reason


def test_an_empty_message_is_poison() -> None:
    assert decode_records(OpenPort, None)[1][0].reason == "empty message (no value)"
    assert decode_records(OpenPort, b"")[1][0].reason == "empty message"


def test_dead_letter_envelope_names_origin_reason_and_keeps_the_value() -> None:
    text = json.loads(dead_letter("t", 3, 42, "bad port", b'{"x":1}', stage="process", line=2))
    assert (text["source_topic"], text["partition"], text["offset"], text["line"]) == \
        ("t", 3, 42, 2)
    assert (text["stage"], text["reason"], text["value"]) == ("process", "bad port", '{"x":1}')
    binary = json.loads(dead_letter("t", 0, 0, "junk", b"\xff\x00", stage="sink"))
    assert base64.b64decode(binary["value_base64"]) == b"\xff\x00"


def test_topic_prefix_renames_every_topic_and_keeps_partitions() -> None:
    plain, prefixed = topic_names(""), topic_names("t1.")
    assert [t.name for t in prefixed.all] == [f"t1.{t.name}" for t in plain.all]
    assert [t.partitions for t in prefixed.all] == [t.partitions for t in plain.all]


# -- the sink ---------------------------------------------------------------------------


def _list(store: Any) -> list[dict[str, Any]]:
    return store.report("list", {"history": 1}).dicts()  # type: ignore[no-any-return]


def test_replayed_and_retried_batches_never_duplicate_or_move_first_seen(store: Any) -> None:
    # Given a batch of two findings stored once
    sink = StoreSink(store)
    batch = [finding("127.0.0.1", 22), finding("127.0.0.1", 80)]
    asyncio.run(sink.write(batch, []))
    # When the same batch is replayed (Kafka redelivery), twice in one batch, and the
    # shard is retried later (same scan, new observed_at)
    retried = [replace(f, port=replace(f.port, observed_at=T0 + timedelta(minutes=5)))
               for f in batch]
    asyncio.run(sink.write(batch + batch, []))
    asyncio.run(sink.write(retried, []))
    # Then the report has one row per port, first seen at the first observation
    rows = _list(store)
    assert sorted(r["port"] for r in rows) == [22, 80]
    assert {r["first_seen"].replace(tzinfo=UTC) for r in rows} == {T0}
    assert {r["last_seen"].replace(tzinfo=UTC) for r in rows} == {T0 + timedelta(minutes=5)}
    assert sink.stats.duplicates_dropped == 2
    distinct = store.query("SELECT count() FROM port_observations FINAL")[0][0]
    assert distinct == 2


def test_host_scans_of_one_shard_replace_and_of_two_shards_add(store: Any) -> None:
    # Given one host scanned by two shards (ports split), one shard retried
    t = Target(ip="127.0.0.1", target="127.0.0.1")
    a = HostScan("s1", t, T0, T0, ports_scanned=100, open_ports=1, shard_id="s1:tcp:0")
    b = HostScan("s1", t, T0, T0, ports_scanned=50, open_ports=0, shard_id="s1:tcp:1")
    a_again = replace(a, finished_at=T0 + timedelta(seconds=3))
    sink = StoreSink(store)
    asyncio.run(sink.write([], [a, b]))
    asyncio.run(sink.write([], [a_again]))
    # Then the store sums the shards, counting the retried one once
    rows = store.query("SELECT sum(ports_scanned), count() FROM host_scans FINAL")
    assert rows == [(150, 2)]


def test_a_sink_stopped_while_failing_raises_so_nothing_is_acked(store: Any) -> None:
    # Given a store whose findings table is gone (DETACH: a real UNKNOWN_TABLE fault; the
    # retry-until-stored case is tests/integration/test_bounded_store.py)
    sink = StoreSink(store, retry_initial=0.01, retry_max=0.02)
    store._client.command("DETACH TABLE port_observations")

    async def run() -> None:
        task = asyncio.create_task(sink.write([finding("127.0.0.1", 22)], []))
        await asyncio.sleep(0.3)
        sink.stop()
        await task

    try:
        # When the sink is stopped while its insert keeps failing
        with pytest.raises(SinkStopped):
            asyncio.run(run())
    finally:
        store._client.command("ATTACH TABLE port_observations")
    # Then it raised (so the caller acks nothing), after real failed attempts, and wrote
    # nothing
    assert sink.stats.insert_errors >= 2
    assert store.query("SELECT count() FROM port_observations") == [(0,)]


# -- agents in Faust's test context -----------------------------------------------------


class Sent:
    """A FAKE publisher (named as such): captures what an agent publishes, each send
    resolving at once like an ack. These tests drive the agent bodies through Faust's
    test context; the same bodies run on the real broker in
    tests/integration/test_distributed_pipeline.py and test_alert_agent.py."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes]] = []

    async def __call__(self, key: bytes | None, value: bytes) -> Awaitable[Any]:
        self.messages.append((key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _app() -> faust.App:
    # The broker is never contacted: the test context feeds the agent directly.
    return faust.App("portwatch-unit-test", broker="kafka://127.0.0.1:9", store="memory://",
                     web_enabled=False, autodiscover=False,
                     datadir=str(Path(tempfile.gettempdir()) / "portwatch-faust-unit-test"))


def _close_consumer_loop(app: faust.App) -> None:
    """Acks in the test context create the app's consumer lazily; its thread owns an
    event loop that only a started-then-stopped consumer closes. Close it here."""
    thread = getattr(app.consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()


def test_stage_agent_identifies_real_ports_and_dead_letters_poison() -> None:
    # Given a real SSH banner on loopback, and the stage agent over an open-ports topic
    findings, dead = Sent(), Sent()
    stats = StageStats()
    ctx = StageContext()
    ctx.identify = replace(ctx.identify, banner_wait=1.0, budget=5.0)

    async def run(listener_port: int) -> None:
        app = _app()
        topic = app.topic("open-ports", key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        body = stage_agent(make_stage(ctx), findings, dead, buffer=10, within=0.05,
                           concurrency=4, stats=stats)
        agent = app.agent(topic, name="stages")(body)
        ssh = port("127.0.0.1", listener_port)
        udp = port("127.0.0.1", 53, proto=Proto.UDP)
        async with agent.test_context() as ctx_agent:
            # When a message with two ports, and a poison message, go through it
            await ctx_agent.put(encode_records([ssh, udp]), key=b"127.0.0.1")
            await ctx_agent.put(b"not a record", key=b"127.0.0.1")
            await _until(lambda: stats.messages == 2)
        _close_consumer_loop(app)

    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")) as ln:
        asyncio.run(run(ln.port))
    # Then both ports became findings in one message keyed by the host
    assert len(findings.messages) == 1
    key, value = findings.messages[0]
    got, poison = decode_records(Finding, value)
    assert key == b"127.0.0.1" and poison == []
    by_port = {f.port.port: f for f in got}
    assert by_port[ln.port].service.product == "OpenSSH"
    assert by_port[ln.port].service.version == "9.2p1"
    assert by_port[ln.port].risk_color.value == "green"
    assert by_port[53].port.proto is Proto.UDP
    # And the poison went to the dead letters with its reason, and was counted
    envelope = json.loads(dead.messages[0][1])
    assert envelope["stage"] == "process" and "not JSON" in envelope["reason"]
    assert (stats.ports, stats.findings, stats.poison) == (2, 2, 1)


def run_sink_agent(sink: StoreSink, dead: Sent, stats: SinkAgentStats,
                   feed: Callable[[Any], Awaitable[None]],
                   on_failure: Callable[[BaseException], None] | None = None) -> None:
    """The sink agent over a findings topic, in Faust's test context (no broker):
    ``feed(ctx_agent)`` puts the messages and waits for what it needs."""

    async def run() -> None:
        app = _app()
        topic = app.topic("findings", key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        body = sink_agent(sink, dead, findings_topic="findings", host_scans_topic="host-scans",
                          buffer=100, within=0.1, stats=stats, on_failure=on_failure)
        agent = app.agent(topic, name="sink")(body)
        async with agent.test_context() as ctx_agent:
            await feed(ctx_agent)
        _close_consumer_loop(app)

    asyncio.run(run())


def test_sink_agent_stores_findings_and_dead_letters_poison(store: Any) -> None:
    # Given the sink agent over a findings topic, writing to a real (chdb) store
    dead = Sent()
    stats = SinkAgentStats()
    sink = StoreSink(store)

    async def feed(ctx_agent: Any) -> None:
        # When two findings and a poison line arrive
        value = encode_records([finding("127.0.0.1", 22), finding("127.0.0.1", 80)])
        await ctx_agent.put(value + b"\n{\"v\":1}", key=b"127.0.0.1")
        await _until(lambda: stats.messages == 1)

    run_sink_agent(sink, dead, stats, feed)
    # Then both findings are in the store and the poison line is a dead letter
    assert sorted(r["port"] for r in _list(store)) == [22, 80]
    envelope = json.loads(dead.messages[0][1])
    assert envelope["stage"] == "sink" and envelope["line"] == 2
    assert "malformed record" in envelope["reason"]
    assert (sink.stats.findings, stats.poison) == (2, 1)


class FaultyChanges:
    """A named fake: a change stage failing, before the batch is stored, with an error of
    portwatch's own making (a TypeError, as a naive timestamp once caused in the sink),
    neither the data's nor the store's. No real record causes one now, which is why it
    is faked."""

    def storing(self, findings: Any, scans: Any) -> Any:
        raise TypeError("can't compare offset-naive and offset-aware datetimes")

    async def on_stored(self, findings: Any, scans: Any) -> None:
        raise AssertionError("never reached: storing failed")


def test_a_sink_fault_of_its_own_acknowledges_nothing_and_stops_the_app(store: Any) -> None:
    # Given the sink agent failing with a fault that is neither the data's (bisected,
    # dead-lettered) nor the store's (retried)
    dead = Sent()
    stats = SinkAgentStats()
    failures: list[BaseException] = []
    sink = StoreSink(store, changes=FaultyChanges())

    async def feed(ctx_agent: Any) -> None:
        # When a message of two findings arrives
        await ctx_agent.put(encode_records([finding("127.0.0.1", 22), finding("127.0.0.1", 80)]),
                            key=b"127.0.0.1")
        await _until(lambda: bool(failures))

    run_sink_agent(sink, dead, stats, feed, on_failure=failures.append)
    # Then the fault is handed on (the app stops with it: Faust restarted the agent and
    # acknowledged later messages past the lost buffer), nothing was acknowledged nor
    # dead-lettered: whoever takes the partition next stores the findings
    assert [type(f) for f in failures] == [TypeError]
    assert (stats.messages, dead.messages) == (0, [])
    assert stats.failure.startswith("TypeError: can't compare offset-naive")
    assert store.query("SELECT count() FROM port_observations") == [(0,)]


def test_a_finding_too_large_for_kafka_is_dead_lettered_not_sent() -> None:
    from types import SimpleNamespace

    from stream_processors.transports.faust_agents import run_stage

    # Given two open ports, and a stage that (a named fake: identification caps what it
    # keeps, so no real probe makes one) turns one of them into a 2 MB finding
    small, big = port("127.0.0.1", 22), port("127.0.0.1", 80)

    async def oversized_stage(p: OpenPort) -> Finding:
        banner = "x" * 2_000_000 if p.port == 80 else ""
        return Finding(port=p, service=ServiceInfo(service="ssh", banner=banner))

    event = SimpleNamespace(value=encode_records([small, big]),
                            message=SimpleNamespace(topic="open-ports", partition=0, offset=7))
    findings, dead, stats = Sent(), Sent(), StageStats()
    # When the stage agent's batch runs
    asyncio.run(run_stage([event], oversized_stage, 2, findings, dead, stats))
    # Then the small finding is published, the big one dead-lettered with why (no crash)
    (sent,) = findings.messages
    assert [f.port.port for f in decode_records(Finding, sent[1])[0]] == [22]
    envelope = json.loads(dead.messages[0][1])
    assert envelope["reason"].startswith("finding of 2,000,")
    assert envelope["offset"] == 7 and stats.poison == 1


def test_a_stopped_workers_empty_data_directory_is_removed_and_a_file_keeps_its_own(
        tmp_path: Path) -> None:
    from stream_processors.transports.faust_app import remove_empty_tree

    # Given Faust's skeleton for in-memory tables, and another app's directory holding a file
    empty = tmp_path / "t1.portwatch-sink"
    (empty / "v1" / "tables").mkdir(parents=True)
    kept = tmp_path / "t2.portwatch-sink"
    (kept / "v1" / "tables").mkdir(parents=True)
    (kept / "v1" / "tables" / "state.db").write_bytes(b"x")
    (kept / "v1" / "spare").mkdir()
    # When each is removed as a stopped worker does
    remove_empty_tree(empty)
    remove_empty_tree(kept)
    remove_empty_tree(tmp_path / "never-made")  # nothing there: nothing happens
    # Then the skeleton is gone, and the file with every directory above it stays
    assert not empty.exists()
    assert (kept / "v1" / "tables" / "state.db").read_bytes() == b"x"
    assert not (kept / "v1" / "spare").exists()


def test_stage_agent_never_probes_an_open_port_outside_its_scope() -> None:
    from producers.targets import Scope

    # Given a worker fenced to the test network (PORTWATCH_SCOPE_ALLOW=198.18.0.0/15)
    # and a record on its topic naming a listener on 127.0.0.1 (written by anyone)
    findings, dead = Sent(), Sent()
    stats = StageStats()
    ctx = StageContext()
    ctx.identify = replace(ctx.identify, banner_wait=1.0, budget=5.0)
    connections: list[int] = []

    def counting(conn: Any) -> None:
        connections.append(1)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

    async def run(listener_port: int) -> None:
        app = _app()
        topic = app.topic("open-ports", key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        body = stage_agent(make_stage(ctx), findings, dead, buffer=10, within=0.05,
                           concurrency=4, stats=stats,
                           scope=Scope.build(allow=["198.18.0.0/15"]))
        agent = app.agent(topic, name="stages")(body)
        async with agent.test_context() as ctx_agent:
            await ctx_agent.put(encode_records([port("127.0.0.1", listener_port)]),
                                key=b"127.0.0.1")
            await _until(lambda: stats.messages == 1)
        _close_consumer_loop(app)

    with loopback.listen(counting) as ln:
        asyncio.run(run(ln.port))
    # Then nothing connected to it, no finding was made, and the record is a dead
    # letter that says why
    assert connections == [] and findings.messages == []
    envelope = json.loads(dead.messages[0][1])
    assert "outside this worker's scope" in envelope["reason"]
    assert f"127.0.0.1 {ln.port}/tcp" in envelope["reason"]
    assert (stats.ports, stats.findings, stats.out_of_scope) == (0, 0, 1)


def test_host_slots_bound_each_address_and_are_let_go_when_its_jobs_end() -> None:
    ctx = StageContext(per_host_connections=2)
    running: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def job(ip: str) -> None:
        async with ctx.host_slot(ip):
            running[ip] = running.get(ip, 0) + 1
            peak[ip] = max(peak.get(ip, 0), running[ip])
            await asyncio.sleep(0.01)
            running[ip] -= 1

    async def main() -> None:
        # Five jobs on each of 1,000 addresses, all at once
        await asyncio.gather(*(job(f"127.0.{i // 250}.{i % 250 + 1}")
                               for i in range(1000) for _ in range(5)))

    asyncio.run(main())
    # Then no address had more than two in flight, and none is remembered after
    assert set(peak.values()) == {2}
    assert ctx._host_slots == {}


def test_an_app_marked_failed_is_seen_as_crashed_by_the_runner() -> None:
    # Given an app whose agent stopped on a fault of its own (Faust restarts a crashed
    # agent and never sets the app's crash_reason: run_apps went on without it)
    from stream_processors.transports.faust_app import _crash_of, mark_failed

    app = _app()
    fault = TypeError("a fault of ours")
    mark_failed(app, fault)
    mark_failed(app, ValueError("a later one"))
    # When the runner watches it, then it resolves at once with the first fault
    assert asyncio.run(asyncio.wait_for(_crash_of(app), 5)) is fault
