"""Accepted risks across real rescans: SSH-style banner listeners on loopback swapped
between scans of the real embedded runner into a real chdb store. A scan that names the
port otherwise ends its acceptance in the store, alerting or not; a scan that cannot
name it judges nothing; every view (List, Summary, `accept --list`, the alert check)
says the same."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import accepted as acc
from schemas.records import (
    ChangeKind,
    Finding,
    HostScan,
    OpenPort,
    RiskColor,
    ServiceInfo,
    Target,
)
from stream_processors.transports.embedded import ScanStats
from tests import loopback
from tests.integration.test_alert_delivery import event, hook_config
from tests.integration.test_change_history import LOCAL, _scan


def _ssh(port: int, greeting: bytes) -> contextlib.AbstractContextManager[loopback.Listener]:
    return loopback.listen(loopback.banner(greeting + b"\r\n"), port=port)


def _scanned(store: Any, port: int, greeting: bytes, target: Target = LOCAL) -> ScanStats:
    """A completed scan of ``port`` while it greets with ``greeting``."""
    with _ssh(port, greeting):
        return _scan(store, target, [port])


def _accept(store: Any, port: int, note: str, target: str = "127.0.0.1") -> None:
    acc.accept(store, target, "tcp", port, note=note, by="alice", until=None,
               now=datetime.now(UTC))


def _views(store: Any, port: int, target: Target = LOCAL) -> tuple[int, int, bool]:
    """(List's is_accepted, Summary's accepted count, in `accept --list`) of the port."""
    [row] = [r for r in store.report("list", {}).dicts() if r["port"] == port]
    [host] = [r for r in store.report("summary", {}).dicts()
              if r["target"] == target.target]
    listed = any(r.port == port for r in acc.list_active(store, datetime.now(UTC)))
    return row["is_accepted"], host["accepted"], listed


def _alerted(store: Any, events: list[Any], kind: ChangeKind) -> bool:
    """Would the dispatcher alert the scan's ``kind`` event (not an accepted risk)?"""
    [event] = [e for e in events if e.kind is kind]
    return not acc.ActiveAcceptances.load(store, time.time()).covers(event)


def test_a_version_change_ends_the_acceptance_so_a_rollback_alerts(store: Any) -> None:
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    _accept(store, port, "jump host")
    assert _views(store, port) == (1, 1, True)
    # When a scan finds another version, with no alerting configured
    second = _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1")
    assert {(e.kind, e.before, e.after) for e in second.change_events} == {
        (ChangeKind.VERSION_CHANGED, "8.9p1", "9.0p1")}
    # Then the acceptance has ended in the store, everywhere, and its row is merged away
    # (the recorder's screen counted it on every later comparison: a review)
    assert _views(store, port) == (0, 0, False)
    assert store.query("SELECT count() FROM accepted_risks WHERE is_removed = 0")[0][0] == 0
    # And the version accepted coming back does not bring it back: its change alerts
    third = _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    assert _views(store, port) == (0, 0, False)
    assert _alerted(store, third.change_events, ChangeKind.VERSION_CHANGED)


def test_a_scan_that_cannot_name_the_port_judges_nothing_and_every_view_agrees(
        store: Any) -> None:
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-dropbear_2020.81")
    _accept(store, port, "jump host")
    # When the port answers junk no probe can name
    with loopback.listen(loopback.banner(b"\x00\x07\xff\xfeqq\r\n"), port=port):
        junk = _scan(store, LOCAL, [port])
    assert ChangeKind.SERVICE_CHANGED in {e.kind for e in junk.change_events}
    # Then the acceptance holds in the List, the Summary, `accept --list` and alerting
    # alike (the List once said not accepted while its alerts were held back)
    assert _views(store, port) == (1, 1, True)
    assert not _alerted(store, junk.change_events, ChangeKind.SERVICE_CHANGED)
    # And named as it was accepted, it still holds; named otherwise, it ends
    _scanned(store, port, b"SSH-2.0-dropbear_2020.81")
    assert _views(store, port) == (1, 1, True)
    _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1")
    assert _views(store, port) == (0, 0, False)


def test_an_acceptance_made_before_the_port_was_seen_ends_at_its_first_change(
        store: Any) -> None:
    port = loopback.free_port()
    with _ssh(port, b"SSH-2.0-OpenSSH_8.9p1"):
        _scan(store, LOCAL, [loopback.free_port()])  # another port: this one unseen yet
        acc.accept(store, "127.0.0.1", "tcp", port, note="pre-accepted", by="alice",
                   until=None, now=datetime.now(UTC))
        _scan(store, LOCAL, [port])
    # Then it covers the port as first named, and notes that name
    assert _views(store, port) == (1, 1, True)
    [risk] = acc.list_active(store, datetime.now(UTC))
    assert (risk.service, risk.product, risk.version, risk.note) == (
        "ssh", "OpenSSH", "8.9p1", "pre-accepted")
    # When a scan cannot name it, then one names it otherwise / Then it ends (it never
    # did: nothing was noted; and the unnamed scan in between hid the change: a review)
    with loopback.listen(loopback.banner(b"\x00\x07\xff\xfeqq\r\n"), port=port):
        _scan(store, LOCAL, [port])
    assert _views(store, port) == (1, 1, True)
    _scanned(store, port, b"SSH-2.0-dropbear_2020.81")
    assert _views(store, port) == (0, 0, False)


def _interrupted_sighting(store: Any, port: int, version: str) -> None:
    """The rows a scan stopped before its end leaves: the port's finding (not named when
    ``version`` is empty), and a host scan that did not complete (the runner cannot be
    stopped at that point on cue)."""
    when = datetime.now(UTC)
    named = ServiceInfo(service="ssh", product="OpenSSH", version=version) if version \
        else ServiceInfo(method="unidentified", extra_info="interrupted")
    store.insert_findings([Finding(
        port=OpenPort(scan_id="cut", target=LOCAL, port=port, observed_at=when),
        service=named, risk_color=RiskColor.GREEN)])
    store.insert_host_scans([HostScan("cut", LOCAL, when, when, 10, 1, status="interrupted")])


def test_an_interrupted_scan_ends_nothing_whatever_judges_it(store: Any,
                                                            tmp_path: Path) -> None:
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    _accept(store, port, "jump host")
    # Given an interrupted scan that saw another version
    _interrupted_sighting(store, port, "9.0p1")
    # Then the port shows as not accepted meanwhile, in every view, and its events alert
    assert _views(store, port) == (0, 0, False)
    # When the alerting path queues an event of the host (it once ended the acceptance
    # on such rows: a review) and a completed scan finds the version accepted again
    from portwatch.alerts.dispatcher import AlertDispatcher

    config = hook_config(tmp_path, "http://127.0.0.1:9/hook", when="{}")
    assert AlertDispatcher(store, config).submit([event(port + 1, scan_id="other")]) == 1
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    # Then the acceptance holds: only a completed scan judges
    assert _views(store, port) == (1, 1, True)


def test_a_completed_scan_naming_the_port_otherwise_ends_it_though_nothing_changed(
        store: Any) -> None:
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    # Given an acceptance made while an interrupted scan's 9.0p1 was the port's latest row
    _interrupted_sighting(store, port, "9.0p1")
    _accept(store, port, "9.0 is fine")
    assert _views(store, port) == (1, 1, True)
    # When a completed scan names 8.9p1, as the change state already had it (no event)
    quiet = _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    assert quiet.change_events == []
    # Then the acceptance of 9.0p1 has ended, and 9.0p1 coming back alerts (it was
    # judged only where the change state moved: a review)
    assert _views(store, port) == (0, 0, False)
    back = _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1")
    assert _alerted(store, back.change_events, ChangeKind.VERSION_CHANGED)


def test_alerting_judges_an_acceptance_on_the_row_its_event_is_about(store: Any) -> None:
    named = Target(ip="127.0.0.1", target="localhost", organization="Example")
    port = loopback.free_port()
    # Given the port named 9.0p1 under `localhost` and 8.9p1 under 127.0.0.1, and the
    # address's 8.9p1 accepted
    _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1", named)
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    _accept(store, port, "by address")
    rows = {r["target"]: r["is_accepted"] for r in store.report("list", {}).dicts()
            if r["port"] == port}
    assert rows == {"localhost": 0, "127.0.0.1": 1}
    # When the port closes, seen under each spelling
    localhost_closed = _scan(store, named, [port])
    address_closed = _scan(store, LOCAL, [port])
    # Then alerting agrees with the List, row by row (the localhost row's event was held
    # back as accepted: a review)
    assert _alerted(store, localhost_closed.change_events, ChangeKind.CLOSED)
    assert not _alerted(store, address_closed.change_events, ChangeKind.CLOSED)


def test_an_acceptance_notes_the_name_in_any_case_and_past_an_unnamed_row(
        store: Any) -> None:
    # Given a target written with capitals (an inventory's `LocalHost`) and a port on it
    # whose latest row an interrupted scan left unnamed
    port, other = loopback.free_port(), loopback.free_port()
    capitals = Target(ip="127.0.0.1", target="LocalHost", organization="Example")
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1", capitals)
    _scanned(store, other, b"SSH-2.0-OpenSSH_8.9p1")
    _interrupted_sighting(store, other, "")
    # When both are accepted (as `portwatch accept` writes them: in lower case)
    named = acc.accept(store, "localhost", "tcp", port, note="n", by="alice", until=None,
                       now=datetime.now(UTC))
    unnamed = acc.accept(store, "127.0.0.1", "tcp", other, note="n", by="alice",
                         until=None, now=datetime.now(UTC))
    # Then each notes the name its last completed scan gave (nothing was noted, so the
    # next version was taken as the accepted one, unalerted: a review)
    assert (named.product, named.version) == ("OpenSSH", "8.9p1")
    assert (unnamed.product, unnamed.version) == ("OpenSSH", "8.9p1")
    # And another version ends the first and alerts
    second = _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1", capitals)
    assert _alerted(store, second.change_events, ChangeKind.VERSION_CHANGED)
    assert _views(store, port, capitals) == (0, 0, False)


def test_a_port_closed_since_its_last_name_is_accepted_under_that_name(store: Any) -> None:
    # Given a port named 8.9p1, closed by a completed scan, then seen again unnamed by
    # an interrupted one
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    _scan(store, LOCAL, [port])  # nothing listens: closed
    _interrupted_sighting(store, port, "")
    # When it is accepted / Then its last name is noted (nothing was: a review), so the
    # next version ends it and alerts
    risk = acc.accept(store, "127.0.0.1", "tcp", port, note="n", by="alice", until=None,
                      now=datetime.now(UTC))
    assert (risk.product, risk.version) == ("OpenSSH", "8.9p1")
    back = _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1")
    assert _alerted(store, back.change_events, ChangeKind.VERSION_CHANGED)


def test_a_refused_merge_costs_speed_not_the_scan(store: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Given an acceptance, and an engine that refuses to merge its table (merges
    # stopped: OPTIMIZE is cancelled, as on a server without the right to run it)
    port = loopback.free_port()
    _scanned(store, port, b"SSH-2.0-OpenSSH_8.9p1")
    _accept(store, port, "jump host")
    store.command("SYSTEM STOP MERGES accepted_risks")
    try:
        # When a scan names the port otherwise
        with caplog.at_level(logging.WARNING, "stream_processors.acceptances"):
            second = _scanned(store, port, b"SSH-2.0-OpenSSH_9.0p1")
        # Then the scan stores its change and ends the acceptance (it failed before its
        # changes were stored: a review), and one warning says the merge was refused
        assert [e.kind for e in second.change_events] == [ChangeKind.VERSION_CHANGED]
        assert _views(store, port) == (0, 0, False)
        assert [r.message.split(":")[0] for r in caplog.records] == [
            "could not merge accepted_risks (acceptances stay correct; comparing scans "
            "reads them until a merge)"]
        # And a removal still succeeds
        _accept(store, port, "again")
        assert acc.remove(store, "127.0.0.1", "tcp", port, datetime.now(UTC))
        assert acc.list_active(store, datetime.now(UTC)) == []
    finally:
        store.command("SYSTEM START MERGES accepted_risks")
