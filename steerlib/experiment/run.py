"""A run: its validated parameters, its records, and the model and scorer, loaded once.

A run is opened once per process. The chain runner opens it with the whole parameter set it
validated (:meth:`Run.begin`), records it in ``params.json`` and starts the notebooks with
only the run's name; each notebook opens the run from that record (:meth:`Run.for_step`),
changing nothing unless its ``overrides`` say so. :meth:`Run.open` takes the parameters
stored in ``params.json`` as the base; a value given as ``None`` keeps the stored one (so a
notebook opened with only ``run_name`` reproduces the run). A value that differs from the
one a finished step was made with is refused, extends the sweep, reruns the analysis, or is
free, under the rules of :mod:`steerlib.experiment.changes`.
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
from steerlib.experiment.changes import (
    Changes,
    apply_changes,
    check_changes,
    extends_somewhere,
    invalidate_after,
    step_identity,
)
from steerlib.experiment.config import RunParams, short_repr
from steerlib.experiment.runs import PROJECT_ROOT, RunPaths, run_lock
from steerlib.experiment.table import (
    NOTEBOOK_ONLY,
    OLD_VALUES,
    STEP_NAMES,
    producer,
    step,
    steps_reading,
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


def _check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that notebook ``name`` cannot change: its step does not read them.

    Raises:
        ConfigError: One line naming each, with the notebooks that read it.
    """
    reads = step(name).reads
    problems = []
    for key in sorted(set(overrides) - reads, key=str):
        readers = [s.name for s in steps_reading(str(key))]
        where = (
            f"set it in notebooks/{readers[0]}.ipynb or with `python -m steerlib run --set "
            f"{key}=...`"
            if readers
            else "no step reads it (see steerlib.experiment.config.RunParams)"
        )
        problems.append(
            f"overrides names {short_repr(key)}, which step {name} does not read: {where}"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ".")


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
        legacy = {k for k in OLD_VALUES if stored and k not in stored and extends_somewhere(k)}
        changes = check_changes(paths, {k: values[k] for k in {*given, *legacy}}, force=force)
        run = cls(resolved, paths)
        if not stored or changes.changed:
            ensure_writable(paths.root)
            run.notes = apply_changes(paths, changes)
            for note in run.notes:
                print(note)
            run.write_params()
        if "ipykernel" in sys.modules:
            from steerlib.figures.plotting import use_offline_notebook_renderer

            use_offline_notebook_renderer()
        return run

    @classmethod
    def begin(cls, params: RunParams, *, runs_dir: str | None = None, force: bool = False) -> Run:
        """Open run ``params.run_name`` with the whole set ``params``: the chain runner's opening.

        ``params`` is validated already (the command line, a config file); it is not validated
        again. Unlike :meth:`open`, every value counts as given (``None`` included, e.g.
        ``device: auto``): the changes are those of :func:`check_changes` on the whole set, and
        ``params.json`` records exactly ``params`` (written once, and only when it differs), so
        the notebooks the runner starts read the run as it was opened (:meth:`for_step`).

        Raises:
            ConfigError: A parameter differs from the one a finished step was made with
                (without ``force``), one line naming each.
        """
        paths = RunPaths.for_run(params.run_name, runs_dir or None)
        values = params.notebook_parameters()
        changes = check_changes(paths, values, force=force)
        run = cls(params, paths)
        stored = paths.stored_params()
        ensure_writable(paths.root)
        run.notes = apply_changes(paths, changes)
        for note in run.notes:
            print(note)
        if stored != values:
            run.write_params()
        return run

    @classmethod
    def for_step(cls, name: str, namespace: Mapping[str, Any]) -> Run:
        """Open the run that a notebook's parameters cell names, for step ``name``.

        Reads ``run_name``, ``runs_dir``, ``force`` and ``overrides`` from ``namespace`` (the
        notebook's ``globals()``, :data:`~steerlib.experiment.table.NOTEBOOK_ONLY`). The run's
        parameters are those recorded in its ``params.json`` (what the chain runner opened);
        ``overrides`` changes some of them, under the rules of :meth:`open`, and may name only
        parameters step ``name`` reads (:attr:`~steerlib.experiment.table.Step.reads`). A
        parameter the step reads that a caller set as a variable of its own (papermill's ``-p
        NAME VALUE``) counts as an override too.

        Raises:
            ConfigError: The namespace lacks a name of the parameters cell, ``overrides`` is not
                a mapping, or it names a parameter the step does not read.
        """
        missing = sorted(n for n in NOTEBOOK_ONLY if n not in namespace)
        if missing:
            raise ConfigError(
                f"the parameters cell of notebooks/{name}.ipynb lacks {', '.join(missing)}: "
                "restore it from the repository."
            )
        reads = step(name).reads
        overrides = namespace["overrides"] or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(
                f"overrides in notebooks/{name}.ipynb is {short_repr(overrides)}: give a "
                "mapping of parameters to change, e.g. {'seed': 1}, or None."
            )
        _check_overrides(name, overrides)
        given = {n: namespace[n] for n in sorted(reads) if namespace.get(n) is not None}
        return cls.open(
            namespace["run_name"],
            runs_dir=namespace.get("runs_dir") or None,
            force=bool(namespace.get("force", False)),
            **{**given, **overrides},
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
            revision = model_revision(_LOADED[key][0])
            recorded = self.paths.read_params()
            if "model_revision" not in recorded or recorded["model_revision"] != revision:
                self.write_params(model_revision=revision)
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
