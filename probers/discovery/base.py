"""Discovery engine interface: what every engine (connect, masscan, UDP) must be.

Owns: the ``DiscoveryEngine`` protocol, the progress counters engines update and
the errors they raise. An engine takes one ``Shard`` and yields ``OpenPort``
events as it finds them (streaming, so a killed or interrupted run keeps what it
already found). Engines never touch Kafka or storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from schemas.records import OpenPort, Shard


class DiscoveryError(RuntimeError):
    """The engine could not scan the shard (missing binary, no privilege, crash)."""


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
