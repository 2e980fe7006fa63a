"""UDP discovery: the top-1,000 UDP ports (or any shard's UDP ports) of each target.

Why one file: the probe round machinery (pacing, sockets, ICMP interpretation) and the
rule for reporting silence as open|filtered share the per-host counters they are
judged by; the payload tables live apart (udp_payloads.py).

Owns: ``UdpEngine`` (a ``DiscoveryEngine``, ``name = "udp"``), the choice of
datagram per port, the pacing, the retry rounds, the classification of each
port, the rule for reporting open|filtered, ``udp_top_ports`` and
``udp_service_hint``. It must not touch Kafka, storage or nmap's files directly
(those are read through ``probers.nmapdata``, lazily and optionally).

How a port is classified
------------------------
Each probe is one *connected* UDP socket: after ``connect()`` the kernel
delivers an ICMP port-unreachable for that flow to the socket as
``ECONNREFUSED`` (on recv, or on the next send), on loopback too, so no raw
socket and no root are needed. All sockets live in the asyncio event loop
(epoll on Linux) through ``add_reader``; a probe costs one fd, one timer and no
task.

=============================  =========================================  ======================
what came back                 state                                      yielded
=============================  =========================================  ======================
any datagram                   open, reason ``udp-response``              at once, with the reply
ICMP port unreachable          closed                                     no
other ICMP unreachable         filtered (host/net/admin-prohibited)       no
nothing after every attempt    open|filtered, reason ``no-response``      at the end, see below
=============================  =========================================  ======================

The datagram: ``payload_for`` overrides first (operators, tests); then
portwatch's own payloads for the well-known services (``udp_payloads.py``:
DNS, NTP, NetBIOS-NS, SNMP, SSDP, memcached); then nmap-payloads for the other
ports when nmap-common is installed; else an empty datagram. Services such as
DNS or SNMP stay silent on a datagram they cannot parse, so the payload is what
turns "open|filtered" into "open".

When open|filtered is reported (``report_open_filtered="auto"``, the default)
------------------------------------------------------------------------------
A host behind a firewall that drops UDP answers nothing on every port, and an
Internet host usually drops most of the top 1,000: listing ~1,000 open|filtered
rows per host buries the ports that matter. So silence on a port is reported
only when silence *means something* for that host:

1. the host sent at least one ICMP port-unreachable during the scan (its stack
   answers for closed ports, so it is not filtering everything); a reply on
   some other port is not enough (a firewall passing only DNS is still a
   firewall), and
2. its ICMP answers did not look rate-limited (see below), and
3. there are at most ``max_open_filtered`` silent ports on it (more silent
   ports than that is a filter's signature, not that many quiet services).

Otherwise the silent ports are not listed and ``Progress.notes`` says why and
how many, so the gap is visible, never silent. ``"always"`` lists every silent
port; ``"never"`` lists none.

ICMP rate limiting, measured
----------------------------
Linux limits the ICMP errors it sends: per destination
(``net.ipv4.icmp_ratelimit``, 1000 ms, burst 6: about one port-unreachable per
second towards one scanner, for the types in ``icmp_ratemask``, which include
destination-unreachable) and globally (``icmp_msgs_per_sec`` 1000, burst 50).
Loopback is exempt from the per-destination limit. On this project's build host
(kernel 6.18) 1,000 back-to-back datagrams to closed loopback ports drew 1,000
ECONNREFUSED even unpaced; kernels that apply the global bucket to loopback
drop what exceeds 1000/s after a burst of 50. So:

- the default pace is 500 datagrams/s for the whole engine, under the global
  bucket with room for the rest of the machine (``rate``);
- no-answer ports are retried (``retries``, default 1) in a *later round*, after
  the whole first pass, so the destination's ICMP bucket has refilled;
- each round ends with one *control* probe per host to a port already known
  closed. If its port-unreachable does not come back, the host was dropping
  ICMP errors while we probed, and silence in that round proves nothing. A
  closed answer that arrives only on a retry is the same evidence. Such a
  host gets up to ``extra_rounds`` more rounds for its silent ports; if its
  last round still shows the evidence, its remaining silent ports are
  *unresolved* (closed or open|filtered: we cannot tell at this pace), not
  listed, and noted. A remote Linux host (a burst of 6, then one
  port-unreachable per second) ends this way at any useful rate: the open
  ports that answer are still found; resolving the silent ones takes a rate
  of ~1/s, which is what nmap does (about 18 minutes for the top 1,000
  against one Linux host). ``tests/integration/test_udp_netns.py`` shows both
  cases on a real namespace host.

Measured on the build host (2 cores, kernel 6.18): the top 1,000 against
127.0.0.1 take 3.0 s at the default 500/s (2 s of pacing, then one retry
round for the silent ports), every closed port classified closed; unpaced,
the engine runs ~26,000 probes/s on loopback, so the event loop is never the
bottleneck at polite rates.

Hostile peers: a reply is read once with a bounded ``recv`` (``response_cap``),
the socket is closed at the first answer, every probe has a timer, and the
whole shard has a deadline. A peer answering on every port yields every port
as open (tarpit verdicts belong to the runner, which sees ``HostScan``).
A reply from an address other than the one probed (multi-homed hosts) is not
seen: the connected socket filters it, which also keeps spoofed replies out.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from probers.discovery.base import (
    DiscoveryError,
    Emit,
    EngineUnavailable,
    Progress,
    ShardDeadline,
    stream_work,
)
from probers.discovery.udp_payloads import GENERIC_PAYLOAD, UdpPayload, own_payloads
from probers.discovery.udp_payloads import own_service_hint as _own_service_hint
from probers.service.app_protocols import carries_snmp_community, snmp_v3_discovery
from schemas.records import OpenPort, PortState, Proto, Shard, Target

__all__ = [
    "RESPONSE_CAP",
    "UdpEngine",
    "UdpOptions",
    "decode_response",
    "encode_response",
    "udp_service_hint",
    "udp_top_ports",
]

RESPONSE_CAP = 256  # bytes of a reply kept in OpenPort.response (before escaping)
_RECV_SIZE = 65_535  # one whole datagram: a shorter recv truncates it, which is fine too
_FD_MARGIN = 64  # file descriptors left for the rest of the process

OpenFilteredMode = Literal["auto", "always", "never"]


def udp_top_ports(n: int = 1000, nmap_data: str | None = None) -> list[int]:
    """The ``n`` most frequently open UDP ports according to nmap-services.

    Raises ``EngineUnavailable`` with the fix when nmap-common is not installed:
    portwatch does not ship nmap's frequency table (licence), so without it the
    caller must name the UDP ports explicitly.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    try:
        from probers.nmapdata import NmapDataUnavailable
        from probers.nmapdata.services import top_ports
    except ImportError as exc:  # pragma: no cover - the package is part of portwatch
        raise EngineUnavailable(f"udp: nmap data reader missing: {exc}") from exc
    try:
        return list(top_ports("udp", n, path=nmap_data or None))
    except NmapDataUnavailable as exc:
        raise EngineUnavailable(
            f"udp: the top {n} UDP ports come from nmap-services, which is not available "
            f"({exc}); install nmap-common or give the UDP ports explicitly"
        ) from exc


@functools.lru_cache(maxsize=4096)  # hot path of the stages: one call per UDP finding
def udp_service_hint(port: int) -> str:
    """What usually listens on UDP ``port``: portwatch's own table, else nmap-services.

    A hint for reports and for choosing identification probes, never a verdict.
    Returns "" when nothing is known (or nmap-common is missing).
    """
    hint = _own_service_hint(port)
    if hint:
        return hint
    try:
        from probers.nmapdata import NmapDataUnavailable
        from probers.nmapdata.services import service_name
    except ImportError:  # pragma: no cover - the package is part of portwatch
        return ""
    try:
        return service_name("udp", port)
    except NmapDataUnavailable:
        return ""


# --- reply excerpts ---------------------------------------------------------------------

_ESCAPES = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def encode_response(data: bytes, cap: int = RESPONSE_CAP) -> str:
    """A safe, reversible text excerpt of a reply: printable ASCII kept, the rest ``\\xNN``.

    Safe for terminals, HTML and JSON (no control bytes); at most ``cap`` bytes
    of the reply, so at most ``4 * cap`` characters. ``decode_response`` gives
    the bytes back, so the identify stage can match on what discovery saw.
    """
    out: list[str] = []
    for byte in data[:cap]:
        if byte in _ESCAPES:
            out.append(_ESCAPES[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


_UNESCAPES = {"\\": 0x5C, "n": 0x0A, "r": 0x0D, "t": 0x09}


def decode_response(text: str) -> bytes:
    """Inverse of ``encode_response``; raises ValueError on text it did not produce."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(ord(char))
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in _UNESCAPES:
            out.append(_UNESCAPES[code])
            i += 2
        elif code == "x" and len(text) >= i + 4:
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise ValueError(f"bad escape at offset {i} in response excerpt")
    return bytes(out)


# --- options ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UdpOptions:
    """The knobs of ``UdpEngine``; each default says why."""

    # Seconds to wait for a reply or an ICMP error after the last datagram of an
    # attempt. Loopback answers in microseconds; 1 s covers a continent-wide RTT.
    timeout: float = 1.0
    # Extra attempts for ports that stayed silent (lost datagram, dropped ICMP).
    retries: int = 1
    # Datagrams per second, whole engine. Polite, and under Linux's global ICMP
    # bucket (1000/s) so closed ports are not mistaken for silent ones.
    rate: float = 500.0
    # Probes in flight (one socket each); clamped to the fd limit at run time.
    # rate x timeout = 500 keeps the pacer, not this bound, in charge.
    concurrency: int = 512
    # Seconds for a whole shard; the scan stops and raises DiscoveryError after it.
    deadline: float = 600.0
    # Rounds added for hosts whose ICMP answers look rate-limited.
    extra_rounds: int = 2
    # Datagrams per port per attempt (a port may have several candidate payloads).
    max_payloads: int = 3
    # See the module docstring.
    report_open_filtered: OpenFilteredMode = "auto"
    max_open_filtered: int = 100
    # Use nmap-payloads (read from the user's nmap-common) for ports we have none for.
    use_nmap_payloads: bool = True
    # Directory (or file) of nmap's data; None = $PORTWATCH_NMAP_DATA or /usr/share/nmap.
    nmap_data: str | None = None
    # Ask SNMP agents with the "public" community (a credential guess); off: SNMPv3
    # engine discovery only, which needs no credential.
    snmp_public_community: bool = False
    # Per-port datagrams that replace every other choice (tests, operators).
    payload_for: Mapping[int, Sequence[bytes]] = field(default_factory=dict)
    # Bytes of a reply kept in OpenPort.response.
    response_cap: int = RESPONSE_CAP

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        if self.retries < 0 or self.extra_rounds < 0:
            raise ValueError("retries and extra_rounds must be >= 0")
        if not self.rate > 0:
            raise ValueError(f"rate must be positive (packets/s), got {self.rate}")
        if self.concurrency < 1 or self.max_payloads < 1:
            raise ValueError("concurrency and max_payloads must be >= 1")
        if not self.deadline > 0:
            raise ValueError(f"deadline must be positive, got {self.deadline}")
        if self.report_open_filtered not in ("auto", "always", "never"):
            raise ValueError(f"bad report_open_filtered {self.report_open_filtered!r}")
        if self.max_open_filtered < 0 or self.response_cap < 0:
            raise ValueError("max_open_filtered and response_cap must be >= 0")


# --- probe machinery --------------------------------------------------------------------


class _Outcome(Enum):
    OPEN = "open"
    CLOSED = "closed"
    FILTERED = "filtered"
    SILENT = "silent"
    ERROR = "error"  # a local failure: no socket, no route; the port is not classified


@dataclass(slots=True)
class _Host:
    target: Target
    family: socket.AddressFamily
    silent: set[int] = field(default_factory=set)
    opened: int = 0
    closed: int = 0
    filtered: int = 0
    errors: int = 0
    last_error: str = ""
    # Evidence about the host's ICMP errors, from the last round it took part in:
    late_closed: int = 0  # ports that answered closed only on a retry
    control_ok: bool | None = None  # the known-closed control port answered (None: not sent)
    closed_port: int | None = None  # a port known closed, for control probes
    cut_short: bool = False  # the deadline ended its extra rounds: silence proves nothing

    @property
    def is_icmp_trustworthy(self) -> bool:
        """Silence from this host means no ICMP was sent, not that ICMP was dropped."""
        return self.late_closed == 0 and self.control_ok is True and not self.cut_short


class _Pacer:
    """Keeps the average send rate at ``rate`` datagrams/s.

    Sleeping once per datagram caps a Python event loop at a few thousand
    wake-ups per second, so the pacer sleeps only once a millisecond's worth of
    sends is due (at 500/s that is every datagram). After an oversleep it may
    catch up by at most ``_SLACK`` seconds' worth, so the average holds and a
    stalled loop never turns into a burst that would empty an ICMP bucket.
    """

    _MIN_SLEEP = 0.001
    _SLACK = 0.005

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def take(self, n: int) -> None:
        now = asyncio.get_running_loop().time()
        start = max(self._next, now - self._SLACK)
        self._next = start + n * self._interval
        if start - now >= self._MIN_SLEEP:
            await asyncio.sleep(start - now)


@dataclass(slots=True)
class _Probe:
    sock: socket.socket
    timer: asyncio.TimerHandle
    host_index: int
    port: int
    is_control: bool


# (host index, port, outcome, reply, errno text, is_control)
_ResultSink = Callable[[int, int, _Outcome, bytes, str, bool], None]


# An extra round ends this long before the shard's deadline, so the shard reports what
# it found instead of failing.
EXTRA_ROUND_MARGIN = 0.5


async def _extra_round(one_round: Awaitable[None], deadline: float) -> bool:
    """Run an extra round until ``EXTRA_ROUND_MARGIN`` before the loop-time ``deadline``;
    False when it was cut short (its probes' sockets are closed by the round)."""
    try:
        async with asyncio.timeout_at(deadline - EXTRA_ROUND_MARGIN):
            await one_round
    except TimeoutError:
        return False
    return True


class _Round:
    """One pass over a work list: every probe started at the pace, then awaited.

    Callback-driven: each probe is a socket with a reader and a timer; the
    first of answer / ICMP error / timer settles it and closes the socket.
    After the work list, one *control* probe per host goes to a port already
    known closed: if that ICMP answer does not come back, the host's ICMP
    errors were being dropped while we probed, and silence in this round
    proves nothing.
    """

    def __init__(
        self,
        engine: UdpEngine,
        hosts: Sequence[_Host],
        on_result: _ResultSink,
        concurrency: int,
    ) -> None:
        self._engine = engine
        self._hosts = hosts
        self._on_result = on_result
        self._slots = asyncio.Semaphore(concurrency)
        self._live: dict[int, _Probe] = {}
        self._all_started = False
        self._idle = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def run(
        self,
        work: Sequence[tuple[int, int]],
        pacer: _Pacer,
        controls: Callable[[], Sequence[tuple[int, int]]],
    ) -> None:
        try:
            for host_index, port in work:
                await self._send(host_index, port, pacer, is_control=False)
            for host_index, port in controls():
                await self._send(host_index, port, pacer, is_control=True)
            self._all_started = True
            if self._live:
                await self._idle.wait()
        finally:
            self.close()

    def close(self) -> None:
        for fd, probe in list(self._live.items()):
            probe.timer.cancel()
            self._loop.remove_reader(fd)
            probe.sock.close()
        self._live.clear()

    async def _send(self, host_index: int, port: int, pacer: _Pacer, *, is_control: bool) -> None:
        payloads = self._engine.payloads_for(port)
        await self._slots.acquire()
        await pacer.take(len(payloads))
        host = self._hosts[host_index]
        try:
            sock = _connected_socket(host.family, host.target.ip, port)
        except OSError as exc:
            self._slots.release()
            self._on_result(host_index, port, _Outcome.ERROR, b"", _errno_text(exc), is_control)
            return
        outcome: _Outcome | None = None
        detail = ""
        for index, payload in enumerate(payloads):
            try:
                sock.send(payload.data)
            except ConnectionRefusedError:
                # The ICMP answer to an earlier datagram of this attempt (loopback
                # delivers it before send() returns).
                outcome = _Outcome.CLOSED
                break
            except BlockingIOError:
                continue  # socket buffer full: the other datagrams still go
            except OSError as exc:
                # A first send failing is local (no route, local firewall: EPERM);
                # a later one carries an ICMP error to an earlier datagram.
                outcome = _Outcome.ERROR if index == 0 else _Outcome.FILTERED
                detail = _errno_text(exc)
                break
        if outcome is not None:
            sock.close()
            self._slots.release()
            self._on_result(host_index, port, outcome, b"", detail, is_control)
            return
        fd = sock.fileno()
        timer = self._loop.call_later(
            self._engine.options.timeout, self._settle, fd, _Outcome.SILENT, b""
        )
        self._live[fd] = _Probe(sock, timer, host_index, port, is_control)
        self._loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        probe = self._live.get(fd)
        if probe is None:
            return
        try:
            data = probe.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return  # spurious wake-up
        except ConnectionRefusedError:
            self._settle(fd, _Outcome.CLOSED, b"")
            return
        except OSError as exc:  # EHOSTUNREACH, ENETUNREACH, ...: ICMP other than port-unreach
            self._settle(fd, _Outcome.FILTERED, b"", _errno_text(exc))
            return
        self._settle(fd, _Outcome.OPEN, data)

    def _settle(self, fd: int, outcome: _Outcome, data: bytes, detail: str = "") -> None:
        probe = self._live.pop(fd, None)
        if probe is None:
            return
        probe.timer.cancel()
        self._loop.remove_reader(fd)
        probe.sock.close()
        self._slots.release()
        self._on_result(probe.host_index, probe.port, outcome, data, detail, probe.is_control)
        if self._all_started and not self._live:
            self._idle.set()


def _connected_socket(family: socket.AddressFamily, ip: str, port: int) -> socket.socket:
    """A non-blocking UDP socket connected to (ip, port), never connected to itself.

    On loopback the kernel may pick the destination port as the ephemeral
    source port, and the socket would then read its own datagram back as a
    "reply". Retrying draws another ephemeral port.
    """
    for _ in range(4):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((ip, port))
            if sock.getsockname()[:2] != sock.getpeername()[:2]:
                return sock
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise OSError(errno.EADDRINUSE, "could not avoid a self-connected UDP socket")


def _errno_text(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno)) if exc.errno else str(exc)


def _fd_budget(wanted: int) -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - _FD_MARGIN))


# --- the engine -------------------------------------------------------------------------


class UdpEngine:
    """UDP discovery engine (see the module docstring for the rules)."""

    name = "udp"

    def __init__(self, options: UdpOptions | None = None, **overrides: object) -> None:
        base = options or UdpOptions()
        if overrides:
            fields_ = {f: getattr(base, f) for f in UdpOptions.__dataclass_fields__}
            unknown = set(overrides) - set(fields_)
            if unknown:
                raise TypeError(f"unknown UdpEngine options: {sorted(unknown)}")
            fields_.update(overrides)
            base = UdpOptions(**fields_)
        self.options = base
        self._nmap_payloads: dict[int, list[bytes]] | None = None
        self._nmap_note = ""

    # -- payload choice

    def payloads_for(self, port: int) -> tuple[UdpPayload, ...]:
        """The datagrams one attempt sends to ``port`` (see the module docstring)."""
        cap = self.options.max_payloads
        override = self.options.payload_for.get(port)
        if override is not None:
            return tuple(UdpPayload(f"override:{i}", bytes(d)) for i, d in enumerate(override))[
                :cap
            ] or (GENERIC_PAYLOAD,)
        own = own_payloads(port, snmp_public_community=self.options.snmp_public_community)
        if own:
            return own[:cap]
        nmap = self._nmap_payload_table().get(port)
        if nmap is not None and not nmap:  # every payload of nmap's asked with a community
            return (UdpPayload("snmp:v3-engine-discovery", snmp_v3_discovery()),)
        if nmap:
            unique = list(dict.fromkeys(nmap))
            return tuple(UdpPayload(f"nmap-payloads:{port}:{i}", d) for i, d in enumerate(unique))[
                :cap
            ]
        return (GENERIC_PAYLOAD,)

    def _nmap_payload_table(self) -> dict[int, list[bytes]]:
        if self._nmap_payloads is None:
            table: dict[int, list[bytes]] = {}
            if self.options.use_nmap_payloads:
                try:
                    from probers.nmapdata import NmapDataUnavailable
                    from probers.nmapdata.payloads import udp_payloads

                    try:
                        table = dict(udp_payloads(self.options.nmap_data))
                    except NmapDataUnavailable as exc:
                        self._nmap_note = (
                            f"udp: nmap-payloads not used ({exc}); ports without a payload "
                            "of portwatch's own get an empty datagram"
                        )
                except ImportError as exc:  # pragma: no cover - package is part of portwatch
                    self._nmap_note = f"udp: nmap-payloads reader missing ({exc})"
            if not self.options.snmp_public_community:
                # nmap-payloads' "SNMP PUBLIC WALK" (161, 260, 3401) asks with "public": a
                # credential guess, left out (a port left with none gets engine discovery,
                # as 161 does: ``payloads_for``; a review)
                table = {port: [d for d in data if not carries_snmp_community(d)]
                         for port, data in table.items()}
            self._nmap_payloads = table
        return self._nmap_payloads

    # -- scanning

    def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        return stream_work(lambda emit: self._run_rounds(shard, progress, emit),
                           what="udp engine")

    async def _run_rounds(self, shard: Shard, progress: Progress, emit: Emit[OpenPort]) -> None:
        if shard.proto is not Proto.UDP:
            raise DiscoveryError(f"udp engine given a {shard.proto} shard {shard.shard_id}")
        opts = self.options
        hosts = [
            _Host(t, socket.AF_INET6 if ipaddress.ip_address(t.ip).version == 6 else socket.AF_INET)
            for t in shard.targets
        ]
        ports = list(dict.fromkeys(shard.port_list()))
        # Port-major order: consecutive datagrams go to different hosts, so each
        # host sees rate / len(hosts) and its ICMP bucket drains more slowly.
        work = [(h, p) for p in ports for h in range(len(hosts))]
        progress.add_total(len(work))
        self._nmap_payload_table()
        if self._nmap_note:
            progress.notes.append(self._nmap_note)
        concurrency = _fd_budget(opts.concurrency)
        if concurrency < opts.concurrency:
            progress.notes.append(
                f"udp: {concurrency} probes in flight instead of {opts.concurrency} "
                "(open-files limit)"
            )
        pacer = _Pacer(opts.rate)
        round_number = 0
        settled: set[tuple[int, int]] = set()  # (host, port) answered in the current round

        def on_result(
            hi: int, port: int, outcome: _Outcome, data: bytes, detail: str, is_control: bool
        ) -> None:
            host = hosts[hi]
            if is_control:
                host.control_ok = outcome in (_Outcome.CLOSED, _Outcome.OPEN)
                return
            if outcome is _Outcome.SILENT:
                host.silent.add(port)
                return
            settled.add((hi, port))
            progress.probes_done += 1
            if outcome is _Outcome.OPEN:
                host.opened += 1
                progress.open_found += 1
                emit.nowait(self._open_port(shard, host.target, port, data))
            elif outcome is _Outcome.CLOSED:
                host.closed += 1
                host.closed_port = port
                if round_number > 0:
                    host.late_closed += 1
            elif outcome is _Outcome.FILTERED:
                host.filtered += 1
            else:
                host.errors += 1
                host.last_error = detail
                progress.errors += 1

        def controls_for(in_round: set[int]) -> Callable[[], list[tuple[int, int]]]:
            def controls() -> list[tuple[int, int]]:
                return [
                    (h, port)
                    for h in sorted(in_round)
                    if (port := hosts[h].closed_port) is not None
                ]

            return controls

        try:
            async with asyncio.timeout(opts.deadline) as whole:
                max_rounds = 1 + opts.retries + opts.extra_rounds
                while work and round_number < max_rounds:
                    if round_number > opts.retries:
                        # Extra rounds: only when they can change what is reported, for
                        # hosts that do send ICMP errors but some went missing.
                        if opts.report_open_filtered != "auto":
                            break
                        work = [
                            (h, p)
                            for h, p in work
                            if hosts[h].closed_port is not None and not hosts[h].is_icmp_trustworthy
                        ]
                        if not work:
                            break
                    in_round = {h for h, _ in work}
                    for h in in_round:
                        hosts[h].late_closed = 0
                        hosts[h].control_ok = None
                        hosts[h].silent.clear()
                    if round_number > 0:
                        progress.retries += len(work)
                    settled.clear()
                    one_round = _Round(self, hosts, on_result, concurrency).run(
                        work, pacer, controls_for(in_round))
                    ends = whole.when()
                    if round_number <= opts.retries or ends is None:
                        await one_round
                    elif not await _extra_round(one_round, ends):
                        # The extra rounds only refine what silence means; past the
                        # deadline they would fail the shard, and every rerun of it
                        # (a review, 2026-12-06): their silent ports stay unresolved.
                        for h, p in work:
                            hosts[h].cut_short = True
                            if (h, p) not in settled:
                                hosts[h].silent.add(p)
                        break
                    work = [(h, p) for p in ports for h in in_round if p in hosts[h].silent]
                    round_number += 1
        except TimeoutError:
            unresolved = progress.probes_total - progress.probes_done
            raise ShardDeadline(
                f"udp: shard {shard.shard_id} hit its {opts.deadline:g}s deadline with "
                f"{unresolved} of {progress.probes_total} probes unresolved"
            ) from None

        for host in hosts:
            progress.probes_done += len(host.silent)
            for port in self._open_filtered(host, progress):
                progress.open_found += 1
                await emit(
                    OpenPort(
                        scan_id=shard.scan_id,
                        target=host.target,
                        port=port,
                        proto=Proto.UDP,
                        state=PortState.OPEN_FILTERED,
                        engine=self.name,
                        reason="no-response",
                    )
                )
        failed = [h for h in hosts if h.errors and h.errors == len(ports)]
        if failed:
            names = ", ".join(f"{h.target.ip} ({h.last_error})" for h in failed)
            raise DiscoveryError(f"udp: could not send to {names}")
        for host in hosts:
            if host.errors:
                progress.notes.append(
                    f"udp: {host.target.ip}: {host.errors} ports not tested ({host.last_error})"
                )

    def _open_filtered(self, host: _Host, progress: Progress) -> list[int]:
        silent = sorted(host.silent)
        if not silent:
            return []
        mode = self.options.report_open_filtered
        ip = host.target.ip
        if mode == "always":
            return silent
        if mode == "never":
            progress.notes.append(f"udp: {ip}: {len(silent)} silent ports not listed (never)")
            return []
        if host.closed == 0:
            progress.notes.append(
                f"udp: {ip}: no ICMP port-unreachable from any port; {len(silent)} silent "
                "ports not listed as open|filtered (UDP filtered, or host down)"
            )
            return []
        if not host.is_icmp_trustworthy:
            if host.cut_short:
                evidence = "the shard's deadline cut its extra rounds short"
            elif host.late_closed:
                evidence = f"{host.late_closed} ports answered closed only on the last retry"
            elif host.control_ok is False:
                evidence = "a port known closed went silent"
            else:
                evidence = "no port known closed was left to check it"
            progress.notes.append(
                f"udp: {ip}: ICMP port-unreachables are rate-limited or lost ({evidence}); "
                f"{len(silent)} ports unresolved (closed or open|filtered), not listed; "
                "a lower rate resolves them"
            )
            return []
        if len(silent) > self.options.max_open_filtered:
            progress.notes.append(
                f"udp: {ip}: {len(silent)} silent ports (more than "
                f"{self.options.max_open_filtered}): a filter, not listed as open|filtered"
            )
            return []
        return silent

    def _open_port(self, shard: Shard, target: Target, port: int, data: bytes) -> OpenPort:
        return OpenPort(
            scan_id=shard.scan_id,
            target=target,
            port=port,
            proto=Proto.UDP,
            state=PortState.OPEN,
            engine=self.name,
            reason="udp-response",
            response=encode_response(data, self.options.response_cap),
        )
