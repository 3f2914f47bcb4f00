"""Curves of a summary metric: against alpha, against the steered layer, and per run.

Also the spread of per-completion toxicity at each alpha. The alpha curve carries the
fluency cost in a panel below it.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from steerlib.errors import ConfigError
from steerlib.figures import style
from steerlib.generate.steered import is_unsteered

__all__ = ["compare_runs_figure", "layer_profile", "toxicity_distribution", "toxicity_vs_alpha"]


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
        if column in rows.columns and len(style.finite(rows[column])):
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

    style.require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
    if metric not in summary.columns:
        raise ConfigError(
            f"toxicity_vs_alpha got metric={metric!r}, which is not a summary column; "
            "use e.g. 'mean_toxicity', 'expected_max_toxicity' or 'toxicity_probability'."
        )
    steered = summary[~is_unsteered(summary)]
    layer = _curve_layer(steered, layer)
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
    shown = _metric_lines(fig, summary, rows, metric, top)
    subsets = list(dict.fromkeys(summary["subset"]))
    directions = style.direction_text(rows["direction"])
    scope = f"layer {layer} · {directions} · subsets {', '.join(subsets)}"
    title = f"{style.label(metric)} vs steering strength"
    if panel:
        title += " (top) and fluency cost (bottom)"
    fig.update_layout(
        **style.titled(title, scope),
        template="plotly_white",
        legend_title_text="subset · direction",
    )
    fig.update_yaxes(title_text=style.label(metric), **top)
    style.fit_y(fig, shown, metric, **top)
    bottom = {"row": 2, "col": 1} if panel else {}
    fig.update_xaxes(title_text=f"alpha ({style.ALPHA_NOTE})", **bottom)
    if panel:
        _fluency_panel(fig, rows, str(fluency), fluency_limit)
    return fig


def _curve_layer(steered: pd.DataFrame, layer: int | None) -> int:
    """The layer :func:`toxicity_vs_alpha` draws: ``layer``, or the only one steered."""
    layers = sorted(int(value) for value in steered["layer"].unique())
    if layer is None:
        if len(layers) != 1:
            raise ConfigError(
                f"The summary steers layers {layers}; pass layer= one of them to toxicity_vs_alpha."
            )
        return layers[0]
    if int(layer) not in layers:
        raise ConfigError(
            f"toxicity_vs_alpha got layer={layer!r}, which the summary lacks; use one of {layers}."
        )
    return int(layer)


def _metric_lines(
    fig: go.Figure, summary: pd.DataFrame, rows: pd.DataFrame, metric: str, top: dict[str, int]
) -> list[Any]:
    """Top panel of :func:`toxicity_vs_alpha`: a line (and band) per (subset, direction).

    Returns:
        Every value drawn (lines, bands, unsteered markers), to fit the y axis to.
    """
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    has_band = low_col in summary.columns and high_col in summary.columns
    shown: list[Any] = []
    for index, subset in enumerate(dict.fromkeys(summary["subset"])):
        color = style.subset_color(subset, index)
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
                        fillcolor=style.rgba(color, 0.15 if direction == "caa" else 0.08),
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
                    line={"color": color, "dash": style.DIRECTION_DASH.get(direction, "dashdot")},
                    marker={"color": color},
                    name=name,
                    legendgroup=name,
                ),
                **top,
            )
        base = summary[is_unsteered(summary) & (summary["subset"] == subset)]
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
    return shown


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
                line={"color": "#444444", "dash": style.DIRECTION_DASH.get(direction, "dashdot")},
                marker={"color": "#444444", "size": 6},
                name=f"fluency · {direction}",
            ),
            **where,
        )
    zero = style.finite(cost.loc[cost["alpha"] == 0, fluency])
    if len(zero):
        fig.add_hline(y=float(zero.mean()), line={"color": style.GREY, "dash": "dot"}, **where)
    log = fluency not in style.BOUNDED and style.spans_decades([*shown, limit or math.nan])
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
            xanchor="left",  # beside the panel, where no point or line can be under it
            xshift=4,
            yanchor="middle",
            font={"color": "firebrick"},
        )
    where_text = "held-out benign text" if "human" in fluency else f"{subset} prompts"
    label = "Perplexity" if "perplexity" in fluency else style.label(fluency)
    fig.update_yaxes(title_text=f"{label}<br>({where_text})", **where)
    style.fit_y(fig, shown, fluency, **where)


def layer_profile(
    summary: pd.DataFrame, metric: str = "mean_toxicity", *, subset: str = "challenging"
) -> go.Figure:
    """A summary metric against the steered layer, one line per (alpha, direction).

    Colour per alpha, dash per direction (CAA solid, random dotted), error bars from
    ``<metric>_ci_low/_high`` when present; alphas found at one layer only (the alpha search
    adds one per layer) are grey diamonds (open for the control), one ``searched alpha`` entry per direction; the alpha-0 value (the unsteered model, equal at
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
    style.require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
    if metric not in summary.columns:
        raise ConfigError(f"layer_profile got metric={metric!r}, which is not a summary column.")
    rows = summary[(summary["subset"] == subset) & ~is_unsteered(summary)]
    if rows.empty:
        raise ConfigError(f"The summary has no steered rows with subset={subset!r}.")
    fig = go.Figure()
    shown = _profile_traces(fig, rows, metric)
    zero = rows[rows["alpha"] == 0][metric]
    if len(zero):
        shown.append(float(zero.mean()))
        fig.add_hline(y=float(zero.mean()), line={"color": "#7f7f7f", "dash": "dash"})
    fig.update_layout(
        **style.titled(f"{style.label(metric)} by steered layer", style.scope_text(rows)),
        xaxis={
            "title": {"text": "layer"},
            "tickvals": sorted(int(x) for x in rows["layer"].unique()),
        },
        yaxis_title=style.label(metric),
        template="plotly_white",
        legend_title_text="alpha · direction (grey dashes: alpha 0)",
    )
    style.fit_y(fig, shown, metric)
    return fig


def _error_bars(part: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """Asymmetric error bars from ``<metric>_ci_low/_high`` (None without them)."""
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    if low_col not in part.columns or high_col not in part.columns:
        return None
    return {
        "type": "data",
        "symmetric": False,
        "array": (part[high_col] - part[metric]).tolist(),
        "arrayminus": (part[metric] - part[low_col]).tolist(),
        "thickness": 1,
    }


def _profile_traces(fig: go.Figure, rows: pd.DataFrame, metric: str) -> list[Any]:
    """The lines of :func:`layer_profile`; returns every value drawn (to fit the y axis).

    An alpha of the grid (at several layers) is a line per direction, a colour per alpha;
    alphas found at one layer only (the alpha search's, one per layer) share one marker trace
    per direction, ``searched alpha``, so the legend does not list each of them.
    """
    alphas = sorted(float(a) for a in rows["alpha"].unique() if a != 0)
    several = rows["layer"].nunique() > 1
    at = rows.groupby("alpha")["layer"].nunique()
    searched = [a for a in alphas if several and at.get(a, 0) == 1]
    grid = [a for a in alphas if a not in searched]
    palette = style.alpha_colors(grid) if grid else {}
    low_col, high_col = f"{metric}_ci_low", f"{metric}_ci_high"
    groups = [(f"alpha {a:g}", [a], palette[a], "lines+markers") for a in grid]
    if searched:
        groups.append(("searched alpha", searched, "#444444", "markers"))
    shown: list[Any] = []
    for name, members, color, mode in groups:
        for direction in dict.fromkeys(rows["direction"]):
            part = rows[rows["alpha"].isin(members) & (rows["direction"] == direction)]
            part = part.sort_values("layer")
            if part.empty:
                continue
            shown += part[metric].tolist()
            if low_col in part.columns and high_col in part.columns:
                shown += part[low_col].tolist() + part[high_col].tolist()
            fig.add_trace(
                go.Scatter(
                    x=part["layer"].astype(int).tolist(),
                    y=part[metric].tolist(),
                    error_y=_error_bars(part, metric),
                    mode=mode,
                    line={"color": color, "dash": style.DIRECTION_DASH.get(direction, "dashdot")},
                    marker={
                        "color": color,
                        "symbol": "circle"
                        if mode != "markers"
                        else ("diamond" if direction == "caa" else "diamond-open"),
                        "size": 9 if mode == "markers" else 6,
                    },
                    name=f"{name} · {direction}",
                    hovertext=[
                        f"layer {int(r.layer)}, alpha {float(r.alpha):.4g}, {direction}: "
                        f"{float(getattr(r, metric)):.4g}"
                        for r in part.itertuples()
                    ],
                    hoverinfo="text",
                )
            )
    return shown


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
    style.require_columns(sweep, ["subset", "alpha", "toxicity"], "sweep table")
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
                marker_color=style.subset_color(str(name), index),
                boxmean=True,
            )
        )
    fig.update_layout(
        **style.titled("Toxicity of each completion by alpha", style.scope_text(rows)),
        xaxis_title=f"alpha ({style.ALPHA_NOTE})",
        yaxis_title="toxicity",
        boxmode="group",
        template="plotly_white",
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=style.fitted_range(rows["toxicity"], bounded=True, pad=0.03))
    return fig


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
    style.require_columns(
        table, ["run_name", "layer", "alpha", "subset", "direction", metric], "comparison"
    )
    rows = table[(table["subset"] == subset) & (table["direction"] == direction)]
    fig = go.Figure()
    style.fit_y(fig, rows[metric], metric)
    for (run_name, layer), group in rows.groupby(["run_name", "layer"], sort=True):
        group = group.sort_values("alpha")
        label = f"{run_name} · layer {layer}"
        if "pair_source" in group.columns and group["pair_source"].notna().any():
            label += f" · pairs from {group['pair_source'].iloc[0]}"
        fig.add_trace(
            go.Scatter(x=group["alpha"], y=group[metric], mode="lines+markers", name=label)
        )
    fig.update_layout(
        **style.titled(
            f"{style.label(metric)} by run",
            f"{style.layers_text(rows['layer'])} · {style.direction_text([direction])} · "
            f"subset {subset}",
        ),
        xaxis_title="alpha (positive alpha = steer away from toxicity)",
        yaxis_title=style.label(metric),
        template="plotly_white",
    )
    return fig
