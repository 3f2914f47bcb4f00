"""Run directories: named products of each step, step status, and a lock per run.

A run lives in ``<runs root>/<run_name>/`` (root: ``$STEERLIB_RUNS_DIR`` or ``data/runs`` in
the project). Each step of the analysis DAG writes named products there (see :class:`RunPaths`)
and records its state in ``status.json``: ``running``, ``done``, ``failed`` (with the error),
``partial`` (with row counts) or ``stale`` (done, but an input changed since: it runs
again). A ``running`` or ``partial`` record names the process writing it (``pid``, ``host``,
and ``owner_pid``, the chain runner holding the lock, when a notebook kernel writes it), so
:func:`process_state` can tell a live run from one whose process is gone. A second process on
the same run directory is refused by a lock file that names its holder; different run names
run side by side. A holder that launches torchrun workers records a launch token in the lock
and hands it to them (``$STEERLIB_LAUNCH_TOKEN``): the run admits those workers, on any host,
and nothing else (:func:`admit_worker`).

A damaged file of a run (a truncated ``params.json`` or ``status.json``) raises
:class:`~steerlib.errors.DamagedRunError`, whose message names the file and what to delete. A
lock left by a dead process, even an empty or unreadable one, is taken over, and temporary
files left by writes that were killed (``.<name>.*.tmp``) are removed when the lock is taken.

This module is the only reader and writer of a run's records: ``params.json`` (format
:data:`PARAMS_FORMAT`: ``{"format", "params", "versions", "git_commit", ...}``),
``status.json`` (format :data:`STATUS_FORMAT`: ``{"format", "steps"}``) and the sweep units'
generation settings (``sweep_parts/settings.json``). Files written before the format was
versioned (nested without ``format``, or a flat mapping of parameters) still load.

A step's ``done`` record also carries the run's **identity** as that step saw it: ``params``,
the values of the parameters the step's products depend on (recorded by the process that made
them), and, once the chain runner has seen its notebook end, ``complete: true`` with the
``checksums`` (SHA-256) of its products. The identity outlives a deleted or rewritten
``params.json`` (the run cannot adopt other values), and the checksums let the runner,
``status``, ``figures`` and ``export`` tell a product changed after its step from a whole one
(:meth:`RunPaths.product_problems`).

The run's folder and records are :mod:`~steerlib.experiment.run_files`, its lock
:mod:`~steerlib.experiment.locks`; every name stays importable from here.
"""

from __future__ import annotations

from steerlib.experiment.locks import (
    LAUNCH_TOKEN_ENV,
    RunLockedError,
    admit_worker,
    clean_temporary_files,
    lock_holder,
    process_state,
    run_lock,
)
from steerlib.experiment.run_files import (
    LIVE_STATES,
    PARAMS_FORMAT,
    PROJECT_ROOT,
    STATUS_FORMAT,
    STEP_PRODUCTS,
    RunPaths,
    StepState,
    absolute,
    runs_root,
)

__all__ = [
    "LAUNCH_TOKEN_ENV",
    "LIVE_STATES",
    "PARAMS_FORMAT",
    "PROJECT_ROOT",
    "STATUS_FORMAT",
    "STEP_PRODUCTS",
    "RunLockedError",
    "RunPaths",
    "StepState",
    "absolute",
    "admit_worker",
    "clean_temporary_files",
    "lock_holder",
    "process_state",
    "run_lock",
    "runs_root",
]
