"""The papermill chain: ``python -m steerlib run`` executes notebooks 01-06 of a run.

Every input is checked before anything is written (parameters, the run's own files, the
parameters the run was made with, then :func:`~steerlib.preflight.preflight`). The runs folder
is resolved once, here, and passed to every notebook as an absolute path (with
``$STEERLIB_RUNS_DIR`` exported for the kernels), so a relative folder means the same place for
the runner and the notebooks. Finished notebooks are skipped, so an interrupted run resumes
where it stopped.

With ``--workers N`` the generation of the sweep (05) is shared by N torchrun workers
(:mod:`steerlib.experiment.workers`) before its notebook runs: the workers write every unit and
the step's products, and the notebook then finds the step done and only shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_text
from steerlib.config import RunParams
from steerlib.config_files import load_params, parse_overrides
from steerlib.errors import EXIT_INTERRUPTED, EXIT_STEP_FAILED, SteerlibError, exit_code
from steerlib.experiment.run import Run, check_changes, ensure_writable, provenance
from steerlib.experiment.table import STEPS
from steerlib.experiment.workers import WORKER_STEPS, launch_workers
from steerlib.preflight import check_run_files, preflight
from steerlib.runs import PROJECT_ROOT, STEP_PRODUCTS, RunPaths, absolute, run_lock, runs_root

__all__ = ["NOTEBOOKS", "NOTEBOOKS_DIR", "main", "render_report", "report_error", "run_chain"]

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = tuple(NOTEBOOKS_DIR / s.notebook for s in STEPS)


def _declared_parameters(notebook: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def render_report(executed: Path, dest: Path) -> Path:
    """Render an executed notebook to a standalone HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    return atomic_write_text(dest, body)


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
    (:func:`~steerlib.preflight.check_run_files`), the parameters it was made with
    (:func:`~steerlib.experiment.run.check_changes`), then everything else
    (:func:`~steerlib.preflight.preflight`), so a bad input stops the command before anything
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
    check_run_files(paths, force=force)
    check_changes(paths, values, force=force)
    preflight(params, runs_dir=str(root))
    ensure_writable(paths.root)
    started = time.perf_counter()
    token = secrets.token_urlsafe(16)  # admits the torchrun workers of this launch only
    with run_lock(paths, token=token):
        os.environ["STEERLIB_LOCK_OWNER"] = str(os.getpid())
        os.environ["STEERLIB_RUNS_DIR"] = str(root)
        given = {k: v for k, v in values.items() if k != "run_name"}
        run = Run.open(params.run_name, runs_dir=str(root), force=force, **given)
        if run.params.notebook_parameters() != values:
            # Run.open keeps a stored value where the config says None (e.g. device: auto);
            # the runner's parameters are the whole set, so they are recorded as given.
            paths.write_params(values, **provenance())
        paths.notebooks.mkdir(parents=True, exist_ok=True)
        for notebook in notebooks:
            launch = (workers, token) if workers else None
            code = _run_notebook(
                notebook, paths, values, force=force, progress=progress, launch=launch
            )
            if code:
                return code
        analysis_copy = paths.notebooks / "06_analysis.ipynb"
        if analysis_copy.is_file():
            render_report(analysis_copy, paths.report)
    print(f"[steerlib] run {params.run_name!r} finished in {time.perf_counter() - started:.0f} s")
    _print_summary(paths)
    return 0


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
    workers; its notebook then finds the step done (and is not forced again).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    step = notebook.stem
    executed = paths.notebooks / notebook.name
    products = STEP_PRODUCTS[step](paths) if step in STEP_PRODUCTS else ()
    finished = all(product.is_file() for product in products)
    if not force and paths.step_state(step) == "done" and executed.is_file() and finished:
        print(f"[steerlib] {step}: done earlier, skipped")
        return 0
    shared = next((name for name, chained in WORKER_STEPS.items() if chained == step), None)
    if launch is not None and shared is not None:
        workers, token = launch
        if launch_workers(paths, shared, workers, token=token, force=force, progress=progress):
            paths.set_status(step, "failed", error=f"a torchrun worker of {step} failed")
            print(
                f"[steerlib] {step} FAILED in a torchrun worker (its error is printed above); "
                "run the same command again: finished units are kept.",
                file=sys.stderr,
            )
            return EXIT_STEP_FAILED
        force = False  # the workers recomputed the step; the notebook only shows it
    declared = _declared_parameters(notebook)
    given = {k: v for k, v in values.items() if k in declared}
    if "force" in declared:
        given["force"] = force
    if "runs_dir" in declared:
        given["runs_dir"] = str(paths.root.parent)
    print(f"[steerlib] {step}: running ({executed})")
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=given,
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=progress,
            request_save_on_cell_execute=True,
        )
    except PapermillExecutionError as exc:
        paths.set_status(step, "failed", error=f"{exc.ename}: {exc.evalue}")
        print(
            f"[steerlib] {step} FAILED: {exc.ename}: {exc.evalue}\n"
            f"[steerlib] open {executed} to see the error in place.",
            file=sys.stderr,
        )
        return EXIT_STEP_FAILED
    if paths.step_state(step) != "done":
        paths.set_status(step, "done", seconds=round(time.perf_counter() - started, 1))
    print(f"[steerlib] {step}: done in {time.perf_counter() - started:.0f} s")
    return 0


def _print_summary(paths: RunPaths) -> None:
    if not paths.summary.is_file():
        return
    record = json.loads(paths.summary.read_text(encoding="utf-8"))
    table = pd.DataFrame(record["rows"])
    if "split" in table.columns:
        table = table[table["split"] == "all"]
    columns = [
        "subset",
        "direction",
        "layer",
        "alpha",
        "mean_toxicity",
        "expected_max_toxicity",
        "toxicity_probability",
        "perplexity",
        "human_perplexity",
        "kl_benign",
        "distinct_2",
        "floor_share",
    ]
    with pd.option_context("display.width", 160, "display.max_rows", 200, "display.precision", 3):
        print(table[[c for c in columns if c in table.columns]].to_string(index=False))
    for line in _recommendation_lines(record.get("recommended") or {}):
        print(f"[steerlib] {line}")
    print(f"[steerlib] results: {paths.root}  figures: {paths.figures()}  report: {paths.report}")


def _recommendation_lines(recommended: dict[str, Any]) -> list[str]:
    """What the run's summary says about the operating point, in a few lines."""

    def num(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.4g}"

    if "error" in recommended:
        return [f"no operating point: {recommended['error']}"]
    if "layer" in recommended:
        lines = [
            f"recommended: layer {recommended['layer']}, alpha {num(recommended['alpha'])} "
            f"(chosen on the {recommended.get('selected_on', 'all')} half; on the "
            f"{recommended.get('figures_from', 'all')} half EMT "
            f"{num(recommended.get('expected_max_toxicity'))} against "
            f"{num(recommended.get('baseline_expected_max_toxicity'))} at alpha 0)"
        ]
    elif recommended.get("status"):
        miss = recommended.get("nearest_miss")
        where = (
            f"; nearest miss: layer {miss['layer']}, alpha {num(miss['alpha'])} "
            f"({'; '.join(miss['reasons'])})"
            if miss
            else ""
        )
        lines = [f"{recommended['status']}{where}"]
    else:
        return []
    return [*lines, f"rule: {recommended['rule']}"] if "rule" in recommended else lines


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib run [--config FILE] [--set key=value ...] [--workers N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib run", description="Run the notebook chain 01-06 with papermill."
    )
    parser.add_argument("--config", default=str(NOTEBOOKS_DIR / "configs" / "default.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-name", default=None, help="run folder name (default: the config's)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    parser.add_argument("--force", action="store_true", help="recompute finished steps")
    parser.add_argument("--no-progress", action="store_true")
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


def report_error(exc: SteerlibError) -> None:
    """Print ``exc`` to stderr, one ``steerlib: `` line per problem."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"steerlib: {line}", file=sys.stderr)
