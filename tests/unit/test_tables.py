"""Terminal tables that fit (portwatch/tables.py): the List's protocol column and the
optional organization/asset/risk-reason columns by width, and the one end-of-scan table.

Given fixed reports, when rendered on consoles of given widths, then the output is exactly
the expected text: 53/udp and 53/tcp are two rows told apart by the proto column; the
optional columns appear only where they fit; the end-of-scan table is one table for every
host, never wider than 100 columns, and never breaks a word in the middle.
"""

from __future__ import annotations

import io
import re
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

from portwatch.render import HEADERS, WHOLE_NUMBERS, to_table
from portwatch.tables import (
    END_SCREEN_WIDTH,
    Fitted,
    fit_columns,
    list_columns,
    print_end_screen,
    table_width,
)
from stream_processors.store import Report

WHEN = datetime(2026, 11, 30, 8, 15, 0)
COLUMNS = ("target", "ip", "hostname", "asset", "organization", "port", "proto", "service",
           "product", "version", "risk_color", "risk_reason", "prevalence", "cdn_provider",
           "first_seen", "last_seen")
LIST = Report("list", COLUMNS, [
    ("ns1.example.test", "198.18.0.53", "ns1.example.test", "dns-1", "Example Corp", 53, "udp",
     "domain", "", "", "green", "public DNS service", "very common", "", WHEN, WHEN),
    ("ns1.example.test", "198.18.0.53", "ns1.example.test", "dns-1", "Example Corp", 53, "tcp",
     "domain", "", "", "green", "public DNS service", "very common", "", WHEN, WHEN),
    ("db.example.test", "198.18.0.7", "db.example.test", "db-1", "Other Org", 6379, "tcp",
     "redis", "Redis key-value store", "7.0.15", "red", "a cache exposed to the Internet",
     "less common", "", WHEN, WHEN),
])
HOSTS = [
    {"target": "db.example.test", "ip": "198.18.0.7", "organization": "Other Org",
     "open_ports": 3, "red": 1, "yellow": 1, "green": 1, "risk_score": 29.5, "grade": "C",
     "is_tarpit": 0},
    {"target": "a-very-long-hostname-that-goes-on-and-on.internal.example.test",
     "ip": "198.18.0.53", "organization": "Example Corporation International Holdings",
     "open_ports": 2, "red": 0, "yellow": 0, "green": 2, "risk_score": 4.9, "grade": "A",
     "is_tarpit": 0},
    {"target": "127.0.0.1", "ip": "127.0.0.1", "organization": "", "open_ports": 0, "red": 0,
     "yellow": 0, "green": 0, "risk_score": 0.0, "grade": "A", "is_tarpit": 0},
]


def rendered(width: int, draw) -> list[str]:  # type: ignore[no-untyped-def]
    buf = io.StringIO()
    draw(Console(file=buf, width=width, color_system=None))
    return [line.rstrip() for line in buf.getvalue().splitlines()]


def test_list_at_250_columns_shows_protocol_organization_asset_and_reason() -> None:
    lines = rendered(250, lambda c: to_table(LIST, c))
    assert lines[2] == (
        "┃ target           ┃ address     ┃ organization ┃ asset ┃ port ┃ proto ┃ service ┃ "
        "product               ┃ version ┃ risk  ┃ risk reason                     ┃ "
        "prevalence  ┃ CDN ┃ first detected      ┃ last seen           ┃")
    assert lines[4:7] == [
        "│ ns1.example.test │ 198.18.0.53 │ Example Corp │ dns-1 │ 53   │ udp   │ domain  │    "
        "                   │         │ green │ public DNS service              │ very common │ "
        "    │ 2026-11-30 08:15:00 │ 2026-11-30 08:15:00 │",
        "│ ns1.example.test │ 198.18.0.53 │ Example Corp │ dns-1 │ 53   │ tcp   │ domain  │    "
        "                   │         │ green │ public DNS service              │ very common │ "
        "    │ 2026-11-30 08:15:00 │ 2026-11-30 08:15:00 │",
        "│ db.example.test  │ 198.18.0.7  │ Other Org    │ db-1  │ 6379 │ tcp   │ redis   │ Red"
        "is key-value store │ 7.0.15  │ red   │ a cache exposed to the Internet │ less common │ "
        "    │ 2026-11-30 08:15:00 │ 2026-11-30 08:15:00 │"]
    assert len(lines) == 8


def test_list_at_190_columns_drops_the_reason_first() -> None:
    lines = rendered(190, lambda c: to_table(LIST, c))
    assert lines[2] == (
        "┃ target           ┃ address     ┃ organization ┃ asset ┃ port ┃ proto ┃ service ┃ "
        "product               ┃ version ┃ risk  ┃ prevalence  ┃ CDN ┃ first detected      ┃ "
        "last seen           ┃")
    assert max(len(line) for line in lines) <= 190


@pytest.mark.parametrize(("width", "optional"), [
    (250, ("organization", "asset", "risk_reason")), (190, ("organization", "asset")),
    (185, ("organization",)), (130, ()), (60, ())])
def test_optional_list_columns_by_width(width: int, optional: tuple[str, ...]) -> None:
    chosen = list_columns(LIST, width, HEADERS)
    assert tuple(c for c in chosen if c in ("organization", "asset", "risk_reason")) == optional
    assert ("port", "proto") == chosen[chosen.index("port"):chosen.index("port") + 2]
    if optional:
        assert table_width(LIST, chosen, HEADERS) <= width


def test_list_skips_an_optional_column_empty_in_every_row() -> None:
    # Given a List with no organization anywhere (none given at the scan)
    blank = Report("list", COLUMNS, [(*row[:4], "", *row[5:]) for row in LIST.rows])
    # Then a wide terminal shows the asset and reason, not an empty organization column
    chosen = list_columns(blank, 250, HEADERS)
    assert "organization" not in chosen and {"asset", "risk_reason"} <= set(chosen)


@pytest.mark.parametrize("width", [210, 250])
def test_list_history_counts_its_status_column_when_choosing(width: int) -> None:
    # Given `--history` with a closed port (its status column shown)
    columns = (*COLUMNS, "is_current", "status")
    history = Report("list", columns, [
        (*row, index != 2, "open" if index != 2 else "closed 2026-11-29 08:15")
        for index, row in enumerate(LIST.rows)])
    # Then the table, status column and all, still fits a terminal its base columns fit
    # (the status was added after the optional columns were chosen: a word split, dates
    # wrapped; a review), the status beside the port
    lines = rendered(width, lambda c: to_table(history, c))
    assert max(len(line) for line in lines) <= width
    assert "closed 2026-11-29 08:15" in "\n".join(lines)
    chosen = list_columns(history, width, HEADERS, with_status=True)
    assert chosen[chosen.index("port") + 1] == "status"
    assert table_width(history, chosen, HEADERS) <= width


END_AT_100 = """\
                                              Summary
┏━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┳━━━━━━┳━━━━━┳━━━━━━━━┳━━━━━━━┳━━━━━━━┳━━━━━━━┓
┃ target             ┃ address     ┃ organization    ┃ open ┃ red ┃ yellow ┃ green ┃ score ┃ grade ┃
┡━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━╇━━━━━━╇━━━━━╇━━━━━━━━╇━━━━━━━╇━━━━━━━╇━━━━━━━┩
│ db.example.test    │ 198.18.0.7  │ Other Org       │    3 │   1 │      1 │     1 │  29.5 │   C   │
│ a-very-long-hostna │ 198.18.0.53 │ Example         │    2 │   0 │      0 │     2 │   4.9 │   A   │
│ me-that-goes-on-an │             │ Corporation     │      │     │        │       │       │       │
│ d-on.internal.exam │             │ International   │      │     │        │       │       │       │
│ ple.test           │             │ Holdings        │      │     │        │       │       │       │
│ 127.0.0.1          │ 127.0.0.1   │                 │    0 │   0 │      0 │     0 │   0.0 │   A   │
└────────────────────┴─────────────┴─────────────────┴──────┴─────┴────────┴───────┴───────┴───────┘"""


@pytest.mark.parametrize("width", [100, 250])
def test_end_of_scan_is_one_table_of_at_most_100_columns(width: int) -> None:
    # Given three hosts, one with a name and an organization longer than the screen
    # When the end screen is drawn on a console of any width
    lines = rendered(width, lambda c: print_end_screen(c, HOSTS, "Summary"))
    # Then it is exactly this one table, 100 columns wide
    assert "\n".join(lines) == END_AT_100
    assert max(len(line) for line in lines) == END_SCREEN_WIDTH


def test_end_of_scan_on_a_narrow_terminal_breaks_no_word_but_a_long_target() -> None:
    lines = rendered(80, lambda c: print_end_screen(c, HOSTS, "Summary"))
    assert max(len(line) for line in lines) <= 80
    rows = [re.split("│", line)[1:-1] for line in lines if line.startswith("│")]
    # a long target folds, whole across its lines (cut with an ellipsis, two long names
    # that differ at their ends read the same: a review)
    targets, current = [], ""
    for cells in rows:
        if cells[1].strip():  # a row's first line: its address
            if current:
                targets.append(current)
            current = ""
        current += cells[0].strip()
    targets.append(current)
    assert targets == [h["target"] for h in HOSTS]
    # every other word is whole
    words = {w for host in HOSTS for v in host.values() for w in str(v).split()}
    for cells in rows:
        for cell in cells[1:]:
            for word in cell.split():
                assert word in words, (word, cells)


def test_end_of_scan_flags_a_tarpit() -> None:
    hosts = [{**HOSTS[2], "is_tarpit": 1}]
    lines = rendered(100, lambda c: print_end_screen(c, hosts, "Summary"))
    assert "flags" in lines[2]
    flags = [re.split(r"[│┃]", line)[-2].strip() for line in lines[4:-1]]
    assert " ".join(f for f in flags if f) == "answers on every port"


def test_end_of_scan_flags_a_host_whose_scan_did_not_complete() -> None:
    # Given a host an interrupted scan never reached (no port, score 0, grade A)
    hosts = [{**HOSTS[2], "scan_status": "interrupted"}, {**HOSTS[1], "scan_status": "completed"}]
    lines = rendered(100, lambda c: print_end_screen(c, hosts, "Summary"))
    # Then the flags column says so, and only for that host (it read as scanned and clean)
    assert "flags" in lines[2]
    flags = [re.split(r"[│┃]", line)[-2].strip() for line in lines[4:] if line[:1] == "│"]
    assert [f for f in flags if f] == ["interrupted"]


def test_the_summary_report_table_flags_an_interrupted_scan() -> None:
    from portwatch.render import to_table
    from stream_processors.store import Report

    columns = ("target", "ip", "asset", "organization", "open_ports", "ports", "risk_score",
               "grade", "score_parts", "is_tarpit", "scan_status", "scan_note", "last_scanned")
    row = ("127.1.0.5", "127.1.0.5", "", "", 0, [], 0.0, "A", "", 0, "interrupted", "", None)
    lines = rendered(200, lambda c: to_table(Report("summary", columns, [row]), c))
    assert any("interrupted" in line for line in lines)


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_a_narrow_terminal_never_splits_a_port_number(width: int) -> None:
    # Given List rows on a five-digit port, When the terminal is too narrow for the table
    rows = [(*row[:5], 20022, *row[6:]) for row in LIST.rows]
    lines = rendered(width, lambda c: to_table(Report("list", COLUMNS, rows), c))
    # Then each row's port is whole, in a table's cell or a block's line, and no line
    # holds a piece of it (port 20022 was "2002" over "2" at 80 columns: another port)
    cells = [cell.strip() for line in lines for cell in re.split("[│┃]", line)]
    assert cells.count("20022") + lines.count("port           20022") == 3
    assert not {"2002", "200"} & set(cells)
    # And nothing is past the terminal's edge (a minimum width for the number pushed the
    # table past it, and the terminal cut its last column)
    assert max(len(line) for line in lines) <= width
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert all(line[-1] in "┓┃┩│┘" for line in table)


def _headers(lines: list[str]) -> list[str]:
    """A table's header cells, their folded lines joined."""
    rows = [re.split("┃", line)[1:-1] for line in lines if line.startswith("┃")]
    return [" ".join(part.strip() for part in column if part.strip())
            for column in zip(*rows, strict=True)]


def test_an_80_column_list_leaves_out_whole_columns_and_names_them() -> None:
    lines = rendered(80, lambda c: to_table(LIST, c))
    # Then no header is cut mid-word (at 80 columns every one was: "tar/get", "addr/ess")
    assert _headers(lines) == ["target", "port", "proto", "service", "product", "version",
                               "risk"]
    # And what was left out is said under the table, in the order it was given up (the
    # optional columns first: they were left out silently, a review), the columns empty
    # in every row not among them (the CDN)
    caption = " ".join(line.strip() for line in lines[lines.index(max(
        (line for line in lines if line.startswith("└")), key=len)) + 1:])
    assert caption == ("not shown at 80 columns: organization, asset, risk reason, last seen, "
                       "prevalence, address, first detected (--format json has every column)")
    assert max(len(line) for line in lines) <= 80


def test_a_list_too_wide_for_any_table_is_one_block_per_row() -> None:
    lines = rendered(40, lambda c: to_table(LIST, c))
    # Then each row is a block, its non-empty columns one line each, every value whole
    assert lines[:3] == ["List report", "-- 1 --", "target         ns1.example.test"]
    assert lines.count("-- 3 --") == 1
    third = lines[lines.index("-- 3 --") + 1:]
    assert third[:4] == ["target         db.example.test", "address        198.18.0.7",
                         "organization   Other Org", "asset          db-1"]
    assert "risk reason    a cache exposed to the" in third
    # the CDN column is empty in every row: not a line of any block
    assert not any(line.startswith("CDN") for line in lines)
    assert max(len(line) for line in lines) <= 40


@pytest.mark.parametrize("width", [60, 80])
def test_the_end_screen_on_a_narrow_terminal_keeps_the_target(width: int) -> None:
    # Given hosts scanned by address, no organization (at 60 columns the target column
    # was squeezed to nothing: the table showed scores of no one)
    hosts = [{**HOSTS[2], "open_ports": 2, "green": 2, "risk_score": 2.5},
             {**HOSTS[2], "target": "127.0.0.2", "ip": "127.0.0.2"}]
    lines = rendered(width, lambda c: print_end_screen(c, hosts, "Summary"))
    # Then the table has each target whole, and leaves out the address that repeats it
    # and the empty organization, naming neither (they said nothing)
    assert _headers(lines) == ["target", "open", "red", "yellow", "green", "score", "grade"]
    targets = [re.split("│", line)[1].strip() for line in lines if line.startswith("│")]
    assert targets == ["127.0.0.1", "127.0.0.2"]
    assert not any("not shown" in line for line in lines)


def test_the_end_screen_gives_up_counts_before_the_target() -> None:
    lines = rendered(60, lambda c: print_end_screen(c, HOSTS, "Summary"))
    # (green and yellow go together: red and green without yellow misread)
    assert _headers(lines) == ["target", "open", "red", "score", "grade"]
    caption = " ".join(line.strip() for line in lines[-2:])
    assert caption == ("not shown: organization, green, yellow, address (portwatch report "
                       "summary --format json has every column)")
    assert max(len(line) for line in lines) <= 60


def test_the_end_screen_narrower_than_any_table_is_one_block_per_host() -> None:
    lines = rendered(30, lambda c: print_end_screen(c, HOSTS, "Summary"))
    assert lines[:3] == ["Summary", "-- 1 --", "target       db.example.test"]
    assert "organization Other Org" in lines and "score        29.5" in lines
    assert max(len(line) for line in lines) <= 30


def test_fit_columns_gives_up_what_says_nothing_first_then_in_order() -> None:
    cells = {"target": ["a.example.test"], "ip": ["198.18.0.1"], "asset": [""],
             "score_parts": ["10x0 red + 1x1 green = 1 -> 2.5"], "last_scanned":
             ["2026-11-30 08:15:00"], "open_ports": ["12345678901234567890"]}
    columns = list(cells)

    def fit(width: int) -> Fitted:
        return fit_columns("summary", columns, cells, HEADERS, width, whole=WHOLE_NUMBERS)

    # wide enough for every cell unfolded: everything, the empty asset too
    assert fit(200) == Fitted(tuple(columns))
    # narrower: the empty asset goes unnamed, then score parts, last scanned, the address
    def shown(width: int) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        fitted = fit(width)
        return fitted.columns, fitted.dropped, fitted.records

    assert shown(75) == (("target", "ip", "score_parts", "last_scanned", "open_ports"), (),
                         False)
    assert shown(70) == (("target", "ip", "last_scanned", "open_ports"), ("score_parts",),
                         False)
    assert shown(60) == (("target", "ip", "open_ports"), ("score_parts", "last_scanned"),
                         False)
    assert shown(50) == (("target", "open_ports"), ("score_parts", "last_scanned", "ip"),
                         False)
    # a number never folds: narrower than the target and it, no table at all
    assert shown(40) == (("target", "ip", "score_parts", "last_scanned", "open_ports"), (),
                         True)
    # And each shown column is at least its readable width (the target whole up to an
    # IPv4 address's length, the number whole), the room left shared out up to each
    # column's unfolded width, the table exactly as wide as the terminal
    assert fit(75).widths == (14, 10, 5, 10, 20)
    assert fit(80).widths == (14, 10, 8, 12, 20)


def test_the_end_screen_leaves_out_an_ipv6_address_rather_than_squeeze_the_target() -> None:
    # Given a host named by a hostname, at an IPv6 address longer than half the screen
    hosts = [{**HOSTS[0], "target": "mail.example.test",
              "ip": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "organization": ""}]
    lines = rendered(80, lambda c: print_end_screen(c, hosts, "Summary"))
    # Then the target and every number are whole, and the address is named as left out
    # (rich squeezed the target to nothing and cut the score to "29…": a review)
    assert _headers(lines) == ["target", "open", "red", "yellow", "green", "score", "grade"]
    cells = [cell.strip() for cell in re.split("│", lines[4])[1:-1]]
    assert cells == ["mail.example.test", "3", "1", "1", "1", "29.5", "C"]
    caption = " ".join(line.strip() for line in lines[-2:])
    assert caption == ("not shown: address (portwatch report summary --format json has "
                       "every column)")


_WORDS = ("nginx", "Example", "Corporation", "International", "漢字テスト", "x" * 30, "a")
_TARGETS = ("127.0.0.1", "198.19.255.254", "host.example.test", "fe80::1",
            "a-very-long-hostname.example.test")


@settings(max_examples=60, deadline=None)
@given(width=st.integers(20, 250), rows=st.lists(st.tuples(
    st.sampled_from(_TARGETS), st.sampled_from(_TARGETS), st.integers(0, 65535),
    st.lists(st.sampled_from(_WORDS), max_size=5).map(" ".join),
    st.lists(st.sampled_from(_WORDS), max_size=3).map(" ".join)), min_size=1, max_size=4))
def test_a_changes_table_at_any_width_cuts_no_header_number_or_short_address(
        width: int, rows: list[tuple[str, str, int, str, str]]) -> None:
    columns = ("observed_at", "severity", "kind", "target", "ip", "port", "proto", "before",
               "after", "organization", "asset")
    report = Report("changes", columns, [
        (WHEN, "high", "opened", target, ip, port, "tcp", "", after, org, "")
        for target, ip, port, after, org in rows])
    lines = rendered(width, lambda c: to_table(report, c))
    assert max(cell_len(line) for line in lines) <= width
    if not lines[1].startswith("┏"):
        return  # one block per row: the values are lines of their own
    # Then every header is whole, every port is whole in its row's first line, and a
    # target or address no longer than an IPv4 address is whole
    names = {HEADERS.get(c, c.replace("_", " ")) for c in columns}
    assert set(_headers(lines)) <= names
    shown = _headers(lines)
    body = [re.split("│", line)[1:-1] for line in lines if line.startswith("│")]
    first_lines = [cells for cells in body if cells[shown.index("kind")].strip()]
    assert [int(cells[shown.index("port")]) for cells in first_lines] == [r[2] for r in rows]
    for column in ("target", "address"):
        if column in shown:
            values = [cells[shown.index(column)].strip() for cells in first_lines]
            for value, row in zip(values, rows, strict=True):
                expected = row[0] if column == "target" else row[1]
                if len(expected) <= 15:
                    assert value == expected


def test_blocks_on_a_very_narrow_terminal_put_each_value_under_its_label() -> None:
    lines = rendered(12, lambda c: to_table(LIST, c))
    # Then no value is lost (at 15 columns and less every value was blank: a review)
    text = "".join(line.strip() for line in lines)
    for value in ("ns1.example.test", "198.18.0.53", "ExampleCorp", "6379", "7.0.15",
                  "acacheexposedtotheInternet"):
        assert value in text.replace(" ", "")
    assert max(cell_len(line) for line in lines) <= 12


def test_a_blocks_long_value_is_indented_on_every_line() -> None:
    lines = rendered(18, lambda c: to_table(LIST, c))
    # Then the reason's lines all sit under its label, indented (its continuation lines
    # started at column 0, read as labels: a review)
    at = lines.index("risk reason")
    value = lines[at + 1:at + 3]
    assert all(line.startswith("  ") for line in value), value
    assert [line.strip() for line in value] == ["public DNS", "service"]
    assert lines[at + 3] == "prevalence"


@pytest.mark.parametrize("width", [57, 60, 66, 72])
def test_a_range_scans_hosts_keep_their_addresses_on_a_narrow_end_screen(width: int) -> None:
    # Given four hosts of one range target (the target says nothing to tell them apart)
    hosts = [{**HOSTS[2], "target": "198.18.30.0/24", "ip": f"198.18.30.{n}"}
             for n in range(1, 5)]
    lines = rendered(width, lambda c: print_end_screen(c, hosts, "Summary"))
    # Then every host's address is shown (the rows all read the same: a review), in
    # a table or in blocks
    text = "\n".join(lines)
    for n in range(1, 5):
        assert f"198.18.30.{n}" in text
    assert "address" not in " ".join(lines[-2:]).split("not shown")[-1]


def test_blocks_keep_their_values_on_a_two_column_terminal() -> None:
    lines = rendered(2, lambda c: to_table(LIST, c))
    assert "6379" in "".join(line.strip() for line in lines)
