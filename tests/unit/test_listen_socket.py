"""The web server's socket listens as soon as it is announced (real loopback sockets)."""

from __future__ import annotations

import socket

import pytest

from portwatch.web.server import ListenError, listen_socket


def test_a_client_that_reads_the_advert_before_the_server_runs_is_queued_not_refused() -> None:
    # Given the socket serve announces (advert, "listening" line) before uvicorn starts
    sock = listen_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        # When a client connects in between, then it is accepted into the backlog
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            accepted, _ = sock.accept()  # and the server finds it waiting
            with accepted:
                assert accepted.recv(64).startswith(b"GET /healthz")
    finally:
        sock.close()


def test_a_taken_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ListenError) as err:
            listen_socket("127.0.0.1", taken.getsockname()[1])
    assert "cannot listen on 127.0.0.1:" in str(err.value) and "\n" not in str(err.value)
