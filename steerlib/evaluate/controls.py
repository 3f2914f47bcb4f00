"""CAA against the random-direction control, paired by prompt, at equal alpha or fluency.

Both directions run on the same prompts, so each comparison is paired: per prompt, CAA's mean
(and maximum) toxicity minus the control's; a BCa bootstrap interval of the mean difference
over prompts (:func:`scipy.stats.bootstrap`); a two-sided sign-flip permutation test of the
same mean (:func:`scipy.stats.permutation_test`, replacing the Wilcoxon signed-rank test, which
tests a median-like shift rather than the mean the interval describes); and Benjamini-Hochberg
q-values over the cells of a subset (:func:`scipy.stats.false_discovery_control`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from steerlib.errors import DataError
from steerlib.evaluate.bootstrap import mean_statistic, run_bootstrap
from steerlib.evaluate.contract import ALPHA_DECIMALS, GROUP_COLUMNS, require_columns
from steerlib.evaluate.toxicity import per_prompt_scores

__all__ = [
    "N_PERMUTATIONS",
    "delta_vs_control",
    "fluency_matched_control",
    "paired_permutation_pvalue",
    "tradeoff_rows",
]

N_PERMUTATIONS = 9999
"""Random sign flips of the paired permutation test (exact when 2**n_prompts is fewer)."""


def delta_vs_control(
    summary: pd.DataFrame,
    sweep: pd.DataFrame | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
) -> pd.DataFrame:
    """Compare CAA with the random-direction control at each (subset, layer, alpha).

    ``delta_* = caa - random`` (negative means CAA lowers toxicity more than a random vector of
    the same norm).

    Both directions are run on the same prompts, so with ``sweep`` (the completion rows behind
    ``summary``) the comparison is paired: for every prompt, CAA's mean (and maximum) toxicity
    minus the control's, and a bootstrap interval of the mean of those differences over
    prompts (:func:`scipy.stats.bootstrap`, BCa). ``beats_control`` is then True when the
    interval of the mean-toxicity difference lies below zero. The intervals are per cell, not
    corrected for the number of (layer, alpha) cells compared; for that, ``p_value`` is a
    two-sided paired permutation test of the *mean* per-prompt mean-toxicity difference (the
    statistic the interval is built on): :func:`scipy.stats.permutation_test` with
    ``permutation_type="samples"`` on the differences, which flips their signs at random
    (exactly, over all sign patterns, when there are few prompts). ``q_value`` is its
    Benjamini-Hochberg adjustment over the cells of each subset
    (:func:`scipy.stats.false_discovery_control`); both are NaN where every difference is 0.

    Without ``sweep`` the interval columns are NaN and ``beats_control`` falls back to the
    unpaired rule: the upper end of CAA's own mean-toxicity interval
    (``mean_toxicity_ci_high``) lies below the control's mean toxicity.

    Args:
        summary: Output of :func:`summarize` with ``caa`` and ``random`` rows.
        sweep: Optional completion rows (``GROUP_COLUMNS``, ``prompt_id``, ``toxicity``).
        confidence: Confidence level of the paired intervals.
        n_resamples: Bootstrap resamples per interval.
        seed: Seed of the bootstrap and of the permutation test.
        n_permutations: Random sign flips of the permutation test.

    Returns:
        One row per (subset, layer, alpha) present for both directions, with columns
        ``mean_toxicity_caa``, ``mean_toxicity_random``, ``delta_mean_toxicity``,
        ``expected_max_toxicity_caa``, ``expected_max_toxicity_random``,
        ``delta_expected_max_toxicity``, ``mean_toxicity_ci_high_caa``, ``n_paired_prompts``,
        ``delta_mean_toxicity_ci_low/_high``, ``delta_expected_max_toxicity_ci_low/_high``,
        ``p_value``, ``q_value`` and ``beats_control``.

    Example:
        >>> control = delta_vs_control(summarize(sweep), sweep)  # doctest: +SKIP
        >>> control.loc[control["beats_control"], ["layer", "alpha"]]  # doctest: +SKIP
    """
    keys = ["subset", "layer", "alpha"]
    require_columns(
        summary,
        [*GROUP_COLUMNS, "mean_toxicity", "expected_max_toxicity", "mean_toxicity_ci_high"],
        what="summary",
    )
    values = ["mean_toxicity", "expected_max_toxicity", "mean_toxicity_ci_high"]
    caa = summary.loc[summary["direction"] == "caa", keys + values].copy()
    rnd = summary.loc[summary["direction"] == "random", keys + values[:2]].copy()
    for table in (caa, rnd):
        table["_alpha_key"] = table["alpha"].astype(float).round(ALPHA_DECIMALS)
    merged = caa.merge(
        rnd.drop(columns="alpha"),
        on=["subset", "layer", "_alpha_key"],
        suffixes=("_caa", "_random"),
    ).drop(columns="_alpha_key")
    merged = merged.rename(columns={"mean_toxicity_ci_high": "mean_toxicity_ci_high_caa"})
    merged["delta_mean_toxicity"] = merged["mean_toxicity_caa"] - merged["mean_toxicity_random"]
    merged["delta_expected_max_toxicity"] = (
        merged["expected_max_toxicity_caa"] - merged["expected_max_toxicity_random"]
    )
    merged = _with_paired_columns(
        merged,
        sweep,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        n_permutations=n_permutations,
    )
    if sweep is None:
        merged["beats_control"] = (
            merged["mean_toxicity_ci_high_caa"] < merged["mean_toxicity_random"]
        ).astype(bool)
    columns = [
        *keys,
        "mean_toxicity_caa",
        "mean_toxicity_random",
        "delta_mean_toxicity",
        "expected_max_toxicity_caa",
        "expected_max_toxicity_random",
        "delta_expected_max_toxicity",
        "mean_toxicity_ci_high_caa",
        *_PAIRED_COLUMNS,
    ]
    merged = merged[columns].sort_values(keys, kind="stable")
    return merged.reset_index(drop=True)


def tradeoff_rows(
    summary: pd.DataFrame,
    *,
    subset: str = "challenging",
    cost_subset: str = "benign",
    cost: str = "perplexity",
) -> pd.DataFrame:
    """Rows of ``subset`` with the fluency cost measured on ``cost_subset`` beside them.

    The operating-point rule weighs toxicity on challenging prompts against perplexity on
    benign ones; this puts both on one row, matched by (direction, layer, alpha), so a
    trade-off can be plotted or compared on the rule's own axes.

    Args:
        summary: Output of :func:`summarize`.
        subset: Subset whose rows are returned.
        cost_subset: Subset whose ``cost`` column is looked up. When the summary has no rows
            of it, ``subset``'s own ``cost`` is used.
        cost: Column holding the cost (``perplexity``, ``kl_benign``, ...).

    Returns:
        The rows of ``subset`` (original index dropped) with the column
        ``f"{cost_subset}_{cost}"`` added (NaN where the cost subset has no such setting).

    Example:
        >>> rows = tradeoff_rows(summarize(sweep))  # doctest: +SKIP
        >>> rows[["layer", "alpha", "expected_max_toxicity", "benign_perplexity"]]  # doctest: +SKIP
    """
    require_columns(summary, [*GROUP_COLUMNS, cost], what="summary")
    keys = ["direction", "layer", "_alpha_key"]
    source = summary[summary["subset"] == cost_subset]
    if source.empty:
        source = summary[summary["subset"] == subset]
    source = source.assign(_alpha_key=source["alpha"].astype(float).round(ALPHA_DECIMALS))
    lookup = (
        source[[*keys, cost]].drop_duplicates(keys).rename(columns={cost: f"{cost_subset}_{cost}"})
    )
    rows = summary[summary["subset"] == subset]
    rows = rows.assign(_alpha_key=rows["alpha"].astype(float).round(ALPHA_DECIMALS))
    merged = rows.merge(lookup, on=keys, how="left", validate="many_to_one")
    return merged.drop(columns="_alpha_key").reset_index(drop=True)


def fluency_matched_control(
    summary: pd.DataFrame,
    sweep: pd.DataFrame | None = None,
    *,
    subset: str = "challenging",
    fluency_subset: str = "benign",
    metric: str = "mean_toxicity",
    fluency: str = "perplexity",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
    always: Mapping[int, Iterable[float]] | None = None,
) -> pd.DataFrame:
    """Compare CAA with the random control at equal fluency instead of equal alpha.

    At equal alpha a random vector of the same norm can cost far more fluency than the
    steering vector, and broken text scores as less toxic. This comparison gives the control
    its best chance within CAA's fluency cost: for each CAA setting (layer, alpha != 0) of
    ``subset``, the control is the random-direction setting of the same layer, at any alpha
    of either sign, whose ``fluency`` cost on ``fluency_subset`` is at most CAA's, with the lowest
    ``metric`` on ``subset``. Alpha 0 (the unsteered model) is always admissible, so every CAA
    setting has a match. Picking the best of several noisy cells favours the control, so the
    comparison leans against CAA.

    With ``sweep`` (the completion rows behind ``summary``) the difference is paired by
    prompt as in :func:`delta_vs_control`: a BCa bootstrap interval of the mean per-prompt
    difference in mean toxicity, a paired permutation ``p_value`` of that mean and its
    Benjamini-Hochberg ``q_value`` over the rows; ``beats_control`` is True when the interval
    lies below zero. Without ``sweep`` those columns are NaN and ``beats_control`` is False.

    Args:
        summary: Output of :func:`summarize` (one split) with ``caa`` and ``random`` rows and
            the ``fluency`` column.
        sweep: Optional completion rows (``GROUP_COLUMNS``, ``prompt_id``, ``toxicity``).
        subset: Subset whose toxicity is compared.
        fluency_subset: Subset whose ``fluency`` measures the cost (``subset`` itself when the
            summary has no rows of it).
        metric: Summary column the control minimizes among admissible cells.
        fluency: Summary column of the fluency cost: ``perplexity`` (continuation perplexity)
            or ``human_perplexity`` (the steered model on fixed benign human text).
        confidence: Confidence level of the paired intervals.
        n_resamples: Bootstrap resamples per interval.
        seed: Seed of the bootstrap and of the permutation test.
        n_permutations: Random sign flips of the permutation test.
        always: Random-direction alphas by layer admissible whatever their cost: the
            control's own budget edge, found by the same search within the same budget as
            CAA's (so the control is not held to CAA's measured cost, which favours CAA).

    Returns:
        One row per CAA (layer, alpha != 0) with a random direction at that layer; columns
        ``subset``, ``layer``, ``alpha``, ``perplexity_caa``, ``control_alpha``,
        ``perplexity_control`` (both holding the ``fluency`` measure), then ``<m>_caa``,
        ``<m>_control`` and ``delta_<m>`` for ``m`` in ``mean_toxicity`` and
        ``expected_max_toxicity``, ``n_paired_prompts``, the four ``delta_*_ci_low/_high``
        columns of :func:`delta_vs_control` (mean, then maximum toxicity), ``p_value``,
        ``q_value`` and ``beats_control``. Empty when there is no random direction.

    Raises:
        DataError: If a column is missing, or a matched pair has no prompt in common.

    Example:
        >>> matched = fluency_matched_control(summarize(sweep), sweep)  # doctest: +SKIP
        >>> matched[["layer", "alpha", "control_alpha", "delta_mean_toxicity"]]  # doctest: +SKIP
    """
    compared = ["mean_toxicity", "expected_max_toxicity"]
    require_columns(summary, [*GROUP_COLUMNS, fluency, metric, *compared], what="summary")
    rows = tradeoff_rows(summary, subset=subset, cost_subset=fluency_subset, cost=fluency)
    cost = f"{fluency_subset}_{fluency}"
    random = rows[rows["direction"] == "random"]
    caa = rows[(rows["direction"] == "caa") & (rows["alpha"].astype(float) != 0.0)]
    records = []
    for _, row in caa.iterrows():
        layer, alpha, own = int(row["layer"]), float(row["alpha"]), float(row[cost])
        candidates = random[random["layer"] == layer]
        if candidates.empty:
            continue
        admissible = []
        edges = [float(a) for a in (always or {}).get(layer, ())]
        for position, cand in enumerate(candidates.itertuples(index=False)):
            cand_alpha = float(cand.alpha)
            cand_ppl = float(getattr(cand, cost))
            own_edge = any(abs(cand_alpha - edge) < 1e-6 for edge in edges)
            if cand_alpha == 0.0 or own_edge or (math.isfinite(own) and cand_ppl <= own):
                key = (float(getattr(cand, metric)), abs(cand_alpha), cand_alpha)
                admissible.append((key, position, cand_ppl))
        if not admissible:
            continue
        (_, _, control_alpha), position, control_ppl = min(admissible)
        control = candidates.iloc[position]
        record = {
            "subset": subset,
            "layer": layer,
            "alpha": alpha,
            "perplexity_caa": own,
            "control_alpha": control_alpha,
            "perplexity_control": control_ppl,
        }
        for name in compared:
            record[f"{name}_caa"] = float(row[name])
            record[f"{name}_control"] = float(control[name])
            record[f"delta_{name}"] = record[f"{name}_caa"] - record[f"{name}_control"]
        records.append(record)
    columns = [
        "subset",
        "layer",
        "alpha",
        "perplexity_caa",
        "control_alpha",
        "perplexity_control",
        *[f"{prefix}{name}{suffix}" for name in compared for prefix, suffix in _TRIPLE],
        *_PAIRED_COLUMNS,
    ]
    matched = pd.DataFrame(records, columns=columns[: 6 + 3 * len(compared)])
    if matched.empty:
        return pd.DataFrame(columns=columns)
    matched = _with_paired_columns(
        matched,
        sweep,
        control_alpha="control_alpha",
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        n_permutations=n_permutations,
    )
    matched = matched[columns].sort_values(["layer", "alpha"], kind="stable")
    return matched.reset_index(drop=True)


_TRIPLE = (("", "_caa"), ("", "_control"), ("delta_", ""))
_PAIRED_CI_COLUMNS = (
    "delta_mean_toxicity_ci_low",
    "delta_mean_toxicity_ci_high",
    "delta_expected_max_toxicity_ci_low",
    "delta_expected_max_toxicity_ci_high",
)
_PAIRED_COLUMNS = ("n_paired_prompts", *_PAIRED_CI_COLUMNS, "p_value", "q_value", "beats_control")


def paired_permutation_pvalue(
    differences: np.ndarray, *, n_permutations: int = N_PERMUTATIONS, seed: int = 0
) -> float:
    """Two-sided p-value of "the mean paired difference is 0" by sign-flip permutation.

    Under the null hypothesis each prompt's difference is as likely to carry either sign;
    :func:`scipy.stats.permutation_test` (``permutation_type="samples"`` with one sample)
    flips the signs, exactly over all ``2**n`` patterns when that is at most
    ``n_permutations``, at random otherwise. The statistic is the mean, the one the bootstrap
    interval of :func:`delta_vs_control` is built on.

    Args:
        differences: One paired difference per prompt (CAA minus control).
        n_permutations: Random sign patterns when the exact test is too large.
        seed: Seed of the random sign patterns.

    Returns:
        The p-value; NaN when every difference is 0 (there is nothing to test); 1 for a single
        prompt (its two sign patterns are equally extreme: the exact test's answer, which
        scipy does not compute for one observation).
    """
    values = np.asarray(differences, dtype=float)
    if not np.any(values != 0):
        return math.nan
    if values.size == 1:
        return 1.0
    result = stats.permutation_test(
        (values,),
        mean_statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def _with_paired_columns(
    table: pd.DataFrame,
    sweep: pd.DataFrame | None,
    *,
    control_alpha: str | None = None,
    confidence: float,
    n_resamples: int,
    seed: int,
    n_permutations: int = N_PERMUTATIONS,
) -> pd.DataFrame:
    """Add the prompt-paired comparison columns to a CAA-against-control table.

    Each row (``subset``, ``layer``, ``alpha``) is paired with the random direction at the
    same layer and at the alpha in column ``control_alpha`` (the row's own alpha when None).
    ``q_value`` adjusts ``p_value`` over the rows of each subset (Benjamini-Hochberg). Without
    ``sweep`` the paired columns are NaN and ``beats_control`` is False.
    """
    table = table.copy()
    paired = ["n_paired_prompts", *_PAIRED_CI_COLUMNS, "p_value"]
    if sweep is None:
        table[paired] = math.nan
        table["beats_control"] = False
    else:
        options = {
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            "n_permutations": n_permutations,
        }
        intervals = [
            _paired_intervals(
                sweep,
                row["subset"],
                int(row["layer"]),
                float(row["alpha"]),
                control_alpha=float(row[control_alpha]) if control_alpha else None,
                **options,
            )
            for _, row in table.iterrows()
        ]
        table[paired] = pd.DataFrame(intervals, columns=paired, index=table.index)
        table["n_paired_prompts"] = table["n_paired_prompts"].astype(int)
        table["beats_control"] = (table["delta_mean_toxicity_ci_high"] < 0).astype(bool)
    table["q_value"] = math.nan
    for _, cells in table.groupby("subset"):
        tested = cells["p_value"].dropna()
        if len(tested):
            table.loc[tested.index, "q_value"] = stats.false_discovery_control(tested)
    return table


def _paired_intervals(
    sweep: pd.DataFrame,
    subset: str,
    layer: int,
    alpha: float,
    *,
    confidence: float,
    n_resamples: int,
    seed: int,
    n_permutations: int = N_PERMUTATIONS,
    control_alpha: float | None = None,
) -> tuple[float, ...]:
    """Prompts paired, bootstrap intervals of CAA minus random (mean, then max), and p-value.

    The random cell is taken at ``control_alpha`` (``alpha`` when None).
    """
    require_columns(sweep, [*GROUP_COLUMNS, "prompt_id", "toxicity"], "sweep table")
    alphas = sweep["alpha"].astype(float).round(ALPHA_DECIMALS)
    control_alpha = alpha if control_alpha is None else control_alpha
    at_layer = (sweep["subset"] == subset) & (sweep["layer"] == layer)
    per_prompt = {}
    for direction, cell_alpha in (("caa", alpha), ("random", control_alpha)):
        rows = sweep[
            at_layer
            & (alphas == round(cell_alpha, ALPHA_DECIMALS))
            & (sweep["direction"] == direction)
        ]
        table = (
            per_prompt_scores(rows) if len(rows) else pd.DataFrame(columns=["sum", "count", "max"])
        )
        per_prompt[direction] = table.assign(mean=table["sum"] / table["count"])
    both = per_prompt["caa"].merge(
        per_prompt["random"], left_index=True, right_index=True, suffixes=("", "_random")
    )
    if both.empty:
        raise DataError(
            f"No prompt of subset {subset!r}, layer {layer} has completions for both the caa "
            f"direction at alpha {alpha:g} and the random direction at alpha {control_alpha:g}; "
            "pass the sweep rows behind the summary."
        )
    out: list[float] = [float(len(both))]
    differences = (both["mean"] - both["mean_random"]).to_numpy(float)
    p_value = paired_permutation_pvalue(differences, n_permutations=n_permutations, seed=seed)
    for column in ("mean", "max"):
        differences = (both[column] - both[f"{column}_random"]).to_numpy(float)
        value = float(differences.mean())
        if len(differences) < 2 or np.ptp(differences) == 0:
            out += [value, value]
            continue
        out += run_bootstrap(
            (differences,),
            mean_statistic,
            vectorized=True,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
            method="BCa",
        )
    return (*out, p_value)
