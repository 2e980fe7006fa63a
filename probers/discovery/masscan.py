"""masscan discovery engine: raw SYN (and UDP) sweeps driven by a runner of our own.

Owns: ``MasscanEngine`` (the ``DiscoveryEngine`` backed by the masscan binary): pass
planning, answer taps, the connect confirm pass. Split by concern beside it:
``masscan_path.py`` (adapter / source / next hop per target, privilege checks),
``masscan_run.py`` (one masscan process streamed under a deadline). The choice
among engines (``--engine auto``) is ``engines.py``.

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
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probers.discovery.base import DiscoveryError, Emit, Progress, ShardDeadline, stream_work
from probers.discovery.connect import SweepReport, confirm_open
from probers.discovery.masscan_path import DEFAULT_BINARY, MasscanPath, find_binary, resolve_path
from probers.discovery.masscan_run import (
    DEFAULT_NMAP_PAYLOADS,
    Discovery,
    MasscanRun,
    end_wait,
    pass_deadline,
    port_spec,
    prepare_nmap_payloads,
)
from probers.discovery.tap import AnswerTap, compact, ring_size
from schemas.records import OpenPort, PortRange, PortState, Proto, Shard, Target

# Port ranges per masscan command line on a retry pass (one -p argument stays far
# below Linux's 128 KiB limit for a single argv string).
MAX_RANGES_PER_RUN = 4000


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

    def scan(self, shard: Shard, progress: Progress) -> AsyncIterator[OpenPort]:
        return stream_work(lambda emit: self._work(shard, progress, emit),
                           what="masscan engine")

    async def _work(self, shard: Shard, progress: Progress, emit: Emit[OpenPort]) -> None:
        """The masscan passes feed raw discoveries to the confirm pass, which emits."""
        binary = find_binary(self.binary)
        groups = await asyncio.to_thread(self.check_usable, shard.targets)
        by_ip = {t.ip: t for t in shard.targets}
        n_ports = shard.port_count
        progress.add_total(shard.probe_count)
        down = [t.ip for path, targets in groups.items() if path.unreachable for t in targets]
        if down:  # no ARP answer: nothing to send them (masscan would wait for one forever)
            groups = {p: ts for p, ts in groups.items() if not p.unreachable}
            progress.probes_done += n_ports * len(down)
            progress.notes.append(
                f"masscan: {len(down)} host(s) not probed: they, or the gateway to them, "
                f"answered no ARP request (down), e.g. {down[0]}")
            if not groups:
                return
        plan = []
        for path, targets in groups.items():
            probes = n_ports * len(targets)
            wait = self.wait if self.wait is not None else end_wait(probes, self.rate)
            plan.append((path, targets, wait, pass_deadline(probes, self.rate, wait)))
        total_deadline = self.deadline or sum(p[3] for p in plan) * self.passes
        started = time.monotonic()
        raw_q: asyncio.Queue[Discovery | None] = asyncio.Queue()
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
                    raise ShardDeadline(
                        f"masscan: shard deadline {total_deadline:.0f}s reached "
                        f"before pass {pass_no + 1}/{self.passes}"
                    )
                base_done = progress.probes_done

                def sent(percent: float) -> None:
                    progress.probes_done = base_done + int(probes * percent / 100)

                run = MasscanRun(
                    argv, deadline=min(per_pass, remaining), wait=wait,
                    all_answered=tap.expect(expect) if tap is not None and expect else None,
                    on_percent=sent,
                )
                runs.append(run)
                self.current_run = run
                async for d in run.stream():
                    if tap is not None:
                        tap.mark(d.ip, d.port)
                    offer(d)
                out = run.outcome
                # what masscan said it sent: a run that died at 50 % is not "done"
                progress.probes_done = base_done + (probes if out.is_complete else int(
                    probes * min(out.percent_done, 100.0) / 100))
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
                finally:
                    self.current_run = None
                    await raw_q.put(None)  # the confirm pass drains what came, then ends

            async def confirmed(port: OpenPort) -> None:
                progress.open_found += 1
                await emit(port)

            # A failed pass raises only after the confirm pass emitted what it found.
            producer = asyncio.create_task(produce())
            try:
                await self._confirm_loop(shard, by_ip, raw_q, confirmed, stats, seen)
            finally:
                if not producer.done():
                    producer.cancel()
                (outcome,) = await asyncio.gather(producer, return_exceptions=True)
                for run in runs:
                    await run.reap()
                stats.note(progress)
            if isinstance(outcome, BaseException) and not isinstance(
                    outcome, asyncio.CancelledError):
                raise outcome

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
        emit: Callable[[OpenPort], Awaitable[None]],
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
                await self._confirm(shard, by_ip[ip], ports, emit, stats, seen, failed,
                                    self.confirm_timeout)
        for ip, missed in failed.items():
            if missed:
                await self._confirm(shard, by_ip[ip], sorted(missed), emit, stats, seen, {},
                                    2 * self.confirm_timeout)

    async def _confirm(
        self,
        shard: Shard,
        target: Target,
        ports: list[int],
        emit: Callable[[OpenPort], Awaitable[None]],
        stats: _ConfirmStats,
        seen: set[tuple[str, Proto, int]],
        failed: dict[str, set[int]],
        timeout: float,
    ) -> None:
        ip = target.ip
        if shard.proto is Proto.UDP or not self.confirm:
            reason = "udp-response" if shard.proto is Proto.UDP else "syn-ack"
            for port in ports:
                await emit(self._open(shard, target, port, reason))
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
                await emit(self._open(shard, target, port, "syn-ack+connect"))
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


__all__ = ["MAX_RANGES_PER_RUN", "MasscanEngine"]
