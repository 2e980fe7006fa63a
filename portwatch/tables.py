"""Terminal tables that adapt to the width: which List columns fit, and the end-of-scan table.

Owns: the choice of optional List columns (organization, asset, risk reason: added in that
order while the table still fits the console, unless empty in every row), what a table too
wide for the terminal gives up (``fit_columns``: first what says nothing, then, named under
the table, the columns of ``NARROW_DROP``; past that one block per row, ``print_records``),
and the one end-of-scan table for all hosts (at most ``END_SCREEN_WIDTH`` columns; a long
target folds, an organization's too long word ends in an ellipsis). The text of each cell
comes from ``portwatch.render.cell_text`` (escaped).

Must not touch: the store (it renders the reports it is given), JSON or CSV output (they
keep every column whatever the width).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from stream_processors.store import Report

# Always shown in the List table (port and protocol apart: 53/udp is not 53/tcp).
LIST_BASE = ("target", "ip", "port", "proto", "service", "product", "version", "risk_color",
             "prevalence", "cdn_provider", "first_seen", "last_seen")
# Shown when the table still fits the console with them, in this order.
LIST_OPTIONAL = ("organization", "asset", "risk_reason")
END_SCREEN_WIDTH = 100
# A rich table with the default box and padding: one border before the first column, then
# per column one space each side and one border after.
_PER_COLUMN, _EDGE = 3, 1


def _natural_width(report: Report, column: str, header: str) -> int:
    from portwatch.render import cell_text

    index = report.columns.index(column)
    widest = max((len(cell_text(report.name, column, row[index])) for row in report.rows),
                 default=0)
    return max(len(header), widest)


def table_width(report: Report, columns: Sequence[str], headers: dict[str, str]) -> int:
    """Columns needed to show ``columns`` of ``report`` without wrapping any cell."""
    return _EDGE + sum(_natural_width(report, c, headers.get(c, c)) + _PER_COLUMN
                       for c in columns)


def list_columns(report: Report, width: int, headers: dict[str, str], *,
                 with_status: bool = False) -> tuple[str, ...]:
    """The List's base columns (and ``status``: `--history` with a closed port), plus
    each optional one (in order) while the table fits, the status counted (it was added
    after the choice, and pushed a table that fitted past the edge: a review)."""
    chosen = [c for c in LIST_BASE if c in report.columns]
    if with_status and "status" in report.columns:
        chosen.append("status")
    for column in LIST_OPTIONAL:
        if column not in report.columns:
            continue
        index = report.columns.index(column)
        if not any(row[index] for row in report.rows):
            continue  # empty in every row (no organization given): it would say nothing
        trial = [*chosen, column]
        if table_width(report, trial, headers) <= width:
            chosen = trial
    # organization and asset read best beside the target; the reason beside the risk
    order = ("target", "ip", "organization", "asset", "port", "status", "proto", "service",
             "product", "version", "risk_color", "risk_reason", "prevalence",
             "cdn_provider", "first_seen", "last_seen")
    return tuple(c for c in order if c in chosen)


def _said_with(report: Report, column: str, other: str,
               say: Callable[[Any, Any], Any]) -> Report:
    """``report`` with each ``column`` cell replaced by ``say(cell, other's cell)``."""
    if column not in report.columns or other not in report.columns:
        return report
    at, by = report.columns.index(column), report.columns.index(other)
    rows = [(*row[:at], say(row[at], row[by]), *row[at + 1:]) for row in report.rows]
    return Report(report.name, report.columns, rows)


def with_cdn_verdict(report: Report) -> Report:
    """The List for a terminal: the CDN cell says when the port is one the CDN's edge is
    expected to leave open, e.g. "cloudflare · expected", as the web List does (the
    table said the provider alone: a discounted port and a scored one read the same;
    a review)."""
    return _said_with(report, "cdn_provider", "is_cdn_expected",
                      lambda cdn, expected: f"{cdn} · expected" if cdn and expected else cdn)


def with_prevalence_source(report: Report) -> Report:
    """The List for a terminal: the prevalence bucket says which count decided it,
    e.g. "very common (Internet)" (stream_processors/prevalence_prior.py)."""
    return _said_with(report, "prevalence", "prevalence_source",
                      lambda bucket, source: f"{bucket} ({source})" if source else bucket)


# -- a table narrower than its text -------------------------------------------------------------

# A word longer than this folds (a hostname, a certificate subject); a shorter one stays
# whole. A target or an address folds only past an IPv4 address's length.
WORD_CAP, ADDRESS_CAP = 12, 15
_CAPS = {"ip": ADDRESS_CAP, "target": ADDRESS_CAP}
# Per table, what a terminal too narrow for every column gives up, first to last, once the
# columns that say nothing are gone (empty in every row; an address equal to the target in
# every row). The caption under the table names what was left out.
NARROW_DROP: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "summary": ("score_parts", "last_scanned", "asset", "scan_note", "organization", "ip"),
    "list": ("risk_reason", "asset", "organization", "last_seen", "cdn_provider",
             "prevalence", "ip", "first_seen"),
    "products": ("services", "colors"),
    "ciphers": ("jarm", "profile", "cert_warnings", "reached_via", "cert_subject", "ip",
                "error", "suites"),
    "changes": ("asset", "organization", "ip", "proto", "severity"),
    # (a tuple goes, and comes back, as one: red and green without yellow misread)
    "end": ("organization", ("green", "yellow"), "ip"),
}
# A block's value goes under its label, not beside it, when beside it would leave it
# fewer columns than this.
_BESIDE_AT_LEAST = 16


@dataclass(frozen=True)
class Fitted:
    """The columns a terminal table shows (in their order), the columns it left out that
    had something to say (named under the table), whether no table fits at all (then one
    block per row, every column), and, when the table is narrower than its text, each
    shown column's width (at least its readable width: rich, left to share the room
    itself, squeezed a column it had no minimum for to nothing)."""

    columns: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    records: bool = False
    widths: tuple[int, ...] = ()

    def caption(self, headers: Mapping[str, str], width: int | None = None,
                whole: str = "--format json has every column") -> str:
        """The line under the table naming what it left out (``width``: the terminal's,
        when that is what decided)."""
        if not self.dropped:
            return ""
        names = ", ".join(headers.get(c, c.replace("_", " ")) for c in self.dropped)
        at = f" at {width} columns" if width is not None else ""
        return f"not shown{at}: {names} ({whole})"

    def width_of(self, column: str) -> int | None:
        return self.widths[self.columns.index(column)] if self.widths else None


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def readable_width(header: str, cells: Sequence[str], *, whole: bool = False,
                   cap: int = WORD_CAP) -> int:
    """The narrowest a column reads at: its header's longest word, and each cell's longest
    word up to ``cap`` (longer ones fold); for a number (``whole``: never wrapped, its
    header neither), each whole cell and the whole header."""
    if whole:
        return _natural_cells_width(header, cells)
    widest = max((min(_longest_word(c), cap) for c in cells), default=0)
    return max(_longest_word(header), widest)


def _natural_cells_width(header: str, cells: Sequence[str]) -> int:
    return max([cell_len(header), *(cell_len(line) for c in cells for line in c.splitlines())])


def _share(room: int, low: Sequence[int], high: Sequence[int]) -> tuple[int, ...]:
    """Widths from ``low`` up, the ``room`` left handed out a column at a time to those
    still under ``high``."""
    widths = list(low)
    spare = room - sum(widths)
    while spare > 0:
        grew = False
        for i, most in enumerate(high):
            if spare and widths[i] < most:
                widths[i] += 1
                spare -= 1
                grew = True
        if not grew:
            break
    return tuple(widths)


def fit_columns(table: str, columns: Sequence[str], cells: Mapping[str, Sequence[str]],
                headers: Mapping[str, str], width: int, *,
                whole: frozenset[str] = frozenset(),
                left_out: Sequence[str] = (),
                blocks: Sequence[str] | None = None) -> Fitted:
    """Which of ``columns`` (their ``cells`` as printed, per column) a terminal ``width``
    wide shows, and how wide. All of them, as rich lays them out, when they fit unfolded
    and nothing was ``left_out`` before (the List's optional columns that did not fit:
    named first). Otherwise, first the ones that say nothing go (empty in every row;
    ``ip`` equal to ``target`` in every row); then, while the rest cannot all be shown
    at their readable width (``readable_width``), those of ``NARROW_DROP[table]`` in its
    order; the room left is shared out up to each column's unfolded width. When even
    that does not fit: ``records``, with every column of ``blocks`` (default
    ``columns``) but those that say nothing."""
    def header(c: str) -> str:
        return headers.get(c, c.replace("_", " "))

    def readable(c: str) -> int:
        return readable_width(header(c), cells[c], whole=c in whole, cap=_CAPS.get(c, WORD_CAP))

    def needs(chosen: Sequence[str], each: Callable[[str], int]) -> int:
        return _EDGE + sum(_PER_COLUMN + each(c) for c in chosen)

    def natural(c: str) -> int:
        return _natural_cells_width(header(c), cells[c])

    if needs(columns, natural) <= width:
        return Fitted(tuple(columns), tuple(left_out))
    target = cells.get("target")

    def says_something(c: str) -> bool:
        return (any(v.strip() for v in cells[c])
                and not (c == "ip" and target is not None and list(cells[c]) == list(target)))

    chosen = [c for c in columns if says_something(c)]
    # the address is a host's name where its target is not (a range scan's hosts all
    # have the target 198.18.30.0/24): never given up when one target has several
    # addresses (rows that all read the same: a review)
    address = cells.get("ip")
    named = set(zip(target, address, strict=True)) if target and address else set()
    keep = {"ip"} if len({t for t, _ in named}) < len(named) else set()
    given_up: list[tuple[str, ...]] = []
    for entry in NARROW_DROP.get(table, ()):
        if needs(chosen, readable) <= width:
            break
        unit = tuple(c for c in ((entry,) if isinstance(entry, str) else entry)
                     if c in chosen and c not in keep)
        if unit:
            chosen = [c for c in chosen if c not in unit]
            given_up.append(unit)
    if needs(chosen, readable) > width:
        return Fitted(tuple(c for c in (columns if blocks is None else blocks)
                            if says_something(c)), records=True)
    # what was given up before the last one (the one whose going made the room: an IPv6
    # address after green and yellow) may fit again: most needed first, and none past
    # one that does not fit (green came back while yellow stayed out: a review)
    for rank, unit in enumerate(reversed(given_up)):
        trial = [c for c in columns if c in chosen or c in unit]
        if needs(trial, readable) > width:
            if rank == 0:
                continue
            break
        chosen = trial
        given_up.remove(unit)
    dropped = [*left_out, *(c for unit in given_up for c in unit)]
    room = width - needs(chosen, lambda _c: 0)
    widths = _share(room, [readable(c) for c in chosen], [natural(c) for c in chosen])
    return Fitted(tuple(chosen), tuple(dropped), widths=widths)


def print_records(console: Console, title: str, columns: Sequence[str],
                  headers: Mapping[str, str], rows: Sequence[Sequence[Text]]) -> None:
    """One block per row, a column's header beside its value (psql's expanded display),
    or above it when beside it would leave the value too few columns: for a terminal too
    narrow for any readable table of these columns."""
    labels = [headers.get(column, column.replace("_", " ")) for column in columns]
    beside = console.width - max(map(cell_len, labels), default=0) - 1 >= _BESIDE_AT_LEAST
    console.print(Text(title, style="italic"), overflow="fold")
    for number, row in enumerate(rows, 1):
        console.print(Text(f"-- {number} --", style="dim"))
        if beside:
            block = Table.grid(padding=(0, 1))
            block.add_column(style="bold", no_wrap=True)
            block.add_column(overflow="fold")
            for label, cell in zip(labels, row, strict=True):
                block.add_row(label, cell)
            console.print(block)
            continue
        for label, cell in zip(labels, row, strict=True):
            console.print(Text(label, style="bold"), overflow="fold")
            # every line of the value indented, not only its first (a review)
            value = cell.copy()
            value.overflow = "fold"
            console.print(Padding(value, (0, 0, 0, min(2, max(0, console.width - 1)))))


# -- end of a scan ------------------------------------------------------------------------------

# (column, header, justify, overflow): numbers never wrap; names wrap at spaces and end in an
# ellipsis only when one word is longer than the column.
END_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("target", "target", "left", "fold"),  # cut, two long names read the same: folded
    ("ip", "address", "left", "ellipsis"),
    ("organization", "organization", "left", "ellipsis"),
    ("open_ports", "open", "right", "ellipsis"),
    ("red", "red", "right", "ellipsis"),
    ("yellow", "yellow", "right", "ellipsis"),
    ("green", "green", "right", "ellipsis"),
    ("risk_score", "score", "right", "ellipsis"),
    ("grade", "grade", "center", "ellipsis"),
    ("is_tarpit", "flags", "left", "ellipsis"),
)
_COLOR_STYLE = {"red": "bold red", "yellow": "bold yellow", "green": "bold green"}
_END_HEADERS = {column: header for column, header, _j, _o in END_COLUMNS}
# never folded or cut: the counts, the score, the grade and the address (a table too
# narrow for an IPv6 address leaves the column out, named)
_END_WHOLE = frozenset({"ip", *(c for c, _h, justify, _o in END_COLUMNS if justify != "left")})


def end_screen_table(rows: Sequence[dict[str, Any]], title: str,
                     width: int = END_SCREEN_WIDTH) -> Table | None:
    """One table, one row per scanned host, for the end of a scan, ``width`` columns at
    most (what it leaves out named under it: ``fit_columns``); None when no table of
    these hosts reads at that width (``print_end_screen`` then prints one block each)."""
    fitted, cells = _end_screen_cells(rows, width)
    return None if fitted.records else _end_table(title, fitted, cells, len(rows))


def _end_table(title: str, fitted: Fitted, cells: Mapping[str, Sequence[Text]],
               count: int) -> Table:
    table = Table(title=title, header_style="bold", expand=False,
                  caption=fitted.caption(_END_HEADERS, whole="portwatch report summary "
                                         "--format json has every column") or None)
    shown = [c for c in END_COLUMNS if c[0] in fitted.columns]
    # one-word flags whole ("interrupted" was cut to "interrupt…": the other columns give
    # way); the tarpit's several words wrap
    one_word = all(len(t.plain.split()) <= 1 for t in cells.get("is_tarpit", ()))
    for column, header, justify, overflow in shown:
        numeric = justify == "right"
        table.add_column(header, justify=justify, overflow=overflow,  # type: ignore[arg-type]
                         no_wrap=numeric or column in ("ip", "grade")
                         or (column == "is_tarpit" and one_word),
                         width=fitted.width_of(column))
    for i in range(count):
        table.add_row(*(cells[column][i] for column, _h, _j, _o in shown))
    return table


def _end_screen_cells(rows: Sequence[dict[str, Any]], width: int
                      ) -> tuple[Fitted, dict[str, list[Text]]]:
    """The end screen's cells by column (flags only when a host has one), and which of
    those columns fit ``width``."""
    from portwatch.render import cell_text, summary_flags

    flags = [summary_flags(r.get("is_tarpit"), r.get("scan_status")) for r in rows]
    cells: dict[str, list[Text]] = {}
    for column, _header, _justify, _overflow in END_COLUMNS:
        if column == "is_tarpit":
            if any(flags):
                cells[column] = [Text(f) for f in flags]
            continue
        cells[column] = [Text(cell_text("summary", column, r.get(column)),
                              style=_COLOR_STYLE.get(column, "") if r.get(column) else "")
                         for r in rows]
    fitted = fit_columns("end", list(cells), {c: [t.plain for t in v] for c, v in cells.items()},
                         _END_HEADERS, width, whole=_END_WHOLE)
    return fitted, cells


def print_end_screen(console: Console, rows: Sequence[dict[str, Any]], title: str) -> None:
    """The end-of-scan table, at most ``END_SCREEN_WIDTH`` columns wide (one block per
    host on a terminal too narrow for any table of them)."""
    if not rows:
        console.print(Text("summary: no host in the store for this scan"))
        return
    width = min(console.width, END_SCREEN_WIDTH)
    fitted, cells = _end_screen_cells(rows, width)
    if fitted.records:
        print_records(console, title, fitted.columns, _END_HEADERS,
                      [[cells[c][i] for c in fitted.columns] for i in range(len(rows))])
        return
    console.print(_end_table(title, fitted, cells, len(rows)), width=width)


__all__ = ["END_SCREEN_WIDTH", "LIST_BASE", "LIST_OPTIONAL", "NARROW_DROP", "Fitted",
           "end_screen_table", "fit_columns", "print_records", "readable_width",
           "list_columns", "print_end_screen", "table_width", "with_prevalence_source"]
