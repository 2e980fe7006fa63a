"""The alerts agent on the real Kafka broker: change events from the changes topic reach
a real webhook receiver once each, even when two workers both consume every event.

Two alert apps in two consumer groups each see all ten events (the worst case of
replays and rebalances, made certain rather than left to chance); both submit and
deliver through their own dispatcher on one store. Exactly one delivery per event is
the outbox key's and the claims' doing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import AlertDispatcher, load_alerts
from producers.kafka_io import ensure_topics, make_producer, publish
from schemas.records import ChangeEvent, ChangeKind, Severity, Target
from schemas.topics import topic_names
from stream_processors.transports.faust_alerts import build_alerts_app
from stream_processors.transports.faust_app import PipelineOptions, run_apps
from tests.alert_receivers import webhook_receiver

pytestmark = pytest.mark.kafka

SECRET = b"agent-secret-0123"


def events() -> list[ChangeEvent]:
    t = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp")
    return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH, target=t,
                        scan_id="kafka-scan", port=port, risk_color="red", service="redis",
                        observed_at=datetime(2026, 12, 1, tzinfo=UTC))
            for port in range(6370, 6380)]


def red_alerts(tmp_path: Path, url: str) -> Any:
    """Every red change to a signed webhook at ``url``, at once (digest 0)."""
    path = tmp_path / "alerts.yaml"
    path.write_text(f'channels:\n  hook: {{webhook: "{url}", secret_env: S}}\n'
                    "rules:\n  - name: red\n    when: {colors: [red]}\n"
                    "    notify: [hook]\n    digest: 0\n")
    return load_alerts(path, env={"S": SECRET.decode()})


def run_agent_body(tmp_path: Path, body: Any, messages: list[bytes],
                   done: Any) -> None:
    """The agent ``body`` through Faust's test context (no broker): each message put in
    order, until ``done()``."""
    import faust

    from tests.unit.test_agents import _close_consumer_loop, _until

    async def run() -> None:
        app = faust.App(f"portwatch-alerts-{uuid.uuid4().hex[:8]}", broker="kafka://127.0.0.1:9",
                        store="memory://", web_enabled=False, autodiscover=False,
                        datadir=str(tmp_path / "faust"))
        topic = app.topic("changes", key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")
        agent = app.agent(topic, name="alerts")(body)
        async with agent.test_context() as ctx_agent:
            for message in messages:
                await ctx_agent.put(message, key=b"127.0.0.1")
            await _until(done)
        _close_consumer_loop(app)

    asyncio.run(run())


def run_until(apps: list[Any], done: Callable[[], bool],
              meanwhile: Callable[[], None] | None = None) -> None:
    """Run ``apps`` on the real broker until ``done()`` (bounded: ~120 s, then the test
    asserts on what arrived), then a delivery tick and a commit more; ``meanwhile`` is
    called (in a thread) once they started."""

    async def run() -> None:
        stop = asyncio.Event()
        runner = asyncio.ensure_future(run_apps(apps, stop))
        if meanwhile is not None:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(meanwhile)
        for _ in range(240):
            if done() or runner.done():
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(runner, 60)

    asyncio.run(run())


def test_two_workers_seeing_every_event_deliver_each_once(
        kafka_bootstrap: str, store: Any, tmp_path: Path) -> None:
    topics = topic_names(f"test-alerts-{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, [topics.changes, topics.dead_letter], timeout=30.0)
    options = PipelineOptions(bootstrap=kafka_bootstrap, topics=topics, session_timeout=6.0)
    sent = events()
    with webhook_receiver(SECRET) as receiver:
        config = red_alerts(tmp_path, receiver.url)
        # Given two alert workers in separate groups: both will see every event
        apps = [build_alerts_app(options, AlertDispatcher(store, config),
                                 delivery_interval=1.0, group_suffix=f"-{n}")
                for n in range(2)]
        producer = make_producer(kafka_bootstrap)
        try:
            # When ten change events and one poison record are published
            publish(producer, topics.changes.name, sent)
            producer.send(topics.changes.name, value=b'{"v":1,"kind":"nonsense"}').get(30)
        finally:
            producer.close()

        run_until([app for app, _ in apps], lambda: all(
            stats.events == 10 and stats.dead_letters == 1 for _, stats in apps)
            and len(receiver.events()) >= 10)
        # Then both workers consumed everything, and each event was delivered once
        assert [(s.events, s.dead_letters) for _, s in apps] == [(10, 1), (10, 1)]
        delivered = sorted(e["event_id"] for e in receiver.events())
        assert delivered == sorted(e.event_id for e in sent)
        assert receiver.rejected == []


def test_alerts_turned_on_for_a_running_pipeline_send_only_what_comes_after(
        kafka_bootstrap: str, store: Any, tmp_path: Path) -> None:
    from producers.kafka_io import start_group_at_end

    topics = topic_names(f"test-alerts-{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, [topics.changes, topics.dead_letter], timeout=30.0)
    options = PipelineOptions(bootstrap=kafka_bootstrap, topics=topics, session_timeout=6.0,
                              commit_interval=0.5)
    t = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp")

    def changes(ports: range) -> list[ChangeEvent]:
        # observed long ago (a scanner's clock far behind, a backlog of host scans
        # compared late): when a change was observed does not decide, where it is does
        return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH, target=t,
                            scan_id=f"scan-{ports.start}", port=port, risk_color="red",
                            service="redis", observed_at=datetime(2026, 1, 1, tzinfo=UTC))
                for port in ports]

    def send(events: list[ChangeEvent]) -> None:
        producer = make_producer(kafka_bootstrap)
        try:
            publish(producer, topics.changes.name, events)
        finally:
            producer.close()

    def run_worker(want_events: int, want_delivered: int, receiver: Any,
                   late: list[ChangeEvent] | None = None) -> Any:
        app, stats = build_alerts_app(options, AlertDispatcher(store, config),
                                      delivery_interval=1.0)
        run_until([app], lambda: stats.events >= want_events
                  and len(receiver.events()) >= want_delivered,
                  meanwhile=(lambda: send(late)) if late else None)
        return stats

    group = options.app_id("alerts")
    with webhook_receiver(SECRET) as receiver:
        config = red_alerts(tmp_path, receiver.url)
        # Given a pipeline that ran without alerts: five changes wait in the topic
        send(changes(range(6300, 6305)))
        # When alerts are turned on (the first start of the alerts group: it starts at
        # the topic's end) and two more changes come while it runs
        assert start_group_at_end(kafka_bootstrap, group, topics.changes.name) == 5
        after = changes(range(6400, 6402))
        stats = run_worker(2, 2, receiver, late=after)
        # Then the group read only the two new ones, and they went out
        assert stats.events == 2
        assert sorted(e["event_id"] for e in receiver.events()) == \
            sorted(e.event_id for e in after)
        # And after a restart, with a change that came while the worker was down, the
        # group goes on from its positions and that change is alerted (nothing lost)
        meanwhile = changes(range(6500, 6501))
        send(meanwhile)
        assert start_group_at_end(kafka_bootstrap, group, topics.changes.name) is None
        stats = run_worker(1, 3, receiver)
        assert stats.events == 1
        assert sorted(e["event_id"] for e in receiver.events()) == \
            sorted(e.event_id for e in [*after, *meanwhile])
        assert receiver.rejected == []


def test_a_group_another_worker_started_meanwhile_is_left_as_it_is(
        kafka_bootstrap: str) -> None:
    from kafka import KafkaConsumer

    from producers.kafka_io import start_group_at_end

    topics = topic_names(f"test-alerts-{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, [topics.changes], timeout=30.0)
    group = f"{topics.prefix}portwatch-alerts"
    # Given a member that joined the group and has committed nothing yet
    member = KafkaConsumer(topics.changes.name, bootstrap_servers=kafka_bootstrap,
                           group_id=group, enable_auto_commit=False,
                           auto_offset_reset="earliest", session_timeout_ms=6000)
    try:
        for _ in range(40):
            member.poll(timeout_ms=250)
            if member.assignment():
                break
        assert member.assignment()
        # When another worker's first start would move it to the end
        passed = start_group_at_end(kafka_bootstrap, group, topics.changes.name)
    finally:
        member.close()
    # Then the broker refuses to reset an active group, and it is left as it is
    assert passed is None


def test_agent_queues_delivers_and_dead_letters_without_a_broker(store: Any,
                                                                 tmp_path: Path) -> None:
    """The same agent body through Faust's test context: framed messages (several events
    in one message, and a replay of it) reach the receiver once; poison is dead-lettered."""
    from producers.publish import encode_records
    from stream_processors.transports.faust_alerts import AlertAgentStats, alert_agent
    from tests.unit.test_agents import Sent

    sent = events()
    dead = Sent()
    stats = AlertAgentStats()
    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, red_alerts(tmp_path, receiver.url))
        # When five events arrive in one message, then the same message again (a
        # replay), then the other five with a poison line
        first = encode_records(sent[:5])
        run_agent_body(tmp_path, alert_agent(dispatcher, dead, buffer=10, within=0.05,
                                             stats=stats),
                       [first, first, encode_records(sent[5:]) + b"\n{\"v\":1}"],
                       lambda: stats.events == 15 and stats.dead_letters == 1
                       and len(receiver.events()) >= 10)
        # Then each of the ten events reached the receiver once
        assert sorted(e["event_id"] for e in receiver.events()) == \
            sorted(e.event_id for e in sent)
        assert stats.queued == 10
        # And the poison line is a dead letter of the alerts stage
        [(_key, envelope)] = dead.messages
        assert b'"stage":"alerts"' in envelope and b'"line":5' in envelope


def test_agent_dead_letters_an_event_the_store_never_takes(store: Any, tmp_path: Path) -> None:
    """The agent body through Faust's test context, with a store that refuses one event
    for ever while it answers (a real CHECK constraint): that event is dead-lettered with
    the store's reason, the others are delivered, the stream goes on."""
    from producers.publish import encode_records
    from stream_processors.transports.faust_alerts import AlertAgentStats, alert_agent
    from tests.unit.test_agents import Sent

    sent = events()[:3]
    store.command(f"ALTER TABLE alert_outbox ADD CONSTRAINT refuse_one "
                  f"CHECK event_id != '{sent[1].event_id}'")
    dead = Sent()
    stats = AlertAgentStats()
    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, red_alerts(tmp_path, receiver.url),
                                     sleep=lambda _s: None)
        run_agent_body(tmp_path, alert_agent(dispatcher, dead, buffer=10, within=0.05,
                                             stats=stats, retry_seconds=0.01),
                       [encode_records(sent)],
                       lambda: stats.dead_letters == 1 and len(receiver.events()) >= 2)
    # Then the two others reached the receiver, and the refused one is a dead letter
    assert sorted(e["event_id"] for e in receiver.events()) == sorted(
        [sent[0].event_id, sent[2].event_id])
    [(_key, envelope)] = dead.messages
    assert b'"stage":"alerts"' in envelope and b"the store refuses to queue it" in envelope
    assert stats.queued == 2
