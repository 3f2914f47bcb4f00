"""Plotly figures of steering results; :func:`save_figure` writes them to disk.

Every figure function takes tables (the sweep or its summary, see :mod:`steerlib.evaluate.metrics`) and
returns a :class:`plotly.graph_objects.Figure`; callers decide where files go. Static PNG/PDF
export needs Chrome or Chromium (kaleido drives it); without one only the HTML is written.

Writing figures to files is :mod:`steerlib.figures.files` (its names are importable from here).

Every figure says in its title which layer(s), direction(s) and subset(s) it shows; y axes are
fitted to the data, and switch to a log scale (log colour for heatmaps) where positive values
span a factor of 10 or more (broken text drives perplexity into the millions).

Over 500 lines (about 1100): fourteen figure functions, each self-contained and drawn trace by
trace, sharing the label, colour, range and layout helpers at the top; split by figure kind
they would import those helpers across modules for no gain in reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from steerlib.errors import ConfigError, DataError
from steerlib.figures.files import find_browser, save_figure, use_offline_notebook_renderer
from steerlib.evaluate.metrics import pareto_front

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
    "save_figure",
    "spans_decades",
    "toxicity_distribution",
    "toxicity_vs_alpha",
    "use_offline_notebook_renderer",
    "variants_pareto_figure",
    "vector_diagnostics",
    "vector_norms",
]

SUBSET_COLORS: dict[str, str] = {"challenging": "#d62728", "benign": "#1f77b4"}
"""Line colour of each prompt subset."""

DIRECTION_DASH: dict[str, str] = {"caa": "solid", "random": "dot", "none": "dash"}
"""Line dash of each steering direction (CAA solid, random control dotted)."""

BLUE, RED, GREY = "#4c72b0", "#d62728", "#8c8c8c"
ALPHA_NOTE = "positive alpha = steer away from toxicity"
MAX_PARETO_LABELS = 30
"""Up to this many settings every Pareto point is labelled; beyond, only the front's."""
_BOUNDED = {
    "mean_toxicity",
    "expected_max_toxicity",
    "toxicity_probability",
    "distinct_1",
    "distinct_2",
    "distinct_3",
}
_LABELS = {
    "mean_toxicity": "Mean toxicity",
    "expected_max_toxicity": "Expected maximum toxicity",
    "toxicity_probability": "Toxicity probability",
    "perplexity": "Perplexity",
    "benign_perplexity": "Perplexity on benign prompts",
    "human_perplexity": "Steered perplexity on held-out benign text",
    "benign_human_perplexity": "Steered perplexity on held-out benign text",
    "floor_share": "Share of samples at the scorer's floor",
    "kl_benign": "KL on benign prompts",
    "distinct_1": "Distinct-1",
    "distinct_2": "Distinct-2",
    "distinct_3": "Distinct-3",
}
_FALLBACK_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _label(metric: str) -> str:
    """Human-readable name of a summary column."""
    return _LABELS.get(metric, metric.replace("_", " "))


def _title(text: str, scope: str = "") -> str:
    """Figure title with what it shows (``scope``) and alpha's sign as a subtitle line."""
    return f"{text}<br><sup>{scope + '; ' if scope else ''}{ALPHA_NOTE}</sup>"


def _layers_text(layers: Sequence[Any]) -> str:
    """``layer 12`` or ``layers 3, 6, 9`` (``layers 0-29`` for a long run of layers)."""
    values = sorted({int(v) for v in layers if int(v) >= 0})
    if not values:
        return "unsteered"
    if len(values) == 1:
        return f"layer {values[0]}"
    if len(values) > 6 and values == list(range(values[0], values[-1] + 1)):
        return f"layers {values[0]}-{values[-1]}"
    return "layers " + ", ".join(str(v) for v in values)


def _direction_text(directions: Sequence[Any]) -> str:
    """Direction names as shown in titles: ``CAA`` and ``random control``."""
    names = {"caa": "CAA", "random": "random control", "none": "unsteered"}
    found = [str(d) for d in dict.fromkeys(directions) if str(d) != "none"]
    return " vs ".join(names.get(d, d) for d in found) or "unsteered"


def _scope(
    rows: pd.DataFrame, *, layers: bool = True, direction: bool = True, subset: bool = True
) -> str:
    """What ``rows`` hold, for a subtitle: layers, directions and subsets present."""
    parts = []
    if layers and "layer" in rows.columns:
        parts.append(_layers_text(rows["layer"].tolist()))
    if direction and "direction" in rows.columns:
        parts.append(_direction_text(rows["direction"].tolist()))
    if subset and "subset" in rows.columns:
        subsets = [str(v) for v in dict.fromkeys(rows["subset"])]
        parts.append(("subset " if len(subsets) == 1 else "subsets ") + ", ".join(subsets))
    halves = [str(v) for v in dict.fromkeys(rows["split"])] if "split" in rows.columns else []
    if len(halves) == 1 and halves[0] != "all":
        parts.append(f"{halves[0]} half")
    return " · ".join(parts)


def _finite(values: Any) -> np.ndarray:
    """The finite entries of ``values`` as floats."""
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    return array[np.isfinite(array)]


def spans_decades(values: Any) -> bool:
    """Whether the finite ``values`` are all positive and span a factor of 10 or more."""
    array = _finite(values)
    return bool(len(array)) and bool((array > 0).all()) and array.max() >= 10 * array.min()


def fitted_range(
    values: Any, *, bounded: bool = False, log: bool = False, pad: float = 0.08
) -> list[float] | None:
    """An axis range around the finite ``values`` with a margin of ``pad`` times their span.

    Args:
        values: The numbers to show (lines, bands, markers).
        bounded: The quantity lies in [0, 1]; the range is clipped to it.
        log: A log axis: the range is in log10 units, as plotly expects.
        pad: Margin on each side, as a share of the span.

    Returns:
        ``[low, high]``, or None when there is no finite value (plotly then autoscales).
    """
    array = _finite(values)
    if log:
        array = np.log10(array[array > 0])
    if not len(array):
        return None
    low, high = float(array.min()), float(array.max())
    span = high - low or (abs(high) * 0.1 if high else 0.1)
    low, high = low - pad * span, high + pad * span
    if bounded and not log:
        low, high = max(low, 0.0), min(high, 1.0)
    return [low, high]


def _fit_y(fig: go.Figure, values: Any, metric: str, **where: Any) -> None:
    """Fit a y axis to ``values``: clipped to [0, 1] if bounded, else log if they span decades."""
    log = metric not in _BOUNDED and spans_decades(values)
    if log:
        fig.update_yaxes(type="log", **where)
    fig.update_yaxes(range=fitted_range(values, bounded=metric in _BOUNDED, log=log), **where)


def alpha_colors(alphas: Sequence[float]) -> dict[float, str]:
    """One discrete colour per alpha, ordered along a sequential scale (Viridis, no yellow)."""
    ordered = sorted({float(a) for a in alphas})
    if len(ordered) == 1:
        return {ordered[0]: sample_colorscale("Viridis", [0.35])[0]}
    positions = np.linspace(0.0, 0.85, len(ordered)).tolist()
    return dict(zip(ordered, sample_colorscale("Viridis", positions), strict=True))


def _color(subset: str, index: int = 0) -> str:
    """Colour of a subset (a fallback palette for unknown subsets)."""
    return SUBSET_COLORS.get(subset, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _rgba(hex_color: str, opacity: float) -> str:
    """Turn ``#rrggbb`` into an ``rgba(...)`` string."""
    red, green, blue = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{opacity})"


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise DataError when ``df`` is empty or lacks a column."""
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise DataError(f"The {what} lacks the column(s) {missing}; pass a steerlib {what}.")
    if len(df) == 0:
        raise DataError(f"The {what} is empty; pass at least one row.")


def _fluency_metric(rows: pd.DataFrame, fluency: str | None) -> str | None:
    """The fluency column of the second panel: the given one, or the first with data."""
    if fluency != "auto":
        if fluency is not None and fluency not in rows.columns:
            raise ConfigError(
                f"toxicity_vs_alpha got fluency={fluency!r}, which is not a summary column; "
                "use 'human_perplexity', 'perplexity', 'kl_benign' or None (no panel)."
            )
        return fluency
    for column in ("human_perplexity", "perplexity"):
        if column in rows.columns and len(_finite(rows[column])):
            return column
    return None


def toxicity_vs_alpha(
    summary: pd.DataFrame,
    metric: str = "mean_toxicity",
    *,
    layer: int | None = None,
    fluency: str | None = "auto",
    fluency_limit: float | None = None,
) -> go.Figure:
    """Plot a summary metric against alpha at one layer, with fluency in a panel below.

    Kept in one piece (about 100 lines): one figure, built trace by trace.

    Top panel: one line per (subset, direction): colour per subset, dash per direction (CAA
    solid, random dotted). When ``<metric>_ci_low`` and ``<metric>_ci_high`` exist a shaded
    band is drawn under each line. Unsteered rows (direction ``"none"``) appear as markers at
    alpha 0. Bottom panel (sharing alpha): the fluency cost on the benign subset (all subsets
    share ``human_perplexity``, measured on fixed held-out text), one line per direction, with
    its alpha-0 value and the rule's budget as horizontal lines. Both y axes are fitted to the
    data; the fluency axis is logarithmic when its values span a factor of 10 or more.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        metric: Summary column on the y axis.
        layer: Layer to show; may be omitted when the summary steers a single layer.
        fluency: Column of the fluency panel; ``"auto"``: ``human_perplexity`` when the
            summary has it, else ``perplexity``; None: no panel.
        fluency_limit: The operating-point rule's largest admissible fluency value, drawn as a
            dashed line (omitted when None).

    Returns:
        The figure (the fluency traces on ``xaxis2``/``yaxis2`` when there is a panel).

    Raises:
        ConfigError: If ``metric`` or ``fluency`` is not a column, or ``layer`` is absent or
            ambiguous.
    """
    from plotly.subplots import make_subplots

    require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
    if metric not in summary.columns:
        raise ConfigError(
            f"toxicity_vs_alpha got metric={metric!r}, which is not a summary column; "
            "use e.g. 'mean_toxicity', 'expected_max_toxicity' or 'toxicity_probability'."
        )
    steered = summary[summary["direction"] != "none"]
    layers = sorted(int(value) for value in steered["layer"].unique())
    if layer is None:
        if len(layers) != 1:
            raise ConfigError(
                f"The summary steers layers {layers}; pass layer= one of them to toxicity_vs_alpha."
            )
        layer = layers[0]
    elif int(layer) not in layers:
        raise ConfigError(
            f"toxicity_vs_alpha got layer={layer!r}, which the summary lacks; use one of {layers}."
        )
    rows = steered[steered["layer"] == layer]
    fluency = _fluency_metric(rows, fluency)
    panel = fluency is not None
    fig = (
        make_subplots(
            rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38]
        )
        if panel
        else go.Figure()
    )
    top = {"row": 1, "col": 1} if panel else {}
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    has_band = low_col in summary.columns and high_col in summary.columns
    shown: list[Any] = []
    subsets = list(dict.fromkeys(summary["subset"]))
    for index, subset in enumerate(subsets):
        color = _color(subset, index)
        for direction in dict.fromkeys(rows["direction"]):
            part = rows[(rows["subset"] == subset) & (rows["direction"] == direction)]
            part = part.sort_values("alpha")
            if part.empty:
                continue
            alphas = part["alpha"].astype(float).tolist()
            name = f"{subset} · {direction}"
            shown += part[metric].tolist()
            if has_band:
                shown += part[high_col].tolist() + part[low_col].tolist()
                fig.add_trace(
                    go.Scatter(
                        x=alphas + alphas[::-1],
                        y=part[high_col].tolist() + part[low_col].tolist()[::-1],
                        mode="lines",
                        fill="toself",
                        fillcolor=_rgba(color, 0.15 if direction == "caa" else 0.08),
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=name,
                        name=f"{name} CI",
                    ),
                    **top,
                )
            fig.add_trace(
                go.Scatter(
                    x=alphas,
                    y=part[metric].tolist(),
                    mode="lines+markers",
                    line={"color": color, "dash": DIRECTION_DASH.get(direction, "dashdot")},
                    marker={"color": color},
                    name=name,
                    legendgroup=name,
                ),
                **top,
            )
        base = summary[(summary["direction"] == "none") & (summary["subset"] == subset)]
        if len(base):
            shown += base[metric].tolist()
            fig.add_trace(
                go.Scatter(
                    x=base["alpha"].astype(float).tolist(),
                    y=base[metric].tolist(),
                    mode="markers",
                    marker={"color": color, "symbol": "x", "size": 10},
                    name=f"{subset} · unsteered",
                ),
                **top,
            )
    scope = f"layer {layer} · {_direction_text(rows['direction'])} · subsets {', '.join(subsets)}"
    title = f"{_label(metric)} vs steering strength"
    if panel:
        title += " (top) and fluency cost (bottom)"
    fig.update_layout(
        title=_title(title, scope),
        template="plotly_white",
        legend_title_text="subset · direction",
    )
    fig.update_yaxes(title_text=_label(metric), **top)
    _fit_y(fig, shown, metric, **top)
    fig.update_xaxes(title_text=f"alpha ({ALPHA_NOTE})", **({"row": 2, "col": 1} if panel else {}))
    if panel:
        _fluency_panel(fig, rows, str(fluency), fluency_limit)
    return fig


def _fluency_panel(fig: go.Figure, rows: pd.DataFrame, fluency: str, limit: float | None) -> None:
    """Bottom panel of :func:`toxicity_vs_alpha`: ``fluency`` against alpha per direction."""
    cost = rows[rows["subset"] == "benign"] if (rows["subset"] == "benign").any() else rows
    subset = str(cost["subset"].iloc[0])
    shown: list[Any] = []
    where = {"row": 2, "col": 1}
    for direction in dict.fromkeys(cost["direction"]):
        part = cost[cost["direction"] == direction].sort_values("alpha")
        shown += part[fluency].tolist()
        fig.add_trace(
            go.Scatter(
                x=part["alpha"].astype(float).tolist(),
                y=part[fluency].tolist(),
                mode="lines+markers",
                line={"color": "#444444", "dash": DIRECTION_DASH.get(direction, "dashdot")},
                marker={"color": "#444444", "size": 6},
                name=f"fluency · {direction}",
            ),
            **where,
        )
    zero = _finite(cost.loc[cost["alpha"] == 0, fluency])
    if len(zero):
        fig.add_hline(y=float(zero.mean()), line={"color": GREY, "dash": "dot"}, **where)
    log = fluency not in _BOUNDED and spans_decades([*shown, limit or math.nan])
    if limit is not None and math.isfinite(limit) and limit > 0:
        shown.append(limit)
        fig.add_hline(y=float(limit), line={"color": "firebrick", "dash": "dash"}, **where)
        fig.add_annotation(  # annotations on a log axis take log10 coordinates
            x=1,
            xref="x2 domain",
            y=math.log10(limit) if log else limit,
            yref="y2",
            text="budget",
            showarrow=False,
            xanchor="right",
            yanchor="bottom",
            font={"color": "firebrick"},
        )
    where_text = "held-out benign text" if "human" in fluency else f"{subset} prompts"
    label = "Perplexity" if "perplexity" in fluency else _label(fluency)
    fig.update_yaxes(title_text=f"{label}<br>({where_text})", **where)
    _fit_y(fig, shown, fluency, **where)


def _layer_alpha_pivot(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` with one row per layer and one column per alpha, both ascending."""
    table = rows.pivot_table(index="layer", columns="alpha", values=metric, aggfunc="mean")
    return table.sort_index().sort_index(axis=1)


def _layer_alpha_figure(
    table: pd.DataFrame,
    text: list[list[str]],
    *,
    title: str,
    colorbar: str,
    hover: str,
    log: bool = False,
    **scale: Any,
) -> go.Figure:
    """Annotated heatmap of a layer x alpha pivot, categorical axes; ``scale``: colour options.

    With ``log`` the colours follow log10 of the values (the colour bar is labelled in the
    values themselves, the cells and hover text show them unchanged).
    """
    values = table.to_numpy(float)
    bar: dict[str, Any] = {"title": {"text": colorbar + (" (log scale)" if log else "")}}
    z, shown = values, "z"
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log10(values)
        ticks = _log_ticks(float(np.nanmin(values)), float(np.nanmax(values)))
        bar.update(tickvals=np.log10(ticks).tolist(), ticktext=[f"{t:g}" for t in ticks])
        scale["customdata"], shown = values, "customdata"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[float(value) for value in table.columns],
            y=[int(value) for value in table.index],
            text=text,
            texttemplate="%{text}",
            colorbar=bar,
            hovertemplate=f"layer %{{y}}, alpha %{{x}}: %{{{shown}:{hover}}}<extra></extra>",
            **scale,
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=f"alpha ({ALPHA_NOTE})",
        yaxis_title="layer",
        template="plotly_white",
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 tick values between ``low`` and ``high`` (both positive), for a log colour bar."""
    ticks = [
        mantissa * 10.0**exponent
        for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for mantissa in (1, 2, 5)
    ]
    inside = [t for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [low, high]


def layer_alpha_heatmap(
    summary: pd.DataFrame,
    metric: str = "expected_max_toxicity",
    *,
    subset: str = "challenging",
    direction: str = "caa",
) -> go.Figure:
    """Heatmap of a summary metric over layers (y) and alphas (x), cells annotated.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        metric: Summary column to colour by.
        subset: Subset whose rows are shown.
        direction: Direction whose rows are shown.

    Returns:
        The figure; its ``z`` matrix has one row per layer (ascending) and one column per alpha
        (ascending), NaN where the sweep has no such cell. When the positive values span a
        factor of 10 or more (perplexity of broken text) ``z`` holds their log10 and
        ``customdata`` the values: a log colour scale.

    Raises:
        ConfigError: If ``metric`` is not a column or no row matches ``subset``/``direction``.
    """
    require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
    if metric not in summary.columns:
        raise ConfigError(
            f"layer_alpha_heatmap got metric={metric!r}, which is not a summary column."
        )
    rows = summary[(summary["subset"] == subset) & (summary["direction"] == direction)]
    if rows.empty:
        raise ConfigError(
            f"The summary has no rows with subset={subset!r} and direction={direction!r}; "
            "pick values present in it."
        )
    table = _layer_alpha_pivot(rows, metric)
    values = table.to_numpy(float)
    text = [[("" if math.isnan(v) else f"{v:.3g}") for v in row] for row in values]
    return _layer_alpha_figure(
        table,
        text,
        title=_title(f"{_label(metric)} by layer and alpha", _scope(rows)),
        colorbar=_label(metric),
        hover=".4g",
        log=spans_decades(values.ravel()),
        colorscale="Reds",
    )


def control_heatmap(
    control: pd.DataFrame, metric: str = "delta_mean_toxicity", *, subset: str = "challenging"
) -> go.Figure:
    """CAA minus the random control over layers (y) and alphas (x), on a diverging scale.

    Blue cells: CAA lowers toxicity more than a random direction of the same norm; red: less.
    The scale is centred on 0 and symmetric, its bound the largest difference among positive
    alphas (where there are any), so negative alphas do not set it. A cell is starred when
    the paired interval of the difference (``<metric>_ci_low`` / ``_ci_high``, from
    :func:`steerlib.evaluate.metrics.delta_vs_control` given the sweep) excludes 0.

    Args:
        control: Output of :func:`steerlib.evaluate.metrics.delta_vs_control`.
        metric: ``"delta_mean_toxicity"`` or ``"delta_expected_max_toxicity"``.
        subset: Subset whose rows are shown.

    Returns:
        The figure; its ``z`` matrix has one row per layer and one column per alpha.

    Raises:
        ConfigError: If ``metric`` is not a column or no row has ``subset``.
    """
    require_columns(control, ["subset", "layer", "alpha"], "control table")
    if metric not in control.columns:
        raise ConfigError(
            f"control_heatmap got metric={metric!r}; use 'delta_mean_toxicity' or "
            "'delta_expected_max_toxicity' (columns of metrics.delta_vs_control)."
        )
    rows = control[control["subset"] == subset]
    if rows.empty:
        raise ConfigError(f"The control table has no rows with subset={subset!r}.")
    table = _layer_alpha_pivot(rows, metric)
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    starred: set[tuple[int, float]] = set()
    if low_col in rows.columns and high_col in rows.columns:
        excludes = (rows[low_col] > 0) | (rows[high_col] < 0)
        starred = {(int(r.layer), float(r.alpha)) for r in rows[excludes].itertuples()}
    z = table.to_numpy(float)
    text = [
        [
            ""
            if math.isnan(value)
            else f"{value:+.3f}" + ("*" if (int(layer), float(alpha)) in starred else "")
            for alpha, value in zip(table.columns, row, strict=True)
        ]
        for layer, row in zip(table.index, z, strict=True)
    ]
    # The scale is set by the positive alphas (the steering that matters): a negative alpha's
    # large difference saturates instead of washing out every other cell.
    positive = z[:, np.asarray(table.columns, dtype=float) > 0]
    scaled = positive if np.isfinite(positive).any() else z
    bound = float(np.nanmax(np.abs(scaled))) if np.isfinite(scaled).any() else 1.0
    bound = bound or 1.0
    return _layer_alpha_figure(
        table,
        text,
        title=_title(
            f"{_label(metric.removeprefix('delta_'))}: CAA minus random control",
            f"{_layers_text(rows['layer'])} · subset {subset} · * paired 95% interval excludes 0",
        ),
        colorbar="CAA − random",
        hover="+.4f",
        colorscale="RdBu_r",
        zmid=0,
        zmin=-bound,
        zmax=bound,
    )


def layer_profile(
    summary: pd.DataFrame, metric: str = "mean_toxicity", *, subset: str = "challenging"
) -> go.Figure:
    """A summary metric against the steered layer, one line per (alpha, direction).

    Colour per alpha, dash per direction (CAA solid, random dotted), error bars from
    ``<metric>_ci_low/_high`` when present; the alpha-0 value (the unsteered model, equal at
    every layer) is a grey horizontal line. The y axis is fitted to the values and intervals,
    logarithmic when they span a factor of 10 or more (one broken setting's perplexity would
    flatten every other point on a linear axis).

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        metric: Summary column on the y axis.
        subset: Subset whose rows are shown.

    Returns:
        The figure.

    Raises:
        ConfigError: If ``metric`` is not a column or no steered row has ``subset``.
    """
    require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
    if metric not in summary.columns:
        raise ConfigError(f"layer_profile got metric={metric!r}, which is not a summary column.")
    rows = summary[
        (summary["subset"] == subset) & (summary["direction"] != "none") & (summary["layer"] >= 0)
    ]
    if rows.empty:
        raise ConfigError(f"The summary has no steered rows with subset={subset!r}.")
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    has_ci = low_col in rows.columns and high_col in rows.columns
    alphas = sorted(float(a) for a in rows["alpha"].unique() if a != 0)
    palette = alpha_colors(alphas) if alphas else {}
    shown: list[Any] = []
    fig = go.Figure()
    for alpha in alphas:
        color = palette[alpha]
        for direction in dict.fromkeys(rows["direction"]):
            part = rows[(rows["alpha"] == alpha) & (rows["direction"] == direction)]
            part = part.sort_values("layer")
            if part.empty:
                continue
            error = None
            shown += part[metric].tolist()
            if has_ci:
                shown += part[low_col].tolist() + part[high_col].tolist()
                error = {
                    "type": "data",
                    "symmetric": False,
                    "array": (part[high_col] - part[metric]).tolist(),
                    "arrayminus": (part[metric] - part[low_col]).tolist(),
                    "thickness": 1,
                }
            fig.add_trace(
                go.Scatter(
                    x=part["layer"].astype(int).tolist(),
                    y=part[metric].tolist(),
                    error_y=error,
                    mode="lines+markers",
                    line={"color": color, "dash": DIRECTION_DASH.get(direction, "dashdot")},
                    marker={"color": color},
                    name=f"alpha {alpha:g} · {direction}",
                )
            )
    zero = rows[rows["alpha"] == 0][metric]
    if len(zero):
        shown.append(float(zero.mean()))
        fig.add_hline(y=float(zero.mean()), line={"color": "#7f7f7f", "dash": "dash"})
    fig.update_layout(
        title=_title(f"{_label(metric)} by steered layer", _scope(rows)),
        xaxis={
            "title": {"text": "layer"},
            "tickvals": sorted(int(x) for x in rows["layer"].unique()),
        },
        yaxis_title=_label(metric),
        template="plotly_white",
        legend_title_text="alpha · direction (grey dashes: alpha 0)",
    )
    _fit_y(fig, shown, metric)
    return fig


def vector_diagnostics(diagnostics: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Per-layer checks of a CAA vector (:mod:`steerlib.steer.diagnostics`) in two panels.

    Top: the vector's norm relative to the median content-token norm. Bottom: its cosine with
    the attention-sink direction (before and after the projection) and its split-half
    stability, with the 0.5 flag line.

    Raises:
        DataError: No diagnostics (a vector saved before they were recorded).
    """
    from plotly.subplots import make_subplots

    rows = sorted(diagnostics, key=lambda r: int(r["layer"]))
    if not rows:
        raise DataError(
            "this vector records no diagnostics: rebuild it (notebooks/04_vectors.ipynb with "
            "force=True) to get them."
        )
    layers = [int(r["layer"]) for r in rows]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("norm / median token norm", "cosine"),
    )
    fig.add_trace(
        go.Bar(x=layers, y=[r["norm_ratio"] for r in rows], name="norm ratio", marker_color=BLUE),
        row=1,
        col=1,
    )
    for key, name, color, dash in (
        ("sink_cosine_raw", "cos(vector, sink) before projection", GREY, "dot"),
        ("sink_cosine", "cos(vector, sink)", RED, "solid"),
        ("split_half_cosine", "split-half cosine", BLUE, "solid"),
    ):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[r.get(key) for r in rows],
                name=name,
                mode="lines+markers",
                line={"color": color, "dash": dash},
            ),
            row=2,
            col=1,
        )
    for y in (0.5, -0.5):
        fig.add_hline(y=y, line_dash="dash", line_color=GREY, row=2, col=1)
    fig.update_layout(
        title=(
            "Steering vector diagnostics per layer"
            f"<br><sup>CAA direction, {_layers_text(layers)}</sup>"
        ),
        template="plotly_white",
        height=600,
    )
    fig.update_xaxes(title_text="layer", row=2, col=1)
    return fig


def vector_norms(norms: Mapping[int, float] | Sequence[float]) -> go.Figure:
    """Bar chart of the steering vector's norm per layer.

    Args:
        norms: ``{layer: norm}`` or a sequence indexed by layer.

    Returns:
        The figure (one bar trace, layers ascending).
    """
    if isinstance(norms, Mapping):
        pairs = sorted((int(layer), float(value)) for layer, value in norms.items())
    else:
        pairs = [(layer, float(value)) for layer, value in enumerate(norms)]
    if not pairs:
        raise DataError("vector_norms got no norms; pass one value per layer.")
    fig = go.Figure(
        go.Bar(
            x=[layer for layer, _ in pairs],
            y=[value for _, value in pairs],
            marker_color="#4c72b0",
            hovertemplate="layer %{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=(
            "Steering vector norm per layer"
            f"<br><sup>CAA direction, {_layers_text([layer for layer, _ in pairs])}</sup>"
        ),
        xaxis_title="layer",
        yaxis_title="L2 norm",
        template="plotly_white",
    )
    return fig


def layer_cosine_heatmap(matrix: np.ndarray, layers: Sequence[int]) -> go.Figure:
    """Heatmap of cosine similarities between per-layer steering directions.

    Args:
        matrix: Square matrix of cosines, one row and column per entry of ``layers``.
        layers: Layer indices labelling the rows and columns.

    Returns:
        The figure (diverging colour scale fixed to [-1, 1]).

    Raises:
        ConfigError: If ``matrix`` is not square or does not match ``layers``.
    """
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] != len(layers):
        raise ConfigError(
            f"layer_cosine_heatmap got a matrix of shape {values.shape} for {len(layers)} "
            "layers; pass a square matrix with one row per layer."
        )
    labels = [int(layer) for layer in layers]
    annotate = len(labels) <= 32
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=[[f"{value:.2f}" for value in row] for row in values] if annotate else None,
            texttemplate="%{text}" if annotate else None,
            colorbar={"title": {"text": "cosine"}},
            hovertemplate="layer %{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=(
            "Cosine similarity of steering directions across layers"
            f"<br><sup>CAA direction, {_layers_text(labels)}</sup>"
        ),
        xaxis_title="layer",
        yaxis_title="layer",
        template="plotly_white",
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def toxicity_distribution(
    sweep: pd.DataFrame,
    *,
    subset: str | None = None,
    layer: int | None = None,
    direction: str | None = None,
) -> go.Figure:
    """Box plots of per-completion toxicity for each alpha, one colour per subset.

    Args:
        sweep: The sweep table.
        subset: Keep only this subset (all when None).
        layer: Keep only this layer (all when None).
        direction: Keep only this direction (all when None).

    Returns:
        The figure: one box trace per subset, x = alpha, y = toxicity.

    Raises:
        ConfigError: If the filters leave no rows.
    """
    require_columns(sweep, ["subset", "alpha", "toxicity"], "sweep table")
    rows = sweep
    for column, value in (("subset", subset), ("layer", layer), ("direction", direction)):
        if value is not None:
            rows = rows[rows[column] == value]
    if rows.empty:
        raise ConfigError(
            f"No sweep rows match subset={subset!r}, layer={layer!r}, direction={direction!r}; "
            "use values present in the sweep."
        )
    fig = go.Figure()
    for index, name in enumerate(dict.fromkeys(rows["subset"])):
        part = rows[rows["subset"] == name].sort_values("alpha", kind="stable")
        fig.add_trace(
            go.Box(
                x=part["alpha"].astype(float).tolist(),
                y=part["toxicity"].astype(float).tolist(),
                name=str(name),
                marker_color=_color(str(name), index),
                boxmean=True,
            )
        )
    fig.update_layout(
        title=_title("Toxicity of each completion by alpha", _scope(rows)),
        xaxis_title=f"alpha ({ALPHA_NOTE})",
        yaxis_title="toxicity",
        boxmode="group",
        template="plotly_white",
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=fitted_range(rows["toxicity"], bounded=True, pad=0.03))
    return fig


def _hover(row: pd.Series, x: str, y: str) -> str:
    """Hover text of one summary row."""
    parts = [f"layer {row['layer']}", f"alpha {float(row['alpha']):g}"]
    parts += [str(row[key]) for key in ("subset", "direction") if key in row.index]
    return f"{', '.join(parts)}<br>{x} {row[x]:.4g}<br>{y} {row[y]:.4g}"


def pareto_figure(
    summary: pd.DataFrame,
    front: pd.DataFrame | None = None,
    *,
    x: str = "perplexity",
    y: str = "expected_max_toxicity",
    recommended: Mapping[str, Any] | None = None,
    control: pd.DataFrame | None = None,
    budget: float | None = None,
    log_x: bool | None = None,
) -> go.Figure:
    """Scatter of the (layer, alpha) settings with their Pareto front and recommended point.

    Kept in one piece (about 100 lines): one figure, built trace by trace (front, settings, control,
    budget line, recommended point).

    Pass the rows of one subset and direction (e.g. challenging CAA rows). To draw the
    trade-off on the operating-point rule's own axes, pass rows from
    :func:`steerlib.evaluate.metrics.tradeoff_rows` with ``x="benign_perplexity"``.

    Args:
        summary: Summary rows to plot.
        front: Pareto front to draw; computed with :func:`steerlib.evaluate.metrics.pareto_front` when
            None.
        x: Cost column (e.g. perplexity).
        y: Toxicity column.
        recommended: Output of :func:`steerlib.evaluate.metrics.recommend_operating_point`; its
            (layer, alpha) row of ``summary`` is highlighted (its own ``x``/``y`` values are
            used when ``summary`` has no such row).
        control: Rows of the random-direction control on the same axes, drawn as grey open
            markers (not part of the front), so CAA and the control can be compared at equal
            cost.
        budget: The largest admissible ``x`` of the rule, drawn as a dashed vertical line.
        log_x: Logarithmic ``x`` axis; by default when every ``x`` is positive and they span
            a factor of 10 or more (perplexity of broken text runs into the thousands).

    Returns:
        The figure: one points trace per alpha (a discrete colour each, every point labelled
        ``L<layer> α<alpha>`` in the image, only the front's when there are more than
        :data:`MAX_PARETO_LABELS`), a front trace, then, when given, a control trace and a
        recommended-point trace (the budget is a layout shape).

    Example:
        >>> rows = metrics.tradeoff_rows(summary)  # doctest: +SKIP
        >>> caa = rows[rows["direction"] == "caa"]  # doctest: +SKIP
        >>> rnd = rows[rows["direction"] == "random"]  # doctest: +SKIP
        >>> pareto_figure(caa, x="benign_perplexity", control=rnd, budget=6.95)  # doctest: +SKIP
    """
    require_columns(summary, ["layer", "alpha", x, y], "summary")
    if front is None:
        front = pareto_front(summary, x=x, y=y)
    fig = go.Figure()
    colors = alpha_colors(summary["alpha"].astype(float).tolist()) if len(summary) else {}
    label_all = len(summary) <= MAX_PARETO_LABELS
    on_front = {(int(r.layer), float(r.alpha)) for r in front.itertuples()} if len(front) else set()
    for alpha, color in colors.items():
        part = summary[np.isclose(summary["alpha"].astype(float), alpha)]
        labels = [
            f"L{int(r.layer)} α{float(r.alpha):.3g}"
            if label_all or (int(r.layer), float(r.alpha)) in on_front
            else ""
            for r in part.itertuples()
        ]
        fig.add_trace(
            go.Scatter(
                x=part[x].tolist(),
                y=part[y].tolist(),
                mode="markers+text",
                marker={"size": 9, "color": color},
                text=labels,
                textposition="top center",
                textfont={"size": 10, "color": "#333333"},
                hovertext=[_hover(row, x, y) for _, row in part.iterrows()],
                hoverinfo="text",
                name=f"alpha {alpha:.3g}",
            )
        )
    front_sorted = front.sort_values([x, y]) if len(front) else front
    fig.add_trace(
        go.Scatter(
            x=front_sorted[x].tolist() if len(front) else [],
            y=front_sorted[y].tolist() if len(front) else [],
            mode="lines",
            line={"color": "black", "shape": "hv"},
            name="Pareto front",
        )
    )
    if control is not None and len(control):
        require_columns(control, ["layer", "alpha", x, y], "control")
        fig.add_trace(
            go.Scatter(
                x=control[x].tolist(),
                y=control[y].tolist(),
                mode="markers",
                marker={"size": 8, "symbol": "circle-open", "color": "grey"},
                hovertext=[_hover(row, x, y) for _, row in control.iterrows()],
                hoverinfo="text",
                name="random control",
            )
        )
    xs = pd.concat([summary[x], control[x] if control is not None and len(control) else None])
    xs = xs.dropna().to_numpy(float)
    if log_x is None:
        log_x = bool(len(xs)) and bool((xs > 0).all()) and xs.max() >= 10 * xs.min()
    if log_x:
        fig.update_xaxes(type="log")
    if budget is not None and math.isfinite(budget) and (budget > 0 or not log_x):
        fig.add_vline(x=budget, line={"dash": "dash", "color": "firebrick"})
        fig.add_annotation(  # annotations on a log axis take log10 coordinates
            x=math.log10(budget) if log_x else budget,
            xref="x",
            y=1,
            yref="paper",
            text="perplexity budget",
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font={"color": "firebrick"},
        )
    if recommended is not None:
        point = _recommended_xy(summary, recommended, x, y)
        if point is not None:
            fig.add_trace(
                go.Scatter(
                    x=[point[0]],
                    y=[point[1]],
                    mode="markers",
                    marker={
                        "size": 18,
                        "symbol": "star",
                        "color": "gold",
                        "line": {"color": "black", "width": 1.5},
                    },
                    name=(
                        f"recommended: layer {recommended.get('layer')}, "
                        f"alpha {float(recommended.get('alpha', math.nan)):g}"
                    ),
                )
            )
    ys = pd.concat([summary[y], control[y] if control is not None and len(control) else None])
    fig.update_yaxes(range=fitted_range(ys, bounded=y in _BOUNDED, pad=0.12))
    scope = _scope(summary, direction=False)
    scope += " · CAA" + (" vs random control (grey circles)" if control is not None else "")
    fig.update_layout(
        title=_title(f"{_label(y)} vs {_label(x)} (lower is better on both)", scope),
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        xaxis_title=_label(x),
        yaxis_title=_label(y),
        template="plotly_white",
    )
    return fig


def _recommended_xy(
    summary: pd.DataFrame, recommended: Mapping[str, Any], x: str, y: str
) -> tuple[float, float] | None:
    """Locate the recommended (layer, alpha) in ``summary`` (or use its own numbers)."""
    if "layer" in recommended and "alpha" in recommended:
        hit = summary[
            (summary["layer"] == int(recommended["layer"]))
            & np.isclose(summary["alpha"].astype(float), float(recommended["alpha"]))
        ]
        for column, preferred in (("subset", "challenging"), ("direction", "caa")):
            if len(hit) > 1 and column in hit.columns and (hit[column] == preferred).any():
                hit = hit[hit[column] == preferred]
        if len(hit):
            return float(hit[x].iloc[0]), float(hit[y].iloc[0])
    if x in recommended and y in recommended:
        return float(recommended[x]), float(recommended[y])
    return None


def compare_runs_figure(
    table: pd.DataFrame,
    metric: str = "expected_max_toxicity",
    *,
    subset: str = "challenging",
    direction: str = "caa",
) -> go.Figure:
    """``metric`` against alpha, one line per (run, layer), for runs compared side by side.

    Args:
        table: Summary rows with a ``run_name`` column (see ``pipeline.compare_runs``).
        metric: Summary column to plot.
        subset: Prompt subset.
        direction: ``"caa"`` or ``"random"``.
    """
    require_columns(
        table, ["run_name", "layer", "alpha", "subset", "direction", metric], "comparison"
    )
    rows = table[(table["subset"] == subset) & (table["direction"] == direction)]
    fig = go.Figure()
    _fit_y(fig, rows[metric], metric)
    for (run_name, layer), group in rows.groupby(["run_name", "layer"], sort=True):
        group = group.sort_values("alpha")
        label = f"{run_name} · layer {layer}"
        if "pair_source" in group.columns and group["pair_source"].notna().any():
            label += f" · pairs from {group['pair_source'].iloc[0]}"
        fig.add_trace(
            go.Scatter(x=group["alpha"], y=group[metric], mode="lines+markers", name=label)
        )
    fig.update_layout(
        title=_title(
            f"{_label(metric)} by run",
            f"{_layers_text(rows['layer'])} · {_direction_text([direction])} · subset {subset}",
        ),
        xaxis_title="alpha (positive alpha = steer away from toxicity)",
        yaxis_title=_label(metric),
        template="plotly_white",
    )
    return fig


_VARIANT_MARKERS = ("circle", "square", "diamond", "triangle-up", "cross", "star", "hexagon", "x")
VARIANT_COLORS: dict[str, str] = {
    "caa": "#1f77b4",
    "caa_generated": "#17becf",
    "gated": "#d62728",
    "ablate": "#2ca02c",
    "clamp": "#9467bd",
    "norm_preserving": "#ff7f0e",
    "multilayer": "#8c564b",
    "random control": GREY,
    "unsteered (alpha 0)": "#000000",
}
"""Colour of each steering variant in the variants' Pareto figure (the random control grey)."""


def _variant_points(rows: pd.DataFrame, fluency: str, subset: str) -> dict[str, pd.DataFrame]:
    """Each variant's steered settings with ``cost_pct`` (fluency cost over alpha 0, in %)."""
    from steerlib.evaluate.controls import tradeoff_rows

    cost = f"benign_{fluency}"
    traces: dict[str, pd.DataFrame] = {}
    reference = pd.DataFrame()
    for variant, part in rows.groupby("variant", sort=False):
        points = tradeoff_rows(part, subset=subset, cost=fluency)
        base = points[points["alpha"].astype(float) == 0.0].set_index(["direction", "layer"])[cost]
        points = points.assign(
            _base=[
                base.get((d, layer), np.nan)
                for d, layer in zip(points["direction"], points["layer"], strict=True)
            ]
        )
        points = points.assign(cost_pct=100.0 * (points[cost] / points["_base"] - 1.0))
        zero = points["alpha"].astype(float) == 0.0
        if variant == "caa":
            reference = points[zero & (points["direction"] == "caa")]
        points = points[~zero]
        traces[str(variant)] = points[points["direction"] == "caa"]
        if variant == "caa":
            traces["random control"] = points[points["direction"] == "random"]
    control = traces.pop("random control", None)
    if control is not None:
        traces["random control"] = control
        traces["unsteered (alpha 0)"] = reference
    return {name: points.sort_values("cost_pct") for name, points in traces.items()}


def variants_pareto_figure(
    summary: pd.DataFrame,
    *,
    fluency: str = "human_perplexity",
    split: str = "confirmation",
    subset: str = "challenging",
) -> go.Figure:
    """Expected maximum toxicity against fluency cost, one colour and marker per variant.

    Every steered setting (layer, alpha) of every steering variant is a point, labelled in the
    image (``gated α0.8``; ``gated L12 α0.8`` when several layers are drawn) as in
    :func:`pareto_figure`: every point up to :data:`MAX_PARETO_LABELS` points, beyond that
    only each trace's Pareto-front points. The random control (made with ``"caa"``) is its own
    grey trace, and alpha 0 (the unsteered model, the same for every variant) a black
    reference at cost 0. The cost is the relative change of the benign ``fluency`` measure
    from alpha 0 of the same variant and layer, in percent.

    Args:
        summary: The step-06 summary with a ``variant`` column (``summary.parquet``).
        fluency: The fluency measure (a benign-subset column of the summary).
        split: Which half to draw (``"confirmation"``, ``"selection"`` or ``"all"``); the
            whole table when the summary has no such half (the subtitle says which).
        subset: Subset whose EMT is drawn.

    Returns:
        A plotly figure: one trace per variant (a discrete colour each,
        :data:`VARIANT_COLORS`), then the random control and the unsteered reference; the
        subtitle names the layer(s), the
        subset and the half shown.
    """
    require_columns(
        summary, ["variant", "subset", "layer", "alpha", "direction", fluency], "summary"
    )
    rows = summary
    if "split" in rows.columns and (rows["split"] == split).any():
        rows = rows[rows["split"] == split]
    halves = [str(v) for v in dict.fromkeys(rows["split"])] if "split" in rows.columns else []
    shown = f"{halves[0]} half" if len(halves) == 1 and halves[0] != "all" else "all prompts"
    rows = rows[rows["layer"] >= 0]
    traces = {name: points for name, points in _variant_points(rows, fluency, subset).items()}
    traces = {name: points for name, points in traces.items() if not points.empty}
    several_layers = len({int(v) for points in traces.values() for v in points["layer"]}) > 1
    label_all = sum(len(points) for points in traces.values()) <= MAX_PARETO_LABELS
    fig = go.Figure()
    every_x = [float(v) for points in traces.values() for v in points["cost_pct"]]
    low_x, high_x = (min(every_x), max(every_x)) if every_x else (0.0, 1.0)
    middle_x = (low_x + high_x) / 2
    placed: list[tuple[float, float]] = []

    def where(x: float, y: float) -> str:
        """Labels point inwards (none is cut at the edge); a second label at a point goes below."""
        side = "left" if x > middle_x else "right"
        near = any(
            abs(x - px) < 0.02 * (high_x - low_x + 1) and abs(y - py) < 0.02 for px, py in placed
        )
        placed.append((x, y))
        return f"{'bottom' if near else 'middle'} {side}"

    for index, (name, points) in enumerate(traces.items()):
        front = pareto_front(points, x="cost_pct", y="expected_max_toxicity")
        on_front = {(int(r.layer), float(r.alpha)) for r in front.itertuples()}
        short = {"random control": "random", "unsteered (alpha 0)": "unsteered"}.get(name, name)
        labels = [
            (
                f"{short} L{int(r.layer)} α{float(r.alpha):.3g}"
                if several_layers
                else f"{short} α{float(r.alpha):.3g}"
            )
            if label_all or (int(r.layer), float(r.alpha)) in on_front
            else ""
            for r in points.itertuples()
        ]
        color = VARIANT_COLORS.get(name, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])
        fig.add_trace(
            go.Scatter(
                x=points["cost_pct"].tolist(),
                y=points["expected_max_toxicity"].tolist(),
                mode="markers+text"
                if name in ("random control", "unsteered (alpha 0)")
                else "markers+lines+text",
                name=name,
                marker={
                    "symbol": _VARIANT_MARKERS[index % len(_VARIANT_MARKERS)],
                    "size": 10,
                    "color": color,
                },
                line={"color": color},
                text=labels,
                textposition=[
                    where(float(r.cost_pct), float(r.expected_max_toxicity))
                    for r in points.itertuples()
                ],
                textfont={"size": 10, "color": color},
                hovertext=[
                    f"{name}<br>layer {int(r.layer)}, alpha {float(r.alpha):.4g}<br>"
                    f"EMT {float(r.expected_max_toxicity):.3f}<br>cost {float(r.cost_pct):.1f}%"
                    for r in points.itertuples()
                ],
                hoverinfo="text",
            )
        )
    layers = [v for points in traces.values() for v in points["layer"]]
    scope = f"{_layers_text(layers)} · subset {subset} · {shown}"
    fig.update_layout(
        title=_title(f"Steering variants: {subset} EMT against fluency cost", scope),
        xaxis_title=f"{_label(fluency)} increase over alpha 0 (%)",
        yaxis_title=f"{_label('expected_max_toxicity')} ({subset})",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        template="plotly_white",
    )
    return fig
