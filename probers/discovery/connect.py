"""Async TCP connect discovery: a full-range port sweep with plain connect().

Owns: ``ConnectEngine`` (the unprivileged discovery engine, and the fallback when
masscan cannot run), ``confirm_open`` (the connect "confirm pass" raw engines run
over what they found) and the per-host outcome of a sweep (``SweepReport``).

Why one file: the sweep loop, its resource bounds and its outcome rules are one state
machine over the same sockets and counters; split apart, each half would have to
reach into the other's private state on the hot path.

Must not touch: Kafka, storage, raw sockets, or any address it was not given. It
does no scope checking of its own: the producer decides what may be scanned.

How it is fast. ``asyncio.open_connection`` per port costs a Task, a Future, a
transport and a protocol per probe: tens of microseconds of Python for a probe the
kernel answers in one. Instead a worker thread drives non-blocking sockets itself:
``connect_ex`` starts the handshake, one ``epoll`` waits for all of them, and
``SO_ERROR`` gives the verdict (0 = SYN-ACK, ECONNREFUSED = RST). Open ports are
handed to the asyncio side in batches through ``loop.call_soon_threadsafe``; the
event loop never runs per-probe code.

Resource bounds, each enforced rather than hoped for:
- in-flight sockets <= ``concurrency`` and <= the RLIMIT_NOFILE soft limit minus
  the descriptors already open minus a safety margin; EMFILE/ENFILE/ENOBUFS (some
  other part of the process took descriptors) shrink the budget instead of failing;
- open ports the consumer has not taken yet <= ``BACKLOG_CAP`` (new probes pause
  while it is full), so a host where every port accepts cannot grow memory;
- open connections are closed with SO_LINGER 0 (RST): no TIME_WAIT pile-up that
  would exhaust local ports when a tarpit answers on every port;
- the sweep stops by itself: per-probe ``timeout``, bounded ``retries``, optional
  per-shard ``deadline``.

Outcomes per probe: open (SYN-ACK; a TCP self-connect on an ephemeral port is
recognised and counted closed), closed (RST), filtered (no answer after
``1 + retries`` attempts of ``timeout`` each) or error (EHOSTUNREACH, ENETUNREACH,
EACCES...: "could not test", counted in ``Progress.errors`` and never retried). A
host that answers nothing but unreachability errors is given up after
``UNREACHABLE_GIVE_UP`` of them, and its remaining ports are reported untested.

Deadline choice: when the shard deadline passes the sweep stops, keeps what it
already yielded (``SweepReport.stop_reason == "deadline"``), and then raises
``ShardDeadline`` saying how many probes were left untested, as masscan's engine
does: the shard's hosts are then recorded "error" with that line, their silences
close nothing, and the shard is not retried (no more time is left for it). Before,
it only added a note, which a discover worker dropped, and recorded the hosts
"completed" with half their ports untested.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import ipaddress
import os
import random
import resource
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from probers.discovery.base import DiscoveryError, Emit, Progress, ShardDeadline, stream_work
from schemas.records import OpenPort, Proto, Shard, Target

__all__ = [
    "BACKLOG_CAP",
    "FD_SAFETY_MARGIN",
    "UNREACHABLE_GIVE_UP",
    "ConnectEngine",
    "HostOutcome",
    "SweepReport",
    "confirm_open",
    "fd_budget",
]

# Descriptors left free for the rest of the process (logging, Kafka, stores...).
FD_SAFETY_MARGIN = 256
# Open ports found but not yet taken by the consumer; new probes pause beyond this.
BACKLOG_CAP = 4096
# A host with this many unreachability errors and not a single answer is given up.
UNREACHABLE_GIVE_UP = 32

_LINGER_RST = struct.pack("ii", 1, 0)  # struct linger {on, 0s}: close() sends RST
_PROGRESS_INTERVAL = 0.05  # seconds between progress hand-offs when nothing opened
_BLOCKED_POLL = 0.02  # seconds between checks while the consumer backlog is full
_MAX_POLL = 0.25  # upper bound on one epoll wait (stop is also signalled by eventfd)
_MAX_LAUNCH = 4096  # probes started per loop turn, so verdicts and hand-offs interleave

_REFUSED = errno.ECONNREFUSED
_IN_PROGRESS = errno.EINPROGRESS
# Verdicts that mean "nobody answered yet": the probe is a timeout, not an error.
_TIMEOUT_ERRNOS = frozenset({errno.ETIMEDOUT})
# Verdicts that say the host cannot be reached at all.
_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)
# Local resource shortage: not the target's fault, shrink the budget and try again.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def fd_budget(concurrency: int, margin: int = FD_SAFETY_MARGIN) -> int:
    """How many sockets one sweep may hold open at once in this process.

    ``min(concurrency, soft RLIMIT_NOFILE - descriptors open now - margin)``. The
    margin shrinks to half the headroom when the limit is tiny (a soft limit of 256
    must still allow a sweep), and the budget is at least 1 while any descriptor is
    free.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max(1, concurrency)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs: assume a small process
        in_use = 64
    headroom = soft - in_use
    if headroom <= 1:
        return 0
    margin = min(margin, headroom // 2)
    return max(1, min(concurrency, headroom - margin))


@dataclass(frozen=True, slots=True)
class HostOutcome:
    """What one sweep concluded about one address's ports."""

    ip: str
    ports_total: int
    open: int = 0
    closed: int = 0
    filtered: int = 0  # no SYN-ACK and no RST after every attempt
    errors: int = 0  # could not test: unreachable, local error
    untested: int = 0  # deadline, cancellation or host given up
    error_kinds: tuple[tuple[str, int], ...] = ()  # ("EHOSTUNREACH", 12), ...
    is_given_up: bool = False

    @property
    def is_complete(self) -> bool:
        """Every port got a verdict (errors included: they are verdicts too)."""
        return self.untested == 0


@dataclass(frozen=True, slots=True)
class SweepReport:
    """How a sweep ended, per host, plus the resource peaks it reached."""

    stop_reason: str  # complete / deadline / cancelled / error
    hosts: tuple[HostOutcome, ...]
    fd_budget: int
    peak_inflight: int
    peak_backlog: int
    elapsed: float

    @property
    def is_complete(self) -> bool:
        return self.stop_reason == "complete"


@dataclass(slots=True)
class _Counters:
    """Cumulative counters the worker publishes; the consumer applies deltas."""

    done: int = 0
    opened: int = 0
    retries: int = 0
    errors: int = 0


class _Sink:
    """Where a sweep sends what it finds. The base class collects in place."""

    def __init__(self) -> None:
        self.found: list[tuple[int, int]] = []

    def has_room(self) -> bool:
        return True

    def backlog(self) -> int:
        return 0

    def publish(self, found: list[tuple[int, int]], counters: _Counters, final: bool) -> None:
        self.found.extend(found)


class _Handoff(_Sink):
    """Thread-safe hand-off from the worker thread to the asyncio generator."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int) -> None:
        super().__init__()
        self._loop = loop
        self._cap = cap
        self._lock = threading.Lock()
        self._ready: deque[tuple[int, int]] = deque()
        self._counters = _Counters()
        self._final = False
        self._is_signalled = False
        self.event = asyncio.Event()  # created on the loop thread
        # Called when the event loop is gone (consumer dropped without closing the
        # generator): nobody will drain the backlog, so the sweep must stop itself.
        self.on_abandon: Callable[[], None] | None = None

    def has_room(self) -> bool:
        return len(self._ready) < self._cap  # racy read is fine: a hint, re-checked

    def backlog(self) -> int:
        return len(self._ready)

    def publish(self, found: list[tuple[int, int]], counters: _Counters, final: bool) -> None:
        with self._lock:
            self._ready.extend(found)
            self._counters = _Counters(
                counters.done, counters.opened, counters.retries, counters.errors
            )
            self._final = self._final or final
            if self._is_signalled:
                return
            self._is_signalled = True
        try:
            self._loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # loop closed under us: the consumer is gone
            if self.on_abandon is not None:
                self.on_abandon()

    def take(self) -> tuple[list[tuple[int, int]], _Counters, bool]:
        """Everything published so far (called on the loop thread)."""
        with self._lock:
            items = list(self._ready)
            self._ready.clear()
            self._is_signalled = False
            self.event.clear()
            return items, self._counters, self._final


class _Sweep:
    """One sweep of hosts x ports: the epoll loop. Runs in whichever thread calls run()."""

    def __init__(
        self,
        hosts: list[tuple[int, str]],
        ports: list[int],
        *,
        concurrency: int,
        timeout: float,
        retries: int,
        deadline: float | None,
        sink: _Sink,
    ) -> None:
        self.hosts = hosts
        self.ports = ports
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.sink = sink
        self.counters = _Counters()
        n = len(hosts)
        self.h_open = [0] * n
        self.h_closed = [0] * n
        self.h_filtered = [0] * n
        self.h_errors = [0] * n
        self.h_skipped = [0] * n
        self.h_unreachable = [0] * n
        self.h_kinds: list[Counter[str]] = [Counter() for _ in range(n)]
        self.h_is_dead = [False] * n
        self.stop_reason = "complete"
        self.budget = 0
        self.peak_inflight = 0
        self.peak_backlog = 0
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Guards _wake_fd against stop() writing to a number the worker already
        # closed (and the process may have reused for something else).
        self._wake_lock = threading.Lock()
        self._is_wake_closed = False

    # -- control (any thread) -------------------------------------------------

    def stop(self) -> None:
        """Ask the sweep to end now; it closes its sockets and returns promptly."""
        self._stop.set()
        with self._wake_lock:
            if not self._is_wake_closed:
                os.eventfd_write(self._wake_fd, 1)

    # -- the loop --------------------------------------------------------------

    def _fresh(self) -> Iterator[tuple[int, int]]:
        """Probe order: ports in the given order, hosts interleaved within each port,
        so consecutive probes to one host are len(hosts) probes apart."""
        is_dead = self.h_is_dead
        hosts = range(len(self.hosts))
        for port in self.ports:
            for h in hosts:
                if is_dead[h]:
                    self.h_skipped[h] += 1
                    self.counters.done += 1
                    continue
                yield h, port

    def run(self) -> None:
        started = time.monotonic()
        inflight: dict[int, tuple[_socket.socket, int, int, int, float]] = {}
        ep = select.epoll()
        try:
            ep.register(self._wake_fd, select.EPOLLIN)
            self._loop(ep, inflight, started)
        except BaseException:
            self.stop_reason = "error"
            raise
        finally:
            for entry in inflight.values():
                entry[0].close()
            inflight.clear()
            ep.close()
            with self._wake_lock:
                self._is_wake_closed = True
                os.close(self._wake_fd)
            self.elapsed = time.monotonic() - started
            self.sink.publish([], self.counters, True)

    def _loop(
        self,
        ep: select.epoll,
        inflight: dict[int, tuple[_socket.socket, int, int, int, float]],
        started: float,
    ) -> None:
        # Hot path: locals only, no per-probe method calls on the common verdicts.
        hosts = self.hosts
        timeout = self.timeout
        counters = self.counters
        sink = self.sink
        h_closed = self.h_closed
        stop = self._stop
        wake_fd = self._wake_fd
        stream = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        epollout = select.EPOLLOUT
        sol_socket, so_error = socket.SOL_SOCKET, socket.SO_ERROR
        refused, in_progress = _REFUSED, _IN_PROGRESS
        monotonic = time.monotonic
        # The C socket type: socket.socket adds a Python-level __init__ and close()
        # per probe, ~10% of a loopback sweep, for features a probe does not use.
        new_socket = _socket.socket

        deadline_at = None if self.deadline is None else started + self.deadline
        limit = fd_budget(self.concurrency)
        if limit < 1:
            raise DiscoveryError("connect: no file descriptors left for sockets")
        self.budget = limit
        fresh = self._fresh()
        retry_queue: deque[tuple[int, int, int]] = deque()  # (host, port, attempt)
        is_exhausted = False
        found: list[tuple[int, int]] = []
        last_publish = started
        next_expiry = started + timeout
        # Expiry is checked at most this often: a probe times out after
        # timeout .. timeout + slack, never earlier.
        slack = min(0.05, timeout / 20)

        while True:
            if stop.is_set():
                self.stop_reason = "cancelled"
                return
            now = monotonic()
            if deadline_at is not None and now >= deadline_at:
                self.stop_reason = "deadline"
                return

            # 1. Expire probes nobody answered. The dict keeps launch order, and
            #    every probe has the same timeout, so the oldest come first.
            if inflight and now >= next_expiry:
                expired = []
                for fd, probe in inflight.items():
                    if probe[4] > now:
                        break
                    expired.append(fd)
                for fd in expired:
                    sock, h, port, attempt, _ = inflight.pop(fd)
                    sock.close()
                    self._timed_out(h, port, attempt, retry_queue)
                first = next(iter(inflight.values()), None)
                next_expiry = max(first[4] if first else now + timeout, now + slack)

            # 2. Launch new probes up to the budget, unless the consumer lags behind.
            room = limit - len(inflight)
            if room > 0 and sink.has_room():
                deadline_probe = now + timeout
                budget_this_round = _MAX_LAUNCH
                while room > 0 and budget_this_round > 0:
                    budget_this_round -= 1
                    if retry_queue:
                        h, port, attempt = retry_queue.popleft()
                    elif not is_exhausted:
                        nxt = next(fresh, None)
                        if nxt is None:
                            is_exhausted = True
                            continue
                        h, port = nxt
                        attempt = 0
                    else:
                        break
                    family, ip = hosts[h]
                    try:
                        sock = new_socket(family, stream)
                    except OSError as exc:
                        if exc.errno not in _RESOURCE_ERRNOS:
                            raise
                        retry_queue.appendleft((h, port, attempt))
                        if not inflight:
                            raise DiscoveryError(
                                f"connect: cannot open a socket ({exc.strerror}) "
                                "with no probe in flight"
                            ) from exc
                        limit = len(inflight)  # someone else took descriptors: shrink
                        break
                    err = sock.connect_ex((ip, port))
                    if err == in_progress:
                        # On loopback the SYN and its RST are processed before
                        # connect() returns: the verdict is already in SO_ERROR,
                        # and asking costs one syscall instead of epoll_ctl + wait.
                        err = sock.getsockopt(sol_socket, so_error) or in_progress
                    if err == in_progress:
                        fd = sock.fileno()
                        inflight[fd] = (sock, h, port, attempt, deadline_probe)
                        ep.register(fd, epollout)
                        room -= 1
                    elif err == refused:
                        sock.close()
                        h_closed[h] += 1
                        counters.done += 1
                    else:
                        if err in _RESOURCE_ERRNOS:
                            sock.close()
                            retry_queue.appendleft((h, port, attempt))
                            if not inflight:
                                raise DiscoveryError(
                                    f"connect: cannot connect ({os.strerror(err)}) "
                                    "with no probe in flight"
                                )
                            limit = len(inflight)
                            break
                        self._verdict(sock, h, port, attempt, err, found, retry_queue)
                if len(inflight) > self.peak_inflight:
                    self.peak_inflight = len(inflight)
                if not inflight and is_exhausted and not retry_queue:
                    break

            # 3. Wait for verdicts.
            if (retry_queue or not is_exhausted) and len(inflight) < limit and sink.has_room():
                wait = 0.0  # more to launch: just collect what is ready
            elif not inflight:
                wait = _BLOCKED_POLL  # waiting for the consumer to drain the backlog
            else:
                wait = min(max(next_expiry - now, 0.0), _MAX_POLL)
            if deadline_at is not None:
                wait = min(wait, max(deadline_at - now, 0.0))
            for fd, _ev in ep.poll(wait, limit + 1):
                if fd == wake_fd:
                    continue  # stop() wrote it; checked at the loop head
                done = inflight.pop(fd, None)
                if done is None:
                    continue
                sock = done[0]
                err = sock.getsockopt(sol_socket, so_error)
                if err == refused:
                    sock.close()  # close() also removes it from the epoll set
                    h_closed[done[1]] += 1
                    counters.done += 1
                else:
                    self._verdict(sock, done[1], done[2], done[3], err, found, retry_queue)

            # 4. Hand results over: open ports at once, counters a few times a second.
            now = monotonic()
            if found or now - last_publish >= _PROGRESS_INTERVAL:
                sink.publish(found, counters, False)
                found = []
                last_publish = now
                backlog = sink.backlog()
                if backlog > self.peak_backlog:
                    self.peak_backlog = backlog
            if not inflight and is_exhausted and not retry_queue:
                break
        # Finished: verdicts from the last launch round (step 2) are still here.
        sink.publish(found, counters, False)

    # -- slow paths: the rarer verdicts ----------------------------------------

    def _verdict(
        self,
        sock: _socket.socket,
        h: int,
        port: int,
        attempt: int,
        err: int,
        found: list[tuple[int, int]],
        retry_queue: deque[tuple[int, int, int]],
    ) -> None:
        if err in (0, errno.ECONNRESET):
            # Connecting to a free port of the ephemeral range can pick that very
            # port as the local one: TCP simultaneous open connects the socket to
            # itself. Nobody listens there; it is closed, not open. A reset (in
            # SO_ERROR, or landing before getpeername) comes after a completed
            # handshake: a listener accepted, then reset (a TCP wrapper refusing the
            # client, a service that closes at once). That port is open; it read "could
            # not be tested" and a host of 500 such listeners showed 0-44 open per run.
            try:
                is_self = err == 0 and sock.getsockname()[:2] == sock.getpeername()[:2]
            except OSError:  # ENOTCONN: reset after SO_ERROR said connected
                is_self = False
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            sock.close()
            self.counters.done += 1
            if is_self:
                self.h_closed[h] += 1
                return
            self.h_open[h] += 1
            self.counters.opened += 1
            found.append((h, port))
            return
        sock.close()
        if err == _REFUSED:
            self.h_closed[h] += 1
            self.counters.done += 1
        elif err in _TIMEOUT_ERRNOS:
            self._timed_out(h, port, attempt, retry_queue)
        else:
            self.counters.done += 1
            self.counters.errors += 1
            self.h_errors[h] += 1
            self.h_kinds[h][errno.errorcode.get(err, str(err))] += 1
            if err in _UNREACHABLE_ERRNOS:
                self.h_unreachable[h] += 1
                if (
                    self.h_unreachable[h] >= UNREACHABLE_GIVE_UP
                    and self.h_open[h] == 0
                    and self.h_closed[h] == 0
                ):
                    self.h_is_dead[h] = True

    def _timed_out(
        self, h: int, port: int, attempt: int, retry_queue: deque[tuple[int, int, int]]
    ) -> None:
        if attempt < self.retries and not self.h_is_dead[h]:
            self.counters.retries += 1
            retry_queue.append((h, port, attempt + 1))
        else:
            self.h_filtered[h] += 1
            self.counters.done += 1

    # -- result ----------------------------------------------------------------

    def report(self) -> SweepReport:
        per_host = len(self.ports)
        hosts = []
        for h, (_family, ip) in enumerate(self.hosts):
            concluded = (
                self.h_open[h] + self.h_closed[h] + self.h_filtered[h] + self.h_errors[h]
            )
            hosts.append(
                HostOutcome(
                    ip=ip,
                    ports_total=per_host,
                    open=self.h_open[h],
                    closed=self.h_closed[h],
                    filtered=self.h_filtered[h],
                    errors=self.h_errors[h],
                    untested=per_host - concluded,
                    error_kinds=tuple(sorted(self.h_kinds[h].items())),
                    is_given_up=self.h_is_dead[h],
                )
            )
        return SweepReport(
            stop_reason=self.stop_reason,
            hosts=tuple(hosts),
            fd_budget=self.budget,
            peak_inflight=self.peak_inflight,
            peak_backlog=self.peak_backlog,
            elapsed=self.elapsed,
        )


def _family(ip: str) -> int:
    try:
        version = ipaddress.ip_address(ip).version
    except ValueError as exc:
        raise DiscoveryError(f"connect: not an IP address: {ip!r}") from exc
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _check_params(concurrency: int, timeout: float, retries: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")


class ConnectEngine:
    """TCP connect() sweep: no privilege needed, IPv4 and IPv6.

    ``concurrency`` caps sockets in flight (further capped by RLIMIT_NOFILE);
    ``timeout`` is the wait for a SYN-ACK or RST per attempt; ``retries`` extra
    attempts are made for ports that gave neither; ``deadline`` (seconds, per
    shard) stops the sweep with a note in ``Progress.notes`` (see module doc).
    ``seed_order`` shuffles ports with the shard's seed (deterministic per shard);
    hosts are always interleaved. ``backlog_cap`` bounds open ports found but not
    yet consumed (new probes pause while it is reached).

    After each scan ``last_report`` holds the per-host outcome (for HostScan
    records); with one engine shared by concurrent scans it is the latest to end.
    """

    name = "connect"

    def __init__(
        self,
        *,
        concurrency: int = 2000,
        timeout: float = 1.0,
        retries: int = 1,
        deadline: float | None = None,
        seed_order: bool = True,
        backlog_cap: int = BACKLOG_CAP,
    ) -> None:
        _check_params(concurrency, timeout, retries)
        if backlog_cap < 1:
            raise ValueError(f"backlog_cap must be >= 1, got {backlog_cap}")
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be > 0 or None, got {deadline}")
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.seed_order = seed_order
        self.backlog_cap = backlog_cap
        self.last_report: SweepReport | None = None

    def _plan(self, shard: Shard) -> tuple[list[tuple[int, str]], list[int], int]:
        if shard.proto is not Proto.TCP:
            raise DiscoveryError(f"connect: cannot scan {shard.proto} (TCP only)")
        hosts = [(_family(t.ip), t.ip) for t in shard.targets]
        ports = list(dict.fromkeys(shard.port_list()))  # overlapping ranges: once each
        duplicates = shard.probe_count - len(ports) * len(hosts)
        if self.seed_order:
            random.Random(f"{shard.seed}:{shard.index}:{shard.shard_id}").shuffle(ports)
        return hosts, ports, duplicates

    def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        return stream_work(lambda emit: self._work(shard, progress, emit),
                           what=f"connect: sweep of shard {shard.shard_id}")

    async def _work(self, shard: Shard, progress: Progress, emit: Emit[OpenPort]) -> None:
        """The sweep runs in a thread (raw epoll); this pump hands its finds over."""
        hosts, ports, duplicates = self._plan(shard)
        self.last_report = None
        targets: tuple[Target, ...] = shard.targets
        progress.add_total(shard.probe_count)
        progress.probes_done += duplicates
        loop = asyncio.get_running_loop()
        sink = _Handoff(loop, self.backlog_cap)
        sweep = _Sweep(
            hosts,
            ports,
            concurrency=self.concurrency,
            timeout=self.timeout,
            retries=self.retries,
            deadline=self.deadline,
            sink=sink,
        )
        sink.on_abandon = sweep.stop
        failure: list[BaseException] = []

        def work() -> None:
            try:
                sweep.run()
            except BaseException as exc:  # handed to the consumer, never lost
                failure.append(exc)
                sink.publish([], sweep.counters, True)

        thread = threading.Thread(target=work, name=f"connect-{shard.shard_id}", daemon=True)
        applied = _Counters()
        is_final = False
        thread.start()
        try:
            while not is_final:
                await sink.event.wait()
                items, counters, is_final = sink.take()
                progress.probes_done += counters.done - applied.done
                progress.open_found += counters.opened - applied.opened
                progress.retries += counters.retries - applied.retries
                progress.errors += counters.errors - applied.errors
                applied = counters
                for h, port in items:
                    await emit(OpenPort(
                        scan_id=shard.scan_id,
                        target=targets[h],
                        port=port,
                        proto=Proto.TCP,
                        engine=self.name,
                        reason="syn-ack",
                    ))
        finally:
            # Consumer stopped, task cancelled, Ctrl-C or normal end: the worker
            # closes every socket itself; stop() wakes its epoll wait at once.
            sweep.stop()
            thread.join(timeout=5.0)
            if thread.is_alive():  # pragma: no cover - would be a bug in _Sweep
                progress.notes.append(f"connect: shard {shard.shard_id}: worker did not stop")
            else:
                self.last_report = sweep.report()
        if failure:
            raise failure[0]
        if self.last_report is not None:
            self._note(shard, self.last_report, progress)
            if self.last_report.stop_reason == "deadline":
                untested = sum(h.untested for h in self.last_report.hosts)
                raise ShardDeadline(
                    f"connect: shard {shard.shard_id} cut short by its {self.deadline:g}s "
                    f"deadline: {untested} of {shard.probe_count} probes not tested")

    def _note(self, shard: Shard, report: SweepReport, progress: Progress) -> None:
        for host in report.hosts:
            if host.is_given_up:
                progress.notes.append(
                    f"connect: {host.ip} unreachable ({_kinds(host)}); gave up after "
                    f"{host.errors} errors, {host.untested} ports not tested"
                )
            elif host.errors:
                progress.notes.append(
                    f"connect: {host.ip}: {host.errors} ports could not be tested "
                    f"({_kinds(host)})"
                )
            if host.filtered:
                progress.notes.append(
                    f"connect: {host.ip}: {host.filtered} ports filtered (no answer to "
                    f"{1 + self.retries} attempts of {self.timeout:g}s)"
                )


def _kinds(host: HostOutcome) -> str:
    return ", ".join(f"{name} x{count}" for name, count in host.error_kinds)


def confirm_open(
    ip: str,
    ports: Iterable[int],
    timeout: float,
    *,
    retries: int = 1,
    concurrency: int = 1000,
    on_report: Callable[[SweepReport], None] | None = None,
) -> set[int]:
    """Connect-check ``ports`` on ``ip``; return those that completed a handshake.

    The confirm pass for raw engines: same sweep machinery as ``ConnectEngine``,
    synchronous and in the calling thread (from async code, run it through
    ``asyncio.to_thread``). A port missing from the result is not open *or* could
    not be tested; pass ``on_report`` to tell the two apart.
    """
    _check_params(concurrency, timeout, retries)
    wanted = list(dict.fromkeys(int(p) for p in ports))
    for port in wanted:
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
    if not wanted:
        return set()
    sink = _Sink()
    sweep = _Sweep(
        [(_family(ip), ip)],
        wanted,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        deadline=None,
        sink=sink,
    )
    sweep.run()
    if on_report is not None:
        on_report(sweep.report())
    return {port for _h, port in sink.found}
