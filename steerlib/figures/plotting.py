"""Every figure of the analysis, importable from one place; :func:`save_figure` writes them.

Every figure function takes tables (the sweep or its summary, see
:mod:`steerlib.evaluate.metrics`) and returns a :class:`plotly.graph_objects.Figure`; callers
decide where files go. The functions live in modules of one kind each, re-exported here:

* :mod:`~steerlib.figures.curves` — a metric against alpha, layer or run; toxicity spread;
* :mod:`~steerlib.figures.heatmaps` — layer x alpha heatmaps (metric, CAA minus control);
* :mod:`~steerlib.figures.pareto` — toxicity against fluency cost, one point per setting;
* :mod:`~steerlib.figures.variants` — the same for every steering variant side by side;
* :mod:`~steerlib.figures.labels` — point labels that do not overlap, titles that fit;
* :mod:`~steerlib.figures.vector_plots` — the steering vector's norms, diagnostics, cosines;
* :mod:`~steerlib.figures.style` — colours, labels, titles and axis ranges they share;
* :mod:`~steerlib.figures.files` — PNG/PDF/HTML files (static export needs Chrome or Chromium).
"""

from __future__ import annotations

from steerlib.figures.curves import (
    compare_runs_figure,
    layer_profile,
    toxicity_distribution,
    toxicity_vs_alpha,
)
from steerlib.figures.files import find_browser, save_figure, use_offline_notebook_renderer
from steerlib.figures.heatmaps import control_heatmap, layer_alpha_heatmap
from steerlib.figures.pareto import MAX_PARETO_LABELS, pareto_figure
from steerlib.figures.style import (
    DIRECTION_DASH,
    SUBSET_COLORS,
    alpha_colors,
    fitted_range,
    require_columns,
    spans_decades,
)
from steerlib.figures.variants import VARIANT_COLORS, variants_pareto_figure
from steerlib.figures.vector_plots import layer_cosine_heatmap, vector_diagnostics, vector_norms

__all__ = [
    "DIRECTION_DASH",
    "MAX_PARETO_LABELS",
    "SUBSET_COLORS",
    "VARIANT_COLORS",
    "alpha_colors",
    "compare_runs_figure",
    "control_heatmap",
    "find_browser",
    "fitted_range",
    "layer_alpha_heatmap",
    "layer_cosine_heatmap",
    "layer_profile",
    "pareto_figure",
    "require_columns",
    "save_figure",
    "spans_decades",
    "toxicity_distribution",
    "toxicity_vs_alpha",
    "use_offline_notebook_renderer",
    "variants_pareto_figure",
    "vector_diagnostics",
    "vector_norms",
]
