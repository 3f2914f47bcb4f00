"""The command line's conventions: help text for every option of every sub-command, --version."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tomllib

import pytest

from steerlib.apps.cli import COMMANDS, main
from steerlib.experiment.runs import PROJECT_ROOT


class _Parsed(Exception):
    """Raised instead of parsing, carrying the parser a command's main() built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def command_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser sub-command ``name`` builds: its main() is stopped where it would parse."""

    def stop(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    module = importlib.import_module(COMMANDS[name][0])
    with pytest.raises(_Parsed) as caught:
        module.main([])
    return caught.value.parser


def _walk(parser: argparse.ArgumentParser):
    """Every (parser, action) pair, sub-parsers included."""
    for action in parser._actions:
        yield parser, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_subcommand_has_help(name, monkeypatch):
    parser = command_parser(name, monkeypatch)
    assert parser.prog == f"python -m steerlib {name}"
    assert (parser.description or "").strip(), f"{name}: the parser has no description"
    missing = [
        "/".join(action.option_strings) or action.dest
        for _, action in _walk(parser)
        if action.help is not argparse.SUPPRESS and not (action.help or "").strip()
    ]
    assert not missing, f"`python -m steerlib {name}` options without help: {missing}"
    text = parser.format_help()  # renders every %(default)s; a bad one raises here
    for _, action in _walk(parser):
        for flag in action.option_strings:
            assert flag in text


def test_version_prints_the_package_version(capsys):
    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"steerlib {declared}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "steerlib", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"steerlib {declared}"
    assert (
        "--version"
        in subprocess.run(
            [sys.executable, "-m", "steerlib", "--help"], capture_output=True, text=True, env=env
        ).stdout
    )
