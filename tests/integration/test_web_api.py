"""The web JSON API and pages over a real store and a real HTTP server on loopback.

Given a store filled with known findings (three targets, 69 open ports, one TLS port),
the app served by uvicorn on 127.0.0.1 in this process, when the API is asked with
filters, sorting and paging, then the rows are exactly the expected ones; a bad value is
a 400 with a message; the security headers, the Host check and the token work.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from schemas.records import (
    Certificate,
    CipherSuite,
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from tests.conftest import run_cli, scratch_store
from tests.loopback import free_port

NOW = datetime.now(UTC).replace(microsecond=0)
WEB1 = Target(ip="127.0.0.1", target="127.0.0.1", hostname="web-1.example.test",
              organization="Example Corp", asset="web-1")
WEB2 = Target(ip="127.0.0.2", target="127.0.0.2", organization="Other Org", asset="web-2")
DB1 = Target(ip="127.0.0.3", target="127.0.0.3", organization="Example Corp", asset="db-1")
EXTRA_PORTS = range(10000, 10060)  # 60 unidentified ports on db-1, for paging
TOTAL_PORTS = 4 + 4 + 1 + len(EXTRA_PORTS)


def finding(target: Target, port: int, service: str, product: str, version: str,
            color: RiskColor, *, tls: TlsResult | None = None,
            when: datetime = NOW) -> Finding:
    return Finding(
        port=OpenPort(scan_id="s1", target=target, port=port, observed_at=when),
        service=ServiceInfo(service=service, product=product, version=version,
                            banner=f"{product} {version}".strip(), method="test",
                            is_tls=tls is not None),
        tls=tls or TlsResult(), risk_color=color, risk_reason="test")


def dataset() -> tuple[list[Finding], list[HostScan]]:
    tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.2", "TLSv1.3"),
                    grade="strong",
                    suites=(CipherSuite("TLSv1.3", "TLS_AES_128_GCM_SHA256", strength="strong"),),
                    certificates=(Certificate(subject="CN=web-2.example.test",
                                              issuer="CN=Test CA", not_after="2030-01-01",
                                              key_type="EC", key_bits=256),))
    rows = [
        finding(WEB1, 22, "ssh", "OpenSSH", "9.2p1", RiskColor.GREEN),
        finding(WEB1, 80, "http", "nginx", "1.22.1", RiskColor.GREEN),
        finding(WEB1, 3306, "mysql", "MariaDB", "10.11.6", RiskColor.RED),
        finding(WEB1, 9000, "", "", "", RiskColor.YELLOW),
        finding(WEB2, 22, "ssh", "OpenSSH", "9.2p1", RiskColor.GREEN),
        finding(WEB2, 80, "http", "nginx", "1.22.1", RiskColor.GREEN),
        finding(WEB2, 443, "https", "nginx", "1.22.1", RiskColor.GREEN, tls=tls),
        finding(WEB2, 6379, "redis", "Redis key-value store", "7.0.15", RiskColor.RED),
        finding(DB1, 5432, "postgresql", "PostgreSQL DB", "15.5", RiskColor.RED),
    ]
    rows += [finding(DB1, p, "", "", "", RiskColor.YELLOW) for p in EXTRA_PORTS]
    scans = [HostScan(scan_id="s1", target=t, started_at=NOW - timedelta(minutes=1),
                      finished_at=NOW, ports_scanned=65535, open_ports=n)
             for t, n in ((WEB1, 4), (WEB2, 4), (DB1, 61))]
    return rows, scans


class Served:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.base + path, headers=headers or {},
                                         method=method)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            exc.close()
            return exc.code, dict(exc.headers), body

    def api(self, path: str) -> dict[str, Any]:
        status, _, body = self.get(path)
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        return data


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextlib.contextmanager
def serve(app: Any) -> Iterator[Served]:
    """A real uvicorn server on a free loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def db(shared_chdb_path: Path):  # type: ignore[no-untyped-def]
    with scratch_store(shared_chdb_path, "web") as store:
        rows, scans = dataset()
        store.insert_findings(rows)
        store.insert_host_scans(scans)
        yield store


@pytest.fixture(scope="module")
def web(db: Any) -> Iterator[Served]:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    with serve(create_app(ReportService(db))) as served:
        yield served


@pytest.fixture(scope="module")
def web_with_token(db: Any) -> Iterator[Served]:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    app = create_app(ReportService(db), token="t" * 24, loopback_only=False)
    with serve(app) as served:
        yield served


# -- filters ----------------------------------------------------------------------------


def test_list_filter_by_product_is_the_products_drill_down(web: Served) -> None:
    data = web.api("/api/v1/list?product=nginx&version=1.22.1")
    assert data["total"] == 3
    assert sorted((r["ip"], r["port"]) for r in data["rows"]) == [
        ("127.0.0.1", 80), ("127.0.0.2", 80), ("127.0.0.2", 443)]
    assert {r["product"] for r in data["rows"]} == {"nginx"}


def test_list_filters_by_colour_org_port_target_and_prevalence(web: Served) -> None:
    red = web.api("/api/v1/list?color=red")
    assert web.api("/api/v1/list?color=RED")["rows"] == red["rows"]  # any case
    assert sorted(r["port"] for r in red["rows"]) == [3306, 5432, 6379]
    org = web.api("/api/v1/list?org=Other+Org")
    assert {r["ip"] for r in org["rows"]} == {"127.0.0.2"} and org["total"] == 4
    port = web.api("/api/v1/list?port=22")
    assert [r["ip"] for r in port["rows"]] == ["127.0.0.1", "127.0.0.2"]
    target = web.api("/api/v1/list?target=web-1.example.test")
    assert sorted(r["port"] for r in target["rows"]) == [22, 80, 3306, 9000]
    rare = web.api("/api/v1/list?prevalence=rare&per_page=1000")
    assert rare["total"] == TOTAL_PORTS
    assert web.api("/api/v1/list?prevalence=very+common")["rows"] == []


def test_summary_products_and_ciphers_answer_with_their_filters(web: Served) -> None:
    summary = web.api("/api/v1/summary?org=Example+Corp")
    assert [r["ip"] for r in summary["rows"]] == ["127.0.0.3", "127.0.0.1"]  # by risk
    web1 = summary["rows"][1]
    assert (web1["red"], web1["yellow"], web1["green"]) == (1, 1, 2)
    assert {"port": 3306, "proto": "tcp", "color": "red", "is_cdn_expected": False,
            "state": "open"} in web1["ports"]
    products = {(r["product"], r["version"]): r for r in web.api("/api/v1/products")["rows"]}
    assert (products[("nginx", "1.22.1")]["instances"],
            products[("nginx", "1.22.1")]["targets"]) == (3, 2)
    ciphers = web.api("/api/v1/ciphers")["rows"]
    assert [(r["ip"], r["port"], r["grade"]) for r in ciphers] == [("127.0.0.2", 443, "strong")]
    assert ciphers[0]["suites"][0]["iana_name"] == "TLS_AES_128_GCM_SHA256"
    assert ciphers[0]["cert_subject"] == "CN=web-2.example.test"


# -- sorting and paging -----------------------------------------------------------------


def test_list_sorts_by_each_allowed_key_both_ways(web: Served) -> None:
    desc = web.api("/api/v1/list?sort=port&direction=desc&per_page=3")
    assert [r["port"] for r in desc["rows"]] == [10059, 10058, 10057]
    # in any case, as the filters are taken: applied, not read as the default order
    shouted = web.api("/api/v1/list?sort=Port&direction=DESC&per_page=3")
    assert [r["port"] for r in shouted["rows"]] == [10059, 10058, 10057]
    asc = web.api("/api/v1/list?sort=port&direction=asc&per_page=3")
    assert [r["port"] for r in asc["rows"]] == [22, 22, 80]
    risky = web.api("/api/v1/list?sort=risk&direction=desc&per_page=3")
    assert {r["risk_color"] for r in risky["rows"]} == {"red"}
    products = web.api("/api/v1/list?sort=product&per_page=1000&color=green")
    names = [r["product"].lower() for r in products["rows"]]
    assert names == sorted(names)
    default = web.api("/api/v1/list?per_page=2")
    assert default["sort"] == "target"
    assert [(r["ip"], r["port"]) for r in default["rows"]] == [("127.0.0.1", 22),
                                                                ("127.0.0.1", 80)]


def test_pagination_covers_every_row_once(web: Served) -> None:
    seen: list[tuple[str, int]] = []
    first = web.api("/api/v1/list?per_page=10&sort=port")
    assert (first["total"], first["pages"]) == (TOTAL_PORTS, 7)
    for page in range(1, first["pages"] + 1):
        data = web.api(f"/api/v1/list?per_page=10&sort=port&page={page}")
        assert data["page"] == page and data["total"] == TOTAL_PORTS
        seen += [(r["ip"], r["port"]) for r in data["rows"]]
    assert len(seen) == len(set(seen)) == TOTAL_PORTS
    beyond = web.api("/api/v1/list?per_page=10&page=99")
    assert beyond["rows"] == []


# -- 400 paths --------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "message"), [
    ("/api/v1/list?port=abc", "port must be a whole number"),
    ("/api/v1/list?port=70000", "port must be between 0 and 65535"),
    ("/api/v1/list?color=purple", "color must be one of red, yellow, green"),
    ("/api/v1/list?prevalence=everywhere", "prevalence must be one of"),
    ("/api/v1/list?sort=banner", "sort must be one of"),
    ("/api/v1/list?sort=port&direction=sideways", "direction must be one of asc, desc"),
    ("/api/v1/list?page=0", "page must be between 1"),
    ("/api/v1/list?page=x", "page must be a whole number"),
    ("/api/v1/list?port=%D9%A8%D9%A0", "port must be a whole number"),  # Arabic-Indic 80
    ("/api/v1/list?port=1_0", "port must be a whole number, not '1_0'"),
    ("/api/v1/list?port=%2B5", "port must be a whole number, not '+5'"),
    ("/api/v1/list?page=%EF%BC%91%EF%BC%92", "page must be a whole number"),  # fullwidth 12
    ("/api/v1/list?page=-1", "page must be a whole number, not '-1'"),
    ("/api/v1/changes?from=9999-01-01&to=5000-01-01", "from is after to"),
    ("/api/v1/changes?to=2020-01-01", "since (7d, counted back from now) starts after to"),
    ("/api/v1/changes?since=1d&to=2020-01-01", "since (1d, counted back from now)"),
    ("/api/v1/list?per_page=5000", "per_page must be between 1 and 1000"),
    ("/api/v1/list?banner=x", "list has no parameter 'banner'"),
    # the sorting controls are offered only where the report sorts (a review)
    ("/api/v1/list?banner=x", ", direction, page, per_page, sort"),
    ("/api/v1/products?banner=x", "it accepts org, target, color, port, product, page, per_page"),
    ("/api/v1/list?port=22&port=80", "port is given more than once"),
    ("/api/v1/list?product=" + "a" * 4097, "product is too long (4097 characters; at most 4096)"),
    ("/api/v1/list?target=%00%1b", "target contains control characters"),
    ("/api/v1/summary?sort=port", "summary cannot be sorted"),
    ("/api/v1/products?direction=desc", "products cannot be sorted"),
    ("/api/v1?bogus=1", "/api/v1 takes no parameter; got 'bogus'"),
    ("/api/v1/summary/charts?page=999", "the summary charts take filters only, not page"),
    ("/api/v1/summary/charts?direction=desc", "take filters only, not direction"),
    ("/api/v1/ciphers?grade=excellent", "grade must be one of weak, medium, strong"),
    # a number past any bound is out of range, not "not a whole number" (a review)
    ("/api/v1/list?page=99999999999999999999",
     "page must be between 1 and 1000000, not 99999999999999999999"),
    ("/api/v1/list?port=123456789012345678901", "port must be between 0 and 65535, not "
     "123456789012345678901"),
])
def test_bad_values_are_a_400_with_the_reason(web: Served, query: str, message: str) -> None:
    status, headers, body = web.get(query)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert message in json.loads(body)["error"]


def test_target_sorts_both_ways_and_the_links_keep_the_direction(web: Served) -> None:
    # Given the List sorted by target, descending (the Target header's second click)
    down = web.api("/api/v1/list?sort=target&direction=desc&per_page=1000")
    up = web.api("/api/v1/list?sort=target&direction=asc&per_page=1000")
    targets = [r["target"].lower() for r in down["rows"]]
    # Then the rows come in descending target order, the ascending order reversed
    assert targets == sorted(targets, reverse=True) and len(set(targets)) > 1
    assert [r["target"].lower() for r in up["rows"]] == sorted(targets)
    assert (down["sort"], down["direction"]) == ("target", "desc")
    # direction alone reverses the default order (by target) too, as the header shows
    alone = web.api("/api/v1/list?direction=desc&per_page=1000")
    assert [r["target"].lower() for r in alone["rows"]] == targets
    # And the page's other links keep the direction
    status, _, body = web.get("/list?sort=target&direction=desc&per_page=25")
    assert status == 200
    row_size_links = re.findall(r'href="(/list\?[^"]*per_page=100[^"]*)"', body)
    assert row_size_links, body[:500]
    assert all("sort=target" in link and "direction=desc" in link for link in row_size_links)


def test_summary_charts_agree_with_the_summary(web: Served) -> None:
    # Given the Summary's rows and the charts' data, same (no) filters
    charts = web.api("/api/v1/summary/charts")
    rows = web.api("/api/v1/summary?per_page=1000")["rows"]
    # Then the colour bars count what the Summary's rows count, target by target
    colours = charts["colours"]
    assert colours["targets"] == len(rows) > 0
    assert [colours[c] for c in ("red", "yellow", "green")] == [
        sum(r[c] for r in rows) for c in ("red", "yellow", "green")]
    assert all(set(p) == {"day", "average", "worst", "targets"}
               for p in charts["risk_over_time"])
    # And a filter narrows both alike
    org = urllib.parse.quote(rows[0]["organization"])
    narrowed = web.api(f"/api/v1/summary/charts?org={org}")["colours"]["targets"]
    assert narrowed == len(web.api(f"/api/v1/summary?org={org}&per_page=1000")["rows"])
    assert 0 < narrowed <= len(rows)


@pytest.mark.parametrize("path", ["/", "/list", "/products", "/ciphers"])
def test_a_page_past_the_last_says_so_and_links_the_last(web: Served, path: str) -> None:
    # Given a page number far beyond the last page (an old bookmark)
    status, _, body = web.get(f"{path}?page=1000000")
    # Then the page says so and links the last page, never "Showing 0-49,999,950" nor
    # "run portwatch scan first" over a store that has rows
    assert status == 200
    assert "Page 1,000,000 is past the last page: <a href=" in body
    assert body.count("is past the last page") == 1  # the table says it; the pager not again
    assert "Showing" not in body and "portwatch scan</code> first" not in body
    last = re.search(r'go to page ([\d,]+)</a> of ([\d,]+) rows', body)
    assert last is not None and int(last.group(1).replace(",", "")) >= 1
    # and the pager's Previous is that last page, not page 999,999 (a review, 2026-12-06)
    pages = last.group(1)
    assert f"Page 1,000,000 (past the last, {pages})" in body
    previous = re.search(r'<a rel="prev" href="[^"]*[?&]page=(\d+)', body)
    assert previous is not None and previous.group(1) == pages.replace(",", "")


def test_the_405_names_the_methods_allowed(web: Served) -> None:
    status, headers, body = web.get("/list", method="POST")
    assert (status, body) == (405, "read-only: GET and HEAD only\n")
    assert headers["allow"] == "GET, HEAD"


def test_pages_answer_bad_values_with_a_400_page_that_says_why(web: Served) -> None:
    status, _, body = web.get("/list?port=%3Cscript%3E")
    assert status == 400
    assert "port must be a whole number, not &#39;&lt;script&gt;&#39;" in body
    assert "<script>" not in body


# -- security ---------------------------------------------------------------------------


def test_every_answer_carries_a_csp_that_forbids_scripts(web: Served) -> None:
    for path in ("/", "/list", "/products", "/ciphers", "/api/v1/list", "/list?port=x"):
        _, headers, _ = web.get(path)
        csp = headers["content-security-policy"]
        assert "script-src 'none'" in csp and "default-src 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_pages_render_for_every_report_with_charts(web: Served) -> None:
    status, _, summary = web.get("/?org=Example+Corp")
    assert status == 200
    assert 'aria-labelledby="bars-title bars-desc"' in summary  # the SVG chart
    assert "Red: risky when exposed: 2" in summary  # 3306 and 5432
    # yellow is also a known service with a TLS finding: never called "unidentified"
    assert "Yellow: unknown or TLS issue" in summary and "unidentified" not in summary
    assert "/list?exact_target=127.0.0.3&amp;ip=127.0.0.3" in summary  # the drill-down link
    _, _, products = web.get("/products")
    assert "/list?product=nginx&amp;version=1.22.1" in products
    _, _, ciphers = web.get("/ciphers")
    assert "TLS_AES_128_GCM_SHA256" in ciphers


def test_the_store_is_read_only_over_http(web: Served) -> None:
    status, _, _ = web.get("/api/v1/list", method="POST")
    assert status == 405


def test_loopback_server_refuses_foreign_host_headers(web: Served) -> None:
    """DNS rebinding: a page on evil.example must not read a loopback-only server."""
    status, _, body = web.get("/api/v1/list", headers={"Host": "evil.example:8765"})
    assert status == 421 and "Host header refused" in body
    ok, _, _ = web.get("/api/v1/list", headers={"Host": "localhost"})
    assert ok == 200


def test_token_is_required_beyond_loopback(web_with_token: Served) -> None:
    status, headers, body = web_with_token.get("/api/v1/list")
    assert status == 401 and "token is required" in body
    assert headers["www-authenticate"] == "Bearer"
    wrong, _, _ = web_with_token.get("/api/v1/list",
                                     headers={"Authorization": "Bearer " + "x" * 24})
    assert wrong == 401
    ok, _, body = web_with_token.get("/api/v1/list",
                                     headers={"Authorization": "Bearer " + "t" * 24})
    assert ok == 200 and json.loads(body)["total"] == TOTAL_PORTS
    # first visit in a browser: ?token= becomes an HttpOnly cookie and leaves the URL
    status, headers, _ = web_with_token.get("/list?token=" + "t" * 24 + "&port=22")
    assert status == 303 and headers["location"] == "/list?port=22"
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    ok, _, _ = web_with_token.get("/list?port=22", headers={"Cookie": cookie})
    assert ok == 200


def test_serve_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--store", f"chdb://{tmp_path / 's'}",
                     env={"PORTWATCH_WEB_TOKEN": ""})
    assert result.code == 2
    assert "refusing to serve on 0.0.0.0" in result.stderr
    short = run_cli("serve", "--host", "0.0.0.0", "--token", "short",
                    "--store", f"chdb://{tmp_path / 's'}")
    assert short.code == 2 and "token is too short" in short.stderr
    # And on loopback a token given is held to the same length (a blank one served)
    blank = run_cli("serve", "--host", "127.0.0.1", "--token", " ",
                    "--store", f"chdb://{tmp_path / 's'}")
    assert blank.code == 2 and "token is too short (1 characters)" in blank.stderr
    # An empty --host (an unset variable) is bad input, not "get a token": with one, it
    # listened on every interface (a review)
    for host, token in (("", ""), ("", "t" * 24), ("bad host", "t" * 24)):
        empty = run_cli("serve", "--host", host, "--token", token,
                        "--store", f"chdb://{tmp_path / 's'}")
        assert (empty.code, empty.stderr.strip()) == (
            2, f"portwatch: error: --host {host!r} is not an address or a hostname (0.0.0.0 "
               "listens on every interface)")


@pytest.mark.parametrize("filters", [{}, {"org": "Example Corp"}, {"color": "red"},
                                     {"port": 22}, {"product": "nginx"}, {"target": "nobody"}])
def test_summary_page_and_totals_from_one_query_match_the_report_and_its_totals(
    db: Any, filters: dict[str, Any]
) -> None:
    from portwatch.web.query import parse_query
    from portwatch.web.service import ReportService

    service = ReportService(db, use_cache=False)
    items = [(k, str(v)) for k, v in filters.items()]
    everything = db.report("summary", filters)
    for page_no in (1, 2, 3):
        query = parse_query(
            "summary", [*items, ("per_page", "2"), ("page", str(page_no))], is_api=True
        )
        page, totals = service.summary_page(query)
        # Then the page is exactly that slice of the Summary report, in its order
        want = everything.dicts()[(page_no - 1) * 2:page_no * 2]
        assert page.rows == want
        if want:  # (an empty result carries no column names)
            assert page.columns == everything.columns
        # And the totals are those of every target the filters keep, on every page
        assert totals == service.colour_totals(filters)
        assert page.total == totals.targets == len(everything.rows)


# -- downloads (portwatch/web/downloads.py) --------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_download_is_exactly_the_page_rows(web: Served, fmt: str) -> None:
    import csv
    import io

    # Given the second page of a filtered, sorted List (25 rows a page)
    query = "org=example+corp&sort=port&direction=desc&per_page=25&page=2"
    api = web.api(f"/api/v1/list?{query}")
    # When the same query string is downloaded
    status, headers, body = web.get(f"/download/list.{fmt}?{query}")
    # Then it is that page's rows, in that order, as a file
    assert status == 200
    assert headers["content-disposition"] == f'attachment; filename="portwatch-list-page2.{fmt}"'
    rows = list(csv.DictReader(io.StringIO(body))) if fmt == "csv" else json.loads(body)
    assert [(r["ip"], int(r["port"])) for r in rows] == [(r["ip"], r["port"])
                                                          for r in api["rows"]]
    assert len(rows) == 25


def test_what_is_not_there_is_a_404_never_a_redirect(web: Served) -> None:
    # An unknown report's endpoint is missing, as any other (it was a 400: a review)
    status, headers, body = web.get("/api/v1/nosuch")
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == ("unknown report 'nosuch': choose one of summary, "
                                         "list, products, ciphers")
    # and a trailing slash names no page: Starlette redirected to http://<any Host>/list,
    # down from the TLS proxy in front (a review)
    for path in ("/list/?org=x", "/api/v1/list/", "/download/list.csv/"):
        status, headers, _ = web.get(path, headers={"X-Forwarded-Proto": "https"})
        assert (status, headers.get("location")) == (404, None), path


def test_download_refuses_what_the_page_refuses(web: Served) -> None:
    status, _, body = web.get("/download/list.csv?color=purple")
    assert status == 400 and "color must be one of" in json.loads(body)["error"]
    assert web.get("/download/list.xml")[0] == 404
    assert web.get("/download/nothing.csv")[0] == 404


@pytest.mark.parametrize("report", ["summary", "list", "products", "ciphers"])
def test_every_report_page_downloads_its_rows(web: Served, report: str) -> None:
    # Given a report page / When its JSON download is fetched with the same query
    status, body = web.get(f"/{'' if report == 'summary' else report}")[0::2]
    assert status == 200
    link = f"/download/{report}.json"
    assert link in body  # the page links it
    status, _, data = web.get(link)
    # Then it holds as many rows as the API's first page of the same size
    api = web.api(f"/api/v1/{report}?per_page=50")
    assert status == 200 and len(json.loads(data)) == len(api["rows"])


def test_view_ports_of_one_address_under_two_organizations_lists_only_its_own(
        shared_chdb_path: Path) -> None:
    # Given one address scanned as two targets of two organizations (127.0.0.1 for Acme,
    # localhost for Gamma), each with a port of its own
    acme = Target(ip="127.0.0.1", target="127.0.0.1", organization="Acme, Inc.")
    gamma = Target(ip="127.0.0.1", target="localhost", hostname="localhost",
                   organization="Gamma")
    with scratch_store(shared_chdb_path, "two_orgs") as store:
        store.insert_findings([finding(acme, 22, "ssh", "OpenSSH", "9.2p1", RiskColor.GREEN),
                               finding(gamma, 80, "http", "nginx", "1.22.1", RiskColor.GREEN)])
        store.insert_host_scans([HostScan(scan_id="s1", target=t, started_at=NOW, finished_at=NOW,
                                          ports_scanned=65535, open_ports=1)
                                 for t in (acme, gamma)])
        from portwatch.web.app import create_app
        from portwatch.web.service import ReportService

        with serve(create_app(ReportService(store))) as web:
            _, _, summary = web.get("/")
            # (a name scanned as its own target is said once: "127.0.0.1 · localhost ·
            # localhost" was its Target cell; a review)
            assert sorted(re.findall(r'<div class="sub mono">([^<]*)</div>', summary)) == [
                "127.0.0.1", "127.0.0.1 · localhost"]
            links = re.findall(r'href="(/list\?[^"]+)" aria-label="Open ports of', summary)
            # When each row's "View ports" is followed
            listed = {}
            for link in links:
                _, _, page = web.get(html.unescape(link))
                query = html.unescape(link).split("?", 1)[1]
                listed[query] = web.api(f"/api/v1/list?{query}")["rows"]
    # Then each lists its own organization's port only (before: both linked to
    # /list?target=127.0.0.1, which showed both organizations' ports; a review)
    assert sorted(listed) == ["exact_target=127.0.0.1&ip=127.0.0.1&org=Acme%2C+Inc.",
                              "exact_target=localhost&ip=127.0.0.1&org=Gamma"]
    assert {q: [(r["organization"], r["port"]) for r in rows] for q, rows in listed.items()} == {
        "exact_target=127.0.0.1&ip=127.0.0.1&org=Acme%2C+Inc.": [("Acme, Inc.", 22)],
        "exact_target=localhost&ip=127.0.0.1&org=Gamma": [("Gamma", 80)]}


def test_the_summary_drills_into_exactly_its_rows_ports(shared_chdb_path: Path) -> None:
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    # Given targets as written that resolved to one address (a range, a name, a CIDR
    # block), and the range's other address; the name's host with 53 open over TCP and
    # UDP
    ranged = Target(ip="127.0.0.1", target="127.0.0.1-2")
    named = Target(ip="127.0.0.1", target="localhost")
    other = Target(ip="127.0.0.2", target="127.0.0.1-2")
    block = Target(ip="127.0.0.1", target="127.0.0.0/30")
    rows = [finding(ranged, 23005, "http", "nginx", "1", RiskColor.GREEN),
            finding(named, 23006, "http", "nginx", "1", RiskColor.GREEN),
            finding(other, 23007, "http", "nginx", "1", RiskColor.GREEN),
            finding(block, 23008, "http", "nginx", "1", RiskColor.GREEN),
            finding(named, 53, "domain", "", "", RiskColor.YELLOW)]
    rows.append(Finding(port=OpenPort(scan_id="s1", target=named, port=53, proto=Proto.UDP,
                                      observed_at=NOW), risk_color=RiskColor.YELLOW))
    scans = [HostScan(scan_id="s1", target=t, started_at=NOW - timedelta(minutes=1),
                      finished_at=NOW, ports_scanned=65535, open_ports=n)
             for t, n in ((ranged, 1), (named, 3), (other, 1), (block, 1))]
    with scratch_store(shared_chdb_path, "web_drill") as store:
        store.insert_findings(rows)
        store.insert_host_scans(scans)
        with serve(create_app(ReportService(store))) as web:
            # When each Summary row's "View ports" link is followed
            status, _, page = web.get("/")
            assert status == 200
            links = re.findall(r'href="/list\?([^"]+)" aria-label="Open ports of', page)
            drilled = sorted(sorted((r["target"], r["ip"], r["port"], r["proto"])
                                    for r in web.api("/api/v1/list?" + html.unescape(q))["rows"])
                             for q in links)
            # Then each lists its own row's ports only (the address alone listed every
            # target's ports of 127.0.0.1 under each, and a CIDR target as the search
            # matched the others' hosts inside it; reviews)
            assert drilled == [
                [("127.0.0.0/30", "127.0.0.1", 23008, "tcp")],
                [("127.0.0.1-2", "127.0.0.1", 23005, "tcp")],
                [("127.0.0.1-2", "127.0.0.2", 23007, "tcp")],
                [("localhost", "127.0.0.1", 53, "tcp"), ("localhost", "127.0.0.1", 53, "udp"),
                 ("localhost", "127.0.0.1", 23006, "tcp")]]
            # And one protocol of a port is asked for as the Changes page links it
            udp = web.api("/api/v1/list?exact_target=localhost&ip=127.0.0.1&proto=udp"
                          "&port=53")
            assert [(r["port"], r["proto"]) for r in udp["rows"]] == [(53, "udp")]
            # And a bad address or protocol is a 400 that says why
            assert web.get("/list?ip=127.0.0.300")[0] == 400
            status, _, body = web.get("/api/v1/list?proto=sctp")
            assert status == 400 and "proto must be one of tcp, udp" in body
