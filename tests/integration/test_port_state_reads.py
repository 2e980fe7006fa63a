"""Reading ``port_state`` on a real chdb store whose parts are not merged: each port's
newest row, whether the recorder reads a key range (FINAL) or binds the names of the few
hosts whose scan changed (``ORDER BY updated_at DESC LIMIT 1 BY``, not FINAL). Both ways
must give the same states, and never the row inserted last when it is not the newest."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from schemas.records import Proto, Target
from stream_processors.changes import PortSnapshot
from stream_processors.history import (
    PORT_STATE_COLUMNS,
    RANGE_QUERY_MIN,
    _port_row,
    load_ports,
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
