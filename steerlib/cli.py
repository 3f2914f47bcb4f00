"""Command line: ``python -m steerlib {prepare,run,worker,status,bench,doctor,export}``.

Each sub-command forwards its remaining arguments to the ``main(argv)`` of its module, so that
``python -m steerlib run --help`` shows that command's own options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "prepare": ("steerlib.models", "Install-time step: convert the embedded model once."),
    "run": ("steerlib.experiment.chain", "Run the notebook chain 01-06 with papermill."),
    "worker": ("steerlib.experiment.workers", "One torchrun worker of a run's sweep."),
    "status": ("steerlib.status", "Progress of runs: step states, sweep units, time left."),
    "bench": ("steerlib.tools.bench", "Benchmark the sweep engine against the plain loop."),
    "doctor": ("steerlib.tools.doctor", "Check the set-up: Python, torch, device, model, scorers."),
    "export": ("steerlib.export", "Write a run's vector as a llama.cpp or repeng control vector."),
}

USAGE = (
    "usage: python -m steerlib {"
    + ",".join(COMMANDS)
    + "} [options]\n\n"
    + "\n".join(f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items())
)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)
