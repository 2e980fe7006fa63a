"""What scanned servers wrote, on the web pages (a web audit of 2026-12-04): characters
that reorder or hide text (a certificate whose subject carries U+202E reads
"CN=www.banklive.com" in a browser) are shown as ``\\uXXXX``, never as they are; and
every drill-down link of the Products page finds exactly the ports it counts, whatever
the product's text (a bidi override, ESC, 300 characters, blanks around it, no
version). Real store, real uvicorn on loopback."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from portwatch.web.app import create_app
from portwatch.web.service import ReportService
from schemas.records import (
    Certificate,
    Finding,
    HostScan,
    OpenPort,
    ProbeStatus,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from tests.conftest import scratch_store
from tests.integration.test_web_api import Served
from tests.integration.test_web_hardening import serve

HOST = Target(ip="127.0.0.60", target="127.0.0.60", organization="Example Corp")
SPOOFED = "CN=www.bank\u202emoc.evil"
PRODUCTS = {  # port -> (product, version) as hostile servers sent them
    443: ("nginx\u202e", "1.2.3"),
    22: ("Evil\x1b[31m" + "A" * 300, "2.0"),
    8080: (" Jetty ", ""),
    8081: ("Jetty", "9.4"),
    8082: ("jetty", "9.4"),  # another spelling: the same Products row as 8081
    8083: ("é" * 4096, "1"),  # the longest text stored: a 24 kB link (h11 took 16 KiB)
    8084: ("Acme", ""),  # "Server: Acme"
    8085: ("Acme", "-"),  # "Server: Acme/-": no version either, the same Products row
}
# what a page must never carry as it is
HIDDEN = ("\u202e", "\x1b", "\x00")


@pytest.fixture(scope="module")
def web(shared_chdb_path: Any) -> Iterator[Served]:


    with scratch_store(shared_chdb_path, "hostile") as db:
        when = datetime.now(UTC) - timedelta(hours=1)
        found = []
        for port, (product, version) in PRODUCTS.items():
            tls = TlsResult()
            if port == 443:
                tls = TlsResult(status=ProbeStatus.COMPLETED, versions=("TLSv1.3",), grade="strong",
                                certificates=(Certificate(subject=SPOOFED, issuer=SPOOFED,
                                                          sha256="cd" * 32,
                                                          not_after="2031-01-01T00:00:00"),))
            found.append(Finding(port=OpenPort(scan_id="s1", target=HOST, port=port,
                                               observed_at=when),
                                 service=ServiceInfo(service="http", product=product,
                                                     version=version, is_tls=port == 443),
                                 tls=tls, risk_color=RiskColor.GREEN))
        db.insert_findings(found)
        db.insert_host_scans([HostScan("s1", HOST, when, when, 65535, len(found))])
        with serve(create_app(ReportService(db, use_cache=False))) as served:
            yield served


@pytest.mark.parametrize("path", ["/", "/list", "/products", "/ciphers?target=127.0.0.60"])
def test_no_page_prints_a_character_that_reorders_or_hides_text(web: Served,
                                                                path: str) -> None:
    status, _, body = web.get(path)
    assert status == 200
    assert not [ch for ch in HIDDEN if ch in body]


def test_the_spoofed_certificate_subject_reads_as_it_is_stored(web: Served) -> None:
    _, _, body = web.get("/ciphers?target=127.0.0.60")
    assert "CN=www.bank\\u202emoc.evil" in html.unescape(body)


def test_every_products_link_finds_the_ports_it_counts(web: Served) -> None:
    _, _, body = web.get("/products")
    links = re.findall(r'<a class="count-link" href="/list\?([^"]+)" aria-label="(\d+) open '
                       r"ports running", body)
    # one link per product and version in any case: six rows, " Jetty " (no version)
    # among them, Jetty 9.4 counting both spellings, and Acme with no version counting
    # the one whose version was "-" (two rows of 1 whose links each found 2: a review)
    assert sorted(int(n) for _, n in links) == [1, 1, 1, 1, 2, 2]
    for query, instances in links:
        data = web.api("/api/v1/list?" + html.unescape(query))
        assert data["total"] == int(instances), query
    # and the version-less " Jetty " row's link is "-": its port only, not 9.4's too
    [jetty] = [q for q, _ in links if "version=-" in q and "Jetty" in q]
    rows = web.api("/api/v1/list?" + html.unescape(jetty))["rows"]
    assert [(r["port"], r["version"]) for r in rows] == [(8080, "")]
