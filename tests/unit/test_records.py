"""Event records (schemas/records.py and schemas/__init__.py): the JSON wire form of
every record round-trips exactly, and malformed input is a RecordError, never a
half-built record."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas import REPORTS, data_path, ddl_statements, report_parameters, report_sql
from schemas.records import (
    NO_TLS,
    SCHEMA_VERSION,
    CdnVerdict,
    Certificate,
    ChangeEvent,
    ChangeKind,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    PortState,
    ProbeStatus,
    Proto,
    Record,
    RecordError,
    RiskColor,
    ServiceInfo,
    Severity,
    Shard,
    Target,
    TlsResult,
    normalize_ip,
)

WHEN = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
TARGET = Target(ip="127.0.0.1", target="localhost", hostname="localhost",
                organization="Example Corp", asset="web")
PORT = OpenPort(scan_id="scan-1", target=TARGET, port=443, proto=Proto.TCP,
                state=PortState.OPEN, engine="connect", reason="syn-ack", observed_at=WHEN,
                response="")
SUITE = CipherSuite(tls_version="TLSv1.2", iana_name="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                    openssl_name="ECDHE-RSA-AES128-GCM-SHA256", strength="strong",
                    kex_group="x25519", kex_bits=253, preference=1)
CERT = Certificate(subject="CN=localhost", sans=("localhost", "127.0.0.1"), issuer="CN=localhost",
                   not_before="2025-01-01T00:00:00Z", not_after="2026-01-01T00:00:00Z",
                   key_type="RSA", key_bits=2048, signature_algorithm="sha256WithRSAEncryption",
                   is_self_signed=True, sha256="ab" * 32)
TLS = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2", "TLSv1.3"), suites=(SUITE,),
                certificates=(CERT,), grade="strong", grade_reason="forward secrecy only")
SERVICE = ServiceInfo(service="https", product="nginx", version="1.22.1", extra_info="status 200",
                      cpe="cpe:/a:f5:nginx:1.22.1", is_tls=True, banner="HTTP/1.1 200 OK\\r\\n",
                      method="http:server-header", confidence=10, tried=("tls", "http-get"),
                      headers=(("server", "nginx/1.22.1"), ("x-a", "b")))

RECORDS: list[Record] = [
    TARGET,
    Target(ip="::1", target="::1"),
    PortRange(1, 65535),
    Shard(scan_id="scan-1", shard_id="scan-1:tcp:3", targets=(TARGET,),
          ports=(PortRange(1, 1024), PortRange(8080, 8080)), proto=Proto.TCP, seed=42, index=3,
          total=9, created_at=WHEN),
    PORT,
    OpenPort(scan_id="s", target=TARGET, port=53, proto=Proto.UDP,
             state=PortState.OPEN_FILTERED, engine="udp", observed_at=WHEN, response="\\x00"),
    SERVICE,
    ServiceInfo(),
    ServiceInfo(service="https", is_tls=True, http_title="Grafana", http_redirect="/login",
                http_server="nginx/1.22.1", http_powered_by="PHP/8.2", favicon_mmh3=-2**31,
                jarm="2ad2ad0002ad2ad00042d42d00000069d641f34fe76acdc05c40262f8815e5"),
    SUITE,
    CERT,
    TLS,
    TlsResult(status=ProbeStatus.ERROR, error="handshake timed out"),
    CdnVerdict(provider="cloudflare", source="header:cf-ray", is_expected_port=True),
    Finding(port=PORT, service=SERVICE, tls=TLS, cdn=CdnVerdict(), risk_color=RiskColor.GREEN,
            risk_reason="meant to be public"),
    Finding(port=PORT),
    HostScan(scan_id="scan-1", target=TARGET, started_at=WHEN,
             finished_at=WHEN + timedelta(seconds=3), ports_scanned=65535, open_ports=2,
             status="interrupted", is_tarpit=True, note="answers on every port"),
    ChangeEvent(kind=ChangeKind.VERSION_CHANGED, severity=Severity.LOW, target=TARGET,
                scan_id="scan-2", previous_scan_id="scan-1", proto=Proto.TCP, port=22,
                before="OpenSSH 9.1", after="OpenSSH 9.2", risk_color="green", service="ssh",
                observed_at=WHEN),
    ChangeEvent(kind=ChangeKind.HOST_UNREACHABLE, severity=Severity.MEDIUM, target=TARGET,
                scan_id="scan-3", observed_at=WHEN),
    HostScan(scan_id="scan-2", target=TARGET, started_at=WHEN, finished_at=WHEN,
             ports_scanned=2, open_ports=1, shard_id="scan-2:udp:0", proto=Proto.UDP,
             ports=(PortRange(53, 53), PortRange(161, 162))),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_json(record: Record) -> None:
    # Given a record, when written to JSON bytes and read back
    wire = record.to_json()
    back = type(record).from_json(wire)
    # Then it is equal field for field, and the wire form carries the schema version
    assert back == record
    assert json.loads(wire)["v"] == SCHEMA_VERSION
    # And reading from a str or a dict gives the same
    assert type(record).from_json(wire.decode()) == record
    assert type(record).from_dict(record.to_dict()) == record


def test_all_record_types_are_covered() -> None:
    # Every concrete record class in schemas.records has a round-trip case above
    import schemas.records as mod

    classes = {obj for obj in vars(mod).values()
               if isinstance(obj, type) and issubclass(obj, Record) and obj is not Record}
    assert classes == {type(r) for r in RECORDS}


def test_wire_form_of_a_finding_is_plain_json() -> None:
    # Given a finding, when encoded, then nested records, enums and times are plain values
    d = Finding(port=PORT, risk_color=RiskColor.RED).to_dict()
    assert d["v"] == 1
    assert d["risk_color"] == "red"
    assert d["port"]["target"]["ip"] == "127.0.0.1"
    assert "v" not in d["port"]  # only the top level carries the version
    assert d["port"]["observed_at"] == "2025-03-04T05:06:07.890000+00:00"
    assert d["port"]["proto"] == "tcp"


def test_defaults_fill_optional_fields() -> None:
    # Given a minimal open-port event, when decoded, then the defaults apply
    port = OpenPort.from_dict({"scan_id": "s", "target": {"ip": "127.0.0.1", "target": "x"},
                               "port": 22, "observed_at": "2025-01-01T00:00:00"})
    assert (port.proto, port.state, port.engine, port.response) == (
        Proto.TCP, PortState.OPEN, "", "")
    assert port.observed_at == datetime(2025, 1, 1, tzinfo=UTC)  # naive read as UTC


def test_a_finding_built_without_its_parts_gets_empty_ones_that_nothing_can_change() -> None:
    # Given findings built with only their port (the parts are shared, not rebuilt per
    # finding: the stages' hot path), then each part equals a fresh empty record, is the
    # same on the wire as before, and can be neither assigned nor replaced in place
    a, b = Finding(port=PORT), Finding(port=PORT)
    assert (a.service, a.tls, a.cdn) == (ServiceInfo(), TlsResult(), CdnVerdict())
    assert a.to_json() == Finding(port=PORT, service=ServiceInfo(), tls=TlsResult(),
                                  cdn=CdnVerdict()).to_json()
    with pytest.raises(AttributeError):
        a.tls.versions = ("TLSv1.3",)  # type: ignore[misc]
    c = a.with_(tls=TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",)))
    assert c.tls.versions == ("TLSv1.3",)
    assert a.tls.versions == () and b.tls.versions == () and TlsResult().versions == ()
    # and a decoded finding without them gets the same empty parts
    decoded = Finding.from_json(a.to_json())
    assert (decoded.service, decoded.tls, decoded.cdn) == (a.service, a.tls, a.cdn)


def test_a_finding_leaves_its_empty_parts_off_the_wire_and_reads_back_the_shared_ones() -> None:
    # Given a finding with nothing learnt about TLS or a CDN (most findings), its wire
    # form carries neither part, and both the fast and the lenient decoder give back the
    # shared empty records, not a fresh copy per finding
    found = Finding(port=PORT, service=SERVICE, risk_color=RiskColor.GREEN)
    wire = json.loads(found.to_json())
    assert set(wire) == {"v", "port", "service", "risk_color", "risk_reason"}
    for back in (Finding.from_json(found.to_json()), Finding.from_dict(wire)):
        assert back == found
        assert back.tls == TlsResult() and back.cdn == CdnVerdict()
    assert Finding.from_json(found.to_json()).tls is NO_TLS
    # An empty part built afresh (equal, not the shared one) is left off as well, and a
    # part that says something is kept
    assert found.to_json() == found.with_(tls=TlsResult(), cdn=CdnVerdict()).to_json()
    probed = found.with_(tls=TlsResult(status=ProbeStatus.ERROR, error="timed out"))
    assert json.loads(probed.to_json())["tls"]["status"] == "error"
    assert Finding.from_json(probed.to_json()) == probed


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-01T00:00:00+02:00", datetime(2024, 12, 31, 22, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1.5, datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)),
    ],
)
def test_timestamps_in_other_forms(value: object, expected: datetime) -> None:
    port = OpenPort.from_dict({"scan_id": "s", "target": {"ip": "127.0.0.1", "target": "x"},
                               "port": 22, "observed_at": value})
    assert port.observed_at == expected


def test_offset_timestamps_keep_the_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    hs = HostScan(scan_id="s", target=TARGET, started_at=WHEN.astimezone(plus_two),
                  finished_at=WHEN, ports_scanned=1, open_ports=0)
    assert HostScan.from_json(hs.to_json()).started_at == WHEN


@pytest.mark.parametrize(
    ("given", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("0:0:0:0:0:0:0:1", "::1"), ("::FFFF:127.0.0.1",
                                                                 "127.0.0.1"),
     # issue 11, defect 2: mapped and compatible IPv6 fold to the IPv4 they reach;
     # ::2 (0.0.0.2) stays IPv6
     ("::127.0.0.1", "127.0.0.1"), ("::2", "::2"), ("::ffff", "::ffff")],
)
def test_addresses_are_normalized(given: str, expected: str) -> None:
    assert normalize_ip(given) == expected
    assert Target.from_dict({"ip": given, "target": given}).ip == expected


def good_port() -> dict[str, Any]:
    return PORT.to_dict()


def with_(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``d`` with the dotted ``path`` set to ``value`` (or removed if ...)."""
    out: dict[str, Any] = json.loads(json.dumps(d))
    node = out
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_(good_port(), "v", 2), "unsupported schema version 2"),
        (with_(good_port(), "v", "1"), "unsupported schema version '1'"),
        (with_(good_port(), "port", 0), "port out of range: 0"),
        (with_(good_port(), "port", 65536), "port out of range: 65536"),
        (with_(good_port(), "port", "22"), "port out of range: '22'"),
        (with_(good_port(), "port", 22.0), "port out of range: 22.0"),
        (with_(good_port(), "port", True), "port out of range: True"),
        (with_(good_port(), "port", None), "port out of range: None"),
        (with_(good_port(), "target.ip", "127.0.0.256"), "not an IP address: '127.0.0.256'"),
        (with_(good_port(), "target.ip", "localhost"), "not an IP address"),
        (with_(good_port(), "target.ip", ...), "malformed record"),
        # a missing field is named (it read "'scan_id'" (KeyError): a review)
        (with_(good_port(), "scan_id", ...), "malformed record: no 'scan_id' field"),
        (with_(good_port(), "proto", "sctp"), "malformed record"),
        (with_(good_port(), "state", "closed"), "malformed record"),
        (with_(good_port(), "observed_at", "yesterday"), "bad timestamp 'yesterday'"),
        (with_(good_port(), "observed_at", None), "bad timestamp None"),
        (with_(good_port(), "target", "127.0.0.1"), "malformed record"),
    ],
)
def test_malformed_open_port_is_a_record_error(data: dict[str, Any], message: str) -> None:
    # Given a damaged wire record, when decoded, then RecordError says what is wrong
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(".", r"\.")):
        OpenPort.from_dict(data)


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        (OpenPort, b"not json", "OpenPort: not JSON"),
        (OpenPort, b"\xff\xfe", "OpenPort: not JSON"),
        (OpenPort, b"[1, 2]", "OpenPort: expected a JSON object"),
        (Target, b'"127.0.0.1"', "Target: expected a JSON object"),
        (PortRange, b'{"first": 90, "last": 80}', "empty port range 90-80"),
        (PortRange, b'{"first": 0, "last": 80}', "port out of range: 0"),
        (Shard, json.dumps({**RECORDS[3].to_dict(), "targets": []}).encode(),
         "shard without targets"),
        (Shard, json.dumps({**RECORDS[3].to_dict(), "ports": []}).encode(),
         "shard without ports"),
        (Shard, json.dumps({**RECORDS[3].to_dict(),
                            "ports": [{"first": 1, "last": 65535}] * 300}).encode(),
         "shard of 19,660,500 ports: more than a protocol has"),
        (Finding, json.dumps({"port": good_port(), "risk_color": "purple"}).encode(),
         "Finding: malformed record"),
        (Finding, json.dumps({"port": with_(good_port(), "port", 0)}).encode(),
         "port out of range: 0"),
        (HostScan, json.dumps({"scan_id": "s"}).encode(), "HostScan: malformed record"),
        # forged or corrupt host-scan records (a "bogus" status became the host's latest
        # scan; negative counts, a compared scan: a review of the distributed shape)
        (HostScan, json.dumps({**RECORDS[16].to_dict(), "status": "bogus"}).encode(),
         "HostScan: unknown status 'bogus'"),
        (HostScan, json.dumps({**RECORDS[16].to_dict(), "ports_scanned": 2**70}).encode(),
         "HostScan: ports_scanned out of range: 1180591620717411303424"),
        (HostScan, json.dumps({**RECORDS[16].to_dict(), "open_ports": -5}).encode(),
         "HostScan: open_ports out of range: -5"),
        (HostScan, json.dumps({**RECORDS[16].to_dict(), "open_ports": True}).encode(),
         "HostScan: open_ports out of range: True"),
        (HostScan, json.dumps({**RECORDS[16].to_dict(),
                               "ports": [{"first": 1, "last": 65535}] * 2}).encode(),
         "HostScan: its port ranges cover more than a protocol has"),
        (TlsResult, json.dumps({"status": "maybe"}).encode(), "TlsResult: malformed record"),
    ],
)
def test_malformed_wire_input_is_a_record_error(cls: type[Record], raw: bytes,
                                                message: str) -> None:
    with pytest.raises(RecordError, match=message):
        cls.from_json(raw)
    # and in the compact form our writers use (the fast path: a second review found the
    # host-scan bounds skipped there)
    if raw.startswith(b"{"):
        compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
        with pytest.raises(RecordError, match=message):
            cls.from_json(compact)


@pytest.mark.parametrize("port", [0, -1, 65536, 10**9])
def test_records_refuse_bad_ports_at_construction(port: int) -> None:
    with pytest.raises(RecordError, match="port out of range"):
        OpenPort(scan_id="s", target=TARGET, port=port)
    with pytest.raises(RecordError, match="port out of range"):
        PortRange(port, 65535)


def test_record_helpers() -> None:
    # Given a shard of 2 hosts x (1-10, 20), when its sizes are asked
    shard = Shard(scan_id="s", shard_id="s:tcp:0", targets=(TARGET, Target("::1", "::1")),
                  ports=(PortRange(1, 10), PortRange(20, 20)))
    # Then the counts and port list follow from the ranges
    assert (shard.port_count, shard.probe_count) == (11, 22)
    assert shard.port_list() == [*range(1, 11), 20]
    assert len(PortRange(80, 90)) == 11
    assert list(PortRange(7, 9)) == [7, 8, 9]
    assert PORT.key == "127.0.0.1" == Finding(port=PORT).key
    assert SERVICE.is_identified and not ServiceInfo().is_identified
    assert Finding(port=PORT).with_(risk_color=RiskColor.RED).risk_color is RiskColor.RED


def test_records_are_frozen() -> None:
    with pytest.raises(AttributeError):
        TARGET.ip = "127.0.0.2"  # type: ignore[misc]


# -- schemas package --------------------------------------------------------------------


def test_ddl_statements_are_single_statements_without_comments() -> None:
    statements = ddl_statements()
    assert statements, "schemas/ddl.sql is empty"
    assert all(";" not in s and "--" not in s for s in statements)
    created = [re.search(r"IF NOT EXISTS (\w+)", s).group(1)  # type: ignore[union-attr]
               for s in statements]
    assert {"port_observations", "findings", "findings_mv", "host_scans"} <= set(created)


@pytest.mark.parametrize("name", REPORTS)
def test_every_report_binds_the_common_filters_and_paging(name: str) -> None:
    # Given a report's SQL, then it declares target/org filters and limit/offset paging
    assert report_sql(name).strip()
    assert {"target", "org", "limit", "offset"} <= report_parameters(name)


def test_unknown_report_is_a_key_error_naming_the_choices() -> None:
    with pytest.raises(KeyError, match="unknown report 'nope'; choose one of summary, list"):
        report_sql("nope")


@pytest.mark.parametrize("name", ["cdn.yaml", "risk_catalogue.yaml"])
def test_data_files_ship_with_the_package(name: str) -> None:
    with open(data_path(name), encoding="utf-8") as fh:
        assert fh.read(1)


def test_the_fast_codec_path_round_trips_and_still_names_faults() -> None:
    # Given an open port as portwatch writes it (version first)
    port = OpenPort(scan_id="s", target=Target(ip="127.0.0.1", target="t"), port=2222,
                    observed_at=WHEN)
    raw = port.to_json()
    assert raw.startswith(b'{"v":1,')
    # When read back, then it is the same record
    assert OpenPort.from_json(raw) == port
    # And a damaged record of the same shape still gets the precise message
    with pytest.raises(RecordError, match="port out of range: 0"):
        OpenPort.from_json(raw.replace(b'"port":2222', b'"port":0'))
    with pytest.raises(RecordError, match="unsupported schema version 2"):
        OpenPort.from_json(raw.replace(b'{"v":1,', b'{"v":2,'))
    # And addresses are canonical whichever path decoded them
    odd = raw.replace(b'"127.0.0.1"', b'"0:0:0:0:0:0:0:1"')
    assert OpenPort.from_json(odd).target.ip == "::1"


def test_change_event_ids_are_stable_and_distinct() -> None:
    # Given the same change computed twice, and changes differing in one key field
    first = next(r for r in RECORDS if isinstance(r, ChangeEvent))
    assert isinstance(first, ChangeEvent)
    again = ChangeEvent.from_json(first.to_json())
    # Then the id is the same across a round trip, and differs when the change does
    assert again.event_id == first.event_id and len(first.event_id) == 32
    from dataclasses import replace

    others = [replace(first, scan_id="scan-9"), replace(first, port=23),
              replace(first, kind=ChangeKind.PRODUCT_CHANGED), replace(first, after="9.3")]
    assert len({first.event_id, *(o.event_id for o in others)}) == 5


@pytest.mark.parametrize("bad", [2**31, -2**31 - 1, "12", 1.5, True])
def test_a_favicon_hash_outside_signed_32_bits_is_refused(bad: object) -> None:
    # Given a wire record whose favicon hash is not a signed 32-bit integer
    wire = json.dumps({"v": SCHEMA_VERSION, "service": "http", "favicon_mmh3": bad})
    # Then it is refused by name, on the fast path as on the slow one
    with pytest.raises(RecordError, match="favicon_mmh3"):
        ServiceInfo.from_json(wire)
    with pytest.raises(RecordError, match="favicon_mmh3"):
        ServiceInfo(favicon_mmh3=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("record", [r for r in RECORDS if isinstance(
    r, Shard | OpenPort | Finding | HostScan | ChangeEvent)], ids=lambda r: type(r).__name__)
def test_a_timestamp_without_a_zone_is_read_as_utc_on_either_path(record: Record) -> None:
    # Given a record whose times were written without a zone (a hand-made or foreign
    # producer's: the fast path kept them naive, and the sink's agent crashed comparing
    # one with an aware "now", losing the valid records of its batch; a review)
    raw = record.to_json()
    naive = re.sub(rb'("(?:observed|created|started|finished)_at":"[^"]+)Z"', rb'\1"', raw)
    assert naive != raw and naive.startswith(b'{"v":1,')  # the fast path's shape
    slow = json.loads(naive)
    del slow["v"]  # the lenient path's shape
    # When it is read either way, then every time is the same instant, in UTC
    assert type(record).from_json(naive) == record
    assert type(record).from_json(json.dumps(slow)) == record
    times = [getattr(r, name) for r in (type(record).from_json(naive), record)
             for name in ("created_at", "observed_at", "started_at", "finished_at")
             if hasattr(r, name)]
    port = getattr(type(record).from_json(naive), "port", None)
    times += [port.observed_at] if isinstance(port, OpenPort) else []
    assert times and all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)


@pytest.mark.parametrize("record", [r for r in RECORDS if isinstance(
    r, OpenPort | Finding | ChangeEvent)], ids=lambda r: type(r).__name__)
def test_a_record_without_its_observation_time_is_refused_on_either_path(
        record: Record) -> None:
    # Given a record as written, less its observation time (the fast path filled it with
    # "now", which the store kept as when the port was seen; the slow path refused it)
    raw = record.to_json()
    cut = re.sub(rb'"observed_at":"[^"]+",?', b"", raw).replace(b",}", b"}")
    assert cut != raw and cut.startswith(b'{"v":1,')
    # When it is read, then both paths refuse it and say why
    with pytest.raises(RecordError, match="observed_at"):
        type(record).from_json(cut)
    with pytest.raises(RecordError, match="observed_at"):
        type(record).from_dict({k: v for k, v in json.loads(cut).items() if k != "v"})
