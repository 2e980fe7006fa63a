"""``portwatch report`` and ``portwatch settings``: reading the store, describing the knobs.

Owns: the report command's filters and formats, and the settings listing. A report
opens an existing store only: on a path where no store exists it says so (exit 2)
instead of leaving an empty store behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import click
from rich.text import Text

from portwatch.console import (
    LIMIT_OPTION,
    ORG_FILTER_OPTION,
    STORE_OPTION,
    TARGET_FILTER_OPTION,
    exact_filter,
    filter_choice,
    out_console,
    settings_from,
)
from schemas import REPORTS

if TYPE_CHECKING:
    from portwatch.store_holder import Advert
    from stream_processors.store import Store

T = TypeVar("T")


# The report filters' CLI flags, by their SQL parameter
_FLAGS = {"target": "--target", "org": "--org", "product": "--product",
          "version": "--product-version", "port": "--port", "color": "--color",
          "prevalence": "--prevalence", "history": "--history", "grade": "--grade"}


@click.command()
@click.argument("name", type=click.Choice(REPORTS), metavar="{" + "|".join(REPORTS) + "}")
@TARGET_FILTER_OPTION
@ORG_FILTER_OPTION
@click.option("--product", default="", callback=exact_filter("the product"),
              help="Only this product (list: the Products drill-down).")
@click.option("--product-version", "product_version", default="", metavar="VERSION",
              callback=exact_filter("the version"),
              help="list: only this version (any case), of --product when given; '-': the "
                   "ports that gave no version (or '-'). Not --version: that is portwatch's own "
                   "(`portwatch --version`).")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Only this port (0: any).")
@click.option("--color", **filter_choice("green", "yellow", "red"),
              help="Only ports (list), targets (summary) or products (products) with "
                   "this risk colour.")
@click.option("--prevalence",
              **filter_choice("very common", "somewhat common", "less common", "rare"),
              help="list: only ports in this prevalence bucket (very common: more than "
                   "3,000 instances; somewhat: 500-3,000; less: 50-499; rare: under 50).")
@click.option("--history", is_flag=True, help="list: include ports not seen in the latest scan.")
@click.option("--grade", **filter_choice("weak", "medium", "strong"),
              help="ciphers: only ports with this TLS grade.")
@click.option("--limit", **LIMIT_OPTION)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", help="Output format.")
@STORE_OPTION
def report(name: str, target: str, org: str, product: str, product_version: str, port: int,
           color: str, prevalence: str, history: bool, grade: str, limit: int, fmt: str,
           store: str | None) -> None:
    """Show one of the four reports, or what changed between scans.

    \b
      summary   one row per target: organization, open ports by colour, risk score,
                grade and its parts, last scanned
      list      every open port: service, product, version, risk, prevalence,
                CDN verdict, first detected, last seen
      products  product and version with instance and target counts
      ciphers   per TLS port: versions, suites with grades, certificate facts
      changes   what opened, closed or changed, and when: its own flags, see
                `portwatch report changes --help` (changes comes first)

    A filter the report does not take is refused (exit 2), naming the reports that do.
    """
    from portwatch.render import render
    from portwatch.store_holder import remote_report
    from schemas import report_parameters

    given = {"target": target, "org": org, "product": product, "version": product_version,
             "port": port, "color": color, "prevalence": prevalence, "history": int(history),
             "grade": grade}
    wanted = report_parameters(name)
    for key, value in given.items():
        if value and key not in wanted:
            # the API answers 400 to it; ignored here, `products --product-version 1.0`
            # printed every version as if filtered (a review)
            takers = [r for r in REPORTS if key in report_parameters(r)]
            raise click.UsageError(f"{_FLAGS[key]} does not filter the {name} report "
                                   f"(it filters: {', '.join(takers)})")
    filters = {k: v for k, v in given.items() if k in wanted}
    result = read_store(store, lambda db: db.report(name, filters, limit=limit),
                        lambda holder: remote_report(holder, name, filters, limit=limit),
                        prior_matters="no_prior" in report_parameters(name))
    render(result, fmt, out_console(soft_wrap=fmt != "table"))


def read_store(url: str | None, local: Callable[[Store], T],
               remote: Callable[[Advert], T], *, prior_matters: bool = False) -> T:
    """``local`` over the existing store at ``url``; while `serve` / `process --serve`
    holds that chdb store, ``remote`` over its JSON API instead (portwatch/store_holder.py),
    said on stderr. StoreBusy when the holder advertises nothing (a scan, or a sink
    without --serve): "in use"; StoreMissing when there is no store. With
    ``prior_matters`` (a report whose prevalence may count the Internet prior), a holder
    whose prior setting differs from this process's is said: its answer follows its own."""
    from portwatch.assembly import Assembly
    from portwatch.console import EXIT_RUNTIME, fail
    from portwatch.store_holder import HolderError, find_holder
    from stream_processors.store import StoreBusy

    assembly = Assembly(settings_from(store=url))
    try:
        db = assembly.open_store(create=False)
    except StoreBusy:
        path = assembly.store_location().path
        holder = find_holder(path) if path else None
        if holder is None:
            raise
        try:
            answer = remote(holder)
        except HolderError as exc:
            fail(f"the store at {path} is held by `portwatch {holder.command}` (pid "
                 f"{holder.pid}), whose API failed: {exc}", EXIT_RUNTIME)
        click.echo(f"portwatch: the store at {path} is held by `portwatch {holder.command}` "
                   f"(pid {holder.pid}); answered through its JSON API at {holder.url}",
                   err=True)
        if prior_matters and holder.prevalence_prior != assembly.settings.prevalence_prior:
            # (the holder's store binds its own reader setting: a review found the
            # asker's PORTWATCH_PREVALENCE_PRIOR silently ignored)
            counts = holder.prevalence_prior
            click.echo(f"portwatch: warning: prevalence in this answer "
                       f"{'counts' if counts else 'leaves out'} the Internet prior, as "
                       f"`portwatch {holder.command}` is set (PORTWATCH_PREVALENCE_PRIOR="
                       f"{'true' if counts else 'false'} where it runs), not as this shell "
                       "is", err=True)
        return answer
    try:
        return local(db)
    finally:
        db.close()


@click.command("settings")
@click.pass_context
def show_settings(ctx: click.Context) -> None:
    """List every setting with its environment variable, default, range and why, and the
    value the environment sets now where it differs from the default.

    One line each (grep it). Flags of the commands override these; the environment
    overrides the defaults. The command options that also read a PORTWATCH_* variable
    (the web token, a serving proxy's address...) follow, each with its commands.
    """
    from portwatch.settings import Settings

    effective = settings_from()  # a bad PORTWATCH_* value: one line, exit 2
    out = out_console()
    groups = Settings.groups()
    current = ""
    known: set[str] = set()
    for name, env, default, why in Settings.describe():
        known.add(env)
        if groups[name] != current:
            current = groups[name]
            out.print(Text(f"[{current}]", style="bold"))
        bounds = Settings.range_of(name)
        now = getattr(effective, name)
        here = f", now {now!r} from {env}" if now != default else ""
        out.print(Text(f"  {name:22} {env:34} default {default!r}"
                       + (f" ({bounds})" if bounds else "") + here + f": {why}"),
                  soft_wrap=True)
    extra = [o for o in option_envvars(ctx.find_root().command) if o.env not in known]
    if extra:
        out.print(Text("[command options]", style="bold"))
    for o in extra:
        out.print(Text(f"  {o.flag:22} {o.env:34} of {', '.join(o.commands)}: {o.help}"),
                  soft_wrap=True)
    # a secret, never a setting (nothing prints it), but one to know of (a review)
    from stream_processors.store import PASSWORD_ENV

    out.print(Text("[secrets: read from the environment only, never shown]", style="bold"))
    out.print(Text(f"  {'':22} {PASSWORD_ENV:34} the password of a clickhouse:// --store "
                   "(a URL carrying one is refused)"), soft_wrap=True)


@dataclass(frozen=True)
class EnvOption:
    """A command option read from the environment too: its flag, variable, commands."""

    flag: str
    env: str
    commands: tuple[str, ...]
    help: str


def option_envvars(root: click.Command) -> list[EnvOption]:
    """Every option under ``root`` with an ``envvar``, once per variable, with the
    commands (space-joined paths) that take it; sorted by variable."""
    found: dict[str, EnvOption] = {}

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            raw = param.envvar
            envs: list[str] = [raw] if isinstance(raw, str) else list(raw or ())
            for env in (e for e in envs if e):
                seen = found.get(env)
                flag = max(param.opts, key=len)
                first = (param.help or "").split(". ")[0].rstrip(".")
                # The help that explains the option itself, not one that refers to
                # another command's ("--serve marks ... (as `portwatch serve`)").
                keep = seen.help if seen and not seen.help.startswith("-") else first
                found[env] = EnvOption(flag, env, (*seen.commands, path) if seen else (path,),
                                       keep)
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk(sub, f"{path} {name}".strip())

    walk(root, "")
    return sorted(found.values(), key=lambda o: o.env)


__all__ = ["EnvOption", "option_envvars", "read_store", "report", "show_settings"]
