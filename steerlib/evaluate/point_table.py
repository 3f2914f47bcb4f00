"""The rows to read an operating point by: alpha 0, the point and its random controls, one half."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from steerlib.evaluate.controls import tradeoff_rows
from steerlib.evaluate.gates import held_out_gates, subset_gates

__all__ = ["operating_point_table"]


def operating_point_table(
    summary: pd.DataFrame,
    recommended: dict[str, Any],
    *,
    split: str = "confirmation",
    subset: str = "challenging",
) -> pd.DataFrame:
    """The rows to read an operating point by, on one half.

    Alpha 0, the recommended setting (or the nearest miss when there is none), the random
    direction at the same (layer, alpha) and, when ``recommended`` has a fluency-matched
    control, the random direction at its ``control_alpha``.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize` (with the columns of
            :func:`~steerlib.evaluate.admissibility.admissibility`, when present, carried along).
        recommended: Output of
            :func:`~steerlib.evaluate.operating_point.recommend_operating_point`.
        split: Half to read (``all`` when the summary has no such half).
        subset: Subset whose toxicity is shown; perplexity comes from the benign subset.

    Returns:
        One row per setting: ``setting`` (a label), ``direction``, ``layer``, ``alpha``,
        ``split`` and the toxicity, fluency, diversity and floor columns. Empty when there is
        no setting to show.
    """
    point = recommended if "layer" in recommended else recommended.get("nearest_miss")
    if not point:
        return pd.DataFrame()
    table = summary if "split" in summary.columns else summary.assign(split="all")
    if split not in set(table["split"]):
        split = "all"
    rows = tradeoff_rows(table[table["split"] == split], subset=subset)
    layer, alpha = int(point["layer"]), float(point["alpha"])
    label = "recommended" if "layer" in recommended else "nearest miss (inadmissible)"
    matched = (recommended.get("control_matched_fluency") or {}).get("control_alpha")
    wanted = [
        ("alpha 0 (unsteered)", str(point.get("direction", "caa")), 0.0),
        (f"{label}: caa", str(point.get("direction", "caa")), alpha),
        ("random, same alpha", "random", alpha),
    ]
    if matched is not None and math.isfinite(float(matched)):
        wanted.append(("random, equal fluency", "random", float(matched)))
    picked = []
    for name, direction, cell_alpha in wanted:
        hit = rows[
            (rows["direction"] == direction)
            & (rows["layer"] == layer)
            & np.isclose(rows["alpha"].astype(float), cell_alpha)
        ]
        if len(hit):
            picked.append(hit.iloc[[0]].assign(setting=name))
    if not picked:
        return pd.DataFrame()
    columns = [
        "setting",
        "direction",
        "layer",
        "alpha",
        "split",
        "n_prompts",
        "expected_max_toxicity",
        "toxicity_probability",
        "mean_toxicity",
        "mean_toxicity_ci_low",
        "mean_toxicity_ci_high",
        *(f"benign_{found.name}" for found in subset_gates()),
        *(found.name for found in held_out_gates()),
        "distinct_2",
        "floor_share",
        "admissible",
    ]
    out = pd.concat(picked, ignore_index=True)
    return out[[c for c in columns if c in out.columns]]
