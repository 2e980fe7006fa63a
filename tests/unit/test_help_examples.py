"""Every example a `--help` shows runs against the real command tree: its subcommands exist
and each --flag it uses is an option of that command (help text drifts from code
otherwise). The README's `portwatch ...` lines are held to the same rule."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from portwatch.cli import cli

REPO = Path(__file__).resolve().parents[2]


def _commands(group: click.Group, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*path, name)))
    return out


def _example_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("portwatch ")]


def _problems(line: str) -> list[str]:
    """What in one `portwatch ...` line does not exist in the command tree."""
    code = line.split("  #", 1)[0].split(" # ", 1)[0]
    try:
        words = shlex.split(code)[1:]
    except ValueError:
        return [f"{line}: not a shell line"]
    command: click.Command = cli
    options = {o for p in cli.params for o in getattr(p, "opts", [])}
    while words and isinstance(command, click.Group) and not words[0].startswith("-"):
        if words[0] not in command.commands:
            return [f"{line}: no command {words[0]!r}"]
        command = command.commands[words.pop(0)]
        options |= {o for p in command.params for o in getattr(p, "opts", [])}
    if command.name == "report" and words[:1] == ["changes"]:
        command = getattr(command, "changes", command)
        options = {o for p in command.params for o in getattr(p, "opts", [])}
    flags = {w.split("=", 1)[0] for w in words if re.fullmatch(r"--?[a-zA-Z][-\w=]*.*", w)}
    return [f"{line}: {command.name} has no {flag}" for flag in sorted(flags)
            if flag not in options and flag not in ("-h", "--help")]


@pytest.mark.parametrize(("path", "command"), _commands(cli),
                         ids=[" ".join(p) for p, _ in _commands(cli)])
def test_every_help_example_uses_real_commands_and_flags(path: tuple[str, ...],
                                                         command: click.Command) -> None:
    problems = [p for line in _example_lines(command.help or "") for p in _problems(line)]
    assert problems == []


def test_the_top_help_and_the_readme_use_real_commands_and_flags() -> None:
    lines = _example_lines(cli.help or "")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        lines += _example_lines(block)
    assert len(lines) > 30
    assert [p for line in lines for p in _problems(line)] == []


def test_the_checker_finds_a_flag_that_does_not_exist() -> None:
    assert _problems("portwatch report list --colour red") == [
        "portwatch report list --colour red: report has no --colour"]
    assert _problems("portwatch report changes --since 7d --history") == [
        "portwatch report changes --since 7d --history: changes has no --history"]
    assert _problems("portwatch alerts nope") == ["portwatch alerts nope: no command 'nope'"]
    assert _problems("portwatch scan --ports 1-1024 127.0.0.1   # note --fake") == []
