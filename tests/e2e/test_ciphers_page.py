"""The Ciphers page at 1,400 px in a real browser (Debian chromium via Playwright), over a
real scan of real STARTTLS servers.

Given postfix (SMTP STARTTLS, a leaf expiring in 5 days, 91 suites) and dovecot (IMAP
STARTTLS) started by the test on loopback, scanned by the real CLI into a real chdb store
and served by ``portwatch serve``, when the Ciphers page opens 1,400 px wide, then each
row says how TLS was reached, the expiry countdown shows, the certificate's dates and key
size sit on one line each, long suite lists are grouped per protocol version and folded
into closed ``<details>`` (no script on the page), and a screenshot is saved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests import starttls_servers as servers
from tests.conftest import run_cli
from tests.e2e.test_web_browser import browser, shoot  # noqa: F401 - fixture re-used
from tests.servers import ServerUnavailable
from tests.serving import portwatch_serve
from tests.tls_pki import TestPki

pytestmark = pytest.mark.browser

WIDTH = 1400


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    pki = TestPki(tmp_path_factory.mktemp("pki"))
    root = tmp_path_factory.mktemp("ciphers-web")
    store = f"chdb://{root / 'store'}"
    with contextlib.ExitStack() as stack:
        try:
            smtp = stack.enter_context(servers.start_postfix(pki.expiring(5.5)))
            imap = stack.enter_context(servers.start_dovecot(pki.valid()))
        except ServerUnavailable as exc:
            pytest.skip(str(exc))
        spec = f"{smtp.port},{imap.port}"
        scan = run_cli("scan", "127.0.0.1", "--ports", spec, "--udp", "none", "-q",
                       store=store, env={"PORTWATCH_IDENTIFY_BUDGET": "8"})  # fmt: skip
        assert scan.code == 0, scan.stderr
    with portwatch_serve(store) as base:
        yield {"base": base, "smtp": smtp.port, "imap": imap.port}


@pytest.fixture
def page(browser: Any, served: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": WIDTH, "height": 900},
                                  base_url=served["base"], device_scale_factor=1)  # fmt: skip
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


def _row(page: Any, port: int) -> Any:
    return page.locator("table.report-ciphers tbody tr", has_text=f"127.0.0.1:{port}")


def _is_one_line(locator: Any) -> bool:
    box = locator.bounding_box()
    line = locator.evaluate("e => parseFloat(getComputedStyle(e).lineHeight) || 20")
    return bool(box) and box["height"] < 1.6 * line


def test_ciphers_page_at_1400px(page: Any, served: dict[str, Any]) -> None:
    page.goto("/ciphers")
    smtp, imap = _row(page, served["smtp"]), _row(page, served["imap"])
    # Then each row says how TLS was reached
    assert smtp.locator(".via .tag").inner_text() == "starttls-smtp"
    assert imap.locator(".via .tag").inner_text() == "starttls-imap"
    # And the expiring leaf has its countdown; the valid one is not flagged
    assert smtp.locator(".countdown").inner_text().strip() == "expires in 5 days"
    assert "expires in" not in imap.locator(".countdown").inner_text()
    # And the certificate's dates and key size sit on one line each (no "RSA 204 / 8")
    cert = smtp.locator("td.cert")
    for label in ("Valid", "Key"):
        value = cert.locator(f"dt:text-is('{label}') + dd")
        assert _is_one_line(value), f"{label} wraps: {value.inner_text()!r}"
    assert cert.locator("dt:text-is('Key') + dd").inner_text() == "RSA 2048"
    # And 91 suites are grouped per version, a few shown, the rest folded (closed)
    groups = smtp.locator(".suite-group")
    assert groups.count() == 4  # TLSv1.0, 1.1, 1.2, 1.3
    assert smtp.locator(".suite-group > ul.suites > li").count() <= 4 * 4
    folded = smtp.locator("details.more-suites")
    assert folded.count() >= 3
    assert folded.first.get_attribute("open") is None
    assert not folded.first.locator("li").first.is_visible()
    # And the page runs no script at all (CSP script-src 'none' would block it anyway)
    assert page.locator("script").count() == 0
    path = shoot(page, f"ciphers-{WIDTH}")
    assert path.stat().st_size > 10_000

    # When a folded group is opened by a click (plain HTML, no script)
    folded.first.locator("summary").click()
    # Then its suites show
    assert folded.first.locator("li").first.is_visible()


def test_list_page_shows_the_upgrade_and_the_countdown(page: Any, served: dict[str, Any]) -> None:
    page.goto("/list?target=127.0.0.1")
    smtp = page.locator("table.report-list tbody tr", has_text=f"{served['smtp']}/tcp")
    service = smtp.locator("td[data-label='Service']").inner_text()
    assert "starttls-smtp" in service
    assert "certificate expires in 5 days" in service
    shoot(page, f"list-starttls-{WIDTH}")
