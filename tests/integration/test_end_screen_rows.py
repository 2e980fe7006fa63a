"""The end-of-scan Summary of a scan past 20 hosts (portwatch/scan_cli.py): this scan's
20 riskiest, read from the real store's Summary a page at a time, riskiest first, and no
further than they need (a store of 100,000 hosts is not read whole to print 20)."""

from __future__ import annotations

from typing import Any

import pytest

from portwatch import scan_cli
from schemas.records import RiskColor
from tests.integration.test_store import make_finding, store_scan, target


def test_the_riskiest_of_a_scan_are_found_without_reading_the_whole_store(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store of 20 hosts of other scans, all riskier: 10 other addresses and 10 of
    # this scan's addresses under another target (an earlier scan named them otherwise)
    others = ([target(f"127.0.1.{n + 1}") for n in range(10)]
              + [target(f"127.0.2.{n + 1}", text="old-name") for n in range(20, 30)])
    for t in others:
        store_scan(store, t, [make_finding(t, 6000 + p, RiskColor.RED, scan_id="other")
                              for p in range(40)], scan_id="other")
    # And 30 of this scan, host n with n + 1 open ports (30 different scores)
    ours = [target(f"127.0.2.{n + 1}") for n in range(30)]
    for n, t in enumerate(ours):
        store_scan(store, t, [make_finding(t, 1000 + p, RiskColor.YELLOW, scan_id="this")
                              for p in range(n + 1)], scan_id="this")
    hosts = {(t.target, t.ip) for t in ours}
    # When the end screen looks for this scan's riskiest, 7 Summary rows at a time
    monkeypatch.setattr(scan_cli, "END_SCREEN_PAGE", 7)
    found = scan_cli._riskiest_of(store, hosts)
    # Then it holds this scan's 20 riskiest (as a whole read would rank them), none of
    # the other scans' (not those at this scan's addresses either), and it stopped before
    # reading all of this scan's hosts
    whole = sorted((r for r in store.report("summary", {}).dicts()
                    if (r["target"], r["ip"]) in hosts), key=scan_cli._riskiest_first)[:20]
    top = sorted(found, key=scan_cli._riskiest_first)[:20]
    assert [r["ip"] for r in top] == [r["ip"] for r in whole]
    assert [r["ip"] for r in top][:3] == ["127.0.2.30", "127.0.2.29", "127.0.2.28"]
    assert {(r["target"], r["ip"]) for r in found} <= hosts
    assert 20 <= len(found) < 30


def test_hosts_tied_at_one_score_are_not_all_read(store: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 30 hosts of this scan, every one with the same score (one green port each)
    ours = [target(f"127.0.3.{n + 1}") for n in range(30)]
    for t in ours:
        store_scan(store, t, [make_finding(t, 22, RiskColor.GREEN, scan_id="tied")],
                   scan_id="tied")
    hosts = {(t.target, t.ip) for t in ours}
    monkeypatch.setattr(scan_cli, "END_SCREEN_PAGE", 7)
    # When the end screen looks for the riskiest 20
    found = scan_cli._riskiest_of(store, hosts)
    # Then it stops once it has 20 and a page ends at their score (all 30 were read)
    assert 20 <= len(found) < 30
    assert {(r["target"], r["ip"]) for r in found} <= hosts
