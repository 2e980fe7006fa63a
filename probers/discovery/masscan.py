"""masscan discovery engine: raw SYN (and UDP) sweeps driven by a runner of our own.

Owns: ``MasscanEngine`` (the ``DiscoveryEngine`` backed by the masscan binary),
``MasscanRun`` (one masscan process streamed under a deadline), the automatic
choice of adapter / adapter IP / router MAC for a target (``resolve_path``),
the usability checks that turn "cannot run here" into one line
(``EngineUnavailable``) and ``choose_engine`` (``--engine auto|masscan|connect``).

Must not touch: Kafka, storage, scope decisions (the producer decides what may be
scanned; this module scans exactly the shard it is given), and python-masscan.

Why a runner of our own (NOTES.md, masscan section; checked again on 1.3.2):
- masscan 1.3.2 often never exits after "100% done" (it counts ``waiting -N-secs``
  forever) and ignores SIGINT; its -oX/-oJ/-oL files stay empty when it is killed.
  With ``--interactive`` every ``Discovered open port P/proto on IP`` line is
  flushed on stdout as it happens. We stream that, parse the ``N% done`` status on
  stderr, and SIGKILL the process *group* ``wait`` seconds after 100% (or at the
  deadline). Nothing found is lost by the kill.
- masscan crashing or being killed by someone else before 100% raises
  ``DiscoveryError`` after the ports it did report were yielded: the shard is
  retried, never silently short. A deadline reached before 100% does the same.

Answers and retries. ``--retries`` is broken in 1.3.2 (retries go out back to
back and the run overstays), so it is never passed. For TCP, an ``AnswerTap``
(tap.py: our own packet socket, a kernel BPF filter on the adapter IP and the
run's ``--source-port``) records every SYN-ACK and RST the targets send back;
masscan's own capture loses a large share of them under load (tap.py says how
much). So a run is killed the moment every probe of it has answered, and a retry
pass (``passes=2`` by default, fresh ``--seed``) re-sends only the ports some host
left silent, to those hosts: nothing on a host that RSTs every closed port, the
whole shard on a firewalled one. Ports still silent after the last pass are
counted in one note. Without a tap (UDP, or a packet socket that cannot be
opened) every pass re-sends the whole shard. The confirm pass cannot recover a
loss, only reject a false positive.

Resets. When ``--adapter-ip`` is the kernel's own address (the default) masscan
runs ``--noreset``: the kernel RSTs each SYN-ACK itself, as for ``nmap -sS``;
masscan would otherwise RST every answer it sees, RSTs included, doubling the
packets. With an address the kernel does not own, masscan's RSTs are kept.

Confirm pass. Every TCP port masscan reports is connect-checked with
``connect.confirm_open`` before it is yielded: a SYN-ACK that no real connect can
reproduce (spoofed answers, middleboxes that SYN-ACK everything, a firewall that
treats the raw source differently) is dropped, counted and explained in
``Progress.notes`` (refused vs could-not-test). UDP answers cannot be confirmed
that way and are yielded as masscan saw them (any reply = open).

How masscan finds its way to a target (``resolve_path``). masscan does not use
the kernel's routing table for anything but its default route: left alone it
would pick the default-route interface and the default gateway's MAC, which for
a test host on a veth pair means sending out of the wrong interface. So the
engine always passes ``--adapter``, ``--adapter-ip`` and a next hop, derived per
target from ``ip -j route get <target>``:
- adapter = the route's ``dev``; it must be an Ethernet-like link
  (``/sys/class/net/<dev>/type`` == 1), else ``EngineUnavailable``;
- adapter IP = the route's ``prefsrc`` (the kernel's own address: the kernel then
  RSTs each SYN-ACK, harmless for discovery) unless ``adapter_ip`` is given; on a
  namespace test host pass the helper's unused ``scanner_ip`` instead;
- next hop = the route's ``gateway`` or, for an on-link target, the target
  itself; its MAC comes from the neighbour table (``ip -j neigh``). An unresolved
  on-link next hop is resolved by the kernel first (one empty UDP datagram to the
  discard port of that target, then the neighbour table is read again); if it is
  still unknown, masscan is told ``--router-ip`` and ARPs for it itself.
Targets whose paths differ are scanned by separate masscan runs.
Routes of type local/loopback are refused: masscan cannot scan loopback or the
machine's own addresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probers.discovery.base import DiscoveryEngine, DiscoveryError, EngineUnavailable, Progress
from probers.discovery.connect import ConnectEngine, SweepReport, confirm_open
from probers.discovery.tap import AnswerTap, compact, ring_size
from schemas.records import OpenPort, PortRange, PortState, Proto, Shard, Target

DEFAULT_BINARY = "masscan"
DEFAULT_NMAP_PAYLOADS = "/usr/share/nmap/nmap-payloads"
CAP_NET_RAW = 13
ARPHRD_ETHER = 1
# UDP ports for which masscan 1.3.2 has its own payload *and* a reply parser that
# checks a cookie in it (proto-udp.c: DNS, NTP, NetBIOS, SNMP, CoAP, memcached,
# ZeroAccess). An nmap payload for these ports replaces masscan's cookie-carrying
# one and every reply is then discarded (checked: DNS on 53 is never reported with
# the stock nmap-payloads), so they are left out of the payload file we hand over.
MASSCAN_COOKIE_UDP_PORTS = frozenset({53, 123, 137, 161, 5683, 11211, 16464, 16465, 16470, 16471})
STARTUP_SECONDS = 3.0  # masscan's own start (pcap open, ARP) before the first probe
KILL_GRACE = 0.5  # after the end wait, before SIGKILL
DEADLINE_MARGIN = 5.0
# Port ranges per masscan command line on a retry pass (one -p argument stays far
# below Linux's 128 KiB limit for a single argv string).
MAX_RANGES_PER_RUN = 4000
_DISCOVERED = re.compile(rb"Discovered open port (\d+)/(tcp|udp) on ([0-9A-Fa-f:.]+)")
_STATUS = re.compile(rb"(\d+(?:\.\d+)?)% done")
_RESOLVED_NUD = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


# ----------------------------------------------------------------------------
# Usability and paths
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasscanPath:
    """Where masscan sends packets for a group of targets."""

    adapter: str
    adapter_ip: str
    router_mac: str = ""  # known next-hop MAC (--router-mac) ...
    router_ip: str = ""  # ... or the next hop masscan must ARP for (--router-ip)
    # adapter_ip is one of this machine's own addresses: the kernel RSTs the
    # SYN-ACKs it receives there, so masscan is told --noreset (see the engine)
    local_source: bool = False

    def argv(self) -> list[str]:
        out = ["--adapter", self.adapter, "--adapter-ip", self.adapter_ip]
        if self.router_mac:
            out += ["--router-mac", self.router_mac]
        else:
            out += ["--router-ip", self.router_ip]
        return out


def _ip_json(args: Sequence[str]) -> Any:
    try:
        proc = subprocess.run(
            ["ip", "-j", *args], capture_output=True, text=True, timeout=5.0, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"masscan: cannot run `ip {' '.join(args)}`: {exc}") from exc
    if proc.returncode != 0:
        raise EngineUnavailable(
            f"masscan: `ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}"
        )
    return json.loads(proc.stdout) if proc.stdout.strip() else []


def _has_cap_net_raw() -> bool:
    """CAP_NET_RAW in this process's effective set (root can run without it)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    return False


def _binary_has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def find_binary(binary: str = DEFAULT_BINARY) -> str:
    """Absolute path of the masscan binary, or EngineUnavailable saying why."""
    found = shutil.which(binary)
    if found is None:
        raise EngineUnavailable(f"masscan not found ({binary!r} is not on PATH)")
    if not (_has_cap_net_raw() or _binary_has_file_caps(found)):
        raise EngineUnavailable(
            "masscan needs root or CAP_NET_RAW (this process has neither and "
            f"{found} has no file capabilities)"
        )
    return found


def _neighbour_mac(ip: str, dev: str) -> str:
    for entry in _ip_json(["neigh", "show", ip, "dev", dev]):
        states = set(entry.get("state", []))
        if entry.get("lladdr") and states & _RESOLVED_NUD:
            return str(entry["lladdr"])
    return ""


def _nudge_neighbour(ip: str) -> None:
    """Let the kernel ARP for an on-link target: one empty datagram to its discard port."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (ip, 9))


def resolve_path(
    ip: str, *, adapter: str = "", adapter_ip: str = "", router_mac: str = ""
) -> MasscanPath:
    """The adapter, source address and next hop masscan must use for ``ip``.

    Raises EngineUnavailable (one line) for loopback/local targets, IPv6, and
    adapters without an Ethernet-like link.
    """
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        raise EngineUnavailable(f"masscan cannot scan loopback ({ip})")
    if addr.version != 4:
        raise EngineUnavailable(f"masscan engine scans IPv4 only here ({ip})")
    routes = _ip_json(["route", "get", ip])
    if not routes:
        raise EngineUnavailable(f"masscan: no route to {ip}")
    route = routes[0]
    dev = adapter or str(route.get("dev", ""))
    if route.get("type") in ("local", "broadcast") or route.get("dev") == "lo":
        raise EngineUnavailable(
            f"masscan cannot scan loopback or this machine's own addresses ({ip} is local)"
        )
    try:
        link_type = int(Path(f"/sys/class/net/{dev}/type").read_text().strip())
    except (OSError, ValueError) as exc:
        raise EngineUnavailable(f"masscan: adapter {dev!r} not found") from exc
    if link_type != ARPHRD_ETHER:
        raise EngineUnavailable(
            f"masscan: adapter {dev} has no Ethernet-like link (type {link_type}); "
            "masscan needs one"
        )
    src = adapter_ip or str(route.get("prefsrc", ""))
    if not src:
        raise EngineUnavailable(f"masscan: no source address for {ip} on {dev}")
    local = not adapter_ip or src == route.get("prefsrc") or _is_local_address(src)
    if router_mac:
        return MasscanPath(dev, src, router_mac=router_mac, local_source=local)
    next_hop = str(route.get("gateway") or ip)
    mac = _neighbour_mac(next_hop, dev)
    if not mac and next_hop == ip:
        _nudge_neighbour(ip)
        for _ in range(20):
            time.sleep(0.05)
            mac = _neighbour_mac(next_hop, dev)
            if mac:
                break
    if mac:
        return MasscanPath(dev, src, router_mac=mac, local_source=local)
    return MasscanPath(dev, src, router_ip=next_hop, local_source=local)


def _is_local_address(ip: str) -> bool:
    with contextlib.suppress(EngineUnavailable, ValueError):
        routes = _ip_json(["route", "get", ip])
        return bool(routes) and routes[0].get("type") == "local"
    return False


def prepare_nmap_payloads(source: str, dest: str) -> int:
    """Rewrite nmap's payload file into what masscan 1.3.2 can use; return entries kept.

    masscan 1.3.2's parser stops at the first comment after a string (nmap's file
    has them since 7.9x), and nmap payloads on ``MASSCAN_COOKIE_UDP_PORTS`` would
    silence masscan's own parsers. Read at run time from the user's nmap install,
    written to a private temp file, never copied into the repository (NPSL).
    """
    text = Path(source).read_text(encoding="latin-1")
    out: list[str] = []
    kept = 0
    skipping = False
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if line.startswith("udp "):
            head, _, rest = line[4:].partition(" ")
            ports = _ports_without(head, MASSCAN_COOKIE_UDP_PORTS)
            skipping = not ports
            if skipping:
                continue
            kept += 1
            line = f"udp {ports} {rest}".rstrip()
        elif skipping:
            continue
        out.append(line)
    Path(dest).write_text("\n".join(out) + "\n", encoding="latin-1")
    return kept


def _strip_comment(line: str) -> str:
    quoted = escaped = False
    for i, ch in enumerate(line):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == "#":
            return line[:i].rstrip()
        elif ch == '"':
            quoted = True
    return line.rstrip()


def _ports_without(spec: str, drop: frozenset[int]) -> str:
    parts: list[str] = []
    for item in spec.split(","):
        first_s, _, last_s = item.partition("-")
        first, last = int(first_s), int(last_s or first_s)
        start = first
        for p in sorted(d for d in drop if first <= d <= last):
            if start <= p - 1:
                parts.append(f"{start}" if start == p - 1 else f"{start}-{p - 1}")
            start = p + 1
        if start <= last:
            parts.append(f"{start}" if start == last else f"{start}-{last}")
    return ",".join(parts)


def port_spec(ports: Iterable[PortRange], proto: Proto) -> str:
    """masscan's -p argument: ``1-1024,8080`` for TCP, ``U:53,U:1000-2000`` for UDP."""
    prefix = "U:" if proto is Proto.UDP else ""
    items = []
    for r in ports:
        items.append(f"{prefix}{r.first}" if r.first == r.last else f"{prefix}{r.first}-{r.last}")
    return ",".join(items)


# ----------------------------------------------------------------------------
# One masscan process, streamed under a deadline
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Discovery:
    ip: str
    port: int
    proto: Proto


@dataclass(slots=True)
class RunOutcome:
    """How a masscan process ended (filled when ``MasscanRun.stream`` finishes)."""

    returncode: int | None = None
    percent_done: float = 0.0
    # "" / "all-answered" (every probe answered: nothing left to wait for) /
    # "after-wait" (hung after 100%) / "deadline" / "cancelled"
    killed: str = ""
    elapsed: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def is_complete(self) -> bool:
        """Every probe was sent and the end wait was honoured (or cut by our deadline)."""
        if self.killed in ("after-wait", "all-answered"):
            return True
        if self.killed == "deadline":
            return self.percent_done >= 100.0
        return self.returncode == 0 and not self.killed

    def failure(self) -> str:
        tail = " | ".join(self.stderr_tail[-3:])
        if self.killed == "deadline":
            return (f"masscan did not finish within its deadline ({self.percent_done:.1f}% "
                    f"done after {self.elapsed:.1f}s)")
        if self.killed == "cancelled":
            return "masscan run cancelled"
        rc = self.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with {rc}"
        return f"masscan {how} at {self.percent_done:.1f}% done{': ' + tail if tail else ''}"


class MasscanRun:
    """Run one masscan command line; stream its discoveries; always reap it.

    ``deadline`` bounds the whole run (seconds from start); ``wait`` is masscan's
    ``--wait``: the run is SIGKILLed ``wait + KILL_GRACE`` seconds after masscan
    reports 100% if it has not exited by itself (1.3.2 often does not).
    The process runs in its own process group and the *group* is killed.
    ``all_answered``, when given, is set (by an ``AnswerTap``) once every probe of
    the run has been answered: masscan is killed at once, since nothing is left to
    send or to wait for.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        deadline: float,
        wait: float,
        all_answered: asyncio.Event | None = None,
    ) -> None:
        self.argv = list(argv)
        self.deadline = deadline
        self.wait = wait
        self.all_answered = all_answered
        self._reaper: asyncio.Future[int] | None = None
        self.outcome = RunOutcome()
        self.pid: int | None = None
        self._done_at: float | None = None

    async def stream(self) -> AsyncGenerator[Discovery, None]:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineUnavailable(f"masscan could not start: {exc}") from exc
        self.pid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(self._read_status(proc.stderr))
        watchdog = asyncio.create_task(self._watchdog(proc, started))
        # Never done without an event: then only stdout's end stops the loop.
        answered: asyncio.Future[Any] = (
            asyncio.ensure_future(self.all_answered.wait()) if self.all_answered is not None
            else asyncio.get_running_loop().create_future()
        )
        try:
            while True:
                read = asyncio.ensure_future(proc.stdout.readline())
                await asyncio.wait({read, answered}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # every probe answered: the rest of stdout is moot
                    self.outcome.killed = "all-answered"
                    self._kill(proc)
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                    break
                line = read.result()
                if not line:
                    break
                m = _DISCOVERED.search(line)
                if m:
                    yield Discovery(
                        ip=m.group(3).decode(),
                        port=int(m.group(1)),
                        proto=Proto(m.group(2).decode()),
                    )
            if self.outcome.killed != "all-answered":
                await proc.wait()
        finally:
            answered.cancel()
            if proc.returncode is None and self.outcome.killed == "all-answered":
                # Already SIGKILLed with nothing left to read; the kernel's teardown of
                # its packet socket takes ~25 ms: reap it in the background (reap()).
                self._reaper = asyncio.ensure_future(proc.wait())
            elif proc.returncode is None:
                if not self.outcome.killed:
                    self.outcome.killed = "cancelled"
                self._kill(proc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 5.0)
            watchdog.cancel()
            if self.outcome.killed == "all-answered":
                stderr_task.cancel()  # its status lines say nothing we need now
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(stderr_task, 1.0)
            self.outcome.returncode = proc.returncode
            self.outcome.elapsed = time.monotonic() - started
            self.pid = None

    async def reap(self) -> None:
        """Wait (bounded) for a process left to exit in the background by ``stream``."""
        if self._reaper is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reaper, 5.0)
            self._reaper = None

    def _kill(self, proc: asyncio.subprocess.Process) -> None:
        # SIGINT does not stop 1.3.2 after 100%; only SIGKILL does. Kill the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def _watchdog(self, proc: asyncio.subprocess.Process, started: float) -> None:
        while proc.returncode is None:
            now = time.monotonic()
            if now - started >= self.deadline:
                self.outcome.killed = "deadline"
                self._kill(proc)
                return
            if self._done_at is not None and now - self._done_at >= self.wait + KILL_GRACE:
                self.outcome.killed = "after-wait"
                self._kill(proc)
                return
            await asyncio.sleep(0.1)

    async def _read_status(self, stderr: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            chunk = await stderr.read(4096)
            if not chunk:
                return
            buf += chunk
            *pieces, buf = re.split(rb"[\r\n]", buf)
            if len(buf) > 8192:  # a status line never gets this long: bound the buffer
                buf = buf[-1024:]
            for piece in pieces:
                text = piece.strip()
                if not text:
                    continue
                m = _STATUS.search(text)
                if m:
                    pct = float(m.group(1))
                    self.outcome.percent_done = max(self.outcome.percent_done, pct)
                    if pct >= 100.0 and self._done_at is None:
                        self._done_at = time.monotonic()
                    continue
                self.outcome.stderr_tail.append(text.decode(errors="replace")[:300])
                del self.outcome.stderr_tail[:-10]


# ----------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------


def end_wait(probes: int, rate: int) -> int:
    """masscan --wait for a shard: short for small shards, masscan's 10 s for huge ones.

    Late answers come from slow hosts, not from shard size, but a big shard's tail
    is also where a link's queues are fullest; seconds are whole (masscan's unit).
    """
    send = probes / rate
    if send < 10:
        return 1
    if send < 60:
        return 3
    if send < 600:
        return 5
    return 10


def pass_deadline(probes: int, rate: int, wait: float) -> float:
    """Seconds one pass may take: send time (+50% for masscan's rate ramp), start, wait, margin."""
    return STARTUP_SECONDS + 1.5 * probes / rate + wait + KILL_GRACE + DEADLINE_MARGIN


class MasscanEngine:
    """``DiscoveryEngine`` over masscan 1.3.x (see the module docstring for the why).

    rate: packets/s for masscan ``--rate``. adapter/adapter_ip/router_mac: force
    masscan's path (otherwise ``resolve_path`` per target). exclude_file: passed as
    ``--excludefile``. wait: end wait seconds (None = ``end_wait``). deadline:
    seconds per shard (None = sum of ``pass_deadline`` over passes and paths).
    passes: passes at most, each with a fresh seed; with an answer tap a retry
    pass re-sends only the ports left silent, without one the whole shard.
    confirm: connect-check TCP ports before yielding. nmap_payloads: nmap's
    payload file for UDP (None = masscan's built-in payloads only). answer_tap:
    count TCP answers with ``tap.AnswerTap`` (False = rely on masscan's output
    and its end wait, as for UDP).
    """

    name = "masscan"

    def __init__(
        self,
        *,
        rate: int = 10_000,
        adapter: str = "",
        adapter_ip: str = "",
        router_mac: str = "",
        exclude_file: str = "",
        wait: int | None = None,
        deadline: float | None = None,
        passes: int = 2,
        confirm: bool = True,
        confirm_timeout: float = 1.0,
        nmap_payloads: str | None = DEFAULT_NMAP_PAYLOADS,
        binary: str = DEFAULT_BINARY,
        answer_tap: bool = True,
    ) -> None:
        if not 1 <= rate <= 10_000_000:
            raise ValueError(f"rate must be 1..10,000,000 packets/s, got {rate}")
        if not 1 <= passes <= 5:
            raise ValueError(f"passes must be 1..5, got {passes}")
        if wait is not None and not 0 <= wait <= 60:
            raise ValueError(f"wait must be 0..60 s, got {wait}")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be > 0, got {deadline}")
        if exclude_file and not Path(exclude_file).is_file():
            raise ValueError(f"exclude file {exclude_file!r} does not exist")
        self.rate = rate
        self.adapter = adapter
        self.adapter_ip = adapter_ip
        self.router_mac = router_mac
        self.exclude_file = exclude_file
        self.wait = wait
        self.deadline = deadline
        self.passes = passes
        self.confirm = confirm
        self.confirm_timeout = confirm_timeout
        self.nmap_payloads = nmap_payloads
        self.binary = binary
        self.answer_tap = answer_tap
        self.current_run: MasscanRun | None = None  # the masscan process now running

    # -- checks --------------------------------------------------------------

    def check_usable(self, targets: Iterable[Target]) -> dict[MasscanPath, list[Target]]:
        """Group targets by masscan path; EngineUnavailable (one line) when it cannot run."""
        find_binary(self.binary)
        targets = list(targets)

        def resolve(t: Target) -> MasscanPath:
            return resolve_path(
                t.ip, adapter=self.adapter, adapter_ip=self.adapter_ip, router_mac=self.router_mac
            )

        # Resolved side by side: an on-link target may need an ARP round trip first.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(targets) or 1)) as ex:
            paths = list(ex.map(resolve, targets))
        groups: dict[MasscanPath, list[Target]] = {}
        for t, path in zip(targets, paths, strict=True):
            groups.setdefault(path, []).append(t)
        return groups

    # -- scan ----------------------------------------------------------------

    async def scan(self, shard: Shard, progress: Progress) -> AsyncGenerator[OpenPort, None]:
        binary = find_binary(self.binary)
        groups = await asyncio.to_thread(self.check_usable, shard.targets)
        by_ip = {t.ip: t for t in shard.targets}
        n_ports = shard.port_count
        progress.add_total(shard.probe_count)
        plan = []
        for path, targets in groups.items():
            probes = n_ports * len(targets)
            wait = self.wait if self.wait is not None else end_wait(probes, self.rate)
            plan.append((path, targets, wait, pass_deadline(probes, self.rate, wait)))
        total_deadline = self.deadline or sum(p[3] for p in plan) * self.passes
        started = time.monotonic()
        raw_q: asyncio.Queue[Discovery | None] = asyncio.Queue()
        out_q: asyncio.Queue[OpenPort | BaseException | None] = asyncio.Queue()
        seen: set[tuple[str, Proto, int]] = set()
        stats = _ConfirmStats()
        in_shard = bytearray(65536)
        for r in shard.ports:
            in_shard[r.first : r.last + 1] = b"\x01" * len(r)

        def offer(d: Discovery) -> None:
            key = (d.ip, d.proto, d.port)
            if d.ip in by_ip and d.proto is shard.proto and in_shard[d.port] and key not in seen:
                seen.add(key)
                raw_q.put_nowait(d)

        source_port = self._source_port(shard)

        with contextlib.ExitStack() as closing:
            tmp = closing.enter_context(tempfile.TemporaryDirectory(prefix="portwatch-masscan-"))
            taps, all_taps = self._open_taps(shard, groups, source_port, progress, offer)
            for tap in all_taps:
                closing.callback(tap.close, background=True)
            runs: list[MasscanRun] = []
            payload_args = await self._payload_args(shard, tmp, progress)

            async def run_one(
                argv: list[str], probes: int, wait: int, per_pass: float,
                tap: AnswerTap | None, expect: int, pass_no: int,
            ) -> None:
                remaining = total_deadline - (time.monotonic() - started)
                if remaining <= 0:
                    raise DiscoveryError(
                        f"masscan: shard deadline {total_deadline:.0f}s reached "
                        f"before pass {pass_no + 1}/{self.passes}"
                    )
                run = MasscanRun(
                    argv, deadline=min(per_pass, remaining), wait=wait,
                    all_answered=tap.expect(expect) if tap is not None and expect else None,
                )
                runs.append(run)
                self.current_run = run
                base_done = progress.probes_done
                async for d in run.stream():
                    if tap is not None:
                        tap.mark(d.ip, d.port)
                    offer(d)
                progress.probes_done = base_done + probes
                out = run.outcome
                # killed == "after-wait" (1.3.2 idling after 100%) is the normal end of
                # a run whose probes did not all answer: not worth a note.
                if out.killed == "deadline" and out.is_complete:
                    progress.notes.append(
                        "masscan: killed at its deadline after 100% done; results kept"
                    )
                if not out.is_complete:
                    progress.errors += 1
                    raise DiscoveryError(out.failure())

            async def produce() -> None:
                try:
                    for pass_no in range(self.passes):
                        for path, targets, wait, per_pass in plan:
                            tap = taps.get(path)
                            for hosts, ranges, expect in self._pass_work(
                                shard, targets, tap, pass_no
                            ):
                                run_probes = sum(map(len, ranges)) * len(hosts)
                                if pass_no:
                                    progress.add_total(run_probes)
                                    progress.retries += run_probes
                                argv = self._argv(
                                    binary, shard, hosts, ranges, path, wait, pass_no,
                                    payload_args, source_port if tap is not None else 0,
                                )
                                await run_one(
                                    argv, run_probes, wait, per_pass, tap, expect, pass_no
                                )
                    for tap in all_taps:
                        _note_silent(tap, shard, self.passes, progress)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # handed to the consumer after the drain
                    await out_q.put(exc)
                finally:
                    self.current_run = None
                    await raw_q.put(None)

            async def confirm_worker() -> None:
                try:
                    await self._confirm_loop(shard, by_ip, raw_q, out_q, stats, seen)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    await out_q.put(exc)
                finally:
                    await out_q.put(None)

            producer = asyncio.create_task(produce())
            confirmer = asyncio.create_task(confirm_worker())
            error: BaseException | None = None
            try:
                while True:
                    item = await out_q.get()
                    if item is None:  # the confirmer's end marker: everything is out
                        break
                    if isinstance(item, BaseException):
                        error = error or item
                    else:
                        progress.open_found += 1
                        yield item
            finally:
                for task in (producer, confirmer):
                    task.cancel()
                for task in (producer, confirmer):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                for run in runs:
                    await run.reap()
                stats.note(progress)
            # producer errors arrive before the confirmer's end marker; drain the rest
            while not out_q.empty():
                item = out_q.get_nowait()
                if isinstance(item, BaseException):
                    error = error or item
            if error is not None:
                if isinstance(error, DiscoveryError):
                    raise error
                raise DiscoveryError(f"masscan engine failed: {error!r}") from error

    def _open_taps(
        self,
        shard: Shard,
        groups: dict[MasscanPath, list[Target]],
        port: int,
        progress: Progress,
        offer: Callable[[Discovery], None],
    ) -> tuple[dict[MasscanPath, AnswerTap], list[AnswerTap]]:
        """Answer taps for the shard's masscan paths (TCP only; see tap.py for why).

        One tap per (adapter, adapter IP), shared by every path through it: hosts
        on a LAN each have their own next-hop MAC, hence their own masscan run, but
        their answers all come back to the same address and port, so 254 on-link
        hosts need one ring, not 254. Returns the tap of each path and the taps.

        UDP has no tap: a closed UDP port answers with an ICMP port unreachable that
        hosts rate-limit (Linux: about one per second), so "no answer" says nothing
        and every UDP pass re-sends the whole shard.
        """
        taps: dict[MasscanPath, AnswerTap] = {}
        opened: list[AnswerTap] = []
        if shard.proto is not Proto.TCP or not self.answer_tap:
            return taps, opened
        loop = asyncio.get_running_loop()

        def on_open(ip: str, p: int) -> None:
            offer(Discovery(ip=ip, port=p, proto=Proto.TCP))

        by_source: dict[tuple[str, str], list[MasscanPath]] = {}
        for path in groups:
            by_source.setdefault((path.adapter, path.adapter_ip), []).append(path)
        for (adapter, adapter_ip), paths in by_source.items():
            hosts = [t.ip for path in paths for t in groups[path]]
            tap = AnswerTap(
                adapter, adapter_ip, port, hosts, on_open=on_open,
                ring_bytes=ring_size(shard.port_count * len(hosts)),
            )
            try:
                tap.open()
            except OSError as exc:
                progress.notes.append(
                    f"masscan: cannot read answers on {adapter} ({exc.strerror or exc}); "
                    "each retry pass re-sends the whole shard"
                )
                continue
            tap.attach(loop)
            opened.append(tap)
            for path in paths:
                taps[path] = tap
        return taps, opened

    @staticmethod
    def _source_port(shard: Shard) -> int:
        """masscan --source-port for a shard: above Linux's ephemeral range (61000+),
        so the kernel's own connections (the confirm pass) never use it."""
        return 61000 + (shard.seed * 7919 + shard.index * 104729) % 4500

    def _pass_work(
        self, shard: Shard, targets: Sequence[Target], tap: AnswerTap | None, pass_no: int
    ) -> list[tuple[Sequence[Target], tuple[PortRange, ...], int]]:
        """The masscan runs of one pass for one path: (hosts, port ranges, answers expected).

        Pass 1 sends the whole shard. A retry pass with an answer tap sends only the
        ports some host left silent (to the hosts that left any), at most
        ``MAX_RANGES_PER_RUN`` ranges per masscan command line; without a tap it
        re-sends the whole shard. ``expect`` is how many (host, port) answers would
        complete the run (0 = unknown: wait for masscan).
        """
        full = shard.port_count * len(targets)
        if pass_no == 0:
            return [(targets, shard.ports, full)]
        if tap is None:
            return [(targets, shard.ports, 0)]
        silent = {t.ip: tap.silent(t.ip, shard.ports) for t in targets}
        hosts = [t for t in targets if silent[t.ip]]
        if not hosts:
            return []
        ranges = compact(p for t in hosts for p in silent[t.ip])
        work: list[tuple[Sequence[Target], tuple[PortRange, ...], int]] = []
        for i in range(0, len(ranges), MAX_RANGES_PER_RUN):
            chunk = ranges[i : i + MAX_RANGES_PER_RUN]
            lo, hi = chunk[0].first, chunk[-1].last
            expect = sum(1 for t in hosts for p in silent[t.ip] if lo <= p <= hi)
            work.append((hosts, chunk, expect))
        return work

    async def _payload_args(self, shard: Shard, tmp: str, progress: Progress) -> list[str]:
        if shard.proto is not Proto.UDP or not self.nmap_payloads:
            return []
        if not Path(self.nmap_payloads).is_file():
            progress.notes.append(
                f"masscan: {self.nmap_payloads} missing: UDP probes use masscan's "
                "built-in payloads only (install nmap-common)"
            )
            return []
        cleaned = str(Path(tmp) / "nmap-payloads")
        await asyncio.to_thread(prepare_nmap_payloads, self.nmap_payloads, cleaned)
        return ["--nmap-payloads", cleaned]

    def _argv(
        self,
        binary: str,
        shard: Shard,
        targets: Sequence[Target],
        ranges: Sequence[PortRange],
        path: MasscanPath,
        wait: int,
        pass_no: int,
        payload_args: Sequence[str],
        source_port: int = 0,
    ) -> list[str]:
        # A fresh, deterministic permutation per pass: same shard, same packets order.
        seed = (shard.seed * 1_000_003 + shard.index * 101 + pass_no) & 0x7FFF_FFFF_FFFF_FFFF
        argv = [
            binary,
            "--interactive",
            "-p", port_spec(ranges, shard.proto),
            "--rate", str(self.rate),
            "--wait", str(wait),
            "--seed", str(seed),
            *path.argv(),
            *payload_args,
        ]
        if source_port:
            argv += ["--source-port", str(source_port)]
        if path.local_source:
            # The kernel owns the source address and RSTs every SYN-ACK itself (as it
            # does for nmap -sS); masscan's own RSTs would double the packets: it
            # also answers every RST with one.
            argv.append("--noreset")
        if self.exclude_file:
            argv += ["--excludefile", self.exclude_file]
        argv += [t.ip for t in targets]
        return argv

    async def _confirm_loop(
        self,
        shard: Shard,
        by_ip: dict[str, Target],
        raw_q: asyncio.Queue[Discovery | None],
        out_q: asyncio.Queue[OpenPort | BaseException | None],
        stats: _ConfirmStats,
        seen: set[tuple[str, Proto, int]],
    ) -> None:
        """Connect-check raw discoveries.

        A port that fails the check is forgotten from ``seen`` (a later pass's
        rediscovery is checked again) and, once every pass is over, checked one
        last time with twice the timeout: an answered port is not re-probed by a
        retry pass, so a confirm that merely timed out under load must not turn
        into a lost port. A refused connect fails again at once; a spoofed SYN-ACK
        costs one more timeout.
        """
        failed: dict[str, set[int]] = {}
        ended = False
        while not ended:
            first = await raw_q.get()
            batch: list[Discovery] = []
            if first is None:
                break
            batch.append(first)
            # Take whatever else is already waiting: one connect sweep per host per batch.
            while len(batch) < 4096 and not raw_q.empty():
                nxt = raw_q.get_nowait()
                if nxt is None:
                    ended = True
                    break
                batch.append(nxt)
            per_ip: dict[str, list[int]] = {}
            for d in batch:
                per_ip.setdefault(d.ip, []).append(d.port)
            for ip, ports in per_ip.items():
                await self._confirm(shard, by_ip[ip], ports, out_q, stats, seen, failed,
                                    self.confirm_timeout)
        for ip, missed in failed.items():
            if missed:
                await self._confirm(shard, by_ip[ip], sorted(missed), out_q, stats, seen, {},
                                    2 * self.confirm_timeout)

    async def _confirm(
        self,
        shard: Shard,
        target: Target,
        ports: list[int],
        out_q: asyncio.Queue[OpenPort | BaseException | None],
        stats: _ConfirmStats,
        seen: set[tuple[str, Proto, int]],
        failed: dict[str, set[int]],
        timeout: float,
    ) -> None:
        ip = target.ip
        if shard.proto is Proto.UDP or not self.confirm:
            reason = "udp-response" if shard.proto is Proto.UDP else "syn-ack"
            for port in ports:
                await out_q.put(self._open(shard, target, port, reason))
            return
        reports: list[SweepReport] = []
        confirmed = await asyncio.to_thread(
            confirm_open, ip, ports, timeout,
            retries=1, concurrency=min(256, len(ports)), on_report=reports.append,
        )
        stats.add(ip, ports, confirmed, reports)
        missed = failed.setdefault(ip, set())
        for port in ports:
            if port in confirmed:
                missed.discard(port)
                await out_q.put(self._open(shard, target, port, "syn-ack+connect"))
            else:
                missed.add(port)
                seen.discard((ip, shard.proto, port))

    def _open(self, shard: Shard, target: Target, port: int, reason: str) -> OpenPort:
        return OpenPort(
            scan_id=shard.scan_id,
            target=target,
            port=port,
            proto=shard.proto,
            state=PortState.OPEN,
            engine=self.name,
            reason=reason,
        )


def _note_silent(tap: AnswerTap, shard: Shard, passes: int, progress: Progress) -> None:
    silent = sum(tap.silent_count(ip, shard.ports) for ip in tap.hosts)
    if silent:
        total = shard.port_count * len(tap.hosts)
        progress.notes.append(
            f"masscan: {silent:,} of {total:,} TCP probes never answered after {passes} "
            f"pass{'es' if passes > 1 else ''} (filtered, or lost on the way)"
        )


@dataclass(slots=True)
class _ConfirmStats:
    """Raw discoveries the connect check did not confirm, per host and why.

    Kept as sets of ports: a port re-checked on the next pass counts once, and one
    confirmed on a later pass leaves the tally.
    """

    refused: dict[str, set[int]] = field(default_factory=dict)  # RST to a real connect
    untested: dict[str, set[int]] = field(default_factory=dict)  # no answer / error

    def add(
        self, ip: str, ports: list[int], confirmed: set[int], reports: list[SweepReport]
    ) -> None:
        refused, untested = self.refused.setdefault(ip, set()), self.untested.setdefault(ip, set())
        refused -= confirmed
        untested -= confirmed
        missing = sorted(set(ports) - confirmed)
        if not missing:
            return
        # The sweep report counts refusals per host, not which ports: split by count.
        closed = min(sum(h.closed for r in reports for h in r.hosts), len(missing))
        for port in missing[:closed]:
            untested.discard(port)
            refused.add(port)
        for port in missing[closed:]:
            refused.discard(port)
            untested.add(port)

    @property
    def unconfirmed(self) -> int:
        return sum(map(len, self.refused.values())) + sum(map(len, self.untested.values()))

    def note(self, progress: Progress) -> None:
        for ip in sorted(set(self.refused) | set(self.untested)):
            refused = len(self.refused.get(ip, ()))
            untested = len(self.untested.get(ip, ()))
            if not refused + untested:
                continue
            parts = []
            if refused:
                parts.append(f"{refused} refused a connect (RST)")
            if untested:
                parts.append(f"{untested} could not be connect-tested (no answer/error)")
            progress.notes.append(
                f"masscan: {ip}: {refused + untested} SYN-ACKs not confirmed and dropped: "
                + ", ".join(parts)
            )


# ----------------------------------------------------------------------------
# --engine auto|masscan|connect
# ----------------------------------------------------------------------------


def choose_engine(
    requested: str, shard_targets: Iterable[Target], settings: Any = None
) -> tuple[DiscoveryEngine, str]:
    """Build the discovery engine for ``--engine``; return it with a one-line note.

    auto: masscan when usable for these targets, else the connect engine with the
    note "masscan unavailable: <why>; using the connect engine"; also the connect
    engine when masscan could run (file capabilities) but this process lacks
    CAP_NET_RAW for the answer tap. masscan: masscan or EngineUnavailable.
    connect: the connect engine. ``settings`` is any object with the portwatch
    Settings fields (``concurrency``, ``timeout``, ``retries``;
    optional ``masscan_*`` fields); None = defaults.
    """
    requested = requested.lower().strip()
    if requested not in ("auto", "masscan", "connect"):
        raise ValueError(f"--engine must be auto, masscan or connect, got {requested!r}")
    targets = list(shard_targets)

    def connect() -> ConnectEngine:
        return ConnectEngine(
            concurrency=int(getattr(settings, "concurrency", 2000)),
            timeout=float(getattr(settings, "timeout", 1.0)),
            retries=int(getattr(settings, "retries", 1)),
        )

    if requested == "connect":
        return connect(), ""
    engine = MasscanEngine(
        rate=int(getattr(settings, "masscan_rate", 10_000)),
        adapter=str(getattr(settings, "masscan_adapter", "")),
        adapter_ip=str(getattr(settings, "masscan_adapter_ip", "")),
        router_mac=str(getattr(settings, "masscan_router_mac", "")),
        exclude_file=str(getattr(settings, "masscan_exclude_file", "")),
        binary=str(getattr(settings, "masscan_binary", DEFAULT_BINARY)),
        confirm_timeout=float(getattr(settings, "timeout", 1.0)),
    )
    try:
        engine.check_usable(targets)
    except EngineUnavailable as exc:
        if requested == "masscan":
            raise
        return connect(), f"masscan unavailable: {_one_line(exc)}; using the connect engine"
    if requested == "auto" and not _has_cap_net_raw():
        # masscan may run (file capabilities) but this process cannot open the answer
        # tap, and masscan's own capture loses answers under load (tap.py).
        return connect(), (
            "masscan not used: this process lacks CAP_NET_RAW to count its answers; "
            "using the connect engine"
        )
    return engine, ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "Discovery",
    "MasscanEngine",
    "MasscanPath",
    "MasscanRun",
    "RunOutcome",
    "choose_engine",
    "end_wait",
    "find_binary",
    "pass_deadline",
    "port_spec",
    "prepare_nmap_payloads",
    "resolve_path",
]
