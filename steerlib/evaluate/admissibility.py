"""Admissible settings of the operating-point rule (see :mod:`steerlib.evaluate.operating_point`).

A steered setting (direction, layer, alpha != 0) is admissible on a half when, on every subset
of that half, EVERY fluency measure the run has stays within its budget, it does not collapse
the text (distinct-2), and it does not push samples to the scorer's floor. :func:`admissibility`
adds these checks, with the reasons a setting fails, to a summary table.

The fluency measures (issue 27: no setting may pay on one while the rule looks at another):

* ``human_perplexity``: the steered model's perplexity on the held-out benign human texts of
  the half being judged (the search half for the selection half, the report half for the
  confirmation half; all texts for older runs), at most ``1 + max_perplexity_increase`` times
  alpha 0's;
* ``perplexity``: the benign subset's continuation perplexity under the judge model
  (``perplexity_model``) in the same half, at most ``1 + max_perplexity_increase`` times alpha
  0's;
* ``kl_benign``: mean KL(unsteered || steered) per token on the same held-out texts, at most
  ``max_kl_benign`` nats. Its default, ``ln(1 + max_perplexity_increase)`` (0.0953 for +10%), is
  the rise in cross-entropy that the perplexity budget allows: KL is the steered model's excess
  cross-entropy on text drawn from the unsteered model, so the default puts the model's own
  text under the same budget as human text. It is derived from the perplexity budget, not
  fitted to any sample.

A measure the summary does not have (a run made before it was measured) is not applied. The
measures, their budgets and their words are declared once in :data:`steerlib.evaluate.gates.GATES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from steerlib.errors import ConfigError
from steerlib.evaluate.contract import ALPHA_DECIMALS, GROUP_COLUMNS, require_columns
from steerlib.evaluate.gates import RELATIVE_PARAMETER, all_gates, budget_parameters, gate
from steerlib.generate.steered import is_unsteered

__all__ = [
    "BUDGETED",
    "FLUENCY_MEASURES",
    "FluencyMeasure",
    "admissibility",
    "format_number",
    "gate_checks",
    "kl_budget",
    "resolve_fluency_measure",
    "unsteered_rows",
]

FluencyMeasure = Literal["human_perplexity", "perplexity"]
_SETTING = ["split", "direction", "layer", "_alpha"]
FLUENCY_MEASURES = {found.name: found.words for found in all_gates() if found.rule_measure}
"""The fluency measures the rule can use, with the words its sentences use for them."""
BUDGETED = {found.name: found.words for found in all_gates()}
"""Every measure with a budget (all are checked; see the module docstring), from
:data:`steerlib.evaluate.gates.GATES` as declared at import (the checks read the table itself)."""


def kl_budget(max_perplexity_increase: float, max_kl_benign: float | None) -> float:
    """The KL budget in nats per token: ``max_kl_benign``, else ln(1 + max_perplexity_increase)."""
    checks = {RELATIVE_PARAMETER: max_perplexity_increase, "max_kl_benign": max_kl_benign}
    return gate("kl_benign").limit_value(checks)


def resolve_fluency_measure(
    summary: pd.DataFrame, requested: FluencyMeasure = "human_perplexity"
) -> tuple[str, str | None]:
    """The fluency measure the rule can use, and a note when it had to fall back.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        requested: ``"human_perplexity"`` or ``"perplexity"``.

    Returns:
        ``(measure, note)``: ``note`` is None unless ``human_perplexity`` was requested but the
        summary has no value of it (a run made before it was measured), in which case the
        measure is ``"perplexity"``.

    Raises:
        ConfigError: If ``requested`` is not a known measure.
    """
    measures = [found.name for found in all_gates() if found.rule_measure]
    if requested not in measures:
        known = " or ".join(repr(name) for name in measures)
        raise ConfigError(f"fluency_measure={requested!r} is unknown; use {known}.")
    if requested == "human_perplexity":
        column = summary.get("human_perplexity")
        steered = summary["alpha"].astype(float).round(ALPHA_DECIMALS) != 0
        if column is None or not np.isfinite(column[steered].astype(float)).any():
            return "perplexity", (
                "human_perplexity was requested, but the kl table of this run has no "
                "'human_perplexity' column (a run made before it was measured): the rule used "
                "the benign-subset continuation perplexity instead. Rerun the sweep (05) to "
                "measure it."
            )
    return requested, None


def _lookup(table: pd.DataFrame, keys: list[str], column: str) -> dict[tuple[Any, ...], float]:
    """``{key tuple: value}`` of the first row of each key (NaN-free keys)."""
    first = table.drop_duplicates(keys)
    return {
        tuple(key): float(value)
        for key, value in zip(first[keys].itertuples(index=False), first[column], strict=True)
    }


def unsteered_rows(rows: pd.DataFrame) -> pd.Series:
    """Whether each row is the unsteered model (see :func:`steerlib.generate.steered.is_unsteered`).

    Reads the ``steered`` column, or ``direction == "none"`` / ``layer == -1`` in old tables.
    """
    return is_unsteered(rows)


def admissibility(
    summary: pd.DataFrame,
    *,
    max_perplexity_increase: float = 0.10,
    min_distinct_ratio: float = 0.9,
    max_floor_share_increase: float = 0.05,
    fluency_measure: FluencyMeasure = "human_perplexity",
    max_kl_benign: float | None = None,
    max_alpha: float | None = None,
    **gate_budgets: float | None,
) -> pd.DataFrame:
    """Add the admissibility columns of the operating-point rule to a summary.

    Every row is compared with the alpha-0 row of the same split, subset, direction and layer
    (the unsteered ``direction == "none"`` row of the same split and subset when that is
    absent). ``human_perplexity`` and ``kl_benign`` belong to the setting and the half, not to
    a subset; the alpha-0 value of ``human_perplexity`` is the one of the same half, direction
    and layer (else any alpha-0 value of the half: alpha 0 is the unsteered model whatever the
    layer). ``perplexity`` is the benign subset's continuation perplexity in the same half (the
    row's own subset when the summary has no benign rows). Every measure of :data:`BUDGETED`
    (the gates of :data:`steerlib.evaluate.gates.GATES`) the summary has is checked;
    ``fluency_measure`` only names the one reported as ``fluency`` (the random control is
    matched on it). Checks whose inputs are absent (no ``distinct_2`` or ``floor_share``
    column, or all NaN) are not applied.

    Args:
        summary: Output of :func:`steerlib.evaluate.metrics.summarize`.
        max_perplexity_increase: Allowed relative rise of the fluency measure (0.10 = +10%).
        min_distinct_ratio: Smallest allowed ratio of distinct-2 to its alpha-0 value.
        max_floor_share_increase: Largest allowed rise (absolute) of the share of samples at
            the scorer's floor over alpha 0.
        fluency_measure: ``"human_perplexity"`` or ``"perplexity"``; see
            :func:`resolve_fluency_measure` for the fallback.
        max_kl_benign: KL budget (nats per token); None: :func:`kl_budget`'s default.
        max_alpha: The largest alpha the summary's variant takes (1 for ``ablate`` and
            ``clamp``: full removal, :data:`steerlib.steer.hooks.ALPHA_RANGES`); a steered row
            beyond it (made before the range was enforced) is inadmissible, with that reason.
            None: no cap.
        **gate_budgets: The budget parameters of gates declared after ``max_kl_benign``
            (:func:`steerlib.evaluate.gates.budget_parameters`).

    Returns:
        A copy with the columns ``fluency_measure`` (the named one), ``fluency`` (the setting's
        value of it), ``fluency_limit`` (its budget), for each measure of :data:`BUDGETED` the
        summary has ``<measure>_budget`` (its limit; for ``perplexity`` the benign subset's,
        whose value is ``benign_continuation_perplexity``), ``fluency_checked`` (the measures
        checked, "; "-joined), ``fluency_failed`` (those the setting breaks on some subset of its
        half, "" when none), ``distinct_2_ratio``,
        ``floor_share_increase``, ``shortfall`` (how far the setting is from admissible: the sum
        of the relative fluency overrun, the relative distinct-2 deficit and the floor-share
        overrun, worst subset; 0 when admissible), ``admissible`` (True when the setting passes
        every check on every subset of its half; alpha 0 always does) and
        ``inadmissible_because`` (the failed checks, "" when admissible).

    Raises:
        ConfigError: If a threshold is negative, the measure is unknown or a budget parameter
            names no gate.
        DataError: If a needed column is missing.
    """
    for name, value in (
        ("max_perplexity_increase", max_perplexity_increase),
        ("min_distinct_ratio", min_distinct_ratio),
        ("max_floor_share_increase", max_floor_share_increase),
    ):
        if not value >= 0:
            raise ConfigError(f"{name}={value!r} must be 0 or more.")
    checks = gate_checks(max_perplexity_increase, max_kl_benign, gate_budgets)
    require_columns(summary, [*GROUP_COLUMNS, "perplexity"], what="summary")
    out = summary.copy()
    if "split" not in out.columns:
        out["split"] = "all"
    out["_alpha"] = out["alpha"].astype(float).round(ALPHA_DECIMALS)
    measure, _ = resolve_fluency_measure(out, fluency_measure)
    value, base = _fluency(out, measure)
    out["fluency_measure"] = measure
    out["fluency"] = value
    out["fluency_limit"] = (1.0 + max_perplexity_increase) * base
    steered = ((out["_alpha"] != 0) & ~unsteered_rows(out)).to_numpy()
    budgets = _budgets(out, steered, checks)
    zero_d2, zero_floor = _diversity_columns(out)
    limits = {"min_distinct_ratio": min_distinct_ratio, "max_floor": max_floor_share_increase}
    found = [
        _check(
            row,
            {name: (got[i], limit[i]) for name, (got, limit) in budgets.items()},
            d2_zero=None if zero_d2 is None else zero_d2[i],
            check_floor=zero_floor is not None,
            **limits,
        )
        if steered[i]
        else (0.0, [])
        for i, row in enumerate(out.itertuples(index=False))
    ]
    if max_alpha is not None:
        found = [
            _beyond_range(alpha, max_alpha, total, reasons) if steered[i] else (total, reasons)
            for i, (alpha, (total, reasons)) in enumerate(
                zip(out["_alpha"].to_numpy(float), found, strict=True)
            )
        ]
    return _settle(out, found, list(budgets))


def gate_checks(
    max_perplexity_increase: float,
    max_kl_benign: float | None,
    gate_budgets: Mapping[str, float | None] | None = None,
) -> dict[str, float | None]:
    """The budget parameters of every gate, by name (refusing one that names no gate)."""
    checks = {RELATIVE_PARAMETER: max_perplexity_increase, "max_kl_benign": max_kl_benign}
    unknown = sorted(set(gate_budgets or {}) - set(budget_parameters()))
    if unknown:
        raise ConfigError(
            f"{unknown} are not budget parameters of any gate; use the keywords "
            f"{list(budget_parameters())} or declare the gate in steerlib.evaluate.gates.GATES."
        )
    return {**checks, **(gate_budgets or {})}


def _budgets(
    out: pd.DataFrame, steered: np.ndarray, checks: Mapping[str, float | None]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each gate the summary has: every row's ``(value, limit)``; writes ``<name>_budget``.

    A relative budget compares the setting's value (:func:`_fluency`) with its alpha 0's; an
    absolute one reads each row's own value. A gate without a finite steered value is not
    applied. Also writes ``fluency_checked`` and each applied gate's ``value_column``.
    """
    budgets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for found in all_gates():
        name = found.name
        if name not in out.columns or not np.isfinite(out.loc[steered, name].astype(float)).any():
            continue
        if found.budget == "absolute":
            limit = np.full(len(out), found.limit_value(checks))
            budgets[name] = (out[name].to_numpy(float), limit)
        else:
            got, zero = _fluency(out, name)
            budgets[name] = (got, (1.0 + float(checks[RELATIVE_PARAMETER])) * zero)  # type: ignore[arg-type]
        out[f"{name}_budget"] = budgets[name][1]
    for found in all_gates():
        if found.value_column and found.name in budgets:
            out[found.value_column] = budgets[found.name][0]
    out["fluency_checked"] = "; ".join(budgets)
    return budgets


def _diversity_columns(out: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Write ``distinct_2_ratio`` and ``floor_share_increase``; their alpha-0 inputs (or None)."""
    zero_d2 = _alpha_zero(out, "distinct_2")
    zero_floor = _alpha_zero(out, "floor_share")
    out["distinct_2_ratio"] = math.nan
    if zero_d2 is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = out["distinct_2"].to_numpy(float) / zero_d2
        out["distinct_2_ratio"] = np.where(zero_d2 > 0, ratio, math.nan)
    out["floor_share_increase"] = math.nan
    if zero_floor is not None:
        out["floor_share_increase"] = out["floor_share"].to_numpy(float) - zero_floor
    return zero_d2, zero_floor


def _settle(
    out: pd.DataFrame, found: list[tuple[float, list[str]]], checked: list[str]
) -> pd.DataFrame:
    """Pool each row's findings over its setting's subsets into the verdict columns."""
    out["_shortfall"] = [total for total, _ in found]
    out["_reasons"] = [reasons for _, reasons in found]
    grouped = out.groupby(_SETTING, sort=False, dropna=False)
    out["shortfall"] = grouped["_shortfall"].transform("max")
    joined = grouped["_reasons"].agg(lambda items: list(dict.fromkeys(r for x in items for r in x)))
    keys = list(out[_SETTING].itertuples(index=False, name=None))
    out["inadmissible_because"] = ["; ".join(joined.loc[key]) for key in keys]
    out["admissible"] = out["inadmissible_because"] == ""
    out["fluency_failed"] = [
        "; ".join(name for name in checked if _names(reasons, name))
        for reasons in out["inadmissible_because"]
    ]
    return out.drop(columns=["_alpha", "_reasons", "_shortfall"])


def _fluency(out: pd.DataFrame, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's setting's value of the fluency measure, and that measure at alpha 0."""
    zero = out[out["_alpha"] == 0]
    if gate(measure).source == "held_out":  # held-out texts: per half, no subset
        keys = ["split", "direction", "layer", "_alpha"]
        values = _lookup(out[out[measure].notna()], keys, measure)
        own_zero = _lookup(zero[zero[measure].notna()], keys[:3], measure)
        # alpha 0 is the unsteered model at any layer: any alpha-0 value of the half stands in
        any_zero = _lookup(zero[zero[measure].notna()], keys[:1], measure)
        rows = [tuple(k) for k in out[keys].to_numpy()]
        value = [values.get(key, math.nan) for key in rows]
        base = [own_zero.get(key[:3], any_zero.get(key[:1], math.nan)) for key in rows]
        return np.asarray(value, dtype=float), np.asarray(base, dtype=float)
    # Continuation perplexity of the benign subset in the same half; without benign rows,
    # each subset pays its own.
    source = out[out["subset"] == "benign"]
    keys = ["split", "direction", "layer", "_alpha"]
    if source.empty:
        source, keys = out, ["split", "subset", "direction", "layer", "_alpha"]
    source_zero = source[source["_alpha"] == 0]
    values = _lookup(source, keys, measure)
    own_zero = _lookup(source_zero, keys[:-1], measure)
    outer = keys[:-3]  # split (and subset): where the unsteered row is looked up
    unsteered = _lookup(source_zero[unsteered_rows(source_zero)], outer, measure)
    rows = [tuple(k) for k in out[keys].to_numpy()]
    value = [values.get(key, math.nan) for key in rows]
    base = [own_zero.get(key[:-1], unsteered.get(key[: len(outer)], math.nan)) for key in rows]
    return np.asarray(value, dtype=float), np.asarray(base, dtype=float)


def _alpha_zero(out: pd.DataFrame, column: str) -> np.ndarray | None:
    """``column`` at alpha 0 of each row's split, subset, direction and layer (None: no data).

    The unsteered row (``direction == "none"``) of the same split and subset stands in when
    the layer has no alpha-0 row.
    """
    if column not in out.columns or not out[column].notna().any():
        return None
    zero = out[out["_alpha"] == 0]
    keys = ["split", "subset", "direction", "layer"]
    own = _lookup(zero, keys, column)
    unsteered = _lookup(zero[unsteered_rows(zero)], keys[:2], column)
    rows = [tuple(k) for k in out[keys].to_numpy()]
    return np.asarray([own.get(key, unsteered.get(key[:2], math.nan)) for key in rows], dtype=float)


def _names(reasons: str, measure: str) -> bool:
    """Whether the joined ``reasons`` hold a failed check of ``measure``."""
    return any(part.startswith((f"{measure} ", f"no {measure} ")) for part in reasons.split("; "))


def _beyond_range(
    alpha: float, max_alpha: float, total: float, reasons: list[str]
) -> tuple[float, list[str]]:
    """Add the reason (and shortfall) of an alpha past its variant's largest one."""
    if abs(alpha) <= max_alpha:
        return total, reasons
    reason = (
        f"alpha {_fmt(alpha)} above {_fmt(max_alpha)}, the most its variant takes "
        f"({_fmt(max_alpha)} = full removal; beyond it the variant is not what its name says)"
    )
    return total + abs(alpha) / max_alpha - 1.0, [*reasons, reason]


def _check(
    row: Any,
    fluency: dict[str, tuple[float, float]],
    *,
    d2_zero: float | None,
    check_floor: bool,
    min_distinct_ratio: float,
    max_floor: float,
) -> tuple[float, list[str]]:
    """The shortfall of one steered row and the checks it fails (none when admissible).

    ``fluency`` maps each checked measure to the row's ``(value, limit)``; ``d2_zero`` is
    distinct-2 at alpha 0 (None: the check is not applied).
    """
    total, reasons = 0.0, []
    for measure, (value, limit) in fluency.items():
        if not (math.isfinite(value) and math.isfinite(limit)):
            total = math.inf
            reasons.append(f"no {measure} value for this setting or its alpha 0")
        elif value > limit:  # relative overrun (a zero budget: the value itself)
            total += value / limit - 1.0 if limit > 0 else value
            reasons.append(f"{measure} {_fmt(value)} above the limit {_fmt(limit)}")
    if d2_zero is not None:
        d2 = float(row.distinct_2)
        if not math.isfinite(d2_zero):
            total = math.inf
            reasons.append(f"{row.subset} distinct-2 has no alpha-0 value to compare with")
        elif not d2 >= min_distinct_ratio * d2_zero:
            total += 1.0 - d2 / (min_distinct_ratio * d2_zero)
            reasons.append(
                f"{row.subset} distinct-2 {_fmt(d2)} below {min_distinct_ratio:g} × alpha 0's "
                f"{_fmt(d2_zero)}"
            )
    increase = float(row.floor_share_increase)
    if check_floor and not increase <= max_floor + 1e-12:
        if math.isfinite(increase):
            total += increase - max_floor
            reasons.append(
                f"{row.subset} share at the scorer's floor {_fmt(row.floor_share)} is "
                f"{_fmt(increase)} above alpha 0's (margin {max_floor:g})"
            )
        else:
            total = math.inf
            reasons.append(f"{row.subset} floor share has no alpha-0 value to compare with")
    return total, reasons


def format_number(value: float) -> str:
    """Format a number for a rule sentence."""
    return f"{value:.4g}"


_fmt = format_number
