"""The ``portwatch`` command line.

Owns: parsing flags into validated settings, turning bad input into one clear
line and exit code 2 (never a traceback), the progress bar and the end-of-scan
screen. The work itself is done by the runner, the store and the stages.

Exit codes: 0 success, 1 runtime failure (store busy, engine error), 2 bad
input (target, port spec, inventory, store URL, settings), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from portwatch.settings import Settings, SettingsError

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# soft_wrap: an error stays on one line whatever the terminal width
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def out_console(*, soft_wrap: bool = False) -> Console:
    """Stdout console; when piped (no terminal) tables get a wide page, not 80 columns."""
    probe = Console(highlight=False)
    width = None if probe.is_terminal else 200
    return Console(highlight=False, width=width, soft_wrap=soft_wrap)


class PortwatchError(Exception):
    """An error for the user: one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    raise PortwatchError(message, code)


def _store(url: str | None, *, create: bool = True):  # type: ignore[no-untyped-def]
    from stream_processors.store import Store, StoreBusy, StoreError, UnknownStoreScheme

    try:
        return Store.from_url(url or None, create=create)
    except UnknownStoreScheme as exc:
        fail(str(exc), EXIT_USAGE)
    except StoreBusy as exc:
        fail(str(exc), EXIT_RUNTIME)
    except StoreError as exc:
        fail(str(exc), EXIT_USAGE if "URL" in str(exc) else EXIT_RUNTIME)


def _check_store_url(url: str | None) -> None:
    """Validate the URL before anything is scanned: bad input writes nothing."""
    from stream_processors.store import StoreError, StoreLocation, default_store_url

    try:
        StoreLocation.parse(url or default_store_url())
    except StoreError as exc:
        fail(str(exc), EXIT_USAGE)


STORE_OPTION = click.option(
    "--store", envvar="PORTWATCH_STORE", default=None, metavar="URL",
    help="Where findings live: chdb:///path (embedded, default under your data dir) or "
         "clickhouse://user@host:8123/db (password in PORTWATCH_CLICKHOUSE_PASSWORD).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="portwatch")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """portwatch: what is open on your assets, what runs there, and how risky it is.

    \b
    Typical use:
      portwatch scan 127.0.0.1                  # all 65,535 TCP ports, embedded store
      portwatch scan --inventory assets.csv     # targets with organization and asset name
      portwatch report summary                  # one row per target, risk score and grade
      portwatch report list --color red         # every risky open port
      portwatch report products                 # what software runs where
      portwatch report list --product nginx     # drill down into one product

    Scan only what you own or are allowed to test.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="portwatch: %(levelname)s: %(message)s",
                        stream=sys.stderr)


# -- scan -------------------------------------------------------------------------------


@cli.command()
@click.argument("targets", nargs=-1, metavar="TARGET...")
@click.option("-p", "--ports", default=None, metavar="SPEC",
              help="TCP ports: 22,80,8000-8100, or 1-65535 (default: all).")
@click.option("--org", "organization", default="", metavar="NAME",
              help="Organization the command-line targets belong to.")
@click.option("--asset", default="", metavar="NAME",
              help="Asset name for the command-line targets.")
@click.option("-i", "--inventory", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="CSV (target,organization,asset) or YAML inventory of targets.")
@click.option("--exclude", multiple=True, metavar="CIDR",
              help="Never scan this address or block (repeatable).")
@click.option("--exclude-file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="File of addresses/blocks never to scan, one per line.")
@click.option("--allow-large", is_flag=True,
              help="Allow targets larger than a /16 (65,536 addresses).")
@STORE_OPTION
@click.option("-u", "--udp", default=None, metavar="top1000|none|SPEC",
              help="UDP ports: top1000 (nmap's most often open, default), none, or a spec "
                   "like 53,123,161.")
@click.option("-e", "--engine", type=click.Choice(["auto", "masscan", "connect"]), default=None,
              help="TCP discovery: masscan (raw SYN, needs root or CAP_NET_RAW and an "
                   "Ethernet path; portwatch counts the answers and re-sends only silent "
                   "ports), connect (works everywhere, loopback included), auto (default: "
                   "masscan when it can run and be counted, else connect, and says why).")
@click.option("--rate", type=int, default=None,
              help="Packets per second for masscan and UDP (default: 10,000 / 500).")
@click.option("-c", "--concurrency", type=int, default=None,
              help="Sockets in flight for discovery (default 2000, capped by the fd limit).")
@click.option("-t", "--timeout", type=float, default=None,
              help="Seconds to wait for a port to answer before retrying it (default 1.0).")
@click.option("--retries", type=int, default=None, help="Retries for ports that timed out (1).")
@click.option("--banner-wait", type=float, default=None,
              help="Seconds to wait for a service to speak first (default 2.0).")
@click.option("--tarpit-threshold", type=int, default=None,
              help="Open ports per host beyond which it 'answers on every port' (1000).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Record progress in FILE after every shard; run the same command with the "
                   "same FILE to resume an interrupted scan where it stopped.")
@click.option("--seed", type=int, default=None,
              help="Seed of the pseudo-random shard and port order (default: random).")
@click.option("--tls/--no-tls", "tls", default=None,
              help="Enumerate TLS versions, cipher suites and certificates on TLS ports "
                   "(default: on).")
@click.option("--nmap-probes/--no-nmap-probes", "nmap_probes", default=None,
              help="Fall back to nmap's service probes from nmap-common (default: on).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no end screen.")
def scan(targets: Sequence[str], ports: str | None, organization: str, asset: str,
         inventory: str | None, exclude: Sequence[str], exclude_file: str | None,
         allow_large: bool, store: str | None, udp: str | None, engine: str | None,
         rate: int | None, concurrency: int | None, timeout: float | None,
         retries: int | None, banner_wait: float | None, tarpit_threshold: int | None,
         checkpoint: str | None, seed: int | None, tls: bool | None,
         nmap_probes: bool | None, quiet: bool) -> None:
    """Scan TARGET... (addresses, CIDR blocks, ranges like 10.0.0.1-20, hostnames;
    "-" reads targets from standard input, one per line).

    Finds every open TCP port, identifies the service, product and version,
    colours each port by risk, and stores the findings; then shows a summary.
    A rescan updates "last seen" and keeps "first detected".

    \b
    Examples:
      portwatch scan 127.0.0.1
      portwatch scan --ports 1-1024 --org "Example Corp" 127.0.0.1 ::1
      portwatch scan --inventory assets.yaml --exclude 127.0.0.2
    """
    try:
        settings = Settings.from_env(ports=ports, concurrency=concurrency, timeout=timeout,
                                     retries=retries, banner_wait=banner_wait,
                                     tarpit_threshold=tarpit_threshold, store=store,
                                     tls=tls, nmap_probes=nmap_probes, udp=udp,
                                     engine=engine, rate=rate)
    except SettingsError as exc:
        fail(str(exc))
    resolved, tcp_ports, udp_ports = resolve_input(
        settings, targets, organization=organization, asset=asset, inventory=inventory,
        exclude=exclude, exclude_file=exclude_file, allow_large=allow_large)
    _check_store_url(settings.store)
    db = _store(settings.store)
    try:
        stats = asyncio.run(_run_scan(db, settings, resolved, tcp_ports, udp_ports, quiet,
                                      checkpoint=checkpoint, seed=seed))
        if not quiet:
            _end_screen(db, stats, resolved)
    finally:
        db.close()
    if stats.interrupted:
        raise PortwatchError(f"scan interrupted: {stats.stored} findings kept", EXIT_INTERRUPTED)


def resolve_input(settings: Settings, targets: Sequence[str], *, organization: str,
                  asset: str, inventory: str | None, exclude: Sequence[str],
                  exclude_file: str | None, allow_large: bool,
                  ) -> tuple[list[Any], tuple[Any, ...], tuple[Any, ...]]:
    """Targets (arguments, "-" for stdin, inventory), scope and port specs -> the
    addresses and TCP/UDP port ranges to scan; bad input fails with one line, exit 2,
    before anything is sent. Shared by ``scan`` and ``produce``."""
    from producers.targets import Scope, TargetError, TargetSpec, parse_ports, read_inventory
    from producers.targets import resolve_targets as resolve

    try:
        specs = [TargetSpec(t, organization, asset) for t in _expand_stdin(targets)]
        if inventory:
            specs += read_inventory(inventory)
        if not specs:
            fail("no targets: give TARGET... or --inventory FILE (see --help)")
        tcp_ports = parse_ports(settings.ports)
        udp_ports = _udp_ports(settings.udp)
        scope = Scope.build(exclude, exclude_file=exclude_file, allow_large=allow_large)
        return resolve(specs, scope), tcp_ports, udp_ports
    except TargetError as exc:
        fail(str(exc))


def _udp_ports(spec: str) -> tuple[Any, ...]:
    """``top1000`` / ``topN`` (from the user's nmap-services), ``none``, or a port spec."""
    from probers.discovery.base import EngineUnavailable
    from probers.discovery.udp import udp_top_ports
    from producers.targets import TargetError, parse_ports
    from schemas.records import PortRange

    text = spec.strip().lower()
    if text in ("none", "no", "off", ""):
        return ()
    if text.startswith("top"):
        try:
            count = int(text[3:] or "1000")
            ports = sorted(udp_top_ports(count))
        except ValueError:
            raise TargetError(f"bad --udp {spec!r}: use top1000, none or a port spec") from None
        except EngineUnavailable as exc:
            raise TargetError(str(exc)) from None
        return tuple(PortRange(p, p) for p in ports)
    return parse_ports(text)


def _choose_engine(settings: Settings, targets: Any) -> tuple[Any, str]:
    """--engine auto|masscan|connect -> (engine, one-line note when auto fell back)."""
    from types import SimpleNamespace

    from probers.discovery.base import EngineUnavailable
    from probers.discovery.masscan import choose_engine

    options = SimpleNamespace(concurrency=settings.concurrency, timeout=settings.timeout,
                              retries=settings.retries, masscan_rate=settings.rate or 10_000)
    try:
        return choose_engine(settings.engine, targets, options)
    except EngineUnavailable as exc:
        fail(f"--engine masscan: {str(exc).strip().splitlines()[0]}", EXIT_USAGE)


def _expand_stdin(targets: Sequence[str]) -> list[str]:
    out: list[str] = []
    for t in targets:
        if t == "-":
            out += [line.split("#", 1)[0].strip() for line in sys.stdin]
            out = [x for x in out if x]
        else:
            out.append(t)
    return out


async def _run_scan(db: Any, settings: Settings, targets: Any, tcp_ports: Any,
                    udp_ports: Any, quiet: bool, *, checkpoint: str | None = None,
                    seed: int | None = None) -> Any:
    from portwatch.runner import EmbeddedRunner, install_interrupt
    from stream_processors.stages import make_context

    engine, note = _choose_engine(settings, targets)
    if note and not quiet:
        err_console.print(f"portwatch: {note}", markup=False)
    ctx = make_context(
        banner_wait=settings.banner_wait, identify_budget=settings.identify_budget,
        per_host_connections=settings.per_host_connections,
        use_nmap_probes=settings.nmap_probes, tls_enumeration=settings.tls,
        tls_timeout=settings.tls_timeout, tls_budget=settings.tls_budget,
    )
    udp_engine = None
    if udp_ports:
        from probers.discovery.udp import UdpEngine, UdpOptions

        udp_engine = UdpEngine(UdpOptions(rate=float(settings.rate or 500)))
    runner = EmbeddedRunner(db, engine, ctx, udp_engine=udp_engine,
                            identify_workers=settings.identify_concurrency,
                            tarpit_threshold=settings.tarpit_threshold,
                            batch_size=settings.batch_size, batch_seconds=settings.batch_seconds,
                            shard_ports=settings.shard_ports, shard_hosts=settings.shard_hosts)
    view = ProgressView(enabled=not quiet)
    undo = install_interrupt(runner)
    try:
        with view:
            return await runner.run(targets, tcp_ports, udp_ports, on_stats=view.update,
                                    checkpoint=checkpoint,
                                    seed=seed if seed is not None else random.randrange(2**31))
    finally:
        undo()


class ProgressView:
    """A live bar on a terminal; a plain line every 5 s otherwise (CI logs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.is_live = enabled and err_console.is_terminal
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if self.is_live:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]scanning"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} ports"),
                TextColumn("[bold]{task.fields[open]}[/] open"),
                TextColumn("{task.fields[rate]:,.0f} ports/s"),
                TextColumn("ETA"), TimeRemainingColumn(),
                console=err_console, transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("scan", total=1, open=0, rate=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, stats: Any) -> None:
        if not self.enabled:
            return
        elapsed = max(stats.elapsed, 1e-6)
        rate = stats.probes_done / elapsed
        if self._bar is not None:
            self._bar.update(self._task, total=max(stats.probes_total, 1),
                             completed=stats.probes_done, open=stats.open_found, rate=rate)
            return
        now = time.monotonic()
        if now - self._last_line >= 5 or stats.finished:
            self._last_line = now
            total = max(stats.probes_total, 1)
            eta = (total - stats.probes_done) / rate if rate > 0 else 0
            err_console.print(
                f"progress: {stats.probes_done:,}/{total:,} ports "
                f"({100 * stats.probes_done / total:.0f}%), {stats.open_found} open, "
                f"{rate:,.0f} ports/s, ETA {eta:.0f}s", markup=False)


def _end_screen(db: Any, stats: Any, targets: Any) -> None:
    from portwatch.render import to_table

    out = out_console()
    state = "interrupted" if stats.interrupted else "done"
    out.print(Text(
        f"scan {stats.scan_id} {state} in {stats.elapsed:.1f}s: {stats.hosts} host(s), "
        f"{min(stats.probes_done, stats.planned_probes):,} ports scanned"
        + (f" ({stats.probes_done:,} probes)" if stats.probes_done > stats.planned_probes else "")
        + f", {stats.open_found} open, "
        f"{stats.identified} identified, {stats.stored} findings stored", style="bold"))
    if stats.resumed_shards:
        out.print(Text(f"resumed: {stats.resumed_shards} shard(s) were done before"))
    if stats.changes:  # change history: what this scan changed (`portwatch report changes`)
        urgent = sum(e.severity.value in ("high", "critical") for e in stats.changes)
        out.print(Text(f"changes: {len(stats.changes)} since the previous scan, {urgent} high "
                       "or critical: portwatch report changes"))
    for note in [*stats.notes, *stats.errors]:
        out.print(Text(f"note: {note}"))
    for ip in stats.tarpits:
        out.print(Text(f"note: {ip} answers on every port; only identified services kept",
                       style="yellow"))
    if len(targets) <= 20:
        for t in {t.ip for t in targets}:
            to_table(db.report("summary", {"target": t}), out, title=f"Summary: {t}")
    else:
        to_table(db.report("summary", {}, limit=20), out, title="Summary (top 20 by risk)")


# -- report -----------------------------------------------------------------------------

REPORT_NAMES = ("summary", "list", "products", "ciphers")


@cli.command()
@click.argument("name", type=click.Choice(REPORT_NAMES), metavar="{summary|list|products|ciphers}")
@click.option("--target", default="", help="Only this target (as written, address or hostname).")
@click.option("--org", default="", help="Only this organization.")
@click.option("--product", default="", help="Only this product (list: the Products drill-down).")
@click.option("--version", "product_version", default="", help="With --product: only this version.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Only this port.")
@click.option("--color", type=click.Choice(["", "green", "yellow", "red"]), default="",
              help="Only ports (list) or targets (summary) with this risk colour.")
@click.option("--prevalence", default="",
              type=click.Choice(["", "very common", "somewhat common", "less common", "rare"]),
              help="list: only ports in this prevalence bucket.")
@click.option("--history", is_flag=True, help="list: include ports not seen in the latest scan.")
@click.option("--grade", default="", type=click.Choice(["", "weak", "medium", "strong"]),
              help="ciphers: only ports with this TLS grade.")
@click.option("--limit", type=click.IntRange(0), default=0, help="At most this many rows (0: all).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", help="Output format.")
@STORE_OPTION
def report(name: str, target: str, org: str, product: str, product_version: str, port: int,
           color: str, prevalence: str, history: bool, grade: str, limit: int, fmt: str,
           store: str | None) -> None:
    """Show one of the four reports.

    \b
      summary   one row per target: organization, open ports by colour, risk score,
                grade and its parts, last scanned
      list      every open port: service, product, version, risk, prevalence,
                CDN verdict, first detected, last seen
      products  product and version with instance and target counts
      ciphers   per TLS port: versions, suites with grades, certificate facts

    Filters that do not apply to a report are ignored for it.
    """
    from portwatch.render import render
    from schemas import report_parameters

    given = {"target": target, "org": org, "product": product, "version": product_version,
             "port": port, "color": color, "prevalence": prevalence, "history": int(history),
             "grade": grade}
    wanted = report_parameters(name)
    filters = {k: v for k, v in given.items() if k in wanted}
    _check_store_url(store)
    db = _store(store, create=True)
    try:
        result = db.report(name, filters, limit=limit)
    finally:
        db.close()
    render(result, fmt, out_console(soft_wrap=fmt != "table"))


@cli.command("settings")
def show_settings() -> None:
    """List every setting with its environment variable, default and why."""
    out = out_console()
    for name, env, default, why in Settings.describe():
        out.print(Text(f"{name:22} {env:34} default {default!r}: {why}"))


def _register_optional_commands() -> None:
    """Commands of the distributed shape and the web reports live in their own modules."""
    import importlib

    for module in ("portwatch.distributed_cli", "portwatch.web.cli", "portwatch.changes_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            continue
        mod.register(cli)


_register_optional_commands()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="portwatch",
                 standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("portwatch: aborted", markup=False)
        return EXIT_INTERRUPTED
    except click.UsageError as exc:
        err_console.print(f"portwatch: error: {exc.format_message()}", markup=False)
        return EXIT_USAGE
    except click.ClickException as exc:
        err_console.print(f"portwatch: error: {exc.format_message()}", markup=False)
        return exc.exit_code
    except PortwatchError as exc:
        err_console.print(f"portwatch: {'error: ' if exc.code != 130 else ''}{exc}",
                          markup=False)
        return exc.code
    except KeyboardInterrupt:
        err_console.print("portwatch: interrupted", markup=False)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
