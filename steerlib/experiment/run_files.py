"""A run's folder: its named products and its records (``params.json``, ``status.json``).

A run lives in ``<runs root>/<run_name>/`` (root: ``$STEERLIB_RUNS_DIR`` or ``data/runs`` in
the project). :class:`RunPaths` names each step's products there and is the only reader and
writer of the run's records; see :mod:`steerlib.experiment.runs` for the states, the
identity and the checksums a step's record carries.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from steerlib._io import atomic_write_json, file_sha256
from steerlib.errors import ConfigError, DamagedRunError
from steerlib.experiment.config import RunParams, run_name_problem, short_repr
from steerlib.experiment.table import STEPS

__all__ = [
    "LIVE_STATES",
    "PARAMS_FORMAT",
    "PROJECT_ROOT",
    "STATUS_FORMAT",
    "STEP_PRODUCTS",
    "SWEEP_STEP",
    "RunPaths",
    "StepState",
    "absolute",
    "runs_root",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout that holds ``steerlib/``, ``notebooks/`` and ``data/`` (for an installed wheel:
the folder that holds the package)."""
PARAMS_FORMAT = 2
"""Version of ``params.json``; files without ``format`` are older and still load."""
STATUS_FORMAT = 2
"""Version of ``status.json``; files without ``format`` (a bare mapping of steps) still load."""

SWEEP_STEP = "05_sweep"
"""The step whose units live in ``sweep_parts/`` (listed in its record by
:meth:`RunPaths.record_complete`)."""

StepState = Literal["running", "done", "failed", "partial", "stale"]
LIVE_STATES = frozenset({"running", "partial"})
"""States written while a process works on the step; their records name that process."""


def runs_root() -> Path:
    """``$STEERLIB_RUNS_DIR`` or ``<project>/data/runs``, as an absolute path.

    Without a checkout around the package (an installed wheel) the default is
    ``./steerlib-runs``.

    A relative ``$STEERLIB_RUNS_DIR`` is resolved against the current folder once, by the
    process that reads it first (the chain runner exports the absolute path to its notebooks).
    """
    value = os.environ.get("STEERLIB_RUNS_DIR")
    if value:
        return absolute(value)
    if (PROJECT_ROOT / "pyproject.toml").is_file():  # a checkout (editable install)
        return PROJECT_ROOT / "data" / "runs"
    return absolute("steerlib-runs")  # an installed wheel: never inside site-packages


def absolute(folder: str | os.PathLike[str]) -> Path:
    """``folder`` with ``~`` expanded, made absolute against the current folder."""
    return Path(os.path.abspath(Path(folder).expanduser()))


@dataclass(frozen=True)
class RunPaths:
    """Named products of one run.

    Attributes:
        root: The run directory.
    """

    root: Path

    @classmethod
    def for_run(cls, run_name: str, root: str | os.PathLike[str] | None = None) -> RunPaths:
        """Paths of run ``run_name`` under ``root`` (default :func:`runs_root`)."""
        problem = run_name_problem(run_name)
        if problem:
            raise ConfigError(f"run_name {short_repr(run_name)}: {problem}.")
        return cls((absolute(root) if root else runs_root()) / run_name)

    @property
    def name(self) -> str:
        """The run name."""
        return self.root.name

    params = property(lambda self: self.root / "params.json", doc="Resolved parameters.")
    status = property(lambda self: self.root / "status.json", doc="Step states.")
    lock = property(lambda self: self.root / ".lock", doc="Lock file of a running process.")
    prompts = property(lambda self: self.root / "prompts.parquet", doc="Step 01: prompts.")
    baseline = property(lambda self: self.root / "baseline.parquet", doc="Step 02: baseline.")
    activations_toxic = property(
        lambda self: self.root / "activations_toxic.safetensors", doc="Step 03."
    )
    activations_nontoxic = property(
        lambda self: self.root / "activations_nontoxic.safetensors", doc="Step 03."
    )
    vectors = property(lambda self: self.root / "vectors.safetensors", doc="Step 04: CAA vector.")
    control_vectors = property(
        lambda self: self.root / "vectors_random.safetensors", doc="Step 04: random control."
    )
    probe = property(
        lambda self: self.root / "probe.safetensors",
        doc=(
            "Step 04: linear toxicity probe per layer (the gated variant's gate); fitted by step "
            "05 when a run's step 04 predates it."
        ),
    )
    sweep_parts = property(lambda self: self.root / "sweep_parts", doc="Step 05: batches.")
    search_parts = property(
        lambda self: self.root / "sweep_parts" / "search",
        doc="Step 05: batches at the searched alphas (one per layer).",
    )
    alpha_search = property(
        lambda self: self.root / "alpha_search.parquet",
        doc="Step 05: the alpha search's trace, one row per (layer, alpha) measured.",
    )
    sweep = property(lambda self: self.root / "sweep.parquet", doc="Step 05: all completions.")
    kl = property(lambda self: self.root / "kl_benign.parquet", doc="Step 05: benign KL.")
    summary = property(lambda self: self.root / "summary.json", doc="Step 06: summary.")
    summary_table = property(lambda self: self.root / "summary.parquet", doc="Step 06.")
    report = property(lambda self: self.root / "report.html", doc="Step 06 rendered.")
    notebooks = property(lambda self: self.root / "notebooks", doc="Executed notebooks.")

    def figures(self) -> Path:
        """``<run>/figures/``: a run's figures live with it, so two runs never collide."""
        return self.root / "figures"

    @property
    def unit_settings(self) -> Path:
        """Step 05: the generation settings its saved units were made with."""
        return self.sweep_parts / "settings.json"

    # -- records ----------------------------------------------------------------------------
    def _read_json(self, path: Path, fix: str) -> dict[str, Any]:
        """A JSON object file of the run; a damaged one raises DamagedRunError saying ``fix``."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror or exc}"
        else:
            if isinstance(record, dict):
                return record
            reason = f"it holds a JSON {type(record).__name__}, not an object"
        raise DamagedRunError(f"run {self.name!r}: {path} is damaged ({reason}); {fix}.")

    def read_params(self) -> dict[str, Any]:
        """``params.json`` in the current format ({} when absent).

        An older file is converted on reading: one without ``format`` but with ``params``
        only gains the format, and a flat mapping of parameters (keys :class:`RunParams`
        does not know are dropped) is nested under ``params``.

        Raises:
            DamagedRunError: The file is truncated or not a JSON object.
        """
        if not self.params.is_file():
            return {}
        record = self._read_json(
            self.params,
            "delete it and run the same command again (the parameters are recorded anew; "
            f"finished steps keep their products), or delete {self.root} to start over",
        )
        if "format" not in record and "params" not in record:
            record = {"params": {k: v for k, v in record.items() if k in RunParams.model_fields}}
        if not isinstance(record.get("params", {}), dict):
            raise DamagedRunError(
                f"run {self.name!r}: {self.params} is damaged (its 'params' is not an object); "
                "delete it and run the same command again."
            )
        return {**record, "format": PARAMS_FORMAT}

    def stored_params(self) -> dict[str, Any]:
        """The parameters recorded in ``params.json`` ({} for a new run)."""
        return dict(self.read_params().get("params", {}))

    def write_params(self, params: dict[str, Any], **provenance: Any) -> None:
        """Record ``params`` and ``provenance`` (versions, commit, model revision ...).

        Provenance keys not given are kept from the file.
        """
        record = {**self.read_params(), **provenance}
        record.pop("format", None)
        record.pop("params", None)
        atomic_write_json(self.params, {"format": PARAMS_FORMAT, "params": params, **record})

    def read_status(self) -> dict[str, Any]:
        """The steps' records of ``status.json``: step name to state record ({} when absent).

        Raises:
            DamagedRunError: The file is truncated or not a JSON object.
        """
        if not self.status.is_file():
            return {}
        record = self._read_json(
            self.status,
            "delete it and run the same command with --force (every step is recomputed)",
        )
        steps = record.get("steps", {}) if "format" in record else record
        if not isinstance(steps, dict):
            raise DamagedRunError(
                f"run {self.name!r}: {self.status} is damaged (its 'steps' is not an object); "
                "delete it and run the same command with --force."
            )
        return steps

    def set_status(self, step: str, state: StepState, **details: Any) -> None:
        """Record ``step``'s state (atomically), with details such as ``error`` or row counts.

        A ``running`` or ``partial`` record also names this process (``pid``, ``host``, and
        ``owner_pid`` when a chain runner holds the lock for it).
        """
        steps = self.read_status()
        process = _process() if state in LIVE_STATES else {}
        steps[step] = {
            "state": state,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            **process,
            **details,
        }
        atomic_write_json(self.status, {"format": STATUS_FORMAT, "steps": steps})

    def read_unit_settings(self) -> dict[str, Any] | None:
        """The generation settings of the sweep's saved units; None when not recorded."""
        if not self.unit_settings.is_file():
            return None
        return self._read_json(
            self.unit_settings,
            "delete the sweep_parts folder and run the same command again (the sweep is "
            "generated again)",
        )

    def write_unit_settings(self, settings: dict[str, Any]) -> None:
        """Record the generation settings the sweep's units are made with."""
        atomic_write_json(self.unit_settings, settings)

    def step_state(self, step: str) -> str | None:
        """The recorded state of ``step``, or ``None``."""
        return self.read_status().get(step, {}).get("state")

    def record_complete(self, step: str) -> None:
        """Record ``step`` whole: done, with the SHA-256 of each of its products, last.

        Called by the chain runner after the step's notebook has ended and its executed copy
        is in place; the runner skips only steps recorded this way.
        """
        record = {
            k: v
            for k, v in self.read_status().get(step, {}).items()
            if k not in ("state", "updated")
        }
        checksums = {
            product.name: file_sha256(product)
            for product in STEP_PRODUCTS[step](self)
            if product.is_file()
        }
        if step == SWEEP_STEP:  # its units too, so that a deleted one is generated again
            record["units"] = self.unit_names()
        self.set_status(step, "done", **{**record, "complete": True, "checksums": checksums})

    def unit_names(self) -> list[str]:
        """The sweep's saved units (grid and search), as paths under ``sweep_parts/``."""
        if not self.sweep_parts.is_dir():
            return []
        units = self.sweep_parts.rglob("*.parquet")
        return sorted(p.relative_to(self.sweep_parts).as_posix() for p in units)

    def missing_units(self) -> list[Path]:
        """The units step 05 was recorded whole with (:meth:`record_complete`) that are gone.

        Deleted as a damage line advises (or by hand): the chain runner resumes step 05, which
        generates them again and keeps the others. Empty for a run recorded before units were
        listed.
        """
        record = self.read_status().get(SWEEP_STEP, {})
        names = record.get("units") if record.get("state") == "done" else None
        if not isinstance(names, list):
            return []
        return [
            self.sweep_parts / name for name in names if not (self.sweep_parts / name).is_file()
        ]

    def is_complete(self, step: str) -> bool:
        """Whether ``step`` is recorded whole (:meth:`record_complete`) and its products exist."""
        record = self.read_status().get(step, {})
        products = STEP_PRODUCTS[step](self)
        return (
            record.get("state") == "done"
            and record.get("complete") is True
            and all(product.is_file() for product in products)
        )

    def made_before_checksums(self) -> bool:
        """Whether the run was recorded before steps were recorded whole, with checksums.

        Such a run (made before issue 26) has finished steps and no step record carrying
        ``complete``; its sweep units hold no checksum, so they are read unchecked (a truncated
        unit is still refused) until the chain runner stamps them
        (:func:`steerlib.experiment.sweep.stamp_old_units`).
        """
        records = [r for r in self.read_status().values() if isinstance(r, dict)]
        return any(r.get("state") == "done" for r in records) and not any(
            "complete" in r for r in records
        )

    def product_problems(
        self,
        steps: tuple[str, ...] | None = None,
        *,
        skip: frozenset[Path] = frozenset(),
        missing: bool = True,
    ) -> list[str]:
        """One line per product of a finished step that differs from its recorded checksum.

        Args:
            steps: The steps to check (default: all).
            skip: Products already reported (e.g. unreadable), so one file gets one line.
            missing: Whether a product that is gone is a problem too (for ``status``,
                ``figures``, ``export`` and a copy); the chain runner passes False, since it
                reruns a step whose product is gone (what the damage lines advise).

        Returns:
            Lines naming the file, the step and the way out; empty when all are whole.
        """
        status = self.read_status()
        problems = []
        for step, record in status.items():
            if steps is not None and step not in steps:
                continue
            checksums = record.get("checksums") if record.get("state") == "done" else None
            if not isinstance(checksums, dict) or step not in STEP_PRODUCTS:
                continue
            for product in STEP_PRODUCTS[step](self):
                wanted = checksums.get(product.name)
                if wanted is None or product in skip:
                    continue
                if not product.is_file():
                    if not missing:
                        continue
                    why, fix = "is missing", "run the same command again"
                elif file_sha256(product) != wanted:
                    why = "differs from the file step " + step + " wrote (truncated or edited)"
                    fix = "delete it and run the same command again"
                else:
                    continue
                problems.append(
                    f"run {self.name!r}: {product} {why}; {fix} (step {step} and the ones after "
                    "it run again)"
                )
        if missing and (steps is None or SWEEP_STEP in steps):
            problems += [
                f"run {self.name!r}: sweep unit {unit} is missing; run the same command again "
                f"(step {SWEEP_STEP} generates it again, keeping its other units, and the ones "
                "after it run again)"
                for unit in self.missing_units()
            ]
        return problems

    def recorded_identity(self) -> dict[str, dict[str, Any]]:
        """The parameters each finished step recorded as its products' identity, by step."""
        return {
            step: dict(record["params"])
            for step, record in self.read_status().items()
            if isinstance(record, dict) and isinstance(record.get("params"), dict)
        }


STEP_PRODUCTS: dict[str, Callable[[RunPaths], tuple[Path, ...]]] = {
    s.name: (lambda paths, s=s: tuple(getattr(paths, name) for name in s.outputs)) for s in STEPS
}
"""The files each step writes (from :data:`steerlib.experiment.table.STEPS`; a product that is
absent is not an error: the step reruns)."""


def _process() -> dict[str, Any]:
    """This process, for a status record: pid, host, and the lock owner when another holds it."""
    record: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    owner = os.environ.get("STEERLIB_LOCK_OWNER", "")
    if owner.isdigit() and int(owner) != record["pid"]:
        record["owner_pid"] = int(owner)
    return record
