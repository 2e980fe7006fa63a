"""CDN verdicts (stream_processors/cdn.py): range lookups (nested ranges too), header
signatures, the ``is_cdn_expected`` policy as a table test, and the stage that
tags a finding without ever dropping it.

Safety: no public address is written here. Addresses inside a provider's ranges
are derived from schemas/data/cdn.yaml at run time; synthetic catalogues use the
198.18.0.0/15 test range only. Nothing is sent anywhere: these are lookups.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import data_path
from schemas.records import CdnVerdict, Finding, OpenPort, Proto, ServiceInfo, Target
from stream_processors.cdn import (
    CdnCatalogue,
    HeaderSignature,
    Provider,
    classify,
    is_cdn_expected,
    load_catalogue,
    verdict_for,
)
from stream_processors.risk import assess, score_findings

CLOUDFLARE_EDGE_PORTS = {80, 443, 2052, 2053, 2082, 2083, 2086, 2087, 2095, 2096, 8080, 8443,
                         8880}


def data_file() -> dict[str, dict[str, Any]]:
    with open(data_path("cdn.yaml"), encoding="utf-8") as fh:
        providers: dict[str, dict[str, Any]] = yaml.safe_load(fh)["providers"]
    return providers


def address_in(provider: str, version: int = 4, which: int = 1) -> str:
    """An address inside ``provider``'s first range of this IP version, from the data file
    (``which``: index inside the range; -1 = its last address)."""
    ranges = [ipaddress.ip_network(r) for r in data_file()[provider]["ranges"]]
    net = next(n for n in ranges if n.version == version)
    return str(net[which])


def address_after(provider: str) -> str:
    """The address right after the end of ``provider``'s first IPv4 range, when no other
    range of any provider covers it (checked against the data file)."""
    net = ipaddress.ip_network(data_file()[provider]["ranges"][0])
    candidate = net.broadcast_address + 1
    every = [ipaddress.ip_network(r) for p in data_file().values() for r in p["ranges"]]
    assert not any(candidate in n for n in every if n.version == 4)
    return str(candidate)


def finding(ip: str, port: int, *, proto: Proto = Proto.TCP,
            headers: tuple[tuple[str, str], ...] = (), service: str = "http") -> Finding:
    return Finding(port=OpenPort(scan_id="s", target=Target(ip, ip), port=port, proto=proto),
                   service=ServiceInfo(service=service, headers=headers))


# -- the data file ----------------------------------------------------------------------


def test_data_file_providers_have_provenance_ports_and_ranges() -> None:
    catalogue = load_catalogue()
    assert {"cloudflare", "fastly", "cloudfront", "akamai"} <= set(catalogue.providers)
    for p in catalogue.providers.values():
        assert p.source and p.date, p.name
        assert p.ranges and p.headers and p.expected_tcp, p.name
        for cidr in p.ranges:
            ipaddress.ip_network(cidr)  # strict: every range is a proper network
    assert catalogue.providers["cloudflare"].expected_tcp == CLOUDFLARE_EDGE_PORTS


@pytest.mark.parametrize("provider", ["cloudflare", "fastly", "cloudfront", "akamai"])
def test_addresses_in_a_providers_range_belong_to_it(provider: str) -> None:
    catalogue = load_catalogue()
    # The second, the first and the last address of the first IPv4 range
    for which in (1, 0, -1):
        assert catalogue.provider_for_ip(address_in(provider, 4, which)) == provider


@pytest.mark.parametrize("provider", ["cloudflare", "fastly", "cloudfront"])
def test_ipv6_ranges_are_looked_up_too(provider: str) -> None:
    assert load_catalogue().provider_for_ip(address_in(provider, 6)) == provider


def test_addresses_outside_every_range_have_no_provider() -> None:
    catalogue = load_catalogue()
    assert catalogue.provider_for_ip(address_after("cloudflare")) == ""
    for ip in ("127.0.0.1", "::1", "198.18.0.1", "198.19.255.255"):
        assert catalogue.provider_for_ip(ip) == ""


# -- nested ranges (synthetic catalogue in the test range) -------------------------------


def provider(name: str, *ranges: str, tcp: frozenset[int] = frozenset({443}),
             udp: frozenset[int] = frozenset(),
             headers: tuple[HeaderSignature, ...] = ()) -> Provider:
    return Provider(name=name, source="test", date="2026-01-01", expected_tcp=tcp,
                    expected_udp=udp, headers=headers, ranges=ranges)


NESTED = CdnCatalogue([
    provider("outer", "198.18.16.0/20"),
    provider("same-start", "198.18.16.0/24"),  # nested, sharing the outer's first address
    provider("middle", "198.18.20.0/22"),
    provider("deep", "198.18.21.0/24"),  # nested twice
    provider("single", "198.18.30.7/32"),
])


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("198.18.16.0", "same-start"),
        ("198.18.16.5", "same-start"),
        ("198.18.16.255", "same-start"),
        ("198.18.17.0", "outer"),
        ("198.18.20.0", "middle"),
        ("198.18.20.255", "middle"),
        ("198.18.21.9", "deep"),
        ("198.18.22.1", "middle"),  # after the deepest range, still inside its parent
        ("198.18.23.255", "middle"),
        ("198.18.24.0", "outer"),  # after both nested ranges: back to the outer one
        ("198.18.30.6", "outer"),
        ("198.18.30.7", "single"),
        ("198.18.30.8", "outer"),
        ("198.18.31.255", "outer"),
        ("198.18.32.0", ""),  # one past the outer range
        ("198.18.15.255", ""),  # one before it
        ("::1", ""),  # an IPv6 address against an IPv4-only catalogue
    ],
)
def test_nested_ranges_resolve_to_the_most_specific(ip: str, expected: str) -> None:
    assert NESTED.provider_for_ip(ip) == expected


def test_empty_catalogue_knows_nothing() -> None:
    empty = CdnCatalogue(())
    assert empty.provider_for_ip("198.18.0.1") == ""
    assert empty.provider_for_headers([("server", "cloudflare")]) == ("", "")


# -- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Server", "cloudflare")], ("cloudflare", "header:server=cloudflare")),
        ([("CF-RAY", "8a1b2c3d4e5f-AMS")], ("cloudflare", "header:cf-ray")),
        ([("x-served-by", "cache-ams21080-AMS")], ("fastly", "header:x-served-by=cache-")),
        ([("Via", "1.1 abc.cloudfront.net (CloudFront)")],
         ("cloudfront", "header:via=cloudfront")),
        ([("server", "AkamaiGHost")], ("akamai", "header:server=akamaighost")),
        ([("server", "nginx/1.22.1"), ("x-amz-cf-id", "abc==")],
         ("cloudfront", "header:x-amz-cf-id")),
        ([("server", "nginx/1.22.1")], ("", "")),
        ([("x-served-by", "app-server-3")], ("", "")),  # the value must match too
        ([], ("", "")),
    ],
)
def test_provider_for_headers(headers: list[tuple[str, str]], expected: tuple[str, str]) -> None:
    assert load_catalogue().provider_for_headers(headers) == expected


# -- the policy: one small predicate, one table -----------------------------------------

CF = provider("cf", "198.18.0.0/24", tcp=frozenset(CLOUDFLARE_EDGE_PORTS))
DNS_EDGE = provider("dns-edge", "198.18.1.0/24", tcp=frozenset({443}), udp=frozenset({53}))


@pytest.mark.parametrize(
    ("prov", "proto", "port", "expected"),
    [
        (None, Proto.TCP, 443, False),  # not a CDN address: never expected
        (None, Proto.UDP, 53, False),
        (CF, Proto.TCP, 443, True),
        (CF, Proto.TCP, 80, True),
        (CF, Proto.TCP, 8880, True),
        (CF, Proto.TCP, 22, False),  # SSH on a CDN address is not the CDN's
        (CF, Proto.TCP, 3306, False),
        (CF, Proto.UDP, 443, False),  # the protocol matters
        (DNS_EDGE, Proto.UDP, 53, True),
        (DNS_EDGE, Proto.TCP, 53, False),
    ],
)
def test_is_cdn_expected(prov: Provider | None, proto: Proto, port: int, expected: bool) -> None:
    assert is_cdn_expected(prov, proto, port) is expected


# -- verdicts and the stage --------------------------------------------------------------


@pytest.mark.parametrize("port", sorted(CLOUDFLARE_EDGE_PORTS))
def test_cloudflare_edge_ports_are_expected(port: int) -> None:
    ip = address_in("cloudflare")
    verdict = verdict_for(finding(ip, port))
    assert verdict == CdnVerdict(provider="cloudflare",
                                 source=f"range:cloudflare ({data_file()['cloudflare']['date']})",
                                 is_expected_port=True)


def test_unexpected_port_on_a_cdn_address_is_tagged_but_not_expected() -> None:
    verdict = verdict_for(finding(address_in("cloudflare"), 22, service="ssh"))
    assert (verdict.provider, verdict.is_expected_port) == ("cloudflare", False)


def test_headers_identify_a_cdn_in_front_of_any_address() -> None:
    # Given a loopback address whose HTTP answer carries a CDN header
    f = finding("127.0.0.1", 443, headers=(("cf-ray", "1-AMS"),))
    # Then the verdict comes from the header, and the edge port is expected
    assert verdict_for(f) == CdnVerdict(provider="cloudflare", source="header:cf-ray",
                                        is_expected_port=True)


def test_the_range_verdict_wins_over_headers() -> None:
    f = finding(address_in("fastly"), 80, headers=(("server", "cloudflare"),))
    assert verdict_for(f).provider == "fastly"


def test_no_cdn_no_verdict() -> None:
    assert verdict_for(finding("127.0.0.1", 443)) == CdnVerdict()


def test_verdict_with_an_explicit_catalogue() -> None:
    f = finding("198.18.21.9", 443)
    assert verdict_for(f, NESTED) == CdnVerdict(provider="deep", source="range:deep (2026-01-01)",
                                                is_expected_port=True)


def test_classify_tags_and_never_drops_and_cdn_ports_score_zero() -> None:
    # Given a CDN edge with its edge ports and one odd port open
    ip = address_in("cloudflare")
    findings = [finding(ip, 80), finding(ip, 443, service="https"), finding(ip, 8443),
                finding(ip, 6379, service="redis")]
    # When the CDN stage then the risk stage run
    out = [assess(classify(f)) for f in findings]
    # Then every port is still there, the edge ports are expected and count zero,
    # and the unexpected risky port still counts
    assert [f.port.port for f in out] == [80, 443, 8443, 6379]
    assert [f.cdn.is_expected_port for f in out] == [True, True, True, False]
    assert {f.cdn.provider for f in out} == {"cloudflare"}
    score = score_findings(out)
    assert (score.red, score.yellow, score.green) == (1, 0, 0)


@pytest.mark.parametrize(("ip", "headers"), [
    (address_in("cloudflare"), ()),
    ("127.0.0.1", (("cf-ray", "8a1b2c3d4e5f-LHR"),)),
], ids=["cdn-range", "cdn-header"])
def test_a_red_service_on_an_edge_port_is_not_discounted(
        ip: str, headers: tuple[tuple[str, str], ...]) -> None:
    # Given, on a CDN's address or behind its headers, an Elasticsearch and a Docker API
    # on edge ports, and a plain web page on another (what a proxied origin shows)
    elastic = Finding(port=OpenPort(scan_id="s", target=Target(ip, ip), port=8443),
                      service=ServiceInfo(service="http", product="Elasticsearch REST API",
                                          headers=headers))
    docker = Finding(port=OpenPort(scan_id="s", target=Target(ip, ip), port=8080),
                     service=ServiceInfo(service="http", product="Docker",
                                         headers=headers))
    page = finding(ip, 443, service="https", headers=headers)
    # When the CDN and risk stages run
    out = [assess(classify(f)) for f in (elastic, docker, page)]
    # Then the database and the control plane stay red and are scored (they read green,
    # "no risk", before: a review), still tagged with the provider; the page is the
    # edge's, discounted
    assert [(f.risk_color.value, f.cdn.is_expected_port) for f in out] == [
        ("red", False), ("red", False), ("green", True)]
    assert {f.cdn.provider for f in out} == {"cloudflare"}
    assert out[0].risk_reason.endswith("; reached through the cloudflare edge")
    assert out[2].risk_reason == "expected open on cloudflare edge; no risk"
    score = score_findings(out)
    assert (score.red, score.yellow, score.green) == (2, 0, 0)


def test_missing_data_file_warns_with_the_fix(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stream_processors.cdn"):
        catalogue = load_catalogue(str(tmp_path / "missing.yaml"))
    assert catalogue.providers == {}
    assert "no CDN verdicts" in caplog.text and "reinstall portwatch" in caplog.text


def test_a_custom_data_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cdn.yaml"
    path.write_text(yaml.safe_dump({"providers": {"lab-cdn": {
        "source": "test", "date": "2026-01-01",
        "expected_ports": {"tcp": [443], "udp": [443]},
        "headers": [{"name": "X-Lab-Edge"}],
        "ranges": ["198.18.9.0/24"],
    }}}))
    catalogue = load_catalogue(str(path))
    assert catalogue.provider_for_ip("198.18.9.200") == "lab-cdn"
    assert catalogue.provider_for_headers([("x-lab-edge", "1")]) == ("lab-cdn", "header:x-lab-edge")
    assert catalogue.providers["lab-cdn"].expected_udp == frozenset({443})
