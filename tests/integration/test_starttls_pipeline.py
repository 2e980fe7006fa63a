"""The whole per-port chain on a real STARTTLS server: identification names the service,
the TLS stage picks the upgrade from that name (not from the port: postfix listens on a
random high port here), risk judges the result, the real chdb store keeps it, and the
Ciphers report shows how TLS was reached and the certificate's posture.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas.records import OpenPort, ProbeStatus, RiskColor, Target
from stream_processors.stages import make_context, process
from stream_processors.store import Store
from tests import starttls_servers as servers
from tests.servers import ServerUnavailable
from tests.tls_pki import TestPki

pytestmark = pytest.mark.slow


def _finding_for(port: int, *, nmap_probes: bool = False, hostname: str = "") -> object:
    ctx = make_context(banner_wait=2.0, identify_budget=10.0, use_nmap_probes=nmap_probes,
                       tls_timeout=5.0, tls_budget=60.0)  # fmt: skip
    open_port = OpenPort(scan_id="scan-starttls",
                         target=Target("127.0.0.1", hostname or "127.0.0.1", hostname),
                         port=port)  # fmt: skip
    return asyncio.run(process(open_port, ctx))


def test_smtp_on_a_high_port_is_enumerated_through_starttls_and_stored(tmp_path: Path) -> None:
    # Given postfix with STARTTLS on a random high port (not 25/587) and a certificate
    # expiring in 5 days from a CA the system does not trust
    pki = TestPki(tmp_path)
    try:
        with servers.start_postfix(pki.expiring(5.5)) as server:
            finding = _finding_for(server.port)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    # Then identification said smtp, and TLS was reached through SMTP STARTTLS
    assert finding.service.service == "smtp"  # type: ignore[attr-defined]
    tls = finding.tls  # type: ignore[attr-defined]
    assert tls.status is ProbeStatus.COMPLETED, tls.error
    assert tls.reached_via == "starttls-smtp"
    assert len(tls.suites) > 20
    assert tls.days_to_expiry == 5
    assert tls.is_chain_trusted is False  # the test CA is not in the system store
    assert tls.trust_error.startswith("unknown issuer")
    # And risk raised smtp's green to yellow, saying why
    assert finding.risk_color is RiskColor.YELLOW  # type: ignore[attr-defined]
    assert "certificate expires in 5 days" in finding.risk_reason  # type: ignore[attr-defined]

    # When stored in the real chdb store and the Ciphers report is read back
    store = Store.from_url(f"chdb://{tmp_path / 'store'}")
    try:
        store.insert_findings([finding])  # type: ignore[list-item]
        rows = store.report("ciphers", {}).dicts()
        listed = store.report("list", {}).dicts()
    finally:
        store.close()
    # And the List shows how TLS was reached and the countdown
    assert [(r["tls_via"], r["cert_days_left"]) for r in listed] == [("starttls-smtp", 5)]
    # Then the row says how TLS was reached, the countdown and the warnings
    assert len(rows) == 1
    row = rows[0]
    assert (row["reached_via"], row["outcome"], row["cert_days_to_expiry"]) == (
        "starttls-smtp", "tested", 5)
    assert row["cert_name_check"] == "no name to check"
    assert row["cert_expiry_warning"] == "expires within 7 days"
    assert "certificate expires within 7 days (5 days left)" in row["cert_warnings"]
    assert row["profile"] == "non-compliant" and row["profile_version"] == "5.7"
    assert len(row["suites"]) == len(tls.suites)


def test_smtp_without_starttls_is_stored_as_a_finding(tmp_path: Path) -> None:
    try:
        with servers.start_postfix(None) as server:
            finding = _finding_for(server.port)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    tls = finding.tls  # type: ignore[attr-defined]
    assert (tls.status, tls.is_upgrade_offered) == (ProbeStatus.COMPLETED, False)
    assert finding.risk_color is RiskColor.YELLOW  # type: ignore[attr-defined]
    store = Store.from_url(f"chdb://{tmp_path / 'store'}")
    try:
        store.insert_findings([finding])  # type: ignore[list-item]
        row = store.report("ciphers", {}).dicts()[0]
    finally:
        store.close()
    assert (row["outcome"], row["upgrade_note"]) == ("no STARTTLS offered",
                                                     "no STARTTLS offered (EHLO)")
    assert row["cert_days_to_expiry"] is None


@pytest.mark.parametrize(("starter", "service", "via", "nmap_probes"), [
    # dovecot's ManageSieve speaks first: our own banner parser names it
    ("start_dovecot", "sieve", "starttls-sieve", False),
    # slapd waits for the client: nmap's LDAP probes name it (nmap-common is installed)
    ("start_slapd", "ldap", "starttls-ldap", True),
    # prosody answers our GET with an XMPP stream header and a stream error; its stream
    # is opened to the target's name (an XMPP domain), here "localhost"
    ("start_prosody", "xmpp-client", "starttls-xmpp", False),
    # INN's nnrpd greets with "200 <host> InterNetNews NNRP server INN 2.7.1 ready": our
    # greeting parser names it (RFC 3977's 200/201 and a news word)
    ("start_nnrpd", "nntp", "starttls-nntp", False),
])
def test_a_real_scan_reaches_tls_through_the_upgrade_identification_chose(
        tmp_path: Path, starter: str, service: str, via: str, nmap_probes: bool) -> None:
    pki = TestPki(tmp_path)
    try:
        with getattr(servers, starter)(pki.valid()) as server:
            port = int(server.extra["sieve"]) if service == "sieve" else server.port
            finding = _finding_for(port, nmap_probes=nmap_probes,
                                   hostname="localhost" if service.startswith("xmpp") else "")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    # Then identification named the service and TLS was reached through its upgrade
    assert finding.service.service == service  # type: ignore[attr-defined]
    tls = finding.tls  # type: ignore[attr-defined]
    assert tls.status is ProbeStatus.COMPLETED, tls.error
    assert tls.reached_via == via
    assert tls.suites and tls.versions


def test_rdp_tls_of_a_real_xrdp_is_reached_through_x224_negotiation() -> None:
    # Given a real xrdp on a free port (its TLS security layer behind X.224 negotiation)
    from tests import daemons

    try:
        with daemons.start_xrdp() as server:
            finding = _finding_for(server.port)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    # Then identification named RDP, and TLS was enumerated through the RDP negotiation
    assert finding.service.service == "ms-wbt-server"  # type: ignore[attr-defined]
    tls = finding.tls  # type: ignore[attr-defined]
    assert tls.status is ProbeStatus.COMPLETED, tls.error
    assert tls.reached_via == "starttls-rdp"
    assert tls.suites and tls.versions
