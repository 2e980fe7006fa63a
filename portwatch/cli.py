"""The ``portwatch`` command line: the command group, its commands, and ``main``.

Owns: the top-level group (help, version, verbosity), the explicit list of commands
(each lives in its own module and imports ``portwatch.console``, never this module:
no import cycle), and ``main``, which turns every error a user can cause into one
line on stderr and an exit code (``portwatch.console.exit_code_for``), never a
traceback.

Exit codes: 0 success, 1 runtime failure (store busy, broker down, engine error),
2 bad input (target, port spec, inventory, store URL, settings, checkpoint), 130
interrupted.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence

import click

from portwatch import log_filters
from portwatch.alerts.cli import accept, alerts, watch
from portwatch.changes_cli import prune_command, report_with_changes
from portwatch.console import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    exit_code_for,
    one_line,
    say,
)
from portwatch.distributed_cli import discover, process, produce
from portwatch.report_cli import report, show_settings
from portwatch.scan_cli import scan
from portwatch.web.cli import serve


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
      portwatch report changes --since 7d       # what opened, closed, changed
      portwatch serve                           # the reports as web pages and JSON
      portwatch watch --schedule schedules.yaml --alerts alerts.yaml   # monitor

    \b
    Distributed shape (Kafka): produce -> discover workers -> process (Faust).
    Every setting and its PORTWATCH_* variable: portwatch settings.

    Scan only what you own or are allowed to test.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="portwatch: %(levelname)s: %(message)s",
                        stream=sys.stderr)
    if not verbose:
        # The HTTP drivers log each retry and failure as a WARNING before the error they
        # raise, which portwatch reports in one line itself; -v shows them. (The child
        # logger: clickhouse_connect sets "urllib3" itself to WARNING when imported.)
        for noisy in ("urllib3.connectionpool", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    log_filters.install(verbose=bool(verbose))  # Kafka clients in an outage: no flood


COMMANDS: tuple[click.Command, ...] = (
    scan, report_with_changes(report), show_settings, serve, watch, alerts, accept,
    prune_command, produce, discover, process)
for _command in COMMANDS:
    cli.add_command(_command)


# click 8.2+ raises this for a group given nothing; 8.1 printed the help itself
_NO_ARGS_IS_HELP: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError",
                                            type("_Never", (Exception,), {}))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A closed stdout (``portwatch settings | head -1``)
    is a reader that has seen enough, not a failure: exit 0, quietly, whichever command
    was writing. Neither layer lets the BrokenPipeError through: rich's console turns it
    into SystemExit(1) (``Console.on_broken_pipe``) and click's ``main`` catches any EPIPE
    and calls ``sys.exit(1)``, each inside its ``except``, so the SystemExit carries the
    BrokenPipeError as its context."""
    try:
        return _run(argv)
    except BrokenPipeError:  # raised outside click (the help of `portwatch` alone)
        return _stdout_closed() if _stdout_is_broken() else EXIT_RUNTIME
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):
            return _stdout_closed() if _stdout_is_broken() else EXIT_RUNTIME
        raise


def _stdout_is_broken() -> bool:
    """Is stdout a pipe whose reader has gone (POLLERR), or already pointed at the null
    device (rich's answer to its broken pipe)? A broken pipe that was not stdout's (a
    write to stderr outside its console) is no reader that has seen enough: never a
    silent success (a review)."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & select.POLLERR for _fd, events in poller.poll(0)):
            return True
        now, null = os.fstat(fd), os.stat(os.devnull)
        return (now.st_rdev, now.st_ino) == (null.st_rdev, null.st_ino)
    except (AttributeError, OSError, ValueError):
        return True  # not a file we can ask: as before, the reader is taken to be gone


def _stdout_closed() -> int:
    """Point stdout at devnull so the interpreter's final flush of what is still
    buffered does not fail again (an "Exception ignored" line and exit 120), then exit 0:
    https://docs.python.org/3/library/signal.html#note-on-sigpipe"""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: nothing flushes to fd 1
        return 0
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    return 0


def _not_utf8(argv: Sequence[str]) -> str | None:
    """The first argument, or PORTWATCH_* variable, holding bytes that are not UTF-8
    (Python decodes them as lone surrogates, which no store, file or terminal takes:
    ``scan --org $'Ac\\xffme'`` scanned, then failed storing, with a traceback: a review)."""
    def bad(text: str) -> bool:
        return any("\udc80" <= ch <= "\udcff" for ch in text)

    for number, arg in enumerate(argv, 1):
        if bad(arg):
            shown = repr(arg[:60].encode("utf-8", "surrogateescape"))[2:-1]
            return f"argument {number} ('{shown}')"
    return next((name for name, value in os.environ.items()
                 if name.startswith("PORTWATCH_") and bad(value)), None)


def _one_line_message(message: str) -> str:
    """click's message on one line (its choice lists span several), the user's value as
    typed: a split and join squeezed 'very  common' into 'very common', which the same
    line then said is a choice (a review)."""
    return re.sub(r"[ \t]*\n\s*", " ", message.strip())


def _run(argv: Sequence[str] | None) -> int:
    where = _not_utf8(list(argv) if argv is not None else sys.argv[1:])
    if where is not None:
        say(f"error: {where} is not UTF-8 text (a byte of another encoding): write it in "
            "UTF-8")
        return EXIT_USAGE
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="portwatch",
                 standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns a Ctrl-C into Abort: said as the Ctrl-C it was (as below)
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)
        say("interrupted" if interrupted else "aborted")
        return EXIT_INTERRUPTED
    except _NO_ARGS_IS_HELP as exc:
        # `portwatch` or `portwatch alerts` alone: the help, as asked, not an error
        ctx = getattr(exc, "ctx", None)
        click.echo(ctx.get_help() if ctx is not None else str(exc))
        return 0
    except click.ClickException as exc:  # usage errors too: their exit_code is 2, EXIT_USAGE
        say(f"error: {_one_line_message(exc.format_message())}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)
        failed_output = _output_error(exc) if code is None else None
        if failed_output is not None:
            # standard output full, closed or gone: said so, not blamed on the store (a
            # full disk under `report ... > file` told the user to prune scans; a review)
            say(f"error: cannot write the output: {failed_output.strerror or failed_output}")
            return EXIT_RUNTIME
        if code is None and _is_disk_full(exc):
            # (prune rewrites tables: it needs 64 MiB free itself, store.MUTATION_MIN_FREE)
            say("error: no space left on the store's disk: free some (64 MiB free lets "
                "`portwatch prune` remove old scans) and run it again; what was stored "
                "before is kept")
            return EXIT_RUNTIME
        if code is None:
            raise  # a bug: the traceback is what a report needs
        prefix = "" if code == EXIT_INTERRUPTED else "error: "
        held = _held_by(exc)
        say(f"{prefix}{held or one_line(exc)}")
        return code
    return 0


def _held_by(exc: BaseException) -> str | None:
    """For a store held by a `serve` or a `watch --serve`: which, and what works
    meanwhile (the store's own message advised starting one with --serve, to a user
    whose store that very process held: a review)."""
    path = getattr(exc, "path", "")
    if type(exc).__name__ != "StoreBusy" or not isinstance(path, str) or not path:
        return None
    from portwatch.store_holder import busy_message

    return busy_message(path)


# How the engine and the OS say a write found no room (ClickHouse's code 243 and its
# "Cannot reserve" message, ENOSPC).
_DISK_FULL = ("NOT_ENOUGH_SPACE", "Cannot reserve", "No space left on device")


# Where standard output is written: an OSError raised through one of these is the
# output's, not the store's (the reports, settings and help print through them)
_OUTPUT_WRITERS = (os.path.join("rich", "console.py"), os.path.join("click", "utils.py"),
                   os.path.join("portwatch", "render.py"))
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EBADF, errno.EIO, errno.EDQUOT, errno.EFBIG})


def _output_error(exc: BaseException) -> OSError | None:
    """The OSError (of ``exc`` or one it was raised from) that writing standard output
    raised, if any: raised through the writers of ``_OUTPUT_WRITERS``."""
    for current in _chain(exc):
        if isinstance(current, OSError) and current.errno in _OUTPUT_ERRNOS:
            frames = traceback.extract_tb(current.__traceback__)
            if any(f.filename.endswith(_OUTPUT_WRITERS) for f in frames):
                return current
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and each error it was raised from (its cause, else its context), once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_disk_full(exc: BaseException) -> bool:
    """The error (or one it was raised from) is a full disk: no bug, the machine's state."""
    return any((isinstance(current, OSError) and current.errno == errno.ENOSPC)
               or any(mark in str(current) for mark in _DISK_FULL)
               for current in _chain(exc))


if __name__ == "__main__":
    sys.exit(main())
