"""The alerts app of the distributed shape: change events from Kafka to the dispatcher.

Owns: building ``<prefix>portwatch-alerts`` (its own consumer group on the changes
topic), the agent that decodes ``ChangeEvent`` records in batches and hands them to the
dispatcher's ``submit``, a timer that runs the dispatcher's ``deliver_due`` (digest
windows close and retries fall due without new events) and dead-lettering of records
that do not decode.

One delivery per (rule, channel, event) with several workers, replays and rebalances is
the dispatcher's outbox key and claims, not Kafka's partitioning: this agent may see an
event twice, and that is fine.

Must not touch: delivery or rule logic (the dispatcher, passed in: ``portwatch.alerts``
sits above this package), the store beyond what the dispatcher does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import faust

from producers.publish import decode_records
from schemas.records import ChangeEvent
from stream_processors.transports.faust_agents import Send, dead_letters

log = logging.getLogger(__name__)
QUEUE_RETRY_SECONDS = 10.0  # between tries of a batch the store refused

class Dispatcher(Protocol):
    def submit(self, events: Iterable[ChangeEvent]) -> int: ...

    def deliver_due(self, *, flush: bool = False) -> Any: ...


@dataclass
class AlertAgentStats:
    events: int = 0
    queued: int = 0
    dead_letters: int = 0
    delivery_passes: int = 0


async def _queue(dispatcher: Dispatcher, events: list[ChangeEvent],
                 retry_seconds: float) -> int:
    """``dispatcher.submit`` (in a thread: the store client blocks) until the outbox takes
    the events: while the store refuses them the batch is not acknowledged, so the
    stream waits (said once a try), and nothing is lost."""
    while True:
        try:
            return await asyncio.to_thread(dispatcher.submit, events)
        except Exception as exc:  # noqa: BLE001 - AlertQueueError: the store failed
            log.error("%s; trying again in %gs (not acknowledged)", exc, retry_seconds)
            await asyncio.sleep(retry_seconds)


def alert_agent(dispatcher: Dispatcher, send_dead: Send, *, buffer: int = 200,
                within: float = 1.0, stats: AlertAgentStats | None = None,
                retry_seconds: float = QUEUE_RETRY_SECONDS,
                ) -> Callable[[Any], Awaitable[None]]:
    """The agent body: buffers of framed change-event messages -> ``dispatcher.submit``,
    acknowledged only once queued in the outbox (at-least-once; a replay is harmless; a
    store that refuses them holds the stream, ``_queue``), then one delivery pass so that
    a digest of 0 goes out at once."""
    counters = stats if stats is not None else AlertAgentStats()

    async def agent(stream: Any) -> None:
        async for batch in stream.noack_take(buffer, within=within):
            events: list[ChangeEvent] = []
            pending: list[Awaitable[Any]] = []
            for event in batch:
                records, poison = decode_records(ChangeEvent, event.value)
                events += records
                counters.dead_letters += len(poison)
                pending += await dead_letters(send_dead, "alerts", event, poison)
            counters.events += len(events)
            if events:
                counters.queued += await _queue(dispatcher, events, retry_seconds)
            if pending:
                await asyncio.gather(*pending)
            for event in batch:
                await stream.ack(event)
            if events:
                await asyncio.to_thread(dispatcher.deliver_due)
                counters.delivery_passes += 1

    return agent


def build_alerts_app(options: Any, dispatcher: Dispatcher, *,
                     delivery_interval: float = 5.0, stats: AlertAgentStats | None = None,
                     group_suffix: str = "") -> tuple[faust.App, AlertAgentStats]:
    """The alerts app (``options`` is ``faust_app.PipelineOptions``): changes in, alerts out.

    ``group_suffix`` names a separate consumer group (tests use it to make two workers
    both see every event: the worst case for duplicates).
    """
    from stream_processors.transports.faust_app import make_app, raw_topic, sender

    counters = stats if stats is not None else AlertAgentStats()
    app = make_app(options, "alerts" + group_suffix)
    source = raw_topic(app, options.topics.changes.name)
    dead = raw_topic(app, options.topics.dead_letter.name)
    body = alert_agent(dispatcher, sender(dead), stats=counters)
    app.agent(source, name="portwatch.alerts")(body)

    async def deliver() -> None:
        await asyncio.to_thread(dispatcher.deliver_due)
        counters.delivery_passes += 1

    app.timer(interval=delivery_interval, name="portwatch.alerts.deliver")(deliver)
    return app, counters


__all__ = ["AlertAgentStats", "alert_agent", "build_alerts_app"]
