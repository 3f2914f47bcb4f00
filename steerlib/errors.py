"""Exceptions raised by steerlib, and the exit codes of its commands.

Every error is meant to be read by a person: one sentence that names the culprit (a parameter,
a file and line, a model class) and says how to fix it. They subclass :class:`ValueError` so
that code written against plain Python conventions still catches them.

Exit codes of ``python -m steerlib run`` and ``status`` (also listed in the README):

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      success
1      a notebook of the chain failed (its executed copy shows the error)
2      bad input: a parameter, a parameter file, a prompt file, a model or scorer
3      a damaged run: a file of an existing run is truncated or corrupt
130    interrupted (Ctrl-C); run the same command again to resume
=====  ==========================================================================
"""

from __future__ import annotations

import sys

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DAMAGED_RUN",
    "EXIT_INTERRUPTED",
    "EXIT_STEP_FAILED",
    "ConfigError",
    "DamagedRunError",
    "DataError",
    "ModelError",
    "PreflightError",
    "SteerlibError",
    "exit_code",
    "report_error",
]

EXIT_STEP_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED_RUN = 3
EXIT_INTERRUPTED = 130


class SteerlibError(ValueError):
    """Base class of every error steerlib raises on purpose."""


class ConfigError(SteerlibError):
    """A parameter has a wrong value, type or range."""


class DataError(SteerlibError):
    """A data file or table is missing, empty or malformed."""


class ModelError(SteerlibError):
    """A model, tokenizer, vector or scorer cannot be loaded or does not fit."""


class DamagedRunError(DataError):
    """A file of an existing run is truncated or corrupt; the message says what to delete."""


class PreflightError(SteerlibError):
    """Several problems found before a run starts; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def exit_code(error: SteerlibError) -> int:
    """The documented exit code of a command that stopped on ``error``."""
    return EXIT_DAMAGED_RUN if isinstance(error, DamagedRunError) else EXIT_BAD_INPUT


def report_error(exc: SteerlibError) -> None:
    """Print ``exc`` to stderr, one ``steerlib: `` line per problem."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"steerlib: {line}", file=sys.stderr)
