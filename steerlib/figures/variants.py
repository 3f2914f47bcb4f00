"""The steering variants side by side: EMT against the fluency cost of each steered setting."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlib.evaluate.metrics import pareto_front
from steerlib.figures import style
from steerlib.figures.labels import Canvas, place_labels
from steerlib.figures.pareto import LABEL_SIZE, MAX_PARETO_LABELS, trade_off_frame

__all__ = ["VARIANT_COLORS", "variants_pareto_figure"]

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


def _inward(px: float, canvas: Canvas) -> list[str]:
    """Label positions on the side of a point that faces the plot's middle."""
    left, _, right, _ = canvas.area
    side = "left" if px > (left + right) / 2 else "right"
    return [f"middle {side}", f"top {side}", f"bottom {side}"]


def _variant_labels(
    canvas: Canvas, traces: dict[str, pd.DataFrame]
) -> dict[str, tuple[list[str], list[str]]]:
    """Each trace's point labels and ``textposition`` s (``""`` text where left out).

    Every point is labelled up to :data:`MAX_PARETO_LABELS` points, else each trace's front;
    front points are placed first. A label goes on the inward side of its point, where it
    overlaps no other label or marker; where none is free it is left out (hover names it).
    """
    several_layers = len({int(v) for points in traces.values() for v in points["layer"]}) > 1
    label_all = sum(len(points) for points in traces.values()) <= MAX_PARETO_LABELS
    entries = []  # (not on front, trace, index, x, y, text)
    for name, points in traces.items():
        front = pareto_front(points, x="cost_pct", y="expected_max_toxicity")
        on_front = {(int(r.layer), float(r.alpha)) for r in front.itertuples()}
        short = {"random control": "random", "unsteered (alpha 0)": "unsteered"}.get(name, name)
        for index, r in enumerate(points.itertuples()):
            layer = f" L{int(r.layer)}" if several_layers else ""
            key = (int(r.layer), float(r.alpha))
            text = f"{short}{layer} α{float(r.alpha):.3g}"
            shown = label_all or key in on_front
            cost, emt = float(r.cost_pct), float(r.expected_max_toxicity)
            entries.append((key not in on_front, name, index, cost, emt, text if shown else ""))
    entries.sort(key=lambda e: e[0])
    where = place_labels(
        canvas, [(e[3], e[4], e[5], 14.0) for e in entries], size=LABEL_SIZE, positions=_inward
    )
    out = {name: ([""] * len(points), [""] * len(points)) for name, points in traces.items()}
    for (_, name, index, cost, emt, text), position in zip(entries, where, strict=True):
        out[name][0][index] = text if position else ""
        out[name][1][index] = position or _inward(canvas.pixel(cost, emt)[0], canvas)[0]
    return out


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
    :func:`~steerlib.figures.pareto.pareto_figure`: every point up to
    :data:`~steerlib.figures.pareto.MAX_PARETO_LABELS` points, beyond that only each trace's
    Pareto-front points, each on the inward side of its point where it overlaps nothing (else
    left to the hover text). The random control (made with ``"caa"``) is its own grey trace,
    and alpha 0 (the unsteered model, the same for every variant) a black reference at cost 0.
    The cost is the relative change of the benign ``fluency`` measure from alpha 0 of the
    same variant and layer, in percent.

    Args:
        summary: The step-06 summary with a ``variant`` column (``summary.parquet``).
        fluency: The fluency measure (a benign-subset column of the summary).
        split: Which half to draw (``"confirmation"``, ``"selection"`` or ``"all"``); the
            whole table when the summary has no such half (the subtitle says which).
        subset: Subset whose EMT is drawn.

    Returns:
        A plotly figure: one trace per variant (a discrete colour each,
        :data:`VARIANT_COLORS`), then the random control and the unsteered reference; the
        subtitle names the layer(s), the subset and the half shown.
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
    traces = _variant_points(rows, fluency, subset)
    traces = {name: points for name, points in traces.items() if not points.empty}
    every_x = [float(v) for points in traces.values() for v in points["cost_pct"]]
    every_y = [float(v) for points in traces.values() for v in points["expected_max_toxicity"]]
    layers = [v for points in traces.values() for v in points["layer"]]
    scope = f"{style.layers_text(layers)} · subset {subset} · {shown}"
    fig = go.Figure()
    canvas = trade_off_frame(
        fig,
        style.title(f"Steering variants: {subset} EMT against fluency cost", scope),
        style.fitted_range(every_x) or [0.0, 1.0],
        style.fitted_range(every_y, bounded=True, pad=0.12) or [0.0, 1.0],
        x_log=False,
        legend=list(traces),
    )
    labels = _variant_labels(canvas, traces)
    for index, (name, points) in enumerate(traces.items()):
        _variant_trace(fig, name, points, labels[name], index)
    fig.update_layout(
        xaxis_title=f"{style.label(fluency)} increase over alpha 0 (%)",
        yaxis_title=f"{style.label('expected_max_toxicity')} ({subset})",
    )
    return fig


def _variant_trace(
    fig: go.Figure,
    name: str,
    points: pd.DataFrame,
    labels: tuple[list[str], list[str]],
    index: int,
) -> None:
    """One variant's points (lines between them; the control and alpha 0 as markers only)."""
    color = VARIANT_COLORS.get(name, style.FALLBACK_COLORS[index % len(style.FALLBACK_COLORS)])
    reference = name in ("random control", "unsteered (alpha 0)")
    marker: dict[str, Any] = {
        "symbol": _VARIANT_MARKERS[index % len(_VARIANT_MARKERS)],
        "size": 10,
        "color": color,
    }
    fig.add_trace(
        go.Scatter(
            x=points["cost_pct"].tolist(),
            y=points["expected_max_toxicity"].tolist(),
            mode="markers+text" if reference else "markers+lines+text",
            name=name,
            marker=marker,
            line={"color": color},
            text=labels[0],
            textposition=labels[1],
            textfont={"size": LABEL_SIZE, "color": color},
            hovertext=[
                f"{name}<br>layer {int(r.layer)}, alpha {float(r.alpha):.4g}<br>"
                f"EMT {float(r.expected_max_toxicity):.3f}<br>cost {float(r.cost_pct):.1f}%"
                for r in points.itertuples()
            ],
            hoverinfo="text",
        )
    )
