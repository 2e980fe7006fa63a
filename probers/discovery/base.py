"""Discovery engine interface: what every engine (connect, masscan, UDP) must be.

Owns: the ``DiscoveryEngine`` protocol, the progress counters engines update and
the errors they raise, and ``stream_work``: the one shape of every engine's
``scan`` (a worker emits, the consumer's generator yields). An engine takes one
``Shard`` and yields ``OpenPort`` events as it finds them (streaming, so a killed or
interrupted run keeps what it already found). Engines never touch Kafka or storage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from schemas.records import OpenPort, Shard


class DiscoveryError(RuntimeError):
    """The engine could not scan the shard (missing binary, no privilege, crash)."""


class ShardDeadline(DiscoveryError):
    """The shard's deadline passed before every probe was sent: what was found is kept,
    the rest is untested. Not retried: a new attempt has no more time than this one
    (and a discover worker's deadline is what keeps it inside Kafka's poll interval)."""


class EngineUnavailable(DiscoveryError):
    """The engine cannot run here; the caller falls back and says why in one line."""


@dataclass(slots=True)
class Progress:
    """Counters an engine updates while it runs; the runner renders them.

    Plain ints updated from one thread and read from another: a torn read only
    makes the progress bar one tick stale, which is fine.
    """

    probes_total: int = 0
    probes_done: int = 0
    open_found: int = 0
    retries: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    def add_total(self, n: int) -> None:
        self.probes_total += n


@runtime_checkable
class DiscoveryEngine(Protocol):
    """A discovery engine. ``scan`` is an async generator of open ports.

    Contract:
    - bounded in time: it must stop by itself (deadline per shard);
    - streaming: yield each open port as soon as it is known;
    - cancellable: on cancellation, release sockets/processes and return;
    - honest: raise ``DiscoveryError`` rather than return a silent gap.
    """

    name: str

    def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]: ...


T = TypeVar("T")

_END = object()
HANDOFF_SIZE = 4096  # results emitted but not yet consumed before ``emit`` waits


class Emit(Generic[T]):
    """Hands an engine's results to its consumer (see ``stream_work``).

    ``await emit(x)`` waits while ``HANDOFF_SIZE`` results are unconsumed (back-
    pressure); ``emit.nowait(x)`` is for synchronous callbacks (an event loop reader)
    whose engine bounds its own output.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.drained = asyncio.Event()
        self.drained.set()

    async def __call__(self, item: T) -> None:
        self.queue.put_nowait(item)
        while self.queue.qsize() >= HANDOFF_SIZE:
            self.drained.clear()
            await self.drained.wait()

    def nowait(self, item: T) -> None:
        self.queue.put_nowait(item)

    async def take(self) -> object:
        item = await self.queue.get()
        if self.queue.qsize() < HANDOFF_SIZE:
            self.drained.set()
        return item


async def stream_work(work: Callable[[Emit[T]], Awaitable[None]], *,
                      what: str) -> AsyncGenerator[T, None]:
    """Run ``work(emit)`` as a task and yield each result it emits, as it emits it.

    Every engine's ``scan`` is this: its worker (a sweep thread's pump, masscan runs
    and their confirm pass, UDP rounds) emits; the consumer iterates. The rules, once:

    - streaming: a result is yielded as soon as it is emitted; ``emit`` waits while
      ``HANDOFF_SIZE`` results are unconsumed, so a slow consumer slows the worker;
    - nothing found is lost: when the work fails, its error is raised only after
      every result it emitted was yielded, as ``DiscoveryError`` (any other
      exception is wrapped, naming ``what``);
    - cancellable: when the consumer stops early (``aclose``, cancellation, Ctrl-C)
      the work is cancelled and awaited, so it releases its sockets and processes.
    """
    emit: Emit[T] = Emit()
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            await work(emit)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer after the drain
            failure.append(exc)
        emit.nowait(_END)  # type: ignore[arg-type]

    task = asyncio.create_task(run())
    try:
        while True:
            item = await emit.take()
            if item is _END:
                break
            yield item  # type: ignore[misc]
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if failure:
        exc = failure[0]
        if isinstance(exc, DiscoveryError):
            raise exc
        raise DiscoveryError(f"{what} failed: {exc!r}") from exc
