"""Step 05's progress on the runner's console, read from the run's own records.

Step 05 runs inside a notebook kernel, so its progress bars stay in the notebook. While the
chain runner executes it, :class:`SweepWatcher` polls the run directory from a background
thread and draws ``tqdm`` bars on stderr, one per stage of the step:

* the grid: its unit files in ``sweep_parts/`` (the same records ``python -m steerlib status``
  reads), units done of the total, generated tokens per second and the time left;
* every other stage (setup, the alpha search, assembly, the KL pass): what the step writes to
  ``progress.json`` (:mod:`steerlib.experiment.timings`), its count done of the total with the
  time left where it has a count (the alpha search's layers, the KL pass's variants), its time
  so far otherwise, and what runs inside it (search passes, searched units, scoring ...).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

from steerlib.errors import SteerlibError
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.timings import GRID_PHASE, Progress, read_progress

__all__ = ["SweepWatcher"]


class SweepWatcher:
    """Console bars of a run's step 05, updated from a background thread.

    Use it as a context manager around the execution of step 05. During the grid (or when
    the step records no stages: torchrun workers) it waits for the run's prompts and vectors
    (written by steps 01 and 04) to know the units, then counts the unit files as they
    appear; tokens per second count every new token the finished units asked for (prompts ×
    samples × alphas × ``max_new_tokens``). Every other stage the step records in
    ``progress.json`` gets a bar of its own; ``stages`` lists them as they were shown.

    Args:
        paths: The run.
        interval: Seconds between two looks at the run directory.
        file: Where the bar is drawn (default stderr).
        disable: Draw nothing (``--no-progress``).

    Example:
        >>> with SweepWatcher(paths):  # doctest: +SKIP
        ...     papermill.execute_notebook("05_sweep.ipynb", ...)
    """

    def __init__(
        self,
        paths: RunPaths,
        *,
        interval: float = 2.0,
        file: TextIO | None = None,
        disable: bool = False,
    ) -> None:
        self.paths = paths
        self.interval = interval
        self.file = file
        self.disable = disable
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = 0
        self.total = 0
        self.stages: list[str] = []
        self._since = time.time()

    def __enter__(self) -> SweepWatcher:
        self._since = time.time()
        if not self.disable:
            self._thread = threading.Thread(target=self._watch, name="sweep-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _units(self) -> tuple[dict[str, int], Any] | None:
        """Unit key -> new tokens it generates, or None while the run cannot say yet."""
        paths = self.paths
        provenance = paths.vectors.with_suffix(".json")
        if not (paths.params.is_file() and paths.prompts.is_file() and provenance.is_file()):
            return None
        try:
            import pandas as pd

            from steerlib.experiment.config import RunParams
            from steerlib.experiment.plan import sweep_plan

            params = RunParams.validate_mapping(paths.stored_params())
            prompts = pd.read_parquet(paths.prompts)
            layers = json.loads(provenance.read_text(encoding="utf-8"))["num_layers"]
            plan = sweep_plan(params, int(layers))
            units = plan.units(prompts, params)
        except Exception:  # a file being written, a damaged one (the step reports it), or an
            # import that failed in this thread while another imports: the next look tries again
            return None
        per_prompt = params.samples_per_prompt * len(plan.alphas) * params.max_new_tokens
        return {unit.key: len(unit.prompt_ids) * per_prompt for unit in units}, params

    def _finished(self, keys: dict[str, int]) -> list[str]:
        parts = self.paths.sweep_parts
        if not parts.is_dir():
            return []
        return [path.stem for path in parts.glob("*.parquet") if path.stem in keys]

    def _watch(self) -> None:
        grid = _GridBar(self)
        stage: _StageBar | None = None
        grid_seen = False
        while True:
            stopping = self._stop.wait(self.interval)
            now = read_progress(self.paths)
            if now is not None and now.started < self._since:
                now = None  # left by an earlier attempt
            if now is None or now.stage == GRID_PHASE:
                grid_seen = grid_seen or now is not None
                if stage is not None and now is not None:  # the stage before the grid is over
                    stage.close(finished=True)
                    stage = None
                grid.look()
            else:
                # A stage after the grid closes its bar; one before it (setup, reported once
                # the kernel has started) only puts the bar aside until the grid begins.
                if grid_seen:
                    grid.close()
                else:
                    grid.put_aside()
                if stage is not None and stage.name != now.stage:
                    stage.close(finished=True)
                    stage = None
                if stage is None:
                    stage = _StageBar(now, self.file or sys.stderr)
                    self.stages.append(now.stage)
                stage.show(now)
            if stopping:
                break
        grid.close()
        if stage is not None:
            stage.close(finished=self._step_done())

    def _step_done(self) -> bool:
        """Whether step 05 recorded itself done (its last stage then ended whole)."""
        try:
            return self.paths.step_state("05_sweep") == "done"
        except SteerlibError:  # a damaged status.json: the runner reports it
            return False


class _GridBar:
    """The bar of the grid's units: units done of the total, tokens per second, time left."""

    def __init__(self, watcher: SweepWatcher) -> None:
        self.watcher = watcher
        self.tokens: dict[str, int] | None = None
        self.seen: set[str] = set()
        self.bar: Any = None
        self.closed = False
        self.started = time.monotonic()
        self.new_tokens = 0

    def look(self) -> None:
        """Count the unit files written since the last look (the bar opens at the first)."""
        if self.closed:
            return
        if self.bar is None and not self._open():
            return
        self._count()
        if self.watcher.done >= self.watcher.total:
            self.close()

    def _open(self) -> bool:
        """Open the bar once the run can say its units; whether it is open."""
        from tqdm.auto import tqdm

        watcher = self.watcher
        found = watcher._units()
        if found is None:
            return False
        self.tokens = found[0]
        if not self.tokens:
            self.closed = True
            return False
        self.seen = set(watcher._finished(self.tokens))
        watcher.total, watcher.done = len(self.tokens), len(self.seen)
        self.started = time.monotonic()
        self.bar = tqdm(
            total=watcher.total,
            initial=watcher.done,
            desc="[steerlib] sweep",
            unit="unit",
            file=watcher.file or sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        return True

    def _count(self) -> None:
        watcher, tokens = self.watcher, self.tokens or {}
        fresh = [key for key in watcher._finished(tokens) if key not in self.seen]
        if fresh:
            self.seen.update(fresh)
            self.new_tokens += sum(tokens[key] for key in fresh)
            self.bar.update(len(fresh))
            watcher.done = len(self.seen)
            rate = self.new_tokens / max(time.monotonic() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        """Close the bar (the grid is over, counted a last time); later looks do nothing."""
        if not self.closed and self.bar is not None:
            self._count()
            self.bar.close()
        self.closed = True

    def put_aside(self) -> None:
        """Erase the bar if it is open; the next look opens it again (a stage runs first)."""
        if not self.closed and self.bar is not None:
            self.bar.leave = False
            self.bar.close()
            self.bar = None


class _StageBar:
    """The bar of one stage after the grid: its count and time left, or its time so far."""

    def __init__(self, now: Progress, file: TextIO) -> None:
        from tqdm.auto import tqdm

        self.name = now.stage
        counted = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
        self.bar = tqdm(
            total=now.total,
            initial=now.done,
            desc=f"[steerlib] {now.stage}",
            file=file,
            dynamic_ncols=True,
            mininterval=1.0,
            bar_format="{desc}: "
            + (counted if now.total is not None else "[{elapsed}]")
            + "{postfix}",
        )

    def show(self, now: Progress) -> None:
        """Bring the bar to ``now``: its count and what runs inside the stage."""
        if now.done > self.bar.n:
            self.bar.update(now.done - self.bar.n)
        inside = now.phase if now.phase != now.stage else ""
        text = ": ".join(part for part in (inside, now.detail) if part)
        self.bar.set_postfix_str(text, refresh=True)

    def close(self, *, finished: bool = False) -> None:
        """Close the bar; ``finished``: the stage ended (its count is whole)."""
        if finished and self.bar.total is not None and self.bar.n < self.bar.total:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.set_postfix_str("", refresh=False)
        self.bar.close()
