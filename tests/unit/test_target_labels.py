"""Targets on one address (producers/targets.py ``resolve_targets``): each address is
scanned once, under the first target's labels, and every later target dropped there under
other labels is said in one warning line (bounded); an identical repeat is silent.
Loopback only: ``localhost`` and 127.0.0.0/8 literals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from producers.targets import (
    MAX_DUPLICATE_WARNINGS,
    TargetSpec,
    read_inventory,
    resolve_hostname,
    resolve_targets,
)

LOGGER = "producers.targets"
TAIL = "scanned once, under the first"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def test_the_readme_inventory_says_which_label_was_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given the README's inventory: 127.0.0.1 as web-1, localhost as web-2
    inventory = tmp_path / "assets.yaml"
    inventory.write_text("Example Corp:\n"
                         "  - {target: 127.0.0.1, asset: web-1}\n"
                         "  - target: localhost\n"
                         "    asset: web-2\n", encoding="utf-8")
    # When resolved
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = resolve_targets(read_inventory(inventory))
    # Then 127.0.0.1 is scanned once, as web-1, and the dropped web-2 is said in one line
    first = [t for t in targets if t.ip == "127.0.0.1"]
    assert [(t.target, t.organization, t.asset) for t in first] == [
        ("127.0.0.1", "Example Corp", "web-1")]
    assert _warnings(caplog) == [
        f"localhost (asset web-2) is 127.0.0.1, already scanned as 127.0.0.1 (asset web-1): "
        f"{TAIL}"]


def test_unlabelled_command_line_targets_name_what_was_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    # Given `scan 127.0.0.1 ::1 localhost --org Example`: localhost's addresses are listed
    specs = [TargetSpec(t, "Example") for t in ("127.0.0.1", "::1", "localhost")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = resolve_targets(specs)
    # Then the literals keep their addresses, and each address localhost lost is said
    assert [t.target for t in targets] == ["127.0.0.1", "::1"]
    assert _warnings(caplog) == [
        f"localhost is {ip}, already scanned as {ip}: {TAIL}"
        for ip in resolve_hostname("localhost")]


def test_an_organization_that_differs_is_named(caplog: pytest.LogCaptureFixture) -> None:
    specs = [TargetSpec("127.0.0.1", "Org A", "db"), TargetSpec("127.0.0.1", "Org B", "db")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = resolve_targets(specs)
    assert [(t.organization, t.asset) for t in targets] == [("Org A", "db")]
    assert _warnings(caplog) == [
        f"127.0.0.1 (organization Org B) is 127.0.0.1, already scanned as 127.0.0.1 "
        f"(organization Org A): {TAIL}"]


def test_identical_duplicates_are_dropped_silently(caplog: pytest.LogCaptureFixture) -> None:
    # Given the same targets with the same labels twice (a line repeated in an inventory)
    specs = [TargetSpec("127.0.0.1-2", "Org", "web"), TargetSpec("127.0.0.1-2", "Org", "web"),
             TargetSpec("127.0.0.3", "Org", "web"), TargetSpec("127.0.0.3", "Org", "web")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = resolve_targets(specs)
    # Then each address once, and nothing said
    assert [(t.ip, t.target) for t in targets] == [
        ("127.0.0.1", "127.0.0.1-2"), ("127.0.0.2", "127.0.0.1-2"), ("127.0.0.3", "127.0.0.3")]
    assert _warnings(caplog) == []


@pytest.mark.parametrize(("extra", "summary"), [
    (1, "... and 1 more target resolving to an address already listed"),
    (6, "... and 6 more targets resolving to an address already listed"),
])
def test_many_collisions_are_bounded_then_counted(
        caplog: pytest.LogCaptureFixture, extra: int, summary: str) -> None:
    # Given a block listed twice under two assets: more collisions than warning lines
    count = MAX_DUPLICATE_WARNINGS + extra
    block = f"127.0.0.1-{count}"
    specs = [TargetSpec(block, asset="first"), TargetSpec(block, asset="second")]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        targets = resolve_targets(specs)
    # Then every address once under the first label; N lines, then one line for the rest
    assert len(targets) == count
    assert {t.asset for t in targets} == {"first"}
    assert _warnings(caplog) == [
        f"{block} (asset second) is 127.0.0.{i}, already scanned as {block} (asset first): "
        f"{TAIL}" for i in range(1, MAX_DUPLICATE_WARNINGS + 1)] + [summary]


def test_exactly_n_collisions_need_no_summary(caplog: pytest.LogCaptureFixture) -> None:
    block = f"127.0.0.1-{MAX_DUPLICATE_WARNINGS}"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        resolve_targets([TargetSpec(block, "A"), TargetSpec(block, "B")])
    lines = _warnings(caplog)
    assert len(lines) == MAX_DUPLICATE_WARNINGS
    assert all(line.endswith(TAIL) for line in lines)
