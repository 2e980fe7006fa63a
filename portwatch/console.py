"""What every portwatch command shares: exit codes, one-line errors, consoles, options.

Owns: the exit codes (0 success, 1 runtime failure, 2 bad input, 130 interrupted),
``PortwatchError`` and ``fail``, the one table that maps the components' typed
errors to exit codes (``exit_code_for``: by type, never by reading a message), the
stdout/stderr consoles, and the options several commands declare alike.

Command modules import this, never ``portwatch.cli`` (which imports them): no cycle.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from rich.console import Console

from schemas import UNLIMITED

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

class _StderrConsole(Console):
    """stderr's console. A reader of stderr that has gone (``2>&1 | head``) or a full
    disk behind it (``2>/dev/full``) loses the lines that follow, never the command: rich
    exits 1 on a broken pipe, which ``portwatch.cli.main`` took for a closed stdout, and a
    scan whose stderr broke at its first note stored nothing and exited 0 (a review)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True

    def _check_buffer(self) -> None:
        try:
            super()._check_buffer()
        except OSError:  # ENOSPC, EIO: as a broken pipe
            self.quiet = True
            del self._buffer[:]


# soft_wrap: an error stays on one line whatever the terminal width
err_console: Console = _StderrConsole(stderr=True, highlight=False, soft_wrap=True)


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


MIN_OPEN_FILES = 256  # sockets in flight, the store engine's files, Kafka's connections


RAISED_OPEN_FILES = 1024  # a soft limit under this is raised to it (the usual default)


def ensure_open_files() -> None:
    """Before a command that scans: a soft open-files limit under ``RAISED_OPEN_FILES``
    raised towards it (as far as the hard limit allows: the engines size their sockets
    to the soft one, so a usual limit is left as it is), and a limit still under
    ``MIN_OPEN_FILES`` refused in one line. At 90 the store's insert failed at the scan's
    end in a traceback, and every port found was lost (a review)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < RAISED_OPEN_FILES:
        wanted = (RAISED_OPEN_FILES if hard == resource.RLIM_INFINITY
                  else min(hard, RAISED_OPEN_FILES))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        fail(f"the open-files limit is {soft} (ulimit -n): portwatch needs at least "
             f"{MIN_OPEN_FILES} to scan (sockets and the store's files share it); raise it "
             "and run it again")


# What a message must not carry to a terminal raw: C0 and C1 controls (ESC starts the
# sequences that clear a screen or retitle a window) and the bidi overrides that reorder
# what is shown. A path or URL the user gave reached stderr raw (a review, 2026-12-06).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """``text`` with every control character written as its escape."""
    return text.translate(_ESCAPES)


def say(message: str) -> None:
    """One line on stderr, prefixed like every portwatch message."""
    err_console.print(f"portwatch: {printable(message)}", markup=False)


# (module, class, exit code), most specific first. Looked up only in modules already
# imported: an exception can only be of a class whose module is loaded, and the CLI
# stays quick to start (no Kafka or ClickHouse import for `--help`).
USER_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("portwatch.settings", "SettingsError", EXIT_USAGE),
    ("producers.targets", "TargetError", EXIT_USAGE),
    ("producers.shards", "CheckpointError", EXIT_USAGE),
    ("portwatch.alerts.config", "AlertConfigError", EXIT_USAGE),
    ("portwatch.alerts.dispatcher", "AlertQueueError", EXIT_RUNTIME),
    ("stream_processors.store", "StoreUrlError", EXIT_USAGE),
    ("stream_processors.store", "StoreMissing", EXIT_USAGE),
    ("stream_processors.store", "StoreLayoutError", EXIT_USAGE),
    ("stream_processors.store", "StoreBusy", EXIT_RUNTIME),
    ("stream_processors.store", "StoreError", EXIT_RUNTIME),
    ("probers.discovery.base", "EngineUnavailable", EXIT_USAGE),
    # (an engine that failed at run time: one line, not a traceback)
    ("probers.discovery.base", "DiscoveryError", EXIT_RUNTIME),
    ("probers.nmapdata", "NmapDataError", EXIT_USAGE),
    ("probers.nmapdata", "NmapDataUnavailable", EXIT_USAGE),
    ("producers.kafka_io", "KafkaUnavailable", EXIT_RUNTIME),
    ("producers.kafka_io", "TopicSetupError", EXIT_RUNTIME),
    ("producers.kafka_io", "PublishError", EXIT_RUNTIME),
)


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a component's typed error; None for anything else (a bug)."""
    if isinstance(exc, PortwatchError):
        return exc.code
    for module, name, code in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return code
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return printable(text[0]) if text else type(exc).__name__


# --limit of the reports: 0 is all; a larger count than any store holds is all too (the
# SQL's UInt64 would wrap 2**64 to 0 rows, so it never reaches the SQL).

LIMIT_OPTION: dict[str, Any] = {
    "type": click.IntRange(0), "default": 0, "help": "At most this many rows (0: all).",
    "callback": lambda _ctx, _param, value: min(value, UNLIMITED)}


def filter_choice(*values: str) -> dict[str, Any]:
    """The type, default and callback of an optional filter among ``values``: its --help
    lists only real values, any case is taken (as text filters ignore case; the value
    passed on is the listed one), and an absent flag reads as '' (no filter), as the
    report SQL expects."""
    return {"type": click.Choice(list(values), case_sensitive=False), "default": None,
            "callback": lambda _ctx, _param, value: value or ""}


def _text_filter(what: str, *, is_target: bool = False
                 ) -> Callable[[click.Context, click.Parameter, str], str]:
    """A click callback for a filter people type: refused as the web API refuses it
    (too long, control characters), then a target normalized as the SQL matches it."""
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        from schemas.bounded import TEXT_CAP
        from schemas.filters import filter_text, normalize_target

        try:
            text = filter_text(what, value, TEXT_CAP)
            return normalize_target(text) if is_target else text
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return check


def exact_filter(what: str) -> Callable[[click.Context, click.Parameter, str], str]:
    """A click callback for a filter matched exactly as stored (a product, a version: any
    character, blanks too, as the web API takes them), refused only when longer than
    anything stored, as the API refuses it (a direct report answered "no rows", the same
    report through a running `serve` an error: a review), or when blank: the API reads a
    blank as no filter (a web form's empty field), so `--product ' '` matched nothing
    directly and everything through a running `serve` (a review)."""
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        from schemas.bounded import TEXT_CAP
        from schemas.filters import check_length

        if value and not value.strip():
            raise click.BadParameter(f"{what} is blank: leave the option out for any")
        try:
            check_length(what, value, TEXT_CAP)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value
    return check


# The reports' --target (the four and `report changes`): what schemas/filters.py matches
TARGET_FILTER_OPTION = click.option(
    "--target", default="", callback=_text_filter("the target", is_target=True),
    help="Only this target: as written, hostname, asset name, address, address prefix "
         "(198.18.) or CIDR block (198.18.0.0/15); any case.")

ORG_FILTER_OPTION = click.option("--org", default="", callback=_text_filter("the organization"),
                                 help="Only this organization (any case).")

def refuse_empty(what: str) -> Callable[[click.Context, click.Parameter, str | None],
                                        str | None]:
    """A click callback refusing a flag given an empty value (an unset ``"$STORE"``):
    ``--store ''`` read the default store and ``--udp ''`` scanned no UDP, without a
    word (a review, 2026-12-06)."""
    def check(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise click.BadParameter(f"empty: {what}", param=param)
        return value
    return check


# An unset "$ALERTS_FILE" turned alerting off for the run without a word, and its
# changes, compared, never alerted later (a review, 2026-12-06).
ALERTS_EMPTY = "give the alerts file, or leave --alerts out (PORTWATCH_ALERTS)"

STORE_OPTION = click.option(
    "--store", envvar="PORTWATCH_STORE", default=None, metavar="URL",
    callback=refuse_empty("give a store URL, or leave --store out for the default"),
    help="Where findings live: chdb:///path (embedded, default under your data dir) or "
         "clickhouse://user@host:8123/db (password in PORTWATCH_CLICKHOUSE_PASSWORD).")

KAFKA_OPTION = click.option(
    "--kafka", envvar="PORTWATCH_KAFKA", default=None, metavar="HOST:PORT[,...]",
    help="Kafka bootstrap servers, comma-separated (default 127.0.0.1:9092).")

BROKER_WAIT_OPTION = click.option(
    "--broker-wait", type=int, default=None, metavar="SECONDS",
    help="Wait up to this long at start for the Kafka broker to answer, saying so once "
         "(PORTWATCH_BROKER_WAIT, default 30; 0: fail at once).")

PREFIX_OPTION = click.option(
    "--topic-prefix", envvar="PORTWATCH_TOPIC_PREFIX", default=None, metavar="PREFIX",
    help="Put PREFIX before every topic and consumer group name (one pipeline per prefix).")


_TARGET_OPTIONS = (
    click.argument("targets", nargs=-1, metavar="TARGET..."),
    click.option("-p", "--ports", default=None, metavar="SPEC",
                 help="TCP ports: 22,80,8000-8100, or 1-65535 (default: all)."),
    click.option("-u", "--udp", default=None, metavar="top1000|topN|none|SPEC",
                 callback=refuse_empty("give none to scan no UDP port"),
                 help="UDP ports: top1000 (nmap's most often open, default), topN (the N "
                      "most often open), none, or a spec like 53,123,161."),
    click.option("--org", "organization", default="", metavar="NAME",
                 help="Organization the command-line targets belong to."),
    click.option("--asset", default="", metavar="NAME",
                 help="Asset name for the command-line targets."),
    click.option("-i", "--inventory", type=click.Path(dir_okay=False), multiple=True,
                 metavar="FILE", help="CSV (target,organization,asset) or YAML inventory of "
                 "targets (repeatable: every file's targets are scanned)."),
    click.option("--only-org", "only_organization", default="", metavar="NAME",
                 help="Scan only the targets of this organization (any case): one "
                      "organization of a shared inventory."),
    click.option("--exclude", multiple=True, metavar="CIDR",
                 help="Never scan this address or block (repeatable)."),
    click.option("--exclude-file", type=click.Path(dir_okay=False), multiple=True,
                 metavar="FILE", help="File of addresses/blocks never to scan, one per line "
                 "(repeatable)."),
    click.option("--allow-large", is_flag=True,
                 help="Allow targets larger than a /16 (65,536 addresses)."),
)


def target_options(command: Any) -> Any:
    """What to scan, as ``scan`` and ``produce`` both take it (Assembly.scan_input)."""
    for decorate in reversed(_TARGET_OPTIONS):
        command = decorate(command)
    return command


def settings_from(**flags: Any) -> Any:
    """Validated settings from the flags given (None = not given) over the environment."""
    from portwatch.settings import Settings

    return Settings.from_env(**flags)


__all__ = [
    "BROKER_WAIT_OPTION",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "KAFKA_OPTION",
    "PREFIX_OPTION",
    "ORG_FILTER_OPTION",
    "STORE_OPTION",
    "TARGET_FILTER_OPTION",
    "PortwatchError",
    "err_console",
    "printable",
    "ALERTS_EMPTY",
    "refuse_empty",
    "exit_code_for",
    "fail",
    "one_line",
    "out_console",
    "say",
    "settings_from",
    "target_options",
]


class Seconds(click.ParamType):
    """A number of seconds from 0 to 30 days: click's FloatRange lets nan through (every
    comparison with it is false), and a deadline of nan or inf never came (a review:
    ``produce --wait nan`` waited for ever while the pipeline had lag)."""

    name = "seconds"
    LIMIT = 30 * 86400.0

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float | int) and not isinstance(value, bool):
            number = float(value)
        else:
            text = str(value).strip()
            try:
                # ASCII digits only, as every port spec: float() also reads '٣' and '1_0'
                if not text.isascii() or "_" in text:
                    raise ValueError(text)
                number = float(text)
            except ValueError:
                self.fail(f"{str(value)[:40]!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number) or not 0 <= number <= self.LIMIT:
            self.fail(f"{str(value)[:40]!r} is not a number of seconds from 0 to "
                      f"{self.LIMIT:,.0f} (30 days)", param, ctx)
        return number


SECONDS = Seconds()
