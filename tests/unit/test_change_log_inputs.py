"""The change log's user inputs (stream_processors/change_log.py): durations for --since and
prune's --older-than, ISO times for --from/--to and the API. Hostile text gets a ValueError
with a one-line message, never another exception (any-text property of parse_duration:
tests/unit/test_history_parsers.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processors.change_log import parse_duration, parse_when


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("2w", timedelta(weeks=2)), (" 7D ", timedelta(days=7)), ("36500d", timedelta(days=36_500)),
    ("5214w", timedelta(weeks=5214)), ("1m", timedelta(minutes=1)),
    ("1.5d", timedelta(hours=36)), ("30s", timedelta(seconds=30)), ("1s", timedelta(seconds=1)),
    ("0090d", timedelta(days=90)),
])
def test_durations_in_range(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("7x", "use a number and a unit"), ("d", "use a number and a unit"),
    ("²d", "use a number and a unit"), ("٣d", "use a number and a unit"),
    ("-1d", "use a number and a unit"), ("7", "use a number and a unit"),
    ("1,5d", "use a number and a unit"), ("1e3s", "use a number and a unit"),
    ("0d", "from 1s to 36,500 days"), ("999ms", "from 1s to 36,500 days"),
    ("36501d", "from 1s to 36,500 days"), ("5215w", "from 1s to 36,500 days"),
    ("9" * 5000 + "d", "from 1s to 36,500 days"),
])
def test_bad_durations_say_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parse_duration(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@given(st.text(max_size=60))
def test_any_text_is_a_time_in_the_store_range_or_a_value_error(text: str) -> None:
    try:
        when = parse_when(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert when.tzinfo is not None
        assert datetime(1900, 1, 1, tzinfo=UTC) <= when <= datetime(2300, 1, 1, tzinfo=UTC)


def test_a_moment_between_two_milliseconds_is_the_next_one() -> None:
    # The window [from, to) is compared in the store's milliseconds: 20:42:00.5215 is
    # after an event at .521 and before one at .522, as .522 is (before: cut to .521,
    # which listed that event after --from and left it out before --to: a review)
    assert parse_when("2026-12-07T20:42:00.5215") == datetime(2026, 12, 7, 20, 42, 0, 522000,
                                                              tzinfo=UTC)
    assert parse_when("2026-12-07T20:42:00.521") == datetime(2026, 12, 7, 20, 42, 0, 521000,
                                                             tzinfo=UTC)
    assert parse_when("2026-12-07T20:42:00.999999+01:00") == datetime(2026, 12, 7, 19, 42, 1,
                                                                      tzinfo=UTC)


def test_digits_past_the_microsecond_make_a_later_moment() -> None:
    # (fromisoformat drops them: .2910001 read as .291 itself, before --from's rounding
    # could see it: a second review); `date -Ins` writes nine, with a comma
    from stream_processors.change_log import iso_moment

    assert parse_when("2026-12-07T21:17:49.2910001") == datetime(2026, 12, 7, 21, 17, 49, 292000,
                                                                 tzinfo=UTC)
    assert parse_when("2026-12-07T21:17:49,291000123+00:00") == datetime(
        2026, 12, 7, 21, 17, 49, 292000, tzinfo=UTC)
    assert parse_when("2026-12-07T21:17:49.2910000") == datetime(2026, 12, 7, 21, 17, 49, 291000,
                                                                 tzinfo=UTC)
    # and such a moment is not the same as the millisecond before it (a window of both)
    assert iso_moment("2026-12-07T21:17:49.291Z") < iso_moment("2026-12-07T21:17:49.2910001Z")
