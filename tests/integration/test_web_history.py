"""The Changes page and the per-target page, served by a real uvicorn over a real chdb
store whose change log the real recorder wrote from two scans."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.records import (
    Finding,
    HostScan,
    OpenPort,
    PortRange,
    RiskColor,
    ServiceInfo,
    Target,
)
from tests.conftest import scratch_store
from tests.integration.test_web_api import Served, serve

NOW = datetime.now(UTC).replace(microsecond=0)
WEB = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp", asset="web-1")
HOSTILE = Target(ip="127.0.0.2", target="127.0.0.2", organization="Other Org",
                 asset="<script>alert(1)</script>")


def _finding(scan: str, t: Target, port: int, product: str, version: str, color: RiskColor,
             when: datetime) -> Finding:
    return Finding(port=OpenPort(scan_id=scan, target=t, port=port, observed_at=when),
                   service=ServiceInfo(service="http" if port != 6379 else "redis",
                                       product=product, version=version), risk_color=color)


@pytest.fixture(scope="module")
def web(shared_chdb_path: Path) -> Iterator[Served]:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from stream_processors.history import ChangeRecorder

    with scratch_store(shared_chdb_path, "wh") as db:
        # Given two scans of web-1 a day apart: nginx bumps its version, redis opens; and one
        # scan of a host whose asset name is hostile markup
        yesterday, today = NOW - timedelta(days=1), NOW
        scans = {
            "s1": (yesterday, [_finding("s1", WEB, 80, "nginx", "1.22.1", RiskColor.GREEN,
                                        yesterday)]),
            "s2": (today, [_finding("s2", WEB, 80, "nginx", "1.24.0", RiskColor.GREEN, today),
                           _finding("s2", WEB, 6379, "Redis", "7.0", RiskColor.RED, today)]),
        }
        recorder = ChangeRecorder(db)
        for scan_id, (when, found) in scans.items():
            _record(db, recorder, scan_id, WEB, when, found)
        _record(db, recorder, "s3", HOSTILE, today,
                [_finding("s3", HOSTILE, 80, "nginx", "1.24.0", RiskColor.GREEN, today)])
        with serve(create_app(ReportService(db))) as served:
            yield served


def _record(db: Any, recorder: Any, scan_id: str, target: Target, when: datetime,
            found: list[Finding]) -> None:
    """One completed full scan of ``target``, stored and compared by the real recorder."""
    shard = HostScan(scan_id, target, when, when, 65535, len(found), shard_id=f"{scan_id}:0",
                     ports=(PortRange(1, 65535),))
    db.insert_findings(found)
    db.insert_host_scans([shard])
    recorder.add_findings(found)
    asyncio.run(recorder.finish([shard]))


def _page(web: Served, path: str) -> str:
    status, headers, body = web.get(path)
    assert status == 200, body
    assert "script-src 'none'" in headers["content-security-policy"]
    return body


def test_changes_page_groups_by_day_and_kind_and_links_into_the_list(web: Served) -> None:
    body = _page(web, "/changes")
    today, yesterday = NOW.date().isoformat(), (NOW - timedelta(days=1)).date().isoformat()
    # newest day first; today's kinds in ChangeKind order: opened before version changed
    assert body.index(f"<h2>{today}</h2>") < body.index(f"<h2>{yesterday}</h2>")
    day = body[body.index(f"<h2>{today}</h2>"):body.index(f"<h2>{yesterday}</h2>")]
    assert day.index("<h3>opened") < day.index("<h3>version changed")
    assert "1.22.1" in day and "1.24.0" in day
    assert ("/list?exact_target=127.0.0.1&amp;ip=127.0.0.1&amp;proto=tcp&amp;port=6379"
            "&amp;history=1" in day)
    assert "4 event(s)" in body  # 80 opened (s1), 80 version, 6379 opened (s2), s3's 80


def test_the_list_with_history_says_a_closed_port_is_closed_and_when(
        shared_chdb_path: Path) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from stream_processors.history import ChangeRecorder

    # Given web-1 with 80 and a port that is closed now (nothing listens: the recorder's
    # re-probe of it fails for real) open yesterday, and only 80 in today's full scan
    yesterday, today = NOW - timedelta(days=1), NOW
    # (the port stays bound, not listening, so no other test can take it meanwhile)
    with socket.socket() as holder, scratch_store(shared_chdb_path, "whc") as db:
        holder.bind(("127.0.0.1", 0))
        gone = holder.getsockname()[1]
        recorder = ChangeRecorder(db)
        _record(db, recorder, "s1", WEB, yesterday,
                [_finding("s1", WEB, port, "nginx", "1.24.0", RiskColor.GREEN, yesterday)
                 for port in (80, gone)])
        _record(db, recorder, "s2", WEB, today,
                [_finding("s2", WEB, 80, "nginx", "1.24.0", RiskColor.GREEN, today)])
        # When the List is asked for with the ports no longer seen
        with serve(create_app(ReportService(db, use_cache=False))) as served:
            body = _page(served, "/list?history=1")
    rows = {port: row for row in body.split("<tr")[1:]
            for port in (80, gone) if f">{port}<span class=\"proto\">/tcp<" in row}
    # Then the closed port's row is marked stale and says closed, with the day, once
    assert 'class="stale"' in rows[gone] and f"closed {today.date().isoformat()}" in rows[gone]
    assert rows[gone].count("closed") == 1
    assert 'class="stale"' not in rows[80] and "closed" not in rows[80]


def test_changes_page_filters_and_escapes(web: Served) -> None:
    body = _page(web, "/changes?kind=opened&severity=high")
    assert body.count("<tr>\n  <td data-label=\"When\"") == 1  # only redis: red, high
    assert "6379/tcp" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _page(web, "/changes")
    assert "<script>alert(1)" not in _page(web, "/changes")


@pytest.mark.parametrize(("query", "events"), [
    ("target=127.0.0.0/31", 3),     # a CIDR block: web-1's three events, not 127.0.0.2's
    ("target=WEB-1", 3),            # the asset name, any case
    ("target=127.0.0.", 4),         # an address prefix
    ("target=127.0.0.2&org=other+org", 1),
    ("target=198.18.0.0/15", 0),
])
def test_changes_page_target_filter_is_the_reports_one(web: Served, query: str,
                                                        events: int) -> None:
    assert f"{events} event(s)" in _page(web, f"/changes?{query}")


@pytest.mark.parametrize("query", ["kind=nope", "since=forever", "port=70000", "severity=x",
                                   "bogus=1", "target=a%00b", "target=198.18.0.0/99"])
def test_changes_page_bad_filter_is_400(web: Served, query: str) -> None:
    status, _headers, body = web.get(f"/changes?{query}")
    assert status == 400 and "Traceback" not in body


def test_changes_api_answers_the_page_s_events_as_json(web: Served) -> None:
    from stream_processors.change_log import CHANGES_REPORT_COLUMNS

    data = web.api("/api/v1/changes")
    assert (data["count"], data["capped"], data["limit"]) == (4, False, 1000)
    assert data["columns"] == list(CHANGES_REPORT_COLUMNS)
    # newest first, each row with the keys of `portwatch report changes -f json`
    assert [tuple(r) for r in data["rows"]] == [tuple(CHANGES_REPORT_COLUMNS)] * 4
    assert data["rows"][-1]["observed_at"] == (NOW - timedelta(days=1)).isoformat().replace(
        "+00:00", "Z")
    red = web.api("/api/v1/changes?kind=opened&severity=high&target=127.0.0.0/31")
    assert [(r["kind"], r["port"], r["severity"], r["after"].split()[0]) for r in red["rows"]] \
        == [("opened", 6379, "high", "redis")]
    # the kind and the severity in any case, as the CLI takes them
    assert web.api("/api/v1/changes?kind=OPENED&severity=High&target=127.0.0.0/31"
                   )["rows"] == red["rows"]
    assert red["filters"] == {"since": "7d", "from": "", "to": "", "kind": ["opened"],
                              "severity": "high", "target": "127.0.0.0/31", "org": "",
                              "port": 0}
    # from/to instead of since: yesterday's one event (nginx 1.22.1 opened)
    day = (NOW - timedelta(days=1)).date()
    window = web.api(f"/api/v1/changes?from={day.isoformat()}&to={NOW.date().isoformat()}")
    assert [(r["kind"], r["port"]) for r in window["rows"]] == [("opened", 80)]
    assert window["filters"]["from"] == f"{day.isoformat()}T00:00:00Z"
    two = web.api("/api/v1/changes?limit=2")
    assert (two["count"], two["capped"], len(two["rows"])) == (2, True, 2)
    assert web.api("/api/v1")["reports"]["changes"]["path"] == "/api/v1/changes"


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=x", "limit=1&limit=2",
                                   "kind=nope", "target=198.18.0.0/99", "bogus=1",
                                   "from=yesterday", "to=2026-13-01",
                                   "since=1d&from=2026-01-01"])
def test_changes_api_bad_query_is_a_json_400(web: Served, query: str) -> None:
    import json

    status, headers, body = web.get(f"/api/v1/changes?{query}")
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error.split(":")[0] in {
        "limit", "kind", "target", "unknown filter 'bogus'", "from", "to",
        "give since or from, not both"} or error.startswith("target '198.18.0.0/99' is not")


@pytest.mark.parametrize(("query", "error"), [
    (f"target={'x' * 4097}", "target: not a valid value"),
    ("target=a&target=b", "target: give it once"),
    ("target=10.0.0/8", "target '10.0.0/8' is not a CIDR block (for example 198.18.0.0/15 "
     "or 2001:db8::/32)"),
])
def test_a_bad_target_is_named_once(web: Served, query: str, error: str) -> None:
    import json

    # it read "target: target: not a valid value" (a review, 2026-12-06)
    status, _h, body = web.get(f"/api/v1/changes?{query}")
    assert (status, json.loads(body)["error"]) == (400, error)


def test_changes_errors_do_not_grow_with_the_url(web: Served) -> None:
    import json

    # Given unknown parameters 30,000 characters long, and thousands of short ones
    names = "&".join(f"{i}{'B' * 30_000}=1" for i in range(3))
    status, _h, body = web.get(f"/api/v1/changes?{names}")
    # Then the error names a few, cut, and says how many more
    assert status == 400 and len(body) < 600
    assert json.loads(body)["error"].startswith("unknown filter '0BBBB")
    many = "&".join(f"x{i}=1" for i in range(3000))
    status, _h, body = web.get(f"/api/v1/changes?{many}")
    assert status == 400 and "and 2,995 more" in body and len(body) < 600


@pytest.mark.parametrize(("query", "words"), [
    ("target=127.0.0.1&bogus=1", "unknown parameter &#39;bogus&#39;: the target page takes"),
    ("target=127.0.0.1&ip=%3Cscript%3E", "ip: &#39;&lt;script&gt;&#39; is not an IP address"),
    ("target=127.0.0.1&ip=10.0.0", "is not an IP address"),
])
def test_target_page_refuses_unknown_parameters_and_a_bad_ip(web: Served, query: str,
                                                             words: str) -> None:
    status, _h, body = web.get(f"/target?{query}")
    assert status == 400
    assert words in body and "<script>" not in body


def test_target_page_has_ports_events_and_a_score_per_scan(web: Served) -> None:
    body = _page(web, "/target?target=127.0.0.1&ip=127.0.0.1")
    assert "Ports now (2)" in body
    assert "Score after every scan (2)" in body  # one point per scan, not per day
    assert "Changes (3)" in body
    assert body.index(">s1<") < body.index(">s2<")
    status, _h, _b = web.get("/target")
    assert status == 400
    # and the IPv4-mapped form of the address is the address, as the List reads it (the
    # page said "Never scanned": a review)
    mapped = _page(web, "/target?target=127.0.0.1&ip=%3A%3Affff%3A127.0.0.1")
    assert "Ports now (2)" in mapped and "Changes (3)" in mapped


def test_target_page_says_when_it_shows_only_the_newest_events(
        shared_chdb_path: Path) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from stream_processors.history import ChangeRecorder

    # Given a host whose first scan opened 1,001 ports (1,001 events)
    busy = Target(ip="127.0.0.7", target="127.0.0.7", organization="Busy Org")
    found = [_finding("b1", busy, port, "", "", RiskColor.YELLOW, NOW)
             for port in range(20000, 21001)]
    with scratch_store(shared_chdb_path, "busy_target") as db:
        _record(db, ChangeRecorder(db), "b1", busy, NOW, found)
        with serve(create_app(ReportService(db))) as web:
            body = _page(web, "/target?target=127.0.0.7&ip=127.0.0.7")
    # Then its page shows the newest 1,000 and says there are more (it read "Changes
    # (1000)", as if that were all: a review)
    assert "Ports now (1001)" in body
    assert "Changes (the newest 1,000)" in body
    assert "More than 1,000 events, the newest 1,000 shown" in body
    assert body.count("<td>opened</td>") == 1000


@pytest.mark.parametrize("query", ["target=nope&ip=127.0.0.99", "target=127.0.0.1&ip=127.0.0.99",
                                   "target=nope"])
def test_target_page_of_nothing_stored_is_a_404(web: Served, query: str) -> None:
    # a mistyped or stale link: it was a 200 page saying "No open port in its latest
    # scan" above "Never scanned", as if a clean host (a review)
    status, _h, body = web.get(f"/target?{query}")
    assert status == 404, body
    assert "in the store: never scanned, or scanned under another name" in body
    assert "No open port in its latest scan" not in body


def test_changes_take_port_0_as_any_and_a_blank_kind_as_none(web: Served) -> None:
    import json

    # the API answers with port 0 (any) in its filters: sent back, it was a 400 (a review)
    _s, _h, every = web.get("/api/v1/changes?since=3650d")
    status, _h, body = web.get("/api/v1/changes?since=3650d&port=0&kind=%09")
    assert status == 200
    assert json.loads(body)["rows"] == json.loads(every)["rows"] != []
    assert json.loads(every)["filters"]["port"] == 0


def test_summary_links_to_the_target_page(web: Served) -> None:
    body = _page(web, "/")
    assert "/target?target=127.0.0.1&amp;ip=127.0.0.1" in body
    assert 'href="/changes"' in body




def test_risk_history_counts_every_shard_of_a_scan_on_the_windows_edge(store) -> None:  # type: ignore[no-untyped-def]
    from portwatch.web.service import ReportService
    from schemas.records import Finding, HostScan, OpenPort, PortRange, RiskColor, ServiceInfo

    # Given one scan of a host in two shards: the first (its red port) ended two days
    # ago, the second (a green port) an hour ago
    host = Target(ip="127.0.0.70", target="127.0.0.70")
    now = datetime.now(UTC).replace(microsecond=0)
    early, late = now - timedelta(days=2), now - timedelta(hours=1)
    store.insert_findings([
        Finding(port=OpenPort(scan_id="edge", target=host, port=port, observed_at=when),
                service=ServiceInfo(service=service), risk_color=color)
        for port, service, color, when in ((6379, "redis", RiskColor.RED, early),
                                           (80, "http", RiskColor.GREEN, late))])
    store.insert_host_scans([
        HostScan("edge", host, early, early, 1, 1, shard_id="edge:0",
                 ports=(PortRange(6379, 6379),)),
        HostScan("edge", host, late, late, 1, 1, shard_id="edge:1", ports=(PortRange(80, 80),))])
    store.compact_page_indexes()  # as the scan's end does (the risk chart's rows)
    # When the dashboard asks for the last day
    [point] = ReportService(store, use_cache=False).risk_history({}, days=1)
    # Then the scan ends in the window and scores both its ports: 10 x red + 1 x green
    assert (point.day, point.worst, point.targets) == (late.date(), 24.0, 1)


@pytest.mark.parametrize("path", ["/api/v1/list?target=%FF", "/api/v1/changes?org=%C3%28",
                                  "/changes?org=%FF", "/list?target=%FF", "/target?target=%FF",
                                  "/api/v1/list?%FF=1"])
def test_a_query_that_is_not_utf8_is_a_400(web: Served, path: str) -> None:
    # %FF read as U+FFFD: a filter on a character nobody typed, 200 and empty (a review)
    status, _h, body = web.get(path)
    assert status == 400 and "a query value is not UTF-8" in body


def test_a_utf8_query_value_is_read(web: Served) -> None:
    import json

    status, _h, body = web.get("/api/v1/list?org=%C3%A9")
    assert status == 200 and json.loads(body)["filters"]["org"] == "é"


def test_the_target_page_and_the_colour_bars_say_cdn_unconfirmed_and_accepted_ports(
        shared_chdb_path: Path) -> None:
    from dataclasses import replace

    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from schemas.records import CdnVerdict, PortState, Proto
    from stream_processors.history import ChangeRecorder

    # Given a host with a red port, a CDN-expected port and a UDP port that never
    # answered (open|filtered): three open, one of them scored
    edge = Target(ip="127.0.0.9", target="127.0.0.9", organization="Edge Org")
    red = _finding("e1", edge, 6379, "Redis", "7.0", RiskColor.RED, NOW)
    cdn = replace(_finding("e1", edge, 80, "", "", RiskColor.GREEN, NOW),
                  cdn=CdnVerdict("cloudflare", "header:cf-ray", is_expected_port=True))
    silent = _finding("e1", edge, 20053, "", "", RiskColor.YELLOW, NOW)
    silent = replace(silent, service=ServiceInfo(),
                     port=replace(silent.port, proto=Proto.UDP, state=PortState.OPEN_FILTERED))
    with scratch_store(shared_chdb_path, "edge_marks") as db:
        _record(db, ChangeRecorder(db), "e1", edge, NOW, [red, cdn, silent])
        # (and the red port accepted, with a note)
        from portwatch.alerts import accepted as acc

        acc.accept(db, "127.0.0.9", "tcp", 6379, note="isolated lab box", by="soc",
                   until=None, now=NOW)
        with serve(create_app(ReportService(db))) as web:
            body = _page(web, "/target?target=127.0.0.9&ip=127.0.0.9")
            charts = web.api("/api/v1/summary/charts")
            summary = _page(web, "/")
    # Then the target page marks the CDN-expected port and the unconfirmed one (before:
    # both read as plain green and yellow beside a score that counts neither)
    ports_now = body[body.index("Ports now"):]
    ports_now = ports_now[:ports_now.index("</table>")]
    rows = {m[0]: m[1] for m in re.findall(r'<td class="mono">(\d+/\w+)</td>(.*?)</tr>',
                                           ports_now)}
    assert set(rows) == {"80/tcp", "6379/tcp", "20053/udp"}
    assert ">cdn</span>" in rows["80/tcp"] and "unconfirmed" not in rows["80/tcp"]
    assert ">unconfirmed</span>" in rows["20053/udp"] and ">cdn<" not in rows["20053/udp"]
    assert ">cdn<" not in rows["6379/tcp"] and "unconfirmed" not in rows["6379/tcp"]
    # And the accepted port says so, with its note, as the List does (it did not: a
    # review); the others do not
    assert ">accepted</span>" in rows["6379/tcp"] and "isolated lab box — soc" in rows[
        "6379/tcp"]
    assert "accepted" not in rows["80/tcp"] + rows["20053/udp"]
    # And the colour bars add up to the open ports, the unconfirmed one a bar of its own
    assert charts["colours"] == {"red": 1, "yellow": 0, "green": 0, "cdn_expected": 1,
                                 "unconfirmed": 1, "targets": 1}
    assert "UDP unconfirmed (no risk): 1" in summary


@pytest.mark.parametrize("path", ["/changes?since=3650d&org=EXAMPLE%20corp",
                                  "/list?org=example%20CORP"])
def test_the_organization_in_effect_is_the_one_the_select_shows(web: Served, path: str) -> None:
    import re

    # Given a filter naming an organization in another case (filters ignore case)
    body = _page(web, path)
    # Then its option is the selected one (the select said "any" while the page was
    # filtered, and a resubmitted form dropped the filter: a review)
    assert re.findall(r'<option value="([^"]*)" selected>', body.split('name="org"')[1]
                      .split("</select>")[0]) == ["Example Corp"]


def test_an_organization_typed_that_is_not_listed_stays_selected(web: Served) -> None:
    body = _page(web, "/changes?since=3650d&org=Nobody%20Inc")
    select = body.split('name="org"')[1].split("</select>")[0]
    assert '<option value="Nobody Inc" selected>Nobody Inc</option>' in select


def test_the_changes_page_offers_the_organizations_of_its_windows_events(
        shared_chdb_path: Path) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService
    from stream_processors.history import ChangeRecorder

    # Given web-1 scanned ten days ago under Old Org (its port opened then), and today
    # under New Org (nothing changed: no event of New Org)
    old = Target(ip="127.0.0.1", target="127.0.0.1", organization="Old Org", asset="web-1")
    new = Target(ip="127.0.0.1", target="127.0.0.1", organization="New Org", asset="web-1")
    then, today = NOW - timedelta(days=10), NOW
    with scratch_store(shared_chdb_path, "who") as db:
        recorder = ChangeRecorder(db)
        _record(db, recorder, "s1", old, then,
                [_finding("s1", old, 80, "nginx", "1.24.0", RiskColor.GREEN, then)])
        _record(db, recorder, "s2", new, today,
                [_finding("s2", new, 80, "nginx", "1.24.0", RiskColor.GREEN, today)])
        with serve(create_app(ReportService(db, use_cache=False))) as served:
            pages = {since: _page(served, f"/changes?since={since}")
                     for since in ("30d", "7d")}
    options = {since: re.findall(r'<option value="([^"]+)"',
                                 body.split('name="org"')[1].split("</select>")[0])
               for since, body in pages.items()}
    # Then a window holding Old Org's event offers it beside the estate's organization now
    # (only New Org was offered, and Old Org's events could be filtered by URL alone: a
    # review); a window without it offers the estate's alone
    assert options == {"30d": ["New Org", "Old Org"], "7d": ["New Org"]}
    assert "1 event(s)" in pages["30d"]
