"""The test helpers' own sockets: a listener that cannot bind its port leaves no socket
open (CI once failed a test on the ResourceWarning of such a socket, collected later)."""

from __future__ import annotations

import gc
import socket
import warnings

import pytest

from tests import loopback


def _unclosed_socket_warnings(action) -> list[str]:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        action()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_listener_on_a_taken_port_raises_and_leaves_no_socket_open() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]

        def listen_on_taken() -> None:
            with pytest.raises(OSError), loopback.listen(loopback.banner(b"x"), port=port):
                pass

        assert _unclosed_socket_warnings(listen_on_taken) == []


def test_a_udp_responder_on_a_taken_port_raises_and_leaves_no_socket_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        def respond_on_taken() -> None:
            with pytest.raises(OSError), loopback.udp_responder(port=port):
                pass

        assert _unclosed_socket_warnings(respond_on_taken) == []
