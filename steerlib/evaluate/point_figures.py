"""The figures of an operating point: what the rule reads from a half, and how it records them.

:func:`figures` reads a setting's reported figures from one half of the summary (toxicity from
the rule's subset, the benign-subset gates from the benign rows, the held-out gates from the
setting's own row); :func:`budget_record` is ``summary.json``'s ``fluency_budget`` block and
:func:`selection` the numbers the rule checked. The gates' figures follow
:data:`steerlib.evaluate.gates.GATES`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from steerlib.evaluate.admissibility import unsteered_rows
from steerlib.evaluate.contract import ALPHA_DECIMALS
from steerlib.evaluate.gates import all_gates, gate, held_out_gates, subset_gates

__all__ = [
    "baseline_names",
    "budget_record",
    "change",
    "changed_names",
    "figure_names",
    "figures",
    "held_out_figures",
    "number",
    "or_none",
    "row_at",
    "selection",
]


_TOXICITY_FIGURES = (
    "n_prompts",
    "expected_max_toxicity",
    "expected_max_toxicity_ci",
    "toxicity_probability",
    "toxicity_probability_ci",
    "mean_toxicity",
    "mean_toxicity_ci",
)


def _subset_figures() -> tuple[str, ...]:
    """Figures of the gates measured on the benign subset (``perplexity``, its interval, count)."""
    return tuple(
        column
        for found in subset_gates()
        for column in (found.name, f"{found.name}_ci", *found.counts)
    )


def figure_names() -> tuple[str, ...]:
    """Figures of a setting read from one half (the benign-subset gates' from the benign rows)."""
    return (
        *_TOXICITY_FIGURES,
        *_subset_figures(),
        "fluency",
        "distinct_2",
        "distinct_2_ratio",
        "floor_share",
        "floor_share_increase",
    )


def held_out_figures() -> tuple[str, ...]:
    """Figures measured on the held-out benign texts (each held-out gate and its interval).

    Those of the half's own texts (the report half for the confirmation half) when the kl
    table has halves, else all texts for both halves.
    """
    return tuple(
        column for found in held_out_gates() for column in (found.name, f"{found.name}_ci")
    )


def _relative(source: str) -> list[str]:
    """The gates of ``source`` with a relative budget, in :data:`GATES` order."""
    return [
        found.name for found in all_gates() if found.budget == "relative" and found.source == source
    ]


def changed_names() -> tuple[str, ...]:
    """Figures whose change against alpha 0 the point reports (``relative_change``)."""
    return (
        "expected_max_toxicity",
        "toxicity_probability",
        "mean_toxicity",
        *_relative("benign_subset"),
        "fluency",
        *_relative("held_out"),
    )


def baseline_names() -> tuple[str, ...]:
    """Alpha 0's figures the point reports (``baseline_<name>``), intervals last."""
    values = (
        "expected_max_toxicity",
        "toxicity_probability",
        "mean_toxicity",
        "mean_toxicity_ci",
        *(found.name for found in subset_gates()),
        "fluency",
        "distinct_2",
        "floor_share",
        *(found.name for found in held_out_gates()),
    )
    intervals = [f"{name}_ci" for name in (*_relative("benign_subset"), *_relative("held_out"))]
    return (*values, *intervals)


def row_at(
    table: pd.DataFrame, split: str, subset: str, direction: str, layer: int, alpha: float
) -> pd.Series | None:
    """The summary row of a setting in one half; for alpha 0 the unsteered row as fallback."""
    here = table[(table["split"] == split) & (table["subset"] == subset)]
    alphas = here["alpha"].astype(float).round(ALPHA_DECIMALS)
    own = here[
        (here["direction"] == direction)
        & (here["layer"] == layer)
        & (alphas == round(alpha, ALPHA_DECIMALS))
    ]
    if len(own):
        return own.iloc[0]
    if round(alpha, ALPHA_DECIMALS) == 0:
        unsteered = here[unsteered_rows(here) & (alphas == 0)]
        if len(unsteered):
            return unsteered.iloc[0]
    return None


def number(row: pd.Series | None, column: str) -> Any:
    """A JSON-ready value of ``row[column]`` (NaN when absent; intervals as ``[low, high]``)."""
    if column.endswith("_ci"):
        if row is None or f"{column}_low" not in row.index:
            return None
        bounds = [float(row[f"{column}_low"]), float(row[f"{column}_high"])]
        return bounds if all(math.isfinite(b) for b in bounds) else None
    if row is None or column not in row.index:
        return math.nan
    value = row[column]
    integers = ("n_prompts", *(column for found in all_gates() for column in found.counts))
    return int(value) if column in integers else float(value)


def figures(
    table: pd.DataFrame, split: str, subset: str, direction: str, layer: int, alpha: float
) -> dict[str, Any]:
    """The reported figures of one setting in one half."""
    row = row_at(table, split, subset, direction, layer, alpha)
    has_benign = (table["subset"] == "benign").any()
    benign = row_at(table, split, "benign", direction, layer, alpha) if has_benign else row
    out = {name: number(row, name) for name in figure_names()}
    for name in _subset_figures():
        out[name] = number(benign, name)
    out.update({name: number(row, name) for name in held_out_figures()})
    return out


def change(new: float, old: float) -> float:
    """The relative change from ``old`` to ``new`` (NaN when either is not a finite number)."""
    return new / old - 1.0 if math.isfinite(new) and math.isfinite(old) and old else math.nan


def budget_record(
    reported: dict[str, Any],
    baseline: dict[str, Any],
    checks: dict[str, Any],
    checked: list[str],
) -> dict[str, dict[str, Any]]:
    """Each checked fluency measure on the reported half: value, interval, alpha 0, limit.

    ``within`` says whether the reported half keeps the measure within its budget (the rule
    checked the selection half; this is the confirmation).
    """
    out = {}
    for name in checked:
        value, base = reported.get(name, math.nan), baseline.get(name, math.nan)
        found = gate(name)
        if found.budget == "absolute":
            limit, rise = float(checks[found.parameter]), math.nan
        else:
            limit = (1.0 + float(checks["max_perplexity_increase"])) * float(base)
            rise = change(float(value), float(base))
        finite = math.isfinite(float(value)) and math.isfinite(limit)
        out[name] = {
            "value": or_none(value),
            "ci": reported.get(f"{name}_ci"),
            "baseline": or_none(base),
            "baseline_ci": baseline.get(f"{name}_ci"),
            "change": or_none(rise),
            "limit": or_none(limit),
            "within": bool(float(value) <= limit) if finite else None,
        }
    return out


def or_none(value: Any) -> float | None:
    """``value`` as a float, None when it is not a finite number (as summary.json stores it)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None


def selection(row: pd.Series, base_emt: float) -> dict[str, Any]:
    """The numbers the rule checked on the selection half for one setting."""
    out = {
        "n_prompts": number(row, "n_prompts"),
        "expected_max_toxicity": float(row["expected_max_toxicity"]),
        "baseline_expected_max_toxicity": base_emt,
        "fluency": float(row["fluency"]),
        "fluency_limit": float(row["fluency_limit"]),
        "distinct_2_ratio": float(row["distinct_2_ratio"]),
        "floor_share_increase": float(row["floor_share_increase"]),
    }
    for name in (found.name for found in all_gates()):
        if f"{name}_budget" in row.index:
            out[name] = float(row[gate(name).value_column or name])
            out[f"{name}_limit"] = float(row[f"{name}_budget"])
    out["fluency_failed"] = [n for n in str(row.get("fluency_failed", "")).split("; ") if n]
    return out
