"""The random control at an operating point, on the half its figures come from.

:func:`confirmed_controls` compares the recommended point with the random direction at equal
alpha, at equal fluency on the rule's measure, and (where the run searched the control) at the
control's own budget edge (:mod:`steerlib.evaluate.controls`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["confirmed_controls"]


_CONTROL_COLUMNS = (
    "control_alpha",
    "perplexity_caa",
    "perplexity_control",
    "mean_toxicity_caa",
    "mean_toxicity_random",
    "mean_toxicity_control",
    "delta_mean_toxicity",
    "delta_mean_toxicity_ci_low",
    "delta_mean_toxicity_ci_high",
    "expected_max_toxicity_caa",
    "expected_max_toxicity_random",
    "expected_max_toxicity_control",
    "delta_expected_max_toxicity",
    "delta_expected_max_toxicity_ci_low",
    "delta_expected_max_toxicity_ci_high",
    "n_paired_prompts",
    "p_value",
    "q_value",
    "beats_control",
)


def _control_at(control: pd.DataFrame, point: dict[str, Any]) -> dict[str, Any] | None:
    """The challenging-subset comparison with the random control at an operating point."""
    if control.empty:
        return None
    hit = control[
        (control["subset"] == "challenging")
        & (control["layer"] == point["layer"])
        & np.isclose(control["alpha"].astype(float), float(point["alpha"]))
    ]
    if hit.empty:
        return None
    columns = [c for c in _CONTROL_COLUMNS if c in hit.columns]
    return json.loads(hit[columns].iloc[[0]].to_json(orient="records"))[0]


def confirmed_controls(
    summary: pd.DataFrame,
    evaluation: pd.DataFrame,
    point: dict[str, Any],
    options: dict[str, Any],
    own_edges: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """The random control at the recommended point, on the half its figures come from.

    At equal alpha (``control``), at equal fluency (``control_matched_fluency``: the least
    toxic random setting of the layer no costlier on the rule's measure, or at the control's
    own budget edge, which the same search found within the same budget) and, where the run
    searched the control (``own_edges``: layer to the control's own edge), at its own edge
    (``control_own_edge``, with that edge as ``control_own_edge_alpha``: 0 when the control's
    search found no steered alpha within budget, None when it did not search this layer). On
    the confirmation half this is one comparison fixed before looking at those prompts, so its
    ``p_value`` needs no multiplicity adjustment (``q_value`` equals it).
    """
    from steerlib.evaluate import controls

    half, layer, alpha = point["figures_from"], int(point["layer"]), float(point["alpha"])
    rows = summary[(summary["split"] == half) & (summary["layer"] == layer)]
    sweep = evaluation[evaluation["layer"] == layer]
    if half != "all":
        sweep = sweep[sweep["split"] == half]
    at_alpha = np.isclose(rows["alpha"].astype(float), alpha)
    out: dict[str, Any] = {"control": None, "control_matched_fluency": None}
    edge = (own_edges or {}).get(layer)
    if own_edges:
        out["control_own_edge"] = None
        # the edge the control's own search found (0: none within budget; None: not searched)
        out["control_own_edge_alpha"] = None if edge is None else float(edge)
    if not (rows["direction"] == "random").any():
        return out
    same = rows[at_alpha]
    if {"caa", "random"} <= set(same["direction"]):
        out["control"] = _control_at(controls.delta_vs_control(same, sweep, **options), point)
    candidates = rows[(rows["direction"] == "random") | at_alpha]
    measure = str(summary["fluency_measure"].iloc[0])
    always = {layer: [edge]} if edge is not None else None
    matched = controls.fluency_matched_control(
        candidates, sweep, fluency=measure, always=always, **options
    )
    found = _control_at(matched, point)
    if found is not None:
        found["fluency_measure"] = measure
    out["control_matched_fluency"] = found
    if edge is not None and edge != 0:
        is_random = rows["direction"] == "random"
        at_edge = is_random & np.isclose(rows["alpha"].astype(float), edge)
        own = rows[at_edge | (at_alpha & ~is_random)]
        if at_edge.any():
            alone = controls.fluency_matched_control(
                own, sweep, fluency=measure, always=always, **options
            )
            found = _control_at(alone, point)
            if found is not None:
                found["fluency_measure"] = measure
            out["control_own_edge"] = found
    for value in out.values():
        if isinstance(value, dict):
            value["split"] = half
    return out
