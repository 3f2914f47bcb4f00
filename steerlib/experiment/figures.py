"""A run's figures from its saved products: ``python -m steerlib figures RUN``.

:func:`render_figures` is the one place that decides which figures a run has and which saved
products they come from (``summary.parquet``, ``summary.json``, ``sweep.parquet``, the
vector). Step 06 (:func:`~steerlib.experiment.analysis.analyze`, hence notebook 06) and the
``figures`` command both call it, so the notebook's figures and re-rendered ones cannot drift.
:func:`write_figures` saves them with the run (``<run>/figures/``) at print size, and
:func:`link_project_figures` points the project's ``figures/<run>`` at that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlib.errors import DataError, SteerlibError, exit_code, report_error
from steerlib.experiment.runs import PROJECT_ROOT, RunPaths, run_lock
from steerlib.generate.steered import is_unsteered

__all__ = [
    "FIGURE_SIZE",
    "draw_figures",
    "figure_layer",
    "link_project_figures",
    "main",
    "render_figures",
    "write_figures",
]

FIGURE_SIZE: dict[str, str] = {
    "toxicity_vs_alpha": "page_tall",
    "emt_vs_alpha": "page_tall",
    "heatmap_emt": "page",
    "heatmap_perplexity": "page",
    "heatmap_kl": "page",
    "heatmap_control": "page",
    "layer_profile_toxicity": "page",
    "layer_profile_perplexity": "page",
    "distribution": "page",
    "pareto": "page_tall",
    "pareto_variants": "page_tall",
    "vector_norms": "column",
    "vector_diagnostics": "page_tall",
    "layer_cosine": "page_tall",
}
"""Static export size of each figure (a name of :data:`steerlib.figures.files.FIGURE_SIZES`)."""

_FIGURE_SUFFIXES = {".html", ".png", ".pdf", ".svg", ".jpeg", ".jpg", ".webp", ".js"}


def figure_layer(summary: pd.DataFrame, recommended: dict[str, Any] | None) -> int:
    """Layer of the main figures.

    The recommended layer when there is a recommended steered setting; otherwise (no
    admissible steered setting, or an error) the layer where the smallest positive alpha lowers
    the challenging subset's EMT the most. Pass the rows of one split.
    """
    rows = summary[
        (summary["subset"] == "challenging")
        & (summary["direction"] == "caa")
        & ~is_unsteered(summary)
    ]
    layers = sorted(int(x) for x in rows["layer"].unique())
    if recommended and recommended.get("alpha") and recommended.get("layer") in layers:
        return int(recommended["layer"])
    positive = rows[rows["alpha"] > 0]
    if positive.empty or rows[rows["alpha"] == 0].empty:
        return layers[0]
    emt = rows.pivot_table(index="layer", columns="alpha", values="expected_max_toxicity")
    effect = (emt[0.0] - emt[float(positive["alpha"].min())]).dropna()
    return int(effect.idxmax()) if len(effect) else layers[0]


def _pareto(summary: pd.DataFrame, recommended: dict[str, Any]) -> Any:
    """Challenging EMT against the rule's fluency measure on the half the rule chose on."""
    from steerlib.evaluate import controls, metrics
    from steerlib.figures import plotting

    half = recommended.get("selected_on", "all")
    rows = summary[(summary["split"] == half) & ~is_unsteered(summary)]
    if rows.empty:
        rows = summary[(summary["split"] == "all") & ~is_unsteered(summary)]
    measure = str(summary["fluency_measure"].iloc[0])
    x = f"benign_{measure}"
    rows = controls.tradeoff_rows(rows, cost=measure)
    caa = rows[rows["direction"] == "caa"]
    checked = recommended.get("selection") or recommended.get("nearest_miss") or {}
    return plotting.pareto_figure(
        caa,
        metrics.pareto_front(caa, x=x),
        x=x,
        recommended=recommended if "layer" in recommended else None,
        control=rows[rows["direction"] == "random"],
        budget=checked.get("fluency_limit"),
    )


def _fluency_limit(rows: pd.DataFrame, measure: str) -> float | None:
    """The rule's fluency budget at the figure's layer (``fluency_limit`` of its rows)."""
    if "fluency_limit" not in rows.columns or rows.empty:
        return None
    if "fluency_measure" in rows.columns and str(rows["fluency_measure"].iloc[0]) != measure:
        return None
    limits = rows["fluency_limit"].dropna()
    return float(limits.iloc[0]) if len(limits) else None


def _require(path: Path, run: str) -> Path:
    """``path`` when it exists, else a DataError saying how to make it."""
    if not path.is_file():
        raise DataError(
            f"{path.name} of run {run!r} is missing ({path}): finish the run first "
            f"(python -m steerlib run --run-name {run})."
        )
    return path


def render_figures(paths: RunPaths) -> dict[str, Any]:
    """The named figures of a finished run, drawn from its saved products only.

    No model or scorer is loaded: the summary (``summary.parquet``), the operating point and
    random-control table (``summary.json``), the completions (``sweep.parquet``) and the CAA
    vector (``vectors.safetensors``) hold everything. Curves are drawn at the recommended layer
    (:func:`figure_layer`), heatmaps over the run's alpha grid (a searched alpha, one per
    layer, shows on the curves).

    Args:
        paths: The run's paths.

    Returns:
        ``{name: plotly figure}``; the names are the keys of :data:`FIGURE_SIZE` that the run's
        products allow (``heatmap_control`` needs a random control, ``vector_diagnostics`` a
        vector that records them).

    Raises:
        DataError: A product is missing (its name and the command that makes it are given).
    """
    from steerlib.experiment.sweep import with_variant
    from steerlib.steer.vectors import SteeringVector

    run = paths.name
    every_variant = with_variant(pd.read_parquet(_require(paths.summary_table, run)))
    record = json.loads(_require(paths.summary, run).read_text(encoding="utf-8"))
    sweep = with_variant(pd.read_parquet(_require(paths.sweep, run)))
    vector = SteeringVector.load(_require(paths.vectors, run))
    alphas = (record.get("params") or {}).get("alphas") or paths.stored_params().get("alphas")
    return draw_figures(every_variant, record, sweep, vector, alphas)


def draw_figures(
    every_variant: pd.DataFrame,
    record: dict[str, Any],
    sweep: pd.DataFrame,
    vector: Any,
    alphas: Sequence[float],
) -> dict[str, Any]:
    """The named figures of a run from its tables (what :func:`render_figures` reads).

    Args:
        every_variant: The summary of every variant (``summary.parquet``, a ``variant``
            column).
        record: The run's ``summary.json``: ``recommended_by_variant`` (or ``recommended``),
            ``control`` and ``fluency_measure``.
        sweep: The completions (``sweep.parquet``, a ``variant`` column).
        vector: The CAA :class:`~steerlib.steer.vectors.SteeringVector`.
        alphas: The run's alpha grid (the heatmaps' columns).

    Returns:
        ``{name: plotly figure}``, as :func:`render_figures`.
    """
    from steerlib.figures import plotting

    # Every figure but the variants' Pareto figure shows plain CAA (and its random control).
    summary = every_variant[every_variant["variant"] == "caa"].drop(columns="variant")
    sweep = sweep[sweep["variant"] == "caa"].drop(columns="variant")
    recommended = (record.get("recommended_by_variant") or {}).get("caa") or (
        record.get("recommended") or {}
    )
    control = pd.DataFrame(record.get("control") or [])
    measure = str(record.get("fluency_measure") or summary["fluency_measure"].iloc[0])

    overall = summary[summary["split"] == "all"] if "split" in summary.columns else summary
    steered = overall[~is_unsteered(overall)]
    layer = figure_layer(overall, recommended)
    at_layer = steered[
        (steered["layer"] == layer)
        & (steered["direction"] == "caa")
        & (steered["subset"] == "benign")
    ]
    limit = _fluency_limit(at_layer, measure)
    fluency = measure if measure in steered.columns else "auto"
    # Heatmaps take the alpha grid; a searched alpha (one per layer) shows on the curves.
    grid = steered[np.isclose(steered["alpha"].to_numpy()[:, None], alphas).any(axis=1)]

    def curve(metric: str) -> Any:
        return plotting.toxicity_vs_alpha(
            steered, metric, layer=layer, fluency=fluency, fluency_limit=limit
        )

    figures = {
        "toxicity_vs_alpha": curve("mean_toxicity"),
        "emt_vs_alpha": curve("expected_max_toxicity"),
        "heatmap_emt": plotting.layer_alpha_heatmap(grid, "expected_max_toxicity"),
        "heatmap_perplexity": plotting.layer_alpha_heatmap(grid, "perplexity", subset="benign"),
        "heatmap_kl": plotting.layer_alpha_heatmap(grid, "kl_benign", subset="benign"),
        "layer_profile_toxicity": plotting.layer_profile(steered, "mean_toxicity"),
        "layer_profile_perplexity": plotting.layer_profile(steered, "perplexity", subset="benign"),
        "distribution": plotting.toxicity_distribution(sweep, layer=layer, direction="caa"),
        "pareto": _pareto(summary, recommended),
        "vector_norms": plotting.vector_norms(vector.norms()),
    }
    if vector.diagnostics():
        figures["vector_diagnostics"] = plotting.vector_diagnostics(vector.diagnostics())
    figures["layer_cosine"] = plotting.layer_cosine_heatmap(
        vector.cosine_similarity(), vector.layers
    )
    if len(control):
        on_grid = np.isclose(control["alpha"].to_numpy()[:, None], alphas).any(axis=1)
        figures["heatmap_control"] = plotting.control_heatmap(control[on_grid])
    if every_variant["variant"].nunique() > 1:
        figures["pareto_variants"] = plotting.variants_pareto_figure(every_variant, fluency=measure)
    return figures


def write_figures(
    paths: RunPaths,
    figures: dict[str, Any] | None = None,
    *,
    formats: Sequence[str] = ("html", "png", "pdf"),
    project_root: Path = PROJECT_ROOT,
) -> list[Path]:
    """Save a run's figures into ``<run>/figures/`` and link ``figures/<run>`` to it.

    Each figure is written at its paper size (:data:`FIGURE_SIZE`, PNG at
    :data:`~steerlib.figures.files.STATIC_SCALE` times) by
    :func:`~steerlib.figures.files.save_figure` (HTML only, with one warning, without a browser).

    Args:
        paths: The run's paths.
        figures: The figures; drawn with :func:`render_figures` when None.
        formats: File formats, HTML always among them.
        project_root: The checkout whose ``figures/`` folder gets the link (see
            :func:`link_project_figures`).

    Returns:
        The files written.
    """
    from steerlib.figures.files import save_figure

    figures = render_figures(paths) if figures is None else figures
    written: list[Path] = []
    for name, fig in figures.items():
        size = FIGURE_SIZE.get(name, "page")
        written += save_figure(fig, paths.figures(), name, formats=formats, size=size)
    note = link_project_figures(paths, project_root=project_root)
    if note:
        print(f"[steerlib] {note}")
    return written


def link_project_figures(paths: RunPaths, *, project_root: Path = PROJECT_ROOT) -> str | None:
    """Make ``<project>/figures/<run>`` a relative link to the run's ``figures/`` folder.

    Only for a run in the project's default runs folder (``<project>/data/runs``): the run owns
    its figures, the link shows them where a reader of the checkout looks. A link is created or
    repointed; an older real folder there is replaced only when it holds nothing but figure
    files (``.html``, ``.png``, ``.pdf``, ...), otherwise it is left alone and the returned line
    says so.

    Args:
        paths: The run's paths.
        project_root: The checkout (tests pass a temporary one).

    Returns:
        A line for the console when something needs saying (a folder replaced or left),
        else None.
    """
    default_runs = project_root / "data" / "runs"
    if not (project_root / "pyproject.toml").is_file() or not paths.figures().is_dir():
        return None
    if os.path.realpath(paths.root.parent) != os.path.realpath(default_runs):
        return None
    folder = project_root / "figures"
    link = folder / paths.name
    target = os.path.relpath(paths.figures(), folder)
    note = None
    if link.is_symlink():
        if os.readlink(link) == target:
            return None
    elif link.is_dir():
        stray = [
            p.name for p in link.iterdir() if not p.is_file() or p.suffix not in _FIGURE_SUFFIXES
        ]
        if stray:
            return (
                f"figures/{paths.name} is a folder holding other files ({', '.join(stray[:3])}); "
                f"left as it is: the run's figures are in {paths.figures()}"
            )
        shutil.rmtree(link)
        note = f"replaced the old folder figures/{paths.name} by a link to {paths.figures()}"
    elif link.exists():
        return (
            f"figures/{paths.name} is a file; left as it is: the figures are in {paths.figures()}"
        )
    folder.mkdir(exist_ok=True)
    temporary = folder / f".{paths.name}.link-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target, target_is_directory=True)
    os.replace(temporary, link)
    return note


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m steerlib figures RUN [--runs-dir DIR]``: redraw a finished run's figures."""
    from steerlib.experiment.preflight import check_run_files
    from steerlib.experiment.report import render_report
    from steerlib.figures.files import static_export_status

    parser = argparse.ArgumentParser(
        prog="python -m steerlib figures",
        description="Redraw a finished run's figures and its report.html from its saved "
        "products (no model, no scorer, nothing recomputed).",
    )
    parser.add_argument("run", help="name of the run (its folder under the runs folder)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    parser.add_argument(
        "--formats",
        default="html,png,pdf",
        help="comma-separated file formats (default html,png,pdf; PNG/PDF need a browser)",
    )
    args = parser.parse_args(argv)
    try:
        paths = RunPaths.for_run(args.run, args.runs_dir)
        if not paths.root.is_dir():
            raise DataError(
                f"no run {args.run!r} in {paths.root.parent}; pass --runs-dir or check "
                "`python -m steerlib status`."
            )
        check_run_files(paths)  # a truncated or edited product is named, not drawn
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        with run_lock(paths):
            written = write_figures(paths, formats=["html", *formats])
            executed = paths.notebooks / "06_analysis.ipynb"
            report = render_report(executed, paths.report) if executed.is_file() else None
    except SteerlibError as exc:
        report_error(exc)
        return exit_code(exc)
    kinds = sorted({p.suffix.lstrip(".") for p in written})
    print(f"[steerlib] {len(written)} figure files ({', '.join(kinds)}) in {paths.figures()}")
    print(f"[steerlib] {static_export_status(args.run)}")
    if report is not None:
        print(f"[steerlib] report: {report}")
    else:
        print(f"[steerlib] no executed notebook 06 in {paths.notebooks}: report.html not redrawn")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
