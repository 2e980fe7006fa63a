"""Parsers of the change history's user input, property-tested: hostile text gives a clear
ValueError (or BadParam), never another exception, and valid input round-trips."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portwatch.web.history_pages import BadParam, parse_changes_api_query, parse_changes_query
from schemas.records import HostScan, PortRange, Proto, RecordError, Target
from stream_processors.change_log import MAX_DURATION, parse_duration


@given(st.text(max_size=30))
def test_parse_duration_accepts_or_refuses_clearly(text: str) -> None:
    try:
        period = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)
    else:
        assert timedelta(seconds=1) <= period <= MAX_DURATION


@given(st.integers(1, 5000), st.sampled_from("smhdw"))
def test_parse_duration_values(amount: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{amount}{unit}") == timedelta(seconds=amount * seconds)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["since", "kind", "severity", "target", "org",
                                           "port", "x"]), st.text(max_size=40)), max_size=6))
@example([("port", "\u00b2")]).via("a digit to str.isdigit, not to int")
@example([("port", "9" * 5000)]).via("more digits than int takes")
def test_changes_page_query_is_validated(items: list[tuple[str, str]]) -> None:
    try:
        parsed = parse_changes_query(items)
    except BadParam as exc:
        assert str(exc)
    else:
        assert 0 <= parsed["port"] < 65536
        assert all(k in parsed for k in ("period", "kinds", "severity", "target", "org"))


@given(st.lists(st.tuples(st.integers(-5, 70000), st.integers(-5, 70000)), max_size=4),
       st.sampled_from(["tcp", "udp", "sctp", ""]))
def test_host_scan_coverage_from_the_wire_is_checked(spans: list[tuple[int, int]],
                                                     proto: str) -> None:
    data = {"scan_id": "s", "target": {"ip": "127.0.0.1", "target": "t"},
            "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:00:01Z",
            "ports_scanned": 1, "open_ports": 0, "proto": proto,
            "ports": [{"first": a, "last": b} for a, b in spans]}
    try:
        scan = HostScan.from_dict(data)
    except RecordError:
        return
    assert scan.proto in (Proto.TCP, Proto.UDP)
    for a, b in spans:
        assert 0 < a <= b < 65536
        assert scan.covers(scan.proto, a) and scan.covers(scan.proto, b)
    assert HostScan.from_json(scan.to_json()) == scan


def test_default_host_scan_covers_nothing() -> None:
    scan = HostScan.from_dict({"scan_id": "s", "target": {"ip": "127.0.0.1", "target": "t"},
                               "started_at": "2026-12-01T00:00:00Z",
                               "finished_at": "2026-12-01T00:00:01Z", "ports_scanned": 1,
                               "open_ports": 0})
    assert scan.ports == () and not scan.covers(Proto.TCP, 22)
    assert Target("127.0.0.1", "t") == scan.target and PortRange(1, 2).first == 1


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["limit", "from", "to", "since", "port"]),
                          st.text(max_size=40)), max_size=4))
@example([("limit", "\u00b2")]).via("a digit to str.isdigit, not to int")
@example([("limit", "9" * 5000)]).via("more digits than int takes")
def test_changes_api_query_is_validated(items: list[tuple[str, str]]) -> None:
    try:
        _parsed, limit = parse_changes_api_query(items)
    except BadParam as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert 1 <= limit <= 10_000


def test_changes_api_refuses_from_after_to() -> None:
    with pytest.raises(BadParam, match="from is after to"):
        parse_changes_api_query([("from", "2027-01-01"), ("to", "2026-01-01")])
    # the same moment is an empty window: said, with the day's end to give instead
    with pytest.raises(BadParam, match="same moment.*to=2026-01-02 ends with 2026-01-01"):
        parse_changes_api_query([("from", "2026-01-01"), ("to", "2026-01-01")])
    # (the last day a date can name has no next one to suggest: said all the same)
    with pytest.raises(BadParam, match=r"same moment: no event can match \(to is exclusive, "
                       r"a date alone its midnight\)$"):
        parse_changes_api_query([("from", "9999-12-31"), ("to", "9999-12-31")])
    parsed, limit = parse_changes_api_query([("from", "2026-01-01"), ("to", "2026-01-02")])
    assert parsed["end"] - parsed["start"] == timedelta(days=1) and limit == 1000
