"""Rendering (portwatch/render.py): text from the network is printed escaped (no ESC,
BEL or rich markup reaches the terminal), JSON keeps every column with plain values,
CSV is one header plus one line per row."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest
from rich.console import Console

from portwatch.render import cell_text, render, sanitize_text, to_csv, to_json, to_table
from stream_processors.store import Report

HOSTILE = "\x1b[2J\x1b[31mHACKED\x07\x00[bold]x[/bold]"
WHEN = datetime(2025, 3, 4, 5, 6, 7)

LIST = Report(
    name="list",
    columns=("target", "ip", "port", "service", "product", "version", "risk_color",
             "prevalence", "cdn_provider", "first_seen", "last_seen", "banner"),
    rows=[
        ("127.0.0.1", "127.0.0.1", 22, "ssh", "OpenSSH", "9.2p1", "green", "rare", "", WHEN,
         WHEN, "SSH-2.0-OpenSSH_9.2p1"),
        ("127.0.0.1", "127.0.0.1", 4444, "", HOSTILE, "", "yellow", "rare", None, WHEN, WHEN,
         HOSTILE),
    ],
)
SUMMARY = Report(
    name="summary",
    columns=("target", "ip", "ports", "risk_score", "grade", "is_tarpit"),
    rows=[("127.0.0.1", "127.0.0.1", [(22, "tcp", "green", 0, "open"),
                                      (443, "tcp", "green", 1, "open"),
                                      (6379, "tcp", "red", 0, "open"),
                                      (20054, "udp", "yellow", 0, "open|filtered")],
           22.1, "B", 1)],
)


def no_control_characters(text: str) -> bool:
    return not any(c in text for c in ("\x1b", "\x07", "\x00", "\x9b"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\x07", "bell\\x07"),
        ("nul\x00", "nul\\x00"),
        ("csi\x9b2J", "csi\\x9b2J"),  # the 8-bit CSI too
        ("tab\tnew\nline\r", "tab\\x09new\\x0aline\\x0d"),
        ("café ünï", "café ünï"),  # printable non-ASCII stays readable
        ("", ""),
    ],
)
def test_sanitize_text_escapes_control_characters(value: str, expected: str) -> None:
    out = sanitize_text(value)
    assert out == expected
    assert no_control_characters(out)


def test_sanitize_text_caps_long_values() -> None:
    assert sanitize_text("a" * 300) == "a" * 197 + "..."
    assert sanitize_text("a" * 200) == "a" * 200
    assert len(sanitize_text("\x1b" * 100, limit=50)) == 50


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("ports", [(22, "tcp", "green", 0), (443, "tcp", "green", 1)],
         "22/tcp:green 443/tcp:green,cdn"),
        # an open|filtered UDP port is listed, and said to score nothing
        ("ports", [(53, "udp", "yellow", 0, "open"), (54, "udp", "yellow", 0, "open|filtered")],
         "53/udp:yellow 54/udp:yellow,unconfirmed"),
        ("versions", ["TLSv1.2", "TLSv1.3"], "TLSv1.2,TLSv1.3"),
        # stored by another writer: escaped like every other cell (the ciphers table)
        ("versions", ["TLSv1.3", "x\x1b[31m\u202e\x00"], "TLSv1.3,x\\x1b[31m\\x202e\\x00"),
        ("suites", [("TLSv1.2", "TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA", "weak")],
         "TLSv1.2 TLS_RSA_WITH_RC4_128_SHA (weak)"),
        ("is_tarpit", 1, "answers on every port"),
        ("is_tarpit", 0, ""),
        ("cert_expired", 1, "yes"),
        ("is_cdn_expected", 0, ""),
        ("cdn_provider", None, ""),
        ("cdn_provider", "cdn\x1b[31mX\x1b]8;;http://e\x07\u202e", "cdn\\x1b[31mX\\x1b]8;;http://e\\x07\\x202e"),
        ("first_seen", WHEN, "2025-03-04 05:06:07"),
        ("product", None, ""),
        ("product", HOSTILE, "\\x1b[2J\\x1b[31mHACKED\\x07\\x00[bold]x[/bold]"),
    ],
)
def test_cell_text(column: str, value: object, expected: str) -> None:
    assert cell_text("list", column, value) == expected


def test_json_keeps_every_column_with_plain_values() -> None:
    # Given a report with times and hostile text, when rendered as JSON
    out = to_json(LIST)
    rows = json.loads(out)
    # Then every column is there, times are ISO 8601 in UTC (as the API writes them), the
    # hostile text round-trips exactly, and the JSON itself carries no raw control
    # character (ensure_ascii escapes it)
    assert [list(r) for r in rows] == [list(LIST.columns)] * 2
    assert rows[0]["first_seen"] == "2025-03-04T05:06:07Z"
    assert rows[0]["port"] == 22
    assert rows[1]["banner"] == HOSTILE
    assert rows[1]["cdn_provider"] is None
    assert no_control_characters(out)
    # and the ports are objects, as in the API
    assert json.loads(to_json(SUMMARY))[0]["ports"] == [
        {"port": 22, "proto": "tcp", "color": "green", "is_cdn_expected": False,
         "state": "open"},
        {"port": 443, "proto": "tcp", "color": "green", "is_cdn_expected": True,
         "state": "open"},
        {"port": 6379, "proto": "tcp", "color": "red", "is_cdn_expected": False,
         "state": "open"},
        # listed, not scored: the state says why
        {"port": 20054, "proto": "udp", "color": "yellow", "is_cdn_expected": False,
         "state": "open|filtered"}]


def test_csv_has_a_header_and_one_line_per_row_carrying_the_stored_values() -> None:
    out = to_csv(LIST)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == list(LIST.columns)
    assert len(rows) == 3
    assert rows[1][:4] == ["127.0.0.1", "127.0.0.1", "22", "ssh"]
    # issue 11, defect 8: CSV carries exactly what is stored (quoted by the csv module)
    assert rows[2][4] == HOSTILE
    summary = list(csv.reader(io.StringIO(to_csv(SUMMARY))))
    assert summary[1][2] == ("22/tcp:green 443/tcp:green,cdn 6379/tcp:red "
                             "20054/udp:yellow,unconfirmed")
    assert summary[1][5] == "1"


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=250, color_system=None, force_terminal=False,
                   highlight=False), buf


def test_table_prints_hostile_text_escaped_and_markup_literally() -> None:
    out, buf = console()
    to_table(LIST, out)
    text = buf.getvalue()
    assert no_control_characters(text)
    assert "\\x1b[2J" in text
    assert "[bold]x[/bold]" in text  # not interpreted as rich markup
    assert "first detected" in text and "2025-03-04 05:06:07" in text
    assert "banner" not in text  # the table shows the chosen columns only


def test_table_summary_ports_carry_the_colour_word() -> None:
    out, buf = console()
    to_table(SUMMARY, out)
    text = buf.getvalue()
    assert "22/tcp:green" in text and "443/tcp:green,cdn" in text and "6379/tcp:red" in text
    assert "20054/udp:yellow,unconfirmed" in text
    assert "answers on every port" in text


def test_the_list_table_says_which_cdn_ports_are_expected_open() -> None:
    # Given two ports tagged with one CDN: one its edge is expected to leave open
    # (discounted, not scored), one not (scored)
    columns = ("target", "ip", "port", "service", "risk_color", "cdn_provider",
               "is_cdn_expected")
    listed = Report("list", columns, [
        ("127.0.0.1", "127.0.0.1", 443, "https", "green", "cloudflare", 1),
        ("127.0.0.1", "127.0.0.1", 20004, "http", "green", "cloudflare", 0)])
    out, buf = console()
    to_table(listed, out)
    rows = {line.split()[5]: line for line in buf.getvalue().splitlines()
            if "127.0.0.1" in line}
    # Then the table says so, as the web List does (both read "cloudflare": a review)
    assert "cloudflare · expected" in rows["443"]
    assert "cloudflare" in rows["20004"] and "expected" not in rows["20004"]


def test_empty_report_says_so() -> None:
    out, buf = console()
    to_table(Report("list", LIST.columns, []), out)
    assert buf.getvalue().strip() == "list: no rows (nothing stored matches the filters)"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_render_dispatches_machine_formats(fmt: str) -> None:
    out, buf = console()
    render(LIST, fmt, out)
    text = buf.getvalue()
    expected = to_json(LIST) if fmt == "json" else to_csv(LIST)
    assert text.strip() == expected.strip()


def test_ciphers_table_summarizes_suites_per_version() -> None:
    # Issue 13: a STARTTLS mail server offers ~90 suites; the terminal table counts them
    # per protocol version (json and csv keep every suite)
    from portwatch.render import suites_summary

    suites = [("TLSv1.0", "TLS_DH_anon_WITH_AES_128_CBC_SHA", "ADH-AES128-SHA", "weak", ""),
              ("TLSv1.0", "TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA", "medium", ""),
              ("TLSv1.3", "TLS_AES_128_GCM_SHA256", "", "strong", "")]
    assert suites_summary(suites) == "TLSv1.0: 2 (1 weak)\nTLSv1.3: 1"
    assert suites_summary([]) == ""


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_defuses_every_owasp_formula_trigger(text: str) -> None:
    # Given a stored text starting with a spreadsheet formula trigger (OWASP CSV injection)
    report = Report("list", ("banner", "port", "score"), [(text, 22, -1.5)])
    # When written as CSV, then the text cell starts with ' and numbers stay numbers
    (_, row) = list(csv.reader(io.StringIO(to_csv(report), newline="")))
    assert row == ["'" + text, "22", "-1.5"]


def test_the_ciphers_table_says_why_a_port_could_not_be_tested() -> None:
    # (before: the reason was in JSON and CSV only; the table said "could not test")
    report = Report("ciphers", ("target", "ip", "port", "outcome", "error"),
                    [("127.0.0.1", "127.0.0.1", 25, "could not test", "STARTTLS answered 454")])
    out, buf = console()
    render(report, "table", out)
    text = buf.getvalue()
    assert "why" in text and "STARTTLS answered 454" in text


@pytest.mark.parametrize(("previous", "said"), [
    (("", ""), "changes: 2 (all on hosts scanned for the first time), 1 high or critical"),
    (("s0", ""), "changes: 2 since the previous scan (1 on hosts scanned for the first "
                 "time), 1 high or critical"),
    (("s0", "s0"), "changes: 2 since the previous scan, 1 high or critical"),
], ids=["first-scans", "mixed", "rescans"])
def test_the_end_screen_says_which_changes_had_no_previous_scan(
        previous: tuple[str, str], said: str) -> None:
    from portwatch.scan_cli import changes_line
    from schemas.records import ChangeEvent, ChangeKind, Severity, Target

    # Given a scan's events on two hosts, each with or without a previous scan
    events = [ChangeEvent(kind=ChangeKind.OPENED, severity=severity,
                          target=Target(f"127.0.0.{i + 1}", f"127.0.0.{i + 1}"), scan_id="s1",
                          previous_scan_id=before, port=22)
              for i, (before, severity) in enumerate(zip(previous, (Severity.HIGH,
                                                                    Severity.INFO), strict=True))]
    # Then the end screen's line says so (it said "since the previous scan" of a first
    # scan, and of a scan where only some hosts were new: reviews)
    assert changes_line(events) == f"{said}: portwatch report changes"
