"""A TLS server that drops connections: a load balancer with one dead backend (every
other connection read and closed, no alert), or a rate limit (every connection after
the first few closed). A close is how some servers refuse an offer, so the enumeration
retires the suites of an offer closed on; against a dropping server it lost most of
the suites and called the list complete, and every rescan then "changed" its weak
suites (a review, 2026-12-07: 44 of 123 suites, a medium tls_changed at every scan).
Now the list is whole, or said to be incomplete (and so never compared).

Real servers: ``openssl s_server`` behind a relay on 127.0.0.1 that drops as said.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from probers.tls import probe_tls
from tests import loopback
from tests.integration.test_tls_cut_after_serverhello import _pump, _record
from tests.tls_servers import make_cert, openssl_server

# Many suites below TLS 1.3, the weak ones included (as the review's server)
CIPHERS = ("-cipher", "ALL:eNULL:@SECLEVEL=0", "-no_tls1_3")


@contextlib.contextmanager
def dropping_relay(upstream: int, dropped: Callable[[int, bytes], bool]) -> Iterator[int]:
    """A relay to ``upstream``: connection number n (from 0) is read up to its
    ClientHello and closed with a FIN when ``dropped(n, hello)``, else relayed whole."""
    lock = threading.Lock()
    numbers = itertools.count()

    def handle(client: socket.socket) -> None:
        with lock:
            n = next(numbers)
        client.settimeout(5)
        hello = _record(client)
        if dropped(n, hello):
            return  # closed by the listener: a FIN, no alert
        with socket.create_connection(("127.0.0.1", upstream), timeout=5) as server:
            server.sendall(hello)
            back = threading.Thread(target=_pump, args=(server, client), daemon=True)
            back.start()
            _pump(client, server)
            back.join(5)

    with loopback.listen(handle) as listener:
        yield listener.port


def _probe(port: int):  # type: ignore[no-untyped-def]
    return asyncio.run(probe_tls("127.0.0.1", port, timeout=2.0, budget=60.0))


def test_a_load_balancer_with_a_dead_backend_gives_every_suite_or_says_it_is_partial(
        tmp_path: Path) -> None:
    with openssl_server(make_cert(tmp_path), *CIPHERS) as port:
        direct = _probe(port)
        with dropping_relay(port, lambda n, _hello: n % 2 == 1) as relayed:
            through = _probe(relayed)
    every = {s.iana_name for s in direct.suites}
    assert direct.error == "" and len(every) > 60
    found = {s.iana_name for s in through.suites}
    # Then what it found is real, and the list is whole or said to be partial
    assert found <= every
    assert found == every or through.error.startswith("partial:"), (len(found), through.error)
    assert found != every  # (this relay drops too much for a whole list)
    assert "drops connections" in through.error


def test_a_rate_limited_server_is_said_to_be_partial(tmp_path: Path) -> None:
    with openssl_server(make_cert(tmp_path), *CIPHERS) as port:
        direct = _probe(port)
        with dropping_relay(port, lambda n, _hello: n >= 12) as relayed:
            through = _probe(relayed)
    found = {s.iana_name for s in through.suites}
    every = {s.iana_name for s in direct.suites}
    assert found and found < every
    assert through.error.startswith("partial:") and "drops connections" in through.error


def test_a_server_that_closes_on_suites_it_cannot_serve_stays_complete(
        tmp_path: Path) -> None:
    # A server that closes (rather than alerts) on every offer it shares nothing with:
    # the relay closes whenever the offer holds none of the server's suites, as a
    # deterministic server would; closes are not drops, the list is whole
    with openssl_server(make_cert(tmp_path), "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:"
                        "AES256-SHA", "-no_tls1_3") as port:
        direct = _probe(port)
        assert direct.error == "" and len(direct.suites) == 2
        wanted = {0xC02F, 0x0035}  # the two suites' codes
        with dropping_relay(port, lambda _n, hello: not _offers_any(hello, wanted)) as relayed:
            through = _probe(relayed)
    assert through.error == ""
    assert {s.iana_name for s in through.suites} == {s.iana_name for s in direct.suites}


def _offers_any(hello: bytes, codes: set[int]) -> bool:
    body = hello[5:]
    at = 4 + 2 + 32
    at += 1 + body[at]
    count = int.from_bytes(body[at:at + 2], "big")
    offered = {int.from_bytes(body[i:i + 2], "big") for i in range(at + 2, at + 2 + count, 2)}
    return bool(offered & codes)
