"""Progress of runs: step states, sweep units done and left, and an estimate of the time left.

A sweep on real prompts can take hours on a CPU; ``python -m steerlib status [RUN ...]`` reads
a run directory (never the model) and says how far it is, which layers are complete (each
with its control direction) and, from the times its units were written, when it should end.
A step recorded as ``running`` or ``partial`` is checked against its process: alive, or
"stale: process N is gone, rerun the same command to resume". A run whose products or sweep
units differ from what their step wrote (checksums) is reported as damaged (exit 3), and a run
name with no run exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from steerlib.errors import (
    EXIT_BAD_INPUT,
    EXIT_DAMAGED_RUN,
    EXIT_INTERRUPTED,
    DamagedRunError,
    SteerlibError,
)
from steerlib.experiment.config import RunParams
from steerlib.experiment.preflight import check_run_files
from steerlib.experiment.runs import LIVE_STATES, RunPaths, lock_holder, process_state, runs_root
from steerlib.experiment.sweep import sweep_plan
from steerlib.experiment.table import STEPS
from steerlib.experiment.timings import read_progress, read_timings, timing_lines
from steerlib.generate.partition import WorkUnit

__all__ = ["SweepProgress", "liveness", "main", "sweep_progress"]

_RECORDS = ("params.json", "status.json")
"""Files that make a folder of the runs folder a run (one of them is enough)."""
_RECENT = 10
"""Intervals between unit writes that the time estimate looks at (the latest ones)."""


@dataclass(frozen=True)
class SweepProgress:
    """How far the sweep of one run is.

    Attributes:
        done: Units of the requested sweep on disk.
        total: Units of the requested sweep.
        complete_layers: Layers whose units are all on disk, for every direction.
        seconds_per_unit: Median interval between the latest unit writes (NaN with < 2 units).
        eta: Estimated end (UTC), or ``None`` when done or unknown.
    """

    done: int
    total: int
    complete_layers: list[int]
    seconds_per_unit: float
    eta: datetime | None

    @property
    def left(self) -> int:
        """Units still to generate."""
        return self.total - self.done


def _units(paths: RunPaths, params: RunParams) -> list[WorkUnit]:
    """The units the run's sweep asks for: the sweep step's own plan (:func:`sweep_plan`)."""
    prompts = pd.read_parquet(paths.prompts)
    provenance = json.loads(paths.vectors.with_suffix(".json").read_text(encoding="utf-8"))
    return sweep_plan(params, int(provenance["num_layers"])).units(prompts, params)


def sweep_progress(
    paths: RunPaths, params: RunParams, *, now: datetime | None = None
) -> SweepProgress:
    """Units of ``params``' sweep on disk in ``paths``, complete layers and the time left.

    The partition into units does not depend on prompt lengths for its keys, so no tokenizer
    (and no model) is loaded. The time per unit is the median of the latest intervals between
    unit files' modification times, which skips pauses and restarts.

    Args:
        paths: The run directory.
        params: The run's parameters (``params.json``).
        now: Current time (for tests); default the clock.

    Returns:
        A :class:`SweepProgress`.

    Example:
        >>> paths = RunPaths.for_run("rtp-sample")  # doctest: +SKIP
        >>> sweep_progress(paths, RunParams.validate_mapping(stored)).left  # doctest: +SKIP
        37
    """
    units = _units(paths, params)
    files = {path.stem: path for path in paths.sweep_parts.glob("*.parquet")}
    done = [unit.key for unit in units if unit.key in files]
    by_layer: dict[int, list[str]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit.key)
    complete = sorted(layer for layer, keys in by_layer.items() if all(k in files for k in keys))
    times = np.sort([files[key].stat().st_mtime for key in done])
    intervals = np.diff(times)[-_RECENT:]
    per_unit = float(np.median(intervals)) if len(intervals) else math.nan
    left = len(units) - len(done)
    eta = None
    if left and math.isfinite(per_unit):
        eta = (now or datetime.now(UTC)) + timedelta(seconds=left * per_unit)
    return SweepProgress(len(done), len(units), complete, per_unit, eta)


def liveness(paths: RunPaths, record: dict[str, object]) -> str:
    """Whether the process behind a ``running`` or ``partial`` step record is still there.

    The record names its process (pid and host); a record from an older version does not, and
    then the run's lock says who holds the run, if anyone.

    Returns:
        ``"process N is running"``, ``"stale: process N is gone, rerun the same command to
        resume"``, or a line saying the process runs on another host (not checkable here).
    """
    state, pid = process_state(record)
    host = record.get("host")
    if state == "unknown":
        holder = lock_holder(paths)
        if holder is None:
            return "stale: no process holds the run, rerun the same command to resume"
        state, pid = process_state(holder)
        host = holder.get("host")
    if state == "alive":
        return f"process {pid} is running"
    if state == "gone":
        return f"stale: process {pid} is gone, rerun the same command to resume"
    if state == "elsewhere":
        return f"process {pid} on host {host} (not checkable from this host)"
    return "stale: no process holds the run, rerun the same command to resume"


def report(run_name: str, runs_dir: str | None = None) -> str:
    """A few lines on run ``run_name``: each step's state and the sweep's progress."""
    paths = RunPaths.for_run(run_name, runs_dir)
    if not paths.params.is_file():
        return f"{run_name}: no run at {paths.root}"
    stored = paths.stored_params()
    try:
        params = RunParams.validate_mapping(stored)
    except SteerlibError as exc:
        raise DamagedRunError(
            f"run {run_name!r}: {paths.params} holds parameters this version refuses "
            f"({'; '.join(str(exc).splitlines())}); "
            "rerun it with corrected parameters and --force, or delete it."
        ) from None
    lines = [f"{run_name} ({paths.root})", *_step_lines(paths)]
    recorded = paths.read_status()
    if paths.prompts.is_file() and paths.vectors.with_suffix(".json").is_file():
        try:
            progress = sweep_progress(paths, params)
        except (OSError, ValueError, KeyError) as exc:  # pyarrow and json errors are ValueErrors
            if isinstance(exc, SteerlibError):
                raise
            raise DamagedRunError(
                f"run {run_name!r}: its prompts.parquet or vectors.json is damaged "
                f"({type(exc).__name__}); delete the damaged file and rerun the run with --force."
            ) from None
        line = f"  sweep units     {progress.done}/{progress.total}"
        if math.isfinite(progress.seconds_per_unit):
            line += f", {progress.seconds_per_unit:.0f} s per unit"
        if progress.eta is not None:
            line += f", about {progress.left * progress.seconds_per_unit / 3600:.1f} h left"
            line += f" (ends near {progress.eta:%H:%M} UTC if it is running)"
        lines.append(line)
        lines.append(f"  complete layers {progress.complete_layers or 'none yet'}")
    lines += _timing_report(paths, recorded)
    return "\n".join(lines)


def _step_lines(paths: RunPaths) -> list[str]:
    """One line per declared step, in order: its state, seconds and liveness.

    A step its notebook recorded ``done`` while the chain runner executed it, and that the
    runner has not recorded whole (its partial executed copy is still there: the run was
    killed before the notebook ended), is shown as ``unfinished``: the runner runs it again.
    A step run by hand in Jupyter is never recorded whole and is shown as ``done``.
    """
    recorded = paths.read_status()
    lines = []
    for step in STEPS:  # the declared steps, in order, whether they ran or not
        record = recorded.get(step.name, {"state": "not run"})
        state = str(record.get("state", "?"))
        detail = ", ".join(f"{k} {v}" for k, v in record.items() if k in ("seconds", "reason"))
        partial = paths.notebooks / f".partial-{step.name}.ipynb"
        if state == "done" and record.get("complete") is not True and partial.is_file():
            state = "unfinished"
            detail = liveness(paths, {})
            if detail.startswith("stale"):
                detail = "its notebook did not end; rerun the same command to run it again"
        elif state in LIVE_STATES:
            detail = ", ".join(x for x in (detail, liveness(paths, record)) if x)
        lines.append(f"  {step.name:<15} {state:<8} {detail}".rstrip())
    return lines


def _without_params(paths: RunPaths) -> str:
    """The steps of a run folder that has no ``params.json``; raises the way out after them.

    Raises:
        DamagedRunError: Always: the run's parameters are gone (deleted, or a ``--from-run``
            interrupted before it recorded them); the runner records them again.
    """
    if paths.status.is_file():
        print("\n".join([f"{paths.name} ({paths.root})", *_step_lines(paths)]), flush=True)
    raise DamagedRunError(
        f"run {paths.name!r} has no {paths.params.name} (deleted, or a --from-run that was "
        "interrupted): run the command that made the run again, with its own --set values (other "
        "values are refused); it records the parameters again and keeps the finished steps."
    )


def _timing_report(paths: RunPaths, recorded: dict[str, dict]) -> list[str]:
    """The phase step 05 is in while it runs; the timing table once no step runs."""
    live = [name for name, record in recorded.items() if record.get("state") in LIVE_STATES]
    if live:
        now = read_progress(paths)
        if now is None or now.step not in live or _gone(paths, recorded[now.step]):
            return []  # nothing recorded, or left by a process that is gone
        count = f" {now.done}/{now.total}" if now.total is not None else ""
        inside = ": ".join(
            x for x in (now.phase if now.phase != now.stage else "", now.detail) if x
        )
        since = datetime.fromtimestamp(now.stage_started, UTC)
        return [
            f"  now             {now.stage}{count}"
            + (f" ({inside})" if inside else "")
            + f", since {since:%H:%M:%S} UTC"
        ]
    timings = read_timings(paths)
    if not timings:
        return []
    steps = [step.name for step in STEPS]
    merged = {
        name: {"seconds": recorded.get(name, {}).get("seconds"), **timings.get(name, {})}
        for name in steps
    }
    lines = ["  timings (seconds of each step's last run; a phase leaves out those inside it)"]
    return lines + [f"    {line}" for line in timing_lines(merged, steps)]


def _gone(paths: RunPaths, record: dict[str, object]) -> bool:
    """Whether the process behind a live step record is gone (:func:`liveness` says stale)."""
    return liveness(paths, record).startswith("stale")


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib status [RUN ...] [--runs-dir DIR]``: progress of runs."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib status", description="Progress of runs (default: all of them)."
    )
    parser.add_argument("runs", nargs="*", help="run names (default: every run)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    args = parser.parse_args(argv)
    root = Path(args.runs_dir) if args.runs_dir else runs_root()
    names = args.runs or sorted(
        p.name for p in root.glob("*") if any((p / n).is_file() for n in _RECORDS)
    )
    if not names:
        print(f"no runs under {root}")
        return 0
    code = 0
    try:
        for name in names:
            # A run that cannot be read gets its own line; the others are still reported.
            try:
                paths = RunPaths.for_run(name, args.runs_dir)
                if not paths.params.is_file() and paths.root.is_dir() and any(paths.root.iterdir()):
                    _without_params(paths)
                if not paths.params.is_file():
                    print(
                        f"steerlib: no run {name!r} at {paths.root}; the runs there are listed "
                        f"by `python -m steerlib status{_runs_dir_option(args.runs_dir)}`.",
                        file=sys.stderr,
                        flush=True,
                    )
                    code = max(code, EXIT_BAD_INPUT)
                    continue
                print(report(name, args.runs_dir), flush=True)
                # Products and units whose files differ from what their step wrote.
                check_run_files(paths)
            except DamagedRunError as exc:
                for line in str(exc).splitlines():
                    print(f"steerlib: {line}", file=sys.stderr, flush=True)
                code = max(code, EXIT_DAMAGED_RUN)
            except SteerlibError as exc:
                print(f"steerlib: {exc}", file=sys.stderr, flush=True)
                code = max(code, EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("steerlib: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _runs_dir_option(runs_dir: str | None) -> str:
    """`` --runs-dir DIR`` when one was given, for a suggested command."""
    return f" --runs-dir {runs_dir}" if runs_dir else ""
