"""Faust agent bodies: the stage functions and the store sink bound to Kafka streams.

Owns: what each agent does with a stream of framed messages (see
``producers.publish``: one or more records of one key per message):

* the **stage agent** (open ports -> findings): decodes ``OpenPort`` records, runs
  the very per-port rule the embedded transport runs (``stages.identify_port``:
  identify, TLS, CDN, risk, its failure rule and tarpit noise), publishes the findings keyed
  by host, and only then acknowledges the source messages (at-least-once);
* the **sink agent** (findings + host scans -> store): buffers messages by count
  and by time (``noack_take``), writes them through ``StoreSink`` and acknowledges
  them only once stored;
* poison handling for both: an undecodable record goes to the dead-letter topic
  with its reason and origin, and the stream goes on.

Acknowledgement rule, the reason for ``noack_take`` rather than ``take``: Faust's
``take`` acks a buffer when the agent asks for the next one, including when the
agent is being cancelled mid-write; here a message is acked only after its effect
(a published finding, a stored row) is acknowledged itself.

Must not touch: Faust app construction (``faust_app``), the store's
SQL, the network (beyond what the stage functions do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from producers.publish import Poison, dead_letter, decode_records, frame_by_key
from producers.targets import Scope
from schemas.records import Finding, HostScan, OpenPort
from stream_processors.sink import SinkStopped, StoreSink
from stream_processors.stages import StageContext, identify_port

log = logging.getLogger(__name__)

Stage = Callable[[OpenPort], Awaitable[Finding | None]]
"""One open port -> its finding, or None when the finding is not kept (tarpit noise)."""

# (key, value) -> a future resolved when the broker acknowledged the message.
Send = Callable[[bytes | None, bytes], Awaitable[Awaitable[Any]]]
Agent = Callable[[Any], Awaitable[None]]


def make_stage(ctx: StageContext) -> Stage:
    """The per-port rule both transports share (``stages.identify_port``), bound to a
    context."""

    async def stage(port: OpenPort) -> Finding | None:
        return await identify_port(port, ctx)

    return stage


@dataclass
class StageStats:
    messages: int = 0
    ports: int = 0
    findings: int = 0
    dropped: int = 0  # tarpit candidates without a named service
    poison: int = 0  # undecodable records, and open ports outside the scope
    out_of_scope: int = 0  # open ports outside this worker's scope: never probed
    busy_seconds: float = 0.0


@dataclass
class SinkAgentStats:
    messages: int = 0
    poison: int = 0
    failure: str = ""  # the fault that stopped the agent ("": none)


def _origin(event: Any) -> tuple[str, int, int]:
    message = event.message
    return str(message.topic), int(message.partition), int(message.offset)


async def dead_letters(send_dead: Send, stage_name: str, event: Any,
                        poison: Sequence[Poison]) -> list[Awaitable[Any]]:
    topic, partition, offset = _origin(event)
    futures = []
    for p in poison:
        log.warning("dead letter from %s[%d]@%d line %d: %s", topic, partition, offset,
                    p.line, p.reason)
        envelope = dead_letter(topic, partition, offset, p.reason, p.raw,
                               stage=stage_name, line=p.line)
        futures.append(await send_dead(None, envelope))
    return futures


async def run_stage(events: Sequence[Any], stage: Stage, concurrency: int,
                    send_findings: Send, send_dead: Send, stats: StageStats,
                    scope: Scope | None = None) -> None:
    """Process one buffer of open-port messages; returns once every finding and dead
    letter it produced is acknowledged by the broker (raises if one is not). An open
    port outside ``scope`` (this worker's allow-list and exclusions) is never connected
    to: it is dead-lettered, as the discovery worker does with such a shard (whoever can
    write to the topic must not be able to aim the probes)."""
    started = time.perf_counter()
    pending: list[Awaitable[Any]] = []
    ports: list[OpenPort] = []
    for event in events:
        records, poison = decode_records(OpenPort, event.value)
        if scope is not None:
            refused = [p for p in records if not scope.permits(p.target.ip)]
            if refused:
                stats.out_of_scope += len(refused)
                records = [p for p in records if scope.permits(p.target.ip)]
                poison += [Poison(0, f"open port {p.target.ip} {p.port}/{p.proto.value} is "
                                  "outside this worker's scope (PORTWATCH_SCOPE_ALLOW, "
                                  "exclusions): not probed", p.to_json())
                           for p in refused]
        ports.extend(records)
        stats.poison += len(poison)
        pending += await dead_letters(send_dead, "process", event, poison)

    # A pool of workers over the buffer, not a task per port: a task costs more than
    # identifying a port whose answer discovery already holds (UDP, tarpit checks).
    results: list[Finding | None] = [None] * len(ports)
    cursor = iter(range(len(ports)))

    async def worker() -> None:  # ``concurrency`` workers: at most that many in flight
        for i in cursor:
            results[i] = await stage(ports[i])

    await asyncio.gather(*(worker() for _ in range(min(len(ports), max(1, concurrency)))))
    findings = [f for f in results if f is not None]
    oversized: list[bytes] = []
    for key, value, _count in frame_by_key(findings, oversized=oversized):
        pending.append(await send_findings(key, value))
    if oversized:  # a broker would refuse them, and the agent would crash on it
        stats.poison += len(oversized)
        pending += await dead_letters(send_dead, "process", events[0], [
            Poison(0, f"finding of {len(line):,} bytes exceeds the message limit", line)
            for line in oversized])
    if pending:
        await asyncio.gather(*pending)
    stats.messages += len(events)
    stats.ports += len(ports)
    stats.findings += len(findings)
    stats.dropped += len(ports) - len(findings)
    stats.busy_seconds += time.perf_counter() - started


def stage_agent(stage: Stage, send_findings: Send, send_dead: Send, *, buffer: int,
                within: float, concurrency: int, stats: StageStats,
                scope: Scope | None = None) -> Agent:
    """The stage agent: buffers of up to ``buffer`` messages (or what arrived within
    ``within`` seconds), ``concurrency`` ports identified at once, none outside
    ``scope``."""

    async def agent(stream: Any) -> None:
        async for events in stream.noack_take(buffer, within=within):
            await run_stage(events, stage, concurrency, send_findings, send_dead, stats,
                            scope)
            for event in events:
                await stream.ack(event)

    return agent


def split_sink_batch(events: Sequence[Any], findings_topic: str, host_scans_topic: str,
                     ) -> tuple[list[Finding], list[HostScan], list[tuple[Any, list[Poison]]]]:
    """Decode a sink buffer: findings, host scans, and the poison per event."""
    findings: list[Finding] = []
    scans: list[HostScan] = []
    poison: list[tuple[Any, list[Poison]]] = []
    for event in events:
        topic = str(event.message.topic)
        if topic == findings_topic:
            f, bad = decode_records(Finding, event.value)
            findings += f
        elif topic == host_scans_topic:
            h, bad = decode_records(HostScan, event.value)
            scans += h
        else:
            bad = [Poison(0, f"unexpected topic {topic}", b"")]
        if bad:
            poison.append((event, bad))
    return findings, scans, poison


async def dead_letter_rejected(send_dead: Send, sink: StoreSink, findings_topic: str,
                               host_scans_topic: str) -> list[Awaitable[Any]]:
    """Dead letters for the records the store refused (issue 11, defect 1); their
    partition and offset are unknown once batched (-1), the record itself is kept."""
    futures = []
    for record, reason in sink.take_rejected():
        topic = host_scans_topic if isinstance(record, HostScan) else findings_topic
        log.warning("dead letter from the store: %s", reason)
        envelope = dead_letter(topic, -1, -1, reason, record.to_json(), stage="sink-store")
        futures.append(await send_dead(None, envelope))
    return futures


def sink_agent(sink: StoreSink, send_dead: Send, *, findings_topic: str, host_scans_topic: str,
               buffer: int, within: float, stats: SinkAgentStats,
               on_failure: Callable[[BaseException], None] | None = None) -> Agent:
    """The sink agent over the findings and host-scans topics: stores a buffer, then
    acknowledges it. Stopped mid-write, or failing on a fault of its own: nothing of the
    buffer is acknowledged; a fault is handed to ``on_failure`` (the app stops with it)."""

    async def agent(stream: Any) -> None:
        async for events in stream.noack_take(buffer, within=within):
            findings, scans, poison = split_sink_batch(events, findings_topic,
                                                       host_scans_topic)
            try:
                await sink.write(findings, scans)
            except SinkStopped as exc:
                # nothing of the buffer is acknowledged, nor dead-lettered: its replay
                # sends its poison once (before, here and again on the replay)
                log.warning("%s; %d messages will be replayed", exc, len(events))
                return
            except Exception as exc:  # noqa: BLE001 - a fault of ours, not of the data
                # Neither a data error (bisected and dead-lettered) nor the store's
                # (retried): a bug. Let through, Faust restarted the agent and acknowledged
                # later messages of the same partitions past this buffer, whose valid
                # records were never stored (a review). Nothing of it is acknowledged; the
                # process stops with the fault, and whoever takes the partitions next
                # reads the buffer again.
                stats.failure = f"{type(exc).__name__}: {exc}"[:300]
                log.error("sink: a buffer of %d messages could not be stored (%s); "
                          "stopping, nothing of it acknowledged", len(events), stats.failure)
                if on_failure is None:
                    return
                on_failure(exc)
                # Parked, not returned: the app's stop (run_apps, told by on_failure)
                # cancels it here as it would cancel a write (an agent that returned
                # mid-stream left Faust's stop waiting on its stream for ever)
                await asyncio.Event().wait()
            pending: list[Awaitable[Any]] = []
            for event, bad in poison:
                stats.poison += len(bad)
                pending += await dead_letters(send_dead, "sink", event, bad)
            # Records the store refused for their data: dead-lettered, the batch goes on.
            pending += await dead_letter_rejected(send_dead, sink, findings_topic,
                                                  host_scans_topic)
            if pending:
                await asyncio.gather(*pending)
            for event in events:
                await stream.ack(event)
            stats.messages += len(events)

    return agent


__all__ = [
    "SinkAgentStats",
    "Stage",
    "StageStats",
    "make_stage",
    "run_stage",
    "sink_agent",
    "dead_letter_rejected",
    "split_sink_batch",
    "stage_agent",
]
