"""``tests.servers.free_ports``: distinct free loopback ports, bound together (separate
``free_port`` calls once gave dovecot the same port twice in CI)."""

from __future__ import annotations

import socket

from tests.servers import free_ports


def test_ports_are_distinct_and_free() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    assert all(0 < p < 65536 for p in ports)
    for port in ports[:8]:  # released: each can be bound again
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
