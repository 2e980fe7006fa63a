"""One masscan process, streamed under a deadline, and what it needs prepared.

Owns: ``MasscanRun`` (start masscan in its own process group, stream its
``--interactive`` discoveries, parse its status, SIGKILL the group at the deadline,
after the end wait or once every probe answered, always reap it), the per-pass
timing rules (``end_wait``, ``pass_deadline``), masscan's ``-p`` syntax
(``port_spec``) and the rewrite of nmap's payload file into what masscan 1.3.2
reads (``prepare_nmap_payloads``). Why a runner of our own: masscan.py's docstring
and NOTES.md. Must not touch: routes (masscan_path.py), the engine's pass planning,
Kafka, storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probers.discovery.base import EngineUnavailable
from schemas.records import PortRange, Proto

DEFAULT_NMAP_PAYLOADS = "/usr/share/nmap/nmap-payloads"
# UDP ports for which masscan 1.3.2 has its own payload *and* a reply parser that
# checks a cookie in it (proto-udp.c: DNS, NTP, NetBIOS, SNMP, CoAP, memcached,
# ZeroAccess). An nmap payload for these ports replaces masscan's cookie-carrying
# one and every reply is then discarded (checked: DNS on 53 is never reported with
# the stock nmap-payloads), so they are left out of the payload file we hand over.
MASSCAN_COOKIE_UDP_PORTS = frozenset({53, 123, 137, 161, 5683, 11211, 16464, 16465, 16470, 16471})
STARTUP_SECONDS = 3.0  # masscan's own start (pcap open, ARP) before the first probe
KILL_GRACE = 0.5  # after the end wait, before SIGKILL
DEADLINE_MARGIN = 5.0
# A masscan whose parent dies without reaping it (kill -9, the OOM killer) would go on
# sending: 1.3.2 often does not exit after 100 %, and nothing would stop it. util-linux's
# setpriv asks the kernel to SIGKILL it when the thread that started it dies
# (PR_SET_PDEATHSIG, kept across exec); a preexec_fn would do it in Python between fork
# and exec, which is unsafe in a process with threads (ours has the store's and the web's).
SETPRIV = "/usr/bin/setpriv"
_DISCOVERED = re.compile(rb"Discovered open port (\d{1,5})/(tcp|udp) on ([0-9A-Fa-f:.]{2,45})")
_STATUS = re.compile(rb"(\d{1,3}(?:\.\d+)?)% done")


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
            # with what masscan said went wrong, if it did ("[-] CONF: bad MAC address",
            # then it idles: only "deadline" was said, twice: a review)
            said = [line for line in self.stderr_tail if line.startswith("[-]")][-2:]
            return (f"masscan did not finish within its deadline ({self.percent_done:.1f}% "
                    f"done after {self.elapsed:.1f}s)"
                    + (": " + " | ".join(said) if said else ""))
        if self.killed == "cancelled":
            return "masscan run cancelled"
        rc = self.returncode
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with {rc}"
        return f"masscan {how} at {self.percent_done:.1f}% done{': ' + tail if tail else ''}"


def dies_with_us(argv: Sequence[str]) -> list[str]:
    """``argv`` run under setpriv so the kernel kills it when we die (see ``SETPRIV``).
    Unchanged where setpriv is missing or the program cannot be found: then the start
    fails (or runs) exactly as without the guard, and "masscan could not start" keeps
    its reason."""
    argv = list(argv)
    if not argv or not os.access(SETPRIV, os.X_OK) or shutil.which(argv[0]) is None:
        return argv
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv]


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
        on_percent: Callable[[float], None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.deadline = deadline
        self.wait = wait
        self.all_answered = all_answered
        # told each new "% done" masscan reports (the scan's progress moves with it: it
        # read 0 % for a whole pass, then jumped: a review)
        self.on_percent = on_percent
        self._reaper: asyncio.Future[int] | None = None
        self.outcome = RunOutcome()
        self.pid: int | None = None
        self._done_at: float | None = None

    async def stream(self) -> AsyncGenerator[Discovery, None]:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *dies_with_us(self.argv),
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
                try:
                    line = read.result()
                except ValueError:  # a line past the reader's 64 KiB: dropped, not fatal
                    continue
                if not line:
                    break
                m = _DISCOVERED.search(line)
                if m and 0 < int(m.group(1)) <= 65535:  # a broken masscan's 70000 is none
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
                    pct = min(float(m.group(1)), 100.0)
                    if pct > self.outcome.percent_done and self.on_percent is not None:
                        self.on_percent(pct)
                    self.outcome.percent_done = max(self.outcome.percent_done, pct)
                    if pct >= 100.0 and self._done_at is None:
                        self._done_at = time.monotonic()
                    continue
                self.outcome.stderr_tail.append(text.decode(errors="replace")[:300])
                del self.outcome.stderr_tail[:-10]


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


# The fastest rate a pass's deadline assumes masscan reaches. A --rate above what the
# machine or link can send (10,000,000 asked, ~60,000 sent to 16 veth hosts) sized a
# deadline every pass overran at 80-90 % done: the shard failed on every attempt (a
# review). The discovery bench reached 175-300k packets/s on a veth (BENCHMARKS.md).
PLANNED_RATE_CAP = 50_000


def pass_deadline(probes: int, rate: int, wait: float) -> float:
    """Seconds one pass may take: send time (+50% for masscan's rate ramp) at ``rate``,
    or at ``PLANNED_RATE_CAP`` when faster, start, wait, margin."""
    planned = min(rate, PLANNED_RATE_CAP)
    return STARTUP_SECONDS + 1.5 * probes / planned + wait + KILL_GRACE + DEADLINE_MARGIN


__all__ = [
    "DEFAULT_NMAP_PAYLOADS",
    "Discovery",
    "MasscanRun",
    "RunOutcome",
    "end_wait",
    "pass_deadline",
    "port_spec",
    "prepare_nmap_payloads",
]
