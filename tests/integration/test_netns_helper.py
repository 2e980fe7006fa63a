"""The namespace test-host helper: its safety refusals and its teardown.

These checks are what make scanning a 198.18.x.y test host safe: a packet for an
address that is not really behind our veth would leave by the default route.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests import netns
except ModuleNotFoundError:  # tests/ is not on sys.path: load the helper by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import netns  # type: ignore[no-redef]

pytestmark = pytest.mark.netns

INDEX = 61  # 198.18.61.0/24, unused by the other netns tests


def _pid_gone(pid: int) -> bool:
    return not netns._pid_alive(pid)


def test_host_serves_banners_and_names_its_parts() -> None:
    netns.require_root()
    # Given a test host with two banner ports and two addresses
    with netns.test_host(INDEX, tcp_banners={22: b"SSH-2.0-pw\r\n", 80: b""}, n_addresses=2) as h:
        # When we connect to the banner port on the second address
        with socket.create_connection((h.addresses[1], 22), timeout=3) as conn:
            banner = conn.recv(64)
        # Then the banner comes from inside the namespace, and the names add up
        assert banner == b"SSH-2.0-pw\r\n"
        assert h.addresses == (f"198.18.{INDEX}.2", f"198.18.{INDEX}.3")
        assert h.host_ip == f"198.18.{INDEX}.1"
        assert h.scanner_ip == f"198.18.{INDEX}.250"
        assert h.tcp_open == {22, 80}
        assert h.namespace == f"pwtest-{os.getpid()}-{INDEX}"
        assert len(h.peer_mac.split(":")) == 6


def test_teardown_leaves_no_namespace_veth_or_listener() -> None:
    netns.require_root()
    # Given a test host that is used and then left
    with netns.test_host(INDEX, tcp_banners={2222: b"x"}) as h:
        listeners = subprocess.run(
            ["ip", "netns", "pids", h.namespace], capture_output=True, text=True, check=True
        ).stdout.split()
        assert listeners
    # Then the namespace, the veth and the listener processes are gone
    assert not netns.namespace_exists(h.namespace)
    assert not netns.link_exists(h.host_ifname)
    assert all(_pid_gone(int(pid)) for pid in listeners)


def test_teardown_also_happens_when_the_test_fails() -> None:
    netns.require_root()
    # Given a test body that raises inside the host
    name = ""
    with pytest.raises(RuntimeError, match="boom"), netns.test_host(INDEX) as h:
        name, host_if = h.namespace, h.host_ifname
        raise RuntimeError("boom")
    # Then the host is gone anyway
    assert name and not netns.namespace_exists(name)
    assert not netns.link_exists(host_if)


def test_safety_check_refuses_an_address_not_assigned_in_the_namespace() -> None:
    netns.require_root()
    with netns.test_host(INDEX) as h:
        peer_if = h.host_ifname.replace("pwh", "pwt", 1)
        # When asked to verify an address of the /24 that nobody was given
        # Then it refuses: nothing would answer there but the check cannot vouch for it
        with pytest.raises(netns.NetnsError, match="not assigned"):
            netns.verify_route(h.namespace, peer_if, h.host_ifname, f"198.18.{INDEX}.77")


def test_safety_check_refuses_when_the_route_does_not_leave_through_the_veth() -> None:
    netns.require_root()
    with netns.test_host(INDEX) as h:
        peer_if = h.host_ifname.replace("pwh", "pwt", 1)
        # Given an address assigned inside the namespace but outside the veth's /24,
        # so the root namespace has no route to it through the veth
        stray = f"198.19.{INDEX}.2"
        subprocess.run(
            ["ip", "-n", h.namespace, "addr", "add", f"{stray}/32", "dev", peer_if], check=True
        )
        # When the route is checked, Then it refuses (the packet would take another path)
        with pytest.raises(netns.NetnsError, match="refusing"):
            netns.verify_route(h.namespace, peer_if, h.host_ifname, stray)


def test_index_outside_the_test_range_is_refused() -> None:
    netns.require_root()
    with pytest.raises(netns.NetnsError, match="out of 1..254"), netns.test_host(0):
        pass


def test_sweep_removes_namespaces_of_dead_runs_only() -> None:
    netns.require_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"pwtest-{dead.pid}-{INDEX}"
    try:
        with netns.test_host(INDEX + 1) as live:
            # Given a live test host of ours and a namespace named after an exited process
            subprocess.run(["ip", "netns", "add", stale], check=True)
            # When the sweep runs
            removed = netns.sweep_stale_namespaces()
            # Then only the stale one went (removed by this sweep, or by the other test
            # worker's: every test host sweeps before it starts)
            assert removed in ([stale], [])
            assert not netns.namespace_exists(stale)
            assert netns.namespace_exists(live.namespace)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)


def test_the_socket_fence_lets_through_a_namespace_host_only_while_it_exists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import netfence

    netns.require_root()
    address = f"198.18.{INDEX}.2"
    # Given the fence's routing table read before the namespace exists (now: an earlier
    # test's namespace on these addresses is gone), and then kept for an hour: a "no"
    # must still be read again, so a namespace made a moment ago is let through
    monkeypatch.setattr(netfence, "_ROUTE_TTL", 0.0)
    before = netfence.is_allowed(address)
    monkeypatch.setattr(netfence, "_ROUTE_TTL", 3600.0)
    with netns.test_host(INDEX, tcp_banners={22: b"SSH-2.0-pw\r\n"}) as h:
        routed = netfence.is_allowed(h.addresses[0])
        # a neighbour range no namespace holds still leaves by the default route
        other = netfence.is_allowed(f"198.18.{INDEX + 1}.2")
        with socket.create_connection((h.addresses[0], 22), timeout=3) as conn:
            banner = conn.recv(64)
    assert (h.addresses[0], before, routed, other, banner) == (
        address, False, True, False, b"SSH-2.0-pw\r\n")
    # And once it is gone (the last read is older than the table's reuse), its address
    # is outside the fence again
    monkeypatch.setattr(netfence, "_ROUTE_TTL", 0.0)
    assert netfence.is_allowed(address) is False
