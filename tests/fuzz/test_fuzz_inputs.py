"""Target expressions, port specs and inventory files: any text gives a result or one
TargetError, never another exception (issue 11, defect 9 and "Also"). Hostname lookups
are replaced by a named fake that refuses every name: fuzzing must never query DNS."""

from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

import producers.targets as targets
from producers.targets import (
    TargetError,
    TargetSpec,
    check_total,
    expand,
    parse_ports,
    planned_count,
    read_inventory,
)

PORT_ALPHABET = string.digits + ",- \t*alx"
TARGET_ALPHABET = string.hexdigits + ".:/-[]% ,abcdefxyz"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE resolver (named as such): the fuzzer's names must never reach DNS."""

    def refuse(name: str) -> list[str]:
        raise TargetError(f"cannot resolve hostname {name!r}: fuzzing resolves nothing")

    monkeypatch.setattr(targets, "resolve_hostname", refuse)


@given(spec=st.text(alphabet=PORT_ALPHABET, max_size=40) | st.text(max_size=40))
@example(spec="1-")
@example(spec="-5")
@example(spec="1" * 100_001)
def test_port_specs_parse_to_merged_ranges_or_fail_cleanly(spec: str) -> None:
    try:
        ranges = parse_ports(spec)
    except TargetError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
        return
    assert ranges
    bounds = [(r.first, r.last) for r in ranges]
    assert all(1 <= lo <= hi <= 65535 for lo, hi in bounds)
    assert all(a[1] + 1 < b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    if "-" in spec.strip() and spec.strip() not in ("-",):
        parts = [p.strip() for p in spec.split(",")]
        assert all(not p.startswith("-") and not p.endswith("-") for p in parts)


@given(ports=st.lists(st.integers(1, 65535), min_size=1, max_size=20))
def test_a_list_of_ports_round_trips(ports: list[int]) -> None:
    ranges = parse_ports(",".join(map(str, ports)))
    assert sorted({p for r in ranges for p in r}) == sorted(set(ports))


@given(text=st.text(alphabet=TARGET_ALPHABET, max_size=45) | st.text(max_size=30))
@example(text="[::1")
@example(text="::ffff:127.0.0.1")
@example(text="::ffff:127.0.0.0/120")
@example(text="127.0.0.1-0")
def test_target_expressions_expand_or_fail_cleanly(text: str) -> None:
    spec = TargetSpec(text)
    try:
        count = planned_count(spec)
        check_total([spec], allow_large=False)
        if count > 4096:
            return  # sound, but slow to list per example
        found = expand(spec)
    except TargetError as exc:
        assert "\n" not in str(exc)
        return
    assert len(found) <= max(count, 1) or text.strip().startswith("[")
    for target in found:
        # mapped and compatible IPv6 are folded: what scope judges is what is contacted
        assert not target.ip.startswith("::ffff:")


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(alphabet=TARGET_ALPHABET, max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["target", "targets", "organization", "asset", "Org",
                                       "ip", "name", "hostname", "x"]) | st.text(max_size=5),
                      children, max_size=4),
    max_leaves=20)


def _read(suffix: str, body: bytes) -> list[Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"inventory{suffix}"
        path.write_bytes(body)
        try:
            return list(read_inventory(path))
        except TargetError as exc:
            assert "\n" not in str(exc)
            return None


@given(data=json_like)
@example(data={"\n": False})  # found by the fuzz profile: a two-line error message
def test_yaml_inventories_of_any_shape(data: Any) -> None:
    specs = _read(".yaml", yaml.safe_dump(data).encode())
    for spec in specs or []:
        assert isinstance(spec.text, str) and isinstance(spec.organization, str)


@given(text=st.text(alphabet='#",\r\nab1', max_size=60))
@example(text='# a\rtarget\r127.0.0.1\r')
@example(text='\r#\n')  # a blanked comment's LF after a lone CR: one CRLF, a line lost
def test_csv_comment_blanking_keeps_every_line_and_every_data_line(text: str) -> None:
    from producers.targets import _csv_comments_blanked

    blanked = _csv_comments_blanked(text)
    # as many line endings (the reader's line numbers stay the file's), and every line is
    # either as written or a comment line made blank
    ends = re.compile(r"\r\n|\r|\n")
    assert len(ends.findall(blanked)) == len(ends.findall(text))
    for was, now in zip(ends.split(text), ends.split(blanked), strict=True):
        assert now == was or (was.startswith("#") and now == "")


@given(body=st.binary(max_size=400))
@example(body=b"a: &a [*a]\n")
@example(body=b"[" * 10_000)
@example(body=b"targets: 5\n")
def test_inventory_files_of_any_bytes(body: bytes) -> None:
    _read(".yaml", body)
    _read(".csv", body)


# What chdb's engine writes to stderr when it cannot start becomes the reason of a
# one-line error (stream_processors/store.py): whatever it wrote, one printable line.
ENGINE_LINE = "Code: 62. DB::Exception: Syntax error (in file store/a/b/findings.sql): (\n. x"


@given(before=st.text(max_size=300), after=st.text(max_size=3000))
@example(before="", after="")
@example(before="noise\n", after="\x1b[31m\u202e\r\n" * 200)
def test_the_engines_stderr_becomes_one_bounded_line(before: str, after: str) -> None:
    from stream_processors.store import engine_reason

    reason = engine_reason(before + ENGINE_LINE + after)
    assert reason and "\n" not in reason and "\r" not in reason
    assert reason.isprintable() and len(reason) <= 303
    if not re.search(r"DB::\w*Exception: ", before):  # nothing of its own: none made up
        assert engine_reason(before) == ""
