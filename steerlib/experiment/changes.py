"""What a change of a run's parameters does: refused, a rerun, an extension, or free.

A run's identity, the parameters its products were made with, is fixed when each step is
made (:func:`step_identity`, recorded beside the step's products). A value that differs from
the one a finished step was made with is:

* refused (:class:`~steerlib.errors.ConfigError`, one line naming each change) when a step
  that reads it is done, unless ``force`` — then that step and the ones after it are stale and
  are recomputed;
* an extension when the step declares it (:attr:`~steerlib.experiment.table.Step.extends`:
  the sweep's layers, random control and alpha search): the sweep resumes and generates only
  the units it lacks;
* a rerun of the analysis when only step 06 reads it (or the other steps that read it do so
  behind a switch that is off: the sweep reads ``max_perplexity_increase`` only with
  ``alpha_search``);
* free when no finished step reads it, or it is a runtime setting
  (:data:`~steerlib.experiment.table.RUNTIME`).

:func:`check_changes` says which; :func:`apply_changes` marks the steps it affects stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from steerlib.errors import ConfigError
from steerlib.experiment.config import short_repr
from steerlib.experiment.runs import RunPaths
from steerlib.experiment.table import OLD_VALUES, RUNTIME, STEP_NAMES, STEPS, after, step

__all__ = [
    "Changes",
    "apply_changes",
    "check_changes",
    "extends_somewhere",
    "invalidate_after",
    "step_identity",
]


def step_identity(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters step ``name``'s products depend on, with their values in ``values``.

    Runtime settings (:data:`~steerlib.experiment.table.RUNTIME`) are left out; so are
    parameters the step reads only behind a switch that is off.
    """
    s = step(name)
    return {
        k: values[k]
        for k in sorted(s.reads)
        if k in values and k not in RUNTIME and s.depends_on(k, values)
    }


def _made(record: dict[str, Any]) -> bool:
    """Whether a step's record says it holds work made with the stored parameters."""
    state = record.get("state")
    return state in ("done", "partial") or (state == "stale" and record.get("resume", False))


@dataclass(frozen=True)
class Changes:
    """What a change of parameters does to a run (see :func:`check_changes`).

    Attributes:
        changed: Parameter name to ``(stored, new)``, for every value that differs.
        refused: The changed parameters that finished steps were made with.
        resumes: Steps that keep their work and extend it.
        reruns: Steps that run again from scratch (the earliest; the later ones follow).
    """

    changed: dict[str, tuple[Any, Any]]
    refused: tuple[str, ...] = ()
    resumes: tuple[str, ...] = ()
    reruns: tuple[str, ...] = ()


def check_changes(paths: RunPaths, values: dict[str, Any], *, force: bool = False) -> Changes:
    """Compare ``values`` with the parameters stored in ``paths``; refuse what would mix.

    Args:
        paths: The run.
        values: New values of some or all parameters (JSON values, as
            :meth:`RunParams.notebook_parameters` gives them).
        force: Accept every change: the steps made with the old values are recomputed.

    Returns:
        The changes and what they do.

    Raises:
        ConfigError: One line naming each refused parameter with its stored and new value.
    """
    stored = paths.stored_params()
    status = paths.read_status()
    changed: dict[str, tuple[Any, Any]] = {
        k: (stored[k], v) for k, v in values.items() if k in stored and stored[k] != v
    }
    # A step reads some parameters only behind a switch; both old and new values count.
    after_change = {**stored, **values}
    refused: list[str] = []
    resumes: set[str] = set()
    reruns: set[str] = set()
    for s in STEPS:
        record = status.get(s.name, {})
        if not _made(record):
            continue
        # The identity the step recorded beside its products wins over params.json, which
        # may have been deleted or rewritten since.
        identity = record.get("params") or {}
        made_with = {**stored, **identity}
        # A parameter added since the step was made counts with the value that reproduces
        # what the step did then (OLD_VALUES), where that work depended on it.
        before = {k: v for k, v in OLD_VALUES.items() if k not in made_with}
        made_with = {**before, **made_with}
        for name in sorted(s.reads & values.keys()):
            if name in RUNTIME or name not in made_with or made_with[name] == values[name]:
                continue
            if name in before and not s.depends_on(name, made_with):
                continue  # e.g. a search parameter of a sweep made without the search
            if not (s.depends_on(name, made_with) or s.depends_on(name, after_change)):
                continue
            changed.setdefault(name, (made_with[name], values[name]))
            if name in s.extends:
                resumes.add(s.name)
            elif s.reruns or force:
                reruns.add(s.name)
            elif name not in refused:
                refused.append(name)
    if refused and not force:
        listed = ", ".join(
            f"{k} {short_repr(changed[k][0], 60)} -> {short_repr(changed[k][1], 60)}"
            for k in refused
        )
        raise ConfigError(
            f"run {paths.name!r} was made with other values ({listed}); pass force=True "
            "(`python -m steerlib run --force`) to recompute it with the new ones, or use a new "
            "run_name."
        )
    order = STEP_NAMES.index
    return Changes(
        changed,
        tuple(refused),
        tuple(sorted(resumes, key=order)),
        tuple(sorted(reruns, key=order)),
    )


def invalidate_after(paths: RunPaths, step: str, reason: str) -> None:
    """Mark the finished (or partly finished) steps after ``step`` stale: they run again.

    A stale sweep does not resume from its saved units (they came from the old inputs); the
    one exception, recorded with ``resume=True``, is set by :meth:`Run.open` when only the
    parameters the sweep declares as extensions changed.
    """
    status = paths.read_status()
    for later in after(step):
        if status.get(later.name, {}).get("state") in ("done", "partial"):
            paths.set_status(later.name, "stale", reason=reason, resume=False)


def extends_somewhere(parameter: str) -> bool:
    """Whether a change of ``parameter`` extends a step (keeps its work) somewhere."""
    return any(parameter in s.extends for s in STEPS)


def apply_changes(paths: RunPaths, changes: Changes) -> list[str]:
    """Mark the steps a change affects stale; return one note per change."""
    reason = "; ".join(
        f"parameter {k!r} changed from {short_repr(old)} to {short_repr(new)}"
        for k, (old, new) in changes.changed.items()
    )
    notes = []
    for name in changes.reruns[:1]:
        paths.set_status(name, "stale", reason=reason, resume=False)
        invalidate_after(paths, name, reason)
        notes.append(f"{reason}; steps {name} and after run again.")
    for name in changes.resumes:
        if changes.reruns and STEP_NAMES.index(changes.reruns[0]) <= STEP_NAMES.index(name):
            continue
        paths.set_status(name, "stale", reason=reason, resume=True)
        invalidate_after(paths, name, reason)
        notes.append(
            f"{reason}; the sweep (05) resumes and generates only the units it lacks, and the "
            "analysis (06) runs again."
        )
    if changes.changed and not notes:
        notes.append(f"{reason}; no finished step depends on it.")
    return notes
