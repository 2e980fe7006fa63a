"""The web reports in a real browser: headless Debian chromium driven by Playwright.

Given real loopback listeners (SSH, SMTP, HTTP, MariaDB, HTTPS and one that greets with
an HTML/script payload), scanned by the real CLI into a real chdb store, and
``portwatch serve`` started as its own process on that store (chdb: the server owns
it), when a browser opens each page, then the rows are the scanned ones, the
Summary -> List and Products -> List drill-downs filter, the hostile banner shows as
text and runs nothing, and screenshots of every page are saved as test artifacts.

Skips when chromium or playwright is missing, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import loopback
from tests.conftest import REPO, run_cli
from tests.serving import portwatch_serve

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
ADDRESSES = ("127.0.0.1", "127.0.0.2")
SERVE_AT = "127.0.0.60"
FAST = {"PORTWATCH_IDENTIFY_BUDGET": "6", "PORTWATCH_BANNER_WAIT": "1"}
DIALOGS: list[str] = []  # alert()/confirm() a page opened: must stay empty
XSS = b"<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"


def _browser_missing() -> str:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is missing (pip install playwright; never `playwright install`)"
    return ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def mariadb_greeting(version: bytes) -> bytes:
    body = b"\x0a" + version + b"\x00" + b"\x08\x00\x00\x00" + b"abcdefgh\x00" + b"\xff\xf7"
    return len(body).to_bytes(3, "little") + b"\x00" + body


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    handlers = {
        "ssh": loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
        "smtp": loopback.banner(b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n"),
        "http": loopback.http_handler("nginx/1.22.1"),
        "mysql": loopback.banner(mariadb_greeting(b"5.5.5-10.11.6-MariaDB-0+deb12u1")),
        "xss": loopback.banner(XSS + b"\r\n"),
    }
    with contextlib.ExitStack() as stack:
        found = {name: stack.enter_context(loopback.listen(h, ADDRESSES)).port
                 for name, h in handlers.items()}
        found["https"] = stack.enter_context(loopback.tls_http_server(
            tmp_path_factory.mktemp("tls"), "Apache/2.4.57 (Debian)", ADDRESSES)).port
        yield found


@pytest.fixture(scope="module")
def server(ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory,
           browser: Any) -> Iterator[str]:
    """Scan both addresses into a fresh store, then serve it from its own process."""
    root = tmp_path_factory.mktemp("web")
    store = f"chdb://{root / 'store'}"
    spec = ",".join(str(p) for p in sorted(ports.values()))
    inventory = root / "assets.yaml"
    inventory.write_text("Example Corp:\n  - target: 127.0.0.1\n    asset: web-1\n")
    first = run_cli("scan", "--inventory", str(inventory), "--ports", spec, "-q",
                    store=store, env=FAST)
    assert first.code == 0, first.stderr
    other = run_cli("scan", "127.0.0.2", "--org", "Other Org", "--asset", "web-2",
                    "--ports", spec, "-q", store=store, env=FAST)
    assert other.code == 0, other.stderr
    # Not 127.0.0.1: serve answers on the URL it prints for any loopback address (issue 14)
    with portwatch_serve(store, host=SERVE_AT) as base:
        yield base


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  base_url=server, device_scale_factor=1)
    tab = context.new_page()
    DIALOGS.clear()
    tab.on("dialog", lambda d: (DIALOGS.append(d.message), d.dismiss()))
    try:
        yield tab
    finally:
        context.close()


def shoot(page: Any, name: str) -> Path:
    """Save the page as artifacts/screenshots/<name>.png, checked here, by the test that
    took it: a PNG of real size written now (a file left by an earlier run proves nothing)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path}: {len(data)} bytes, a blank page?"
    return path


def column(page: Any, label: str) -> list[str]:
    """Texts of one column of the report table, by its data-label."""
    texts: list[str] = page.locator(f"table.report tbody td[data-label='{label}']") \
        .all_inner_texts()
    return [t.strip() for t in texts]


def test_summary_lists_both_targets_and_drills_down_to_list(page: Any,
                                                           ports: dict[str, int]) -> None:
    page.goto("/")
    assert page.title() == "Summary · portwatch"
    targets = column(page, "Target")
    assert len(targets) == 2
    assert any("web-1" in t and "127.0.0.1" in t for t in targets)
    assert set(column(page, "Organization")) == {"Example Corp", "Other Org"}
    assert page.locator("svg.chart-bars").count() == 1
    assert page.locator("svg.chart-line").count() == 1
    shoot(page, "summary")

    page.get_by_role("link", name="Open ports of 127.0.0.2").click()
    page.wait_for_url("**/list?exact_target=127.0.0.2&ip=127.0.0.2&org=Other+Org")
    rows = column(page, "Target")
    assert len(rows) == len(ports)
    assert all("127.0.0.2" in r for r in rows)
    # the row's host exactly: its target as written, at its address
    assert page.locator(".active-filters").inner_text().count("127.0.0.2") == 2


def test_list_shows_every_port_with_words_for_colours(page: Any,
                                                      ports: dict[str, int]) -> None:
    page.goto("/list?target=127.0.0.1")
    got = sorted(int(p.split("/")[0]) for p in column(page, "Port"))
    assert got == sorted(ports.values())
    risks = [cell.splitlines()[0].strip() for cell in column(page, "Risk")]
    assert set(risks) <= {"red", "yellow", "green"} and "red" in risks  # MariaDB
    # every bucket says which count decided it (stream_processors/prevalence_prior.py)
    assert all(re.fullmatch(r"(very common|somewhat common|less common|rare) "
                            r"\((Internet|estate)\)", " ".join(p.split()))
               for p in column(page, "Prevalence")), column(page, "Prevalence")
    shoot(page, "list")

    page.get_by_role("link", name="Port", exact=True).click()  # sort by port
    page.wait_for_url("**sort=port**")
    ordered = [int(p.split("/")[0]) for p in column(page, "Port")]
    assert ordered == sorted(ordered)


def test_products_count_drills_down_to_list(page: Any) -> None:
    page.goto("/products")
    products = column(page, "Product")
    assert "nginx" in products and "OpenSSH" in products
    shoot(page, "products")
    row = page.locator("table.report tbody tr", has_text="nginx")
    row.locator("td[data-label='Instances'] a").click()
    page.wait_for_url("**/list?product=nginx**")
    assert sorted(column(page, "Target"))[0].count("127.0.0.") == 1
    assert {p.split()[0] for p in column(page, "Product · version")} == {"nginx"}
    assert len(column(page, "Target")) == 2  # 127.0.0.1 and 127.0.0.2


def test_ciphers_page_shows_the_tls_port(page: Any, ports: dict[str, int]) -> None:
    page.goto("/ciphers")
    endpoints = column(page, "Endpoint")
    assert any(f"127.0.0.1:{ports['https']}" in e for e in endpoints)
    assert page.locator("td[data-label='Cipher suites'] li").count() > 0
    shoot(page, "ciphers")


def test_hostile_banner_is_shown_as_text_and_runs_nothing(page: Any,
                                                         ports: dict[str, int]) -> None:
    page.goto(f"/list?port={ports['xss']}")
    banners = page.locator("details.banner code").all_text_contents()
    assert any("<script>window.__pwned=1</script>" in b for b in banners), banners
    page.locator("details.banner summary").first.click()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("script").count() == 0
    assert DIALOGS == []
    html = page.content()
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html


def test_pages_work_at_phone_width(browser: Any, server: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=server,
                                  device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        tab = context.new_page()
        for path, name in (("/", "summary-phone"), ("/list?target=127.0.0.1", "list-phone")):
            tab.goto(path)
            width = tab.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} scrolls sideways at phone width ({width}px)"
            shoot(tab, name)
    finally:
        context.close()


# -- issue 14: finding things, downloads, the reason on the row -------------------------------


def test_the_page_answers_on_the_loopback_address_serve_printed(page: Any, server: str) -> None:
    # Given serve bound to 127.0.0.60 / When the browser opens that URL / Then pages answer
    assert server.startswith(f"http://{SERVE_AT}:")
    answer = page.goto("/")
    assert answer is not None and answer.status == 200
    assert page.title() == "Summary · portwatch"


def test_risk_reason_is_visible_on_the_row(page: Any, ports: dict[str, int]) -> None:
    # Given the MariaDB port (red) / When the List shows it
    page.goto(f"/list?port={ports['mysql']}")
    cell = page.locator("table.report tbody td[data-label='Risk']").first
    reason = cell.locator(".reason")
    # Then the reason is text on the row, visible, not only a hover tooltip
    assert reason.is_visible()
    assert reason.inner_text().strip() != ""
    assert cell.inner_text().splitlines()[0].strip() == "red"
    assert cell.get_attribute("title") is None


@pytest.mark.parametrize(("query", "expected_ips"), [
    ("org=example+corp", {"127.0.0.1"}),           # any case
    ("org=OTHER+ORG", {"127.0.0.2"}),
    ("target=WEB-1", {"127.0.0.1"}),               # the asset name
    ("target=127.0.0.", {"127.0.0.1", "127.0.0.2"}),  # an address prefix
    ("target=127.0.0.2%2F32", {"127.0.0.2"}),      # a CIDR block
])
def test_web_filters_find_by_any_case_asset_prefix_and_cidr(
        page: Any, query: str, expected_ips: set[str]) -> None:
    page.goto(f"/list?{query}&per_page=200")
    targets = column(page, "Target")
    assert targets
    assert {ip for t in targets for ip in expected_ips if ip in t.split()} == expected_ips
    assert all(any(ip in t for ip in expected_ips) for t in targets)


def test_a_bad_cidr_in_the_target_field_is_a_400_page_that_says_why(page: Any) -> None:
    answer = page.goto("/list?target=10.0.0.0%2F99")
    assert answer is not None and answer.status == 400
    assert "is not a CIDR block" in page.content()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_download_links_give_exactly_the_rows_the_page_shows(page: Any, fmt: str) -> None:
    import csv
    import io
    import json

    # Given a filtered List page in a sort order of its own
    page.goto("/list?target=127.0.0.&sort=port&direction=desc&per_page=25")
    shown = [int(p.split("/")[0]) for p in column(page, "Port")]
    # When its download link is followed
    link = page.get_by_role("link", name=fmt.upper(), exact=True)
    assert "sort=port" in (link.get_attribute("href") or "")
    with page.expect_download() as info:
        link.click()
    download = info.value
    text = Path(download.path()).read_text(encoding="utf-8")
    # Then the file holds exactly those rows, in that order
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = json.loads(text)
    assert [int(r["port"]) for r in rows] == shown
    assert download.suggested_filename == f"portwatch-list-page1.{fmt}"
