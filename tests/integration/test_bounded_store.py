"""Issue 11, defect 1, against the real chdb store: every network-derived value is
bounded before its typed column, and a sink tells a record the store refuses (isolate
it, dead-letter it with the reason, store the rest) from a store that is briefly
unusable (retry the same rows until it works)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import (
    Certificate,
    CipherSuite,
    Finding,
    HostScan,
    ProbeStatus,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.rejects import is_data_error
from stream_processors.sink import StoreSink
from stream_processors.transports.faust_agents import SinkAgentStats
from tests.unit.test_agents import Sent, _until, finding, run_sink_agent

HUGE = 10**30


def _hostile_finding() -> Finding:
    suite = CipherSuite(tls_version="TLSv1.2", iana_name="TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
                        kex_group="DH", kex_bits=72_000, preference=HUGE)
    cert = Certificate(subject="CN=" + "a" * 100_000, sans=tuple(f"n{i}" for i in range(5000)),
                       key_bits=-5, chain_position=300)
    tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2",) * 3000,
                    suites=(suite,), certificates=(cert,))
    base = finding("127.0.0.1", 443)
    far_future = datetime(9999, 12, 31, tzinfo=UTC)
    return base.with_(
        port=replace(base.port, observed_at=far_future),
        service=ServiceInfo(service="https", banner="B" * 1_000_000, confidence=HUGE,
                            product="\ud800lone surrogate", is_tls=True),
        tls=tls)


def test_every_network_value_is_saturated_or_capped_before_its_column(store: Any) -> None:
    # Given a finding whose values overflow every column kind: UInt16 (72,000-bit DH,
    # 10**30 preference), UInt8 (confidence, chain position), strings of megabytes, an
    # array of 5,000 SANs, a year-9999 timestamp and a lone surrogate
    hostile = _hostile_finding()
    # When the store inserts it (before: struct.error, the batch and the scan lost)
    assert store.insert_findings([hostile]) == 1
    # Then every value is stored, bounded for its column
    assert store.query("SELECT kex_bits, preference FROM tls_ciphers") == [(65535, 65535)]
    (confidence, banner_len, product, observed), = store.query(
        "SELECT confidence, length(banner), product, toYear(observed_at) "
        "FROM port_observations")
    assert (confidence, banner_len, observed) == (255, 1024, 2299)
    assert product.endswith("lone surrogate")
    (position, subject_len, sans, key_bits), = store.query(
        "SELECT chain_position, length(subject), length(sans), key_bits FROM certificates")
    assert (position, subject_len, sans, key_bits) == (255, 4096, 1000, 0)
    assert store.query("SELECT length(versions) FROM tls_probes") == [(1000,)]


def test_host_scan_counts_saturate(store: Any) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    scan = HostScan(scan_id="s", target=Target("127.0.0.1", "t"), started_at=now,
                    finished_at=now, ports_scanned=HUGE, open_ports=-1, note="n" * 10**5)
    store.insert_host_scans([scan])
    assert store.query("SELECT ports_scanned, open_ports, length(note) FROM host_scans") == [
        (2**32 - 1, 0, 4096)]


def _refuse_port(store: Any, port: int) -> None:
    """A real data fault: the store itself refuses rows for ``port`` (a CHECK)."""
    store._client.command(
        f"ALTER TABLE port_observations ADD CONSTRAINT refuse_{port} CHECK port != {port}")


def test_the_sink_isolates_a_refused_record_and_stores_the_rest(store: Any) -> None:
    # Given a store that refuses any observation of port 666 (VIOLATED_CONSTRAINT)
    _refuse_port(store, 666)
    sink = StoreSink(store, retry_initial=0.01)
    batch = [finding("127.0.0.1", p) for p in (22, 80, 666, 443, 8080)]
    # When the sink writes one batch holding it
    asyncio.run(sink.write(batch, []))
    # Then the four others are stored, and the refused one is handed back with the reason
    assert sorted(r[0] for r in store.query("SELECT port FROM port_observations")) == [
        22, 80, 443, 8080]
    rejected = sink.take_rejected()
    assert [(r.port.port) for r, _ in rejected] == [666]  # type: ignore[attr-defined]
    assert "VIOLATED_CONSTRAINT" in rejected[0][1]
    assert (sink.stats.findings, sink.stats.rejected) == (4, 1)
    assert sink.take_rejected() == []


def test_a_record_refused_in_its_tls_rows_leaves_no_observation(store: Any) -> None:
    # Given a store that refuses TLS probe rows of port 4443 (a real CHECK), and a batch
    # of TLS findings holding one
    store._client.command(
        "ALTER TABLE tls_probes ADD CONSTRAINT refuse_4443 CHECK port != 4443")
    tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                    suites=(CipherSuite("TLSv1.3", "TLS_AES_128_GCM_SHA256",
                                        strength="strong"),))
    batch = [replace(finding("127.0.0.1", p), tls=tls) for p in (443, 4443, 8443)]
    sink = StoreSink(store, retry_initial=0.01)
    # When the sink writes it
    asyncio.run(sink.write(batch, []))
    # Then the refused record is reported and shows nowhere: no observation of it (the
    # reports and change detection read those), while the others are whole
    assert [r.port.port for r, _ in sink.take_rejected()] == [4443]  # type: ignore[attr-defined]
    assert sorted(r[0] for r in store.query("SELECT port FROM port_observations")) == [
        443, 8443]
    assert sorted(r[0] for r in store.query("SELECT port FROM tls_probes")) == [443, 8443]
    assert sorted(r["port"] for r in store.report("list").dicts()) == [443, 8443]


def test_a_store_briefly_unusable_is_retried_not_dead_lettered(store: Any) -> None:
    # Given the findings table detached (a real server-side fault: UNKNOWN_TABLE) and
    # re-attached once the sink has failed twice
    sink = StoreSink(store, retry_initial=0.05, retry_max=0.05)
    store._client.command("DETACH TABLE port_observations")

    def reattach() -> None:
        while sink.stats.insert_errors < 2:
            time.sleep(0.01)
        store._client.command("ATTACH TABLE port_observations")

    helper = threading.Thread(target=reattach)
    helper.start()
    # When the sink writes a batch
    asyncio.run(sink.write([finding("127.0.0.1", 22)], []))
    helper.join()
    # Then the same rows were retried until stored: nothing rejected, nothing lost
    assert sink.stats.insert_errors >= 2
    assert "UNKNOWN_TABLE" in sink.stats.last_error or "doesn't exist" in sink.stats.last_error
    assert sink.take_rejected() == []
    assert store.query("SELECT port FROM port_observations") == [(22,)]


def test_the_sink_agent_dead_letters_what_the_store_refuses(store: Any) -> None:
    # Given the sink agent over a findings topic, and a store that refuses port 666
    _refuse_port(store, 666)
    dead = Sent()
    stats = SinkAgentStats()
    sink = StoreSink(store, retry_initial=0.01)
    from producers.publish import encode_records

    async def feed(ctx_agent: Any) -> None:
        # When a message of three findings arrives, one of them refused by the store
        value = encode_records([finding("127.0.0.1", p) for p in (22, 666, 80)])
        await ctx_agent.put(value, key=b"127.0.0.1")
        await _until(lambda: stats.messages == 1)

    run_sink_agent(sink, dead, stats, feed)
    # Then the two others are stored, the message is acknowledged (the stream goes on)
    assert sorted(r[0] for r in store.query("SELECT port FROM port_observations")) == [22, 80]
    # And the refused record is a dead letter with its reason and its own JSON
    (_, value), = dead.messages
    envelope = json.loads(value)
    assert envelope["stage"] == "sink-store" and envelope["source_topic"] == "findings"
    assert "VIOLATED_CONSTRAINT" in envelope["reason"]
    assert json.loads(envelope["value"])["port"]["port"] == 666


def test_a_sink_stopped_mid_write_dead_letters_nothing_its_replay_does(store: Any) -> None:
    # Given a store that cannot be written (a table detached: a store error, retried),
    # and a message holding a finding and a poison line
    from producers.publish import encode_records

    store._client.command("DETACH TABLE port_observations")
    dead = Sent()
    stats = SinkAgentStats()
    sink = StoreSink(store, retry_initial=0.05)

    async def feed(ctx_agent: Any) -> None:
        await ctx_agent.put(encode_records([finding("127.0.0.1", 22)]) + b"\nnot json",
                            key=b"127.0.0.1")
        await _until(lambda: sink.stats.insert_errors >= 1)
        # When the sink is stopped while it retries
        sink.stop()
        await asyncio.sleep(0.3)

    try:
        run_sink_agent(sink, dead, stats, feed)
    finally:
        store._client.command("ATTACH TABLE port_observations")
    # Then nothing was acknowledged and nothing dead-lettered: the replay of the message
    # sends its poison line once (before, once here and once again on the replay)
    assert (stats.messages, stats.poison, dead.messages) == (0, 0, [])


def test_data_errors_and_store_errors_are_told_apart() -> None:
    import struct

    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    assert is_data_error(struct.error("ushort format requires 0 <= number <= 65535"))
    assert is_data_error(DatabaseError("Code: 469. DB::Exception: ... (VIOLATED_CONSTRAINT)"))
    assert not is_data_error(DatabaseError("Code: 60. DB::Exception: (UNKNOWN_TABLE)"))
    assert not is_data_error(OperationalError("connection refused"))
    assert not is_data_error(ConnectionResetError())
    # a closed client is not the records' fault: retried, never dead-lettered
    assert not is_data_error(ValueError("I/O operation on closed file"))


def test_the_sink_dead_letters_records_dated_in_the_future(store: Any) -> None:
    # Given a batch with a host scan from a clock an hour and a half ahead, one from
    # 2099, and a finding dated two hours ahead, beside a good finding and host scan
    now = datetime.now(UTC)
    target = Target("127.0.0.1", "127.0.0.1")

    def host_scan(scan_id: str, end: datetime) -> HostScan:
        return HostScan(scan_id=scan_id, target=target, started_at=end, finished_at=end,
                        ports_scanned=1, open_ports=0)

    ahead = finding("127.0.0.1", 8080)
    ahead = replace(ahead, port=replace(ahead.port, observed_at=now + timedelta(hours=2)))
    sink = StoreSink(store, retry_initial=0.01)
    asyncio.run(sink.write([finding("127.0.0.1", 22), ahead], [
        host_scan("good", now), host_scan("skewed", now + timedelta(minutes=90)),
        host_scan("forged", datetime(2099, 1, 1, tzinfo=UTC))]))
    # Then only the good ones are stored: one forged host scan stayed the host's latest
    # scan, and hid every real one from the List and change detection (a review)
    assert store.query("SELECT port FROM port_observations") == [(22,)]
    assert store.query("SELECT scan_id FROM host_scans") == [("good",)]
    rejected = sink.take_rejected()
    assert len(rejected) == 3 and all("ahead of this sink's clock" in why
                                      for _r, why in rejected)
    assert sink.stats.rejected == 3
