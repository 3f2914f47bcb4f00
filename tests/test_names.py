"""Renamed names (issue 24, names that say one thing) and the deprecated aliases they keep."""

from __future__ import annotations

from typing import Any

import pytest

from steerlib import pipeline
from steerlib.experiment import sweep
from steerlib.experiment.table import STEPS


def test_step_05_is_sweep_step_and_not_the_engine() -> None:
    import steerlib
    from steerlib.generate.engine import run_sweep as engine_run_sweep

    step = next(s for s in STEPS if s.name == "05_sweep")
    assert step.load() is sweep.sweep_step
    assert pipeline.sweep_step is sweep.sweep_step
    assert steerlib.run_sweep is engine_run_sweep  # the public engine keeps its name
    assert "run_sweep" not in pipeline.__all__ and "sweep_step" in pipeline.__all__


@pytest.mark.parametrize("old", [sweep.run_sweep, pipeline.run_sweep])
def test_old_step_name_warns_and_calls_sweep_step(monkeypatch: Any, old: Any) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sweep, "sweep_step", lambda *a, **k: calls.append((a, k)) or "table")
    with pytest.warns(DeprecationWarning, match="sweep_step"):
        assert old("run", force=True) == "table"
    assert calls == [(("run",), {"force": True, "edges": None})]


@pytest.mark.parametrize("module", ["steerlib.generate.partition", "steerlib.generate.engine"])
def test_sweep_unit_is_the_former_name_of_work_unit(module: str) -> None:
    import importlib

    from steerlib.generate.partition import WorkUnit

    with pytest.warns(DeprecationWarning, match="WorkUnit"):
        former = importlib.import_module(module).SweepUnit
    assert former is WorkUnit
    with pytest.raises(AttributeError):
        importlib.import_module(module).NoSuchUnit  # noqa: B018
