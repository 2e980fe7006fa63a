"""What the recorder reads back, on a real chdb store whose parts are not merged (merges
stopped, every row version in its own part):

- ``port_state``: each port's newest row, whether the recorder reads a key range (FINAL)
  or binds the names of the few hosts whose scan changed (``ORDER BY updated_at DESC
  LIMIT 1 BY``, not FINAL). Both ways give the same states, and never the row inserted
  last when it is not the newest.
- ``changes`` (a replay reads its events back): each event once although written twice,
  in the order ``stored_events`` promises, without FINAL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from schemas.records import ChangeEvent, ChangeKind, Proto, Severity, Target
from stream_processors.changes import HostScanView, PortSnapshot
from stream_processors.history import (
    CHANGE_COLUMNS,
    PORT_STATE_COLUMNS,
    RANGE_QUERY_MIN,
    _event_row,
    _port_row,
    load_ports,
    stored_events,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOSTS = [Target(ip=f"198.18.7.{i}", target=f"198.18.7.{i}") for i in range(RANGE_QUERY_MIN + 6)]
PORTS = (22, 443)
VERSIONS = 3  # rows per port, one per scan day, each in its own insert (its own part)


def _row(target: Target, port: int, day: int) -> list[object]:
    when = T0 + timedelta(days=day)
    snap = PortSnapshot(Proto.TCP, port, day != 1, "ssh" if port == 22 else "https",
                        "OpenSSH", f"9.{day}", scan_id=f"s{day}", changed_at=when,
                        first_seen=T0)
    return _port_row(target, snap, when)


def test_both_reads_give_each_ports_newest_row_over_unmerged_parts(store) -> None:  # type: ignore[no-untyped-def]
    store.command("SYSTEM STOP MERGES port_state")
    # Every version of every port in its own insert, in an order where the newest row is
    # inserted first for some ports and last for others (FINAL's tie rule, "last
    # inserted", must not be what decides).
    rows = [_row(t, port, day) for t in HOSTS for port in PORTS for day in range(VERSIONS)]
    random.Random(7).shuffle(rows)
    for row in rows:
        store.insert_rows("port_state", PORT_STATE_COLUMNS, [row])
    stored = store.query("SELECT count() FROM port_state")[0][0]
    assert stored == len(HOSTS) * len(PORTS) * VERSIONS  # nothing merged away yet

    keys = [(t.target, t.ip) for t in HOSTS]
    ranged = load_ports(store, keys, dense=True)  # >= RANGE_QUERY_MIN hosts: key range
    named = load_ports(store, keys, dense=False)  # bound names
    few = load_ports(store, keys[:3], dense=True)  # < RANGE_QUERY_MIN: bound names too

    newest = VERSIONS - 1
    for got in (ranged, named):
        assert set(got) == set(keys)
        for key in keys:
            assert {(p, s.version, s.scan_id, s.is_open) for (_, p), s in got[key].items()} \
                == {(p, f"9.{newest}", f"s{newest}", True) for p in PORTS}
    assert named == ranged
    assert few == {k: ranged[k] for k in keys[:3]}
    store.command("SYSTEM START MERGES port_state")


def test_a_replay_reads_each_event_once_in_order_although_it_was_written_twice(store) -> None:  # type: ignore[no-untyped-def]
    store.command("SYSTEM STOP MERGES changes")
    when = T0 + timedelta(days=3)
    kinds = (ChangeKind.OPENED, ChangeKind.VERSION_CHANGED)
    events = [ChangeEvent(kind=kind, severity=Severity.LOW, target=t, scan_id=scan,
                          previous_scan_id="s0", proto=Proto.TCP, port=port,
                          before="9.0", after="9.1", observed_at=when)
              for scan in ("s1", "s2") for t in HOSTS[:5] for port in (443, 22)
              for kind in kinds]
    rows = [_event_row(e) for e in events]
    random.Random(3).shuffle(rows)
    for half in (rows[: len(rows) // 2], rows[len(rows) // 2:], rows):  # every event twice
        store.insert_rows("changes", CHANGE_COLUMNS, half)
    assert store.query("SELECT count() FROM changes")[0][0] == 2 * len(events)

    # Asked for s1 only, hosts in an order of their own: each host's events by
    # (proto, port, kind), hosts in the order asked, nothing of s2.
    asked = [HOSTS[3], HOSTS[0], HOSTS[4]]
    views = [HostScanView(t, "s1", (), {}) for t in asked]
    got = stored_events(store, views)
    expected = [e for t in asked
                for e in sorted((e for e in events if e.target == t and e.scan_id == "s1"),
                                key=lambda e: (e.proto.value, e.port, e.kind.value))]
    assert [(e.target.ip, e.port, e.kind, e.scan_id) for e in got] \
        == [(e.target.ip, e.port, e.kind, e.scan_id) for e in expected]
    assert got == expected
    store.command("SYSTEM START MERGES changes")
