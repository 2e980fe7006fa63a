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

from producers.publish import Poison, decode_records
from schemas.records import ChangeEvent
from stream_processors.transports.faust_agents import Send, dead_letters

log = logging.getLogger(__name__)
QUEUE_RETRY_SECONDS = 10.0  # between tries of a batch the store refused

class Dispatcher(Protocol):
    def submit(self, events: Iterable[ChangeEvent]) -> int: ...

    def deliver_due(self, *, flush: bool = False) -> Any: ...

    def store_answers(self) -> bool: ...


# A batch the store refuses this often while it answers a plain query holds an event it
# will never take (not an outage): the batch is split to find it, and it is dead-lettered.
POISON_TRIES = 6


@dataclass
class AlertAgentStats:
    events: int = 0
    queued: int = 0
    dead_letters: int = 0
    delivery_passes: int = 0


Refused = list[tuple[ChangeEvent, str]]  # events the store refused alone, and why


async def _queue(dispatcher: Dispatcher, events: list[ChangeEvent], retry_seconds: float,
                 poison_tries: int = POISON_TRIES) -> tuple[int, Refused]:
    """``dispatcher.submit`` (in a thread: the store client blocks) until the outbox takes
    the events: while the store refuses them the batch is not acknowledged, so the
    stream waits (said once a try), and nothing is lost. When the store answers a plain
    query yet refuses the batch ``poison_tries`` times, the batch is split until the
    events it never takes are alone; those are returned (the caller dead-letters them),
    the rest queued. (Queued deliveries, refused events.)"""
    tries = 0
    while True:
        try:
            return await asyncio.to_thread(dispatcher.submit, events), []
        except Exception as exc:  # noqa: BLE001 - AlertQueueError: the store failed
            tries += 1
            if tries >= poison_tries and await asyncio.to_thread(dispatcher.store_answers):
                if len(events) == 1:
                    return 0, [(events[0], str(exc))]
                # each half at once: the store answered, so a half it refuses holds one
                # (an outage meanwhile makes it wait again, as above)
                half = len(events) // 2
                low = await _queue(dispatcher, events[:half], retry_seconds, 1)
                high = await _queue(dispatcher, events[half:], retry_seconds, 1)
                return low[0] + high[0], low[1] + high[1]
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
            origin: dict[int, Any] = {}  # id of a decoded event -> its message
            pending: list[Awaitable[Any]] = []
            for event in batch:
                records, poison = decode_records(ChangeEvent, event.value)
                events += records
                origin.update((id(r), event) for r in records)
                counters.dead_letters += len(poison)
                pending += await dead_letters(send_dead, "alerts", event, poison)
            counters.events += len(events)
            if events:
                queued, refused = await _queue(dispatcher, events, retry_seconds)
                counters.queued += queued
                for record, reason in refused:
                    counters.dead_letters += 1
                    pending += await dead_letters(
                        send_dead, "alerts", origin[id(record)],
                        [Poison(0, f"the store refuses to queue it: {reason}"[:500],
                                record.to_json())])
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
