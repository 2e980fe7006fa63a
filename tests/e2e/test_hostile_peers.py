"""End to end: the real CLI scans hostile TLS peers (tests/hostile_tls.py) into a real
chdb store. A scanned host must never crash a scan (issue 11, defect 1): every scan
exits 0, the port is stored, and a value too big for its column is stored clamped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import query_store, run_cli
from tests.hostile_tls import MODES, hostile_certificate, hostile_tls_server
from tests.tls_servers import ServerUnavailable, make_cert

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "6", "PORTWATCH_BANNER_WAIT": "1",
        "PORTWATCH_TLS_TIMEOUT": "2", "PORTWATCH_TLS_BUDGET": "8"}


@pytest.fixture(scope="module")
def cert_der(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    try:
        files = make_cert(tmp_path_factory.mktemp("cert"))
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(Encoding.DER)


def _scan(mode: str, cert_der: bytes, store: str) -> tuple[int, int, str]:
    with hostile_tls_server(mode, cert_der) as port:
        result = run_cli("scan", "127.0.0.1", "--ports", str(port), "--udp", "none",
                         "--no-nmap-probes", "--quiet", store=store, env=FAST)
    return port, result.code, result.stderr


def _stored(store: str, sql: str) -> list[tuple[object, ...]]:
    return query_store(store, sql)


def test_a_9000_byte_dh_prime_is_stored_clamped_and_the_scan_finishes(
        cert_der: bytes, tmp_path: Path) -> None:
    # Given a TLS peer whose DHE ServerKeyExchange carries a 9,000-byte prime (72,000 bits)
    store = f"chdb://{tmp_path / 'store'}"
    # When the real CLI scans it end to end
    port, code, stderr = _scan("big-dh-prime", cert_der, store)
    # Then the scan exits 0 without a traceback
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # And the DHE suites are stored with the key-exchange size saturated at UInt16's max
    rows = _stored(store, "SELECT iana_name, kex_bits FROM tls_ciphers WHERE port = "
                          f"{port} AND iana_name LIKE '%DHE%'")
    assert rows, "no DHE suite stored"
    assert {bits for _, bits in rows} == {65535}
    # And the port and the host are in the Summary
    summary = run_cli("report", "summary", "--format", "json", store=store)
    assert summary.code == 0, summary.stderr
    assert [r["ip"] for r in json.loads(summary.stdout)] == ["127.0.0.1"]


# What each peer must leave in the store: (the port's tls_status and service, the TLS
# probe's status and the start of its error, whether suites were stored). A peer whose
# handshake never starts (stall) is not taken for TLS and gets no probe.
EXPECTED = {
    # (every hello gets a ServerHello: its pick is kept; the chain is past every bound)
    "big-chain": ("completed", "ssl", ("completed", "partial: "), True),
    "garbage": ("error", "ssl", ("error", "could not test: "), False),
    "stall": ("not_scheduled", "", None, False),
    "renegotiation-storm": ("completed", "ssl", ("completed", "partial: "), True),
    "served-certificate": ("completed", "ssl", ("completed", ""), True),
    "duplicate-extension": ("error", "ssl", ("error", "could not test: "), False),
}


@pytest.mark.parametrize("mode", [m for m in MODES if m != "big-dh-prime"])
def test_hostile_tls_peers_never_crash_a_scan(mode: str, cert_der: bytes,
                                              tmp_path: Path) -> None:
    # Given a hostile TLS peer (oversized chain, garbage records, stalled handshake,
    # renegotiation storm)
    store = f"chdb://{tmp_path / 'store'}"
    # When the real CLI scans it
    port, code, stderr = _scan(mode, cert_der, store)
    # Then the scan exits 0, and the open port is stored
    assert code == 0, stderr
    assert "Traceback" not in stderr
    tls_status, service, probe, with_suites = EXPECTED[mode]
    rows = _stored(store, "SELECT port, tls_status, service FROM port_observations "
                          f"WHERE port = {port}")
    assert rows == [(port, tls_status, service)]
    # And a TLS probe that could not finish reads "could not test" (or "partial" when
    # suites were found before the budget ran out), never "no ciphers"
    probes = _stored(store, f"SELECT status, error FROM tls_probes WHERE port = {port}")
    if probe is None:
        assert probes == []
    else:
        assert len(probes) == 1, probes
        assert probes[0][0] == probe[0]
        assert str(probes[0][1]).startswith(probe[1]), probes
    suites = _stored(store, f"SELECT count() FROM tls_ciphers WHERE port = {port}")[0][0]
    assert (int(suites) > 0) is with_suites


@pytest.mark.parametrize(("kind", "subject", "key_type"), [
    ("unknown-key-algorithm", "CN=hostile.test", "unknown"),
    ("name-not-utf8", "unparseable certificate: ", ""),
])
def test_a_hostile_certificate_keeps_the_port_identified_and_its_tls(
        kind: str, subject: str, key_type: str, tmp_path: Path) -> None:
    # Given a TLS peer serving a certificate cryptography cannot read all of
    der, _key = hostile_certificate(kind)
    store = f"chdb://{tmp_path / 'store'}"
    # When the real CLI scans it
    port, code, stderr = _scan("served-certificate", der, store)
    assert code == 0, stderr
    # Then the port is stored as TLS with its suites (before: "unidentified", its
    # identification lost to "identification error: UnsupportedAlgorithm")
    rows = _stored(store, "SELECT tls_status, service, extra_info FROM port_observations "
                          f"WHERE port = {port}")
    assert [(status, service) for status, service, _ in rows] == [("completed", "ssl")], rows
    assert _stored(store, f"SELECT count() > 0 FROM tls_ciphers WHERE port = {port}") == [
        (1,)]
    # And the certificate is stored, described as far as it can be read
    (cert,) = _stored(store, "SELECT subject, key_type, sha256 FROM certificates "
                             f"WHERE port = {port}")
    assert str(cert[0]).startswith(subject)
    assert cert[1:] == (key_type, hashlib.sha256(der).hexdigest())


@pytest.mark.kafka
def test_a_9000_byte_dh_prime_through_kafka_is_stored_clamped(
        cert_der: bytes, kafka_bootstrap: str, tmp_path: Path) -> None:
    # Given the same hostile peer, scanned by the distributed shape (real broker,
    # discover worker, Faust stages and sink): before, the sink retried its batch forever
    from tests.integration.test_distributed_pipeline import pipeline_of

    with hostile_tls_server("big-dh-prime", cert_der) as port, \
            pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        workers = [pipe.process(env={**FAST, "PORTWATCH_NMAP_PROBES": "0"}),
                   pipe.discover("--engine", "connect")]
        # When it is produced and the pipeline drains
        pipe.produce("127.0.0.1", "--ports", str(port))
        for worker in workers:
            pipe.stop(worker)
        # Then the DHE suites are stored with the key-exchange size saturated
        rows = _stored(pipe.store, "SELECT DISTINCT kex_bits FROM tls_ciphers WHERE port = "
                                   f"{port} AND iana_name LIKE '%DHE%'")
    assert rows == [(65535,)]
