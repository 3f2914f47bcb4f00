"""The experiment in one import: ``from steerlib import pipeline``.

A stable front for the notebooks, the tests and users; the code lives in
:mod:`steerlib.experiment` (the step table, the run, steps 01-04, the sweep, the analysis and
the chain runner). The steps, in the order they run::

    01_data         prepare_data          -> prompts.parquet
    02_baseline     run_baseline          -> baseline.parquet
    03_activations  capture_activations   -> activations_{toxic,nontoxic}.safetensors
    04_vectors      build_vectors         -> vectors.safetensors, vectors_random.safetensors
    05_sweep        sweep_step            -> sweep_parts/*.parquet, sweep.parquet, kl_benign.parquet
    06_analysis     analyze               -> summary.json, summary.parquet, figures/
                    verdict               -> the result in three lines (report.html, console)
"""

from __future__ import annotations

from steerlib.errors import report_error
from steerlib.experiment.analysis import Analysis, analyze, compare_runs, side_by_side, verdict
from steerlib.experiment.chain import NOTEBOOKS, NOTEBOOKS_DIR, main, run_chain
from steerlib.experiment.preflight import preflight
from steerlib.experiment.report import render_report
from steerlib.experiment.run import Run, check_changes
from steerlib.experiment.steps import (
    EVAL_SUBSETS,
    build_vectors,
    capture_activations,
    contrastive_texts,
    matched_pairs,
    prepare_data,
    run_baseline,
)
from steerlib.experiment.sweep import alpha_search_table, sweep_plan, sweep_step
from steerlib.experiment.sweep import run_sweep as run_sweep  # deprecated: sweep_step
from steerlib.experiment.table import STEP_NAMES as STEPS

__all__ = [
    "EVAL_SUBSETS",
    "NOTEBOOKS",
    "NOTEBOOKS_DIR",
    "STEPS",
    "Analysis",
    "Run",
    "alpha_search_table",
    "analyze",
    "build_vectors",
    "capture_activations",
    "check_changes",
    "compare_runs",
    "contrastive_texts",
    "main",
    "matched_pairs",
    "preflight",
    "prepare_data",
    "render_report",
    "report_error",
    "run_baseline",
    "run_chain",
    "side_by_side",
    "sweep_plan",
    "sweep_step",
    "verdict",
]
