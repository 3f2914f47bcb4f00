"""Heatmaps over layers and alphas: a summary metric, and CAA minus its random control."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlib.errors import ConfigError
from steerlib.figures import style

__all__ = ["control_heatmap", "layer_alpha_heatmap"]


def _layer_alpha_pivot(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` with one row per layer and one column per alpha, both ascending."""
    table = rows.pivot_table(index="layer", columns="alpha", values=metric, aggfunc="mean")
    return table.sort_index().sort_index(axis=1)


def _layer_alpha_figure(
    table: pd.DataFrame,
    text: list[list[str]],
    *,
    title: dict[str, Any],
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
        margin={"t": style.title_margin(title)},
        xaxis_title=f"alpha ({style.ALPHA_NOTE})",
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
    style.require_columns(summary, ["subset", "layer", "alpha", "direction"], "summary")
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
        title=style.title(f"{style.label(metric)} by layer and alpha", style.scope_text(rows)),
        colorbar=style.label(metric),
        hover=".4g",
        log=style.spans_decades(values.ravel()),
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
    :func:`steerlib.evaluate.controls.delta_vs_control` given the sweep) excludes 0.

    Args:
        control: Output of :func:`steerlib.evaluate.controls.delta_vs_control`.
        metric: ``"delta_mean_toxicity"`` or ``"delta_expected_max_toxicity"``.
        subset: Subset whose rows are shown.

    Returns:
        The figure; its ``z`` matrix has one row per layer and one column per alpha.

    Raises:
        ConfigError: If ``metric`` is not a column or no row has ``subset``.
    """
    style.require_columns(control, ["subset", "layer", "alpha"], "control table")
    if metric not in control.columns:
        raise ConfigError(
            f"control_heatmap got metric={metric!r}; use 'delta_mean_toxicity' or "
            "'delta_expected_max_toxicity' (columns of controls.delta_vs_control)."
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
        title=style.title(
            f"{style.label(metric.removeprefix('delta_'))}: CAA minus random control",
            f"{style.layers_text(rows['layer'])} · subset {subset} · "
            "* paired 95% interval excludes 0",
        ),
        colorbar="CAA − random",
        hover="+.4f",
        colorscale="RdBu_r",
        zmid=0,
        zmin=-bound,
        zmax=bound,
    )
