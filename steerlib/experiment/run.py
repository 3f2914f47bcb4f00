"""A run: its validated parameters, its records, and the model and scorer, loaded once.

A run's identity, the parameters its products were made with, is fixed when each step is
made. :meth:`Run.open` takes the parameters stored in ``params.json`` as the base; a value
given as ``None`` keeps the stored one (so a notebook opened with only ``run_name`` reproduces
the run). A value that differs from the stored one is:

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
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from steerlib.errors import ConfigError, DataError
from steerlib.experiment.config import RunParams, short_repr
from steerlib.experiment.runs import PROJECT_ROOT, RunPaths, run_lock
from steerlib.experiment.table import (
    OLD_VALUES,
    RUNTIME,
    STEP_NAMES,
    STEPS,
    after,
    producer,
    step,
)

__all__ = [
    "Changes",
    "Run",
    "check_changes",
    "ensure_writable",
    "invalidate_after",
    "provenance",
    "step_identity",
]

_PACKAGES = ("steerlib", "torch", "transformers", "numpy", "pandas", "scipy", "plotly", "papermill")
_LOADED: dict[tuple[Any, ...], Any] = {}
"""Models and scorers loaded by this process, by what identifies them."""


def provenance() -> dict[str, Any]:
    """Package versions and the git commit of the checkout, for ``params.json``."""
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


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


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check that it can be written.

    Raises:
        ConfigError: It cannot; the message says how to choose another folder.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"the run directory {folder} cannot be written ({exc.strerror}); choose another "
            "run_name or set STEERLIB_RUNS_DIR to a writable folder."
        ) from None


def _extends(parameter: str) -> bool:
    """Whether a change of ``parameter`` extends a step (keeps its work) somewhere."""
    return any(parameter in s.extends for s in STEPS)


def _apply(paths: RunPaths, changes: Changes) -> list[str]:
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


@dataclass
class Run:
    """One run: its validated parameters, its paths, and the model and scorer, loaded once.

    Attributes:
        params: The run's parameters.
        paths: Its named products.
        notes: What :meth:`open` did about changed parameters, one line each.
        writes_params: Whether this process records ``params.json`` (False for a torchrun
            worker: its device is its own, and the launch recorded the parameters).
    """

    params: RunParams
    paths: RunPaths
    notes: list[str] = field(default_factory=list)
    writes_params: bool = True

    @classmethod
    def open(
        cls,
        run_name: str = "default",
        *,
        runs_dir: str | None = None,
        force: bool = False,
        **params: Any,
    ) -> Run:
        """Open (or start) run ``run_name``.

        Parameters stored in the run's ``params.json`` are the base; the ones given here (not
        ``None``) replace them, under the rules of :func:`check_changes` (see the module).
        Unknown names and wrong types raise :class:`~steerlib.errors.ConfigError` naming the
        parameter.

        Example:
            >>> run = Run.open("demo", n_prompts=8, layers=[12, 18])  # doctest: +SKIP
            >>> Run.open("demo").params.layers  # doctest: +SKIP
            [12, 18]
        """
        paths = RunPaths.for_run(run_name, runs_dir or None)
        stored = paths.stored_params()
        given = {k: v for k, v in params.items() if v is not None and k != "run_name"}
        try:
            resolved = RunParams.validate_mapping({**stored, **given, "run_name": run_name})
        except ConfigError as exc:
            if not any(f"'{name}'" in str(exc) for name in set(stored) - set(given)):
                raise
            raise ConfigError(
                f"{exc} (a value stored in {paths.params}: pass the parameter again to replace "
                "it, or delete that file)"
            ) from None
        values = resolved.notebook_parameters()
        # A sweep extension added since the run was made (OLD_VALUES) is checked even when not
        # given, so its new default extends the finished run (as the chain runner, which
        # passes every value, does).
        legacy = {k for k in OLD_VALUES if stored and k not in stored and _extends(k)}
        changes = check_changes(paths, {k: values[k] for k in {*given, *legacy}}, force=force)
        run = cls(resolved, paths)
        if not stored or changes.changed:
            ensure_writable(paths.root)
            run.notes = _apply(paths, changes)
            for note in run.notes:
                print(note)
            run.write_params()
        if "ipykernel" in sys.modules:
            from steerlib.figures.plotting import use_offline_notebook_renderer

            use_offline_notebook_renderer()
        return run

    @classmethod
    def for_step(cls, name: str, namespace: Mapping[str, Any]) -> Run:
        """Open the run that a notebook's parameters cell names, for step ``name``.

        Reads ``run_name``, ``runs_dir``, ``force`` and the step's parameters
        (:attr:`~steerlib.experiment.table.Step.reads`) from ``namespace`` (the notebook's
        ``globals()``); a parameter left at ``None`` keeps the run's stored value.

        Raises:
            ConfigError: The namespace lacks one of the step's parameters.
        """
        wanted = step(name).reads
        missing = sorted(n for n in wanted | {"run_name"} if n not in namespace)
        if missing:
            raise ConfigError(
                f"the parameters cell of notebooks/{name}.ipynb lacks {', '.join(missing)}: "
                "restore it from the repository."
            )
        return cls.open(
            namespace["run_name"],
            runs_dir=namespace.get("runs_dir") or None,
            force=bool(namespace.get("force", False)),
            **{n: namespace[n] for n in wanted},
        )

    def write_params(self, **extra: Any) -> None:
        """Write ``params.json``: parameters, package versions, git commit, ``extra``."""
        if not self.writes_params:
            return
        self.paths.write_params(self.params.notebook_parameters(), **provenance(), **extra)

    # -- shared resources -------------------------------------------------------------------
    def model(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``, loaded once per process."""
        from steerlib.models.loading import load_model, model_revision

        p = self.params
        key = ("model", p.model, p.device, p.dtype, p.trust_remote_code)
        if key not in _LOADED:
            _LOADED[key] = load_model(
                p.model, device=p.device, dtype=p.dtype, trust_remote_code=p.trust_remote_code
            )
            self.write_params(model_revision=model_revision(_LOADED[key][0]))
        return _LOADED[key]

    def judge(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` that scores perplexity: ``perplexity_model`` or the model."""
        if self.params.perplexity_model in (None, self.params.model):
            return self.model()
        from steerlib.models.loading import load_model

        key = ("judge", self.params.perplexity_model, self.params.device)
        if key not in _LOADED:
            _LOADED[key] = load_model(self.params.perplexity_model, device=self.params.device)
        return _LOADED[key]

    def scorer(self) -> Any:
        """The toxicity scorer, loaded once per process."""
        from steerlib.evaluate.scoring import load_scorer

        key = ("scorer", self.params.scorer, self.params.device)
        if key not in _LOADED:
            _LOADED[key] = load_scorer(self.params.scorer, device=self.params.device)
        return _LOADED[key]

    def second_scorer(self) -> Any:
        """The run's ``second_scorer`` (None when unset), loaded once per process."""
        from steerlib.evaluate.scoring import load_scorer

        name = self.params.second_scorer
        if name is None:
            return None
        key = ("scorer", name, self.params.device)
        if key not in _LOADED:
            _LOADED[key] = load_scorer(name, device=self.params.device)
        return _LOADED[key]

    # -- step bookkeeping -------------------------------------------------------------------
    def done(self, step: str, *products: Path) -> bool:
        """Whether ``step`` finished and its products exist."""
        return self.paths.step_state(step) == "done" and all(p.exists() for p in products)

    def require(self, product: str) -> Path:
        """The path of ``product`` (a :class:`RunPaths` name) of a finished step.

        Raises:
            DataError: The step that makes it has not finished; the message names its notebook.
        """
        path: Path = getattr(self.paths, product)
        step = producer(product).name
        record = self.paths.read_status().get(step, {})
        if not path.exists() or record.get("state") != "done":
            why = (
                f"is stale ({record['reason']})"
                if record.get("state") == "stale" and record.get("reason")
                else "is missing"
            )
            raise DataError(
                f"{path.name} of run {self.paths.name!r} {why}: run notebooks/{step}.ipynb "
                "first (or `python -m steerlib run`)."
            )
        return path

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Hold the run lock and record ``running`` / ``done`` / ``failed`` for a step."""
        with run_lock(self.paths):
            started = time.perf_counter()
            self.paths.set_status(name, "running")
            try:
                yield
            except BaseException as exc:
                self.paths.set_status(name, "failed", error=f"{type(exc).__name__}: {exc}")
                raise
            identity = (
                {"params": step_identity(name, self.params.notebook_parameters())}
                if name in STEP_NAMES
                else {}
            )
            self.paths.set_status(
                name, "done", seconds=round(time.perf_counter() - started, 1), **identity
            )
            if name in STEP_NAMES:
                invalidate_after(self.paths, name, f"{name} was recomputed")
