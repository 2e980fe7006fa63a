"""Commands of watching and alerting: ``watch``, ``alerts log|test|deliver``, ``accept``.

Owns: their flags, their one-line errors (exit 2 for a bad file or argument, before
anything scans or sends) and their output. The work is done by ``schedule``,
``watch``, ``dispatcher`` and ``accepted``; heavy imports stay inside the commands.

Must not touch: the scan internals (``portwatch.alerts.scanning`` is the one call).
Listed in ``portwatch.cli``'s COMMANDS.

Why one file: the commands share their checks of the alert and schedule files, the
signal handling of a watch and its last delivery, and the lines they print (warnings,
delivery summaries); split, each command would import the others' helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from types import SimpleNamespace
from typing import Any

import click
from rich.text import Text

from portwatch.console import (
    ALERTS_EMPTY,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    STORE_OPTION,
    PortwatchError,
    err_console,
    fail,
    filter_choice,
    out_console,
    printable,
    refuse_empty,
    settings_from,
)
from portwatch.render import sanitize_text
from portwatch.web.cli import beside_serve_options

ALERTS_OPTION = click.option(
    "--alerts", "alerts_file", envvar="PORTWATCH_ALERTS", default=None, metavar="FILE",
    type=click.Path(dir_okay=False), callback=refuse_empty(ALERTS_EMPTY),
    help="Alert rules and channels (alerts.yaml); also PORTWATCH_ALERTS.")


def load_alerts_or_fail(path: str, *, need_rules: bool = True) -> Any:
    from portwatch.alerts.config import AlertConfigError, load_alerts

    try:
        return load_alerts(path, need_rules=need_rules)
    except AlertConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _check_store_url(url: str | None) -> None:
    """A bad store URL is refused (exit 2) before any work."""
    from portwatch.assembly import Assembly

    Assembly(settings_from(store=url)).store_location()


def _store(url: str | None, *, create: bool = True) -> Any:
    """The store; ``create=False`` for commands that only read or withdraw: a mistyped
    path is refused (StoreMissing, exit 2) instead of becoming an empty store."""
    from portwatch.assembly import Assembly

    return Assembly(settings_from(store=url)).open_store(create=create)


def _say(line: str) -> None:
    err_console.print(f"portwatch: {line}", markup=False)


def warn_unknown_organizations(config: Any, targets: Any, db: Any) -> None:
    """Say each organization a rule names that neither this run's targets nor any host in
    the store carries: that rule would wait in silence for an organization that never
    comes (a misspelling, most often). A warning: the next inventory may bring it."""
    from portwatch.alerts.rules import unknown_organizations

    if config is None or not any(r.match.organizations for r in config.rules):
        return
    stored = [str(o) for (o,) in db.query(
        "SELECT DISTINCT organization FROM latest_host_scans")]
    known = sorted(({t.organization.strip() for t in targets} | {o.strip() for o in stored})
                   - {""}, key=str.lower)
    for rule, org in unknown_organizations(config, known):
        some = ", ".join(repr(k) for k in known[:5]) + (", ..." if len(known) > 5 else "")
        _say(printable(f"warning: alert rule {rule!r} names organization {org!r}, which no "
                       "target of this run and no host in the store has: it matches "
                       "nothing until one does (organizations known: "
                       f"{some or 'none'})"))


def warn_conflicting_labels(prepared: Any) -> None:
    """Say each address two schedule entries scan under the same target with different
    labels (organization, asset): each entry's scan relabels the host, so the reports
    and an organization's rules follow whichever ran last (a review: an inventory entry's
    organization vanished after a plain entry of the same address ran)."""
    labels: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    for name, scan in prepared.items():
        for t in scan.targets:
            labels.setdefault((t.target, t.ip), {}).setdefault(
                (t.organization, t.asset), name)
    clashes = [(key, seen) for key, seen in labels.items() if len(seen) > 1]
    for (target, ip), seen in clashes[:3]:
        named = "; ".join(f"{entry}: organization {org or '(none)'!r}, asset "
                          f"{asset or '(none)'!r}" for (org, asset), entry in seen.items())
        where = target if target == ip else f"{target} ({ip})"
        _say(printable(f"warning: schedule entries label {where} differently ({named}): "
                       "each run relabels it, so the reports and organization rules follow "
                       "the entry that ran last"))
    if len(clashes) > 3:
        _say(f"warning: {len(clashes) - 3} more address(es) labelled differently by "
             "schedule entries")


# -- watch ------------------------------------------------------------------------------


@click.command()
@click.option("--schedule", "schedule_file", required=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Schedule entries: name, cron, targets or inventory, organization, "
                   "asset, ports, udp, exclude, allow_large.")
@click.option("--once", is_flag=True,
              help="Run what is due, deliver alerts (bounded wait), exit: for cron/CronJob.")
@click.option("--list", "show_list", is_flag=True,
              help="Print each entry's next run and its last (a failed one says so).")
@ALERTS_OPTION
@STORE_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No progress output from the scans.")
@click.option("--serve", "serve_at", default="", metavar="[HOST:]PORT",
              help="Also serve the web reports (as `portwatch serve`) from this process "
                   "while it watches; `portwatch report` on its embedded store then asks "
                   "it (the store allows one process).")
@click.option("--token", envvar="PORTWATCH_WEB_TOKEN", default="", show_envvar=True,
              help="Token the --serve web reports require off loopback.")
@beside_serve_options
def watch(schedule_file: str, once: bool, show_list: bool, alerts_file: str | None,
          store: str | None, quiet: bool, serve_at: str, token: str,
          allowed_host: tuple[str, ...], cookie_secure: bool,
          trusted_proxy: tuple[str, ...]) -> None:
    """Rescan on a schedule and alert on what changed (embedded shape).

    \b
    schedules.yaml:
      schedules:
        - name: hourly-top
          targets: [127.0.0.1]
          ports: top1000          # or 1-65535, 22,80,443
          udp: none               # or top1000
          cron: "0 * * * *"       # UTC
    \b
    Examples:
      portwatch watch --schedule schedules.yaml --alerts alerts.yaml
      portwatch watch --schedule schedules.yaml --once     # from cron or a CronJob
      portwatch watch --schedule schedules.yaml --list
      portwatch watch --schedule schedules.yaml --serve 8765   # and the web reports
    """
    from portwatch.alerts.schedule import ScheduleError, load_schedules

    try:
        entries = load_schedules(schedule_file)
    except ScheduleError as exc:
        fail(str(exc), EXIT_USAGE)
    if once and show_list:
        fail("give --once (run what is due) or --list (show the plan), not both")
    if not show_list:
        from portwatch.console import ensure_open_files

        ensure_open_files()
    listen = _listen_or_fail(serve_at, token, once=once or show_list)
    from portwatch.web.cli import parse_proxy_options

    allowed: list[str] = []
    proxies: frozenset[str] = frozenset()
    if listen is not None:  # (read from the environment too: only --serve uses them)
        try:
            allowed, proxies = parse_proxy_options(allowed_host, trusted_proxy)
        except ValueError as exc:  # BindError included
            fail(str(exc), EXIT_USAGE)
    config = load_alerts_or_fail(alerts_file) if alerts_file else None
    _check_store_url(store)
    # bad targets, inventories or ports: exit 2 here, for --list too
    prepared = {e.name: _prepare(e, store, schedule_file) for e in entries}
    warn_conflicting_labels(prepared)
    if show_list:
        _print_plan(store, entries)
        return
    db = _store(store)

    def prepare(entry: Any) -> Any:
        # Each run reads its targets again: a watcher runs for months, and an inventory
        # edited or a name pointed elsewhere (perhaps outside the scope, which is checked
        # again too) counts from its next run, not from the next restart. The first run
        # takes what was just checked.
        return prepared.pop(entry.name, None) or _prepare(entry, store, schedule_file)

    try:
        warn_unknown_organizations(config, [t for p in prepared.values() for t in p.targets],
                                   db)  # (before the runs take them from `prepared`)
        web = None
        if listen is not None:
            from portwatch.web.cli import web_app

            web = (web_app(db, listen[0], token, allowed_hosts=allowed,
                           cookie_secure=cookie_secure, trusted_proxies=proxies), *listen)
        code = asyncio.run(_watch(db, entries, prepare, config, once=once, quiet=quiet,
                                  web=web, token=token))
    finally:
        db.close()
    if code == EXIT_INTERRUPTED:
        raise PortwatchError("watch interrupted: findings so far are kept", EXIT_INTERRUPTED)
    if code == EXIT_RUNTIME:
        raise PortwatchError("watch: a scheduled scan failed (see above)", EXIT_RUNTIME)


def _listen_or_fail(serve_at: str, token: str, *, once: bool) -> tuple[str, int] | None:
    """Where ``--serve`` listens (None: it was not given); bad input exits 2."""
    if not serve_at:
        return None
    from portwatch.web.cli import BindError, check_bind, parse_listen

    if once:
        fail("--serve is for a running watch: --once and --list end at once", EXIT_USAGE)
    try:
        listen = parse_listen(serve_at)
        check_bind(listen[0], token)
    except (ValueError, BindError) as exc:
        fail(f"--serve: {exc}", EXIT_USAGE)
    return listen


@contextlib.asynccontextmanager
async def _serving(db: Any, web: tuple[Any, str, int] | None, token: str
                   ) -> AsyncIterator[None]:
    """The web reports beside the watcher (``watch --serve``), advertised in an embedded
    store's directory so `portwatch report` asks this process: a watcher holds its
    store for months, and every report was refused "in use" meanwhile (a review,
    2026-12-06)."""
    if web is None:
        yield
        return
    from portwatch.store_holder import advertise
    from portwatch.web import server as web_server
    from portwatch.web.cli import listening_line

    try:
        # on a loop of its own: the watcher's makes blocking store calls
        running = await asyncio.to_thread(web_server.start_in_thread, *web)
    except web_server.ListenError as exc:
        fail(f"--serve: {exc}", EXIT_RUNTIME)
    _say(listening_line(web[1], web[2], token))
    try:
        with contextlib.ExitStack() as advert:
            if db.location.scheme == "chdb":
                advert.enter_context(advertise(db, web[1], web[2], token,
                                               "watch --serve"))
            yield
    finally:
        await asyncio.to_thread(web_server.stop_thread, *running)


def _prepare(entry: Any, store: str | None, schedule_file: str) -> Any:
    from portwatch.alerts.scanning import prepare_scan

    try:
        return prepare_scan(
            {"ports": entry.ports, "udp": entry.udp, "store": store},
            targets=entry.targets, inventory=entry.inventory or None,
            # an entry's organization labels its own targets, and narrows its inventory
            # to that organization (with both, it dropped the entry's targets: a review)
            organization=entry.organization if entry.targets or not entry.inventory else "",
            asset=entry.asset, exclude=entry.exclude,
            only_organization=entry.organization if entry.inventory else "",
            allow_large=entry.allow_large)
    except PortwatchError as exc:
        fail(f"{schedule_file}:{entry.line}: schedule {entry.name!r}: {exc}", exc.code)


def _print_plan(store: str | None, entries: Any) -> None:
    from portwatch.alerts.schedule import last_slots, last_statuses, plan
    from stream_processors.store import StoreMissing

    statuses: dict[str, str] = {}
    try:
        db = _store(store, create=False)
    except StoreMissing as exc:  # nothing has run yet: every entry is due; no store is made
        # said, so a mistyped --store is not read as "nothing ever ran" (a review)
        _say(f"no store at {exc.where} yet: nothing has run, every entry is due "
             "(the first run makes it; a typo in --store?)")
        previous = {}
    else:
        try:
            now = datetime.now(UTC)
            previous, statuses = last_slots(db, now), last_statuses(db, now)
        finally:
            db.close()
    decisions = plan(entries, previous, datetime.now(UTC))
    out = out_console(soft_wrap=True)  # one line per entry: grep it
    for d in decisions:
        last = previous.get(d.entry.name)
        when = "now (due)" if d.is_due else d.next_run.strftime("%Y-%m-%d %H:%M UTC")
        last_text = last.strftime("%Y-%m-%d %H:%M UTC") if last else "never"
        if last and statuses.get(d.entry.name) == "failed":
            last_text += " (failed)"  # (it read as any other run: a review)
        out.print(Text(f"{d.entry.name:24} {d.entry.cron:18} next {when:22} last {last_text}"))


async def _watch(db: Any, entries: Any, prepare: Callable[[Any], Any], config: Any, *,
                 once: bool, quiet: bool, web: tuple[Any, str, int] | None = None,
                 token: str = "") -> int:
    from portwatch.alerts.dispatcher import AlertDispatcher
    from portwatch.alerts.scanning import ScanOutcome, SignalledScanError, run_embedded_scan
    from portwatch.alerts.watch import Watcher

    dispatcher = AlertDispatcher(db, config) if config is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    terminated = []  # SIGTERM between scans: a service manager's ordinary stop
    # when a signal that cut no scan short came, if not while the watcher waited
    when_stopped: list[str] = []

    # A second signal before the last delivery: it is the "interrupt again" that leaves
    # what is queued for the next run (it was taken as the first again, and the watcher
    # sent on for as long as the delivery wait allowed: a review)
    leave_queued = threading.Event()
    taken: list[int] = []  # signals a scan's runner took (the watcher stops after it)

    def is_first_signal() -> bool:
        """No signal stopped the watcher, cut a scan short or ended a delivery yet."""
        return not (stop.is_set() or taken or leave_queued.is_set())

    def say_stopping() -> None:
        # said at once (-q too): an alert send in flight holds the stop up to its timeout
        if dispatcher is not None and is_first_signal():
            _say("watch: stopping after the alert send in flight, if any (interrupt "
                 "again to leave queued alerts for the next run)")

    def stopped_by(sig: signal.Signals) -> None:
        first = is_first_signal()
        if sig is signal.SIGTERM and first:
            terminated.append(sig)  # (after a Ctrl-C, a SIGTERM leaves it 130)
        if not first:
            # a second signal: the first stopped the watcher, or cut a scan short (then
            # it was taken as the first again: a second review)
            leave_queued.set()
        say_stopping()
        stop.set()

    def own_signals() -> None:
        # Between scans Ctrl-C/SIGTERM stops the loop (--once: no further entry starts);
        # during a scan the runner installs its own handlers (stop discovery, keep what
        # was found) and removes them after, so they are put back after every scan. With
        # none, a signal just after a scan (--once) killed the process before the run
        # was recorded, and the next start ran it again (a review).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped_by, sig)

    def drop_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    async def scan(entry: Any) -> Any:
        prepared = await asyncio.to_thread(prepare, entry)
        if stop.is_set():
            # a signal while its targets were read (an inventory, a large block: minutes
            # for a /8): the scan is not started (it ran in full before: a review); the
            # run is recorded interrupted, so the next watcher runs it
            when_stopped.append(f"before {entry.name}'s scan began")
            return ScanOutcome(SimpleNamespace(interrupted=True, scan_id=""), [])
        try:
            outcome = await run_embedded_scan(db, prepared, quiet=quiet)
        except SignalledScanError as exc:
            # the runner took the signal, then the scan raised: recorded failed by the
            # watcher, which stops (the signal was lost before, and the watcher ran on)
            when_stopped.append(f"as {entry.name}'s scan failed")
            stopped_by(signal.Signals(exc.stop_signal))
            raise exc.cause from None
        finally:
            own_signals()
        if outcome.stop_signal and not outcome.is_interrupted:
            # a signal after the scan's last shard, while it was recorded: the runner
            # took it and the scan completed; the watcher stops as for one between scans
            # (it was lost before: a review)
            when_stopped.append(f"as {entry.name}'s scan ended (it completed)")
            stopped_by(signal.Signals(outcome.stop_signal))
        elif outcome.stop_signal:
            say_stopping()  # the scan it cut short said so only without -q
        if outcome.stop_signal:
            taken.append(outcome.stop_signal)
        return outcome

    async def last_delivery(dispatcher: AlertDispatcher) -> None:
        # The last drain (bounded by `delivery: wait` after a signal); a Ctrl-C or
        # SIGTERM during it ends it after the send in flight: the rest stays queued for
        # the next watcher or `portwatch alerts deliver`
        halt = leave_queued

        def halted(sig: signal.Signals) -> None:
            if sig is signal.SIGTERM and is_first_signal():
                # the first stop, by SIGTERM: a clean 0 (after a Ctrl-C it stays 130: a
                # third review)
                terminated.append(sig)
            if not halt.is_set():
                _say("watch: stopping after the alert send in flight; what is left stays "
                     "queued for the next run")
            halt.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, halted, sig)
        if watcher.should_stop:
            # said before it waits: a stalled channel kept a stopping watcher silent for
            # up to `delivery: wait` and the send in flight, as if hung (a review)
            queued = await asyncio.to_thread(dispatcher.sendable_count)
            if queued and halt.is_set():
                _say(f"watch: stopping: {queued} queued alert(s) left for the next run "
                     "(or `portwatch alerts deliver`)")
            elif queued:
                _say(f"watch: stopping: sending {queued} queued alert(s), starting none "
                     f"after {dispatcher.config.delivery.wait_seconds:g}s (interrupt again "
                     "to leave them queued for the next run)")
        try:
            report_drain(await asyncio.to_thread(partial(
                dispatcher.drain, bound_first=watcher.should_stop, halt=halt)))
        finally:
            drop_signals()
            if once:
                own_signals()  # a --once run keeps its own until it returns
        if halt.is_set():
            stop.set()  # the run was interrupted: its exit status says so

    watcher = Watcher(db, entries, scan, dispatcher, say=_say, stop=stop)
    if once:
        own_signals()
        try:
            return await _once(watcher, dispatcher, last_delivery, stop, terminated,
                               when_stopped)
        finally:
            drop_signals()
    own_signals()
    try:
        async with _serving(db, web, token):
            watcher.say_status()
            await watcher.run_forever(stop)
    finally:
        drop_signals()
    if dispatcher is not None:
        # Stopped by a signal (a pod's SIGTERM has a grace period), the last delivery
        # starts no message past the file's `delivery: wait`; what is left stays queued
        # for the next watcher or `portwatch alerts deliver`
        # (a signal between scans sets `stop`; one during a scan interrupts it and stops
        # the watcher: should_stop is either)
        await last_delivery(dispatcher)
    _say_unqueued(watcher)
    if terminated and (not watcher.is_stopping or when_stopped):
        # Stopped while it waited, by SIGTERM (systemd, a pod's end): nothing was cut
        # short, so a clean stop (130 read as a failed unit); Ctrl-C stays 130
        _say(f"watch: stopped (SIGTERM) {_when(when_stopped)}; the next watcher goes on "
             "from the schedule")
        return 0
    return EXIT_INTERRUPTED if (stop.is_set() or watcher.is_stopping) else 0


async def _once(watcher: Any, dispatcher: Any, last_delivery: Callable[[Any], Awaitable[None]],
                stop: asyncio.Event, terminated: Sequence[signal.Signals],
                when_stopped: Sequence[str] = ()) -> int:
    """``watch --once``: what is due, its delivery, the exit status. A signal between
    scans (the handlers are the caller's) starts no further entry; SIGTERM, with no scan
    cut short, is a clean stop (0), Ctrl-C 130, as for the long-running watch."""
    async with watcher.delivering():  # what the first scans found goes out meanwhile
        records = await watcher.run_once()
    # A signal that came while the last run was recorded: its callback runs now (the
    # loop reads the wakeup pipe on a wait, then runs the handler before the timer ends)
    await asyncio.sleep(0.05)
    if not records and not watcher.should_stop:
        # (it printed nothing: a cron job's log could not tell a run from no run)
        _say(f"watch: nothing due; {watcher.status_line()}")
    if dispatcher is not None:
        await last_delivery(dispatcher)
    if (watcher.is_stopping and not (terminated and when_stopped)) \
            or (stop.is_set() and not terminated):
        return EXIT_INTERRUPTED
    if terminated:  # (said before a failure's status too: a review)
        _say(f"watch: stopped (SIGTERM) {_when(when_stopped)}; what is still due runs at "
             "the next start")
    if _say_unqueued(watcher):
        return EXIT_RUNTIME
    # a failed scan fails the one-shot run (a CronJob shows it), after delivering
    if any(r.status == "failed" for r in records):
        return EXIT_RUNTIME
    return 0


def _when(when_stopped: Sequence[str]) -> str:
    return when_stopped[0] if when_stopped else "while no scan was running"


def _say_unqueued(watcher: Any) -> bool:
    """Say the change events a store error kept from the outbox: this process ends, so
    they are not alerted (they are in the change log). True when there are some."""
    if watcher.unqueued:
        _say(f"watch: {watcher.unqueued} change event(s) were not queued for alerting "
             "(see `portwatch report changes`)")
    return bool(watcher.unqueued)


def report_drain(report: Any) -> None:
    """Say what the delivery of a run did (sent, kept for the next run, errors)."""
    if report.sent or report.delivered:
        # delivered messages only ("2 delivered in 4 message(s)" counted failed sends)
        _say(f"alerts: {report.sent} delivered in {report.delivered} message(s)")
    if report.failed:
        _say(f"alerts: {report.failed} failed for good (max_attempts reached, or the stored "
             "event unreadable; see `portwatch alerts log --state failed`)")
    if report.retrying:
        _say(f"alerts: {report.retrying} not delivered yet: kept in the store, sent by the "
             "next run (see `portwatch alerts log`)")
    if report.orphaned:
        _say(f"alerts: {report.orphaned} queued for a rule or channel no longer in the "
             "alerts file: kept, never sent (see `portwatch alerts log --state pending`)")
    counts: dict[str, int] = {}
    for error in report.errors:  # the same failure on each retry is said once, counted
        counts[error.removeprefix("alerts: ")] = counts.get(error.removeprefix("alerts: "),
                                                             0) + 1
    distinct = list(counts.items())
    if len(distinct) > 3:
        _say(f"alerts: {len(distinct)} different errors, the last 3:")
    for error, times in distinct[-3:]:
        _say(error + (f" (x{times})" if times > 1 else ""))


# -- alerts -----------------------------------------------------------------------------


@click.group()
def alerts() -> None:
    """Alert delivery: what was sent, what failed and why; test the channels."""


@alerts.command("log")
@click.option("--state", **filter_choice("pending", "retrying", "sent", "failed"),
              help="Only deliveries in this state (retrying: pending after a failed "
              "attempt; failed: given up for good).")
@click.option("--rule", default="", help="Only this rule.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="At most this many, newest first (when more are stored, stderr says so).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              help="Output format.")
@STORE_OPTION
def alerts_log(state: str, rule: str, limit: int, fmt: str, store: str | None) -> None:
    """Every delivery: rule, channel, event, state, attempts, last error.

    \b
    Examples:
      portwatch alerts log --state retrying
      portwatch alerts log --rule risky-opened --limit 20 -f json
    """
    from portwatch.alerts.log import delivery_log

    _check_store_url(store)
    db = _store(store, create=False)
    try:
        rows = delivery_log(db, state=state, rule=rule, limit=limit + 1)
    finally:
        db.close()
    if len(rows) > limit:
        # the newest ``limit`` only: said, as `report changes` says its cut (a failed
        # receiver's hundred and first delivery was out of sight: a review)
        rows = rows[:limit]
        _say(f"the newest {limit:,} deliveries shown; more are stored (--limit)")
    out = out_console(soft_wrap=True)  # one line per delivery, in any width
    if fmt == "json":
        out.print_json(json.dumps([r.as_dict() for r in rows]))
        return
    if not rows:
        out.print(Text("no alert deliveries recorded"))
        return
    for r in rows:
        out.print(Text(r.line()))


@alerts.command("test")
@ALERTS_OPTION
@click.option("--channel", "only_channel", default="", help="Only this channel.")
def alerts_test(alerts_file: str | None, only_channel: str) -> None:
    """Send a test message to every channel of the alerts file.

    \b
    Examples:
      portwatch alerts test --alerts alerts.yaml
      portwatch alerts test --alerts alerts.yaml --channel soc-webhook
    """
    from portwatch.alerts.channels import send

    if not alerts_file:
        fail("alerts test needs --alerts FILE (or PORTWATCH_ALERTS)")
    # channels are tested before any rule is written: a file of channels alone will do
    config = load_alerts_or_fail(alerts_file, need_rules=False)
    names = [only_channel] if only_channel else sorted(config.channels)
    if only_channel and only_channel not in config.channels:
        fail(f"no channel {only_channel!r} in {alerts_file}")
    out = out_console(soft_wrap=True)  # one line per channel
    failures = 0
    for name in names:
        channel = config.channels[name]
        result = send(channel, "test", [], is_test=True,
                      timeout=config.delivery.send_timeout_seconds)
        if result.is_ok:
            out.print(Text(f"{name}: ok ({channel.display})"))
        else:
            failures += 1
            out.print(Text(f"{name}: FAILED: {result.error}"))
    if failures:
        raise PortwatchError(f"{failures} of {len(names)} channel(s) failed", EXIT_RUNTIME)


@alerts.command("deliver")
@ALERTS_OPTION
@click.option("--wait", "wait_text", default=None, metavar="DURATION",
              callback=refuse_empty("give a duration (0: no retry wait), or leave --wait out "
                                    "for the file's delivery wait"),
              help="Retry failures for at most this long (default: the file's delivery wait).")
@STORE_OPTION
def alerts_deliver(alerts_file: str | None, wait_text: str | None, store: str | None
                   ) -> None:
    """Send what is queued in the store now (digest windows closed early).

    Exits 1 when a delivery failed for good, is left for the next run after an error
    (this run's or an earlier one's, its retry not due yet), or nothing could be sent for
    an error; what is left stays queued either way (`portwatch alerts log`).

    \b
    Examples:
      portwatch alerts deliver --alerts alerts.yaml
      portwatch alerts deliver --alerts alerts.yaml --wait 2m
    """
    from portwatch.alerts.config import parse_duration
    from portwatch.alerts.dispatcher import AlertDispatcher

    if not alerts_file:
        fail("alerts deliver needs --alerts FILE (or PORTWATCH_ALERTS)")
    config = load_alerts_or_fail(alerts_file)
    wait = None
    if wait_text:
        try:
            wait = parse_duration(wait_text)
        except ValueError as exc:
            fail(f"--wait: {exc}")
    _check_store_url(store)
    # (it sends what a scan queued: a mistyped store is refused, not made empty and
    # "nothing queued")
    db = _store(store, create=False)
    try:
        report = AlertDispatcher(db, config).drain(wait)
    finally:
        db.close()
    report_drain(report)
    # an error with nothing sent is a failure too (the store or the outbox unreadable),
    # and so is a delivery left queued that failed before, waiting for its retry (a run
    # before that time exited 0 with it undelivered: a review); rows another worker holds
    # or has not tried yet are not failures
    if report.failed or report.failed_before or (
            report.errors and (report.retrying or not report.sent)):
        raise PortwatchError("some alerts were not delivered (above)", EXIT_RUNTIME)
    if not report.sent and not report.retrying and not report.errors:
        _say("alerts: nothing queued")


# -- accept -----------------------------------------------------------------------------


@click.command()
@click.argument("where", required=False, metavar="TARGET[:PORT/PROTO]")
@click.option("--note", default="", help="Why this risk is accepted (required to accept).")
@click.option("--until", "until_text", default=None, metavar="DATE",
              callback=refuse_empty("give a date, or leave --until out for no expiry"),
              help="Acceptance ends after this date (2027-01-31) or ISO time; default never.")
@click.option("--by", "accepted_by", default="", help="Who accepts (default: $USER).")
@click.option("--list", "show_list", is_flag=True, help="List active acceptances.")
@click.option("--remove", is_flag=True, help="Withdraw the acceptance of TARGET[:PORT/PROTO].")
@STORE_OPTION
def accept(where: str | None, note: str, until_text: str | None, accepted_by: str,
           show_list: bool, remove: bool, store: str | None) -> None:
    """Accept a known risk: it stops alerting and shows as accepted in the reports.

    It alerts again once the acceptance expires (--until), or for good once a completed
    scan finds another service, product or version on the port than it had when
    accepted (or, accepted before it was scanned, than the first scan found). An
    interrupted scan, or one that cannot name the port, changes nothing.

    \b
    Examples:
      portwatch accept 127.0.0.1:6379/tcp --note "cache, firewalled upstream" --until 2027-03-31
      portwatch accept --list
      portwatch accept --remove 127.0.0.1:6379/tcp
    """
    from portwatch.alerts import accepted as acc

    now = datetime.now(UTC)
    if show_list and (remove or where):
        fail("accept --list takes no TARGET and no --remove: list, or withdraw one")
    if show_list:
        _check_store_url(store)
        db = _store(store, create=False)
        try:
            risks = acc.list_active(db, now)
        finally:
            db.close()
        out = out_console(soft_wrap=True)  # one line per acceptance
        if not risks:
            out.print(Text("no accepted risks"))
        for r in risks:
            until = r.until.strftime("%Y-%m-%d %H:%M UTC") if r.until else "no expiry"
            what = f" ({' '.join(x for x in (r.service, r.product, r.version) if x)})" \
                if r.service or r.product else ""
            # note and who are typed by people and may hold newlines or escapes: one line
            out.print(Text(sanitize_text(
                f"{r.where}{what}: {r.note} — by {r.accepted_by} on "
                f"{r.accepted_at:%Y-%m-%d}, until {until}", limit=1000)))
        return
    if not where:
        fail("accept needs TARGET[:PORT/PROTO] (or --list)")
    try:
        target, proto, port = acc.parse_target_port(where)
        until_moment = acc.parse_until(until_text, now) if until_text else None
    except acc.AcceptError as exc:
        fail(str(exc))
    if remove:
        _check_store_url(store)
        db = _store(store, create=False)
        try:
            found = acc.remove(db, target, proto, port, now)
        finally:
            db.close()
        if not found:
            fail(f"no active acceptance for {where}", EXIT_RUNTIME)
        out_console().print(Text(f"acceptance of {where} withdrawn"))
        return
    if not note.strip():
        fail("accept needs --note \"why\"")
    who = accepted_by or os.environ.get("USER") or _user()
    _check_store_url(store)
    # an existing store only: accepted into a mistyped path, the risk kept alerting from
    # the real store while the operator read "accepted" (a review)
    db = _store(store, create=False)
    try:
        risk = acc.accept(db, target, proto, port, note=note.strip(), by=who, until=until_moment,
                          now=now)
        matched = acc.matches_a_port(db, target, proto, port)
    finally:
        db.close()
    if not matched:
        # a typo accepted in silence left the real finding alerting while its operator
        # read "accepted" (a review); accepting before the first scan is fine, and said
        _say(sanitize_text(f"warning: no port stored matches {where} yet (a typo?); the "
                           "acceptance applies once a scan finds one", 300))
    ident = " ".join(x for x in (risk.service, risk.product, risk.version) if x)
    # (stored text and --by may hold control characters: escaped as in `accept --list`)
    out_console().print(Text(sanitize_text(
        f"accepted {risk.where}{f' ({ident})' if ident else ''} by {risk.accepted_by}"
        + (f" until {risk.until:%Y-%m-%d %H:%M UTC}" if risk.until else ""), 1000)))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return "unknown"


__all__ = ["ALERTS_OPTION", "accept", "alerts", "report_drain", "watch"]
