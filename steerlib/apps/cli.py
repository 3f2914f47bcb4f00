"""Command line: ``python -m steerlib COMMAND`` (the sub-commands are listed in ``COMMANDS``).

Each sub-command forwards its remaining arguments to the ``main(argv)`` of its module, so that
``python -m steerlib run --help`` shows that command's own options. ``python -m steerlib
--version`` prints the installed package's version.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS = {
    "prepare": ("steerlib.apps.prepare", "Install-time step: convert the embedded model once."),
    "run": ("steerlib.experiment.chain", "Run the notebook chain 01-06 with papermill."),
    "worker": ("steerlib.experiment.workers", "One torchrun worker of a run's sweep."),
    "status": ("steerlib.apps.status", "Progress of runs: step states, sweep units, time left."),
    "bench": ("steerlib.apps.bench", "Benchmark the sweep engine against the plain loop."),
    "doctor": ("steerlib.apps.doctor", "Check the set-up: Python, torch, device, model, scorers."),
    "export": (
        "steerlib.apps.export",
        "Write a run's vector as a llama.cpp or repeng control vector.",
    ),
    "figures": (
        "steerlib.experiment.figures",
        "Redraw a finished run's figures and report from its products.",
    ),
    "train-scorer": (
        "steerlib.evaluate.scorer_training",
        "Rebuild the minilm-toxicity head from the RTP sample's scorer partition.",
    ),
    "browser": ("steerlib.figures.files", "Find (--install: get) a browser for PNG/PDF figures."),
}

USAGE = (
    "usage: python -m steerlib {"
    + ",".join(COMMANDS)
    + "} [options]\n       python -m steerlib --version\n\n"
    + "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items())
)


def version() -> str:
    """The installed steerlib's version ("unknown" when it is not installed, only on the path)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("steerlib")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in {"-V", "--version"}:
        print(f"steerlib {version()}")
        return 0
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        code = int(module.main(rest) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """Exit quietly when the reader of stdout went away (``python -m steerlib status | head -1``).

    As Python's documentation advises (signal module, "Note on SIGPIPE"): the rest of the
    output goes to ``os.devnull``, so that flushing stdout at exit raises nothing more.

    Returns:
        1, the exit status the documentation gives.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
