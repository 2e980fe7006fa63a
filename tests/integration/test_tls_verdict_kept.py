"""A scan that could not test TLS keeps the colour the port's change state holds from its
last completed test, as the change log does (real chdb store, the real change recorder,
the report SQL). Before, a --no-tls rescan or a probe that timed out showed a port yellow
for its self-signed certificate green in the List, the Summary and Products, while the
Ciphers report and the change log still had it yellow (reviews, 2026-12-06)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    ProbeStatus,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.history import ChangeRecorder
from stream_processors.risk import assess

T0 = datetime(2026, 3, 1, 10, tzinfo=UTC)
HTTPS = "web server over TLS; meant to be public"  # the catalogue's reason for https
WEB = Target(ip="127.0.0.7", target="127.0.0.7")
SELF_SIGNED = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                        reached_via="direct", leaf_sha256="ab" * 32, days_to_expiry=300,
                        is_chain_trusted=False, trust_error="self-signed")
TRUSTED = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                    reached_via="direct", leaf_sha256="cd" * 32, days_to_expiry=300,
                    is_chain_trusted=True)
ERROR = TlsResult(status=ProbeStatus.ERROR, reached_via="direct",
                  error="could not test: handshake stalled")
NOT_RUN = TlsResult()  # --no-tls
KEPT_NOT_RUN = f"{HTTPS}; yellow when TLS was last tested (not tested)"
KEPT_ERROR = f"{HTTPS}; yellow when TLS was last tested (this scan could not test it)"


def finding(scan_id: str, day: int, tls: TlsResult, *, port: int = 443,
            product: str = "nginx") -> Finding:
    return assess(Finding(
        port=OpenPort(scan_id=scan_id, target=WEB, port=port,
                      observed_at=T0 + timedelta(days=day)),
        service=ServiceInfo(service="https", product=product, version="1.24.0", is_tls=True),
        tls=tls))


def compared(store: Any, found: list[Finding]) -> list[str]:
    """Store ``found`` (one or more scans, as a sink's batch) and compare each scan with
    the real change recorder, as both transports do; the change events' kinds."""
    shards = []
    for scan_id in dict.fromkeys(f.port.scan_id for f in found):
        at = max(f.port.observed_at for f in found if f.port.scan_id == scan_id)
        shards.append(HostScan(scan_id, WEB, at, at + timedelta(minutes=1), 65535,
                               sum(f.port.scan_id == scan_id for f in found),
                               shard_id=scan_id, ports=(PortRange(1, 65535),)))
    store.insert_findings(found)
    store.insert_host_scans(shards)
    recorder = ChangeRecorder(store)
    recorder.add_findings(found)
    return [e.kind.value for e in asyncio.run(recorder.finish(shards))]


def port_443(store: Any) -> tuple[str, str]:
    (row,) = [r for r in store.report("list").dicts() if r["port"] == 443]
    return row["risk_color"], row["risk_reason"]


def logged_color(store: Any) -> str:
    """The colour the change state holds for the port (what the change log compares)."""
    return str(store.query("SELECT risk_color FROM port_state FINAL WHERE port = 443")[0][0])


def test_a_rescan_without_tls_keeps_the_last_tested_colour_in_every_report(store: Any) -> None:
    # Given a port yellow for its self-signed certificate
    compared(store, [finding("s1", 0, SELF_SIGNED)])
    assert port_443(store) == ("yellow", f"{HTTPS}; untrusted certificate: self-signed")
    # When --no-tls scans see it again, unchanged
    assert compared(store, [finding("s2", 1, NOT_RUN)]) == []
    assert compared(store, [finding("s3", 2, NOT_RUN)]) == []
    # Then it is still yellow, saying why, in the List, the Summary and Products, as the
    # change log holds it
    assert port_443(store) == ("yellow", KEPT_NOT_RUN)
    assert logged_color(store) == "yellow"
    (summary,) = store.report("summary").dicts()
    assert (summary["yellow"], summary["green"]) == (1, 0)
    (product,) = store.report("products").dicts()
    assert "yellow" in str(product["colors"]) and "green" not in str(product["colors"])


def test_probes_that_could_not_test_keep_it_and_a_completed_test_renews_it(
        store: Any) -> None:
    compared(store, [finding("s1", 0, SELF_SIGNED)])
    # When two probes in a row time out, then a --no-tls scan (a review: the second error
    # found its latest probe an error, no completed one, and stored green)
    for day, (scan_id, tls) in enumerate((("s2", ERROR), ("s3", ERROR), ("s4", NOT_RUN)),
                                         start=1):
        assert compared(store, [finding(scan_id, day, tls)]) == []
        assert port_443(store)[0] == logged_color(store) == "yellow"
    # And when a later test finds a trusted certificate, the port is green again, said
    assert compared(store, [finding("s5", 5, TRUSTED)]) == ["risk_lowered"]
    assert port_443(store) == ("green", HTTPS)
    # (and a --no-tls scan after it has nothing higher to keep)
    compared(store, [finding("s6", 6, NOT_RUN)])
    assert port_443(store) == ("green", HTTPS) and logged_color(store) == "green"


def test_what_this_scan_saw_change_is_its_own_colour(store: Any) -> None:
    compared(store, [finding("s1", 0, SELF_SIGNED)])
    # When a --no-tls scan finds another product on the port (it could lower the colour)
    events = compared(store, [finding("s2", 1, NOT_RUN, product="Apache httpd")])
    # Then the colour is this scan's, in the reports and the change log alike
    assert port_443(store) == ("green", HTTPS)
    assert logged_color(store) == "green" and "risk_lowered" in events


def test_the_same_finding_stored_twice_is_the_same_rows(store: Any) -> None:
    # Given a port yellow for its certificate, and a later scan whose probe errored
    compared(store, [finding("s1", 0, SELF_SIGNED)])
    errored = finding("s2", 1, ERROR)
    compared(store, [errored])
    first = store.query("SELECT risk_color, risk_reason FROM port_observations FINAL "
                        "WHERE scan_id = 's2'")
    # When that finding is stored again (a retried batch, a replayed partition)
    store.insert_findings([errored])
    # Then its row is the same, and the List, its colour filter and the Summary agree
    assert store.query("SELECT risk_color, risk_reason FROM port_observations FINAL "
                       "WHERE scan_id = 's2'") == first == [("yellow", KEPT_ERROR)]
    assert [r["port"] for r in store.report("list", {"color": "yellow"}).dicts()] == [443]
    assert store.report("summary").dicts()[0]["yellow"] == 1


def test_two_scans_of_a_port_in_one_batch_chain_as_the_change_log_does(store: Any) -> None:
    # Given a sink batch holding a host's backlog: its completed probe, then a scan whose
    # probe errored (a review: the second was stored green, the first not stored yet)
    compared(store, [finding("b1", 0, SELF_SIGNED), finding("b2", 1, ERROR)])
    # Then the later scan keeps yellow, in the reports and the change log alike
    assert store.query("SELECT scan_id, risk_color FROM port_observations FINAL "
                       "ORDER BY scan_id") == [("b1", "yellow"), ("b2", "yellow")]
    assert port_443(store)[0] == logged_color(store) == "yellow"


def test_prune_keeps_what_the_next_scan_keeps(store: Any) -> None:
    from stream_processors.change_log import prune

    # Given a yellow port, then a --no-tls scan, then every raw row of both pruned but
    # the latest scan's (a review: the kept colour was read from the raw rows prune
    # removes, and the next untested scan stored green)
    compared(store, [finding("s1", 0, SELF_SIGNED)])
    compared(store, [finding("s2", 1, NOT_RUN)])
    prune(store, timedelta(hours=1), now=T0 + timedelta(days=2))
    # When another --no-tls scan sees it, and one whose probe errors
    compared(store, [finding("s3", 3, NOT_RUN)])
    assert port_443(store)[0] == "yellow"
    compared(store, [finding("s4", 4, ERROR)])
    # Then it stays yellow (the change state, never pruned, holds it)
    assert port_443(store) == ("yellow", KEPT_ERROR) and logged_color(store) == "yellow"


def test_ports_read_in_several_bounded_reads_each_keep_theirs(
        store: Any, monkeypatch: Any) -> None:
    import stream_processors.store as store_module

    # Given two self-signed ports, their state read one port per statement
    monkeypatch.setattr(store_module, "VERDICT_KEYS_PER_READ", 1)
    compared(store, [finding("s1", 0, SELF_SIGNED, port=p) for p in (443, 8443)])
    # When a --no-tls scan sees both again
    compared(store, [finding("s2", 1, NOT_RUN, port=p) for p in (443, 8443)])
    # Then both keep yellow
    assert store.query("SELECT port, risk_color FROM port_observations FINAL "
                       "WHERE scan_id = 's2' ORDER BY port") == [(443, "yellow"),
                                                                 (8443, "yellow")]
