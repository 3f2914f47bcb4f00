"""The sweep's progress on the runner's console, read from the run's own records.

Step 05 runs inside a notebook kernel, so its progress bars stay in the notebook. While the
chain runner executes it, :class:`SweepWatcher` polls the run directory from a background
thread (the unit files in ``sweep_parts/``, the same records ``python -m steerlib status``
reads) and draws one ``tqdm`` bar on stderr: units done of the total, generated tokens per
second and the time left.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

from steerlib.experiment.runs import RunPaths

__all__ = ["SweepWatcher"]


class SweepWatcher:
    """A console bar of a run's sweep units, updated from a background thread.

    Use it as a context manager around the execution of step 05; it waits for the run's
    prompts and vectors (written by steps 01 and 04) to know the units, then counts the unit
    files as they appear. Tokens per second count every new token the finished units asked for
    (prompts × samples × alphas × ``max_new_tokens``).

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

    def __enter__(self) -> SweepWatcher:
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
        import pandas as pd

        from steerlib.experiment.config import RunParams
        from steerlib.experiment.sweep import sweep_plan

        paths = self.paths
        provenance = paths.vectors.with_suffix(".json")
        if not (paths.params.is_file() and paths.prompts.is_file() and provenance.is_file()):
            return None
        try:
            params = RunParams.validate_mapping(paths.stored_params())
            prompts = pd.read_parquet(paths.prompts)
            layers = json.loads(provenance.read_text(encoding="utf-8"))["num_layers"]
            plan = sweep_plan(params, int(layers))
            units = plan.units(prompts, params)
        except Exception:  # a file being written, or a damaged one: the step itself reports it
            return None
        per_prompt = params.samples_per_prompt * len(plan.alphas) * params.max_new_tokens
        return {unit.key: len(unit.prompt_ids) * per_prompt for unit in units}, params

    def _finished(self, keys: dict[str, int]) -> list[str]:
        parts = self.paths.sweep_parts
        if not parts.is_dir():
            return []
        return [path.stem for path in parts.glob("*.parquet") if path.stem in keys]

    def _watch(self) -> None:
        from tqdm.auto import tqdm

        found = None
        while found is None:
            found = self._units()
            if found is None and self._stop.wait(self.interval):
                return
        tokens, _ = found
        if not tokens:
            return
        seen = set(self._finished(tokens))
        self.total, self.done = len(tokens), len(seen)
        started, new_tokens = time.monotonic(), 0
        with tqdm(
            total=self.total,
            initial=self.done,
            desc="[steerlib] sweep",
            unit="unit",
            file=self.file or sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        ) as bar:
            while True:
                stopping = self._stop.wait(self.interval)
                fresh = [key for key in self._finished(tokens) if key not in seen]
                if fresh:
                    seen.update(fresh)
                    new_tokens += sum(tokens[key] for key in fresh)
                    bar.update(len(fresh))
                    self.done = len(seen)
                    rate = new_tokens / max(time.monotonic() - started, 1e-9)
                    bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
                if stopping or self.done >= self.total:
                    return
