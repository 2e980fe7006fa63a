"""A scan that could not test TLS keeps the colour the port's last completed test gave
(real chdb store, the report SQL). Before, a --no-tls rescan or a probe that timed out
showed a port yellow for its self-signed certificate green in the List, the Summary and
Products, while the Ciphers report and the change log still had it yellow (a review,
2026-12-06)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.risk import assess

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
HTTPS = "web server over TLS; meant to be public"  # the catalogue's reason for https
WEB = Target(ip="127.0.0.7", target="127.0.0.7")
SELF_SIGNED = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                        reached_via="direct", leaf_sha256="ab" * 32, days_to_expiry=300,
                        is_chain_trusted=False, trust_error="self-signed")


def scan(store: Any, scan_id: str, day: int, tls: TlsResult, product: str = "nginx") -> None:
    at = T0 + timedelta(days=day)
    finding = assess(Finding(
        port=OpenPort(scan_id=scan_id, target=WEB, port=443, observed_at=at),
        service=ServiceInfo(service="https", product=product, version="1.24.0", is_tls=True),
        tls=tls))
    store.insert_findings([finding])
    store.insert_host_scans([HostScan(scan_id, WEB, at, at + timedelta(minutes=1), 65535, 1)])


def port_443(store: Any) -> tuple[str, str]:
    (row,) = store.report("list").dicts()
    return row["risk_color"], row["risk_reason"]


def test_a_rescan_without_tls_keeps_the_last_tested_colour_in_every_report(store: Any) -> None:
    # Given a port yellow for its self-signed certificate
    scan(store, "s1", 0, SELF_SIGNED)
    assert port_443(store) == ("yellow", f"{HTTPS}; untrusted certificate: self-signed")
    # When a --no-tls scan sees it again, unchanged, and then another
    scan(store, "s2", 1, TlsResult())
    scan(store, "s3", 2, TlsResult())
    # Then it is still yellow, saying why, in the List, the Summary and Products
    assert port_443(store) == ("yellow", f"{HTTPS}; untrusted certificate: self-signed "
                                         "(TLS as last tested: not tested this scan)")
    (summary,) = store.report("summary").dicts()
    assert (summary["yellow"], summary["green"]) == (1, 0)
    (product,) = store.report("products").dicts()
    assert "yellow" in str(product["colors"]) and "green" not in str(product["colors"])


def test_a_probe_that_could_not_test_keeps_it_and_a_completed_test_renews_it(
        store: Any) -> None:
    scan(store, "s1", 0, SELF_SIGNED)
    # When the next probe times out
    scan(store, "s2", 1, TlsResult(status=ProbeStatus.ERROR, reached_via="direct",
                                   error="could not test: handshake stalled"))
    assert port_443(store) == ("yellow", f"{HTTPS}; untrusted certificate: self-signed "
                                         "(TLS as last tested: this scan could not test it)")
    # And when a later test finds a trusted certificate, the port is green again
    trusted = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                        reached_via="direct", leaf_sha256="cd" * 32, days_to_expiry=300,
                        is_chain_trusted=True)
    scan(store, "s3", 2, trusted)
    assert port_443(store) == ("green", HTTPS)
    # (and a --no-tls scan after it has nothing higher to keep)
    scan(store, "s4", 3, TlsResult())
    assert port_443(store) == ("green", HTTPS)


def test_what_this_scan_saw_change_is_its_own_colour(store: Any) -> None:
    scan(store, "s1", 0, SELF_SIGNED)
    # When a --no-tls scan finds another product on the port (it could lower the colour)
    scan(store, "s2", 1, TlsResult(), product="Apache httpd")
    # Then the colour is this scan's
    assert port_443(store) == ("green", HTTPS)
    # And a port never tested keeps nothing (no completed probe to keep)
    other = Target(ip="127.0.0.8", target="127.0.0.8")
    store.insert_findings([assess(Finding(
        port=OpenPort(scan_id="s1", target=other, port=8443, observed_at=T0),
        service=ServiceInfo(service="https", is_tls=True), risk_color=RiskColor.GREEN))])
    assert [r["risk_color"] for r in store.report("list").dicts() if r["port"] == 8443] == [
        "green"]


ERROR = TlsResult(status=ProbeStatus.ERROR, reached_via="direct",
                  error="could not test: handshake stalled")


def test_scans_in_a_row_that_could_not_test_all_keep_it(store: Any) -> None:
    # Given a port yellow for its self-signed certificate, then two probes in a row that
    # time out and a --no-tls scan (a review: the second error found its latest probe an
    # error, no completed one, and stored green)
    scan(store, "s1", 0, SELF_SIGNED)
    colours = []
    for day, (scan_id, tls) in enumerate((("s2", ERROR), ("s3", ERROR), ("s4", TlsResult())),
                                         start=1):
        scan(store, scan_id, day, tls)
        colours.append(port_443(store)[0])
    # Then every one keeps yellow, and the Summary agrees
    assert colours == ["yellow", "yellow", "yellow"]
    assert store.report("summary").dicts()[0]["yellow"] == 1


def test_the_same_finding_stored_twice_is_the_same_rows(store: Any) -> None:
    # Given a port yellow for its certificate, and a later scan whose probe errored
    scan(store, "s1", 0, SELF_SIGNED)
    at = T0 + timedelta(days=1)
    errored = assess(Finding(
        port=OpenPort(scan_id="s2", target=WEB, port=443, observed_at=at),
        service=ServiceInfo(service="https", product="nginx", version="1.24.0", is_tls=True),
        tls=ERROR))
    # When that finding is stored twice (a retried batch, a replayed partition: its error
    # probe is stored before its observation, and the second lookup read it)
    store.insert_findings([errored])
    store.insert_host_scans([HostScan("s2", WEB, at, at + timedelta(minutes=1), 65535, 1)])
    first = store.query("SELECT risk_color, risk_reason FROM port_observations FINAL "
                        "WHERE scan_id = 's2'")
    store.insert_findings([errored])
    # Then its row is the same, and the List, its colour filter and the Summary agree
    assert store.query("SELECT risk_color, risk_reason FROM port_observations FINAL "
                       "WHERE scan_id = 's2'") == first
    assert first[0][0] == "yellow"
    assert port_443(store)[0] == "yellow"
    assert [r["port"] for r in store.report("list", {"color": "yellow"}).dicts()] == [443]
    assert store.report("summary").dicts()[0]["yellow"] == 1


def test_ports_read_in_several_bounded_reads_each_keep_theirs(
        store: Any, monkeypatch: Any) -> None:
    import stream_processors.store as store_module

    # Given two self-signed ports, their verdicts read one port per statement
    monkeypatch.setattr(store_module, "VERDICT_KEYS_PER_READ", 1)

    def both(scan_id: str, day: int, tls: TlsResult) -> None:
        at = T0 + timedelta(days=day)
        store.insert_findings([assess(Finding(
            port=OpenPort(scan_id=scan_id, target=WEB, port=port, observed_at=at),
            service=ServiceInfo(service="https", product="nginx", is_tls=True), tls=tls))
            for port in (443, 8443)])

    both("s1", 0, SELF_SIGNED)
    # When a --no-tls scan sees both again
    both("s2", 1, TlsResult())
    # Then both keep yellow
    assert store.query("SELECT port, risk_color FROM port_observations FINAL "
                       "WHERE scan_id = 's2' ORDER BY port") == [(443, "yellow"),
                                                                 (8443, "yellow")]
