"""A scan's live figures (``embedded.ScanStats``) print as counts, never as their lists:
``asyncio.run`` (CPython 3.11) builds the repr of its main task's result as it exits, and
the embedded scan returns these stats, so a repr that grew with the scan (one line per
change event) cost a first large scan seconds and tens of megabytes at its very end."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.records import ChangeEvent, ChangeKind, Proto, Severity, Target
from stream_processors.transports.embedded import ScanStats

TARGET = Target(ip="127.0.0.1", target="127.0.0.1")


def _events(count: int) -> list[ChangeEvent]:
    return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.LOW, target=TARGET,
                        scan_id="s2", previous_scan_id="s1", proto=Proto.TCP,
                        port=i % 65535 + 1, before="", after="http (green)",
                        risk_color="green", service="http",
                        observed_at=datetime(2026, 12, 3, tzinfo=UTC))
            for i in range(count)]


def test_the_repr_is_the_counts_whatever_the_size_of_the_scan() -> None:
    small = ScanStats(scan_id="s2", hosts=1, stored=3, change_events=_events(3),
                      errors=["127.0.0.1:1: refused"], tarpits=[])
    large = ScanStats(scan_id="s2", hosts=1, stored=3, change_events=_events(20_000),
                      errors=["127.0.0.1:1: refused"] * 500, tarpits=["127.0.0.2"] * 40)
    assert repr(small) == ("ScanStats(scan_id='s2', hosts=1, stored=3, identified=0, "
                           "interrupted=False, errors=1, tarpits=0, change_events=3)")
    assert repr(large).endswith("errors=500, tarpits=40, change_events=20000)")
    assert len(repr(large)) < 200
