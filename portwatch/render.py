"""Rendering reports for people and programs: table (terminal), json, csv.

Owns: turning a ``Report`` (columns + rows from the store) into text. Every
value that came from the network (banners, products, hostnames, certificate
fields) is printed escaped: terminal tables use rich ``Text`` cells (no markup
interpretation) after ``sanitize_text`` removes control characters, so a
hostile banner cannot move the cursor or recolour the screen.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stream_processors.store import Report

COLOR_STYLE = {"green": "bold green", "yellow": "bold yellow", "red": "bold red"}
FORMATS = ("table", "json", "csv")

# Columns shown in the terminal table per report (json/csv carry every column).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "summary": ("target", "ip", "asset", "organization", "open_ports", "ports", "risk_score",
                "grade", "score_parts", "is_tarpit", "scan_note", "last_scanned"),
    # list: base columns plus the optional ones that fit (portwatch/tables.py)
    "list": ("target", "ip", "port", "proto", "service", "product", "version", "risk_color",
             "prevalence", "cdn_provider", "first_seen", "last_seen"),
    "products": ("product", "version", "services", "instances", "targets", "colors"),
    "ciphers": ("target", "ip", "port", "reached_via", "outcome", "error", "versions",
                "grade", "profile", "suites", "cert_subject", "cert_not_after",
                "cert_days_to_expiry", "cert_warnings", "jarm"),
    "changes": ("observed_at", "severity", "kind", "target", "ip", "port", "proto", "before",
                "after", "organization", "asset"),
}
# Never folded in a terminal table: a part of a number reads as another number
WHOLE_NUMBERS = frozenset({"port", "open_ports", "risk_score", "instances", "targets",
                           "cert_days_to_expiry"})
HEADERS = {"ip": "address", "risk_color": "risk", "cdn_provider": "CDN",
           "first_seen": "first detected", "last_seen": "last seen", "is_tarpit": "flags",
           "score_parts": "score parts", "open_ports": "open", "risk_score": "score",
           "reached_via": "via", "cert_days_to_expiry": "days left",
           "cert_warnings": "certificate warnings", "profile": "Mozilla 5.7",
           "scan_note": "note", "risk_reason": "risk reason", "error": "why"}


def sanitize_text(value: str, limit: int = 200) -> str:
    """Drop terminal control characters (ESC, CSI, BEL...) from text we print."""
    cleaned = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


UNCONFIRMED = "open|filtered"  # a UDP port that never answered: listed, not scored


def _port_chip(item: Sequence[Any]) -> str:
    """A Summary port as text: ``53/udp:yellow``, with ``,cdn`` for a CDN-expected port
    and ``,unconfirmed`` for an open|filtered one (both score nothing)."""
    port, proto, color, is_cdn_expected = item[0], item[1], item[2], item[3]
    suffix = ",cdn" if is_cdn_expected else ""
    if len(item) > 4 and item[4] == UNCONFIRMED:
        suffix += ",unconfirmed"
    return f"{port}/{proto}:{color}{suffix}"


def _suite_line(item: Sequence[Any]) -> str:
    return f"{item[0]} {item[1]} ({item[3]})" if len(item) > 3 else str(item)


def suites_summary(suites: Sequence[Any]) -> str:
    """Per protocol version: how many suites, how many weak (the terminal table; json and
    csv keep every suite). A postfix with 91 suites is four lines, not ninety."""
    counts: dict[str, list[int]] = {}
    for item in suites:
        if len(item) > 3:
            total_weak = counts.setdefault(sanitize_text(str(item[0]), 20), [0, 0])
            total_weak[0] += 1
            total_weak[1] += item[3] == "weak"
    return "\n".join(f"{version}: {total}" + (f" ({weak} weak)" if weak else "")
                     for version, (total, weak) in counts.items())


def cell_text(report: str, column: str, value: Any) -> str:
    if column == "ports" and isinstance(value, list | tuple):
        return " ".join(_port_chip(v) for v in value)
    if column == "suites" and isinstance(value, list | tuple):
        return "; ".join(_suite_line(v) for v in value)
    if column == "versions" and isinstance(value, list | tuple):
        # stored text from another writer (a distributed record, an older store) may
        # hold ESC or U+202E: escaped like every other cell
        return sanitize_text(",".join(map(str, value)))
    if column in ("cert_warnings", "profile_reasons") and isinstance(value, list | tuple):
        return sanitize_text("; ".join(map(str, value)), 400)
    if column == "cert_not_after" and isinstance(value, str):
        return sanitize_text(value[:10])  # the date; the countdown is its own column
    if column == "is_tarpit":
        return "answers on every port" if value else ""
    if column in ("cert_self_signed", "cert_expired", "is_cdn_expected"):
        return "yes" if value else ""
    if column == "cdn_provider":
        return sanitize_text(str(value or ""))  # a store another writer filled, too
    plain = _plain(value)
    return sanitize_text("" if plain is None else str(plain))


def jsonable(column: str, value: Any) -> Any:
    """A report value as JSON, one shape for ``--format json``, the downloads and the API:
    times ISO 8601 in UTC (``2026-12-01T08:00:00Z``), objects for port and suite tuples."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if column == "ports" and isinstance(value, list | tuple):
        return [{"port": p[0], "proto": p[1], "color": p[2], "is_cdn_expected": bool(p[3]),
                 "state": p[4] if len(p) > 4 else "open"} for p in value]
    if column == "suites" and isinstance(value, list | tuple):
        keys = ("tls_version", "iana_name", "openssl_name", "strength", "reason",
                "kex_group", "kex_bits", "preference")
        return [dict(zip(keys, s, strict=False)) for s in value]
    if isinstance(value, list | tuple):
        return [jsonable(column, v) for v in value]
    return value


def to_json(report: Report) -> str:
    rows = [{k: jsonable(k, v) for k, v in row.items()} for row in report.dicts()]
    return json.dumps(rows, indent=2, ensure_ascii=True)


# OWASP "CSV Injection": a cell starting with one of these is read as a formula by
# spreadsheets; prefixing a single quote makes it text. Tab and CR are in OWASP's list
# because some spreadsheets strip them and then see the next character.
# https://owasp.org/www-community/attacks/CSV_Injection
_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(report: str, column: str, value: Any) -> Any:
    """One CSV cell: the stored value itself (no control-character escaping, no length
    cut: issue 11, defect 8), text defused against formula injection. Numbers stay
    numbers (a negative count is not a formula); lists keep their report rendering."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | tuple) and column in ("ports", "suites", "versions"):
        text = cell_text(report, column, value)
    elif isinstance(value, list | tuple):
        text = json.dumps(_plain(value), ensure_ascii=False)
    else:
        plain = _plain(value)
        text = plain if isinstance(plain, str) else str(plain)
    return "'" + text if text.startswith(_FORMULA_TRIGGERS) else text


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow([csv_cell(report.name, c, v) for c, v in zip(report.columns, row,
                                                                         strict=True)])
    return buf.getvalue()


def _styled(report: str, column: str, value: Any) -> Text:
    if column == "ports" and isinstance(value, list | tuple):
        text = Text()
        for i, item in enumerate(value):
            if i:
                text.append(" ")
            # the colour's word too: colour is never the only signal
            text.append(_port_chip(item), style=COLOR_STYLE.get(str(item[2]), ""))
        return text
    if column == "suites" and isinstance(value, list | tuple):
        return Text(suites_summary(value))
    plain = cell_text(report, column, value)
    if column in ("risk_color", "color") and plain in COLOR_STYLE:
        return Text(plain, style=COLOR_STYLE[plain])
    if column == "grade":
        style = {"A": "green", "B": "green", "C": "yellow", "D": "red", "F": "bold red"}
        return Text(plain, style=style.get(plain, ""))
    return Text(plain)


def summary_flags(is_tarpit: Any, scan_status: Any) -> str:
    """The Summary's flags cell: a host that answers on every port, and a latest scan
    that did not complete (the web page flags it; the terminal showed a host an
    interrupted scan never reached as scanned and clean, grade A: a review)."""
    flags = ["answers on every port"] if is_tarpit else []
    if scan_status and scan_status != "completed":
        flags.append(sanitize_text(str(scan_status), 40))  # "interrupted", "error"
    return "; ".join(flags)


def to_table(report: Report, console: Console, *, title: str = "") -> None:
    from portwatch.tables import fit_columns, print_records

    wanted = [c for c in TABLE_COLUMNS.get(report.name, report.columns) if c in report.columns]
    every = wanted  # what one block per row shows, when no table fits
    left_out: list[str] = []
    if report.name == "list":
        from portwatch.tables import list_columns, with_cdn_verdict, with_prevalence_source

        report = with_cdn_verdict(with_prevalence_source(report))
        # --history: ports no longer seen are marked closed, with when, in the table too
        current = (report.columns.index("is_current") if "is_current" in report.columns
                   else None)
        closed = current is not None and any(not row[current] for row in report.rows)
        wanted = list(list_columns(report, console.width, HEADERS, with_status=closed))
        every = list(list_columns(report, sys.maxsize, HEADERS, with_status=closed))
        # the optional columns that did not fit (not empty: those are never chosen)
        left_out = [c for c in every if c not in wanted]
    if not report.rows:
        console.print(Text(f"{report.name}: no rows (nothing stored matches the filters)"))
        return
    index = {c: i for i, c in enumerate(report.columns)}
    status = index.get("scan_status")
    cells = {c: [Text(summary_flags(row[index[c]], row[status] if status is not None else ""))
                 if c == "is_tarpit" and report.name == "summary"
                 else _styled(report.name, c, row[index[c]]) for row in report.rows]
             for c in every}
    title = title or f"{report.name.capitalize()} report"
    # a terminal too narrow for every column: what says nothing goes, then what matters
    # least, named under the table (at 80 columns every header and address folded
    # mid-word, "tar/get", "127./0.0./1"); past that, one block per row
    plain = {c: [t.plain for t in v] for c, v in cells.items()}
    fitted = fit_columns(report.name, wanted, plain, HEADERS, console.width,
                         whole=WHOLE_NUMBERS, left_out=left_out, blocks=every)
    if fitted.records:
        print_records(console, title, fitted.columns, HEADERS,
                      [[cells[c][i] for c in fitted.columns] for i in range(len(report.rows))])
        return
    table = Table(title=title, show_lines=False, header_style="bold", expand=False,
                  caption=fitted.caption(HEADERS, console.width) or None)
    for column in fitted.columns:
        # words fold where they must; a number not: port 20022 printed as "2002" over
        # "2" at 80 columns, read as another port (a review). Not wrapped, its column
        # is the last to give way (a minimum width instead pushed the table past the
        # terminal's edge, which cut its last column: a review)
        table.add_column(HEADERS.get(column, column.replace("_", " ")), overflow="fold",
                         no_wrap=column in WHOLE_NUMBERS, width=fitted.width_of(column))
    for i in range(len(report.rows)):
        table.add_row(*(cells[c][i] for c in fitted.columns))
    console.print(table)


def render(report: Report, fmt: str, console: Console) -> None:
    if fmt == "json":
        # Straight to the file: console.print would still turn ":smile:" into an emoji
        # (rich's emoji codes are not markup), and JSON must carry what is stored.
        console.file.write(to_json(report) + "\n")
    elif fmt == "csv":
        console.file.write(to_csv(report))
    else:
        to_table(report, console)
