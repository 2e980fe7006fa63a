"""STARTTLS enumeration and certificate posture against real servers on loopback.

Servers are Debian's own daemons started by the test with a config it writes
(``tests/starttls_servers.py``) and certificates from a throwaway CA
(``tests/tls_pki.py``): postfix, dovecot (IMAP, POP3, ManageSieve), vsftpd with
``ssl_enable=YES``, PostgreSQL with ``ssl=on``, MariaDB with TLS, slapd, prosody,
InspIRCd and INN's nnrpd.
``sslscan --starttls-<proto>`` is the independent referee for the suite sets. Nothing here
connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from probers.tls import probe_tls
from schemas.records import ProbeStatus, TlsResult
from tests import starttls_servers as servers
from tests.servers import Server, ServerUnavailable
from tests.tls_pki import LeafFiles, TestPki

HOST = "127.0.0.1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def valid_leaf(pki: TestPki) -> LeafFiles:
    return pki.valid()


def _probe(port: int, upgrade: str, pki: TestPki, server_name: str | None = None) -> TlsResult:
    return asyncio.run(
        probe_tls(HOST, port, upgrade=upgrade, server_name=server_name,
                  trust_store=str(pki.ca_path), timeout=5.0, budget=60.0)
    )  # fmt: skip


@pytest.fixture
def running() -> Iterator[Callable[[AbstractContextManager[Server]], Server]]:
    """Enter a server's context manager, skipping the test when it cannot run here."""
    stack: list[AbstractContextManager[Server]] = []

    def enter(manager: AbstractContextManager[Server]) -> Server:
        try:
            server = manager.__enter__()
        except ServerUnavailable as exc:
            pytest.skip(str(exc))
        stack.append(manager)
        return server

    yield enter
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


_SSLSCAN_LINE = re.compile(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", re.M)


def sslscan_suites(port: int, option: str) -> set[tuple[str, str]]:
    return sslscan_suites_at(HOST, port, option)


def sslscan_suites_at(host: str, port: int, option: str) -> set[tuple[str, str]]:
    """The suites sslscan (the reference) sees; a missing sslscan skips the test, which
    ``make test`` counts as a failure: the comparison is never silently dropped."""
    if shutil.which("sslscan") is None:
        pytest.skip("sslscan is not installed (make apt)")
    output = subprocess.run(
        ["sslscan", "--no-colour", option, f"{host}:{port}"],
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout  # fmt: skip
    return set(_SSLSCAN_LINE.findall(output))


def s_client_cipher(port: int, starttls: str, cipher: str, version: str = "-tls1_2") -> str:
    """The suite ``openssl s_client -starttls <proto> <version> -cipher <cipher>`` gets."""
    output = subprocess.run(
        ["openssl", "s_client", "-starttls", starttls, version,
         "-cipher", f"{cipher}:@SECLEVEL=0",
         "-connect", f"{HOST}:{port}"],
        input="", capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    found = re.search(r"Cipher is (\S+)", output)
    return found.group(1) if found else ""


def _suite_pairs(result: TlsResult) -> set[tuple[str, str]]:
    return {(s.tls_version, s.openssl_name or s.iana_name) for s in result.suites}


def _assert_trusted_enumeration(result: TlsResult, upgrade: str) -> None:
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.error == ""
    assert result.reached_via == upgrade
    assert result.is_upgrade_offered is True
    assert "TLSv1.2" in result.versions
    assert len(result.suites) >= 3
    # The test CA is the trust anchor given: the chain validates; no name was given
    # (an IP target), so the name is not judged.
    assert result.is_chain_trusted is True, result.trust_error
    assert result.certificates[0].name_check == "no name to check"
    assert result.certificate_warnings == ()
    assert len(result.leaf_sha256) == 64
    assert result.profile in ("modern", "intermediate", "old", "non-compliant")


def test_postfix_smtp_starttls_suites_equal_sslscan(pki: TestPki, valid_leaf: LeafFiles,
                                                    running) -> None:  # fmt: skip
    # Given postfix with STARTTLS and a certificate from the test CA
    server = running(servers.start_postfix(valid_leaf))
    # When the port is probed through SMTP's EHLO + STARTTLS
    result = _probe(server.port, "starttls-smtp", pki)
    # Then every suite is enumerated through the upgrade, as sslscan sees them
    _assert_trusted_enumeration(result, "starttls-smtp")
    assert _suite_pairs(result) == sslscan_suites(server.port, "--starttls-smtp")
    # Debian's postfix offers anonymous DH through STARTTLS and TLS 1.0: weak
    assert result.grade == "weak"
    assert any("anon" in s.iana_name for s in result.suites)


def test_postfix_without_tls_is_a_no_starttls_finding(pki: TestPki, running) -> None:
    # Given postfix with TLS switched off
    server = running(servers.start_postfix(None))
    # When probed through SMTP STARTTLS
    result = _probe(server.port, "starttls-smtp", pki)
    # Then it is a finding, not an error: completed, no suites, the upgrade not offered
    assert result.status is ProbeStatus.COMPLETED
    assert result.is_upgrade_offered is False
    assert result.upgrade_note == "no STARTTLS offered (EHLO)"
    assert result.error == ""
    assert result.suites == ()
    assert result.reached_via == "starttls-smtp"


def test_dovecot_imap_pop3_sieve_starttls(pki: TestPki, valid_leaf: LeafFiles,
                                          running) -> None:  # fmt: skip
    # Given dovecot with IMAP (STARTTLS), POP3 (STLS) and ManageSieve listeners
    server = running(servers.start_dovecot(valid_leaf))
    # When each is probed through its own upgrade
    imap = _probe(server.port, "starttls-imap", pki)
    pop3 = _probe(int(server.extra["pop3"]), "starttls-pop3", pki)
    # Then each is enumerated, and all three (one TLS config) agree
    _assert_trusted_enumeration(imap, "starttls-imap")
    _assert_trusted_enumeration(pop3, "starttls-pop3")
    assert _suite_pairs(imap) == _suite_pairs(pop3)
    # ssl_min_protocol = TLSv1.2 in the config
    assert set(imap.versions) == {"TLSv1.2", "TLSv1.3"}
    # sslscan 2.0.7 reports "TLSv1.2 disabled" through dovecot's IMAP and POP3 upgrades
    # (its TLS 1.2 check fails there), so it only referees the TLS 1.3 part; openssl
    # s_client referees TLS 1.2: it negotiates our first TLS 1.2 suite by name.
    theirs = sslscan_suites(server.port, "--starttls-imap")
    assert {p for p in _suite_pairs(imap) if p[0] == "TLSv1.3"} == theirs
    first_tls12 = next(s.openssl_name for s in imap.suites if s.tls_version == "TLSv1.2")
    assert s_client_cipher(server.port, "imap", first_tls12) == first_tls12
    assert s_client_cipher(int(server.extra["pop3"]), "pop3", first_tls12) == first_tls12
    if server.extra.get("sieve"):
        sieve = _probe(int(server.extra["sieve"]), "starttls-sieve", pki)
        _assert_trusted_enumeration(sieve, "starttls-sieve")
        assert _suite_pairs(sieve) == _suite_pairs(imap)


def test_vsftpd_auth_tls(pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given vsftpd with ssl_enable=YES (answers AUTH TLS with "234 Proceed")
    server = running(servers.start_vsftpd_tls(valid_leaf))
    # When probed through AUTH TLS
    result = _probe(server.port, "starttls-ftp", pki)
    # Then its suites are enumerated, equal to sslscan's
    _assert_trusted_enumeration(result, "starttls-ftp")
    assert _suite_pairs(result) == sslscan_suites(server.port, "--starttls-ftp")


def test_plain_vsftpd_has_no_auth_tls(pki: TestPki, running) -> None:
    from tests.servers import start_vsftpd

    # Given vsftpd without TLS
    server = running(start_vsftpd(HOST))
    # When probed through AUTH TLS
    result = _probe(server.port, "starttls-ftp", pki)
    # Then no upgrade is offered (FEAT lists no AUTH TLS): a finding, not an error
    assert result.status is ProbeStatus.COMPLETED
    assert result.is_upgrade_offered is False
    assert result.upgrade_note == "no AUTH TLS offered (FEAT)"
    assert result.suites == ()
    assert result.reached_via == "starttls-ftp"


def test_postgresql_sslrequest(pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given PostgreSQL with ssl=on
    server = running(servers.start_postgres_tls(valid_leaf))
    # When probed through the SSLRequest message
    result = _probe(server.port, "starttls-postgres", pki)
    # Then its suites are enumerated, equal to sslscan --starttls-psql
    _assert_trusted_enumeration(result, "starttls-postgres")
    assert _suite_pairs(result) == sslscan_suites(server.port, "--starttls-psql")


def test_postgresql_without_ssl_answers_n(pki: TestPki, running) -> None:
    from tests.servers import start_postgres

    server = running(start_postgres(HOST))
    result = _probe(server.port, "starttls-postgres", pki)
    assert result.status is ProbeStatus.COMPLETED
    assert result.is_upgrade_offered is False
    assert result.upgrade_note == "no SSL offered (SSLRequest answered N)"


def test_mariadb_ssl_flag(pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given MariaDB with a TLS certificate (CLIENT_SSL set in its greeting)
    server = running(servers.start_mariadb_tls(valid_leaf))
    # When probed through the MySQL SSLRequest
    result = _probe(server.port, "starttls-mysql", pki)
    # Then its suites are enumerated, equal to sslscan --starttls-mysql
    _assert_trusted_enumeration(result, "starttls-mysql")
    assert _suite_pairs(result) == sslscan_suites(server.port, "--starttls-mysql")


def test_slapd_ldap_starttls(pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    server = running(servers.start_slapd(valid_leaf))
    result = _probe(server.port, "starttls-ldap", pki)
    _assert_trusted_enumeration(result, "starttls-ldap")
    # sslscan 2.0.7's --starttls-ldap fails against slapd ("failed with unknown error"):
    # openssl s_client referees instead, per version: our suites negotiate, and with all
    # of them excluded no other suite the local OpenSSL knows is accepted.
    for version, flag in (("TLSv1.2", "-tls1_2"), ("TLSv1.0", "-tls1")):
        ours = [s.openssl_name for s in result.suites if s.tls_version == version]
        assert ours, version
        assert s_client_cipher(server.port, "ldap", ours[0], flag) == ours[0]
        excluded = "ALL:COMPLEMENTOFALL:" + ":".join(f"!{name}" for name in ours)
        assert s_client_cipher(server.port, "ldap", excluded, flag) in ("", "(NONE)")


def test_prosody_xmpp_starttls(pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given prosody serving the XMPP domain "localhost"
    server = running(servers.start_prosody(valid_leaf))
    # When probed through XMPP starttls, with the name the target was given as
    result = _probe(server.port, "starttls-xmpp", pki, server_name="localhost")
    # Then enumerated; the name exists and the leaf covers it
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.reached_via == "starttls-xmpp"
    assert result.is_chain_trusted is True
    assert result.certificates[0].name_check == "match"
    assert "TLSv1.2" in result.versions
    # And the server-to-server port (jabber:server stream) gives the same suites
    s2s = _probe(int(server.extra["s2s"]), "starttls-xmpp-server", pki, server_name="localhost")
    assert (s2s.status, s2s.reached_via) == (ProbeStatus.COMPLETED, "starttls-xmpp-server")
    assert _suite_pairs(s2s) == _suite_pairs(result)
    # sslscan takes the XMPP domain from the host it is given ("localhost")
    assert _suite_pairs(result) == sslscan_suites_at("localhost", server.port,
                                                     "--starttls-xmpp")


def test_inspircd_irc_starttls_suites_are_what_openssl_negotiates(
        pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given InspIRCd with its IRCv3 STARTTLS module (GnuTLS)
    server = running(servers.start_inspircd(valid_leaf))
    # When probed through IRC STARTTLS (670: go ahead)
    result = _probe(server.port, "starttls-irc", pki)
    # Then enumerated through the upgrade
    _assert_trusted_enumeration(result, "starttls-irc")
    # openssl s_client referees each TLS 1.2 suite we list: it negotiates it by name, and
    # one OpenSSL knows that we do not list is refused (sslscan takes six minutes against
    # InspIRCd, whose connection handling slows its hundreds of handshakes down)
    ours = [s.openssl_name for s in result.suites if s.tls_version == "TLSv1.2"]
    assert ours
    for name in ours:
        assert s_client_cipher(server.port, "irc", name) == name
    assert "DHE-RSA-AES256-GCM-SHA384" not in ours  # GnuTLS here offers no finite-field DHE
    assert s_client_cipher(server.port, "irc", "DHE-RSA-AES256-GCM-SHA384") in ("", "(NONE)")


def test_inn_nntp_starttls_suites_are_what_openssl_negotiates(
        pki: TestPki, valid_leaf: LeafFiles, running) -> None:
    # Given INN's nnrpd, which lists STARTTLS in its CAPABILITIES (RFC 4642)
    server = running(servers.start_nnrpd(valid_leaf))
    # When probed through NNTP STARTTLS (382: begin TLS negotiation)
    result = _probe(server.port, "starttls-nntp", pki)
    # Then enumerated through the upgrade
    _assert_trusted_enumeration(result, "starttls-nntp")
    assert "TLSv1.3" in result.versions  # INN 2.7 with OpenSSL 3 offers both
    # sslscan has no NNTP upgrade: openssl s_client -starttls nntp referees each TLS 1.2
    # suite we list (negotiated by name), and a suite nnrpd's OpenSSL does not enable is
    # refused, so the list is not "everything asked for"
    ours = [s.openssl_name for s in result.suites if s.tls_version == "TLSv1.2"]
    assert len(ours) >= 3
    for name in ours:
        assert s_client_cipher(server.port, "nntp", name) == name
    assert "NULL-SHA256" not in ours
    assert s_client_cipher(server.port, "nntp", "NULL-SHA256") in ("", "(NONE)")


# -- certificate posture, through a real STARTTLS service --------------------------------


def test_expired_expiring_and_sha1_certificates(pki: TestPki, running) -> None:
    # Given dovecot serving, in turn, an expired leaf, one expiring in 5 days, a SHA-1 one
    cases = {"expired": pki.expired(), "expiring": pki.expiring(5.5)}
    seen: dict[str, TlsResult] = {}
    for name, leaf in cases.items():
        server = running(servers.start_dovecot(leaf))
        seen[name] = _probe(server.port, "starttls-imap", pki)
    expired, expiring = seen["expired"], seen["expiring"]
    # Then the expired one is untrusted "expired", with a negative countdown
    assert expired.status is ProbeStatus.COMPLETED, expired.error
    assert expired.is_chain_trusted is False
    assert expired.trust_error == "expired"
    # (floored, as the List's SQL: 2 days and some seconds past expiry is -3 whole days)
    assert expired.days_to_expiry == -3
    assert expired.certificate_warnings[0] == "certificate expired"
    assert expired.certificates[0].expiry_warning == "expired"
    # And the one with 5.5 days left is trusted, with the 7-day warning
    assert expiring.is_chain_trusted is True
    assert expiring.days_to_expiry == 5
    assert expiring.certificate_warnings == (
        "certificate expires within 7 days (5 days left)",
    )


def test_sha1_signed_leaf_is_a_weak_signature(pki: TestPki, tmp_path: Path) -> None:
    from tests.tls_servers import CertFiles, openssl_server
    from tests.tls_servers import ServerUnavailable as TlsUnavailable

    # Given a direct-TLS server whose leaf the test CA signed with SHA-1 (s_server needs
    # security level 0 to load it at all)
    leaf = pki.sha1_signed()
    try:
        with openssl_server(CertFiles(leaf.chain, leaf.key), "-cipher", "DEFAULT:@SECLEVEL=0") \
                as port:  # fmt: skip
            result = _probe(port, "direct", pki)
    except TlsUnavailable as exc:
        pytest.skip(str(exc))
    # Then the signature is called weak, on the leaf and on the port
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.reached_via == "direct"
    assert result.certificates[0].weak_signature == "sha1WithRSAEncryption"
    assert "weak signature: leaf: sha1WithRSAEncryption" in result.certificate_warnings
