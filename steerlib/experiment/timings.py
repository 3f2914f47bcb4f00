"""Where a run's time goes: each step's seconds and the phases inside step 05.

Step 05 runs inside a notebook kernel, so it records its own phases: :func:`recording` around
the step makes :func:`phase` (one ``with`` per phase: setup, grid generation, toxicity scoring,
judge perplexity, alpha search, search passes, searched units, KL pass, assembly) time it with
one ``perf_counter`` at each boundary (at most a few per sweep unit, never per token or batch;
no device sync). A phase's seconds leave out the phases inside it (scoring inside grid
generation counts as scoring), so the phases and the step's rest add up to the step. Outside
:func:`recording` (another step, a torchrun worker) :func:`phase` does nothing.

Two small files of the run directory, each written atomically (:mod:`steerlib._io`):

* ``progress.json`` — what the step is doing now: the outermost phase (the *stage*, with
  ``done`` of ``total`` where :func:`advance` counts it) and the innermost one. The chain
  runner's console bar (:class:`~steerlib.experiment.progress.SweepWatcher`) and
  ``python -m steerlib status`` read it; it goes when the step ends.
* ``timings.json`` (format :data:`TIMINGS_FORMAT`) — ``{"format", "steps": {step: {
  "wall_seconds", "started", "recorded_seconds", "phases": {name: {"seconds", "count"}}}}}``:
  ``wall_seconds`` by the chain runner (kernel start included, :func:`timed_notebook`), the rest
  by the step (``started``: when, as ``time.time()``). :func:`timing_lines` makes the table
  ``run`` prints and ``status`` shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlib._io import atomic_write_json

__all__ = [
    "GRID_PHASE",
    "PROGRESS_FILE",
    "TIMINGS_FILE",
    "TIMINGS_FORMAT",
    "Progress",
    "advance",
    "phase",
    "print_timings",
    "read_progress",
    "read_timings",
    "record_wall_seconds",
    "recording",
    "timed_notebook",
    "timing_lines",
]

GRID_PHASE = "grid generation"
"""The phase of step 05 whose console bar counts unit files (not ``progress.json``)."""
TIMINGS_FILE = "timings.json"
PROGRESS_FILE = "progress.json"
TIMINGS_FORMAT = 1
"""Version of ``timings.json``."""


@dataclass(frozen=True)
class Progress:
    """What a recording step is doing now (``progress.json``).

    Attributes:
        step: The step (``"05_sweep"``).
        stage: The outermost phase running.
        done: How many of the stage's ``total`` are done.
        total: Its count, or None when it has none.
        phase: The innermost phase running (the stage itself when nothing runs inside it).
        detail: What the innermost phase works on (e.g. ``"layer 12, caa"``), or ``""``.
        stage_started: When the stage began (``time.time()``).
        started: When the step's recording began (``time.time()``).
    """

    step: str
    stage: str
    done: int
    total: int | None
    phase: str
    detail: str
    stage_started: float
    started: float


@dataclass
class _Open:
    """A phase being timed."""

    name: str
    started: float
    total: int | None = None
    detail: str = ""
    done: int = 0
    inner: float = 0.0  # seconds of the phases inside it
    wall: float = field(default_factory=time.time)


class _Recorder:
    """The phases of one step, in one process."""

    def __init__(self, root: Path, step: str) -> None:
        self.root = root
        self.step = step
        self.started = time.perf_counter()
        self.wall = time.time()
        self.stack: list[_Open] = []
        self.phases: dict[str, dict[str, float]] = {}

    def enter(self, name: str, total: int | None, detail: str) -> None:
        self.phases.setdefault(name, {"seconds": 0.0, "count": 0})  # in the order they begin
        self.stack.append(_Open(name, time.perf_counter(), total, detail))
        self.write_progress()

    def exit(self) -> None:
        ended = self.stack.pop()
        elapsed = time.perf_counter() - ended.started
        record = self.phases[ended.name]
        record["seconds"] += elapsed - ended.inner
        record["count"] += 1
        if self.stack:
            self.stack[-1].inner += elapsed
            self.write_progress()

    def advance(self, n: int) -> None:
        counted = next((p for p in reversed(self.stack) if p.total is not None), None)
        if counted is not None:
            counted.done += n
            self.write_progress()

    def write_progress(self) -> None:
        if not self.stack:
            return
        stage, inner = self.stack[0], self.stack[-1]
        counted = next((p for p in reversed(self.stack) if p.total is not None), stage)
        record = {
            "step": self.step,
            "stage": stage.name,
            "done": counted.done,
            "total": counted.total,
            "phase": inner.name,
            "detail": inner.detail,
            "stage_started": stage.wall,
            "started": self.wall,
        }
        atomic_write_json(self.root / PROGRESS_FILE, record)

    def finish(self) -> None:
        seconds = time.perf_counter() - self.started
        phases = {
            name: {"seconds": round(r["seconds"], 2), "count": int(r["count"])}
            for name, r in self.phases.items()
        }
        _update_step(
            self.root,
            self.step,
            replace=True,
            started=self.wall,
            recorded_seconds=round(seconds, 2),
            phases=phases,
        )
        (self.root / PROGRESS_FILE).unlink(missing_ok=True)


_ACTIVE: list[_Recorder] = []
"""The step recording in this process (at most one)."""


@contextmanager
def recording(paths: Any, step: str) -> Iterator[None]:
    """Record the phases of ``step`` (a run's step running in this process) while inside.

    The phases go to ``timings.json`` when the step ends (also when it fails), replacing that
    step's phases of an earlier attempt; ``progress.json`` follows the phases meanwhile.

    Args:
        paths: The run (:class:`~steerlib.experiment.runs.RunPaths`).
        step: The step's name.
    """
    recorder = _Recorder(Path(paths.root), step)
    _ACTIVE.append(recorder)
    try:
        yield
    finally:
        _ACTIVE.remove(recorder)
        recorder.finish()


@contextmanager
def phase(name: str, *, total: int | None = None, detail: str = "") -> Iterator[None]:
    """Time the code inside as phase ``name`` of the recording step (nothing outside one).

    Args:
        name: The phase, as the timing table names it.
        total: How many things it does, counted by :func:`advance` (the console shows the
            count and the time left).
        detail: What it works on now, shown next to the phase.
    """
    if not _ACTIVE:
        yield
        return
    recorder = _ACTIVE[-1]
    recorder.enter(name, total, detail)
    try:
        yield
    finally:
        recorder.exit()


def advance(n: int = 1) -> None:
    """Count ``n`` more things done by the innermost phase that has a ``total``."""
    if _ACTIVE:
        _ACTIVE[-1].advance(n)


def read_progress(paths: Any) -> Progress | None:
    """What the run's recording step is doing now; None when nothing records (or unreadable)."""
    record = _read_json(Path(paths.root) / PROGRESS_FILE)
    try:
        return Progress(
            step=str(record["step"]),
            stage=str(record["stage"]),
            done=int(record["done"]),
            total=None if record.get("total") is None else int(record["total"]),
            phase=str(record["phase"]),
            detail=str(record.get("detail") or ""),
            stage_started=float(record["stage_started"]),
            started=float(record["started"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_timings(paths: Any) -> dict[str, dict[str, Any]]:
    """The steps' records of ``timings.json`` ({} when absent or unreadable: display only)."""
    steps = _read_json(Path(paths.root) / TIMINGS_FILE).get("steps", {})
    return steps if isinstance(steps, dict) else {}


def record_wall_seconds(
    paths: Any, step: str, seconds: float, *, since: float | None = None
) -> None:
    """Record how long the chain runner waited for ``step`` (its kernel included).

    Args:
        paths: The run.
        step: The step.
        seconds: Its wall time.
        since: When the runner started it (``time.time()``): phases the step recorded before
            (an earlier attempt's, when this one recorded none) are dropped.
    """
    root = Path(paths.root)
    steps = _read_json(root / TIMINGS_FILE).get("steps", {})
    record = steps.get(step, {}) if isinstance(steps, dict) else {}
    if since is not None and float(record.get("started", 0.0)) < since:
        record = {}
    _update_step(root, step, replace=True, **{**record, "wall_seconds": round(seconds, 2)})


@contextmanager
def timed_notebook(paths: Any, step: str, executed: Path, ran: set[str]) -> Iterator[None]:
    """Time the chain runner's execution of ``step``'s notebook (skipped or not) inside.

    The notebook ran when its executed copy ``executed`` was replaced (the runner puts a new
    copy in place, failed or not; a skipped step leaves it as it was): then ``step`` is added
    to ``ran`` and its wall time recorded (:func:`record_wall_seconds`).
    """
    before = _file_identity(executed)
    begun, wall = time.perf_counter(), time.time()
    try:
        yield
    finally:
        if _file_identity(executed) != before:
            ran.add(step)
            record_wall_seconds(paths, step, time.perf_counter() - begun, since=wall)


def print_timings(paths: Any, steps: list[str], ran: set[str]) -> None:
    """Print the run's timing table for ``steps``; those not in ``ran`` show as skipped."""
    skipped = frozenset(step for step in steps if step not in ran)
    print("[steerlib] timings (wall clock; a phase leaves out the phases inside it):")
    for line in timing_lines(read_timings(paths), steps, skipped=skipped):
        print(f"  {line}")


def timing_lines(
    records: Mapping[str, Mapping[str, Any]],
    steps: list[str],
    *,
    skipped: frozenset[str] = frozenset(),
) -> list[str]:
    """The timing table: one line per step, step 05's phases under it, and the total.

    Args:
        records: :func:`read_timings`' steps; a step without ``wall_seconds`` shows its
            ``recorded_seconds`` or, when given, ``seconds`` (``status.json``'s).
        steps: The steps, in order.
        skipped: Steps the runner skipped this time (shown as skipped).

    Returns:
        Lines of text, without a trailing newline.
    """
    total = sum(_seconds(records.get(step, {})) or 0.0 for step in steps if step not in skipped)
    lines = [f"{'step / phase':<34} {'seconds':>9} {'share':>7}"]
    for step in steps:
        record = records.get(step, {})
        seconds = _seconds(record)
        if step in skipped or seconds is None:
            lines.append(f"{step:<34} {'skipped (done earlier)' if step in skipped else '-':>9}")
            continue
        lines.append(_row(step, seconds, total))
        phases = record.get("phases") or {}
        for name, phase_record in phases.items():
            count = int(phase_record.get("count", 1))
            label = f"  {name}" + (f" (x{count})" if count > 1 else "")
            lines.append(_row(label, float(phase_record.get("seconds", 0.0)), total))
        if phases:
            # Each figure is rounded to 0.01 s, so the phases may sum a little past the step.
            rest = max(0.0, seconds - sum(float(r.get("seconds", 0.0)) for r in phases.values()))
            lines.append(_row("  rest of the step", rest, total))
    lines.append(_row("total", total, 0.0))
    return lines


def _row(label: str, seconds: float, total: float) -> str:
    share = f"{100 * seconds / total:6.1f}%" if total > 0 else ""
    return f"{label:<34} {seconds:9.1f} {share:>7}".rstrip()


def _seconds(record: Mapping[str, Any]) -> float | None:
    for key in ("wall_seconds", "seconds", "recorded_seconds"):
        if record.get(key) is not None:
            return float(record[key])
    return None


def _file_identity(path: Path) -> tuple[int, int] | None:
    """``path``'s inode and modification time (a replaced file has others); None: absent."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _update_step(root: Path, step: str, *, replace: bool = False, **values: Any) -> None:
    """Set ``values`` in ``step``'s record of ``timings.json`` (read, change, write atomically).

    With ``replace`` the step's record is ``values`` alone.
    """
    steps = _read_json(root / TIMINGS_FILE).get("steps", {})
    steps = steps if isinstance(steps, dict) else {}
    steps[step] = {**({} if replace else steps.get(step, {})), **values}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / TIMINGS_FILE, {"format": TIMINGS_FORMAT, "steps": steps})


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when absent, being replaced, or damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
