"""The Faust apps of the distributed shape: built here, their agents live in faust_agents.py.

Owns: building two ``faust.App`` objects over the topics of ``schemas.topics``
(with the deployment's prefix) and running them in the caller's event loop:

* ``<prefix>portwatch-stages``: the stage agent (open ports -> findings). Any
  number of workers; Kafka spreads the open-ports partitions over them.
* ``<prefix>portwatch-sink``: the sink agent (findings + host scans -> store).
  Its own consumer group, so that exactly one process (the store's owner when it
  is chdb) runs it while stage workers scale out beside it.

Two apps (two consumer groups) rather than one app with two agents: Kafka assigns
every topic of a group across all its members, so a stage-only worker in the
sink's group would be handed findings partitions it cannot store.

Faust settings, with the reason: ``store="memory://"`` (no tables); the web
server off (nothing to serve); ``producer_acks=-1`` (a finding is acknowledged by
all in-sync replicas before its open port is acked); earliest offset reset (a new
group starts at the beginning of what it has to process; the alerts group's first
start is moved to the changes topic's end before, by the CLI: ``start_group_at_end``);
commit interval and session timeout from ``PipelineOptions`` (a restarted worker takes
its partitions back after the session timeout, not Faust's 60 s default).

Must not touch: the stage logic, the store, Kafka topic creation (the CLI ensures
the topics exist before it starts an app).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from producers.targets import Scope
from schemas.records import ChangeEvent
from schemas.topics import TopicSet, topic_names
from stream_processors.change_hold import ChangeStage
from stream_processors.sink import StoreSink
from stream_processors.transports.faust_agents import (
    SinkAgentStats,
    Stage,
    StageStats,
    sink_agent,
    stage_agent,
)

log = logging.getLogger(__name__)

ROLES = ("all", "stages", "sink")
PUBLISH_ACK_SECONDS = 60.0  # a batch of change events the broker must acknowledge within


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """What the apps need; validated by the CLI's settings, passed narrowly here."""

    bootstrap: str = "127.0.0.1:9092"
    topics: TopicSet = topic_names("")
    stage_buffer: int = 200  # open-port messages taken per stage batch
    stage_within: float = 0.05  # seconds a stage batch waits to fill
    identify_concurrency: int = 64  # ports identified at once per worker
    sink_buffer: int = 500  # messages per store insert (each up to 500 records)
    sink_within: float = 1.0  # longest a finding waits before it is written
    commit_interval: float = 1.0  # seconds between offset commits
    session_timeout: float = 10.0  # seconds before a dead worker's partitions move

    def app_id(self, role: str) -> str:
        return f"{self.topics.prefix}portwatch-{role}"


def _broker_url(bootstrap: str) -> str:
    hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def make_app(options: PipelineOptions, role: str) -> faust.App:
    # Faust creates its data directory even with in-memory tables; its default is
    # "<app id>-data" in the working directory, which littered checkouts and would fail
    # in a container with a read-only working directory. Nothing in it outlives a run:
    # run_apps removes it when the apps stop.
    datadir = Path(tempfile.gettempdir()) / "portwatch-faust" / options.app_id(role)
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return faust.App(
        options.app_id(role),
        datadir=str(datadir),
        broker=_broker_url(options.bootstrap),
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        producer_acks=-1,
        producer_linger=0.005,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=options.commit_interval,
        broker_session_timeout=options.session_timeout,
        broker_heartbeat_interval=max(0.5, options.session_timeout / 4),
        topic_disable_leader=True,
    )


def raw_topic(app: faust.App, *names: str) -> Any:
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw")


def sender(topic: Any) -> Any:
    async def send(key: bytes | None, value: bytes) -> Any:
        return await topic.send(key=key, value=value)

    return send


def build_stages_app(options: PipelineOptions, stage: Stage,
                     stats: StageStats | None = None, *,
                     scope: Scope | None = None) -> tuple[faust.App, StageStats]:
    """The stages app: open ports in, findings (and dead letters) out; an open port
    outside ``scope`` is dead-lettered, never probed."""
    stats = stats or StageStats()
    app = make_app(options, "stages")
    source = raw_topic(app, options.topics.open_ports.name)
    findings = raw_topic(app, options.topics.findings.name)
    dead = raw_topic(app, options.topics.dead_letter.name)
    body = stage_agent(stage, sender(findings), sender(dead), buffer=options.stage_buffer,
                       within=options.stage_within,
                       concurrency=options.identify_concurrency, stats=stats, scope=scope)
    app.agent(source, name="portwatch.stages")(body)
    return app, stats


def build_sink_app(options: PipelineOptions, sink: StoreSink,
                   stats: SinkAgentStats | None = None, *,
                   changes: ChangeStage | None = None) -> tuple[faust.App, SinkAgentStats]:
    """The sink app: findings and host scans in, store rows (and dead letters) out; with
    ``changes``, the change events of every host scan out on the changes topic."""
    stats = stats or SinkAgentStats()
    app = make_app(options, "sink")
    # Stopping (or giving up partitions) does not wait for the messages taken but not
    # acknowledged: they are replayed by whoever takes the partitions next, and storing
    # them again changes nothing (every table merges on its key). Waiting, a buffer the
    # agent could not store (a fault of its own) held the stop for ever: SIGTERM left
    # the process running, and a stopped app's tasks kept the loop from closing.
    app.conf.stream_wait_empty = False
    t = options.topics
    source = raw_topic(app, t.findings.name, t.host_scans.name)
    dead = raw_topic(app, t.dead_letter.name)
    body = sink_agent(sink, sender(dead), findings_topic=t.findings.name,
                      host_scans_topic=t.host_scans.name, buffer=options.sink_buffer,
                      within=options.sink_within, stats=stats,
                      on_failure=lambda exc: mark_failed(app, exc))
    app.agent(source, name="portwatch.sink")(body)
    if changes is not None:
        _bind_changes(app, sink, changes, sender(raw_topic(app, t.changes.name)))
    return app, stats


def _bind_changes(app: faust.App, sink: StoreSink, changes: ChangeStage, send: Any) -> None:
    """The same change rule as the embedded runner, fed by the sink (change_hold.py says
    why host scans are held), its events published keyed by host address."""
    sink.changes = changes

    async def publish(events: list[ChangeEvent]) -> None:
        # every event acknowledged by the broker before the recorder moves the hosts'
        # states past their scans: a broker away fails the step, which is tried again
        # (ChangeStage.flush); a re-sent event has its id, which the alerts agent keys on
        acks = [await send(event.key.encode(), event.to_json()) for event in events]
        await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_ACK_SECONDS)

    changes.recorder.publish = publish

    async def release() -> None:
        await changes.flush()

    app.timer(1.0, name="portwatch.changes")(release)


STOP_SECONDS = 20.0  # every app's graceful stop, together (the chart grants the pod 60 s)


async def run_apps(apps: list[faust.App], stop: asyncio.Event) -> None:
    """Start the apps in this loop, run until ``stop`` is set or one crashes, stop them.

    Stopping is graceful: agents are cancelled, acknowledged offsets are committed,
    unacknowledged ones are replayed by whoever takes the partitions next.
    """
    started: list[faust.App] = []
    try:
        for app in apps:
            await app.start()
            started.append(app)
        crashed = [asyncio.ensure_future(_crash_of(app)) for app in apps]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *crashed],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in [stopper, *crashed]:
                f.cancel()
        for f in done:
            if f is not stopper and not f.cancelled() and f.result() is not None:
                raise RuntimeError(f"stream processor crashed: {f.result()!r}")
    finally:
        # Together, within one bound: with the broker gone each app's consumer waits out
        # its own timeouts (30 s each, one after the other, was 60 s: a pod's whole
        # termination grace period). Offsets not committed are replayed, as after a crash.
        stopping = [asyncio.ensure_future(app.stop()) for app in reversed(started)]
        if stopping:
            _, late = await asyncio.wait(stopping, timeout=STOP_SECONDS)
            for future in late:
                future.cancel()
            for future in stopping:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a failed stop is not logged as lost
        for app in apps:
            remove_empty_tree(Path(app.conf.datadir))


def remove_empty_tree(root: Path) -> None:
    """Remove ``root`` and the directories under it, if none holds a file: the skeleton
    Faust makes for in-memory tables (``v1/tables``), left by every stopped worker (each
    test and bench run names its apps anew). Anything that holds a file stays, as do
    directories another worker of the same app is using at that moment."""
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only empty directories: a file anywhere keeps its parents
    with contextlib.suppress(OSError):
        root.rmdir()


# Apps an agent of ours stopped on a fault (``mark_failed``): Faust restarts a crashed
# agent and never sets the app's ``crash_reason`` for it, so run_apps would not know.
_FAILED: weakref.WeakKeyDictionary[faust.App, BaseException] = weakref.WeakKeyDictionary()


def mark_failed(app: faust.App, exc: BaseException) -> None:
    """Say that ``app`` must stop on ``exc``: ``run_apps`` stops every app and raises."""
    _FAILED.setdefault(app, exc)


async def _crash_of(app: faust.App) -> BaseException | None:
    """Resolves with the exception that crashed ``app`` (mode sets ``crash_reason``; an
    agent of ours, ``mark_failed``)."""
    while True:
        reason = getattr(app, "crash_reason", None) or _FAILED.get(app)
        if reason is not None:
            return reason
        if app.should_stop:
            return RuntimeError(f"{app.conf.id} stopped by itself")
        await asyncio.sleep(0.5)


__all__ = ["ROLES", "PipelineOptions", "build_sink_app", "build_stages_app", "make_app",
           "mark_failed", "raw_topic", "remove_empty_tree", "run_apps", "sender"]
