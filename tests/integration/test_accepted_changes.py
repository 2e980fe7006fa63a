"""Accepted risks across real rescans: SSH-style banner listeners on loopback swapped
between scans of the real embedded runner into a real chdb store. A scan that names the
port otherwise ends its acceptance in the store, alerting or not; a scan that cannot
name it judges nothing; every view (List, Summary, `accept --list`, the alert check)
says the same."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from portwatch.alerts import accepted as acc
from schemas.records import ChangeKind, Target
from tests import loopback
from tests.integration.test_change_history import LOCAL, _scan


def _ssh(port: int, greeting: bytes) -> contextlib.AbstractContextManager[loopback.Listener]:
    return loopback.listen(loopback.banner(greeting + b"\r\n"), port=port)


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
    with _ssh(port, b"SSH-2.0-OpenSSH_8.9p1"):
        _scan(store, LOCAL, [port])
    acc.accept(store, "127.0.0.1", "tcp", port, note="jump host", by="alice", until=None,
               now=datetime.now(UTC))
    assert _views(store, port) == (1, 1, True)
    # When a scan finds another version, with no alerting configured
    with _ssh(port, b"SSH-2.0-OpenSSH_9.0p1"):
        second = _scan(store, LOCAL, [port])
    assert {(e.kind, e.before, e.after) for e in second.change_events} == {
        (ChangeKind.VERSION_CHANGED, "8.9p1", "9.0p1")}
    # Then the acceptance has ended in the store, everywhere
    assert _views(store, port) == (0, 0, False)
    # And the version accepted coming back does not bring it back: its change alerts
    with _ssh(port, b"SSH-2.0-OpenSSH_8.9p1"):
        third = _scan(store, LOCAL, [port])
    assert _views(store, port) == (0, 0, False)
    assert _alerted(store, third.change_events, ChangeKind.VERSION_CHANGED)


def test_a_scan_that_cannot_name_the_port_judges_nothing_and_every_view_agrees(
        store: Any) -> None:
    port = loopback.free_port()
    with _ssh(port, b"SSH-2.0-dropbear_2020.81"):
        _scan(store, LOCAL, [port])
    acc.accept(store, "127.0.0.1", "tcp", port, note="jump host", by="alice", until=None,
               now=datetime.now(UTC))
    # When the port answers junk no probe can name
    with loopback.listen(loopback.banner(b"\x00\x07\xff\xfeqq\r\n"), port=port):
        junk = _scan(store, LOCAL, [port])
    assert ChangeKind.SERVICE_CHANGED in {e.kind for e in junk.change_events}
    # Then the acceptance holds in the List, the Summary, `accept --list` and alerting
    # alike (the List once said not accepted while its alerts were held back)
    assert _views(store, port) == (1, 1, True)
    assert not _alerted(store, junk.change_events, ChangeKind.SERVICE_CHANGED)
    # And named as it was accepted, it still holds; named otherwise, it ends
    with _ssh(port, b"SSH-2.0-dropbear_2020.81"):
        _scan(store, LOCAL, [port])
    assert _views(store, port) == (1, 1, True)
    with _ssh(port, b"SSH-2.0-OpenSSH_9.0p1"):
        _scan(store, LOCAL, [port])
    assert _views(store, port) == (0, 0, False)


def test_an_acceptance_made_before_the_port_was_seen_ends_at_its_first_change(
        store: Any) -> None:
    port = loopback.free_port()
    with _ssh(port, b"SSH-2.0-OpenSSH_8.9p1"):
        _scan(store, LOCAL, [loopback.free_port()])  # another port: this one unseen yet
        acc.accept(store, "127.0.0.1", "tcp", port, note="pre-accepted", by="alice",
                   until=None, now=datetime.now(UTC))
        _scan(store, LOCAL, [port])
    # Then it covers the port as first named
    assert _views(store, port) == (1, 1, True)
    # When the port is named otherwise / Then it ends (it never did: nothing was noted)
    with _ssh(port, b"SSH-2.0-dropbear_2020.81"):
        second = _scan(store, LOCAL, [port])
    assert ChangeKind.PRODUCT_CHANGED in {e.kind for e in second.change_events}
    assert _views(store, port) == (0, 0, False)
