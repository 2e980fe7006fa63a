"""The one duration grammar (schemas/durations.py): the same text is the same period in
every command, file and page; any text is seconds in the caller's range or a one-line
ValueError."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from portwatch.alerts.config import parse_duration as alerts_duration
from schemas.durations import UNITS, describe_seconds, parse_seconds
from stream_processors.change_log import parse_duration as since_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("30s", 30), ("5m", 300), ("1.5h", 5400), ("12H", 43200),
    (" 7d ", 604800), ("2w", 1209600), ("0.5s", 0.5), ("1.000000000001d", 86400),
])
def test_one_text_one_period_everywhere(text: str, seconds: float) -> None:
    assert parse_seconds(text, least=0, most=1e9) == seconds
    assert alerts_duration(text) == seconds  # alerts deliver --wait, digest, delivery
    if seconds >= 1:  # --since, --older-than and the Changes page start at a second
        assert since_duration(text) == timedelta(seconds=seconds)


def test_bare_numbers_are_seconds_only_where_the_caller_says() -> None:
    assert alerts_duration("0") == 0 and alerts_duration("300") == 300
    with pytest.raises(ValueError, match=r"bad duration '300': use a number and a unit \("):
        since_duration("300")


@pytest.mark.parametrize(("least", "most", "words"), [
    (0, 30 * 86400, "from 0 to 30 days"), (1, 36_500 * 86400, "from 1s to 36,500 days"),
    (60, 3600, "from 1m to 1h"), (0.5, 86400, "from 0.5s to 1 day"),
])
def test_range_is_said_in_the_grammars_words(least: float, most: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_seconds("99999w", least=least, most=most)
    assert describe_seconds(most) in words


@given(st.text(max_size=40))
@example("٣d").via("an Arabic-Indic digit: a digit to Python, not to the grammar")
@example("²s").via("a superscript digit")
@example("9" * 5000 + "d").via("more digits than a float holds")
@example("1" + "0" * 14 + "ms").via("the longest whole amount converted")
def test_any_text_is_seconds_in_range_or_one_line(text: str) -> None:
    try:
        seconds = parse_seconds(text, least=1, most=86400 * 36_500)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith("bad duration ") and "\n" not in message
        assert len(message) < 140
    else:
        assert 1 <= seconds <= 86400 * 36_500
        assert text.strip().isascii()


@given(st.integers(0, 10**6), st.sampled_from(sorted(UNITS)), st.booleans())
def test_written_amounts_read_back(amount: int, unit: str, upper: bool) -> None:
    upper = upper and unit != "m"  # 5M is refused (below)
    text = f"{amount}{unit.upper() if upper else unit}"
    assert parse_seconds(text, least=0, most=1e13) == pytest.approx(amount * UNITS[unit])


@pytest.mark.parametrize("text", ["1M", " 3 M", "1.5M"])
def test_an_upper_case_m_is_refused_not_read_as_minutes(text: str) -> None:
    # (before: prune --older-than 1M pruned everything older than a minute, not a month)
    with pytest.raises(ValueError, match=r": M is not a unit here; write m for minutes"):
        parse_seconds(text, least=0, most=1e13)
    with pytest.raises(ValueError, match="M is not a unit here"):
        since_duration(text)
    assert parse_seconds("1MS", least=0, most=1) == 0.001  # milliseconds, any case
