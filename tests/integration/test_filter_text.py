"""Which characters a filter value may hold: every name the store can hold, bar controls.

A no-break space pasted from a spreadsheet, or the zero-width joiner of an emoji, are
text an inventory stores in an organization; the filters refused them ("control
characters"), so such an organization could not be filtered on, and the web's own
drill-down links to it answered 400 (a review). Real controls (C0/C1, line separators,
bidi overrides) are still refused, by the CLI, the web and the Changes page alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.web.history_pages import BadParam, parse_changes_query
from portwatch.web.query import BadRequest, parse_query
from schemas.filters import filter_text, is_control
from schemas.records import Finding, HostScan, OpenPort, RiskColor, ServiceInfo, Target

NBSP_ORG = "Acme\u00a0Corp"
EMOJI_ORG = "Ops \U0001f469\u200d\U0001f4bb"


@pytest.mark.parametrize("org", [NBSP_ORG, EMOJI_ORG, "Société Générale", "株式会社"])
def test_a_stored_name_is_a_filter_value_everywhere(org: str) -> None:
    assert filter_text("the organization", org, 4096) == org
    assert parse_query("list", [("org", org)]).filters["org"] == org
    assert parse_changes_query([("org", org)])["org"] == org


@pytest.mark.parametrize("blank", ["\t", "\n\r", " \t "])
def test_a_typed_value_of_tabs_alone_is_refused_not_read_as_no_filter(blank: str) -> None:
    # `report --org $'\t'` folded to "", which is no filter: every row (a review). (A
    # web form's blank field is no filter, as ever: the API skips blank values.)
    with pytest.raises(ValueError, match="contains control characters"):
        filter_text("the organization", blank, 4096)
    assert "org" not in parse_query("list", [("org", blank)]).filters
    assert parse_changes_query([("org", blank)])["org"] == ""


@pytest.mark.parametrize(("typed", "stored"), [
    ("Tab\tOrg\nTwo", "Tab Org Two"), ("Example\r\nCorp ", "Example Corp"),
    ("a\u2028b", "a b"), ("x\x0b\x0cy", "x y"),
    # an edge tab only: the double space inside stays, as the label keeps it
    ("Two  Space Org\t", "Two  Space Org"), ("\nTwo  Space Org", "Two  Space Org")])
def test_tabs_and_line_breaks_fold_as_a_label_is_stored(typed: str, stored: str) -> None:
    # `scan --org "$ORG"` stores a tab or a line break as one space (label_text): the same
    # "$ORG" given to `report --org` was refused (a review); it now names the label
    from producers.targets import label_text

    assert label_text(typed, "--org") == stored
    assert filter_text("the organization", typed, 4096) == stored
    assert parse_query("list", [("org", typed)]).filters["org"] == stored
    assert parse_changes_query([("org", typed)])["org"] == stored


@pytest.mark.parametrize("bad", ["a\x1bb", "Example\x85\x00Corp", "x\x00", "\u202eevil",
                                 "a\u2066b", "a\x9bb",
                                 "Acme\udcff"])  # a byte of argv that is not UTF-8
def test_a_control_character_is_refused_everywhere(bad: str) -> None:
    with pytest.raises(ValueError, match="contains control characters"):
        filter_text("the organization", bad, 4096)
    with pytest.raises(BadRequest):
        parse_query("list", [("org", bad)])
    with pytest.raises(BadParam):
        parse_changes_query([("org", bad)])


@given(st.text(max_size=40))
def test_is_control_refuses_exactly_controls_separators_and_bidi_overrides(text: str) -> None:
    import unicodedata

    for ch in text:
        expected = (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")
                    or 0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069)
        assert is_control(ch) is expected


def test_an_organization_with_a_no_break_space_filters_its_ports(store: Any) -> None:
    # Given a host of an organization spelt with a no-break space, and one of another
    when = datetime(2026, 3, 1, 10, tzinfo=UTC)
    for ip, org in (("127.0.0.31", NBSP_ORG), ("127.0.0.32", "Acme Corp")):
        target = Target(ip=ip, target=ip, organization=org)
        store.insert_findings([Finding(
            port=OpenPort(scan_id="s1", target=target, port=22, observed_at=when),
            service=ServiceInfo(service="ssh", product="OpenSSH", version="9.6p1"),
            risk_color=RiskColor.GREEN)])
        store.insert_host_scans([HostScan("s1", target, when, when, 1, 1)])
    # When the List and the Summary are filtered on it, as the CLI and the web pass it
    org = parse_query("list", [("org", NBSP_ORG)]).filters["org"]
    # Then they find its host only
    for report in ("list", "summary"):
        assert [r["ip"] for r in store.report(report, {"org": org}).dicts()] == ["127.0.0.31"]


@given(st.text(alphabet=st.sampled_from(list("Ab  \t\n\r\x0b\u2028.-\u00a0")), max_size=30))
def test_a_filter_reads_a_typed_label_as_the_label_is_stored(typed: str) -> None:
    # Whatever "$ORG" holds, `report --org "$ORG"` names what `scan --org "$ORG"` stored
    # (one fold for both: a filter folded before it stripped, and missed a stored double
    # space: a review)
    from producers.targets import label_text

    stored = label_text(typed, "--org")
    if stored:
        assert filter_text("the organization", typed, 4096) == stored
