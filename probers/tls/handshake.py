"""Full TLS handshakes with pyOpenSSL: TLS 1.3 suite picks and the certificate chain.

Owns: ``full_handshake``, one blocking connection driven by pyOpenSSL under a hard
deadline (non-blocking socket + select, so a stalled peer cannot hold the thread past
``timeout``); a STARTTLS preamble, when asked for, runs first within that deadline. One
``SSL.Context`` per call: a Context cannot be changed once a Connection was made from it
(NOTES.md). Certificates are not verified here: they are described, and judged by
``posture.py`` afterwards.

Must not touch: records, grading, asyncio; raw ClientHellos live in ``hello.py``.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from OpenSSL import SSL, crypto

from probers.tls.hello import (
    MAX_CHAIN_LENGTH,
    HelloOutcome,
    OutcomeKind,
    group_bits,
    sni_name,
    upgrade_outcome,
)
from probers.tls.starttls import Upgrade, UpgradeFailure, perform_upgrade
from probers.tls.suites import SUITES, TLS13_CODES, TlsVersion

_TLS13_BY_NAME = {SUITES[code].iana_name: code for code in TLS13_CODES}
# Everything the bundled OpenSSL can still speak below TLS 1.3. TLS 1.0/1.1 need
# security level 0 with OpenSSL >= 3 (NOTES.md); SSLv3 is compiled out entirely.
_LEGACY_CIPHER_LIST = b"ALL:COMPLEMENTOFALL:@SECLEVEL=0"
_VERSION_LABELS = {
    "TLSv1": TlsVersion.TLS_1_0,
    "TLSv1.1": TlsVersion.TLS_1_1,
    "TLSv1.2": TlsVersion.TLS_1_2,
    "TLSv1.3": TlsVersion.TLS_1_3,
}


@dataclass(frozen=True, slots=True)
class HandshakeSpec:
    """What one full handshake offers. ``tls13_suites`` set = a TLS 1.3-only handshake
    offering exactly those suites, in that order; empty = every version and suite the
    local OpenSSL speaks (the certificate handshake)."""

    server_name: str | None = None
    tls13_suites: tuple[int, ...] = ()


# Every key-exchange group the client may be asked for: OpenSSL's default list has no
# finite-field group, so a TLS 1.3 server that takes only ffdhe4096 read "could not test"
# (sslscan enumerates its suites). A server asks for the one it wants (HelloRetryRequest).
# The post-quantum hybrid first, as OpenSSL's own default does (a server that takes it
# reports it as its key exchange), with key shares for it *and* X25519 ('*'), as the
# default sends: one share alone cost every classic TLS 1.3 server a HelloRetryRequest
# round trip. A build that does not know the hybrid (or the syntax) gets the rest.
_PQ_GROUPS = b"*X25519MLKEM768:*"
_GROUPS = b"X25519:P-256:P-384:P-521:X448:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"


def _offer_every_group(context: SSL.Context) -> None:
    """Set the groups through OpenSSL itself (pyOpenSSL has no call for it); a build
    without the function, or that refuses every list, keeps its default list."""
    try:
        from OpenSSL._util import lib  # noqa: PLC0415 - pyOpenSSL's own binding of OpenSSL

        for groups in (_PQ_GROUPS + _GROUPS, _GROUPS):
            if lib.SSL_CTX_set1_curves_list(context._context, groups) == 1:  # noqa: SLF001
                return
    except (ImportError, AttributeError):
        return


def _make_context(spec: HandshakeSpec) -> SSL.Context:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    _offer_every_group(context)
    if spec.tls13_suites:
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.set_max_proto_version(SSL.TLS1_3_VERSION)
        # Security level 0 here too: it is the context's, not only TLS 1.2's, and OpenSSL
        # puts TLS_AES_128_CCM_8_SHA256 at level 0, so it was never offered (a server
        # preferring it read as refusing every suite)
        context.set_cipher_list(_LEGACY_CIPHER_LIST)
        names = ":".join(SUITES[code].iana_name for code in spec.tls13_suites)
        context.set_tls13_ciphersuites(names.encode())
    else:
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_cipher_list(_LEGACY_CIPHER_LIST)
        names = ":".join(SUITES[code].iana_name for code in TLS13_CODES)
        context.set_tls13_ciphersuites(names.encode())
    return context


def _wait(sock: socket.socket, *, for_write: bool, deadline: float) -> bool:
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    # poll, not select: select() refuses descriptors >= FD_SETSIZE (1024), and a scanning
    # process with many sockets and stores open reaches that (a CI run did).
    poller = select.poll()
    poller.register(sock, select.POLLOUT if for_write else select.POLLIN)
    return bool(poller.poll(left * 1000))


def _chain_der(connection: SSL.Connection) -> tuple[bytes, ...]:
    """The served chain as DER, as OpenSSL read it. Not through cryptography
    (``as_cryptography=True``): its parser is stricter than OpenSSL's, so a certificate
    the handshake accepted (a notAfter of letters) raised out of the probe; the DER is
    described, unreadable parts and all, by ``certs.describe_certificate``."""
    chain = connection.get_peer_cert_chain() or []
    return tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
                 for cert in chain[:MAX_CHAIN_LENGTH])


def _error_text(exc: SSL.Error) -> str:
    reasons = [str(part[2]) for part in exc.args[0] if isinstance(part, tuple) and len(part) > 2]
    return "; ".join(reasons) or "handshake failed"


def full_handshake(
    ip: str, port: int, spec: HandshakeSpec, timeout: float, upgrade: Upgrade = Upgrade.DIRECT
) -> HelloOutcome:
    """One pyOpenSSL handshake on one connection (after ``upgrade``'s plaintext preamble),
    bounded by ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    context = _make_context(spec)
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except TimeoutError:
        return HelloOutcome(OutcomeKind.TIMEOUT, f"TCP connect timed out after {timeout:g}s")
    except OSError as exc:
        return HelloOutcome(OutcomeKind.CONNECT_FAILED, f"TCP connect failed: {exc.strerror}")
    if upgrade is not Upgrade.DIRECT:
        try:
            perform_upgrade(sock, upgrade, server_name=spec.server_name or ip, deadline=deadline)
        except UpgradeFailure as failure:
            sock.close()
            return upgrade_outcome(failure)
    sock.setblocking(False)
    connection = SSL.Connection(context, sock)
    sni = sni_name(spec.server_name or "")
    if sni is not None:
        connection.set_tlsext_host_name(sni)
    connection.set_connect_state()
    try:
        while True:
            try:
                connection.do_handshake()
                break
            except SSL.WantReadError:
                if not _wait(sock, for_write=False, deadline=deadline):
                    return HelloOutcome(
                        OutcomeKind.TIMEOUT, f"handshake stalled: no answer within {timeout:g}s"
                    )
            except SSL.WantWriteError:
                if not _wait(sock, for_write=True, deadline=deadline):
                    return HelloOutcome(OutcomeKind.TIMEOUT, "handshake stalled on send")
        version = _VERSION_LABELS.get(connection.get_protocol_version_name())
        cipher = connection.get_cipher_name() or ""
        code = _TLS13_BY_NAME.get(cipher, 0)
        if version is TlsVersion.TLS_1_3 and not code:
            return HelloOutcome(OutcomeKind.PROTOCOL_ERROR, f"unknown TLS 1.3 suite {cipher}")
        group = connection.get_group_name() or ""
        return HelloOutcome(
            OutcomeKind.ACCEPTED,
            detail=cipher,  # OpenSSL's name of the suite, for handshakes below TLS 1.3
            suite=code,
            version=version,
            kex_group=group,
            kex_bits=group_bits(group),
            certificates=_chain_der(connection),
            is_tls_answer=True,
        )
    except (SSL.ZeroReturnError, SSL.SysCallError) as exc:
        closed = f"connection closed during handshake: {exc}"
        chosen = _chosen_tls13_suite(connection, closed)
        if chosen is not None:
            # The server's ServerHello was read: it chose this suite, then closed (a reset
            # after the choice is the server's, not a refusal of the offer)
            return chosen
        return HelloOutcome(OutcomeKind.CLOSED, closed)
    except SSL.Error as exc:
        # An alert from the peer, or our own refusal of its answer (e.g. it picked TLS 1.2
        # when only 1.3 was offered): either way the offer was not accepted. Unless a
        # TLS 1.3 ServerHello was read first: the suite was chosen, and what failed came
        # after (OpenSSL refuses a Certificate message over 100 KB: TLS 1.3 went missing
        # from a port serving a long chain, a review)
        chosen = _chosen_tls13_suite(connection, _error_text(exc))
        if chosen is not None:
            return chosen
        return HelloOutcome(OutcomeKind.ALERT, _error_text(exc), is_tls_answer=True)
    except OSError as exc:
        return HelloOutcome(OutcomeKind.CLOSED, f"socket error: {exc.strerror or exc}")
    finally:
        sock.close()


def _chosen_tls13_suite(connection: SSL.Connection, cut_short: str) -> HelloOutcome | None:
    """The TLS 1.3 suite a ServerHello chose on a handshake that did not finish (None
    when no ServerHello was read, or it chose no TLS 1.3 suite we know); ``cut_short``
    says what ended it."""
    try:
        version = _VERSION_LABELS.get(connection.get_protocol_version_name())
        cipher = connection.get_cipher_name() or ""
    except SSL.Error:
        return None
    code = _TLS13_BY_NAME.get(cipher, 0)
    if version is not TlsVersion.TLS_1_3 or not code:
        return None
    return HelloOutcome(OutcomeKind.ACCEPTED, detail=cipher, suite=code, version=version,
                        is_tls_answer=True, cut_short=cut_short)


def tls13_spec(server_name: str | None, suites: Sequence[int]) -> HandshakeSpec:
    return HandshakeSpec(server_name=server_name, tls13_suites=tuple(suites))


__all__ = ["HandshakeSpec", "full_handshake", "tls13_spec"]
