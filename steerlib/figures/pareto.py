"""The trade-off figure: toxicity against fluency cost, one point per steered setting.

:func:`pareto_figure` draws one variant's settings (a colour per steered layer) with their
Pareto front, the unsteered model, the random control, the budget and the recommended
operating point. Point labels are placed where they overlap nothing
(:mod:`steerlib.figures.labels`) at the figure's export size (:data:`TRADE_OFF_SIZE`); the
legend lists conditions (layers, unsteered, control, front, recommended), never single alphas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlib.evaluate.metrics import pareto_front
from steerlib.figures import style
from steerlib.figures.files import FIGURE_SIZES
from steerlib.figures.labels import Box, Canvas, place_labels, text_width

__all__ = [
    "LABEL_SIZE",
    "MAX_PARETO_LABELS",
    "TRADE_OFF_SIZE",
    "pareto_figure",
    "trade_off_frame",
]

MAX_PARETO_LABELS = 30
"""Up to this many settings every Pareto point is labelled; beyond, only the front's."""
TRADE_OFF_SIZE: tuple[int, int] = FIGURE_SIZES["page_tall"]
"""Width and height (pixels) of the trade-off figures, at which their labels are placed."""
LABEL_SIZE = 10
"""Font size of point labels in pixels."""
MARKER_SIZE, STAR_SIZE = 9, 18
REACH = {"circle": 1.0, "diamond": 1.3, "star": 1.4}
"""How far a marker symbol reaches from its centre, relative to a circle of the same size."""
MAX_LAYER_TRACES = 8
"""Up to this many steered layers get a legend entry each; beyond, one trace coloured by layer."""


def trade_off_frame(
    fig: go.Figure,
    title: dict[str, Any],
    x_range: Sequence[float],
    y_range: Sequence[float],
    *,
    x_log: bool,
    legend: Sequence[str],
) -> Canvas:
    """Lay a trade-off figure out at :data:`TRADE_OFF_SIZE`; return where its plot area lies.

    The top margin holds the wrapped title, the bottom one the x axis and a horizontal legend
    (rows estimated from the legend's names), so the plot area is known before plotly draws
    it and labels can be placed in pixels.
    """
    width, height = TRADE_OFF_SIZE
    row_width, rows = 0.0, 1
    for name in legend:
        entry = text_width(name, 12) + 50
        if row_width + entry > width - 80:
            row_width, rows = 0.0, rows + 1
        row_width += entry
    margin = (80.0, style.title_margin(title), 30.0, 70.0 + 22.0 * rows)
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": margin[0], "t": margin[1], "r": margin[2], "b": margin[3]},
        legend={"orientation": "h", "yanchor": "top", "y": -60 / (height - margin[1] - margin[3])},
        template="plotly_white",
    )
    if x_log:
        fig.update_xaxes(type="log")
    fig.update_xaxes(range=list(x_range))
    fig.update_yaxes(range=list(y_range))
    return Canvas(width, height, margin, (x_range[0], x_range[1]), (y_range[0], y_range[1]), x_log)


def _hover(row: pd.Series, x: str, y: str) -> str:
    """Hover text of one summary row."""
    parts = [f"layer {row['layer']}", f"alpha {float(row['alpha']):g}"]
    parts += [str(row[key]) for key in ("subset", "direction") if key in row.index]
    return f"{', '.join(parts)}<br>{x} {row[x]:.4g}<br>{y} {row[y]:.4g}"


def _key(row: Any) -> tuple[int, float]:
    """A setting's (layer, alpha), alpha rounded as the summary rounds it."""
    return int(row.layer), round(float(row.alpha), 4)


def _budget(fig: go.Figure, canvas: Canvas, budget: float | None) -> list[Box]:
    """The budget's dashed line and its label inside the plot's top edge; the label's box."""
    if budget is None or not math.isfinite(budget) or (budget <= 0 and canvas.x_log):
        return []
    fig.add_vline(x=budget, line={"dash": "dash", "color": "firebrick"})
    text = "perplexity budget"
    px, _ = canvas.pixel(budget, canvas.y_range[1])
    left, top, right, _ = canvas.area
    wide = text_width(text, 12)
    side = "left" if px + 4 + wide <= right else "right"
    start = px + 4 if side == "left" else px - 4 - wide
    fig.add_annotation(  # annotations on a log axis take log10 coordinates
        x=math.log10(budget) if canvas.x_log else budget,
        xref="x",
        y=1,
        yref="paper",
        text=text,
        showarrow=False,
        xanchor=side,
        yanchor="top",
        xshift=4 if side == "left" else -4,
        bgcolor="rgba(255,255,255,0.8)",
        font={"color": "firebrick", "size": 12},
    )
    line = (px - 1.5, top, px + 1.5, canvas.area[3])
    return [(max(start, left), top, start + wide, top + 12 * 1.3), line]


def _front_boxes(canvas: Canvas, front: pd.DataFrame, x: str, y: str) -> list[Box]:
    """Thin boxes along the front's steps (across, then down), which labels must not cross."""
    ordered = front.sort_values([x, y]) if len(front) else front
    pixels = [canvas.pixel(float(a), float(b)) for a, b in zip(ordered[x], ordered[y], strict=True)]
    boxes: list[Box] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(pixels):
        boxes.append((min(x0, x1), y0 - 1.5, max(x0, x1), y0 + 1.5))
        boxes.append((x1 - 1.5, min(y0, y1), x1 + 1.5, max(y0, y1)))
    return boxes


def _trade_off_ranges(
    summary: pd.DataFrame,
    control: pd.DataFrame | None,
    budget: float | None,
    x: str,
    y: str,
    log_x: bool | None,
) -> tuple[bool, list[float], list[float]]:
    """Whether x is logarithmic, and the x and y ranges around every point and the budget."""
    others = [control] if control is not None else []
    xs = pd.concat([summary[x], *[c[x] for c in others]]).dropna().to_numpy(float)
    if log_x is None:
        log_x = style.spans_decades(xs)
    if budget is not None and math.isfinite(budget) and (budget > 0 or not log_x):
        xs = np.append(xs, budget)
    x_range = style.fitted_range(xs, log=log_x, pad=0.05) or [0.0, 1.0]
    ys = pd.concat([summary[y], *[c[y] for c in others]])
    y_range = style.fitted_range(ys, bounded=y in style.BOUNDED, pad=0.12) or [0.0, 1.0]
    return log_x, x_range, y_range


def _distinct(rows: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """``rows`` with one row per distinct point (alpha 0 is the same model at every layer)."""
    keys = rows.assign(_x=rows[x].astype(float).round(6), _y=rows[y].astype(float).round(6))
    return rows.loc[keys.drop_duplicates(["_x", "_y"]).index]


def _place(
    canvas: Canvas,
    steered: pd.DataFrame,
    front: pd.DataFrame,
    markers: list[tuple[float, float, float]],
    named: tuple[int, float] | None,
    obstacles: list[Box],
    axes: tuple[str, str],
) -> dict[tuple[int, float], tuple[str, str]]:
    """Each steered setting's label and ``textposition`` (``("", ...)`` where left out).

    Labels: every setting up to :data:`MAX_PARETO_LABELS`, else the front's; front points are
    placed first, then the others by cost. The ``named`` setting (the recommended one, which
    the legend names) and the ``markers`` (unsteered, control, star: ``(x, y, size)``) take
    room without a label.
    """
    x, y = axes
    on_front = {_key(r) for r in front.itertuples()} if len(front) else set()
    label_all = len(steered) <= MAX_PARETO_LABELS
    several = steered["layer"].nunique() > 1
    rows = sorted(steered.itertuples(), key=lambda r: (_key(r) not in on_front, getattr(r, x)))
    points = []
    for r in rows:
        text = f"L{int(r.layer)} α{float(r.alpha):.3g}" if several else f"α{float(r.alpha):.3g}"
        shown = (label_all or _key(r) in on_front) and _key(r) != named
        points.append((float(getattr(r, x)), float(getattr(r, y)), text if shown else "", MARKER_SIZE))
    points += [(mx, my, "", size) for mx, my, size in markers]
    where = place_labels(canvas, points, size=LABEL_SIZE, obstacles=obstacles)
    return {
        _key(r): (text if position else "", position or "top center")
        for r, (_, _, text, _), position in zip(
            rows, points[: len(rows)], where[: len(rows)], strict=True
        )
    }


def _setting_traces(
    fig: go.Figure,
    steered: pd.DataFrame,
    labels: dict[tuple[int, float], tuple[str, str]],
    axes: tuple[str, str],
) -> None:
    """The steered settings: a trace (colour) per layer, or one coloured by layer if many."""
    x, y = axes
    layers = sorted({int(v) for v in steered["layer"]})
    colors = style.alpha_colors(layers) if layers else {}
    groups = (
        [(f"layer {layer}", steered[steered["layer"] == layer]) for layer in layers]
        if len(layers) <= MAX_LAYER_TRACES
        else [("steered settings (colour: layer)", steered)]
    )
    for name, part in groups:
        color: Any = [colors[float(v)] for v in part["layer"]]
        marker: dict[str, Any] = {"size": MARKER_SIZE, "color": color}
        if len(groups) == 1 and len(layers) > MAX_LAYER_TRACES:
            marker.update(
                color=part["layer"].astype(int).tolist(),
                colorscale="Viridis",
                showscale=True,
                colorbar={"title": {"text": "layer"}},
            )
        found = [labels[_key(r)] for r in part.itertuples()]
        fig.add_trace(
            go.Scatter(
                x=part[x].tolist(),
                y=part[y].tolist(),
                mode="markers+text",
                marker=marker,
                text=[text for text, _ in found],
                textposition=[position for _, position in found],
                textfont={"size": LABEL_SIZE, "color": "#333333"},
                hovertext=[_hover(row, x, y) for _, row in part.iterrows()],
                hoverinfo="text",
                name=name,
            )
        )


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

    Pass the rows of one subset and direction (e.g. challenging CAA rows). To draw the
    trade-off on the operating-point rule's own axes, pass rows from
    :func:`steerlib.evaluate.controls.tradeoff_rows` with ``x="benign_perplexity"``.

    The legend lists conditions, not settings: a colour per steered layer, the unsteered
    model (alpha 0, one point however many layers share it), the front, the random control
    and the recommended point. Each steered point is labelled ``L<layer> α<alpha>`` in the
    image (``α<alpha>`` with one layer; only the front's beyond :data:`MAX_PARETO_LABELS`
    settings) where its label overlaps no other label or marker at the figure's export size;
    the recommended setting's label is its legend entry, and every point's hover text names
    it.

    Args:
        summary: Summary rows to plot.
        front: Pareto front to draw; computed with
            :func:`steerlib.evaluate.metrics.pareto_front` when None.
        x: Cost column (e.g. perplexity).
        y: Toxicity column.
        recommended: Output of
            :func:`steerlib.evaluate.operating_point.recommend_operating_point`; its (layer,
            alpha) row of ``summary`` is highlighted (its own ``x``/``y`` values are used when
            ``summary`` has no such row).
        control: Rows of the random-direction control on the same axes, drawn as grey open
            markers (not part of the front), so CAA and the control can be compared at equal
            cost.
        budget: The largest admissible ``x`` of the rule, drawn as a dashed vertical line.
        log_x: Logarithmic ``x`` axis; by default when every ``x`` is positive and they span
            a factor of 10 or more (perplexity of broken text runs into the thousands).

    Returns:
        The figure: one trace per steered layer (named ``layer <n>``), the unsteered points,
        the front, then, when given, the control and the recommended point (the budget is a
        layout shape and the first annotation).

    Example:
        >>> rows = controls.tradeoff_rows(summary)  # doctest: +SKIP
        >>> caa = rows[rows["direction"] == "caa"]  # doctest: +SKIP
        >>> rnd = rows[rows["direction"] == "random"]  # doctest: +SKIP
        >>> pareto_figure(caa, x="benign_perplexity", control=rnd, budget=6.95)  # doctest: +SKIP
    """
    style.require_columns(summary, ["layer", "alpha", x, y], "summary")
    front = pareto_front(summary, x=x, y=y) if front is None else front
    if control is not None and len(control):
        style.require_columns(control, ["layer", "alpha", x, y], "control")
    else:
        control = None
    zero = np.isclose(summary["alpha"].astype(float), 0.0)
    steered, unsteered = summary[~zero], _distinct(summary[zero], x, y)
    star = _recommended_xy(summary, recommended, x, y) if recommended is not None else None
    star_name = (
        f"recommended: layer {recommended.get('layer')}, "
        f"alpha {float(recommended.get('alpha', math.nan)):g}"
        if recommended is not None
        else ""
    )
    x_log, x_range, y_range = _trade_off_ranges(summary, control, budget, x, y, log_x)
    layers = sorted({int(v) for v in steered["layer"]})
    legend = [f"layer {layer}" for layer in layers]
    legend = legend if len(legend) <= MAX_LAYER_TRACES else ["steered settings (colour: layer)"]
    legend += ["unsteered (alpha 0)", "Pareto front", "random control", star_name]
    scope = style.scope_text(summary, direction=False)
    scope += " · CAA" + (" vs random control (grey circles)" if control is not None else "")
    title = style.title(
        f"{style.label(y)} vs {style.label(x)}", f"lower is better on both; {scope}"
    )
    fig = go.Figure()
    canvas = trade_off_frame(fig, title, x_range, y_range, x_log=x_log, legend=legend)
    obstacles = _budget(fig, canvas, budget) + _front_boxes(canvas, front, x, y)
    markers = [
        (float(px), float(py), 10.0 * REACH["diamond"])
        for px, py in zip(unsteered[x], unsteered[y], strict=True)
    ]
    if control is not None:
        markers += [
            (float(px), float(py), 8.0) for px, py in zip(control[x], control[y], strict=True)
        ]
    markers += [(star[0], star[1], STAR_SIZE * REACH["star"])] if star is not None else []
    named = (
        (int(recommended["layer"]), round(float(recommended["alpha"]), 4))
        if star and recommended and "layer" in recommended
        else None
    )
    labels = _place(canvas, steered, front, markers, named, obstacles, (x, y))
    _setting_traces(fig, steered, labels, (x, y))
    _reference_traces(fig, unsteered, front, control, (x, y))
    if star is not None:
        fig.add_trace(
            go.Scatter(
                x=[star[0]],
                y=[star[1]],
                mode="markers",
                marker={
                    "size": STAR_SIZE,
                    "symbol": "star",
                    "color": "gold",
                    "line": {"color": "black", "width": 1.5},
                },
                name=star_name,
            )
        )
    fig.update_layout(xaxis_title=style.label(x), yaxis_title=style.label(y))
    return fig


def _reference_traces(
    fig: go.Figure,
    unsteered: pd.DataFrame,
    front: pd.DataFrame,
    control: pd.DataFrame | None,
    axes: tuple[str, str],
) -> None:
    """The unsteered point(s), the Pareto front and the random control's settings."""
    x, y = axes
    if len(unsteered):
        fig.add_trace(
            go.Scatter(
                x=unsteered[x].tolist(),
                y=unsteered[y].tolist(),
                mode="markers",
                marker={"size": 10, "symbol": "diamond", "color": "black"},
                hovertext=[_hover(row, x, y) for _, row in unsteered.iterrows()],
                hoverinfo="text",
                name="unsteered (alpha 0)",
            )
        )
    ordered = front.sort_values([x, y]) if len(front) else front
    fig.add_trace(
        go.Scatter(
            x=ordered[x].tolist() if len(front) else [],
            y=ordered[y].tolist() if len(front) else [],
            mode="lines",
            line={"color": "black", "shape": "hv"},
            name="Pareto front",
        )
    )
    if control is not None:
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
