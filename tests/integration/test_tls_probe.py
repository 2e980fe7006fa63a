"""probe_tls / detect_tls against real TLS servers and hostile peers on loopback.

Servers: Debian's ``openssl s_server`` (OpenSSL 3.0) for TLS 1.2 / 1.3 and certificates;
``gnutls-serv`` (GnuTLS 3.7, package gnutls-bin) for legacy TLS 1.0 + 3DES, which
Debian's OpenSSL 3.0 is built without. ``sslscan`` is the independent referee for the
suite set. Nothing here connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from probers.tls import detect_tls, probe_tls
from schemas.records import ProbeStatus, TlsResult

try:
    from tests.tls_servers import (
        CertFiles,
        ServerUnavailable,
        banner_server,
        gnutls_server,
        make_cert,
        make_expired_cert,
        openssl_server,
        stalled_server,
        tlslite_server,
    )
except ModuleNotFoundError:  # tests/ is not a package on sys.path: load the helper by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tls_servers import (  # type: ignore[no-redef]
        CertFiles,
        ServerUnavailable,
        banner_server,
        gnutls_server,
        make_cert,
        make_expired_cert,
        openssl_server,
        stalled_server,
        tlslite_server,
    )

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    try:
        return make_cert(tmp_path_factory.mktemp("tls"))
    except ServerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def expired_certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_expired_cert(tmp_path_factory.mktemp("tls-expired"))


def probe(port: int, **kwargs: object) -> TlsResult:
    return asyncio.run(probe_tls(HOST, port, **kwargs))  # type: ignore[arg-type]


def suite_set(result: TlsResult) -> set[tuple[str, str]]:
    return {(s.tls_version, s.iana_name) for s in result.suites}


def test_tls12_only_server_reports_exactly_its_two_suites(certs: CertFiles) -> None:
    # Given an s_server speaking only TLS 1.2 with two ECDHE-RSA-AES-GCM suites
    with openssl_server(
        certs, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    ) as port:
        # When it is probed
        result = probe(port, server_name="localhost")
    # Then exactly those suites at exactly that version come back, strong, over x25519
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.error == ""
    assert result.versions == ("TLSv1.2",)
    assert suite_set(result) == {
        ("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        ("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    }
    assert {s.openssl_name for s in result.suites} == {
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
    }
    assert {(s.strength, s.kex_group, s.kex_bits) for s in result.suites} == {
        ("strong", "x25519", 253)
    }
    assert (result.grade, result.grade_reason) == ("strong", "every accepted suite is strong")


def test_a_small_ec_group_the_server_takes_but_never_prefers_makes_the_port_weak(
        certs: CertFiles) -> None:
    # Given a TLS 1.2 server whose groups are secp192r1 and P-256: offered the modern
    # groups first, it picks P-256 (so the suites' own group looks strong)
    suite = "ECDHE-RSA-AES128-GCM-SHA256"
    with openssl_server(certs, "-tls1_2", "-groups", "secp192r1:P-256",
                        "-cipher", f"{suite}:@SECLEVEL=0") as port:
        result = probe(port)
    # Then the suite is listed with the group it picked, weak for the group it also
    # takes (it read "strong", so the weak count said 0 under a weak grade: a review),
    # and the port is weak for it (sslscan lists "TLSv1.2 96 bits secp192r1"; a review)
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert [(s.iana_name, s.kex_group, s.strength, s.reason) for s in result.suites] == [
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "secp256r1", "weak",
         "EC group under 224 bits: secp192r1 accepted when offered")]
    assert (result.grade, result.grade_reason) == (
        "weak", "TLSv1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (EC group under 224 bits: "
        "secp192r1 accepted when offered)")
    # and it meets no Mozilla profile (it read "intermediate" beside "weak": a review)
    assert (result.profile, result.profile_reasons) == ("non-compliant", (
        "EC group secp192r1 accepted (wants X25519, P-256 or P-384)",))


def test_a_probe_whose_sockets_are_numbered_above_1024_still_completes(certs: CertFiles) -> None:
    # Given a process already holding over 1,024 descriptors (a long scan with many sockets
    # and stores open), so every new socket is numbered past select()'s FD_SETSIZE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard descriptor limit {hard} is below 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert fillers[-1] >= 1024
        with openssl_server(certs, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256") as port:
            # When it is probed
            result = probe(port, server_name="localhost")
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Then the handshakes complete as they do in a fresh process
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert suite_set(result) == {("TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")}


def test_server_preference_is_reported_only_when_the_server_enforces_it(certs: CertFiles) -> None:
    ciphers = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
    # Given the same two suites, once with -serverpref (AES256 first) and once without
    with openssl_server(certs, "-tls1_2", "-cipher", ciphers, "-serverpref") as port:
        enforced = probe(port)
    with openssl_server(certs, "-tls1_2", "-cipher", ciphers) as port:
        follows_client = probe(port)
    # Then the enforced order is numbered, the client-order server has no order (0)
    assert [(s.preference, s.iana_name) for s in enforced.suites] == [
        (1, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
        (2, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    ]
    assert {s.preference for s in follows_client.suites} == {0}
    assert suite_set(follows_client) == suite_set(enforced)


def test_tls13_only_server_reports_exactly_its_suite(certs: CertFiles) -> None:
    # Given an s_server speaking only TLS 1.3 with one suite
    with openssl_server(certs, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256") as port:
        result = probe(port, server_name="localhost")
    # Then that is all there is, and the certificate still comes back
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.versions == ("TLSv1.3",)
    assert suite_set(result) == {("TLSv1.3", "TLS_AES_128_GCM_SHA256")}
    (suite,) = result.suites
    assert (suite.openssl_name, suite.strength, suite.preference) == (
        "TLS_AES_128_GCM_SHA256",
        "strong",
        1,
    )
    assert suite.kex_group == "x25519"
    assert [c.subject for c in result.certificates] == ["CN=localhost"]


def test_a_tls13_server_preferring_ccm_8_is_enumerated_whole(certs: CertFiles) -> None:
    # Given an s_server whose first TLS 1.3 choice is TLS_AES_128_CCM_8_SHA256 (OpenSSL's
    # security level 0): before, it was never offered, and read missing (sslscan and nmap
    # list it first)
    with openssl_server(certs, "-tls1_3", "-serverpref", "-ciphersuites",
                        "TLS_AES_128_CCM_8_SHA256:TLS_AES_128_CCM_SHA256:"
                        "TLS_AES_256_GCM_SHA384") as port:
        result = probe(port, server_name="localhost")
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert [(s.iana_name, s.preference) for s in result.suites] == [
        ("TLS_AES_128_CCM_8_SHA256", 1), ("TLS_AES_128_CCM_SHA256", 2),
        ("TLS_AES_256_GCM_SHA384", 3)]


def test_a_tls13_server_taking_only_a_finite_field_group_is_enumerated(certs: CertFiles
                                                                         ) -> None:
    # Given an s_server whose only TLS 1.3 key exchange is ffdhe4096 (before: "could not
    # test", OpenSSL's default client groups have no finite-field group; sslscan lists
    # its three suites at DHE 4096 bits)
    with openssl_server(certs, "-tls1_3", "-groups", "ffdhe4096") as port:
        result = probe(port, server_name="localhost")
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert suite_set(result) == {("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
                                 ("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                                 ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")}
    assert {(s.kex_group, s.kex_bits) for s in result.suites} == {("ffdhe4096", 4096)}


def test_a_server_taking_the_post_quantum_hybrid_group_is_reported_with_it(
        certs: CertFiles) -> None:
    # Given a TLS 1.3 server on pyOpenSSL's OpenSSL (Debian's openssl 3.0 has no ML-KEM)
    # that takes X25519MLKEM768 only
    import contextlib
    import socket as socketlib
    import struct
    import threading

    from OpenSSL import SSL
    from OpenSSL._util import lib

    from tests.tls_servers import _thread_server

    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate_chain_file(str(certs.cert))
    context.use_privatekey_file(str(certs.key))
    if lib.SSL_CTX_set1_curves_list(context._context, b"X25519MLKEM768") != 1:  # noqa: SLF001
        pytest.fail("this OpenSSL has no X25519MLKEM768")

    def handshake(conn: socketlib.socket) -> None:
        # A blocking socket bounded by the kernel's timeouts, not settimeout(): that makes
        # the descriptor non-blocking, so pyOpenSSL's do_handshake raised WantReadError
        # whenever it ran before the ClientHello arrived, and the server hung up (a CI run
        # under load read "refused every suite")
        conn.setblocking(True)
        bound = struct.pack("ll", 3, 0)
        conn.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVTIMEO, bound)
        conn.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_SNDTIMEO, bound)
        tls = SSL.Connection(context, conn)
        tls.set_accept_state()
        with contextlib.suppress(SSL.Error, OSError):
            tls.do_handshake()
        conn.close()

    def handle(conn: socketlib.socket) -> None:  # a thread per connection: probes overlap
        threading.Thread(target=handshake, args=(conn,), daemon=True).start()

    with _thread_server(handle) as port:
        result = probe(port, server_name="localhost")
    # Then its suites are found with that group (a review: a fixed list of classic groups
    # left the hybrid out, and the server read as plain X25519 or could not be tested)
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert {s.kex_group for s in result.suites} == {"X25519MLKEM768"}


def test_legacy_tls10_3des_server_is_weak_for_3des(certs: CertFiles) -> None:
    # Given a GnuTLS server speaking only TLS 1.0 with only TLS_RSA_WITH_3DES_EDE_CBC_SHA,
    # a suite the local (pyOpenSSL) OpenSSL cannot negotiate at all
    priority = "NONE:+VERS-TLS1.0:+3DES-CBC:+RSA:+SHA1:+COMP-NULL:+SIGN-ALL:+CURVE-ALL"
    try:
        with gnutls_server(certs, priority) as port:
            result = probe(port, server_name="localhost")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    # Then the raw ClientHellos still find it, grade it weak for 3DES, and the port too
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.versions == ("TLSv1.0",)
    assert suite_set(result) == {("TLSv1.0", "TLS_RSA_WITH_3DES_EDE_CBC_SHA")}
    (suite,) = result.suites
    assert suite.openssl_name == "DES-CBC3-SHA"
    assert suite.strength == "weak"
    assert suite.reason.startswith("3DES")
    assert "no forward secrecy" in suite.reason and "CBC in TLS 1.0" in suite.reason
    assert result.grade == "weak"
    assert "TLS_RSA_WITH_3DES_EDE_CBC_SHA (3DES" in result.grade_reason
    # and the certificate comes from the raw handshake, since pyOpenSSL could not connect
    assert [c.subject for c in result.certificates] == ["CN=localhost"]


def test_sslv3_rc4_server_is_found_and_weak(certs: CertFiles) -> None:
    # Given a (tlslite-ng) server speaking only SSLv3, with RC4 and 3DES suites
    with tlslite_server(certs, version=(3, 0), ciphers=["rc4", "3des"]) as port:
        result = probe(port, timeout=2.0)
    # Then SSLv3 is the only version, every suite is weak, and the port is weak for SSLv3
    assert result.status is ProbeStatus.COMPLETED, result.error
    assert result.versions == ("SSLv3",)
    assert suite_set(result) == {
        ("SSLv3", "TLS_RSA_WITH_RC4_128_SHA"),
        ("SSLv3", "TLS_RSA_WITH_RC4_128_MD5"),
        ("SSLv3", "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
    }
    assert {s.strength for s in result.suites} == {"weak"}
    assert all("SSLv3 (POODLE" in s.reason for s in result.suites)
    assert result.grade == "weak"
    assert result.grade_reason.startswith("SSLv3 enabled (POODLE, RFC 7568)")


def test_stalled_peer_reads_could_not_test_within_the_timeout() -> None:
    # Given a peer that accepts and never answers
    with stalled_server() as port:
        started = time.monotonic()
        result = probe(port, timeout=1.0, budget=5.0)
        elapsed = time.monotonic() - started
        is_tls = asyncio.run(detect_tls(HOST, port, timeout=0.5))
    # Then the probe is an error that says so, never an empty suite list, and it is bounded
    assert result.status is ProbeStatus.ERROR
    assert result.error.startswith("could not test: handshake stalled")
    assert result.suites == () and result.versions == ()
    assert elapsed < 4.0  # the 1 s timeout, and well under the 5 s budget (2 cores, loaded)
    assert is_tls is False


def test_exhausted_budget_reads_could_not_test(certs: CertFiles) -> None:
    # Given a healthy server but no time at all to probe it
    with openssl_server(certs, "-tls1_2") as port:
        result = probe(port, budget=0.0)
    # Then nothing is attempted and the result says why
    assert result.status is ProbeStatus.ERROR
    assert result.error == "could not test: scan budget of 0s exhausted"


def test_plain_banner_service_is_not_tls() -> None:
    # Given an SSH-like service that speaks first in plain text
    with banner_server() as port:
        result = probe(port, timeout=1.0)
        is_tls = asyncio.run(detect_tls(HOST, port, timeout=1.0))
    # Then it is "not TLS", with what it said
    assert result.status is ProbeStatus.ERROR
    assert result.error.startswith("not TLS")
    assert "SSH-2.0" in result.error
    assert is_tls is False


def test_detect_tls_is_true_for_a_tls_server(certs: CertFiles) -> None:
    with openssl_server(certs, "-tls1_2") as port:
        assert asyncio.run(detect_tls(HOST, port, timeout=2.0)) is True


def test_certificate_facts_self_signed_and_hostname_match(certs: CertFiles) -> None:
    # Given a server with the self-signed localhost certificate
    expected_sha256 = (
        x509.load_pem_x509_certificate(certs.cert.read_bytes()).fingerprint(hashes.SHA256()).hex()
    )
    with openssl_server(certs) as port:
        by_name = probe(port, server_name="localhost")
        by_ip = probe(port)
        by_other_name = probe(port, server_name="www.example.test")
    # Then the leaf is described, and the name match follows SANs (DNS and IP)
    (leaf,) = by_name.certificates
    assert leaf.subject == "CN=localhost" and leaf.issuer == "CN=localhost"
    assert leaf.sans == ("DNS:localhost", "IP:127.0.0.1")
    assert (leaf.key_type, leaf.key_bits) == ("RSA", 2048)
    assert leaf.signature_algorithm == "sha256WithRSAEncryption"
    assert leaf.is_self_signed is True
    assert leaf.is_expired is False
    assert leaf.sha256 == expected_sha256
    assert leaf.chain_position == 0
    assert (leaf.is_hostname_match, leaf.name_check) == (True, "match")
    # Issue 13: a bare IP target has no name to check: never "mismatch", never "match"
    assert (by_ip.certificates[0].is_hostname_match, by_ip.certificates[0].name_check) == (
        False, "no name to check")
    assert "name mismatch" not in by_ip.certificate_warnings
    assert by_other_name.certificates[0].name_check == "mismatch"
    assert "name mismatch" in by_other_name.certificate_warnings


def test_certificate_facts_expired(expired_certs: CertFiles) -> None:
    # Given a server presenting a certificate that expired on 2021-01-01
    with openssl_server(expired_certs) as port:
        result = probe(port, server_name="expired.test")
    # Then it reads expired, self-signed, valid for its name only
    (leaf,) = result.certificates
    assert leaf.subject == "CN=expired.test"
    assert leaf.not_before == "2020-01-01T00:00:00+00:00"
    assert leaf.not_after == "2021-01-01T00:00:00+00:00"
    assert leaf.is_expired is True
    assert leaf.is_self_signed is True
    assert leaf.is_hostname_match is True


_SSLSCAN_LINE = re.compile(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", re.M)


def _sslscan_suites(port: int) -> set[tuple[str, str]]:
    output = subprocess.run(
        ["sslscan", "--no-colour", f"{HOST}:{port}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    versions = {"TLSv1.0": "TLSv1.0", "TLSv1.1": "TLSv1.1", "TLSv1.2": "TLSv1.2",
                "TLSv1.3": "TLSv1.3", "SSLv3": "SSLv3"}  # fmt: skip
    return {(versions[v], name) for v, name in _SSLSCAN_LINE.findall(output)}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sslscan") is None, reason="sslscan is not installed")
def test_suite_sets_agree_with_sslscan(certs: CertFiles) -> None:
    # Given a default s_server (TLS 1.2 + 1.3, OpenSSL's default suites, ~20 of them)
    with openssl_server(certs) as port:
        started = time.monotonic()
        ours = probe(port, server_name="localhost")
        elapsed = time.monotonic() - started
        theirs = _sslscan_suites(port)
    # Then both tools see the same (version, OpenSSL name) pairs
    assert ours.status is ProbeStatus.COMPLETED, ours.error
    assert {(s.tls_version, s.openssl_name) for s in ours.suites} == theirs
    assert len(theirs) > 10
    print(f"probe_tls enumerated {len(ours.suites)} suites in {elapsed:.3f}s")
