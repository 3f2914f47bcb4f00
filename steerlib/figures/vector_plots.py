"""Figures of the steering vector itself: norms, per-layer diagnostics, cross-layer cosines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from steerlib.errors import ConfigError, DataError
from steerlib.figures import style
from steerlib.figures.files import FIGURE_SIZES

__all__ = ["layer_cosine_heatmap", "vector_diagnostics", "vector_norms"]


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
        go.Bar(
            x=layers, y=[r["norm_ratio"] for r in rows], name="norm ratio", marker_color=style.BLUE
        ),
        row=1,
        col=1,
    )
    for key, name, color, dash in (
        ("sink_cosine_raw", "cos(vector, sink) before projection", style.GREY, "dot"),
        ("sink_cosine", "cos(vector, sink)", style.RED, "solid"),
        ("split_half_cosine", "split-half cosine", style.BLUE, "solid"),
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
        fig.add_hline(y=y, line_dash="dash", line_color=style.GREY, row=2, col=1)
    fig.update_layout(
        **style.titled(
            "Steering vector diagnostics per layer",
            f"CAA direction, {style.layers_text(layers)}",
            note=None,
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
        **style.titled(
            "Steering vector norm per layer",
            f"CAA direction, {style.layers_text([layer for layer, _ in pairs])}",
            note=None,
            width=FIGURE_SIZES["column"][0],
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
        **style.titled(
            "Cosine similarity of steering directions across layers",
            f"CAA direction, {style.layers_text(labels)}",
            note=None,
        ),
        xaxis_title="layer",
        yaxis_title="layer",
        template="plotly_white",
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig
