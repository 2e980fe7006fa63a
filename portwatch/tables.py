"""Terminal tables that adapt to the width: which List columns fit, and the end-of-scan table.

Owns: the choice of optional List columns (organization, asset, risk reason: added in that
order while the table still fits the console, unless empty in every row), and the one
end-of-scan table for all hosts (at most ``END_SCREEN_WIDTH`` columns; long words end in
an ellipsis instead of being broken mid-word). The text of each cell comes from
``portwatch.render.cell_text`` (escaped).

Must not touch: the store (it renders the reports it is given), JSON or CSV output (they
keep every column whatever the width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
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


def with_prevalence_source(report: Report) -> Report:
    """The List for a terminal: the prevalence bucket says which count decided it,
    e.g. "very common (Internet)" (stream_processors/prevalence_prior.py)."""
    if "prevalence" not in report.columns or "prevalence_source" not in report.columns:
        return report
    bucket, source = report.columns.index("prevalence"), report.columns.index(
        "prevalence_source")
    rows = [(*row[:bucket], f"{row[bucket]} ({row[source]})" if row[source] else row[bucket],
             *row[bucket + 1:]) for row in report.rows]
    return Report(report.name, report.columns, rows)


# -- end of a scan ------------------------------------------------------------------------------

# (column, header, justify, overflow): numbers never wrap; names wrap at spaces and end in an
# ellipsis only when one word is longer than the column.
END_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("target", "target", "left", "ellipsis"),
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


def end_screen_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """One table, one row per scanned host, for the end of a scan."""
    from portwatch.render import cell_text, summary_flags

    table = Table(title=title, header_style="bold", expand=False)
    flags = [summary_flags(r.get("is_tarpit"), r.get("scan_status")) for r in rows]
    shown = [c for c in END_COLUMNS if c[0] != "is_tarpit" or any(flags)]
    # one-word flags whole ("interrupted" was cut to "interrupt…": the other columns give
    # way); the tarpit's several words wrap
    one_word = all(len(f.split()) <= 1 for f in flags)
    for column, header, justify, overflow in shown:
        numeric = justify == "right"
        table.add_column(header, justify=justify, overflow=overflow,  # type: ignore[arg-type]
                         no_wrap=numeric or column in ("ip", "grade")
                         or (column == "is_tarpit" and one_word))
    for row, flagged in zip(rows, flags, strict=True):
        cells = []
        for column, _header, _justify, _overflow in shown:
            value = row.get(column)
            if column == "is_tarpit":
                text = flagged
            else:
                text = cell_text("summary", column, value)
            cells.append(Text(text, style=_COLOR_STYLE.get(column, "") if value else ""))
        table.add_row(*cells)
    return table


def print_end_screen(console: Console, rows: Sequence[dict[str, Any]], title: str) -> None:
    """The end-of-scan table, at most ``END_SCREEN_WIDTH`` columns wide."""
    if not rows:
        console.print(Text("summary: no host in the store for this scan"))
        return
    console.print(end_screen_table(rows, title), width=min(console.width, END_SCREEN_WIDTH))


__all__ = ["END_SCREEN_WIDTH", "LIST_BASE", "LIST_OPTIONAL", "end_screen_table",
           "list_columns", "print_end_screen", "table_width", "with_prevalence_source"]
