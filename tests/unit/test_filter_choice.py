"""Optional filters among fixed values (``console.filter_choice``): --help lists only the
real values (it listed an empty one, ``[|info|low|...]``), an absent flag reads as ''
(no filter, as the report SQL expects) and a value outside the list is refused."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from portwatch.cli import cli
from portwatch.console import filter_choice


@click.command()
@click.option("--color", **filter_choice("green", "red"))
def _probe(color: str) -> None:
    click.echo(repr(color))


def test_absent_flag_is_no_filter_and_a_given_one_is_kept() -> None:
    runner = CliRunner()
    assert runner.invoke(_probe, []).output == "''\n"
    assert runner.invoke(_probe, ["--color", "red"]).output == "'red'\n"


def test_any_case_is_taken_and_passed_on_as_listed() -> None:
    # README: filters ignore case; `--grade WEAK` was refused (a review)
    runner = CliRunner()
    assert runner.invoke(_probe, ["--color", "RED"]).output == "'red'\n"
    assert runner.invoke(_probe, ["--color", "Green"]).output == "'green'\n"


def test_value_outside_the_list_is_refused() -> None:
    result = CliRunner().invoke(_probe, ["--color", "blue"])
    assert result.exit_code == 2
    assert "'blue' is not one of 'green', 'red'" in result.output


@pytest.mark.parametrize(("command", "listed"), [
    (["report", "--help"], "--color [green|yellow|red]"),
    (["report", "--help"], "--grade [weak|medium|strong]"),
    (["report", "--help"], "--prevalence [very common|somewhat common|less common|rare]"),
    (["report", "changes", "--help"], "--severity [info|low|medium|high|critical]"),
    (["alerts", "log", "--help"], "--state [pending|retrying|sent|failed]"),
])
def test_help_lists_only_real_values(command: list[str], listed: str) -> None:
    result = CliRunner().invoke(cli, command, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert listed in result.output
    assert "[|" not in result.output


def test_a_bad_choice_is_echoed_as_typed_on_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    from portwatch.cli import main

    # Given a value with two blanks inside (a choice has one), when refused
    assert main(["report", "list", "--prevalence", "very  common"]) == 2
    err = capfd.readouterr().err
    # Then the line quotes it as typed: squeezed, it read "'very common' is not one of
    # 'very common', ..." (a review); and it is one line
    assert "'very  common' is not one of 'very common'" in err
    assert err.count("\n") == 1 and err.startswith("portwatch: error: ")
