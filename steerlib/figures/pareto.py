"""Trade-off figures: toxicity against fluency cost, one point per steered setting.

:func:`pareto_figure` draws one variant's settings with their Pareto front, the random
control, the budget and the recommended operating point; :func:`variants_pareto_figure` the
steering variants side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlib.evaluate.metrics import pareto_front
from steerlib.figures import style

__all__ = ["MAX_PARETO_LABELS", "VARIANT_COLORS", "pareto_figure", "variants_pareto_figure"]

MAX_PARETO_LABELS = 30
"""Up to this many settings every Pareto point is labelled; beyond, only the front's."""


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
        front: Pareto front to draw; computed with
            :func:`steerlib.evaluate.metrics.pareto_front` when None.
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
    style.require_columns(summary, ["layer", "alpha", x, y], "summary")
    if front is None:
        front = pareto_front(summary, x=x, y=y)
    fig = go.Figure()
    colors = style.alpha_colors(summary["alpha"].astype(float).tolist()) if len(summary) else {}
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
        style.require_columns(control, ["layer", "alpha", x, y], "control")
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
    fig.update_yaxes(range=style.fitted_range(ys, bounded=y in style.BOUNDED, pad=0.12))
    scope = style.scope_text(summary, direction=False)
    scope += " · CAA" + (" vs random control (grey circles)" if control is not None else "")
    fig.update_layout(
        title=style.title(f"{style.label(y)} vs {style.label(x)} (lower is better on both)", scope),
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        xaxis_title=style.label(x),
        yaxis_title=style.label(y),
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


_VARIANT_MARKERS = ("circle", "square", "diamond", "triangle-up", "cross", "star", "hexagon", "x")
VARIANT_COLORS: dict[str, str] = {
    "caa": "#1f77b4",
    "caa_generated": "#17becf",
    "gated": "#d62728",
    "ablate": "#2ca02c",
    "clamp": "#9467bd",
    "norm_preserving": "#ff7f0e",
    "multilayer": "#8c564b",
    "random control": style.GREY,
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
    style.require_columns(
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
        color = VARIANT_COLORS.get(name, style.FALLBACK_COLORS[index % len(style.FALLBACK_COLORS)])
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
    scope = f"{style.layers_text(layers)} · subset {subset} · {shown}"
    fig.update_layout(
        title=style.title(f"Steering variants: {subset} EMT against fluency cost", scope),
        xaxis_title=f"{style.label(fluency)} increase over alpha 0 (%)",
        yaxis_title=f"{style.label('expected_max_toxicity')} ({subset})",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        template="plotly_white",
    )
    return fig
