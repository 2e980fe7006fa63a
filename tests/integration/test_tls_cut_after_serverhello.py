"""A TLS server that chooses a TLS 1.3 suite and then resets the connection (a proxy in
front of a real ``openssl s_server`` passes on the ServerHello record only, then resets:
what a load balancer that drops the rest of the flight does). The suite it chose is an
answer: TLS 1.3 is found, as the raw-hello path finds a server that closes after its
ServerHello (a helper session's review, 2026-12-05: TLS 1.3 was reported absent, with no
error saying the list was incomplete)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from probers.tls import probe_tls
from tests import loopback
from tests.tls_servers import make_cert, openssl_server

TLS13_SERVERHELLO = b"\x00\x2b\x00\x02\x03\x04"  # supported_versions: TLS 1.3


def _exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _record(sock: socket.socket) -> bytes:
    header = _exact(sock, 5)
    return header + _exact(sock, int.from_bytes(header[3:5], "big"))


def _pump(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def cutting_proxy(upstream: int) -> Iterator[int]:
    """A proxy to ``upstream`` that resets a connection right after a TLS 1.3
    ServerHello record, and relays everything else."""

    def handle(client: socket.socket) -> None:
        client.settimeout(5)
        with socket.create_connection(("127.0.0.1", upstream), timeout=5) as server:
            server.sendall(_record(client))  # the ClientHello
            hello = _record(server)
            client.sendall(hello)
            if hello[5:6] == b"\x02" and TLS13_SERVERHELLO in hello:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # the reset
            back = threading.Thread(target=_pump, args=(server, client), daemon=True)
            back.start()
            _pump(client, server)
            back.join(5)

    with loopback.listen(handle) as listener:
        yield listener.port


def test_a_tls13_suite_chosen_then_reset_is_found(tmp_path: Path) -> None:
    with openssl_server(make_cert(tmp_path)) as port:
        direct = asyncio.run(probe_tls("127.0.0.1", port, timeout=2.0, budget=20.0))
        with cutting_proxy(port) as proxied:
            cut = asyncio.run(probe_tls("127.0.0.1", proxied, timeout=2.0, budget=20.0))
    # Then the server's TLS 1.3 suites are found through the reset, as directly
    assert "TLSv1.3" in direct.versions
    assert "TLSv1.3" in cut.versions
    assert ({s.iana_name for s in cut.suites if s.tls_version == "TLSv1.3"}
            == {s.iana_name for s in direct.suites if s.tls_version == "TLSv1.3"})


def test_a_name_idna_refuses_goes_without_sni_and_is_not_the_peers_error(
        tmp_path: Path) -> None:
    # Given a target whose host name has a label over 63 characters (an inventory's
    # hostname: IDNA refuses to encode it)
    with openssl_server(make_cert(tmp_path)) as port:
        result = asyncio.run(probe_tls("127.0.0.1", port, server_name="a" * 64 + ".test",
                                       timeout=2.0, budget=20.0))
    # Then the server is probed (without SNI) and its versions found, not a protocol
    # error of our own making charged to it
    assert result.status.value == "completed", result.error
    assert {"TLSv1.2", "TLSv1.3"} <= set(result.versions)
