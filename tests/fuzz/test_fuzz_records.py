"""Record decoders never raise anything but RecordError (issue 11, defect 3), over
arbitrary bytes, arbitrary JSON, and valid records with one field replaced by arbitrary
JSON, for every record type; and the topic consumers' decoder never raises at all."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import schemas.records as records_module
from producers.publish import decode_records
from schemas.records import Record, RecordError
from tests.unit.test_records import RECORDS

RECORD_TYPES = sorted({type(r) for r in RECORDS}, key=lambda c: c.__name__)
# Every concrete record class is fuzzed, not only those the round-trip test lists.
ALL_TYPES = sorted({obj for obj in vars(records_module).values()
                    if isinstance(obj, type) and issubclass(obj, Record) and obj is not Record},
                   key=lambda c: c.__name__)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30)


def _decodes_or_record_error(cls: type[Record], raw: bytes) -> None:
    try:
        decoded = cls.from_json(raw)
    except RecordError:
        return
    assert isinstance(decoded, cls)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@given(raw=st.binary(max_size=512))
@example(raw=b"[" * 100_000)  # RecursionError in the stdlib parser
@example(raw=b'{"v":1,' + b'{"a":' * 50_000)
@example(raw=b'{"v":1e400}')
def test_arbitrary_bytes(cls: type[Record], raw: bytes) -> None:
    _decodes_or_record_error(cls, raw)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@given(value=json_values)
def test_arbitrary_json(cls: type[Record], value: Any) -> None:
    _decodes_or_record_error(cls, json.dumps(value).encode())


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)  # type: ignore[index,call-overload]
    return copy


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
@given(data=st.data(), value=json_values | st.sampled_from(
    [1e20, -1e20, 1e308, float("inf"), float("nan"), 10**40, -1, "9999-12-31T23:59:59",
     [[[[[]]]]], {"": {}}, "\ud800"]))
def test_a_valid_record_with_one_field_replaced(record: Record, data: st.DataObject,
                                                value: Any) -> None:
    wire = json.loads(record.to_json())
    path = data.draw(st.sampled_from(_paths(wire)))
    damaged = _replace(wire, path, value)
    raw = json.dumps(damaged).encode("utf-8", "surrogatepass")
    _decodes_or_record_error(type(record), raw)
    # the fast (msgspec) path sees the same bytes when the version leads
    _decodes_or_record_error(type(record), raw.replace(b'{"v": 1, ', b'{"v":1,', 1))


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
@given(value=st.binary(max_size=1024) | st.none())
def test_topic_consumer_decoding_never_raises(cls: type[Record], value: bytes | None) -> None:
    good, poison = decode_records(cls, value)
    assert all(isinstance(r, cls) for r in good)
    assert all(p.reason for p in poison)


def test_the_issue_cases_are_record_errors() -> None:
    # Given the two cases of issue 11, defect 3: a 1e20 timestamp and deep nesting
    port = json.loads(RECORDS[4].to_json())
    with pytest.raises(RecordError, match="OverflowError|ValueError|out of range"):
        type(RECORDS[4]).from_json(json.dumps({**port, "observed_at": 1e20}))
    with pytest.raises(RecordError, match="nested too deeply"):
        type(RECORDS[4]).from_json(b"[" * 100_000 + b"]" * 100_000)
