"""Test hosts in network namespaces: the only non-loopback targets portwatch's tests may scan.

Owns: creating a network namespace ``pwtest-<pid>-<index>`` joined to the root
namespace by a veth pair, the listeners that run *inside* it (TCP banner
services, a DNS-style UDP responder, an "every port SYN-ACKs" tarpit), the
safety checks that run before a test may send a single packet to it, and the
teardown/sweep that always removes it.

Addressing (all inside 198.18.0.0/15, RFC 2544 benchmarking space):

    root namespace                         namespace pwtest-<pid>-<index>
    pwh<pid>-<index>  198.18.<index>.1/24  <== veth ==>  pwt<pid>-<index>
                                                          198.18.<index>.2, .3, ...

``scanner_ip`` (198.18.<index>.250) is an address that nobody in the root
namespace owns. Give it to masscan as ``--adapter-ip``: masscan answers ARP for
it from its own user-space stack, the target's SYN-ACKs come back to an address
the root kernel does not own, and the kernel neither RSTs them nor forwards
them (forwarding is switched off on the host-side veth). With the kernel's own
198.18.<index>.1 instead, discovery still works; the kernel merely RSTs each
SYN-ACK (NOTES.md, masscan section).

Must not touch: any address outside 198.18.0.0/15, any namespace or interface
it did not create (the sweep only removes ``pwtest-<pid>-*`` names whose pid is
dead, i.e. leftovers of an earlier run of this helper).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

TEST_NET = ipaddress.ip_network("198.18.0.0/15")
NS_PREFIX = "pwtest-"
SCANNER_HOST_OCTET = 250  # the unused address masscan may claim as --adapter-ip
MAX_ADDRESSES = 200  # .2 .. .201, well below .250
_NS_RE = re.compile(r"^pwtest-(\d+)-(\d+)$")
_CMD_TIMEOUT = 15.0
_READY_TIMEOUT = 15.0


class NetnsError(RuntimeError):
    """The test host could not be built safely; nothing may be sent to it."""


# --------------------------------------------------------------------------
# The program that runs inside the namespace. Kept dependency-free (stdlib
# only) because it runs under `ip netns exec` with whatever python is ours.
# --------------------------------------------------------------------------
_LISTENER_PROGRAM = r'''
import asyncio, json, socket, struct, sys

cfg = json.loads(sys.argv[1])

async def banner_conn(reader, writer, banner):
    try:
        if banner:
            writer.write(banner)
            await asyncio.wait_for(writer.drain(), 2.0)
    except Exception:
        pass
    finally:
        writer.close()

class Dns(asyncio.DatagramProtocol):
    """Answers anything shaped like a DNS query: same id, QR set, question echoed,
    and one TXT answer (scanners such as masscan only report a DNS reply with an answer)."""
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, addr):
        if len(data) < 12:
            return
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        opcode = (flags >> 11) & 0xF
        rflags = 0x8000 | (opcode << 11) | (flags & 0x0100) | 0x0400
        question, answer, an = b"", b"", 0
        if qd >= 1:
            end = 12
            while end < len(data) and data[end] != 0:
                end += data[end] + 1
            end += 5  # root label, qtype, qclass
            if end <= len(data):
                question = data[12:end]
                qclass = data[end - 2:end]
                txt = b"portwatch-test"
                rdata = bytes([len(txt)]) + txt
                answer = (b"\xc0\x0c\x00\x10" + qclass + struct.pack("!IH", 0, len(rdata))
                          + rdata)
                an = 1
        header = struct.pack("!HHHHHH", qid, rflags, 1 if question else 0, an, 0, 0)
        self.transport.sendto(header + question + answer, addr)

async def main():
    servers = []
    for port, hexbanner in cfg["tcp"].items():
        banner = bytes.fromhex(hexbanner)
        servers.append(await asyncio.start_server(
            lambda r, w, b=banner: banner_conn(r, w, b), "0.0.0.0", int(port),
            reuse_address=True, backlog=4096))
    loop = asyncio.get_running_loop()
    # One UDP socket per address: a reply must come from the address asked.
    for addr in cfg["addresses"]:
        for port in cfg["udp_dns"]:
            await loop.create_datagram_endpoint(Dns, local_addr=(addr, int(port)))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await asyncio.Event().wait()

asyncio.run(main())
'''


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _json(args: Sequence[str]) -> Any:
    out = _run(args).stdout.strip()
    return json.loads(out) if out else []


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    """Skip the calling test when namespaces cannot be created here."""
    if not is_root():
        pytest.skip("needs root to create network namespaces and veth pairs (run as root)")


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie left unreaped by a container init counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def sweep_stale_namespaces() -> list[str]:
    """Delete ``pwtest-<pid>-*`` namespaces (and their veths) left by dead runs.

    A namespace whose creating pid is still alive belongs to a running test
    session and is left alone. Returns the names removed.
    """
    if not is_root():
        return []
    removed: list[str] = []
    for entry in _json(["ip", "-j", "netns", "list"]):
        name = str(entry.get("name", ""))
        m = _NS_RE.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _teardown_namespace(name, f"pwh{m.group(1)}-{m.group(2)}")
        removed.append(name)
    return removed


def _teardown_namespace(ns: str, host_if: str) -> None:
    # Processes left in a dead run's namespace are that run's listeners (started
    # by this helper); end them by pid so the namespace can really go away.
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run(["ip", "netns", "del", ns], check=False)
    _run(["ip", "link", "del", host_if], check=False)  # gone with the peer; belt and braces


@dataclass(frozen=True)
class NetnsHost:
    """What a test needs to know about one namespace test host."""

    namespace: str
    index: int
    host_ifname: str  # host-side veth, in the root namespace (masscan --adapter)
    host_ip: str  # the root kernel's own address on the veth (198.18.<index>.1)
    host_mac: str
    peer_mac: str  # target-side veth MAC (masscan --router-mac: the target is on-link)
    scanner_ip: str  # unused address for masscan --adapter-ip (198.18.<index>.250)
    addresses: tuple[str, ...]  # target addresses inside the namespace
    tcp_open: frozenset[int]  # ports with a real listener (banner services)
    udp_open: frozenset[int]
    raw_only_ports: frozenset[int]  # SYN-ACK a raw scan, RST a connect from host_ip
    syn_ack_all: bool
    catch_all_port: int | None
    banners: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.addresses[0]

    def tx_packets(self) -> int:
        """Packets sent by the root namespace into this host (host-side veth tx counter)."""
        path = f"/sys/class/net/{self.host_ifname}/statistics/tx_packets"
        with open(path) as fh:
            return int(fh.read())


def _addresses(index: int, n_addresses: int) -> tuple[str, str, tuple[str, ...]]:
    if not 1 <= index <= 254:
        raise NetnsError(f"index {index} out of 1..254")
    if not 1 <= n_addresses <= MAX_ADDRESSES:
        raise NetnsError(f"n_addresses {n_addresses} out of 1..{MAX_ADDRESSES}")
    host_ip = f"198.18.{index}.1"
    scanner_ip = f"198.18.{index}.{SCANNER_HOST_OCTET}"
    targets = tuple(f"198.18.{index}.{2 + i}" for i in range(n_addresses))
    for a in (host_ip, scanner_ip, *targets):
        if ipaddress.ip_address(a) not in TEST_NET:  # pragma: no cover - arithmetic above
            raise NetnsError(f"{a} is outside {TEST_NET}")
    return host_ip, scanner_ip, targets


def _assert_subnet_free(index: int) -> None:
    subnet = ipaddress.ip_network(f"198.18.{index}.0/24")
    for link in _json(["ip", "-j", "addr", "show"]):
        for info in link.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            if ipaddress.ip_address(info["local"]) in subnet:
                raise NetnsError(
                    f"198.18.{index}.0/24 already used by {link.get('ifname')}: pick another index"
                )


def verify_route(namespace: str, peer_if: str, host_if: str, target: str) -> None:
    """Refuse unless ``target`` is in ``namespace`` and the root route reaches it via ``host_if``.

    Without the veth a 198.18.x.y packet would follow the default route out of
    the machine; this check is what makes scanning the test host safe.
    """
    if ipaddress.ip_address(target) not in TEST_NET:
        raise NetnsError(f"{target} is outside {TEST_NET}: refusing")
    assigned = {
        info["local"]
        for link in _json(["ip", "-n", namespace, "-j", "addr", "show", "dev", peer_if])
        for info in link.get("addr_info", [])
        if info.get("family") == "inet"
    }
    if target not in assigned:
        raise NetnsError(f"{target} is not assigned inside {namespace} ({sorted(assigned)})")
    routes = _json(["ip", "-j", "route", "get", target])
    if not routes:
        raise NetnsError(f"no route to {target}")
    route = routes[0]
    via = f" gateway {route['gateway']}" if "gateway" in route else ""
    if route.get("dev") != host_if or via or route.get("type", "unicast") != "unicast":
        raise NetnsError(
            f"route to {target} leaves via {route.get('dev')!r}{via}, not {host_if}: refusing"
        )


def _nft_set(ports: Sequence[int]) -> str:
    return ", ".join(str(p) for p in sorted(set(ports)))


def _nft_rules(
    host_ip: str,
    tcp_ports: Sequence[int],
    raw_only: Sequence[int],
    catch_all: int | None,
    filtered: Sequence[int] = (),
    first_syn_lost: Sequence[int] = (),
) -> str:
    lines = ["table ip pwtest {"]
    if first_syn_lost:
        lines.append(
            "  set firstsyn { type ipv4_addr . inet_service; size 65536; flags dynamic; }"
        )
    if raw_only or filtered or first_syn_lost:
        lines += [
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
        ]
        if filtered:  # silently dropped: no SYN-ACK, no RST (a firewalled port)
            lines.append(f"    tcp dport {{ {_nft_set(filtered)} }} drop")
        if first_syn_lost:
            # The first SYN from each source to these ports is lost (a lossy path
            # that a retry recovers); later SYNs pass.
            lines.append(
                f"    tcp flags syn tcp dport {{ {_nft_set(first_syn_lost)} }} "
                "ip saddr . tcp dport != @firstsyn add @firstsyn { ip saddr . tcp dport } drop"
            )
        if raw_only:
            # A connect from the root kernel's own address is reset; a raw SYN
            # from any other source (masscan's --adapter-ip) is SYN-ACKed.
            lines.append(
                f"    ip saddr {host_ip} tcp dport {{ {_nft_set(raw_only)} }} "
                "reject with tcp reset"
            )
        lines.append("  }")
    if catch_all is not None:
        keep = ", ".join(str(p) for p in sorted({*tcp_ports, catch_all}))
        lines += [
            "  chain pre {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f"    tcp dport != {{ {keep} }} redirect to :{catch_all}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _start_listeners(namespace: str, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", _LISTENER_PROGRAM,
         json.dumps(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: teardown kills exactly it
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + _READY_TIMEOUT
    line = b""
    poller = select.poll()  # not select(): the test process may hold over 1,024 descriptors
    poller.register(proc.stdout, select.POLLIN)
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if poller.poll(200):
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            line += chunk
    if line.strip() != b"READY":
        _stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise NetnsError(f"listeners in {namespace} did not start: {line!r} {err[-500:]}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def test_host(
    index: int,
    *,
    tcp_banners: Mapping[int, bytes] | None = None,
    udp_dns_ports: Sequence[int] = (),
    syn_ack_all: bool = False,
    raw_only_ports: Sequence[int] = (),
    n_addresses: int = 1,
    filtered_ports: Sequence[int] = (),
    first_syn_lost: Sequence[int] = (),
) -> Iterator[NetnsHost]:
    """A namespace test host with real listeners; always torn down.

    tcp_banners: port -> banner sent on accept, then the connection is closed.
    udp_dns_ports: ports with a DNS-style responder (use 53/5353: masscan's
        nmap payloads send a DNS query there).
    syn_ack_all: every other TCP port is redirected (nft, inside the namespace)
        to one catch-all listener, so every port SYN-ACKs: a tarpit.
    raw_only_ports: ports that SYN-ACK any source except the host-side address
        ``host_ip``, whose connects are reset: what a SYN-ACK without a service
        behind it looks like to the confirm pass.
    filtered_ports: TCP ports whose packets are dropped (no answer at all).
    first_syn_lost: TCP ports where the first SYN from each source address is
        dropped and later ones pass: a lossy path that only a retry recovers.
    """
    require_root()
    sweep_stale_namespaces()
    host_ip, scanner_ip, targets = _addresses(index, n_addresses)
    banners = dict(tcp_banners or {})
    raw_only = sorted(set(raw_only_ports))
    if set(raw_only) & set(banners):
        raise NetnsError("raw_only_ports overlap tcp_banners")
    pid = os.getpid()
    ns = f"{NS_PREFIX}{pid}-{index}"
    host_if, peer_if = f"pwh{pid}-{index}", f"pwt{pid}-{index}"
    catch_all: int | None = None
    if syn_ack_all:
        catch_all = max(set(range(60000, 65536)) - set(banners) - set(raw_only))
    listen_tcp = {p: b for p, b in banners.items()}
    for p in raw_only:
        listen_tcp[p] = b""
    if catch_all is not None:
        listen_tcp[catch_all] = b""

    _assert_subnet_free(index)
    listeners: subprocess.Popen[bytes] | None = None
    created = False
    try:
        _run(["ip", "netns", "add", ns])
        created = True
        _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if])
        _run(["ip", "link", "set", peer_if, "netns", ns])
        for dev, where in ((host_if, []), (peer_if, ["-n", ns])):
            # No IPv6 on the pair: no router solicitations or DAD in the packet counts.
            _run(["ip", *where, "link", "set", dev, "up"])
        _run(["sysctl", "-q", "-w", f"net.ipv6.conf.{host_if}.disable_ipv6=1"])
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
              f"net.ipv6.conf.{peer_if}.disable_ipv6=1"])
        # Packets for scanner_ip (not ours) must be dropped, never forwarded back out.
        _run(["sysctl", "-q", "-w", f"net.ipv4.conf.{host_if}.forwarding=0"])
        _run(["ip", "addr", "add", f"{host_ip}/24", "dev", host_if])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for a in targets:
            _run(["ip", "-n", ns, "addr", "add", f"{a}/24", "dev", peer_if])
        if raw_only or catch_all is not None or filtered_ports or first_syn_lost:
            rules = _nft_rules(
                host_ip, sorted(banners), raw_only, catch_all, filtered_ports, first_syn_lost
            )
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                capture_output=True, timeout=_CMD_TIMEOUT, check=False,
            )
            if proc.returncode != 0:
                raise NetnsError(f"nft in {ns} failed: {proc.stderr.strip()}")
        listeners = _start_listeners(
            ns,
            {"tcp": {str(p): b.hex() for p, b in listen_tcp.items()},
             "udp_dns": list(udp_dns_ports), "addresses": list(targets)},
        )
        for a in targets:
            verify_route(ns, peer_if, host_if, a)
        host_link = _json(["ip", "-j", "link", "show", "dev", host_if])[0]
        peer_link = _json(["ip", "-n", ns, "-j", "link", "show", "dev", peer_if])[0]
        yield NetnsHost(
            namespace=ns,
            index=index,
            host_ifname=host_if,
            host_ip=host_ip,
            host_mac=str(host_link["address"]),
            peer_mac=str(peer_link["address"]),
            scanner_ip=scanner_ip,
            addresses=targets,
            tcp_open=frozenset(banners),
            udp_open=frozenset(udp_dns_ports),
            raw_only_ports=frozenset(raw_only),
            syn_ack_all=syn_ack_all,
            catch_all_port=catch_all,
            banners=banners,
        )
    finally:
        if listeners is not None:
            _stop(listeners)
        if created:
            _teardown_namespace(ns, host_if)


# pytest must not collect the context manager as a test when a module imports it.
test_host.__test__ = False  # type: ignore[attr-defined]


def namespace_exists(name: str) -> bool:
    return any(e.get("name") == name for e in _json(["ip", "-j", "netns", "list"]))


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0
