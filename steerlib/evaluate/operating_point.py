"""The operating point: chosen on one half of the prompts, reported on the other.

The rule has three parts:

1. **Select, then confirm.** :func:`assign_split` divides the evaluation prompts of each subset
   into a ``selection`` and a ``confirmation`` half. The setting is chosen on the selection
   half only; its figures are reported from the confirmation half, whose prompts played no
   part in the choice, so they carry no winner's curse.
2. **Admissible settings** (:func:`admissibility`). A steered setting (direction, layer,
   alpha != 0) is admissible on a half when, on every subset of that half,

   * its fluency cost stays within the budget: the rule's fluency measure is at most
     ``(1 + max_perplexity_increase)`` times its alpha-0 value;
   * it does not collapse the text: DExperts distinct-2 is at least ``min_distinct_ratio``
     times the alpha-0 value of the same subset and half;
   * it does not turn text into what the scorer cannot read: the share of samples at the
     scorer's floor (:func:`steerlib.evaluate.scoring.scorer_floor`) grows by at most
     ``max_floor_share_increase`` (absolute) over alpha 0.
3. **The choice** (:func:`recommend_operating_point`): among admissible settings that lower the
   challenging subset's expected maximum toxicity below alpha 0 on the selection half, the
   lowest EMT wins. When there is none, the answer says ``"no admissible steered setting"``
   and names the nearest miss; it never reports the unsteered model under some layer.

The fluency measure is named by ``fluency_measure``: ``"human_perplexity"`` (the steered
model's perplexity on fixed held-out benign human texts, the same for every setting, as AurA
reports on Wikipedia) or ``"perplexity"`` (continuation perplexity of the benign subset under
the judge model). Summaries without ``human_perplexity`` fall back to ``"perplexity"`` and say
so.

The admissibility checks are :mod:`steerlib.evaluate.admissibility` (their names are importable from
here too).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from steerlib.data.subsets import assign_split
from steerlib.errors import ConfigError, DamagedRunError
from steerlib.evaluate.admissibility import (
    FluencyMeasure,
    admissibility,
    gate_checks,
    resolve_fluency_measure,
)
from steerlib.evaluate.admissibility import (
    format_number as _fmt,
)
from steerlib.evaluate.contract import ALPHA_DECIMALS
from steerlib.evaluate.gates import all_gates, gate, held_out_gates
from steerlib.evaluate.point_figures import (
    baseline_names,
    budget_record,
    change,
    changed_names,
    figure_names,
    figures,
    held_out_figures,
    number,
    row_at,
    selection,
)
from steerlib.evaluate.point_table import operating_point_table

__all__ = [
    "FluencyMeasure",
    "admissibility",
    "assign_split",
    "operating_point_table",
    "read_recommended",
    "recommend_operating_point",
    "resolve_fluency_measure",
]

_row_at = row_at  # the name tests and older callers use
NO_ADMISSIBLE = "no admissible steered setting"


def read_recommended(summary: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``recommended`` record of a run's ``summary.json`` (step 06's answer).

    A recommended steered setting has ``layer`` and a non-zero ``alpha``; otherwise the record
    says why there is none (``status``, ``reason`` or ``error``).

    Args:
        summary: The ``summary.json`` file (:attr:`steerlib.experiment.runs.RunPaths.summary`).

    Returns:
        The record, ``{}`` when the summary holds none, or ``None`` when the file is absent
        (step 06 has not run).

    Raises:
        DamagedRunError: The file is not a JSON object.
    """
    path = Path(summary)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedRunError(
            f"{path} is damaged ({type(exc).__name__}); rerun step 06 (notebooks/06_analysis.ipynb "
            "or `python -m steerlib run` with the same config) to write it again."
        ) from None
    if not isinstance(record, dict):
        raise DamagedRunError(f"{path} is not a JSON object; rerun step 06 to write it again.")
    found = record.get("recommended")
    return dict(found) if isinstance(found, dict) else {}


def recommend_operating_point(
    summary: pd.DataFrame,
    *,
    max_perplexity_increase: float = 0.10,
    fluency_measure: FluencyMeasure = "human_perplexity",
    min_distinct_ratio: float = 0.9,
    max_floor_share_increase: float = 0.05,
    max_kl_benign: float | None = None,
    max_alpha: float | None = None,
    subset: str = "challenging",
    direction: str = "caa",
    select_on: str = "selection",
    report_on: str = "confirmation",
    **gate_budgets: float | None,
) -> dict[str, Any]:
    """Choose (layer, alpha) on the selection half; report its figures from the other half.

    Candidates are the steered settings (alpha != 0) of ``direction`` that are admissible on
    the ``select_on`` half (:func:`admissibility`: fluency budget, distinct-2, floor share, on
    every subset) and whose ``subset`` expected maximum toxicity there is below alpha 0's of
    the same layer. The lowest such EMT wins; ties go to the smaller ``|alpha|``, then to the
    lower fluency cost. Its figures (and alpha 0's, same layer) are then read from the
    ``report_on`` half. A summary without halves (no ``split`` column, or no rows of either
    half) is chosen and reported on all prompts, and the answer says so.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        max_perplexity_increase: Allowed relative rise of the fluency measure (0.10 = +10%).
        fluency_measure: ``"human_perplexity"`` (default) or ``"perplexity"``; falls back to
            ``"perplexity"`` when the summary has no ``human_perplexity`` values.
        min_distinct_ratio: Smallest allowed distinct-2 relative to alpha 0.
        max_floor_share_increase: Largest allowed rise of the share of samples at the scorer's
            floor (absolute).
        max_kl_benign: KL budget in nats per token (None: ln(1 + max_perplexity_increase);
            see :func:`steerlib.evaluate.admissibility.kl_budget`).
        max_alpha: Largest alpha of the summary's variant (1 for ``ablate``/``clamp``); a
            setting beyond it is inadmissible
            (:func:`steerlib.evaluate.admissibility.admissibility`).
        subset: Subset whose EMT is minimized.
        direction: Steering direction to choose from.
        select_on: Half the setting is chosen on.
        report_on: Half its figures are read from.
        **gate_budgets: Budget parameters of gates declared after ``max_kl_benign``
            (:func:`steerlib.evaluate.gates.budget_parameters`).

    Returns:
        With a winner: ``status`` (``"recommended"``), ``layer``, ``alpha``, ``direction``,
        ``subset``, ``rule`` (the rule with its numbers), ``selected_on``, ``figures_from``,
        ``confirmation_figures`` (the keys read from the ``report_on`` half),
        ``fluency_measure`` and ``fluency_measure_note`` (why it fell back, else None),
        ``checks`` (the thresholds), the figures ``n_prompts``, ``expected_max_toxicity``,
        ``toxicity_probability``, ``mean_toxicity`` (each with ``*_ci``), ``perplexity``
        (benign continuation perplexity) and ``perplexity_excluded``, ``fluency`` (the rule's
        measure), ``distinct_2``, ``distinct_2_ratio``, ``floor_share``,
        ``floor_share_increase``, then ``human_perplexity`` and ``kl_benign`` (held-out texts,
        the same for both halves), ``baseline_*`` (alpha 0, same layer and half),
        ``relative_change`` (against alpha 0) and ``selection`` (the numbers the rule checked).
        Without one: ``status`` ``"no admissible steered setting"``, ``rule``, ``reason``,
        the measure, ``checks`` and ``nearest_miss`` (the steered setting closest to
        admissible, preferring those that lower EMT, with its ``reasons``; None when there is
        no steered setting) — and no ``layer`` or ``alpha``.

    Raises:
        ConfigError: If a threshold is negative, there is no row of ``subset``/``direction``,
            or a layer has no alpha-0 row.
    """
    given = gate_checks(max_perplexity_increase, max_kl_benign, gate_budgets)
    checks: dict[str, Any] = {
        "max_perplexity_increase": max_perplexity_increase,
        "min_distinct_ratio": min_distinct_ratio,
        "max_floor_share_increase": max_floor_share_increase,
        **{found.parameter: given.get(found.parameter) for found in _absolute()},
    }  # the absolute gates' budgets as given; resolved (defaults applied) after the checks
    table = admissibility(summary, fluency_measure=fluency_measure, max_alpha=max_alpha, **checks)
    checks.update({found.parameter: found.limit_value(given) for found in _absolute()})
    if max_alpha is not None:
        checks["max_alpha"] = max_alpha
    checked = _checked(table)
    measure, measure_note = resolve_fluency_measure(summary, fluency_measure)
    select_on, report_on, split_note = _halves(table, select_on, report_on)
    chosen_half, base_emt = _baseline_emt(table, select_on, subset, direction)
    steered = _candidates(chosen_half, base_emt)
    n_select = number(chosen_half.iloc[0], "n_prompts")
    criteria = _criteria(table, measure, checked, checks, subset, direction)
    common: dict[str, Any] = {
        "selected_on": select_on,
        "fluency_measure": measure,
        "fluency_measures_checked": checked,
        "fluency_measure_note": measure_note,
        "split_note": split_note,
        "checks": checks,
    }
    winners = steered[steered["admissible"] & steered["_lowers"]]
    if winners.empty:
        return _no_winner(steered, common, criteria, select_on, base_emt)
    best = winners.sort_values(["expected_max_toxicity", "_abs", "_cost"], kind="stable").iloc[0]
    layer, alpha = int(best["layer"]), float(best["alpha"])
    point = figures(table, report_on, subset, direction, layer, alpha)
    report_row = row_at(table, report_on, subset, direction, layer, alpha)
    if report_row is None:
        common["split_note"] = (
            f"The {report_on} half has no {subset} rows of {direction} at layer {layer}, alpha "
            f"{_fmt(alpha)}, so its figures are missing: generate that setting (and the random "
            f"control's) on the {report_on} prompts to confirm it."
        )
    baseline = figures(table, report_on, subset, direction, layer, 0.0)
    own_texts = report_row is not None and report_row.get("held_out_texts") == report_on
    rule = (
        f"Chosen on the {select_on} half ({n_select} {subset} prompts): the lowest {subset} "
        f"EMT among {criteria}. Layer {layer}, alpha {_fmt(alpha)}: EMT "
        f"{_fmt(best['expected_max_toxicity'])} (alpha 0: {_fmt(base_emt[layer])}), "
        f"{measure} {_fmt(best['fluency'])} (limit {_fmt(best['fluency_limit'])}). "
        + _reported_sentence(point, baseline, report_on)
    )
    return {
        "status": "recommended",
        "layer": layer,
        "alpha": alpha,
        "direction": direction,
        "subset": subset,
        "rule": rule,
        **common,
        "figures_from": report_on,
        "confirmation_figures": _report_keys(own_texts, measure) if report_on != select_on else [],
        **point,
        **{f"baseline_{name}": baseline[name] for name in baseline_names()},
        "fluency_budget": budget_record(point, baseline, checks, checked),
        "relative_change": {name: change(point[name], baseline[name]) for name in changed_names()},
        "selection": selection(best, base_emt[layer]),
    }


def _checked(table: pd.DataFrame) -> list[str]:
    """The gating measures the admissibility check applied (its ``fluency_checked``)."""
    if not len(table):
        return []
    return [name for name in str(table["fluency_checked"].iloc[0]).split("; ") if name]


def _absolute() -> list[Any]:
    """The gates with a budget of their own (``max_kl_benign``...), in :data:`GATES` order."""
    return [found for found in all_gates() if found.budget == "absolute"]


def _halves(table: pd.DataFrame, select_on: str, report_on: str) -> tuple[str, str, str | None]:
    """The halves to choose and report on, and a note when the summary has none (``all``)."""
    halves = set(table["split"])
    if select_on in halves and report_on in halves:
        return select_on, report_on, None
    note = (
        "The summary has no selection/confirmation halves, so the setting is chosen and "
        "reported on all prompts: its figures carry the winner's curse."
    )
    return "all", "all", note


def _baseline_emt(
    table: pd.DataFrame, half: str, subset: str, direction: str
) -> tuple[pd.DataFrame, dict[int, float]]:
    """The rows to choose from (``subset``, ``direction``, ``half``) and alpha 0's EMT by layer.

    Raises:
        ConfigError: The summary has no row of ``subset`` and ``direction``, or a layer has no
            alpha-0 row.
    """
    rows = table[(table["subset"] == subset) & (table["direction"] == direction)]
    if rows.empty:
        raise ConfigError(
            f"The summary has no rows with subset={subset!r} and direction={direction!r}; "
            "summarize a sweep that contains them or change these arguments."
        )
    chosen_half = rows[rows["split"] == half]
    base_emt = {}
    for layer in sorted({int(x) for x in chosen_half["layer"]}):
        base = row_at(table, half, subset, direction, layer, 0.0)
        if base is None:
            raise ConfigError(
                f"The summary has no alpha-0 row for layer {layer} ({subset}, {direction}); "
                "include alpha 0 in the sweep so the rule has a baseline."
            )
        base_emt[layer] = float(base["expected_max_toxicity"])
    return chosen_half, base_emt


def _candidates(chosen_half: pd.DataFrame, base_emt: dict[int, float]) -> pd.DataFrame:
    """The steered rows of the chosen half, with whether each lowers EMT and its sort keys."""
    steered = chosen_half[chosen_half["alpha"].astype(float).round(ALPHA_DECIMALS) != 0]
    return steered.assign(
        _lowers=[
            float(emt) < base_emt[int(layer)]
            for emt, layer in zip(steered["expected_max_toxicity"], steered["layer"], strict=True)
        ],
        _abs=steered["alpha"].astype(float).abs(),
        _cost=steered["fluency"].fillna(math.inf),
    )


def _criteria(
    table: pd.DataFrame,
    measure: str,
    checked: list[str],
    checks: dict[str, Any],
    subset: str,
    direction: str,
) -> str:
    """The rule's admissibility criteria in words, each gate with its budget."""
    has_benign = (table["subset"] == "benign").any()
    budgets = []
    for name in checked or [measure]:
        found = gate(name)
        words = found.words
        if name == measure and found.source == "benign_subset" and not has_benign:
            words = f"{subset}-subset {name} (no benign rows were available)"
        if found.budget == "absolute":
            budgets.append(f"{words} at most {checks[found.parameter]:.3g} {found.unit}")
        else:
            rise = 1 + checks["max_perplexity_increase"]
            budgets.append(f"{words} at most {rise:.3g} × its alpha-0 value")
    return (
        f"{direction} settings (alpha != 0) that lower the {subset} expected maximum toxicity "
        f"below alpha 0 of the same layer and are admissible on every subset: "
        f"{', '.join(budgets)}, distinct-2 at least "
        f"{checks['min_distinct_ratio']:g} × alpha 0's, and a share of samples at the scorer's "
        f"floor at most {checks['max_floor_share_increase']:g} above alpha 0's"
    )


def _reported_sentence(point: dict[str, Any], baseline: dict[str, Any], half: str) -> str:
    """The rule's sentence on the figures of the reported half."""
    held_out = " and ".join(found.name for found in held_out_gates())
    return (
        f"Reported on the {half} half ({point['n_prompts']} prompts): EMT "
        f"{_fmt(point['expected_max_toxicity'])} (alpha 0: "
        f"{_fmt(baseline['expected_max_toxicity'])}), benign perplexity "
        f"{_fmt(point['perplexity'])} (alpha 0: {_fmt(baseline['perplexity'])}); "
        f"{held_out} are measured on the held-out benign texts of each "
        "half (search half for the selection, report half for the confirmation, where the run "
        "split them)."
    )


def _report_keys(own_texts: bool, measure: str) -> list[str]:
    """The keys of the point read from the report half (held-out ones only from its own texts)."""
    on_held_out = held_out_figures()
    held_out = on_held_out if own_texts else ()  # else the same texts as the selection half
    keys = [*figure_names(), *held_out]
    keys += [
        f"baseline_{name}"
        for name in baseline_names()
        if own_texts or name.removesuffix("_ci") not in on_held_out
    ]
    if not own_texts:
        keys = [name for name in keys if not (measure in on_held_out and name == "fluency")]
    return keys


def _no_winner(
    steered: pd.DataFrame,
    common: dict[str, Any],
    criteria: str,
    select_on: str,
    base_emt: dict[int, float],
) -> dict[str, Any]:
    """The answer when no admissible steered setting lowers EMT, with the nearest miss."""
    misses = steered[~steered["admissible"]].assign(_higher=lambda d: ~d["_lowers"])
    if steered.empty:
        reason = "the summary has no steered setting on the selection half"
    elif misses.empty:
        reason = "the admissible steered settings do not lower EMT below alpha 0"
    elif steered["admissible"].any():
        reason = (
            "the steered settings that lower EMT all fail a check; the admissible ones do not "
            "lower it"
        )
    else:
        reason = "every steered setting fails at least one admissibility check"
    nearest = None
    if len(misses):
        order = ["_higher", "shortfall", "expected_max_toxicity", "_abs"]
        row = misses.sort_values(order, kind="stable").iloc[0]
        layer = int(row["layer"])
        nearest = {
            "layer": layer,
            "alpha": float(row["alpha"]),
            "direction": str(row["direction"]),
            "split": select_on,
            "lowers_emt": bool(row["_lowers"]),
            "reasons": str(row["inadmissible_because"]).split("; "),
            **selection(row, base_emt[layer]),
            "shortfall": float(row["shortfall"]),
        }
    where = (
        f"; nearest miss: layer {nearest['layer']}, alpha {_fmt(nearest['alpha'])} "
        f"({'; '.join(nearest['reasons'])})"
        if nearest
        else ""
    )
    rule = (
        f"The rule takes the lowest EMT on the {select_on} half among {criteria}. "
        f"{NO_ADMISSIBLE.capitalize()}: {reason}{where}."
    )
    return {
        "status": NO_ADMISSIBLE,
        "rule": rule,
        "reason": reason,
        **common,
        "nearest_miss": nearest,
    }
