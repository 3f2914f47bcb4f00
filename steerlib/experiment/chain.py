"""The papermill chain: ``python -m steerlib run`` executes notebooks 01-06 of a run.

Every input is checked before anything is written (parameters, the run's own files, the
parameters the run was made with, then :func:`~steerlib.experiment.preflight.preflight`). The runs
folder
is resolved once, here, and passed to every notebook as an absolute path (with
``$STEERLIB_RUNS_DIR`` exported for the kernels), so a relative folder means the same place for
the runner and the notebooks. Finished notebooks are skipped, so an interrupted run resumes
where it stopped: a step counts as finished only when the runner has recorded it whole (its
notebook ended, its executed copy moved into place, its products' checksums recorded, in that
order), so a kill at any point leaves the step to run again. ``--force`` recomputes the first
step a changed parameter affects and the ones after it (every step when nothing changed).

With ``--workers N`` the generation of the sweep (05) is shared by N torchrun workers
(:mod:`steerlib.experiment.workers`) before its notebook runs: the workers write every unit and
the step's products, and the notebook then finds the step done and only shows it.

At the end the runner prints a timing table: each step's seconds and step 05's phases
(:mod:`steerlib.experiment.timings`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steerlib.errors import (
    EXIT_INTERRUPTED,
    EXIT_STEP_FAILED,
    DamagedRunError,
    SteerlibError,
    exit_code,
    report_error,
)
from steerlib.experiment import report
from steerlib.experiment.changes import invalidate_after
from steerlib.experiment.config import RunParams
from steerlib.experiment.config_files import load_params, parse_overrides
from steerlib.experiment.copy_steps import copy_finished_steps
from steerlib.experiment.preflight import check_run_files, preflight
from steerlib.experiment.progress import SweepWatcher
from steerlib.experiment.run import (
    Changes,
    Run,
    check_changes,
    ensure_writable,
    step_identity,
)
from steerlib.experiment.run_files import SWEEP_STEP
from steerlib.experiment.runs import (
    PROJECT_ROOT,
    STEP_PRODUCTS,
    RunPaths,
    absolute,
    run_lock,
    runs_root,
)
from steerlib.experiment.sweep import stamp_old_units
from steerlib.experiment.table import RUNTIME, STEP_NAMES, STEPS
from steerlib.experiment.timings import print_timings, timed_notebook
from steerlib.experiment.workers import WORKER_STEPS, launch_workers

__all__ = [
    "NOTEBOOKS",
    "NOTEBOOKS_DIR",
    "copy_finished_steps",
    "main",
    "run_chain",
]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = tuple(NOTEBOOKS_DIR / s.notebook for s in STEPS)


def _declared_parameters(notebook: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def run_chain(
    params: RunParams,
    *,
    runs_dir: str | None = None,
    force: bool = False,
    notebooks: tuple[Path, ...] = NOTEBOOKS,
    progress: bool = True,
    workers: int | None = None,
) -> int:
    """Execute notebooks 01-06 with papermill; skip those already done.

    With ``workers``, the sweep's generation is first shared by that many torchrun workers
    (a launch option: the products are the same with any number of workers).

    Every input is checked first: the run's own files
    (:func:`~steerlib.experiment.preflight.check_run_files`), the parameters it was made with
    (:func:`~steerlib.experiment.run.check_changes`), then everything else
    (:func:`~steerlib.experiment.preflight.preflight`), so a bad input stops the command before
    anything
    is written or loaded.

    Returns:
        0 on success; 1 when a notebook failed (its executed copy holds the error).

    Raises:
        ConfigError: A parameter differs from the one a finished step was made with (without
            ``force``), one line naming each.
        PreflightError: Bad input, one line per problem.
        DamagedRunError: A file of the existing run is damaged (each named, with the fix).
    """
    root = absolute(runs_dir) if runs_dir else runs_root()
    paths = RunPaths.for_run(params.run_name, root)
    values = params.notebook_parameters()
    check_run_files(paths, force=force, rerun_missing=True)  # a deleted product: its step reruns
    forced_from = _forced_from(check_changes(paths, values, force=force), force=force)
    preflight(params, runs_dir=str(root))
    ensure_writable(paths.root)
    started = time.perf_counter()
    token = secrets.token_urlsafe(16)  # admits the torchrun workers of this launch only
    exported = {"STEERLIB_LOCK_OWNER": str(os.getpid()), "STEERLIB_RUNS_DIR": str(root)}
    with run_lock(paths, token=token), _exported(exported):
        stamped = stamp_old_units(paths)
        if stamped:
            print(
                f"[steerlib] run {paths.name!r} was made before sweep units carried checksums: "
                f"{stamped} of its units checked readable and stamped with one"
            )
        _resume_missing_units(paths)
        # The run is opened once, here, with the whole set: the notebooks read it back.
        Run.begin(params, runs_dir=str(root), force=force)
        paths.notebooks.mkdir(parents=True, exist_ok=True)
        ran: set[str] = set()  # the steps whose notebook ran (the others were done earlier)
        for i, notebook in enumerate(notebooks):
            launch = (workers, token) if workers else None
            forced = forced_from is not None and _order(notebook.stem) >= _order(forced_from)
            with timed_notebook(paths, notebook.stem, paths.notebooks / notebook.name, ran):
                code = _run_notebook(
                    notebook, paths, values, force=forced, progress=progress, launch=launch
                )
            if code:
                print_timings(paths, [n.stem for n in notebooks[: i + 1]], ran | {notebook.stem})
                return code
        analysis_copy = paths.notebooks / "06_analysis.ipynb"
        if analysis_copy.is_file() and _report_is_stale(paths, analysis_copy):
            report.render_report(analysis_copy, paths.report)
    print(f"[steerlib] run {params.run_name!r} finished in {time.perf_counter() - started:.0f} s")
    print_timings(paths, [notebook.stem for notebook in notebooks], ran)
    _print_summary(paths)
    return 0


@contextmanager
def _exported(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process's environment while the chain runs.

    The notebook kernels inherit them; the previous values are restored after, so a caller
    that runs the chain in-process (a test, a notebook) is not left holding the lock owner's
    id (which would let it re-enter a lock it does not hold).
    """
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _order(step_name: str) -> int:
    """Position of a step in the chain (a notebook outside the table comes last)."""
    return STEP_NAMES.index(step_name) if step_name in STEP_NAMES else len(STEP_NAMES)


def _forced_from(changes: Changes, *, force: bool) -> str | None:
    """The first step ``--force`` recomputes: the first changed one, or all when none changed.

    ``--force`` with changed parameters redoes the first step whose products depend on them
    and the ones after it (what the runner announces); with no change (or only runtime
    settings such as ``device``) it redoes every step; a change no finished step depends on
    forces nothing.
    """
    if not force:
        return None
    affected = sorted({*changes.reruns, *changes.resumes}, key=STEP_NAMES.index)
    if affected:
        return affected[0]
    meaningful = [name for name in changes.changed if name not in RUNTIME]
    return None if meaningful else STEP_NAMES[0]


def _resume_missing_units(paths: RunPaths) -> None:
    """Resume a finished sweep whose units were deleted (as a damage line advises).

    Step 05 is marked stale with ``resume=True`` (its identity kept): it runs again, generates
    the missing units, keeps the others, and rewrites its products; the analysis (06) follows.
    """
    missing = paths.missing_units()
    if not missing:
        return
    names = ", ".join(unit.relative_to(paths.sweep_parts).as_posix() for unit in missing)
    reason = f"sweep units missing ({names})"
    record = paths.read_status()[SWEEP_STEP]
    identity = {"params": record["params"]} if isinstance(record.get("params"), dict) else {}
    paths.set_status(SWEEP_STEP, "stale", reason=reason, resume=True, **identity)
    invalidate_after(paths, SWEEP_STEP, reason)
    print(
        f"[steerlib] run {paths.name!r}: {reason}; the sweep (05) resumes and generates only "
        "those, and the analysis (06) runs again."
    )


def _report_is_stale(paths: RunPaths, executed: Path) -> bool:
    """Whether ``report.html`` is missing or older than the analysis it renders."""
    if not paths.report.is_file():
        return True
    made = paths.report.stat().st_mtime
    inputs = [executed, paths.summary, paths.summary_table]
    return any(path.is_file() and path.stat().st_mtime > made for path in inputs)


def _run_notebook(
    notebook: Path,
    paths: RunPaths,
    values: dict[str, Any],
    *,
    force: bool,
    progress: bool,
    launch: tuple[int, str] | None = None,
) -> int:
    """Execute one notebook of the chain unless it is done; 0, or the failure's exit code.

    With ``launch`` (workers, token), a step that workers can share is first run by torchrun
    workers; its notebook then finds the step done (and is not forced again). The notebook
    gets the run's name, folder and ``force`` only: it reads the run's parameters from
    ``params.json``, which the runner recorded (:meth:`~steerlib.experiment.run.Run.begin`).
    ``values`` are those parameters, for the step's identity.
    """
    step = notebook.stem
    executed = paths.notebooks / notebook.name
    # Skipped only when recorded whole: the runner records that last, after the notebook
    # ended and its executed copy was put in place (a kill inside the notebook leaves the
    # step to run again, whatever the notebook itself recorded).
    if not force and executed.is_file() and step in STEP_PRODUCTS and paths.is_complete(step):
        print(f"[steerlib] {step}: done earlier, skipped")
        return 0
    shared = next((name for name, chained in WORKER_STEPS.items() if chained == step), None)
    if launch is not None and shared is not None:
        code = _run_workers(step, shared, paths, launch, force=force, progress=progress)
        if code:
            return code
        force = False  # the workers recomputed the step; the notebook only shows it
    declared = _declared_parameters(notebook)
    opening = {"run_name": paths.name, "force": force, "runs_dir": str(paths.root.parent)}
    given = {k: v for k, v in opening.items() if k in declared}
    print(f"[steerlib] {step}: running ({executed})", flush=True)
    started = time.perf_counter()
    code = _execute(notebook, executed, paths, given, progress=progress)
    if code:
        return code
    if paths.step_state(step) != "done":
        seconds = round(time.perf_counter() - started, 1)
        identity = step_identity(step, values) if step in STEP_NAMES else {}
        paths.set_status(step, "done", seconds=seconds, params=identity)
    if step in STEP_PRODUCTS:
        paths.record_complete(step)
    print(f"[steerlib] {step}: done in {time.perf_counter() - started:.0f} s")
    return 0


def _run_workers(
    step: str,
    shared: str,
    paths: RunPaths,
    launch: tuple[int, str],
    *,
    force: bool,
    progress: bool,
) -> int:
    """Run the shared step ``shared`` of ``step`` on torchrun workers; 0, or the exit code."""
    workers, token = launch
    # The workers draw no bars of their own: the console shows the step's units.
    with SweepWatcher(paths, disable=not progress):
        failed = launch_workers(paths, shared, workers, token=token, force=force, progress=False)
    if not failed:
        return 0
    paths.set_status(step, "failed", error=f"a torchrun worker of {step} failed")
    print(
        f"[steerlib] {step} FAILED in a torchrun worker (its error is printed above); "
        "run the same command again: finished units are kept.",
        file=sys.stderr,
    )
    return EXIT_STEP_FAILED


def _execute(
    notebook: Path, executed: Path, paths: RunPaths, given: dict[str, Any], *, progress: bool
) -> int:
    """Execute ``notebook`` with papermill into ``executed``; 0, or the failure's exit code.

    The notebook is executed into a partial copy that replaces the executed one only when
    papermill ends, so an executed copy is always whole (or a finished failure).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from steerlib.experiment.kernels import kernel_options

    step = notebook.stem
    # Step 05's own bars stay in its notebook: the console shows the sweep's units instead.
    sweep = step == "05_sweep"
    partial = executed.with_name(f".partial-{executed.name}")
    try:
        with SweepWatcher(paths, disable=not (progress and sweep)):
            papermill.execute_notebook(
                str(notebook),
                str(partial),
                parameters=given,
                cwd=str(notebook.parent),
                kernel_name="python3",
                progress_bar=progress and not sweep,
                request_save_on_cell_execute=True,
                **kernel_options(),
            )
    except PapermillExecutionError as exc:
        os.replace(partial, executed)  # the failure, in place, where the message says
        paths.set_status(step, "failed", error=f"{exc.ename}: {exc.evalue}")
        print(
            f"[steerlib] {step} FAILED: {exc.ename}: {exc.evalue}\n"
            f"[steerlib] open {executed} to see the error in place.",
            file=sys.stderr,
        )
        return EXIT_STEP_FAILED
    os.replace(partial, executed)
    return 0


def _print_summary(paths: RunPaths) -> None:
    """The run's verdict in three lines, then where its report and figures are."""
    if not paths.summary.is_file():
        return
    try:
        record = json.loads(paths.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DamagedRunError(
            f"run {paths.name!r}: {paths.summary} is damaged ({type(exc).__name__}); delete it "
            "and run the same command again (the analysis runs again)."
        ) from None
    print(f"[steerlib] verdict ({paths.name}):")
    for line in report.verdict(record):
        print(f"  - {line}")
    if paths.report.is_file():
        print(f"[steerlib] report:  {paths.report}")
    from steerlib.figures.files import static_export_status

    link = PROJECT_ROOT / "figures" / paths.name
    shown = f" (linked from {link})" if link.is_symlink() else ""
    print(f"[steerlib] figures: {paths.figures()}{shown}")
    print(f"[steerlib] {static_export_status(paths.name)}")
    print(f"[steerlib] tables:  {paths.summary_table} (all settings), {paths.summary}")


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib run [--config FILE] [--set key=value ...] [--workers N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib run", description="Run the notebook chain 01-06 with papermill."
    )
    parser.add_argument(
        "--config",
        default=str(NOTEBOOKS_DIR / "configs" / "default.yaml"),
        help="YAML parameter file; its relative paths are read from its folder "
        "(default: notebooks/configs/default.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter of the config, value in YAML (e.g. alphas=[0,1.5]); "
        "repeat for several",
    )
    parser.add_argument("--run-name", default=None, help="run folder name (default: the config's)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    parser.add_argument("--force", action="store_true", help="recompute finished steps")
    parser.add_argument(
        "--from-run",
        default=None,
        metavar="NAME",
        help="start a new run from the finished steps 01-04 of run NAME (copied)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (for logs and CI)"
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="share the sweep's generation among N torchrun worker processes on this machine",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.run_name is not None:
            overrides["run_name"] = args.run_name
        params = load_params(args.config, overrides)
        if args.from_run:
            root = absolute(args.runs_dir) if args.runs_dir else runs_root()
            # Everything is checked before anything is copied.
            preflight(params, runs_dir=str(root))
            copied = copy_finished_steps(
                RunPaths.for_run(args.from_run, root),
                RunPaths.for_run(params.run_name, root),
                values=params.notebook_parameters(),
            )
            if copied:
                print(f"[steerlib] copied {', '.join(copied)} from run {args.from_run!r}")
        return run_chain(
            params,
            runs_dir=args.runs_dir,
            force=args.force,
            progress=not args.no_progress,
            workers=args.workers,
        )
    except SteerlibError as exc:
        report_error(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("steerlib: interrupted; resume with the same command.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # stdout's reader went away: the command line exits quietly (apps.cli)
    except Exception:  # pragma: no cover - an unexpected failure: show it whole
        traceback.print_exc()
        return EXIT_STEP_FAILED


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
