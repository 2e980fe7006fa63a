"""Risk (stream_processors/risk.py): the colour of a port comes from its identified
service; the target score is exact to the documented formula, bounded, monotonic,
and CDN-expected ports count zero while staying listed.

The score properties are checked over exhaustive grids (no sampling): every
(red, yellow, green) with each count in 0..24, plus large counts. That the
Summary report's SQL computes the same numbers is in tests/integration/test_store.py.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import pytest

from schemas.records import (
    CdnVerdict,
    Finding,
    OpenPort,
    PortState,
    Proto,
    RiskColor,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.risk import (
    assess,
    color_for,
    grade_for,
    is_scored,
    load_catalogue,
    score_counts,
    score_findings,
)

GRID = range(25)
LARGE = (0, 1, 99, 1_000, 65_535, 10**6)


def finding(service: str = "", *, port: int = 8080, proto: Proto = Proto.TCP,
            state: PortState = PortState.OPEN, is_tls: bool = False, tls_grade: str = "",
            cdn: CdnVerdict | None = None, color: RiskColor | None = None) -> Finding:
    f = Finding(
        port=OpenPort(scan_id="s", target=Target("127.0.0.1", "127.0.0.1"), port=port,
                      proto=proto, state=state),
        service=ServiceInfo(service=service, is_tls=is_tls),
        tls=TlsResult(grade=tls_grade, grade_reason="RC4 accepted" if tls_grade else ""),
        cdn=cdn or CdnVerdict(),
    )
    return f.with_(risk_color=color) if color else f


# -- the formula ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("red", "yellow", "green", "raw", "score", "grade"),
    [
        (0, 0, 0, 0, 0.0, "A"),
        (0, 0, 1, 1, 2.5, "A"),
        (0, 1, 0, 3, 7.2, "A"),
        (1, 0, 0, 10, 22.1, "B"),
        (1, 1, 1, 14, 29.5, "C"),
        (0, 0, 4, 4, 9.5, "A"),
        (0, 0, 5, 5, 11.8, "B"),
        (2, 0, 0, 20, 39.3, "C"),
        (3, 0, 0, 30, 52.8, "D"),
        (5, 2, 3, 59, 77.1, "F"),
        (100, 0, 0, 1000, 100.0, "F"),  # rounding reaches 100.0: the bound is inclusive
    ],
)
def test_score_follows_the_documented_formula(red: int, yellow: int, green: int, raw: int,
                                              score: float, grade: str) -> None:
    # Given colour counts, when scored
    s = score_counts(red, yellow, green)
    # Then raw = 10r + 3y + g, score = round(100 (1 - e^(-raw/40)), 1), grade by band
    assert (s.red, s.yellow, s.green, s.raw, s.score, s.grade) == (
        red, yellow, green, raw, score, grade)
    assert s.parts == (f"10x{red} red + 3x{yellow} yellow + 1x{green} green = {raw} -> {score}")


def test_score_matches_the_closed_form_on_the_whole_grid() -> None:
    for r, y, g in itertools.product(GRID, GRID, GRID):
        raw = 10 * r + 3 * y + g
        assert score_counts(r, y, g).score == round(100 * (1 - math.exp(-raw / 40)), 1)


def test_score_is_bounded() -> None:
    # For every grid point and very large counts, 0 <= score <= 100
    for r, y, g in itertools.chain(itertools.product(GRID, GRID, GRID),
                                   itertools.product(LARGE, LARGE, LARGE)):
        s = score_counts(r, y, g)
        assert 0.0 <= s.score <= 100.0, (r, y, g, s)
    assert score_counts(0, 0, 0).score == 0.0


@pytest.mark.parametrize("color", list(RiskColor))
def test_one_more_open_port_never_lowers_the_score(color: RiskColor) -> None:
    # Given any grid point, when one port of the given colour is added
    # Then the score (and so the grade) never goes down, and raw strictly goes up
    order = "ABCDF"
    for r, y, g in itertools.product(GRID, GRID, GRID):
        before = score_counts(r, y, g)
        after = score_counts(r + (color is RiskColor.RED), y + (color is RiskColor.YELLOW),
                             g + (color is RiskColor.GREEN))
        assert after.raw > before.raw
        assert after.score >= before.score, (r, y, g, color)
        assert order.index(after.grade) >= order.index(before.grade)


def test_a_worse_colour_never_lowers_the_score() -> None:
    # Given a port turning green -> yellow or yellow -> red, then the score never drops
    for r, y, g in itertools.product(GRID, GRID, GRID):
        base = score_counts(r, y, g + 1).score
        assert score_counts(r, y + 1, g).score >= base
        assert score_counts(r + 1, y, g).score >= score_counts(r, y + 1, g).score


@pytest.mark.parametrize("counts", [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_negative_counts_are_refused(counts: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        score_counts(*counts)


@pytest.mark.parametrize(
    ("score", "grade"),
    [(0.0, "A"), (9.9, "A"), (10.0, "B"), (24.9, "B"), (25.0, "C"), (49.9, "C"),
     (50.0, "D"), (74.9, "D"), (75.0, "F"), (100.0, "F")],
)
def test_grade_bands(score: float, grade: str) -> None:
    assert grade_for(score) == grade


# -- colours ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "is_tls", "port", "color"),
    [
        ("ssh", False, 22, RiskColor.GREEN),
        ("http", False, 80, RiskColor.GREEN),
        ("https", True, 443, RiskColor.GREEN),
        ("ssl/http", True, 8443, RiskColor.GREEN),  # nmap's tunnel prefix is dropped
        ("HTTP?", False, 8080, RiskColor.GREEN),  # nmap's "unsure" suffix, any case
        ("redis", False, 6379, RiskColor.RED),
        ("mysql", False, 3306, RiskColor.RED),
        ("telnet", False, 23, RiskColor.RED),
        ("ms-wbt-server", False, 3389, RiskColor.RED),
        ("imap", False, 143, RiskColor.YELLOW),
        # implicit TLS is the catalogue's TLS form (not "clear text unless STARTTLS")
        ("ssl/imap", True, 993, RiskColor.GREEN),
        ("ssl/pop3", True, 995, RiskColor.GREEN),
        ("imap", True, 143, RiskColor.YELLOW),  # STARTTLS offered, not enforced
        ("tls/ftp", True, 990, RiskColor.YELLOW),  # not ftp's "clear-text credentials"
        ("ssl/domain", True, 853, RiskColor.GREEN),  # no TLS form catalogued: the service's
        ("redis", False, 22, RiskColor.RED),  # the service decides, not the port number
        ("ssh", False, 6379, RiskColor.GREEN),
        ("gopher-plus-plus", False, 7070, RiskColor.YELLOW),  # not catalogued
        ("", False, 22, RiskColor.YELLOW),  # not identified, even on a "known" port
    ],
)
def test_colour_comes_from_the_identified_service(service: str, is_tls: bool, port: int,
                                                  color: RiskColor) -> None:
    got, reason = color_for(finding(service, port=port, is_tls=is_tls))
    assert got is color
    assert reason


def test_reasons_say_why() -> None:
    assert color_for(finding("")) == (RiskColor.YELLOW, "service not identified")
    assert color_for(finding("gopher-plus-plus")) == (
        RiskColor.YELLOW, "service 'gopher-plus-plus' not catalogued")
    assert color_for(finding("redis"))[1] == load_catalogue()["redis"].reason


@pytest.mark.parametrize(("service", "product", "is_tls", "as_service"), [
    # portwatch's own probes' names (app_protocols, the Server header)...
    ("http", "Elasticsearch", False, "elasticsearch"),
    ("https", "Kubernetes API server", True, "kubernetes"),
    ("http", "Docker", False, "docker"),
    # ... and nmap's match lines'
    ("http", "Elasticsearch REST API", False, "elasticsearch"),
    ("http", "Docker remote API", False, "docker"),
    ("http", "Docker Swarm", False, "docker-swarm"),
    ("http", "CouchDB httpd", False, "couchdb"),
    ("http", "MiniServ", False, "webmin"),
    ("http", "InfluxDB http admin", False, "influxdb"),
    ("http", "MongoDB http console", False, "mongodb"),
    ("http", "OpenSearch", False, "elasticsearch"),  # app_protocols' name for it
    # spacing is not the product's name (a review, 2026-12-06: " Elasticsearch" green)
    ("http", " Elasticsearch", False, "elasticsearch"),
    ("http", "Docker\tremote  API", False, "docker"),
])
def test_an_http_api_that_is_a_database_or_control_plane_is_coloured_as_such(
        service: str, product: str, is_tls: bool, as_service: str) -> None:
    # An open Elasticsearch or Docker API read green, "web server; meant to be public"
    # (a review, 2026-12-06)
    f = finding(service, is_tls=is_tls)
    f = f.with_(service=ServiceInfo(service=service, product=product, is_tls=is_tls))
    entry = load_catalogue()[as_service]
    assert color_for(f) == (entry.color, entry.reason)
    assert entry.color is RiskColor.RED


@pytest.mark.parametrize("product", ["nginx", "Elasticsearch Kibana", "Docker Registry",
                                     "Elasticsearch  Kibana", " Docker  Registry",
                                     "Dockerfile linter", "etcdish", ""])
def test_other_products_keep_their_services_colour(product: str) -> None:
    f = finding("http").with_(service=ServiceInfo(service="http", product=product))
    assert color_for(f) == (RiskColor.GREEN, load_catalogue()["http"].reason)


def test_weak_tls_raises_green_to_yellow_but_never_lowers_red() -> None:
    color, reason = color_for(finding("https", is_tls=True, tls_grade="weak"))
    assert color is RiskColor.YELLOW
    assert reason.endswith("weak TLS: RC4 accepted")
    assert color_for(finding("ldaps", is_tls=True, tls_grade="weak"))[0] is RiskColor.RED
    assert color_for(finding("https", is_tls=True, tls_grade="strong"))[0] is RiskColor.GREEN


def test_udp_open_filtered_is_yellow_and_unscored() -> None:
    f = finding("snmp", proto=Proto.UDP, port=161, state=PortState.OPEN_FILTERED)
    assert color_for(f) == (RiskColor.YELLOW, "no UDP reply: open|filtered, unconfirmed")
    assert not is_scored(assess(f))


def test_assess_sets_colour_and_reason() -> None:
    f = assess(finding("mysql", port=3306))
    assert (f.risk_color, f.risk_reason) == (RiskColor.RED, load_catalogue()["mysql"].reason)


def test_every_catalogue_entry_has_a_colour_and_a_reason() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) > 50
    assert all(entry.reason.strip() for entry in catalogue.values())
    assert {e.color for e in catalogue.values()} == set(RiskColor)
    assert all(name == name.lower() for name in catalogue)


def test_missing_catalogue_warns_with_the_fix(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_processors.risk"):
        assert load_catalogue(str(tmp_path / "missing.yaml")) == {}
    assert "every port will be yellow" in caplog.text
    assert "reinstall portwatch" in caplog.text


# -- CDN-expected ports count zero, and stay listed -------------------------------------

EDGE = CdnVerdict(provider="cloudflare", source="range:cloudflare (2026-11-20)",
                  is_expected_port=True)
EDGE_OTHER_PORT = CdnVerdict(provider="cloudflare", source="range:cloudflare (2026-11-20)")


def test_cdn_expected_port_scores_zero() -> None:
    # Given a CDN edge whose expected ports are open (even with a service not identified;
    # a red one is not discounted: tests/unit/test_cdn.py)
    findings = [assess(finding("http", port=80, cdn=EDGE)),
                assess(finding("https", port=443, is_tls=True, cdn=EDGE)),
                assess(finding("", port=8880, cdn=EDGE))]
    # When the risk stage colours them and the target is scored
    score = score_findings(findings)
    # Then they are green "no risk", still present, and count zero
    assert [f.risk_color for f in findings] == [RiskColor.GREEN] * 3
    assert all("no risk" in f.risk_reason for f in findings)
    assert (score.red, score.yellow, score.green, score.raw, score.score, score.grade) == (
        0, 0, 0, 0, 0.0, "A")


@pytest.mark.parametrize("extra_cdn_ports", [0, 1, 5, 13])
def test_cdn_expected_ports_never_change_a_score(extra_cdn_ports: int) -> None:
    # Given a target with real findings, when CDN-expected ports of any colour are added
    real = [finding(color=RiskColor.RED), finding(color=RiskColor.YELLOW),
            finding(color=RiskColor.GREEN), finding(color=RiskColor.GREEN)]
    cdn_ports = [finding(port=2052 + i, cdn=EDGE, color=RiskColor.RED)
                 for i in range(extra_cdn_ports)]
    # Then the score is the score of the real findings alone
    assert score_findings(real + cdn_ports) == score_findings(real) == score_counts(1, 1, 2)


def test_an_unexpected_port_on_a_cdn_address_still_counts() -> None:
    # A CDN address with a port its provider does not leave open (e.g. SSH) is scored
    f = assess(finding("ssh", port=22, cdn=EDGE_OTHER_PORT))
    assert f.risk_color is RiskColor.GREEN
    assert is_scored(f)
    assert score_findings([f]).green == 1


def test_score_findings_counts_each_colour() -> None:
    findings = [finding(color=c) for c in
                [RiskColor.RED] * 2 + [RiskColor.YELLOW] * 3 + [RiskColor.GREEN] * 4]
    findings.append(finding(state=PortState.OPEN_FILTERED, proto=Proto.UDP,
                            color=RiskColor.RED))  # unconfirmed UDP: not counted
    assert score_findings(findings) == score_counts(2, 3, 4)
    assert score_findings([]) == score_counts(0, 0, 0)


@pytest.mark.parametrize(("udp_name", "as_service"), [
    ("memcache", "memcached"), ("mbap", "modbus"), ("dnp", "dnp3"),
    ("nat-t-ike", "ipsec-nat-t"),
])
def test_nmap_services_udp_names_have_their_protocols_colour(udp_name: str,
                                                             as_service: str) -> None:
    # nmap-services names 11211/udp "memcache", 502 "mbap", 20000 "dnp" and 4500/udp
    # "nat-t-ike": each read yellow "not catalogued" (a review, 2026-12-06)
    catalogue = load_catalogue()
    assert catalogue[udp_name].color is catalogue[as_service].color
    f = finding(udp_name, proto=Proto.UDP)
    assert color_for(f) == (catalogue[udp_name].color, catalogue[udp_name].reason)
