"""``schemas.report_page_sql``: a two-phase report's CTEs with another SELECT in place of
its last one (the web's counts and totals). It cuts at the last line that starts with
SELECT, so a report's final SELECT must be that line: the Ciphers report once wrapped its
SELECT in ``SELECT * EXCEPT (...) FROM (`` on a line of its own, and every count of it
was a syntax error (a page past the last answered 500)."""

from __future__ import annotations

import re

import pytest

from schemas import report_page_sql


@pytest.mark.parametrize("name", ["list", "summary", "ciphers"])
def test_the_page_sql_of_each_two_phase_report_is_whole(name: str) -> None:
    sql = report_page_sql(name, "SELECT count() FROM page")
    assert sql is not None and sql.endswith("\nSELECT count() FROM page")
    # the parentheses of the SQL itself: string literals and comments left out
    code = re.sub(r"'(?:[^'\\]|\\.)*'", "''", re.sub(r"--[^\n]*", "", sql))
    depth = 0
    for ch in code:
        depth += (ch == "(") - (ch == ")")
        assert depth >= 0
    assert depth == 0
