"""``portwatch scan``: the embedded shape from the command line.

Owns: the scan command's flags and help, the progress view (a live bar on a
terminal, a plain line every 5 s otherwise) and the end-of-scan screen. Everything
is built by the composition root (``portwatch.assembly``) and run by the embedded
transport; bad input fails with one line and exit 2 before anything is sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from portwatch.console import (
    ALERTS_EMPTY,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    STORE_OPTION,
    PortwatchError,
    err_console,
    out_console,
    printable,
    refuse_empty,
    say,
    settings_from,
    target_options,
)
from probers.discovery.engines import TCP_CHOICES

END_SCREEN_HOSTS = 20  # rows of the end-of-scan Summary


END_SCREEN_PAGE = 2_000  # Summary rows read at a time when looking for a scan's riskiest


def _host_of(row: dict[str, Any]) -> tuple[str, str]:
    """A Summary row's host: its (target, ip), the report's key (one address can be
    stored under two targets, an earlier scan having named it differently)."""
    return (str(row["target"]), str(row["ip"]))


def _riskiest_of(db: Any, hosts: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """This scan's hosts, its (target, ip) pairs, among the store's Summary, read riskiest
    first a page at a time until ``END_SCREEN_HOSTS`` of them are found and a page ends
    no higher than the lowest of them; a large store is read no further than the scan's
    riskiest need. Among hosts tied at that score, the Summary's own order decides (a
    65,536-host scan whose hosts all scored 0 read the whole Summary, 33 pages, to keep
    every tie: a review)."""
    found: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = db.report("summary", {}, limit=END_SCREEN_PAGE, offset=offset).dicts()
        found += [row for row in page if _host_of(row) in hosts]
        offset += len(page)
        if len(page) < END_SCREEN_PAGE or len(found) >= len(hosts):
            return found
        if len(found) >= END_SCREEN_HOSTS:
            floor = sorted(float(r["risk_score"] or 0) for r in found)[-END_SCREEN_HOSTS]
            if float(page[-1]["risk_score"] or 0) <= floor:
                return found


def _riskiest_first(row: dict[str, Any]) -> tuple[float, int, int, str]:
    """Risk score descending, then address in numeric order (127.0.0.2 before
    127.0.0.10; IPv4 before IPv6), then target (one address under two names)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(str(row["ip"]))
    except ValueError:
        return (-float(row["risk_score"] or 0), 9, 0, str(row["target"]))
    return (-float(row["risk_score"] or 0), address.version, int(address), str(row["target"]))


@click.command()
@target_options
@STORE_OPTION
@click.option("-e", "--engine", type=click.Choice(TCP_CHOICES), default=None,
              help="TCP discovery: masscan (raw SYN, needs root or CAP_NET_RAW and an "
                   "Ethernet path; portwatch counts the answers and re-sends only silent "
                   "ports), connect (works everywhere, loopback included), auto (default: "
                   "masscan when it can run and be counted, else connect, and says why).")
@click.option("--rate", type=int, default=None,
              help="masscan packets per second (default 10,000).")
@click.option("--udp-rate", type=float, default=None,
              help="UDP datagrams per second (default 500: under Linux's ICMP rate limit).")
@click.option("-c", "--concurrency", type=int, default=None,
              help="Sockets in flight for connect discovery (default 2000, capped by the fd "
                   "limit).")
@click.option("-t", "--timeout", type=float, default=None,
              help="Connect engine: seconds to wait for a TCP port to answer before "
              "retrying it (default 1.0; UDP waits PORTWATCH_UDP_TIMEOUT).")
@click.option("--retries", type=int, default=None,
              help="Connect engine: retries for TCP ports that timed out (1).")
@click.option("--banner-wait", type=float, default=None,
              help="Seconds to wait for a service to speak first (default 2.0); a silent "
              "port that stays open is listened to 3x as long in all.")
@click.option("--tarpit-threshold", type=int, default=None,
              help="Open ports per host beyond which it 'answers on every port' (1000).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Record progress in FILE after every shard (a block of hosts and ports: "
                   "a small scan is one); run the same command with the same FILE to resume "
                   "an interrupted scan from its last completed shard.")
@click.option("--seed", type=int, default=None,
              help="Seed of the pseudo-random shard and port order (default: random).")
@click.option("--tls/--no-tls", "tls", default=None,
              help="Enumerate TLS versions, cipher suites and certificates on TLS ports "
                   "(default: on).")
@click.option("--nmap-probes/--no-nmap-probes", "nmap_probes", default=None,
              help="Fall back to nmap's service probes from nmap-common (default: on).")
@click.option("--alerts", "alerts_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False), callback=refuse_empty(ALERTS_EMPTY),
              help="Alert rules and channels (alerts.yaml, PORTWATCH_ALERTS): what this scan "
                   "changed is delivered before it exits (bounded wait; the rest is kept and "
                   "sent by the next run).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no end screen.")
def scan(targets: Sequence[str], ports: str | None, organization: str, asset: str,
         only_organization: str,
         inventory: Sequence[str], exclude: Sequence[str], exclude_file: Sequence[str],
         allow_large: bool, store: str | None, udp: str | None, engine: str | None,
         rate: int | None, udp_rate: float | None, concurrency: int | None,
         timeout: float | None, retries: int | None, banner_wait: float | None,
         tarpit_threshold: int | None, checkpoint: str | None, seed: int | None,
         tls: bool | None, nmap_probes: bool | None, alerts_file: str | None,
         quiet: bool) -> None:
    """Scan TARGET... (addresses, CIDR blocks, ranges like 10.0.0.1-20, hostnames;
    "-" reads targets from standard input, one per line).

    Finds every open TCP port and the top 1,000 UDP ports, identifies the service,
    product and version, enumerates TLS, colours each port by risk, and stores the
    findings; then shows a summary. A rescan updates "last seen" and keeps "first
    detected". Every setting (`portwatch settings`) can also come from its
    PORTWATCH_* environment variable.

    \b
    Examples:
      portwatch scan 127.0.0.1
      portwatch scan --ports 1-1024 --org "Example Corp" 127.0.0.1 ::1
      portwatch scan --inventory assets.yaml --exclude 127.0.0.2
      portwatch scan --checkpoint nightly.json 127.0.0.0/24   # rerun to resume
    """
    from portwatch.assembly import Assembly
    from portwatch.console import ensure_open_files

    ensure_open_files()
    settings = settings_from(
        ports=ports, concurrency=concurrency, timeout=timeout, retries=retries,
        banner_wait=banner_wait, tarpit_threshold=tarpit_threshold, store=store, tls=tls,
        nmap_probes=nmap_probes, udp=udp, engine=engine, rate=rate, udp_rate=udp_rate,
        alerts=alerts_file)
    assembly = Assembly(settings)
    work = assembly.scan_input(targets, organization=organization, asset=asset,
                               inventory=inventory, exclude=exclude, exclude_file=exclude_file,
                               allow_large=allow_large, only_organization=only_organization)
    assembly.store_location()  # a bad URL is refused before anything is sent or written
    plan, start = assembly.scan_plan(work, checkpoint_path=checkpoint, seed=seed,
                                     default_seed=random.randrange(2**31))
    alerts = assembly.alert_config()  # a bad rules file is refused before anything scans
    # Refused before the store is opened, not after (a refused scan left an empty store
    # at --store, which a later report on that path read as "nothing found": a review):
    # an engine that cannot scan these targets, and a checkpoint that passed shards
    # when no store exists there to hold them
    decided = _engine_for(assembly, plan)
    db = _open_for(assembly, plan, start, checkpoint)
    try:
        if alerts is not None:
            from portwatch.alerts.cli import warn_unknown_organizations

            warn_unknown_organizations(alerts, work.targets, db)
        stats = asyncio.run(run_plan(assembly, db, plan, start, checkpoint=checkpoint,
                                     quiet=quiet, scope=work.scope, engine=decided))
        if not quiet:
            _end_screen(db, stats, work.targets)
        if alerts is not None:
            from portwatch.alerts.cli import report_drain
            from portwatch.alerts.dispatcher import AlertQueueError, alert_after_scan

            try:
                report_drain(alert_after_scan(db, alerts, stats.change_events))
            except AlertQueueError as exc:
                raise PortwatchError(f"{exc}; the scan and its changes are stored (portwatch "
                                     "report changes), not alerted") from exc
    finally:
        db.close()
    raise_for_outcome(stats, checkpoint)


def _engine_for(assembly: Any, plan: Any) -> tuple[str, str]:
    """(engine, note) for the plan's TCP targets; EngineUnavailable (exit 2) when the
    engine asked for cannot scan them."""
    tcp = any(p.proto.value == "tcp" for p in plan.plans)
    return assembly.decide_engine(plan.plans[0].targets) if tcp else ("", "")


def _open_for(assembly: Any, plan: Any, start: Any, checkpoint: str | None) -> Any:
    """The store; only one that exists when the checkpoint passed shards (they were
    stored there: CheckpointError, exit 2, names where it looked)."""
    from producers.shards import CheckpointError
    from stream_processors.store import StoreMissing

    resuming = any(start.index(p.proto) > 0 for p in plan.plans)
    try:
        return assembly.open_store(create=not resuming)
    except StoreMissing as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} resumes scan {plan.scan_id}, but there is no store at "
            f"{exc.where}: the shards it passed were stored elsewhere; remove the checkpoint "
            "to scan from the start, or resume into the store it began in") from None


def raise_for_outcome(stats: Any, checkpoint: str | None) -> None:
    """The scan's exit: 130 when interrupted, 1 when a shard's discovery failed (what
    it found is kept, the rest of it was not scanned: "done" would be a lie), else 0."""
    if stats.interrupted:
        resumable = ""
        if checkpoint and not Path(checkpoint).exists():
            # a small scan is one shard: nothing was passed, so nothing resumes (the rerun
            # started over without a word: a review)
            resumable = (f"; no shard had completed, so {checkpoint} holds nothing to "
                         "resume: the same command scans from the start")
        if getattr(stats, "scanned_whole", False):
            # every port was scanned and the hosts compared: only names are missing (it
            # said "interrupted" beside hosts stored completed, whose changes counted: a
            # review)
            raise PortwatchError(
                f"scan interrupted during identification: every port was scanned and "
                f"compared; {stats.cut_short} open port(s) left unnamed (not judged "
                f"until a scan names them: the same command scans again); "
                f"{stats.stored} findings kept",
                EXIT_INTERRUPTED)
        raise PortwatchError(f"scan interrupted: {stats.stored} findings kept{resumable}",
                             EXIT_INTERRUPTED)
    if stats.failed_shards:
        raise PortwatchError(
            f"scan incomplete: discovery failed on {stats.failed_shards} shard(s) "
            f"({stats.errors[0] if stats.errors else 'engine error'}); {stats.stored} "
            "findings kept; run it again" + (" with the same --checkpoint to scan only "
                                             "what is left" if checkpoint else ""),
            EXIT_RUNTIME)


async def run_plan(assembly: Any, db: Any, plan: Any, start: Any, *,
                   checkpoint: str | None = None, quiet: bool = False,
                   scope: Any = None, signals: list[int] | None = None,
                   engine: tuple[str, str] | None = None,
                   say_interrupts: bool = False) -> Any:
    """Run a scan plan through the embedded transport with the progress view and
    Ctrl-C handling of ``portwatch scan`` (also what ``watch`` runs). The signal that
    asked the run to stop, if one did, is appended to ``signals``, also when the run
    then raised (the watcher must still stop). ``say_interrupts``: what a Ctrl-C does is
    said even when ``quiet`` (watch -q: a watcher silent for the scan's identification
    after a Ctrl-C was pressed again, which stored the ports unidentified: a review)."""
    from stream_processors.transports.embedded import install_interrupt

    engine_name, note = engine if engine is not None else _engine_for(assembly, plan)
    if note and not quiet:
        say(note)
    runner = assembly.embedded_runner(db, engine=engine_name or None,
                                      say=None if quiet else say, scope=scope)
    view = ProgressView(enabled=not quiet)
    undo = install_interrupt(runner, say if say_interrupts or not quiet else None)
    try:
        with view:
            return await runner.run(plan, start=start, checkpoint_path=checkpoint,
                                    on_stats=view.update)
    finally:
        undo()
        if signals is not None and runner.stop_signal:
            signals.append(runner.stop_signal)


PROGRESS_BAR = 20  # the live bar's bar, in columns


# The live bar's tiers, richest first, by the names of their parts; ``progress_tier``
# picks the richest whose text fits. Past discovery (identifying, stopped, done) the bar
# has no rate and no time left.
RUNNING_TIERS = (("phase", "bar", "share", "ports", "found", "rate", "eta", "left"),
                 ("phase", "share", "ports", "found", "eta", "left"),
                 ("phase", "share", "of", "open", "left"),
                 ("phase", "share", "open"),
                 ("share", "open"),
                 ("open",))
STOPPED_TIERS = (("phase", "share", "ports", "found"),
                 ("phase", "share", "of", "open"),
                 ("phase", "share", "open"),
                 ("share", "open"),
                 ("open",))


def progress_texts(*, phase: str, done: int, total: int, found: int, examined: int,
                   rate: float, remaining: float | None) -> dict[str, str]:
    """Each part of the live bar as its rich column prints it."""
    if remaining is None:
        left = "-:--:--"
    else:  # as rich's TimeRemainingColumn prints it
        minutes, seconds = divmod(int(remaining), 60)
        left = f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    return {"phase": phase, "bar": "x" * PROGRESS_BAR,
            "share": f"{100 * min(done, total) / max(total, 1):>3.0f}%",
            "ports": f"{done:,}/{total:,} ports", "of": f"{done:,}/{total:,}",
            "found": f"{found} open, {examined:,} examined", "open": f"{found} open",
            "rate": f"{rate:,.0f} ports/s", "eta": "ETA", "left": left}


def progress_tier(width: int, tiers: tuple[tuple[str, ...], ...],
                  texts: dict[str, str]) -> int:
    """The richest of ``tiers`` whose parts (``texts``), one space apart, fit ``width``
    (the last when none does)."""
    for tier, parts in enumerate(tiers):
        if sum(len(texts[p]) for p in parts) + len(parts) - 1 < width:
            return tier
    return len(tiers) - 1


class ProgressView:
    """A live bar on a terminal (its parts as the width allows); a plain line every 5 s
    otherwise (CI logs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.is_live = enabled and err_console.is_terminal
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._parts: dict[str, Any] = {}

    def __enter__(self) -> ProgressView:
        if self.is_live:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            # every part was cut with an ellipsis at 80 columns ("identifyi… 10… 101/101
            # por…"); fixed widths still cut ten-digit counts: each frame shows the
            # richest tier whose text fits (``update``)
            self._parts = {
                "phase": TextColumn("[bold]{task.fields[phase]}"),
                "bar": BarColumn(bar_width=PROGRESS_BAR), "share": TaskProgressColumn(),
                "ports": TextColumn("{task.completed:,.0f}/{task.total:,.0f} ports"),
                "of": TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                "found": TextColumn("[bold]{task.fields[open]}[/] open, "
                                    "{task.fields[examined]:,} examined"),
                "open": TextColumn("[bold]{task.fields[open]}[/] open"),
                "rate": TextColumn("{task.fields[rate]:,.0f} ports/s"),
                "eta": TextColumn("ETA"), "left": TimeRemainingColumn()}
            columns = (self._parts["phase"],)  # no count before the first update's
            self._bar = Progress(*columns, console=err_console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("scan", total=1, open=0, rate=0.0,
                                            phase="scanning", examined=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _columns(self, tiers: tuple[tuple[str, ...], ...], texts: dict[str, str]
                 ) -> tuple[Any, ...]:
        """The rich columns of the richest of ``tiers`` that fits the terminal."""
        # (one column to spare: rich's estimate of the time left moves between frames)
        tier = progress_tier(err_console.width - 1, tiers, texts)
        return tuple(self._parts[name] for name in tiers[tier])

    def update(self, stats: Any) -> None:
        if not self.enabled:
            return
        elapsed = max(stats.elapsed, 1e-6)
        rate = stats.probes_done / elapsed
        total = max(stats.probes_total, 1)
        # discovery is over; what is left is identification, not "ETA 0s"
        identifying = (stats.probes_done >= total and stats.examined < stats.open_found
                       and not stats.finished)
        stopped = bool(getattr(stats, "stopping", False))
        stopping = stopped and not stats.finished
        if self._bar is not None:
            # (the bar said "scanning 100% ... ETA 0:00:00" for a minute of identifying;
            # once stopped, its tiers have no rate and no ETA for what is not scanned:
            # an update with no total kept rich's, and its ETA, a review)
            phase = ("stopping" if stopping else "stopped" if stopped else
                     "identifying" if identifying else
                     "done" if stats.finished else "scanning")
            self._bar.update(self._task, total=total, completed=stats.probes_done,
                             open=stats.open_found, rate=0.0 if stopped else rate,
                             examined=stats.examined, phase=phase)
            task = self._bar.tasks[0]
            # identifying or done, as stopped: no rate falling, no "ETA 0:00:00" (a
            # review)
            discovering = not (stopped or identifying or stats.finished)
            self._bar.columns = self._columns(
                RUNNING_TIERS if discovering else STOPPED_TIERS, progress_texts(
                    phase=phase, done=stats.probes_done, total=total,
                    found=stats.open_found, examined=stats.examined, rate=rate,
                    remaining=task.time_remaining))
            return
        now = time.monotonic()
        if now - self._last_line >= 5 or stats.finished:
            self._last_line = now
            # no rate yet (the first line): the ETA is unknown, not "0s"
            eta = f"{(total - stats.probes_done) / rate:.0f}s" if rate > 0 else "unknown"
            if stopped:
                # discovery has stopped: a rate falling and an ETA growing for a scan
                # that is no longer scanning misled (a review)
                err_console.print(
                    f"progress: {'stopping' if stopping else 'stopped'}: "
                    f"{stats.probes_done:,}/{total:,} ports scanned "
                    f"({100 * stats.probes_done / total:.0f}%), {stats.open_found} open, "
                    f"{stats.examined:,} examined", markup=False)
                return
            if identifying:
                err_console.print(
                    f"progress: ports scanned; identifying: {stats.examined:,}/"
                    f"{stats.open_found:,} open ports done", markup=False)
                return
            err_console.print(
                f"progress: {stats.probes_done:,}/{total:,} ports "
                f"({100 * stats.probes_done / total:.0f}%), {stats.open_found} open, "
                f"{rate:,.0f} ports/s, ETA {eta}", markup=False)


def changes_line(events: Sequence[Any]) -> str:
    """The end screen's line about a scan's change events. A host's first scan has no
    previous one: its ports are "opened" against none (it said "since the previous scan"
    of them: a review)."""
    urgent = sum(e.severity.value in ("high", "critical") for e in events)
    first = sum(not e.previous_scan_id for e in events)
    since = ("(all on hosts scanned for the first time)" if first == len(events) else
             f"since the previous scan ({first} on hosts scanned for the first time)"
             if first else "since the previous scan")
    return f"changes: {len(events)} {since}, {urgent} high or critical: portwatch report changes"


def _end_screen(db: Any, stats: Any, targets: Any) -> None:
    from portwatch.tables import print_end_screen

    out = out_console()
    state = ("interrupted during identification"
             if stats.interrupted and getattr(stats, "scanned_whole", False) else
             "interrupted" if stats.interrupted else
             "incomplete" if stats.failed_shards else "done")
    out.print(Text(
        f"scan {stats.scan_id} {state} in {stats.elapsed:.1f}s: {stats.hosts:,} host(s), "
        f"{min(stats.probes_done, stats.planned_probes):,} ports scanned"
        + (f" ({stats.probes_done:,} probes)" if stats.probes_done > stats.planned_probes else "")
        + f", {stats.open_found} open, "
        f"{stats.identified} identified, {stats.stored} findings stored", style="bold"))
    if stats.stop_signal and not stats.interrupted:
        # the stop came once every shard was discovered, and identification ended
        out.print(Text("the stop asked for came after every port was scanned: nothing "
                       "was cut short, the scan is complete"))
    if stats.resumed_shards:
        out.print(Text(f"resumed: {stats.resumed_shards} shard(s) were done before"))
    if stats.finished_hosts:
        out.print(Text(f"left out: {stats.finished_hosts:,} host(s) an earlier run of this "
                       "scan completed (their changes are recorded)"))
    if stats.overtaken_hosts:
        out.print(Text(f"left out: {stats.overtaken_hosts:,} host(s) another scan completed "
                       "since this one began (their ports now are that scan's)"))
    if stats.change_events:  # what this scan changed (`portwatch report changes`)
        out.print(Text(changes_line(stats.change_events)))
    for note in [*stats.notes, *stats.errors]:
        out.print(Text(f"note: {printable(note)}"))  # notes quote what the network said
    for ip in stats.tarpits:
        # (as the scan note says: the other ports are not tried, so nothing of them is
        # "identified": the old words read as if they had been, a review)
        out.print(Text(f"note: {ip} answers on (nearly) every port scanned; only its "
                       "well-known ports were identified, and the services named there kept",
                       style="yellow"))
    # One table of this scan's hosts (portwatch/tables.py), riskiest first; past
    # END_SCREEN_HOSTS, the riskiest of them (never hosts of other scans in the store).
    # A host is a (target, ip) pair: the store may hold this scan's address under another
    # target too (an earlier scan named it differently), a row of another scan.
    hosts = {(t.target, t.ip) for t in targets}
    if len(hosts) <= END_SCREEN_HOSTS:  # a query each: a large store is never read whole
        rows = [row for ip in sorted({ip for _target, ip in hosts})
                for row in db.report("summary", {"target": ip}).dicts()
                if _host_of(row) in hosts]
    else:
        rows = _riskiest_of(db, hosts)
    rows.sort(key=_riskiest_first)
    # (the scan's hosts decide: the search may stop with exactly 20 of more)
    title = ("Summary" if len(hosts) <= END_SCREEN_HOSTS else
             f"Summary (the {END_SCREEN_HOSTS} riskiest of this scan's {len(hosts):,} hosts; "
             "portwatch report summary lists all)")
    print_end_screen(out, rows[:END_SCREEN_HOSTS], title)


__all__ = ["END_SCREEN_HOSTS", "ProgressView", "scan"]
