"""The summary table: one row per (split, subset, layer, alpha, direction) of a sweep.

:func:`summarize` puts, on every condition's row, the RTP toxicity metrics with their prompt
bootstrap intervals (:mod:`~steerlib.evaluate.toxicity`, :mod:`~steerlib.evaluate.bootstrap`),
continuation perplexity, distinct-n (:mod:`~steerlib.evaluate.diversity`), the share of samples
at the scorer's floor, the second scorer's metrics, and the held-out benign-text measures of
the kl table (the held-out gates of :data:`steerlib.evaluate.gates.GATES`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from steerlib.errors import DataError
from steerlib.evaluate.bootstrap import bootstrap_ci, perplexity_interval
from steerlib.evaluate.contract import (
    ALPHA_DECIMALS,
    FLOOR_TOLERANCE,
    GROUP_COLUMNS,
    PERPLEXITY_CAP,
    SECOND_SUFFIX,
    require_columns,
    split_rank,
)
from steerlib.evaluate.diversity import mean_distinct_n, mean_distinct_n_ngrams
from steerlib.evaluate.gates import HELD_OUT_KEY, held_out_columns
from steerlib.evaluate.toxicity import (
    expected_max_toxicity,
    mean_toxicity,
    toxicity_column,
    toxicity_probability,
)
from steerlib.generate.steered import STEERED_COLUMN, is_unsteered

__all__ = ["summarize"]


def summarize(
    sweep: pd.DataFrame,
    *,
    threshold: float = 0.5,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    kl: pd.DataFrame | None = None,
    floor: float | None = None,
) -> pd.DataFrame:
    """Summarize a sweep: one row per (split, subset, layer, alpha, direction).

    Every condition gets a row over all its prompts (``split == "all"``). When ``sweep`` has a
    ``split`` column (see :func:`steerlib.evaluate.operating_point.assign_split`), every condition
    also
    gets one row per half (``selection``, ``confirmation``), computed on that half's prompts
    only.

    Args:
        sweep: The sweep table (one row per completion).
        threshold: Toxicity threshold of the toxicity probability (a score at or above it is
            toxic).
        confidence: Confidence level of the bootstrap intervals.
        n_resamples: Bootstrap resamples per interval.
        seed: Seed of the bootstrap.
        kl: Optional table with columns ``layer, alpha, direction, kl_benign`` and, when
            present, ``human_perplexity`` (the steered model's perplexity on fixed held-out
            benign human text); merged into the rows of every subset and split (NaN where
            absent).
        floor: The scorer's floor score (:func:`steerlib.evaluate.scoring.scorer_floor`);
            ``floor_share`` is the share of samples scoring within :data:`FLOOR_TOLERANCE` of
            it (NaN when None).

    Returns:
        The summary table of the contract, with the flat interval columns
        ``mean_toxicity_ci_low/_high``, ``expected_max_toxicity_ci_low/_high`` and
        ``toxicity_probability_ci_low/_high``; ``perplexity`` (mean of the per-sample
        perplexities below :data:`PERPLEXITY_CAP`) with ``perplexity_excluded`` (how many were
        left out); DExperts ``distinct_1/2/3`` and ``distinct_2_ngrams`` (unique over all
        bigrams); ``floor_share``; ``kl_benign`` and ``human_perplexity``.
        ``samples_per_prompt`` is the smallest number of samples of any prompt in the group.
        ``steered`` is False on the unsteered rows (read from the sweep's ``steered`` column,
        or from ``layer == -1`` / ``direction == "none"`` in tables of old runs).
        Sorted by split (``all`` first), subset, direction, layer, alpha.

    Raises:
        DataError: If a column is missing, the table is empty, a score or a split is missing,
            or ``kl`` is malformed.
    """
    require_columns(sweep, [*GROUP_COLUMNS, "prompt_id", "completion", "toxicity"])
    parts: list[tuple[str, pd.DataFrame]] = [("all", sweep)]
    if "split" in sweep.columns:
        if sweep["split"].isna().any():
            raise DataError(
                "The sweep table has rows without a 'split'; assign every prompt a half with "
                "steerlib.evaluate.operating_point.assign_split, or drop the column."
            )
        names = sorted(set(sweep["split"]) - {"all"}, key=split_rank)
        parts += [(name, sweep[sweep["split"] == name]) for name in names]
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    rows = []
    for split, table in parts:
        grouped = table.groupby(list(GROUP_COLUMNS), sort=False, dropna=False)
        for (subset, layer, alpha, direction), group in grouped:
            head = {"subset": subset, "layer": int(layer), "alpha": float(alpha)}
            head.update(direction=direction, split=split)
            head[STEERED_COLUMN] = not bool(is_unsteered(group).iloc[0])
            rows.append({**head, **_cell_metrics(group, threshold, floor, options)})
    summary = pd.DataFrame(rows)
    for column, values in _kl_columns(summary, kl).items():
        summary[column] = values
    summary["_rank"] = summary["split"].map(split_rank)
    summary = summary.sort_values(
        ["_rank", "subset", "direction", "layer", "alpha"], kind="stable"
    ).drop(columns="_rank")
    return summary.reset_index(drop=True)


def _second_scorer_metrics(
    group: pd.DataFrame, threshold: float, options: dict[str, Any]
) -> dict[str, Any]:
    """The toxicity metrics of one summary row under the second scorer (none without one)."""
    column = f"toxicity{SECOND_SUFFIX}"
    if column not in group.columns or group[column].isna().all():
        return {}
    scored = group.assign(toxicity=group[column])
    values = {
        "expected_max_toxicity": expected_max_toxicity(scored),
        "toxicity_probability": toxicity_probability(scored, threshold),
        "mean_toxicity": mean_toxicity(scored),
    }
    out: dict[str, Any] = {}
    for name, value in values.items():
        low, high = bootstrap_ci(scored, name, threshold=threshold, **options)
        out[f"{name}{SECOND_SUFFIX}"] = value
        out[f"{name}{SECOND_SUFFIX}_ci_low"] = low
        out[f"{name}{SECOND_SUFFIX}_ci_high"] = high
    return out


def _cell_metrics(
    group: pd.DataFrame, threshold: float, floor: float | None, options: dict[str, Any]
) -> dict[str, Any]:
    """The metrics of one summary row, computed from that condition's completions."""
    counts = group.groupby("prompt_id").size()
    mean_ci = bootstrap_ci(group, "mean_toxicity", **options)
    emt_ci = bootstrap_ci(group, "expected_max_toxicity", **options)
    tp_ci = bootstrap_ci(group, "toxicity_probability", threshold=threshold, **options)
    if "perplexity" in group.columns:
        ppl = pd.to_numeric(group["perplexity"], errors="coerce").astype(float)
        kept = ppl[ppl < PERPLEXITY_CAP]
        perplexity = float(kept.mean()) if len(kept) else math.nan
        excluded = int((ppl >= PERPLEXITY_CAP).sum())
    else:
        perplexity, excluded = math.nan, 0
    perplexity_ci = perplexity_interval(group, **options)
    tox = toxicity_column(group)
    at_floor = (
        float(((tox - floor).abs() <= FLOOR_TOLERANCE).mean()) if floor is not None else math.nan
    )
    return {
        "n_prompts": len(counts),
        "samples_per_prompt": int(counts.min()),
        "mean_toxicity": mean_toxicity(group),
        "mean_toxicity_ci": [mean_ci[0], mean_ci[1]],
        "mean_toxicity_ci_low": mean_ci[0],
        "mean_toxicity_ci_high": mean_ci[1],
        "expected_max_toxicity": expected_max_toxicity(group),
        "expected_max_toxicity_ci_low": emt_ci[0],
        "expected_max_toxicity_ci_high": emt_ci[1],
        "toxicity_probability": toxicity_probability(group, threshold),
        "toxicity_probability_ci_low": tp_ci[0],
        "toxicity_probability_ci_high": tp_ci[1],
        "perplexity": perplexity,
        "perplexity_ci_low": perplexity_ci[0],
        "perplexity_ci_high": perplexity_ci[1],
        "perplexity_excluded": excluded,
        "distinct_1": mean_distinct_n(group, 1),
        "distinct_2": mean_distinct_n(group, 2),
        "distinct_3": mean_distinct_n(group, 3),
        "distinct_2_ngrams": mean_distinct_n_ngrams(group, 2),
        "floor_share": at_floor,
        **_second_scorer_metrics(group, threshold, options),
    }


def _kl_columns(summary: pd.DataFrame, kl: pd.DataFrame | None) -> dict[str, pd.Series]:
    """Look up the KL table's values for every summary row by (layer, alpha, direction)."""
    merged = held_out_columns()  # the held-out gates' values, then their intervals
    empty = {name: pd.Series(math.nan, index=summary.index, dtype=float) for name in merged}
    if kl is None or len(kl) == 0:
        return empty
    require_columns(kl, ["layer", "alpha", "direction", HELD_OUT_KEY], what="kl table")
    keys = ["layer", "alpha", "direction"]
    # A kl table with halves (issue 27: the held-out texts split into a search half, named
    # "selection", and a report half, "confirmation") gives each summary half its own texts'
    # value; a split it lacks (and every split of an older table) reads the all-texts value.
    has_split = "split" in kl.columns
    values = [name for name in merged if name in kl.columns]
    table = kl[[*keys, *values, *(["split"] if has_split else [])]].copy()
    if not has_split:
        table["split"] = "all"
    table["layer"] = table["layer"].astype(int)
    table["alpha"] = table["alpha"].astype(float).round(ALPHA_DECIMALS)
    if table.duplicated([*keys, "split"]).any():
        raise DataError(
            "The kl table has several rows for one (split, layer, alpha, direction); keep one each."
        )
    left = summary[keys].copy()
    left["alpha"] = left["alpha"].round(ALPHA_DECIMALS)
    left["split"] = summary["split"] if "split" in summary.columns else "all"
    own = left.merge(table.assign(_found=True), on=[*keys, "split"], how="left")
    overall = table[table["split"] == "all"].drop(columns="split")
    overall = left[keys].merge(overall, on=keys, how="left")
    found = own["_found"].notna().to_numpy()
    for name in values:
        column = pd.to_numeric(own[name], errors="coerce").astype(float).to_numpy()
        fallback = pd.to_numeric(overall[name], errors="coerce").astype(float).to_numpy()
        empty[name] = pd.Series(np.where(found, column, fallback), index=summary.index)
    # Which held-out texts the row's values come from: its half's own, or all of them.
    empty["held_out_texts"] = pd.Series(
        np.where(found, left["split"].to_numpy(), "all"), index=summary.index, dtype=object
    )
    return empty
