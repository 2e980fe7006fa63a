"""The one call alerting and schedules make to scan: a thin adapter over the embedded scan.

Owns: ``prepare_scan`` (a schedule entry -> resolved targets and port ranges, bad input
as a PortwatchError with exit 2, before anything is sent) and ``run_embedded_scan``
(scan them into the store and return the stats and the change events of the scan).

Both build through the composition root (``portwatch.assembly``) and run the scan as
``portwatch scan`` does (``scan_cli.run_plan``); the change events are those the
embedded transport computed for the scan (``ScanStats.change_events``).

Must not touch: delivery, schedules, the alerts file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.bounded import is_digits
from schemas.records import ChangeEvent


@dataclass(frozen=True)
class PreparedScan:
    targets: list[Any]
    tcp_ports: tuple[Any, ...]
    udp_ports: tuple[Any, ...]
    settings: Any
    scope: Any = None  # the fence the targets were checked against (and the run keeps to)


class SignalledScanError(Exception):
    """A scan that raised after a signal asked it to stop: the watcher records the
    failure (``cause``) and stops, as for the signal between scans (it ran on before)."""

    def __init__(self, stop_signal: int, cause: Exception) -> None:
        super().__init__(str(cause))
        self.stop_signal = stop_signal
        self.cause = cause


@dataclass
class ScanOutcome:
    stats: Any
    events: list[ChangeEvent] = field(default_factory=list)

    @property
    def is_interrupted(self) -> bool:
        return bool(getattr(self.stats, "interrupted", False))

    @property
    def stop_signal(self) -> int:
        """The signal that asked the scan to stop (0: none), one that came after its last
        shard included: that scan completed, and the watcher must still stop."""
        return int(getattr(self.stats, "stop_signal", 0) or 0)

    @property
    def failed_shards(self) -> int:
        """Shards whose discovery failed: the run is incomplete (what they found kept)."""
        return int(getattr(self.stats, "failed_shards", 0) or 0)

    @property
    def scan_id(self) -> str:
        return str(getattr(self.stats, "scan_id", ""))


def _tcp_spec(ports: str) -> str:
    """``topN`` (nmap's N most often open TCP ports) -> an explicit spec; else unchanged."""
    lowered = ports.strip().lower()
    if lowered.startswith("top") and is_digits(lowered[3:]):
        from probers.nmapdata.services import top_ports

        return ",".join(str(p) for p in sorted(top_ports("tcp", int(lowered[3:]))))
    return ports


def prepare_scan(settings_overrides: dict[str, Any], *, targets: Sequence[str] = (),
                 inventory: str | None = None, organization: str = "", asset: str = "",
                 exclude: Sequence[str] = (), only_organization: str = "",
                 allow_large: bool = False) -> PreparedScan:
    """Validate and resolve a scan's input (raises PortwatchError, exit 2, when bad)."""
    from portwatch.assembly import Assembly
    from portwatch.console import fail
    from portwatch.settings import Settings, SettingsError
    from producers.targets import ALLOW_LARGE_HINT, TargetError

    overrides = dict(settings_overrides)
    if overrides.get("ports"):
        try:
            overrides["ports"] = _tcp_spec(str(overrides["ports"]))
        except Exception as exc:  # noqa: BLE001 - nmap data missing or unreadable
            fail(f"ports {overrides['ports']!r}: {exc}")
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        fail(str(exc))
    try:
        work = Assembly(settings).scan_input(list(targets), organization=organization,
                                             asset=asset, inventory=inventory,
                                             exclude=list(exclude),
                                             only_organization=only_organization,
                                             allow_large=allow_large)
    except TargetError as exc:
        # a schedule entry has no flags: its key says it (scan's flag named otherwise)
        fail(str(exc).replace(ALLOW_LARGE_HINT, "set allow_large: true on the entry if you "
                                                  "really mean it"))
    return PreparedScan(list(work.targets), work.tcp_ports, work.udp_ports, settings,
                        work.scope)


async def run_embedded_scan(store: Any, prepared: PreparedScan, *, quiet: bool = True,
                            ) -> ScanOutcome:
    """Run one embedded scan into ``store``; Ctrl-C stops it like ``scan`` (kept data)."""
    import random

    from portwatch.assembly import Assembly, ScanInput
    from portwatch.scan_cli import run_plan

    assembly = Assembly(prepared.settings)
    work = ScanInput(tuple(prepared.targets), tuple(prepared.tcp_ports),
                     tuple(prepared.udp_ports), prepared.scope)
    plan, start = assembly.scan_plan(work, default_seed=random.randrange(2**31))
    taken: list[int] = []
    try:
        stats = await run_plan(assembly, store, plan, start, quiet=quiet, scope=work.scope,
                               signals=taken, say_interrupts=True)
    except Exception as exc:
        if taken:
            raise SignalledScanError(taken[0], exc) from exc
        raise
    events = list(getattr(stats, "change_events", []) or [])
    return ScanOutcome(stats, events)
