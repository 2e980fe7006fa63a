"""End to end on namespace test hosts (198.18.0.0/15 on a veth pair the test builds):
the real CLI with the masscan engine, and a host that answers on every port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.netns import test_host

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "3", "PORTWATCH_BANNER_WAIT": "0.5"}
SSH = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


def _list(store: str) -> list[dict[str, object]]:
    result = run_cli("report", "list", "--format", "json", store=store)
    assert result.code == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_masscan_engine_finds_and_identifies_every_listener(tmp_path: Path) -> None:
    banners = {22: SSH, 2525: b"220 mx.example.test ESMTP Postfix\r\n",
               40001: b"220 (vsFTPd 3.0.3)\r\n"}
    store = f"chdb://{tmp_path / 'store'}"
    with test_host(91, tcp_banners=banners) as host:
        target = host.addresses[0]
        # When the whole TCP range is swept with masscan (raw SYNs on the veth)
        result = run_cli("scan", target, "--engine", "masscan", "--rate", "10000",
                         "--udp", "none", store=store, env=FAST, timeout=240)
    assert result.code == 0, result.stderr
    assert "using the connect engine" not in result.stderr
    # Then every listener is found, confirmed and identified, and nothing else
    rows = {int(r["port"]): r for r in _list(store)}  # type: ignore[call-overload]
    assert set(rows) == set(banners), result.stdout  # the end screen carries the notes
    assert (rows[22]["service"], rows[22]["product"]) == ("ssh", "OpenSSH")
    assert (rows[2525]["service"], rows[2525]["product"]) == ("smtp", "Postfix smtpd")
    assert (rows[40001]["service"], rows[40001]["version"]) == ("ftp", "3.0.3")


def test_a_host_answering_on_every_port_is_flagged_and_not_flooded(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with test_host(92, tcp_banners={22: SSH}, syn_ack_all=True) as host:
        target = host.addresses[0]
        # When 3,000 ports of it are scanned with a threshold of 500
        result = run_cli("scan", target, "--engine", "connect", "--ports", "1-3000",
                         "--udp", "none", "--tarpit-threshold", "500", store=store,
                         env=FAST, timeout=240)
    assert result.code == 0, result.stderr
    # Then the Summary flags it and only identified services are kept
    summary = json.loads(run_cli("report", "summary", "--format", "json", store=store).stdout)
    assert summary[0]["is_tarpit"] == 1
    rows = _list(store)
    assert len(rows) < 60  # well-known candidates at most, never 3,000 rows
    assert all(r["service"] for r in rows)
    assert 22 in {r["port"] for r in rows}


def test_a_tarpit_keeps_only_really_identified_ports_and_says_how_many_it_dropped(
        tmp_path: Path) -> None:
    # Given a namespace host whose every port accepts and closes at once (tcpwrapped to
    # nmap), with one real SSH service behind the noise (issue 11, defect 5)
    store = f"chdb://{tmp_path / 'store'}"
    with test_host(93, tcp_banners={22: SSH}, syn_ack_all=True) as host:
        target = host.addresses[0]
        # When it is scanned with the nmap probes on (they name such ports tcpwrapped)
        result = run_cli("scan", target, "--engine", "connect", "--ports", "1-3000",
                         "--udp", "none", "--tarpit-threshold", "500", store=store,
                         env=FAST, timeout=300)
    assert result.code == 0, result.stderr
    # Then only the real service is listed: no "tcpwrapped" candidate survives
    rows = _list(store)
    assert [(r["port"], r["service"]) for r in rows] == [(22, "ssh")]
    # And the Summary flags the host, scores only what is real, and says what it dropped
    summary = json.loads(run_cli("report", "summary", "--format", "json", store=store).stdout)
    (row,) = summary
    assert row["is_tarpit"] == 1 and row["open_ports"] == 1 and row["grade"] == "A"
    dropped = int(str(row["scan_note"]).split("; ")[-1].split()[0])
    assert dropped > 0
    assert "answering ports dropped: no banner, probe match or TLS" in row["scan_note"]
