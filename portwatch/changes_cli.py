"""CLI of the change history: ``portwatch report changes`` and ``portwatch prune``.

Owns: the flags of the What-changed report and of pruning, their validation (bad input:
one line, exit 2) and the dispatch that lets ``report changes`` live beside the four
reports without touching their command. The queries are in
``stream_processors/history.py``; rendering is ``portwatch/render.py``.

Must not touch: the scan pipeline, the store's layout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from portwatch.console import (
    EXIT_USAGE,
    LIMIT_OPTION,
    ORG_FILTER_OPTION,
    STORE_OPTION,
    TARGET_FILTER_OPTION,
    fail,
    filter_choice,
    out_console,
    settings_from,
)
from schemas import REPORTS
from schemas.records import ChangeKind, Severity

KIND_CHOICES = [k.value for k in ChangeKind]
SEVERITY_CHOICES = [s.value for s in Severity]


def _open(url: str | None) -> Any:
    """An existing store (StoreMissing: exit 2, nothing created)."""
    from portwatch.assembly import Assembly

    return Assembly(settings_from(store=url)).open_store(create=False)


def _when(value: str, flag: str) -> datetime:
    """An ISO date or date-time (UTC when no zone is given); one line, exit 2, if not."""
    from stream_processors.change_log import parse_when

    try:
        return parse_when(value)
    except ValueError as exc:
        fail(f"{flag} {value!r}: {exc}", EXIT_USAGE)


@click.command("changes")
@click.option("--since", default=None, metavar="DURATION",
              help="Only changes in this last period: 30s, 30m, 12h, 1.5d, 7d, 2w.")
@click.option("--from", "from_", default=None, metavar="WHEN", help="Only changes at or after "
              "this ISO date/time (UTC unless a zone is given).")
@click.option("--to", "to", default=None, metavar="WHEN",
              help="Only changes before this time (a date alone is its midnight: "
              "--to 2026-12-07 ends with the 6th).")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(KIND_CHOICES, case_sensitive=False),
              help="Only this kind of change (repeat for several).")
@click.option("--severity", **filter_choice(*SEVERITY_CHOICES),
              help="Only changes at least this severe.")
@TARGET_FILTER_OPTION
@ORG_FILTER_OPTION
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Only this port (0: any).")
@click.option("--limit", **LIMIT_OPTION)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", help="Output format.")
@STORE_OPTION
def changes_command(since: str | None, from_: str | None, to: str | None,
                    kinds: tuple[str, ...], severity: str, target: str, org: str, port: int,
                    limit: int, fmt: str,
                    store: str | None) -> None:
    """What changed: ports opened, reopened and closed, service, product and version
    changes, risk raised or lowered, TLS and certificate changes, hosts unreachable and
    back. Newest first.

    \b
    Examples:
      portwatch report changes --since 7d
      portwatch report changes --since 1d --kind opened --kind reopened --severity high
      portwatch report changes --from 2026-11-01 --to 2026-12-01 --org "Example Corp" -f csv
      portwatch report changes --target 198.18.0.0/15 --port 22 -f json
    """
    from portwatch.render import render
    from portwatch.report_cli import read_store
    from portwatch.store_holder import remote_changes
    from portwatch.web.history_pages import API_LIMIT
    from stream_processors.change_log import (
        changes_report,
        iso_moment,
        parse_duration,
        same_moment,
    )
    from stream_processors.changes import EPOCH

    # not given: no filter; given empty (--since '', an unset "$VAR"): an error, never
    # silently the whole history
    for flag, value, what in (("--since", since, "duration"), ("--from", from_, "date/time"),
                              ("--to", to, "date/time")):
        if value == "":
            fail(f"{flag}: empty {what}", EXIT_USAGE)
    since, from_, to = since or "", from_ or "", to or ""
    if since and from_:
        fail("give --since or --from, not both", EXIT_USAGE)
    start = end = None
    if since:
        try:
            start = datetime.now(UTC) - parse_duration(since)
        except ValueError as exc:
            fail(f"--since: {exc}", EXIT_USAGE)
    if from_:
        start = _when(from_, "--from")
    if to:
        end = _when(to, "--to")
    if start is not None and end is not None:
        # the ends as given: 9999-01-01 and 5000-01-01 are both kept to 2299 for the store
        first = start if since else iso_moment(from_)
        if first > iso_moment(to):
            fail(f"{'--since' if since else '--from'} starts after --to: no event can match",
                 EXIT_USAGE)
        if first == iso_moment(to):  # --from D --to D: an empty window, said (a review)
            fail(same_moment("--from", "--to", "--to ", first), EXIT_USAGE)
    wanted = min(limit, API_LIMIT) if limit else API_LIMIT  # through a holder: its most
    result, capped = read_store(
        store,
        lambda db: (changes_report(db, since=start, until=end, kinds=kinds, severity=severity,
                                   target=target, org=org, port=port, limit=limit), False),
        lambda holder: remote_changes(holder, {
            "from": start or EPOCH, "to": end, "kind": kinds, "severity": severity,
            "target": target, "org": org, "port": port}, limit=wanted))
    if capped and (not limit or limit > API_LIMIT):
        click.echo(f"portwatch: the newest {API_LIMIT:,} events only (the API's most): "
                   "narrow with --since/--from/--to, or run it once the holder has stopped",
                   err=True)
    render(result, fmt, out_console(soft_wrap=fmt != "table"))


@click.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Delete the raw rows of scans that ended longer ago than this (e.g. "
                   "90d), and the alert deliveries that ended, their claims and the "
                   "scheduled runs as old. First-seen dates, the change log, each host's "
                   "latest scan, each TLS port's latest probe, pending deliveries and "
                   "each schedule entry's latest run are kept.")
@STORE_OPTION
def prune_command(older_than: str, store: str | None) -> None:
    """Delete the raw rows of old scans; never first_seen, the change log or what the
    reports show now.

    \b
    Examples:
      portwatch prune --older-than 90d
      portwatch prune --older-than 12w --store clickhouse://writer@ch.example:8123/portwatch
    """
    from portwatch.alerts.log import prune_alert_history
    from stream_processors.change_log import parse_duration, prune
    from stream_processors.changes import EPOCH

    try:
        period = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}", EXIT_USAGE)
    db = _open(store)
    try:
        cutoff, scans = prune(db, period)
        deliveries, runs = prune_alert_history(db, cutoff) if cutoff > EPOCH else (0, 0)
    finally:
        db.close()
    before = f"before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
    said = [f"pruned the raw rows of {_count(scans, 'scan')} that ended {before} (each "
            "host's latest scan and each TLS port's latest probe kept)" if scans else
            f"no scan to prune {before} (each host's latest scan and its latest "
            "completed one are kept)"]
    if deliveries or runs:
        said.append(f"pruned {_count(deliveries, 'alert delivery', 'alert deliveries')} "
                    f"that ended (with their claims) and {_count(runs, 'scheduled run')} "
                    "before then (pending deliveries and each entry's latest run kept)")
    else:
        said.append("no alert delivery or scheduled run to prune")
    out_console().print("; ".join(said), markup=False, highlight=False)


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


class _ReportWithChanges(click.Command):
    """``portwatch report`` as it is, plus ``report changes`` dispatched to its own command
    (its flags differ from the four reports')."""

    def __init__(self, reports: click.Command, changes: click.Command) -> None:
        # NAME lists changes too, so usage and "Choose from" errors name all five
        names = [*REPORTS, "changes"]
        params = [click.Argument(["name"], type=click.Choice(names),
                                 metavar="{" + "|".join(names) + "}")
                  if isinstance(p, click.Argument) and p.name == "name" else p
                  for p in reports.params]
        callback = reports.callback
        assert callback is not None

        def dispatch(**kwargs: Any) -> Any:
            if kwargs["name"] == "changes":  # after an option: its flags are not these
                fail("`changes` comes first: portwatch report changes [OPTIONS] (see "
                     "portwatch report changes --help)", EXIT_USAGE)
            return callback(**kwargs)

        super().__init__(reports.name, params=params, callback=dispatch, help=reports.help,
                         short_help=reports.short_help, context_settings=reports.context_settings)
        self.changes = changes

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        if args and args[0] == "changes":
            return self.changes.make_context(f"{info_name} changes", args[1:], parent=parent,
                                             **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def report_with_changes(reports: click.Command) -> click.Command:
    """``portwatch report`` with ``report changes`` beside the four reports."""
    return _ReportWithChanges(reports, changes_command)


__all__ = ["changes_command", "prune_command", "report_with_changes"]
