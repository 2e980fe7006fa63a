"""End to end: `portwatch report changes` and `portwatch prune` through the real CLI on a
real chdb store, after real scans of loopback listeners started and stopped."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import query_store, run_cli

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "4", "PORTWATCH_BANNER_WAIT": "1"}
KEYS = ["kind", "severity", "target", "ip", "proto", "port", "before", "after", "scan_id",
        "previous_scan_id", "observed_at", "organization", "asset"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Given ssh and redis-like listeners, a scan; then redis stops; then a second scan
    limited to the ssh port only (it must not close redis) and a third covering both."""
    store = f"chdb://{tmp_path_factory.mktemp('changes') / 'store'}"
    ssh_ctx = loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
    redis_ctx = loopback.listen(loopback.banner(b"-ERR unknown command 'x'\r\n"))
    ssh, redis = ssh_ctx.__enter__(), redis_ctx.__enter__()
    spec = f"{ssh.port},{redis.port}"
    try:
        first = run_cli("scan", "127.0.0.1", "--ports", spec, "--udp", "none", "--org", "Acme",
                        "--asset", "web-1", store=store, env=FAST)
        assert first.code == 0, first.stderr
    finally:
        redis_ctx.__exit__(None, None, None)
    # redis's port stays bound, not listening: closed, and no other test can take it
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", redis.port))
    try:
        narrow = run_cli("scan", "127.0.0.1", "--ports", str(ssh.port), "--udp", "none",
                         "--org", "Acme", "--asset", "web-1", store=store, env=FAST)
        assert narrow.code == 0, narrow.stderr
        listed = run_cli("report", "list", "--format", "json", store=store)
        assert listed.code == 0, listed.stderr
        full = run_cli("scan", "127.0.0.1", "--ports", spec, "--udp", "none", "--org", "Acme",
                       "--asset", "web-1", store=store, env=FAST)
        assert full.code == 0, full.stderr
    finally:
        ssh_ctx.__exit__(None, None, None)
        holder.close()
    return {"store": store, "ssh": ssh.port, "redis": redis.port, "narrow": narrow.stdout,
            "first": first.stdout,
            "full": full.stdout, "listed_after_narrow": json.loads(listed.stdout)}


def changes(store: str, *args: str) -> list[dict[str, object]]:
    result = run_cli("report", "changes", "--format", "json", *args, store=store)
    assert result.code == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


@pytest.mark.parametrize(("limit", "count"), [("2", 2), ("0", 3),
                                               (str(2**64), 3), (str(2**64 + 1), 3)])
def test_limit_beyond_any_count_is_all(scanned: dict, limit: str, count: int) -> None:
    # 2**64 wrapped to 0 rows in the SQL's UInt64, and 2**64 + 1 to one row
    assert len(changes(scanned["store"], "--limit", limit)) == count


def test_json_has_the_issue_keys_and_exact_events(scanned: dict) -> None:
    rows = changes(scanned["store"])
    assert all(list(r) == KEYS for r in rows)
    got = sorted((r["kind"], r["port"]) for r in rows)
    # the narrow scan (--ports ssh) closed nothing; the full one closed redis
    assert got == sorted([("opened", scanned["ssh"]), ("opened", scanned["redis"]),
                          ("closed", scanned["redis"])])
    closed = next(r for r in rows if r["kind"] == "closed")
    assert closed["organization"] == "Acme" and closed["asset"] == "web-1"
    assert closed["previous_scan_id"] != closed["scan_id"] != ""
    assert rows[0]["kind"] == "closed"  # newest first


def test_the_list_after_the_narrow_scan_still_shows_the_port_it_did_not_cover(
        scanned: dict) -> None:
    # redis had stopped, but the scan limited to ssh could not know: the change log still
    # holds it open, and so does the List, with what the first scan saw on it
    rows = {r["port"]: r for r in scanned["listed_after_narrow"]}
    assert sorted(rows) == sorted([scanned["ssh"], scanned["redis"]])
    assert rows[scanned["redis"]]["last_seen"] < rows[scanned["ssh"]]["last_seen"]


def test_the_end_of_scan_screen_counts_the_changes(scanned: dict) -> None:
    assert "changes: 1 since the previous scan, 0 high or critical" in scanned["full"]
    assert "changes:" not in scanned["narrow"]  # it covered only ssh, which stayed
    # the first scan had no previous one to be compared with: it says so (a review)
    assert "changes: 2 (all on hosts scanned for the first time), " in scanned["first"]
    assert "previous scan" not in scanned["first"]


def test_filters_kind_port_severity_since(scanned: dict) -> None:
    store = scanned["store"]
    assert [r["kind"] for r in changes(store, "--kind", "closed")] == ["closed"]
    assert sorted(r["kind"] for r in changes(store, "--kind", "closed", "--kind", "opened")) \
        == ["closed", "opened", "opened"]
    assert [r["kind"] for r in changes(store, "--port", str(scanned["ssh"]))] == ["opened"]
    assert changes(store, "--since", "1h") == changes(store)
    assert changes(store, "--from", "2100-01-01") == []
    assert changes(store, "--org", "Other") == []
    assert changes(store, "--severity", "critical") == []


def test_csv_and_table(scanned: dict) -> None:
    result = run_cli("report", "changes", "--format", "csv", store=scanned["store"])
    assert result.code == 0, result.stderr
    table = list(csv.reader(io.StringIO(result.stdout)))
    assert table[0] == KEYS and len(table) == 4
    shown = run_cli("report", "changes", store=scanned["store"])
    assert shown.code == 0 and "closed" in shown.stdout and "opened" in shown.stdout


def test_list_history_marks_the_closed_port_in_the_table(scanned: dict) -> None:
    shown = run_cli("report", "list", "--history", store=scanned["store"])
    assert shown.code == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if f" {scanned['redis']} " in x)
    assert "closed 20" in line


@pytest.mark.parametrize("args", [("report", "changes", "--since", "7x"),
                                  ("report", "changes", "--from", "yesterday"),
                                  ("report", "changes", "--since", "1d", "--from", "2026-01-01"),
                                  ("report", "changes", "--from", "2027-01-01", "--to",
                                   "2026-01-01"),
                                  ("report", "changes", "--since", "7d", "--to", "2020-01-01"),
                                  ("report", "changes", "--from", "2026-12-06", "--to",
                                   "2026-12-06"),
                                  ("report", "changes", "--from", "9999-12-31", "--to",
                                   "9999-12-31"),
                                  ("prune", "--older-than", "0d"),
                                  ("prune", "--older-than", "ninety")])
def test_bad_input_is_one_line_and_exit_2(scanned: dict, args: tuple[str, ...]) -> None:
    result = run_cli(*args, store=scanned["store"])
    assert result.code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(("flag", "message"), [("--since", "--since: empty duration"),
                                             ("--from", "--from: empty date/time"),
                                             ("--to", "--to: empty date/time")])
def test_an_empty_window_value_is_refused_not_read_as_no_filter(
        tmp_path: Path, flag: str, message: str) -> None:
    # Given an empty value given explicitly (an unset "$VAR", say), no store scanned:
    # refused before the store is opened
    result = run_cli("report", "changes", flag, "", store=f"chdb://{tmp_path / 'none'}")
    assert result.code == 2, result.stderr
    assert result.stderr.strip() == f"portwatch: error: {message}"


@pytest.mark.parametrize("period", ["36500d", "5214w"])
def test_prune_before_1970_deletes_nothing_and_says_so(scanned: dict, period: str) -> None:
    # Given a period that reaches before 1970 (the engine takes no time before it)
    sql = "SELECT count() FROM port_observations"
    before = query_store(scanned["store"], sql)
    result = run_cli("prune", "--older-than", period, store=scanned["store"])
    # Then it is not an error: the cutoff (about 36,500 days ago) is printed and no
    # observation is deleted
    assert result.code == 0, result.stderr
    printed = re.search(r"no scan to prune before (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC "
                        r"\(each host's latest scan", result.stdout)
    assert printed is not None, result.stdout
    cutoff = datetime.strptime(printed[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    days = int(period[:-1]) * (7 if period.endswith("w") else 1)
    assert abs(cutoff - (datetime.now(UTC) - timedelta(days=days))) < timedelta(minutes=10)
    assert query_store(scanned["store"], sql) == before
    assert before[0][0] >= 3  # the three scans' open ports


def test_prune_command_keeps_the_change_log(scanned: dict) -> None:
    result = run_cli("prune", "--older-than", "90d", store=scanned["store"])
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("no scan to prune before "), result.stdout
    # (nor any alert delivery: said so, not "pruned the alert deliveries"; a review)
    assert result.stdout.rstrip().endswith("; no alert delivery or scheduled run to prune")
    assert len(changes(scanned["store"])) == 3


def test_a_udp_service_that_falls_silent_and_answers_again(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        closed_port = gone.getsockname()[1]  # a port unreachable: silence means something

    def scan(port: int) -> None:
        done = run_cli("scan", "127.0.0.1", "--ports", "1", "--udp", f"{port},{closed_port}",
                       store=store, env=FAST)
        assert done.code == 0, done.stderr

    # Given a real UDP service on loopback answering every datagram, scanned
    with loopback.udp_responder() as port:
        scan(port)
    # When its socket stays bound but nothing answers (open|filtered: no ICMP either),
    # then the service answers again, each state scanned
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", port))
        scan(port)
    with loopback.udp_responder(port=port):
        scan(port)
    # Then the change log says its risk was lowered (unconfirmed: the Summary scores it
    # nothing), then raised (it scores again), before and after saying why
    said = [(e["kind"], e["severity"], e["before"], e["after"])
            for e in changes(store) if e["proto"] == "udp"]
    assert sorted(said) == sorted([
        ("opened", "medium", "", "unidentified (yellow)"),
        ("risk_lowered", "info", "yellow, answers", "yellow, open|filtered: no UDP reply"),
        ("risk_raised", "medium", "yellow, open|filtered: no UDP reply", "yellow, answers")])
