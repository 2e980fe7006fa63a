"""The store (stream_processors/store.py) on a real embedded ClickHouse (chdb).

URL parsing for every scheme; idempotent writes (a replay never double-counts);
first_seen fixed and last_seen moving across scans; host scans in the Summary;
report filters and errors; the Summary SQL's risk score equal to Python's for
hundreds of (red, yellow, green) combinations; and StoreBusy when another process
holds the path.

chdb opens one path per process: in-process tests use the session-wide path of
tests/conftest.py with a fresh database each (fixture ``store``); anything that needs
another path runs in a subprocess. The addresses below are data, never scanned.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.records import (
    CdnVerdict,
    Certificate,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    PortState,
    ProbeStatus,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors import store as store_module
from stream_processors.risk import score_counts, score_findings
from stream_processors.store import (
    DEFAULT_DATABASE,
    SCHEMA_VERSION,
    Store,
    StoreBusy,
    StoreError,
    StoreLayoutError,
    StoreLocation,
    UnknownStoreScheme,
)
from tests import loopback
from tests.conftest import REPO, scratch_store

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=1)


def naive_utc(dt: datetime) -> datetime:
    """chdb hands DateTime64(3, 'UTC') back naive or aware depending on the driver."""
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def target(ip: str = "127.0.0.1", *, org: str = "Example Corp", asset: str = "web",
           text: str | None = None, hostname: str = "") -> Target:
    return Target(ip=ip, target=text or ip, hostname=hostname, organization=org, asset=asset)


def make_finding(t: Target, port: int, color: RiskColor = RiskColor.GREEN, *,
                 scan_id: str = "scan-1", when: datetime = T0, service: str = "",
                 product: str = "", version: str = "", proto: Proto = Proto.TCP,
                 state: PortState = PortState.OPEN, is_cdn_expected: bool = False,
                 tls: TlsResult | None = None) -> Finding:
    return Finding(
        port=OpenPort(scan_id=scan_id, target=t, port=port, proto=proto, state=state,
                      observed_at=when),
        service=ServiceInfo(service=service, product=product, version=version),
        tls=tls or TlsResult(),
        cdn=CdnVerdict(provider="cloudflare" if is_cdn_expected else "",
                       is_expected_port=is_cdn_expected),
        risk_color=color, risk_reason=f"{color.value} for the test",
    )


def host_scan(t: Target, *, scan_id: str = "scan-1", when: datetime = T0, open_ports: int = 0,
              ports_scanned: int = 1000, status: str = "completed",
              is_tarpit: bool = False, shard_id: str = "") -> HostScan:
    return HostScan(scan_id=scan_id, target=t, started_at=when - timedelta(seconds=5),
                    finished_at=when, ports_scanned=ports_scanned, open_ports=open_ports,
                    status=status, is_tarpit=is_tarpit, shard_id=shard_id)


def store_scan(store: Store, t: Target, findings: list[Finding], *, scan_id: str = "scan-1",
               when: datetime = T0, **kw: Any) -> None:
    store.insert_findings(findings)
    store.insert_host_scans([host_scan(t, scan_id=scan_id, when=when,
                                       open_ports=len(findings), **kw)])


def rows(store: Store, report: str, **filters: Any) -> list[dict[str, Any]]:
    limit = filters.pop("limit", 0)
    offset = filters.pop("offset", 0)
    return store.report(report, filters, limit=limit, offset=offset).dicts()


# -- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("chdb:///var/lib/portwatch/store",
         StoreLocation("chdb", path="/var/lib/portwatch/store", database=DEFAULT_DATABASE)),
        ("chdb:///tmp/s?database=t_1", StoreLocation("chdb", path="/tmp/s", database="t_1")),
        ("CHDB:///tmp/s", StoreLocation("chdb", path="/tmp/s")),
        ("chdb://relative/dir", StoreLocation("chdb", path="relative/dir")),
        ("chdb://localhost/tmp/s", StoreLocation("chdb", path="/tmp/s")),  # as file://
        ("chdb://LocalHost/tmp/s", StoreLocation("chdb", path="/tmp/s")),
        ("chdb:///tmp/with%20space", StoreLocation("chdb", path="/tmp/with space")),
        ("chdb:///tmp/st%231", StoreLocation("chdb", path="/tmp/st#1")),
        ("chdb://~/pw-store", StoreLocation("chdb", path=os.path.expanduser("~/pw-store"))),
        ("clickhouse://127.0.0.1",
         StoreLocation("clickhouse", host="127.0.0.1", port=8123, username="default",
                       database="portwatch")),
        ("clickhouse://writer@127.0.0.1:9123/scans",
         StoreLocation("clickhouse", host="127.0.0.1", port=9123, username="writer",
                       database="scans")),
        ("clickhouses://ops%40corp@localhost/db",
         StoreLocation("clickhouses", host="localhost", port=8443, username="ops@corp",
                       database="db")),
        ("clickhouse://[::1]:8124/", StoreLocation("clickhouse", host="::1", port=8124)),
    ],
)
def test_store_url_parsing(url: str, expected: StoreLocation) -> None:
    assert StoreLocation.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("sqlite:///tmp/x", UnknownStoreScheme,
         "unknown store URL 'sqlite:///tmp/x': use chdb:///path or "
         "clickhouse://user@host:8123/database"),
        ("/just/a/path", UnknownStoreScheme, "unknown store URL '/just/a/path'"),
        ("", UnknownStoreScheme, "unknown store URL ''"),
        ("http://127.0.0.1:8123", UnknownStoreScheme, "unknown store URL"),
        ("chdb://", StoreError, "store URL 'chdb://' has no path: use chdb:///path/to/store"),
        ("clickhouse:///db", StoreError, "store URL 'clickhouse:///db' has no host"),
        ("clickhouse://127.0.0.1:99999/db", StoreError, "store URL 'clickhouse://127.0.0.1:99999/db'"),
        ("clickhouse://127.0.0.1:port/db", StoreError, "store URL"),
        ("clickhouse://bob:S3cretPW@127.0.0.1/db", StoreError,
         "store URL 'clickhouse://bob:***@127.0.0.1/db' carries a password: give it in "
         "PORTWATCH_CLICKHOUSE_PASSWORD"),
        ("clickhouse://bob:S3cretPW@127.0.0.1:abc/db", StoreError,
         "store URL 'clickhouse://bob:***@127.0.0.1:abc/db'"),
        ("clickhouse://127.0.0.1/a`b", StoreError,
         "store URL 'clickhouse://127.0.0.1/a`b': database 'a`b' must be letters, digits"),
        ("chdb:///tmp/s?database=x;DROP", StoreError, "store URL 'chdb:///tmp/s?database=x;DROP"
         "': database 'x;DROP' must be letters"),
        ("chdb:///tmp/s?database=1st", StoreError, "store URL"),
        # what a URL says beyond its path is refused, not dropped (a review: "st#1" opened
        # "st", "?databse=x" the default database)
        ("chdb:///tmp/st#1", StoreError, "store URL 'chdb:///tmp/st#1': a '#' ends the path "
         "there; write it %23 if the path holds one"),
        ("chdb:///tmp/st?databse=x", StoreError, "store URL 'chdb:///tmp/st?databse=x': "
         "unknown parameter 'databse' (known: database)"),
        ("clickhouse://127.0.0.1/db?secure=1", StoreError, "store URL 'clickhouse://127.0.0.1/"
         "db?secure=1': unknown parameter 'secure' (known: none: the database is the path)"),
        ("chdb:///tmp/s?database=a&database=b", StoreError, "store URL "
         "'chdb:///tmp/s?database=a&database=b': 'database' given twice: give one"),
        ("chdb:///tmp/%00x", StoreError, "store URL 'chdb:///tmp/%00x': a NUL byte cannot be "
         "in a path"),
        ("clickhouse://[::1/db", StoreError, "store URL 'clickhouse://[::1/db' is not a URL"),
        ("clickhouse://127.0.0.1/" + "d" * 70, StoreError, "store URL"),
    ],
)
def test_bad_store_urls_are_one_line_errors(url: str, error: type[StoreError],
                                            message: str) -> None:
    with pytest.raises(error) as err:
        StoreLocation.parse(url)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    assert "S3cretPW" not in str(err.value)


def test_unopenable_chdb_path_is_a_store_error(tmp_path: Path) -> None:
    # Given a store path below a regular file (the directory cannot be made; chdb is
    # never reached, so this process still holds only its one chdb path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"^the store path '.*file/store' cannot be a store "
                       r"directory: a part of it is a file; give another --store$") as err:
        Store.from_url(f"chdb://{tmp_path / 'file' / 'store'}")
    assert not isinstance(err.value, StoreBusy)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("url", ["chdb:///", "chdb:////", "chdb:///.."])
def test_the_file_systems_root_is_refused_as_a_store(url: str) -> None:
    # chdb:/// wrote data/, metadata/, store/ and tmp/ into / (a review, 2026-12-06)
    with pytest.raises(StoreError, match=r"^the store path .* is the file system's root: "):
        Store.from_url(url)


def test_a_directory_holding_other_files_is_refused_and_left_as_it_was(tmp_path: Path
                                                                      ) -> None:
    # Given a user's folder, given as the store by mistake
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    # When a store is to be created there / Then refused in one line, nothing written
    with pytest.raises(StoreError, match=r"^the store path .* holds other files "
                                         r"\('notes.txt', 'photos'\) and no store: give a "
                                         r"new or empty directory$"):
        Store.from_url(f"chdb://{tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_a_volume_of_its_own_is_a_store_directory(tmp_path: Path) -> None:
    from stream_processors.store import _refuse_a_foreign_directory

    # A disk mounted at the store path holds lost+found: not a user's files (a review)
    (tmp_path / "lost+found").mkdir()
    _refuse_a_foreign_directory(str(tmp_path))  # no error
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"holds other files \('notes.txt'\)"):
        _refuse_a_foreign_directory(str(tmp_path))


def test_unreachable_server_is_a_store_error() -> None:
    # Given a ClickHouse URL on a loopback port where nothing listens
    # (port 1: tcpmux, reserved and unused here)
    with pytest.raises(StoreError, match=r"^cannot open the store at 127\.0\.0\.1:1: ") as err:
        Store.from_url("clickhouse://127.0.0.1:1/db")
    assert "\n" not in str(err.value)
    # An IPv6 address is named in brackets (it read "::1:1")
    with pytest.raises(StoreError, match=r"^cannot open the store at \[::1\]:1: "):
        Store.from_url("clickhouse://[::1]:1/db")


def test_a_server_that_accepts_and_never_answers_is_a_store_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a ClickHouse URL on a loopback port whose listener accepts and stays silent
    # (the driver's 300 s read timeout kept every command mute for five minutes: a
    # review); the ping's bound shortened so the test does not wait ten seconds
    monkeypatch.setattr(store_module, "PING_TIMEOUT", 1.0)
    with loopback.listen(loopback.silent(hold_seconds=5)) as server:
        with pytest.raises(StoreError) as err:
            Store.from_url(f"clickhouse://default@127.0.0.1:{server.port}/db")
    # Then one line says the server did not answer
    assert str(err.value) == (f"cannot open the store at 127.0.0.1:{server.port}: no answer "
                              "within 1s (is it a ClickHouse server's HTTP port?)")


# -- idempotent writes, first/last seen ----------------------------------------------------


def test_schema_creation_is_idempotent(store: Store) -> None:
    store.ensure_schema()
    store.ensure_schema()
    tables = {r[0] for r in store.query("SHOW TABLES")}
    assert {"port_observations", "findings", "host_scans", "port_prevalence", "tls_probes",
            "tls_ciphers", "certificates"} <= tables


def test_replaying_a_scan_never_duplicates_a_finding(store: Store) -> None:
    # Given one scan with three open ports
    t = target()
    findings = [make_finding(t, 22, service="ssh", product="OpenSSH", version="9.2p1"),
                make_finding(t, 3306, RiskColor.RED, service="mysql", product="MariaDB"),
                make_finding(t, 9999, RiskColor.YELLOW)]
    # When the same findings and host scan are written twice (a replayed partition)
    for _ in range(2):
        assert store.insert_findings(findings) == 3
        store.insert_host_scans([host_scan(t, open_ports=3)])
    # Then every report counts each port once
    listed = rows(store, "list")
    assert [(r["port"], r["risk_color"]) for r in listed] == [
        (22, "green"), (3306, "red"), (9999, "yellow")]
    assert {r["instances"] for r in listed} == {1}
    (summary,) = rows(store, "summary")
    assert (summary["open_ports"], summary["red"], summary["yellow"], summary["green"]) == (
        3, 1, 1, 1)
    assert summary["risk_score"] == score_counts(1, 1, 1).score
    assert summary["ports_scanned"] == 1000
    assert {(r["product"], r["instances"]) for r in rows(store, "products")} == {
        ("OpenSSH", 1), ("MariaDB", 1)}


def test_rescan_moves_last_seen_and_keeps_first_seen(store: Store) -> None:
    # Given a port seen in scan-1 at T0
    t = target()
    store_scan(store, t, [make_finding(t, 22, service="ssh", product="OpenSSH",
                                       version="9.2p1")])
    # When a rescan at T1 sees it again (with a newer version)
    store_scan(store, t, [make_finding(t, 22, scan_id="scan-2", when=T1, service="ssh",
                                       product="OpenSSH", version="9.6p1")],
               scan_id="scan-2", when=T1)
    # Then one row: first detected T0, last seen T1, the latest identification
    (row,) = rows(store, "list")
    assert (naive_utc(row["first_seen"]), naive_utc(row["last_seen"])) == (
        naive_utc(T0), naive_utc(T1))
    assert row["version"] == "9.6p1"
    # And replaying the old scan afterwards moves neither time nor the identification
    store_scan(store, t, [make_finding(t, 22, service="ssh", product="OpenSSH",
                                       version="9.2p1")])
    (row,) = rows(store, "list")
    assert (naive_utc(row["first_seen"]), naive_utc(row["last_seen"])) == (
        naive_utc(T0), naive_utc(T1))
    assert row["version"] == "9.6p1"
    assert [r["product"] for r in rows(store, "products")] == ["OpenSSH"]


def test_a_port_gone_in_the_latest_scan_is_history(store: Store) -> None:
    # Given ports 22 and 8080 in scan-1, and only 22 in scan-2
    t = target()
    store_scan(store, t, [make_finding(t, 22), make_finding(t, 8080, RiskColor.YELLOW)])
    store_scan(store, t, [make_finding(t, 22, scan_id="scan-2", when=T1)], scan_id="scan-2",
               when=T1)
    # Then the list shows the current port, history adds the gone one, and the
    # summary scores the latest scan only
    assert [r["port"] for r in rows(store, "list")] == [22]
    history = rows(store, "list", history=1)
    assert [(r["port"], r["is_current"]) for r in history] == [(22, 1), (8080, 0)]
    (summary,) = rows(store, "summary")
    assert (summary["open_ports"], summary["yellow"], summary["green"]) == (1, 0, 1)


def test_host_scans_show_targets_without_open_ports_and_tarpits(store: Store) -> None:
    # Given a host with nothing open, and a tarpit whose scan was interrupted
    quiet, tarpit = target("127.0.0.2", org="Quiet"), target("127.0.0.3", org="Pit")
    store.insert_host_scans([host_scan(quiet),
                             host_scan(tarpit, status="interrupted", is_tarpit=True)])
    store.insert_findings([make_finding(tarpit, 22, service="ssh")])
    # When the summary is read
    by_ip = {r["ip"]: r for r in rows(store, "summary")}
    # Then both are there, the empty one scoring zero
    assert (by_ip["127.0.0.2"]["open_ports"], by_ip["127.0.0.2"]["risk_score"],
            by_ip["127.0.0.2"]["grade"]) == (0, 0.0, "A")
    assert (by_ip["127.0.0.3"]["is_tarpit"], by_ip["127.0.0.3"]["scan_status"]) == (
        1, "interrupted")
    assert naive_utc(by_ip["127.0.0.2"]["last_scanned"]) == naive_utc(T0)


def test_shards_of_one_scan_add_up_in_the_summary(store: Store) -> None:
    # Given one host scanned in two shards (two port halves) of the same scan
    t = target()
    store.insert_host_scans([host_scan(t, ports_scanned=32768, shard_id="scan-1:tcp:0")])
    store.insert_host_scans([host_scan(t, ports_scanned=32767, shard_id="scan-1:tcp:1")])
    # When replayed, then the total still counts each shard once
    store.insert_host_scans([host_scan(t, ports_scanned=32767, shard_id="scan-1:tcp:1")])
    (summary,) = rows(store, "summary")
    assert summary["ports_scanned"] == 65535


def test_tls_results_reach_the_ciphers_report_and_failures_say_could_not_test(
        store: Store) -> None:
    t = target()
    good = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2",), grade="weak",
                     grade_reason="RC4", suites=(
                         CipherSuite("TLSv1.2", "TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA", "weak",
                                     preference=1),
                         CipherSuite("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                                     "ECDHE-RSA-AES128-GCM-SHA256", "strong", preference=2)),
                     certificates=(Certificate(subject="CN=localhost", is_self_signed=True),))
    failed = TlsResult(status=ProbeStatus.ERROR, error="handshake timed out", reached_via="direct")
    findings = [make_finding(t, 443, service="https", tls=good),
                make_finding(t, 8443, tls=failed)]
    for _ in range(2):  # replayed: suites are not doubled
        store_scan(store, t, findings)
    ciphers = {r["port"]: r for r in rows(store, "ciphers")}
    assert (ciphers[443]["status"], ciphers[443]["grade"], ciphers[443]["weak_suites"],
            len(ciphers[443]["suites"]), ciphers[443]["cert_subject"]) == (
        "completed", "weak", 1, 2, "CN=localhost")
    assert (ciphers[8443]["status"], ciphers[8443]["error"]) == ("error", "handshake timed out")
    assert [r["port"] for r in rows(store, "ciphers", grade="weak")] == [443]


def test_an_enumeration_cut_short_is_partial_not_tested(store: Store) -> None:
    t = target()
    cut = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2",), grade="strong",
                    reached_via="direct", error="partial: TLSv1.2: incomplete: scan budget "
                    "of 0.12s exhausted", suites=(CipherSuite(
                        "TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                        "ECDHE-RSA-AES128-GCM-SHA256", "strong", preference=1),))
    store_scan(store, t, [make_finding(t, 443, service="https", tls=cut)])
    [row] = rows(store, "ciphers")
    # (before: "tested", the word partial in JSON and CSV only)
    assert (row["outcome"], row["error"]) == (
        "partial", "partial: TLSv1.2: incomplete: scan budget of 0.12s exhausted")


# -- report filters ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(shared_chdb_path: Path) -> Iterator[Store]:
    """Two organizations, three hosts, a spread of colours and products (read-only: one
    database for the module keeps the many filter cases fast)."""
    with scratch_store(shared_chdb_path, "t_fleet") as store:
        a = target("127.0.0.1", org="Alpha", text="localhost", hostname="localhost")
        b = target("127.0.0.2", org="Alpha", asset="db")
        c = target("127.0.0.3", org="Beta", asset="cache")
        store_scan(store, a, [make_finding(a, 22, service="ssh", product="OpenSSH",
                                           version="9.2p1"),
                              make_finding(a, 80, service="http", product="nginx",
                                           version="1.22.1")])
        store_scan(store, b, [make_finding(b, 22, service="ssh", product="OpenSSH",
                                           version="9.6p1"),
                              make_finding(b, 3306, RiskColor.RED, service="mysql",
                                           product="MariaDB", version="10.11.6")])
        store_scan(store, c, [make_finding(c, 6379, RiskColor.RED, service="redis",
                                           product="Redis key-value store", version="7.0.15"),
                              make_finding(c, 4444, RiskColor.YELLOW)])
        yield store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        # ordered by target as written ("localhost" after "127.0.0.x"), address, port
        ({}, [("127.0.0.2", 22), ("127.0.0.2", 3306), ("127.0.0.3", 4444), ("127.0.0.3", 6379),
              ("127.0.0.1", 22), ("127.0.0.1", 80)]),
        ({"target": "localhost"}, [("127.0.0.1", 22), ("127.0.0.1", 80)]),  # as written
        ({"target": "127.0.0.2"}, [("127.0.0.2", 22), ("127.0.0.2", 3306)]),  # by address
        ({"org": "Beta"}, [("127.0.0.3", 4444), ("127.0.0.3", 6379)]),
        ({"port": 22}, [("127.0.0.2", 22), ("127.0.0.1", 22)]),
        ({"color": "red"}, [("127.0.0.2", 3306), ("127.0.0.3", 6379)]),
        ({"product": "openssh"}, [("127.0.0.2", 22), ("127.0.0.1", 22)]),  # any case
        ({"product": "OpenSSH", "version": "9.6p1"}, [("127.0.0.2", 22)]),
        ({"org": "Alpha", "color": "red"}, [("127.0.0.2", 3306)]),
        ({"prevalence": "rare", "port": 6379}, [("127.0.0.3", 6379)]),
        ({"prevalence": "very common"}, []),
        ({"org": "Nobody"}, []),
    ],
)
def test_list_filters(fleet: Store, filters: dict[str, Any],
                      expected: list[tuple[str, int]]) -> None:
    assert [(r["ip"], r["port"]) for r in rows(fleet, "list", **filters)] == expected


def test_prevalence_counts_distinct_addresses(fleet: Store) -> None:
    by_port = {r["port"]: (r["instances"], r["prevalence"]) for r in rows(fleet, "list")}
    assert by_port[22] == (2, "rare")
    assert by_port[6379] == (1, "rare")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["127.0.0.3", "127.0.0.2", "127.0.0.1"]),  # by risk score, highest first
        ({"org": "Alpha"}, ["127.0.0.2", "127.0.0.1"]),
        ({"color": "red"}, ["127.0.0.3", "127.0.0.2"]),
        ({"port": 80}, ["127.0.0.1"]),
        ({"product": "mariadb"}, ["127.0.0.2"]),
        ({"target": "localhost"}, ["127.0.0.1"]),
    ],
)
def test_summary_filters(fleet: Store, filters: dict[str, Any], expected: list[str]) -> None:
    assert [r["ip"] for r in rows(fleet, "summary", **filters)] == expected


def test_products_report_and_its_filters(fleet: Store) -> None:
    products = {(r["product"], r["version"]): (r["instances"], r["targets"])
                for r in rows(fleet, "products")}
    assert products == {("OpenSSH", "9.2p1"): (1, 1), ("OpenSSH", "9.6p1"): (1, 1),
                        ("nginx", "1.22.1"): (1, 1), ("MariaDB", "10.11.6"): (1, 1),
                        ("Redis key-value store", "7.0.15"): (1, 1)}
    assert [r["product"] for r in rows(fleet, "products", color="red", org="Beta")] == [
        "Redis key-value store"]
    assert {r["version"] for r in rows(fleet, "products", product="openssh")} == {
        "9.2p1", "9.6p1"}


def test_limit_and_offset_page_through_a_report(fleet: Store) -> None:
    everything = [(r["ip"], r["port"]) for r in rows(fleet, "list")]
    page1 = [(r["ip"], r["port"]) for r in rows(fleet, "list", limit=4)]
    page2 = [(r["ip"], r["port"]) for r in rows(fleet, "list", limit=4, offset=4)]
    assert page1 + page2 == everything
    assert len(page1) == 4


def test_unknown_report_and_unknown_filter_are_one_line_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="^unknown report 'nope': choose one of summary, list, "
                                         "products, ciphers$"):
        store.report("nope")
    with pytest.raises(StoreError, match="^report ciphers has no filter color, product$"):
        store.report("ciphers", {"color": "red", "product": "x"})


def test_filter_values_are_bound_not_formatted_into_sql(fleet: Store) -> None:
    # A filter value that would break (or widen) a formatted query matches nothing
    hostile = "x' OR '1'='1"
    for report in ("summary", "list", "products"):
        assert rows(fleet, report, org=hostile, target=hostile) == []


# -- the Summary SQL computes the same score as risk.py --------------------------------------

SMALL = range(7)
EXTRA = [(40, 0, 0), (0, 0, 305), (0, 0, 304), (3, 17, 2), (31, 2, 7), (0, 102, 0)]


def combos() -> Iterator[tuple[int, int, int]]:
    yield from itertools.product(SMALL, SMALL, SMALL)
    yield from EXTRA


def test_summary_sql_score_equals_python_for_every_combination(store: Store) -> None:
    # Given one target per (red, yellow, green) combination, each also carrying a
    # CDN-expected port and an unconfirmed UDP port (both must count zero)
    expected: dict[str, tuple[int, int, int, Any]] = {}
    findings: list[Finding] = []
    scans: list[HostScan] = []
    for n, (red, yellow, green) in enumerate(combos()):
        t = target(f"127.{n // 65536 + 10}.{n // 256 % 256}.{n % 256}", org="Grid")
        colours = ([RiskColor.RED] * red + [RiskColor.YELLOW] * yellow
                   + [RiskColor.GREEN] * green)
        mine = [make_finding(t, 1000 + i, c) for i, c in enumerate(colours)]
        mine.append(make_finding(t, 443, RiskColor.GREEN, is_cdn_expected=True))
        mine.append(make_finding(t, 161, RiskColor.RED, proto=Proto.UDP,
                                 state=PortState.OPEN_FILTERED))
        py = score_findings(mine)
        assert (py.red, py.yellow, py.green) == (red, yellow, green)
        expected[t.ip] = (red, yellow, green, py)
        findings += mine
        scans.append(host_scan(t, open_ports=len(mine)))
    store.insert_findings(findings)
    store.insert_host_scans(scans)
    # When the Summary report is read
    got = {r["ip"]: r for r in rows(store, "summary", org="Grid")}
    # Then for every target the SQL's counts, raw score, score, grade and parts equal Python's
    assert set(got) == set(expected)
    mismatches = []
    for ip, (red, yellow, green, py) in expected.items():
        row = got[ip]
        sql = (row["red"], row["yellow"], row["green"], row["raw_score"], row["risk_score"],
               row["grade"], row["score_parts"], row["cdn_expected"], row["open_ports"])
        want = (red, yellow, green, py.raw, py.score, py.grade, py.parts, 1,
                red + yellow + green + 2)
        if sql != want:
            mismatches.append((ip, sql, want))
    assert mismatches == [], "\n".join(map(str, mismatches[:5]))
    # And the ordering is by score, highest first
    scores = [r["risk_score"] for r in rows(store, "summary", org="Grid")]
    assert scores == sorted(scores, reverse=True)
    assert max(scores) == 100.0


# -- one process per embedded store ------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from stream_processors.store import Store
    store = Store.from_url(sys.argv[1])
    print("READY", flush=True)
    sys.stdin.read()  # hold the store until the test closes our stdin
    store.close()
""")

CONTENDER = textwrap.dedent("""
    import json, sys
    from stream_processors.store import Store, StoreBusy, StoreError
    try:
        Store.from_url(sys.argv[1]).close()
        print(json.dumps({"opened": True}))
    except StoreError as exc:
        print(json.dumps({"opened": False, "busy": isinstance(exc, StoreBusy),
                          "message": str(exc)}))
""")


def python(code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True,
                            **kw)


@pytest.fixture
def held_store(tmp_path: Path) -> Iterator[str]:
    """A chdb store held open by another process until the test ends."""
    url = f"chdb://{tmp_path / 'busy'}"
    holder = python(HOLDER, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.strip() == "READY", holder.stderr.read() if holder.stderr else line
        yield url
    finally:
        release(holder)


def release(holder: subprocess.Popen[str]) -> int:
    """Let the holder close its store and exit; kill it if it does not within a minute."""
    try:
        holder.communicate(input="", timeout=60)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.communicate()
    return holder.returncode


def contend(url: str) -> tuple[dict[str, Any], str]:
    import json

    proc = python(CONTENDER, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    return json.loads(out), err


def test_a_second_process_gets_store_busy_not_a_lock_traceback(held_store: str) -> None:
    # Given a store held by another process, when a second process opens it
    result, stderr = contend(held_store)
    # Then it gets StoreBusy with a message that says what to do, and chdb prints nothing
    assert result["opened"] is False and result["busy"] is True
    assert result["message"].startswith(f"the store at {held_store[len('chdb://'):]} is in use "
                                        "by another portwatch process")
    assert "wait for it to finish, use another --store, or run a ClickHouse server" in (
        result["message"])
    assert "\n" not in result["message"]
    assert "Traceback" not in stderr and "Cannot lock file" not in stderr


def test_the_store_opens_again_once_the_other_process_is_gone(tmp_path: Path) -> None:
    # Given a store that another process opened and closed
    url = f"chdb://{tmp_path / 'reused'}"
    holder = python(HOLDER, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "READY"
    assert release(holder) == 0
    # When a new process opens it, then it is not (falsely) busy
    assert contend(url)[0] == {"opened": True}


def test_one_process_may_open_its_own_store_twice(shared_chdb_path: Path) -> None:
    # Given this process's own chdb path (its engine holds the lock), when opened again
    # with two databases, then it is not mistaken for another process's lock
    with scratch_store(shared_chdb_path) as first, scratch_store(shared_chdb_path) as second:
        assert first.report("summary").rows == second.report("summary").rows == []


def test_compacting_the_page_indexes_merges_their_parts_and_keeps_every_row(
        store: Store) -> None:
    from stream_processors.store import PAGE_INDEXES

    # Given two scans of a host stored in separate inserts (several parts per index)
    local = Target(ip="127.0.0.1", target="127.0.0.1")
    for scan_id, at, version in (("s1", T0, "9.2p1"), ("s2", T0 + timedelta(days=1), "9.6p1")):
        store.insert_host_scans([HostScan(scan_id, local, at, at, 10, 1)])
        store.insert_findings([Finding(
            port=OpenPort(scan_id=scan_id, target=local, port=22, observed_at=at),
            service=ServiceInfo(service="ssh", product="OpenSSH", version=version))])
    before = store.report("list").dicts()
    # When the page indexes are compacted
    merged = store.compact_page_indexes()
    # Then each that had several parts is one part, and the report reads the same rows
    assert merged == ["host_latest", "port_latest"]
    assert store.active_parts(PAGE_INDEXES) == {"host_latest": 1, "port_latest": 1}
    assert store.report("list").dicts() == before
    assert [r["version"] for r in before] == ["9.6p1"]
    # And a second call has nothing to merge
    assert store.compact_page_indexes() == []


def test_a_page_index_that_cannot_be_merged_is_left_as_it_is_with_a_warning(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    # Given two parts in port_latest and host_latest, and merges of port_latest stopped
    # (a real refusal of the engine: OPTIMIZE is cancelled)
    local = Target(ip="127.0.0.1", target="127.0.0.1")
    for port in (22, 80):
        store.insert_host_scans([HostScan("s1", local, T0, T0, 10, 1)])
        store.insert_findings([Finding(
            port=OpenPort(scan_id="s1", target=local, port=port, observed_at=T0),
            service=ServiceInfo(service="ssh"))])
    store.command("SYSTEM STOP MERGES port_latest")
    try:
        # When the page indexes are compacted
        with caplog.at_level("WARNING"):
            merged = store.compact_page_indexes()
    finally:
        store.command("SYSTEM START MERGES port_latest")
    # Then the other index is merged, the refused one is named in one warning line, and
    # the reports read every row
    assert merged == ["host_latest"]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "could not merge the page index port_latest (its pages stay correct, only slower)"]
    assert sorted(r["port"] for r in store.report("list").dicts()) == [22, 80]


def test_a_store_laid_out_by_another_version_is_refused_with_one_line(
        store: Store, shared_chdb_path: Path) -> None:
    # Given a database whose findings table predates the schema_version table
    database = f"old_{uuid.uuid4().hex[:10]}"
    store.query(f"CREATE DATABASE {database}")
    store.query(f"CREATE TABLE {database}.findings (x UInt8) ENGINE = MergeTree ORDER BY x")
    # When portwatch opens it
    with pytest.raises(StoreError) as err:
        Store.from_url(f"chdb://{shared_chdb_path}?database={database}")
    # Then it says what is wrong and what to do, in one line
    message = str(err.value)
    assert "layout version unknown" in message and "use a new --store" in message
    assert "\n" not in message


def test_a_store_of_a_newer_portwatch_says_to_upgrade_not_to_start_over(
        store: Store, shared_chdb_path: Path) -> None:
    from stream_processors.store import SCHEMA_VERSION

    # Given a store a newer portwatch laid out (its version row one past ours)
    database = f"newer_{uuid.uuid4().hex[:10]}"
    made = Store.from_url(f"chdb://{shared_chdb_path}?database={database}")
    made.command(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1})")
    made.close()
    # When this portwatch opens it
    try:
        with pytest.raises(StoreError) as err:
            Store.from_url(f"chdb://{shared_chdb_path}?database={database}")
    finally:
        store.command(f"DROP DATABASE IF EXISTS {database} SYNC")
    # Then it says to upgrade (it said "use a new --store and rescan", which gives up its
    # history: a review), in one line
    message = str(err.value)
    assert message.endswith(f"has layout version {SCHEMA_VERSION + 1}, written by a newer "
                            f"portwatch (this one reads {SCHEMA_VERSION}): upgrade portwatch "
                            "to read it"), message
    assert "\n" not in message


def test_a_store_of_the_previous_layout_is_upgraded_in_place_and_keeps_its_history(
        shared_chdb_path: Path) -> None:
    from stream_processors.store import MIGRATIONS

    url = f"chdb://{shared_chdb_path}?database=t_{uuid.uuid4().hex[:12]}"
    # Given a store laid out by an earlier portwatch (layout 9: host_scans without its
    # coverage columns, no port_latest page index), holding a scan and a finding
    old = Store.from_url(url)
    local = Target(ip="127.0.0.1", target="127.0.0.1")
    old.insert_host_scans([HostScan("s1", local, T0, T0, 10, 1)])
    old.insert_findings([Finding(port=OpenPort(scan_id="s1", target=local, port=22,
                                               observed_at=T0),
                                 service=ServiceInfo(service="ssh", product="OpenSSH"))])
    old.command("ALTER TABLE host_scans DROP COLUMN proto, DROP COLUMN cover_first, "
                "DROP COLUMN cover_last")
    old.command("ALTER TABLE alert_outbox DROP COLUMN delivery_id")
    old.command("DROP VIEW port_latest_mv")
    old.command("DROP TABLE port_latest")
    # (host_latest without each host's latest completed scan, and its views of then)
    old.command("DROP VIEW latest_host_scans")
    old.command("DROP VIEW host_latest_mv")
    old.command("ALTER TABLE host_latest DROP COLUMN last_complete")
    old.command("CREATE MATERIALIZED VIEW host_latest_mv TO host_latest AS SELECT target, ip, "
                "(finished_at, scan_id) AS last_scan, (finished_at, toString(hostname)) AS "
                "hostname, (finished_at, toString(organization)) AS organization, "
                "(finished_at, toString(asset)) AS asset FROM host_scans")
    old.command("CREATE VIEW latest_host_scans AS SELECT target, ip, tupleElement(last_scan, 2) "
                "AS scan_id, tupleElement(last_scan, 1) AS finished_at FROM host_latest FINAL")
    old.command("DROP TABLE ports_carried")  # (layout 15)
    old.command("DROP VIEW ports_carried_mv")  # (layout 16)
    old.command("DROP TABLE carried_history")
    for view in ("risk_dirty_mv", "risk_dirty_observations_mv", "risk_dirty_carried_mv",
                 "host_scan_scores_mv"):
        old.command(f"DROP VIEW {view}")  # (layout 17)
    for table in ("risk_dirty", "scan_scores", "host_scan_scores", "risk_days",
                  "watch_claims"):  # (layout 18)
        old.command(f"DROP TABLE {table}")
    old.command("ALTER TABLE watch_runs DROP COLUMN owner")  # (layout 18)
    old.command("ALTER TABLE port_observations DROP COLUMN tls_reachable")  # (layout 19)
    old.command("ALTER TABLE port_state DROP COLUMN is_incomplete")  # (layout 20)
    old.command("ALTER TABLE port_state DROP COLUMN udp_reply")  # (layout 21)
    old.command("TRUNCATE TABLE schema_version")
    old.command("INSERT INTO schema_version VALUES (9)")
    old.close()
    assert SCHEMA_VERSION == 22 and set(range(9, 22)) <= set(MIGRATIONS)
    # When this portwatch opens it
    db = Store.from_url(url)
    try:
        # Then it is at this layout, its scan is still there, and new rows carry coverage
        assert db.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert db.query("SELECT scan_id, proto, cover_first FROM host_scans") == [
            ("s1", "", [])]
        # and the reports' page index holds the ports found before the upgrade, which
        # read as still reaching TLS (unknown then: the Ciphers report keeps their probes)
        assert db.query("SELECT port, service, scan_id, tls_reachable FROM port_latest "
                        "FINAL") == [(22, "ssh", "s1", 1)]
        assert db.query("SELECT tls_reachable FROM port_observations") == [(1,)]
        # and the alert outbox keeps each message's id (layout 13)
        assert db.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                        "AND table = 'alert_outbox' AND name = 'delivery_id'") == [
            ("delivery_id",)]
        assert [r["port"] for r in db.report("list").dicts()] == [22]
        # and each host's latest completed scan is known (layout 14), from the old rows
        assert db.query("SELECT scan_id, ports_scan_id FROM latest_host_scans") == [
            ("s1", "s1")]
        # and the ports a narrower scan left open have their table (layout 15; this old
        # store has no change state, so none)
        assert db.query("SELECT count() FROM ports_carried") == [(0,)]
        assert db.query("SELECT count() FROM carried_history") == [(0,)]
        # and the risk chart has the old scan's day (layout 17), nothing left to refresh
        assert db.query("SELECT ip, scan_id, raw_score FROM scan_scores") == [
            ("127.0.0.1", "s1", 3)]
        assert db.query("SELECT addresses, score_max FROM risk_days FINAL") == [(1, 7.2)]
        assert db.query("SELECT count() FROM risk_dirty") == [(0,)]
        # and the watch slots' claims have their table, and runs name their watcher
        # (layout 18)
        assert db.query("SELECT count() FROM watch_claims") == [(0,)]
        assert db.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                        "AND table = 'watch_runs' AND name = 'owner'") == [("owner",)]
        # and the change state says which ports' identification never finished (layout 20)
        assert db.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                        "AND table = 'port_state' AND name IN ('is_incomplete', 'udp_reply') "
                        "ORDER BY name") == [("is_incomplete",), ("udp_reply",)]
        db.insert_host_scans([HostScan("s2", Target(ip="127.0.0.1", target="127.0.0.1"),
                                       T0, T0, 1, 0, ports=(PortRange(22, 22),))])
        assert db.query("SELECT proto, cover_first, cover_last FROM host_scans "
                        "WHERE scan_id = 's2'") == [("tcp", [22], [22])]
        # and the new view follows new scans: an interrupted one is the latest scan, not
        # the one whose ports are shown
        db.insert_host_scans([HostScan("s3", local, T0 + timedelta(hours=1),
                                       T0 + timedelta(hours=1), 0, 0, status="interrupted")])
        assert db.query("SELECT scan_id, ports_scan_id FROM latest_host_scans") == [
            ("s3", "s2")]
    finally:
        db.close()


def as_layout(old: Store, layout: int, undo: str) -> None:
    """``old`` as a store of ``layout`` left it (``undo`` takes out what came after), closed."""
    old.command(undo)
    old.command("TRUNCATE TABLE schema_version")
    old.command(f"INSERT INTO schema_version VALUES ({layout})")
    old.close()


@contextlib.contextmanager
def old_store(shared_chdb_path: Path, layout: int, lost: str) -> Iterator[str]:
    """The URL of a store of ``layout`` that lost what ``lost`` drops; dropped after (by
    another database of the path: this one may no longer open)."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    url = f"chdb://{shared_chdb_path}?database={database}"
    try:
        old = Store.from_url(url)
        old.command(lost)
        as_layout(old, layout, "ALTER TABLE port_state DROP COLUMN udp_reply")
        yield url
    finally:
        with scratch_store(shared_chdb_path) as cleanup:
            cleanup.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")


def test_an_older_store_that_lost_a_table_is_refused_not_upgraded(
        shared_chdb_path: Path) -> None:
    # Given a store of layout 21 that lost its acceptances table (its file deleted)
    with old_store(shared_chdb_path, 21, "DROP TABLE accepted_risks") as url:
        # When this portwatch opens it, Then it is refused as damaged, not upgraded with
        # the table made again empty (the acceptances were silently gone: a review)
        with pytest.raises(StoreLayoutError, match=r"is damaged: it has layout 21 but no "
                                                   r"accepted_risks"):
            Store.from_url(url)


def test_an_upgrade_cut_short_between_a_views_drop_and_its_making_goes_on(
        shared_chdb_path: Path) -> None:
    # Given a store of layout 19 whose upgrade died just after its step dropped the view
    # it makes again (port_latest_mv)
    with old_store(shared_chdb_path, 19, "DROP VIEW port_latest_mv") as url, \
            Store.from_url(url) as db:
        # When this portwatch opens it, Then the upgrade goes on (it was refused as
        # damaged: a review), and the view is there again
        assert db.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert db.query("SELECT count() FROM system.tables WHERE database = "
                        "currentDatabase() AND name = 'port_latest_mv'") == [(1,)]


def test_a_layout_20_store_learns_which_ports_were_cut_short_before_the_upgrade(
        shared_chdb_path: Path) -> None:
    import asyncio

    from stream_processors.changes import PortSnapshot
    from stream_processors.history import ChangeRecorder, load_ports
    from stream_processors.stages import judged, unidentified

    database = f"t_{uuid.uuid4().hex[:12]}"
    url = f"chdb://{shared_chdb_path}?database={database}"
    local = Target(ip="127.0.0.1", target="127.0.0.1")

    def scan(db: Store, scan_id: str, when: datetime, found: list[Finding]) -> list[Any]:
        shard = HostScan(scan_id, local, when, when, 2, len(found), shard_id=f"{scan_id}:0",
                         ports=(PortRange(22, 22), PortRange(80, 80), PortRange(8080, 8080)))
        db.insert_findings(found)
        db.insert_host_scans([shard])
        recorder = ChangeRecorder(db)
        recorder.add_findings(found)
        return asyncio.run(recorder.finish([shard]))

    def port(scan_id: str, number: int, when: datetime) -> OpenPort:
        return OpenPort(scan_id=scan_id, target=local, port=number, observed_at=when)

    def ssh(scan_id: str, when: datetime) -> Finding:
        return judged(Finding(port=port(scan_id, 22, when), service=ServiceInfo(
            service="ssh", product="OpenSSH", version="9.2p1")))

    def http(scan_id: str, when: datetime, number: int = 80) -> Finding:
        return judged(Finding(port=port(scan_id, number, when), service=ServiceInfo(
            service="http", product="nginx")))

    try:
        # Given a store of layout 20 whose first scan's identification of port 22 was cut
        # short by a second Ctrl-C (stored unidentified), port 80 identified, and port
        # 8080 cut short by a killed run of the scan, then identified by its resumed run
        # (both observations under the one scan id)
        old = Store.from_url(url)
        old.insert_findings([unidentified(port("s1", 8080, T0 - timedelta(minutes=1)),
                                          "interrupted before identification")])
        scan(old, "s1", T0, [unidentified(port("s1", 22, T0), "interrupted during "
                                          "identification"), http("s1", T0),
                             http("s1", T0, 8080)])
        as_layout(old, 20, "ALTER TABLE port_state DROP COLUMN is_incomplete")
        # When this portwatch opens it
        db = Store.from_url(url)
        try:
            # Then the change state knows port 22's identification never finished, port
            # 80's and 8080's did (8080's latest observation is the full one: it was
            # marked by the earlier one, and its next version change went unsaid; a
            # review), and each port still has one row
            assert db.query("SELECT port, is_incomplete FROM port_state FINAL "
                            "ORDER BY port") == [(22, 1), (80, 0), (8080, 0)]
            ports = load_ports(db, [("127.0.0.1", "127.0.0.1")], dense=False)
            states = {p.port: p for p in ports[("127.0.0.1", "127.0.0.1")].values()}
            assert isinstance(states[22], PortSnapshot) and states[22].is_incomplete
            # And its next full identification gives no service or product event (it
            # gave both: the flag was 0 on every row of an upgraded store; a review)
            later = T0 + timedelta(days=1)
            events = scan(db, "s2", later, [ssh("s2", later), http("s2", later),
                                            http("s2", later, 8080)])
            assert [(e.kind.value, e.port) for e in events] == []
        finally:
            db.close()
    finally:
        with Store.from_url(url) as cleanup:
            cleanup.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")


def test_a_layout_21_store_says_nothing_of_udp_replies_until_it_knows_them(
        shared_chdb_path: Path) -> None:
    import asyncio

    from stream_processors.history import ChangeRecorder, load_ports

    database = f"t_{uuid.uuid4().hex[:12]}"
    url = f"chdb://{shared_chdb_path}?database={database}"
    local = Target(ip="127.0.0.1", target="127.0.0.1")

    def scan(db: Store, scan_id: str, when: datetime, silent: bool) -> list[Any]:
        # one UDP port, 20161: answering, or open|filtered (nothing came back)
        found = [Finding(port=OpenPort(
            scan_id=scan_id, target=local, port=20161, proto=Proto.UDP, observed_at=when,
            state=PortState.OPEN_FILTERED if silent else PortState.OPEN))]
        shard = HostScan(scan_id, local, when, when, 1, 1, shard_id=f"{scan_id}:udp",
                         proto=Proto.UDP, ports=(PortRange(20161, 20161),))
        db.insert_findings(found)
        db.insert_host_scans([shard])
        recorder = ChangeRecorder(db)
        recorder.add_findings(found)
        return [(e.kind.value, e.port, e.before, e.after)
                for e in asyncio.run(recorder.finish([shard]))]

    def reply(db: Store) -> list[tuple[Any, ...]]:
        return db.query("SELECT port, udp_reply FROM port_state FINAL")

    try:
        # Given a store of layout 21 whose UDP port answered (port_state kept no word of it)
        old = Store.from_url(url)
        assert [k for k, *_ in scan(old, "s1", T0, silent=False)] == ["opened"]
        # (its host's digest as layout 21 made it: no UDP port's word in it)
        old.command("ALTER TABLE host_state UPDATE fingerprint = concat('21:', fingerprint) "
                    "WHERE 1", settings={"mutations_sync": 1})
        as_layout(old, 21, "ALTER TABLE port_state DROP COLUMN udp_reply")
        # When this portwatch opens it
        db = Store.from_url(url)
        try:
            # Then the port's word reads unknown
            assert reply(db) == [(20161, 0)]
            (state,) = load_ports(db, [("127.0.0.1", "127.0.0.1")], dense=False)[
                ("127.0.0.1", "127.0.0.1")].values()
            assert state.is_reply_unknown and not state.is_unconfirmed
            # And its next scan, answering still, says nothing and stores its word (the
            # host's digest moved with layout 22: it was on the fast path, its word
            # unknown for good, and its first silence went unsaid; a review)
            day = timedelta(days=1)
            assert scan(db, "s2", T0 + day, silent=False) == []
            assert reply(db) == [(20161, 1)]
            # And when it falls silent, its risk is lowered, once
            assert scan(db, "s3", T0 + 2 * day, silent=True) == [
                ("risk_lowered", 20161, "yellow, answers",
                 "yellow, open|filtered: no UDP reply")]
            assert reply(db) == [(20161, 2)]
            assert scan(db, "s4", T0 + 3 * day, silent=True) == []
            # and when it answers again, raised
            assert scan(db, "s5", T0 + 4 * day, silent=False) == [
                ("risk_raised", 20161, "yellow, open|filtered: no UDP reply",
                 "yellow, answers")]
        finally:
            db.close()
    finally:
        with Store.from_url(url) as cleanup:
            cleanup.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")


@pytest.mark.parametrize(("name", "first"), [
    ("summary", ("target", "ip", "hostname", "asset", "organization", "open_ports")),
    ("list", ("target", "ip", "hostname", "asset", "organization", "port", "proto")),
    ("products", ("product", "version", "services", "instances", "targets", "colors")),
    ("ciphers", ("target", "ip", "port", "status", "error", "versions", "grade")),
])
def test_an_empty_report_keeps_its_columns(store: Store, name: str,
                                           first: tuple[str, ...]) -> None:
    # Given an empty store (chdb answers no rows with no block, so no column names)
    from portwatch.render import to_csv

    report = store.report(name)
    # Then the report still names its columns, and its CSV is that header alone
    assert report.rows == []
    assert report.columns[:len(first)] == first
    assert to_csv(report) == ",".join(report.columns) + "\r\n"


# -- inserts: each table's column types described once --------------------------------

CLAIM_COLUMNS = ["rule", "channel", "event_id", "attempt", "owner", "claimed_at"]


def _statements(store: Store) -> dict[str, int]:
    return {str(k): int(v) for k, v in store.query(
        "SELECT event, value FROM system.events WHERE event IN ('Query', 'InsertQuery')")}


def _claim(i: int) -> list[list[Any]]:
    return [["rule", "hook", f"event-{i}", 1, "owner", datetime.now(UTC)]]


def test_an_insert_is_one_statement_once_its_table_was_described(store: Store) -> None:
    store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(0))  # described here
    before = _statements(store)
    # When five more inserts go to the same table and columns
    for i in range(1, 6):
        store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(i))
    after = _statements(store)
    # Then five statements ran for them (and the one that counts): no DESCRIBE each
    assert after["InsertQuery"] - before["InsertQuery"] == 5
    assert after["Query"] - before["Query"] - 5 <= 1
    assert store.query("SELECT count() FROM alert_claims")[0][0] == 6


def test_a_table_changed_after_its_description_takes_inserts_into_new_columns(
        store: Store) -> None:
    store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(0))
    # Given a column added through the store after its types were described
    store.command("ALTER TABLE alert_claims ADD COLUMN note String DEFAULT ''")
    try:
        store.insert_rows("alert_claims", [*CLAIM_COLUMNS, "note"], [[*_claim(1)[0], "n"]])
        assert store.query("SELECT note FROM alert_claims WHERE event_id = 'event-1'") == [("n",)]
        # And an insert into a column the table lacks is one clear error
        with pytest.raises(StoreError, match="table alert_claims has no column nope"):
            store.insert_rows("alert_claims", [*CLAIM_COLUMNS, "nope"], [[*_claim(2)[0], 1]])
    finally:
        store.command("ALTER TABLE alert_claims DROP COLUMN note")
    # Then, dropped again, the old columns take inserts as before
    store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(3))
    assert store.query("SELECT count() FROM alert_claims WHERE event_id = 'event-3'") == [(1,)]


def test_a_failed_insert_forgets_the_description(store: Store) -> None:
    store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(0))
    # Given the table replaced behind the store's back, without one of its columns
    store._client.command("DROP TABLE alert_claims SYNC")
    store._client.command("CREATE TABLE alert_claims (rule String, channel String, "
                          "event_id String, attempt UInt16, owner String) "
                          "ENGINE = MergeTree ORDER BY (rule, channel, event_id)")
    # When an insert with the described columns fails there (the engine's own error)
    with pytest.raises(Exception) as first:  # noqa: PT011 - the driver's own type
        store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(1))
    assert not isinstance(first.value, StoreError)
    # Then the next insert describes the table again, and says what is missing
    with pytest.raises(StoreError, match="table alert_claims has no column claimed_at"):
        store.insert_rows("alert_claims", CLAIM_COLUMNS, _claim(2))
    store.insert_rows("alert_claims", CLAIM_COLUMNS[:5], [_claim(3)[0][:5]])
    assert store.query("SELECT event_id FROM alert_claims") == [("event-3",)]


def _url(store: Store) -> str:
    return f"chdb://{store.location.path}?database={store.location.database}"


def test_a_layout_18_store_of_either_gap_is_repaired_by_the_upgrade(store: Store) -> None:
    from portwatch.web.service import ReportService

    # Given a store with a scan and its risk-chart rows
    local = Target(ip="127.0.0.1", target="127.0.0.1")
    store.insert_findings([Finding(port=OpenPort(scan_id="s1", target=local, port=22,
                                                 observed_at=T0),
                                   service=ServiceInfo(service="ssh"),
                                   risk_color=RiskColor.GREEN)])
    store.insert_host_scans([HostScan("s1", local, T0, T0, 10, 1)])
    from stream_processors.risk_days import refresh_risk_days
    refresh_risk_days(store)
    # And the two gaps stores of that time had at layout 18: the view of host scans
    # without ports_seen_after (written at layout 14 before it gained the column), and
    # host_scan_scores empty beside scan_scores (written at layout 17 before it came)
    store.command("DROP VIEW latest_host_scans")
    store.command("CREATE VIEW latest_host_scans AS SELECT target, ip, "
                  "tupleElement(last_scan, 2) AS scan_id, tupleElement(last_scan, 1) AS "
                  "finished_at, tupleElement(hostname, 2) AS hostname, "
                  "tupleElement(organization, 2) AS organization, tupleElement(asset, 2) AS "
                  "asset, tupleElement(last_scan, 2) AS ports_scan_id FROM host_latest FINAL")
    store.command("TRUNCATE TABLE host_scan_scores")
    store.command("TRUNCATE TABLE schema_version")
    store.command("INSERT INTO schema_version VALUES (18)")
    with pytest.raises(StoreError, match="ports_seen_after"):
        store.report("list")
    # When this portwatch opens it
    with Store.from_url(_url(store)) as upgraded:
        # Then the reports read it again, and a target's chart has its rows
        assert [r["port"] for r in upgraded.report("list").dicts()] == [22]
        assert upgraded.query("SELECT ip, scan_id FROM host_scan_scores FINAL") == [
            ("127.0.0.1", "s1")]
        assert upgraded.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        # (the page's per-target chart reads host_scan_scores)
        points = ReportService(upgraded, use_cache=False).risk_history({"target": "127.0.0.1"})
        assert len(points) == 1


def test_a_new_store_whose_creation_was_cut_short_is_completed_when_opened(
        store: Store) -> None:
    # Given a store whose first creation stopped half-way (killed, an engine error):
    # the version table there and empty, some tables made, others not yet
    store.command("DROP TABLE risk_days")
    store.command("DROP TABLE watch_claims")
    store.command("TRUNCATE TABLE schema_version")
    # When it is opened again, even by a reader
    with Store.from_url(_url(store), create=False) as reopened:
        # Then it is completed, at this layout, and usable
        assert reopened.query("SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
        assert reopened.query("SELECT count() FROM risk_days") == [(0,)]
        assert reopened.report("summary").rows == []


def test_an_engine_error_in_a_statement_or_an_upgrade_is_one_line(store: Store) -> None:
    # A statement the engine refuses: one StoreError line, the store named
    with pytest.raises(StoreError) as refused:
        store.command("ALTER TABLE findings DELETE WHERE no_such_column = 1")
    assert str(refused.value).startswith(f"the store at {store.location.where} refused")
    assert "\n" not in str(refused.value)
    # An upgrade step the engine refuses (a table it fills is detached; at layout 17,
    # whose stores of one time lacked it: not refused as damage before the upgrade): the
    # same
    store.command("TRUNCATE TABLE schema_version")
    store.command("INSERT INTO schema_version VALUES (17)")
    store.command("DETACH TABLE host_scan_scores")
    try:
        with pytest.raises(StoreError) as failed:
            Store.from_url(_url(store))
        assert str(failed.value).startswith("cannot create or upgrade the store at ")
        assert "\n" not in str(failed.value)
    finally:
        store.command("ATTACH TABLE host_scan_scores")


def test_a_delete_waits_for_its_own_mutation_and_says_what_blocks_it(store: Store) -> None:
    # Given a table with a mutation of someone else's that fails (left pending)
    store.command("CREATE TABLE mut_probe (a UInt32) ENGINE = MergeTree ORDER BY a")
    store.command("INSERT INTO mut_probe SELECT number FROM numbers(10)")
    store.mutate("mut_probe", "ALTER TABLE mut_probe DELETE WHERE a = 1")
    assert store.query("SELECT count() FROM mut_probe") == [(9,)]  # ours, done
    store.command("ALTER TABLE mut_probe DELETE WHERE throwIf(a = 5, 'not ours') = 0",
                  settings={"mutations_sync": 0})
    # When ours comes behind it (the engine applies them in order: ours would wait for
    # ever; before, this blamed and killed every mutation of the table)
    with pytest.raises(StoreError, match=r"could not rewrite mut_probe \(the delete was "
                                         r"stopped.*an earlier delete on it fails: .*not ours"):
        store.mutate("mut_probe", "ALTER TABLE mut_probe DELETE WHERE a = 2", wait=30)
    # Then ours alone was stopped: the other is still there, for whoever made it
    left = store.query("SELECT command FROM system.mutations WHERE database = "
                       "currentDatabase() AND table = 'mut_probe' AND NOT is_done")
    assert [str(c) for (c,) in left] == ["(DELETE WHERE throwIf(a = 5, 'not ours') = 0)"]


def test_a_server_behind_a_proxy_is_not_pinged_directly(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    # Given HTTP_PROXY set (the driver goes through it) and a server address that only
    # the proxy could reach: a loopback port where nothing listens stands for it
    with loopback.listen(loopback.silent(hold_seconds=5)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setattr(store_module, "PING_TIMEOUT", 1.0)
        with pytest.raises(StoreError) as err:
            Store.from_url("clickhouse://default@127.0.0.1:1/db")
    # Then the error is the driver's, through the proxy (a silent one: no answer), not
    # the ping's "connection refused" from going around it (a review)
    assert "connection refused" not in str(err.value)
    assert "\n" not in str(err.value)


def test_the_readme_lists_every_reports_json_keys_in_order(store: Store) -> None:
    # Given each report's columns as the engine describes them (its JSON keys)
    import re

    from schemas import REPORTS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in REPORTS:
        columns = list(store.report(name, {}).columns)
        # Then the README's list for it is exactly those, in order (a review found them
        # undocumented; the list must not drift from the SQL)
        match = re.search(rf"^- \*\*{name}\*\*: (.+?)(?=\n- \*\*|\n\n)", readme,
                          re.MULTILINE | re.DOTALL)
        assert match, name
        listed = [k.strip() for k in match.group(1).replace("\n", " ").split(",")]
        assert listed == columns, name


def test_a_server_that_answers_its_ping_and_then_nothing_is_given_up_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading

    # Given a loopback HTTP server that says "Ok." to /ping and never answers a statement
    # (a fake ClickHouse: a server that hangs mid-statement cannot be made on demand)
    release = threading.Event()

    class Hangs(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/ping":
                self.send_response(200)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"Ok.\n")
                return
            release.wait(30)

        do_POST = do_GET  # noqa: N815

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hangs)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(store_module, "STATEMENT_TIMEOUT", 1)
    try:
        # When the store is opened on it
        with pytest.raises(StoreError) as err:
            Store.from_url(f"clickhouse://127.0.0.1:{server.server_address[1]}/db")
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    # Then it gives up after the statement timeout, in one line (it waited the driver's
    # 300 s on every command: a review)
    assert str(err.value).startswith(
        f"cannot open the store at 127.0.0.1:{server.server_address[1]}: "), err.value
    assert "timed out" in str(err.value).lower() and "\n" not in str(err.value)
